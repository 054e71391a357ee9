//! The approvals service: pending changes of what runs (production approvals and changes that
//! wait for their environment's change window). Handlers (`api/approvals.rs`) parse and render.
//!
//! * A change in an environment with `approvalRequired` is not applied: the deployments service
//!   stores the exact request here ([`Approvals::defer`]) with an operation that waits
//!   (`awaiting_approval`), and answers 202. So does a change outside the change window whose
//!   request said `?waitForWindow=true` (`scheduled`, operation `awaiting_window`).
//! * Approving ([`Approvals::approve`]) needs someone other than the requester (compared by
//!   [`crate::context::Principal::identity`], so a key cannot approve its creator's change) who
//!   holds the change's permission in that environment, `requiredRoles` included. The lock and
//!   the change window are checked again: if they refuse, the change stays pending and the
//!   approver gets that error — unless the request asked to wait for the window, in which case
//!   the approved change becomes `scheduled`. Otherwise the change is applied exactly as
//!   requested, authored by the requester (the approver is recorded), under the waiting
//!   operation's id; the claim that consumes the pending change is a compare-and-set in the
//!   write's own transaction, so of two concurrent approvals exactly one applies.
//! * A change that can no longer apply (its deployment was deleted, its name was taken, its
//!   `If-Match` went stale, …) becomes `failed` with its operation.
//! * Rejecting (with a comment) is for whoever could approve, or for the requester (withdrawing
//!   it); the operation fails with the comment.
//! * An open change expires `approval_ttl` after it was asked for (24 h by default): lazily when
//!   read or decided, and by the sweep ([`sweep`]), which also applies scheduled changes once
//!   their window opens (and their environment is unlocked).

use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Permission, Scope, perm};
use crate::context::{Principal, PrincipalKind, RequestContext};
use crate::deployments::{Change, Deployments, NewDeployment, PendingApply, permission_of};
use crate::domain::{ApprovalStatus, AuditOutcome, OperationKind, OperationStatus};
use crate::ids::{now_ms, random_id, rfc3339};
use crate::reconcile::Parsed;
use crate::store::{
    ApprovalFilter, ApprovalGrant, ApprovalRecord, ApprovalVisibility, Audit, Claim, EnvironmentRecord,
    OperationRecord, StatusSummary, Transition,
};

pub const MAX_COMMENT_LEN: usize = 1024;
/// Pending changes handled per sweep pass and kind (expiry, scheduled); the rest wait a pass.
const SWEEP_BATCH: i64 = 100;
/// Who the sweep acts as in audit records.
const SYSTEM: &str = "system:approvals";

/// The exact request a pending change will apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum PendingRequest {
    Create {
        deployment: Box<NewDeployment>,
    },
    Change {
        change: Change,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_match: Option<i64>,
    },
    Delete,
}

/// What the deployments service hands over to store as a pending change.
pub struct NewPending {
    /// For a create, the id the deployment will have (its operation names it already).
    pub deployment_id: String,
    pub deployment_name: String,
    pub workspace: String,
    pub action: OperationKind,
    pub request: PendingRequest,
    /// `pending` (needs approval) or `scheduled` (waits for the window).
    pub status: ApprovalStatus,
    pub wait_for_window: bool,
}

/// A stored pending change and its waiting operation (and, for a change of an existing
/// deployment, the deployment as it still is, with its stored status).
pub struct Deferred {
    pub approval: ApprovalRecord,
    pub operation: OperationRecord,
    pub deployment: Option<(Parsed, Option<StatusSummary>)>,
}

/// The outcome of approving: the change as it is now (`applied` or `scheduled`) and its
/// operation.
pub struct Decided {
    pub approval: ApprovalRecord,
    pub operation: OperationRecord,
}

pub struct Approvals<'a> {
    state: &'a AppState,
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::ApprovalNotFound, format!("pending change {id:?} not found"))
        .with_details(json!({ "approvalId": id }))
}

fn not_pending(a: &ApprovalRecord) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::ApprovalNotPending,
        format!("pending change {:?} is {}, not pending: {}", a.id, a.status, a.message),
    )
    .with_details(json!({ "approvalId": a.id, "status": a.status }))
}

fn validate_comment(comment: &str, required: bool) -> ApiResult<()> {
    if (required && comment.trim().is_empty())
        || comment.len() > MAX_COMMENT_LEN
        || comment.chars().any(|c| c.is_control() && c != '\n')
    {
        let what = if required { "1 to" } else { "at most" };
        return Err(ApiError::validation("comment", format!("{what} {MAX_COMMENT_LEN} bytes, no control characters")));
    }
    Ok(())
}

/// The requester, as the author of the change when it is applied (its role bindings as they
/// were when it asked).
fn requester_context(a: &ApprovalRecord) -> RequestContext {
    let (kind, name) = a.requester.split_once(':').unwrap_or(("user", &a.requester));
    // An API key's audit name is `apikey:<name>/<id>`.
    let name = if kind == "apikey" { name.split('/').next().unwrap_or(name) } else { name };
    let kind = match kind {
        "admin" => PrincipalKind::Admin,
        "apikey" => PrincipalKind::ApiKey,
        _ => PrincipalKind::User,
    };
    let principal = Principal {
        kind,
        id: a.requester_id.clone(),
        name: name.to_string(),
        roles: a.requester_roles.clone(),
        owner: (a.requester_identity != a.requester).then(|| a.requester_identity.clone()),
    };
    RequestContext {
        principal,
        request_id: a.request_id.clone(),
        idempotency_key: None,
        source: None,
        // The change's operation already holds its request's callback.
        callback: None,
    }
}

/// The requester as it is *now*: a change applies only if its author still exists (a key: is
/// still valid) and still holds the change's permission there, with the roles it has today.
async fn requester_now(state: &AppState, a: &ApprovalRecord) -> ApiResult<RequestContext> {
    let mut ctx = requester_context(a);
    let gone = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("the requester {} no longer exists or its credential was revoked", a.requester),
        )
        .with_details(json!({ "requester": a.requester }))
    };
    match ctx.principal.kind {
        PrincipalKind::Admin => {}
        PrincipalKind::User => {
            let user = state.store.get_user(&ctx.principal.name).await?;
            ctx.principal.roles = user.filter(|u| u.id == ctx.principal.id).ok_or_else(gone)?.roles;
        }
        PrincipalKind::ApiKey => {
            let key = state.store.get_api_key(&ctx.principal.id).await?.ok_or_else(gone)?;
            if key.revoked_at.is_some() || key.expires_at.is_some_and(|e| e <= now_ms()) {
                return Err(gone());
            }
            let mut roles = key.roles;
            if let Some(owner) = key.owner.strip_prefix("user:") {
                let owner = state.store.get_user(owner).await?.ok_or_else(gone)?;
                roles.retain(|b| crate::principals::covers(&owner.roles, b));
            }
            ctx.principal.roles = roles;
        }
    }
    let env = state.store.get_environment(&a.environment).await?.ok_or_else(gone)?;
    ctx.require(permission_of(a.action), Scope::env(env.scope(), Some(&a.workspace)), gone)?;
    Ok(ctx)
}

/// A record of something the sweep did, under the request that asked for the change.
fn system_audit(action: &str, a: &ApprovalRecord, details: serde_json::Value) -> Audit {
    Audit::new(SYSTEM, action, a.id.clone(), a.request_id.clone(), details)
}

/// Errors after which a change stays open: the environment is locked or out of its window
/// (both pass), someone else decided first, or the failure was ours (retry).
fn keeps_open(e: &ApiError) -> bool {
    e.status.is_server_error()
        || matches!(
            e.code,
            ErrorCode::EnvironmentLocked | ErrorCode::ChangeWindowClosed | ErrorCode::ApprovalNotPending
        )
}

impl<'a> Approvals<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Stores a change as pending (permission granted, environment unlocked; the window open
    /// or waited for) with its waiting operation and the `approval.request` audit record, in
    /// one transaction.
    pub(crate) async fn defer(
        &self,
        ctx: &RequestContext,
        env: &EnvironmentRecord,
        p: NewPending,
    ) -> ApiResult<Deferred> {
        let now = now_ms();
        let ttl = self.state.config.approval_ttl.as_millis() as i64;
        let id = random_id("apr");
        let (op_status, message) = match p.status {
            ApprovalStatus::Pending => (
                OperationStatus::AwaitingApproval,
                format!("awaiting approval {id} by someone other than the requester"),
            ),
            _ => (OperationStatus::AwaitingWindow, format!("waiting for the change window of {:?}", env.name)),
        };
        let operation = OperationRecord {
            id: random_id("op"),
            kind: p.action,
            deployment_id: p.deployment_id.clone(),
            status: op_status,
            message: message.clone(),
            request_id: ctx.request_id.clone(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            approval_id: Some(id.clone()),
            started_at: None,
            callback: ctx.callback.clone(),
        };
        let approval = ApprovalRecord {
            id: id.clone(),
            environment: env.name.clone(),
            workspace: p.workspace,
            deployment_id: p.deployment_id,
            deployment_name: p.deployment_name,
            action: p.action,
            permission: permission_of(p.action).to_string(),
            request: serde_json::to_string(&p.request).expect("a pending request serializes"),
            requester: ctx.principal.audit_name(),
            requester_id: ctx.principal.id.clone(),
            requester_identity: ctx.principal.identity(),
            requester_roles: ctx.principal.roles.clone(),
            request_id: ctx.request_id.clone(),
            operation_id: operation.id.clone(),
            status: p.status,
            approval_required: p.status == ApprovalStatus::Pending,
            wait_for_window: p.wait_for_window,
            message,
            decided_by: None,
            decision_comment: None,
            decided_at: None,
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(ttl),
        };
        let audit = ctx.audit(
            "approval.request",
            &id,
            json!({
                "environment": approval.environment,
                "deploymentId": approval.deployment_id,
                "action": approval.action,
                "status": approval.status,
                "operationId": operation.id,
                "waitForWindow": approval.wait_for_window,
                "expiresAt": rfc3339(approval.expires_at),
            }),
        );
        self.state.store.create_approval(&approval, &operation, &audit).await?;
        tracing::info!(approval = %id, environment = %approval.environment, deployment = %approval.deployment_id,
            action = %approval.action, status = %approval.status, "change stored as pending");
        Ok(Deferred { approval, operation, deployment: None })
    }

    /// Pending changes the caller may see (pending ones by default), oldest first.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        status: Option<ApprovalStatus>,
        page: i64,
        page_size: i64,
    ) -> ApiResult<(Vec<ApprovalRecord>, i64)> {
        self.expire_due(now_ms()).await?;
        let mut visible = ApprovalVisibility { identity: ctx.principal.identity(), ..Default::default() };
        // Unscoped bindings reach every workspace; scoped ones their own.
        let mut workspaces: Vec<Option<&str>> = vec![None];
        workspaces.extend(crate::workspaces::bound_workspaces(ctx).into_iter().map(Some));
        for env in self.state.store.list_environments().await? {
            for w in &workspaces {
                let scope = Scope::env(env.scope(), Some(w.unwrap_or(crate::workspaces::ANY_WORKSPACE)));
                let grant = |permission: Option<Permission>| ApprovalGrant {
                    workspace: w.map(str::to_string),
                    environment: env.name.clone(),
                    permission: permission.map(|p| p.to_string()),
                };
                if ctx.allows(perm::APPROVAL_READ, scope) {
                    visible.grants.push(grant(None));
                    continue;
                }
                for p in [
                    perm::DEPLOYMENT_CREATE,
                    perm::DEPLOYMENT_UPDATE,
                    perm::DEPLOYMENT_SCALE,
                    perm::DEPLOYMENT_DELETE,
                    perm::VERSION_DEPLOY,
                    perm::ROLLBACK_EXECUTE,
                ] {
                    if ctx.allows(p, scope) {
                        visible.grants.push(grant(Some(p)));
                    }
                }
            }
        }
        let filter = ApprovalFilter { status, visible: Some(&visible), page, page_size };
        Ok(self.state.store.list_approvals(filter).await?)
    }

    /// One pending change, if the caller may see it (expired on the way if its time is up):
    /// with `approval:read` in its environment, as its requester, or as someone who could
    /// decide it; anyone else gets the 403 naming `approval:read`.
    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<ApprovalRecord> {
        let (a, env) = self.load(id).await?;
        let scope = Scope::env(env.scope(), Some(&a.workspace));
        if ctx.principal.identity() != a.requester_identity && !ctx.allows(self.permission(&a), scope) {
            ctx.require(perm::APPROVAL_READ, scope, || not_found(id))?;
        }
        Ok(a)
    }

    /// The pending change and its environment, expired first if its time is up.
    async fn load(&self, id: &str) -> ApiResult<(ApprovalRecord, EnvironmentRecord)> {
        let a = self.state.store.get_approval(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.state.store.get_environment(&a.environment).await?.ok_or_else(|| not_found(id))?;
        let a = if a.status.is_open() && a.expires_at <= now_ms() {
            self.expire(&a).await?;
            self.state.store.get_approval(id).await?.ok_or_else(|| not_found(id))?
        } else {
            a
        };
        Ok((a, env))
    }

    fn permission(&self, a: &ApprovalRecord) -> Permission {
        permission_of(a.action)
    }

    /// Approves a pending change and applies it (or schedules it for its window, if its request
    /// asked to wait).
    pub async fn approve(&self, ctx: &RequestContext, id: &str, comment: Option<String>) -> ApiResult<Decided> {
        if let Some(c) = &comment {
            validate_comment(c, false)?;
        }
        let (a, env) = self.load(id).await?;
        // Who may decide comes first, so that nobody else learns where the change is. Refusals
        // are recorded in the audit trail by the request-id middleware (`audit::refused`).
        if ctx.principal.identity() == a.requester_identity {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::SelfApproval,
                format!("you asked for this change ({}), so someone else must approve it", a.requester),
            )
            .with_details(json!({ "approvalId": a.id, "requestedBy": a.requester })));
        }
        ctx.require(self.permission(&a), Scope::env(env.scope(), Some(&a.workspace)), || not_found(id))?;
        if a.status != ApprovalStatus::Pending {
            return Err(not_pending(&a));
        }
        crate::environments::unlocked(&env)?;
        let approver = ctx.principal.audit_name();
        let audit = ctx.audit(
            "approval.approve",
            &a.id,
            json!({ "requestedBy": a.requester, "comment": comment, "operationId": a.operation_id }),
        );
        if let Err(closed) = crate::environments::window_open(&env, now_ms()) {
            if !a.wait_for_window {
                return Err(closed);
            }
            let message = format!("approved by {approver}; waits for the change window: {}", closed.message);
            let done = self
                .state
                .store
                .transition_approval(&Transition {
                    id: &a.id,
                    from: ApprovalStatus::Pending,
                    to: ApprovalStatus::Scheduled,
                    message: &message,
                    decision: Some((&approver, comment.as_deref())),
                    operation: (OperationStatus::AwaitingWindow, &message),
                    audit: Some(&audit),
                    now: now_ms(),
                })
                .await?;
            if !done {
                return Err(not_pending(&a));
            }
        } else {
            self.apply(&a, ApprovalStatus::Pending, Some((approver, comment)), Some(audit)).await?;
        }
        self.decided(id).await
    }

    /// Rejects (or, for its requester, withdraws) an open change; its operation fails with the
    /// comment.
    pub async fn reject(&self, ctx: &RequestContext, id: &str, comment: String) -> ApiResult<Decided> {
        validate_comment(&comment, true)?;
        let (a, env) = self.load(id).await?;
        let own = ctx.principal.identity() == a.requester_identity;
        if !own {
            ctx.require(self.permission(&a), Scope::env(env.scope(), Some(&a.workspace)), || not_found(id))?;
        }
        if !a.status.is_open() {
            return Err(not_pending(&a));
        }
        let who = ctx.principal.audit_name();
        let message = if own {
            format!("withdrawn by the requester {who}: {comment}")
        } else {
            format!("rejected by {who}: {comment}")
        };
        let audit = ctx.audit(
            "approval.reject",
            &a.id,
            json!({ "requestedBy": a.requester, "comment": comment, "withdrawn": own, "operationId": a.operation_id }),
        );
        let done = self
            .state
            .store
            .transition_approval(&Transition {
                id: &a.id,
                from: a.status,
                to: ApprovalStatus::Rejected,
                message: &message,
                decision: Some((&who, Some(&comment))),
                operation: (OperationStatus::Failed, &message),
                audit: Some(&audit),
                now: now_ms(),
            })
            .await?;
        if !done {
            return Err(not_pending(&a));
        }
        self.decided(id).await
    }

    async fn decided(&self, id: &str) -> ApiResult<Decided> {
        let approval = self.state.store.get_approval(id).await?.ok_or_else(|| not_found(id))?;
        let operation = self.state.store.get_operation(&approval.operation_id).await?.ok_or_else(ApiError::internal)?;
        Ok(Decided { approval, operation })
    }

    /// Applies an open change exactly as requested, authored by its requester, consuming it
    /// (compare-and-set from `from`) in the write's transaction. A change that can no longer
    /// apply becomes `failed`; a lock, a closed window, a lost race or a failure of ours leaves
    /// it open. Lock and window are the caller's to check first.
    async fn apply(
        &self,
        a: &ApprovalRecord,
        from: ApprovalStatus,
        decision: Option<(String, Option<String>)>,
        audit: Option<Audit>,
    ) -> ApiResult<OperationRecord> {
        let now = now_ms();
        let request: PendingRequest = serde_json::from_str(&a.request)
            .map_err(|e| ApiError::internal().with_cause(format!("pending change {} does not parse: {e}", a.id)))?;
        let operation = self.state.store.get_operation(&a.operation_id).await?.ok_or_else(|| {
            ApiError::internal()
                .with_cause(format!("operation {} of pending change {} is missing", a.operation_id, a.id))
        })?;
        let approved_by = decision.as_ref().map(|d| d.0.clone()).or_else(|| a.decided_by.clone());
        let fail_decision = decision.clone();
        let pending = PendingApply {
            claim: Claim { approval_id: a.id.clone(), from, decision, audit, now },
            operation,
            approved_by,
        };
        let deployments = Deployments::new(self.state);
        let result = match requester_now(self.state, a).await {
            // The author lost the right to make this change: it fails, like any other refusal.
            Err(e) => Err(e),
            Ok(requester) => match request {
                PendingRequest::Create { deployment } => deployments
                    .apply_create(&requester, a.deployment_id.clone(), *deployment, Some(&pending), None)
                    .await
                    .map(|acc| acc.operation),
                PendingRequest::Change { change, if_match } => deployments
                    .apply_change(&requester, &a.deployment_id, if_match, change, Some(&pending))
                    .await
                    .map(|acc| acc.operation),
                PendingRequest::Delete => match self.state.store.get_deployment(&a.deployment_id).await? {
                    Some(current) => deployments.apply_delete(&requester, &current, Some(&pending)).await,
                    None => Err(crate::deployments::not_found(&a.deployment_id)),
                },
            },
        };
        match result {
            Ok(op) => {
                tracing::info!(approval = %a.id, operation = %op.id, deployment = %a.deployment_id, "pending change applied");
                Ok(op)
            }
            Err(e) if keeps_open(&e) => Err(e),
            Err(e) => {
                let message = format!("the change could not be applied: {}", e.message);
                let mut audit =
                    system_audit("approval.fail", a, json!({ "code": e.code.as_str(), "reason": e.message }))
                        .with_outcome(AuditOutcome::Failed);
                if let Some((approver, _)) = &fail_decision {
                    audit.actor.clone_from(approver);
                }
                self.state
                    .store
                    .transition_approval(&Transition {
                        id: &a.id,
                        from,
                        to: ApprovalStatus::Failed,
                        message: &message,
                        decision: fail_decision.as_ref().map(|(by, c)| (by.as_str(), c.as_deref())),
                        operation: (OperationStatus::Failed, &message),
                        audit: Some(&audit),
                        now: now_ms(),
                    })
                    .await?;
                tracing::info!(approval = %a.id, code = %e.code, reason = %e.message, "pending change failed");
                Err(e)
            }
        }
    }

    /// Expires one open change whose time is up (nothing if it was decided meanwhile).
    async fn expire(&self, a: &ApprovalRecord) -> ApiResult<()> {
        let waited_for = if a.status == ApprovalStatus::Pending { "approval" } else { "its change window" };
        let message = format!("expired at {} while waiting for {waited_for}", rfc3339(a.expires_at));
        let audit = system_audit("approval.expire", a, json!({ "status": a.status }));
        let done = self
            .state
            .store
            .transition_approval(&Transition {
                id: &a.id,
                from: a.status,
                to: ApprovalStatus::Expired,
                message: &message,
                decision: None,
                operation: (OperationStatus::Failed, &message),
                audit: Some(&audit),
                now: now_ms(),
            })
            .await?;
        if done {
            tracing::info!(approval = %a.id, "pending change expired");
        }
        Ok(())
    }

    /// Expires every open change whose time is up (a batch per call).
    pub async fn expire_due(&self, now: i64) -> ApiResult<usize> {
        let due = self.state.store.expired_approvals(now, SWEEP_BATCH).await?;
        for a in &due {
            self.expire(a).await?;
        }
        Ok(due.len())
    }

    /// Applies the scheduled changes whose environment is unlocked and inside its window.
    pub async fn apply_scheduled(&self) -> ApiResult<usize> {
        let mut applied = 0;
        for a in self.state.store.scheduled_approvals(SWEEP_BATCH).await? {
            if a.expires_at <= now_ms() {
                self.expire(&a).await?;
                continue;
            }
            let Some(env) = self.state.store.get_environment(&a.environment).await? else { continue };
            if env.lock.is_some() || crate::environments::window_open(&env, now_ms()).is_err() {
                continue;
            }
            match self.apply(&a, ApprovalStatus::Scheduled, None, None).await {
                Ok(_) => applied += 1,
                Err(e) if e.status.is_server_error() => return Err(e),
                // Failed (recorded), or decided or closed meanwhile: the next pass sees.
                Err(_) => {}
            }
        }
        Ok(applied)
    }
}

/// The sweep: every `approval_sweep_interval`, expires open changes whose time is up and applies
/// scheduled changes whose window has opened. Cheap when there is nothing to do (two indexed
/// queries). Runs until `shutdown` turns true; safe on several replicas at once (every
/// transition is a compare-and-set).
pub async fn sweep(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let every = state.config.approval_sweep_interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let service = Approvals::new(&state);
        if let Err(e) = service.expire_due(now_ms()).await {
            tracing::warn!(error = %e.cause.as_deref().unwrap_or(&e.message), "approval sweep: expiry failed");
        }
        if let Err(e) = service.apply_scheduled().await {
            tracing::warn!(error = %e.cause.as_deref().unwrap_or(&e.message), "approval sweep: applying failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Configuration, TargetJson};

    fn promotion() -> crate::deployments::Promotion {
        crate::deployments::Promotion {
            source_deployment_id: "deploy-1".into(),
            source_environment: "development".into(),
            target_environment: "staging".into(),
            version: "v1".into(),
        }
    }

    #[test]
    fn requests_round_trip_exactly() {
        let config: Configuration =
            serde_json::from_value(json!({ "replicas": 2, "command": "/bin/web", "env": { "A": "1" } })).unwrap();
        let requests = [
            PendingRequest::Create {
                deployment: Box::new(NewDeployment {
                    name: "web".into(),
                    environment: "production".into(),
                    version: "v2".into(),
                    target: TargetJson { agent_ids: None, selector: Some(Default::default()) },
                    configuration: config.clone(),
                    source: None,
                    workspace: Some("team-a".into()),
                    project: None,
                    ai_zone: None,
                    promotion: None,
                }),
            },
            PendingRequest::Change { change: Change::Scale(3), if_match: Some(7) },
            PendingRequest::Change { change: Change::Restart, if_match: None },
            PendingRequest::Change {
                change: Change::Update {
                    version: Some("v3".into()),
                    target: None,
                    configuration: Some(Box::new(config)),
                    description: Some("the third".into()),
                },
                if_match: None,
            },
            PendingRequest::Change { change: Change::Deploy { version: "v2".into() }, if_match: None },
            PendingRequest::Change {
                change: Change::Rollback {
                    to: Some("v1".into()),
                    from: Some("v2".into()),
                    reason: Some("bad".into()),
                    mark_failed: true,
                },
                if_match: Some(4),
            },
            PendingRequest::Change {
                change: Change::Env {
                    env: [("A".to_string(), "2".to_string())].into(),
                    version: None,
                    description: None,
                },
                if_match: None,
            },
            PendingRequest::Change {
                change: Change::Promote {
                    promotion: promotion(),
                    template: json!({ "command": "/bin/web", "env": { "A": "1" } }),
                    replicas: Some(3),
                },
                if_match: None,
            },
            PendingRequest::Create {
                deployment: Box::new(NewDeployment {
                    name: "web".into(),
                    environment: "staging".into(),
                    version: "v1".into(),
                    target: TargetJson { agent_ids: None, selector: Some(Default::default()) },
                    configuration: serde_json::from_value(json!({ "replicas": 1, "command": "/bin/web" })).unwrap(),
                    source: None,
                    workspace: Some("default".into()),
                    project: None,
                    ai_zone: None,
                    promotion: Some(promotion()),
                }),
            },
            PendingRequest::Delete,
        ];
        for r in requests {
            let text = serde_json::to_string(&r).unwrap();
            let back: PendingRequest = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
        assert_eq!(
            serde_json::to_value(PendingRequest::Change { change: Change::Scale(3), if_match: Some(7) }).unwrap(),
            json!({ "action": "change", "change": { "scale": 3 }, "ifMatch": 7 })
        );
        // A create stored before promotions existed still parses (no `promotion`).
        let old = r#"{"action":"create","deployment":{"name":"web","environment":"staging","version":"v1",
            "target":{"selector":{}},"configuration":{"replicas":1,"command":"/bin/web"},"source":null,
            "workspace":null,"project":null,"aiZone":null}}"#;
        assert!(matches!(
            serde_json::from_str::<PendingRequest>(old).unwrap(),
            PendingRequest::Create { deployment } if deployment.promotion.is_none()
        ));
        // Pending changes stored before versions existed still parse.
        let old = r#"{"action":"change","change":{"update":{"version":"v3","target":null,"configuration":null}}}"#;
        assert!(matches!(
            serde_json::from_str::<PendingRequest>(old).unwrap(),
            PendingRequest::Change { change: Change::Update { description: None, .. }, .. }
        ));
        assert_eq!(
            serde_json::to_value(Change::Rollback {
                to: Some("v1".into()),
                from: Some("v2".into()),
                reason: None,
                mark_failed: false
            })
            .unwrap(),
            json!({ "rollback": { "to": "v1", "from": "v2", "markFailed": false } })
        );
    }

    #[test]
    fn comments_are_bounded() {
        assert!(validate_comment("", false).is_ok());
        assert!(validate_comment(" ", true).is_err());
        assert!(validate_comment("ok\nsecond line", true).is_ok());
        assert!(validate_comment("bell\u{7}", false).is_err());
        assert!(validate_comment(&"x".repeat(MAX_COMMENT_LEN + 1), false).is_err());
    }
}
