//! The environments service: every deployment belongs to one; `development`, `staging` and
//! `production` exist from the first start, chained in that order for promotion. Handlers
//! (`api/environments.rs`) parse and render.
//!
//! * **Configuration** (`PUT /v1/environments/{id}`, `…/config`, `…/variables`, `…/limits`) is one
//!   write path ([`Environments::configure`]): validated, permission `environment:update`
//!   (changing the `type` also needs `policy:update`: the type decides which roles act there),
//!   audited, stored in one transaction. The name never changes (deployments name it).
//! * **Promotion chain**: `promotesTo` names the next environment; unknown names and cycles are
//!   refused (`ENV_003`), checked under every environment's row lock.
//! * **Variables** are merged under the env of every deployment here (its own values win): a
//!   change is pinned into a new revision of each of its deployments in the same transaction
//!   (`configuration.environmentVariables`, like secrets), so replicas are replaced. Refused
//!   while the environment is locked (like its secrets); neither approvals nor change windows
//!   apply (as for secrets).
//! * **Limits** (`resources.rs`) are checked by the store in every transaction that writes a
//!   deployment; lowering one below what is allocated is allowed (only growth is refused).
//! * **Delete** is refused while live deployments are there (`ENV_007`) or another environment
//!   promotes to it (`ENV_008`: change that one's `promotesTo` first), and while it is locked.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::audit::mask::changes;
use crate::authz::{Role, Scope, perm};
use crate::change_windows::{self, ChangeWindowsDoc};
use crate::context::RequestContext;
use crate::ids::{now_ms, random_id};
use crate::resources::{Exceeded, Limits, Usage};
use crate::store::{
    DeploymentFilter, EnvironmentChange, EnvironmentConfigured, EnvironmentDelete, EnvironmentLock, EnvironmentRecord,
    OperationRecord, StatusSummary, Visibility,
};

pub const MAX_LOCK_REASON_LEN: usize = 512;

/// `ENV_002` unless the environment is unlocked: checked by every mutation of what runs in it.
pub fn unlocked(env: &EnvironmentRecord) -> ApiResult<()> {
    match &env.lock {
        None => Ok(()),
        Some(lock) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::EnvironmentLocked,
            format!("environment {:?} is locked by {}: {}", env.name, lock.by, lock.reason),
        )
        .with_details(json!({
            "environment": env.name,
            "lockedBy": lock.by,
            "reason": lock.reason,
            "lockedAt": crate::ids::rfc3339(lock.at),
        }))),
    }
}

/// `ENV_005` unless the environment's change window is open at `now_ms`: checked by every change
/// of what runs in it (when asked, when approved, when a scheduled change is applied).
pub fn window_open(env: &EnvironmentRecord, now_ms: i64) -> ApiResult<()> {
    let Err(closed) = change_windows::is_open(env.change_windows.as_ref(), now_ms) else { return Ok(()) };
    let next = closed.next_open.map(|t| t.to_string());
    let mut message = format!("environment {:?} is outside its change window", env.name);
    if let Some(reason) = &closed.freeze {
        message.push_str(&format!(" (frozen: {reason})"));
    }
    match &next {
        Some(t) => message.push_str(&format!("; it opens at {t}")),
        None => message.push_str("; no opening is scheduled within 400 days"),
    }
    message.push_str("; send ?waitForWindow=true to have the change applied then");
    Err(ApiError::new(StatusCode::CONFLICT, ErrorCode::ChangeWindowClosed, message).with_details(json!({
        "environment": env.name,
        "nextWindowOpens": next,
        "freeze": closed.freeze,
    })))
}

/// `DEPLOY_004` (409): a change of a deployment would pass one of its environment's limits;
/// names the limit and the amounts. Nothing was changed.
pub fn limit_exceeded(environment: &str, e: &Exceeded) -> ApiError {
    let (max, allocated, requested, available) =
        (e.format(e.max), e.format(e.allocated), e.format(e.requested), e.format(e.available));
    let message = if e.limit == "replicas" {
        format!("environment {environment:?} allows at most {max} replicas per deployment; {requested} requested")
    } else {
        format!(
            "environment {environment:?} limits {} to {max}: {allocated} allocated, {available} available, \
             {requested} requested",
            e.limit
        )
    };
    ApiError::new(StatusCode::CONFLICT, ErrorCode::ReplicaLimit, message).with_details(json!({
        "environment": environment,
        "limit": e.limit,
        "max": max,
        "allocated": allocated,
        "requested": requested,
        "available": available,
    }))
}

/// What is wrong with a promotion chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainProblem {
    /// `promotesTo` names no environment.
    Unknown(String),
    /// Following `promotesTo` from the environment comes back to it: the path, first name last.
    Cycle(Vec<String>),
}

/// Follows the chain (every environment's `(name, promotesTo)`) from `from`: `None` if it ends.
pub fn chain_problem(chain: &[(String, Option<String>)], from: &str) -> Option<ChainProblem> {
    let next: BTreeMap<&str, Option<&str>> = chain.iter().map(|(n, p)| (n.as_str(), p.as_deref())).collect();
    let mut path = vec![from.to_string()];
    let mut seen = BTreeSet::from([from]);
    let mut at = from;
    while let Some(Some(to)) = next.get(at) {
        if !next.contains_key(to) {
            return Some(ChainProblem::Unknown(to.to_string()));
        }
        path.push(to.to_string());
        if !seen.insert(to) {
            return Some(ChainProblem::Cycle(path));
        }
        at = to;
    }
    None
}

/// `ENV_003` (400): the configuration is invalid (`details.field` names what).
pub fn config_invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::EnvironmentConfigInvalid, message)
        .with_details(json!({ "field": field }))
}

/// What a configuration write of an environment asks for (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct Configure {
    pub kind: Option<String>,
    pub description: Option<String>,
    pub promotes_to: Option<Option<String>>,
    pub variables: Option<BTreeMap<String, String>>,
    pub limits: Option<Limits>,
}

/// An environment's status: its live deployments (that the caller may read) counted by status,
/// and what they hold against its limits.
pub struct EnvironmentStatus {
    pub environment: EnvironmentRecord,
    pub counts: BTreeMap<String, i64>,
    pub usage: Usage,
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::EnvironmentNotFound, format!("environment {key:?} not found"))
        .with_details(json!({ "environmentId": key }))
}

pub const MAX_DESCRIPTION_LEN: usize = 512;

pub struct Environments<'a> {
    state: &'a AppState,
}

impl<'a> Environments<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Every environment, in promotion order, each with its number of live deployments (that
    /// the caller may read).
    pub async fn list(&self, ctx: &RequestContext) -> ApiResult<Vec<(EnvironmentRecord, i64)>> {
        let envs = self.state.store.list_environments().await?;
        let visible = crate::deployments::visibility(ctx, &envs);
        let mut out = Vec::new();
        for e in envs {
            if ctx.allows(perm::ENVIRONMENT_READ, Scope::env(e.scope(), None)) {
                let n = self.count(&e.name, visible.as_ref()).await?;
                out.push((e, n));
            }
        }
        Ok(out)
    }

    /// The live deployments in an environment that the caller may read.
    pub async fn deployment_count(&self, ctx: &RequestContext, name: &str) -> ApiResult<i64> {
        let visible = crate::deployments::Deployments::new(self.state).visibility(ctx).await?;
        self.count(name, visible.as_ref()).await
    }

    async fn count(&self, name: &str, visible: Option<&Visibility>) -> ApiResult<i64> {
        let filter = DeploymentFilter { environment: Some(name), visible, ..Default::default() };
        Ok(self.state.store.count_deployments_matching(filter).await?)
    }

    /// By id or name.
    pub async fn get(&self, ctx: &RequestContext, key: &str) -> ApiResult<(EnvironmentRecord, i64)> {
        let e = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_READ, Scope::env(e.scope(), None), || not_found(key))?;
        let n = self.deployment_count(ctx, &e.name).await?;
        Ok((e, n))
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        name: String,
        kind: Option<String>,
        description: String,
    ) -> ApiResult<EnvironmentRecord> {
        crate::model::validate_name("name", &name).map_err(|i| ApiError::validation(&i.field, i.message))?;
        let kind = kind.unwrap_or_else(|| name.clone());
        crate::model::validate_name("type", &kind).map_err(|i| ApiError::validation(&i.field, i.message))?;
        if description.len() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::validation("description", format!("at most {MAX_DESCRIPTION_LEN} bytes")));
        }
        ctx.require_global(perm::ENVIRONMENT_CREATE)?;
        let now = now_ms();
        let (required_roles, approval_required) = crate::authz::default_restrictions(&kind);
        let env = EnvironmentRecord {
            id: random_id("env"),
            name,
            kind,
            description,
            required_roles,
            approval_required,
            lock: None,
            change_windows: None,
            promotes_to: None,
            variables: BTreeMap::new(),
            limits: Limits::default(),
            created_at: now,
            updated_at: now,
        };
        let after = json!({ "name": env.name, "type": env.kind, "description": env.description });
        let audit = ctx
            .audit("environment.create", &env.id, json!({ "name": env.name }))
            .with_changes(crate::audit::mask::changes(None, Some(&after)));
        if !self.state.store.create_environment(&env, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::EnvironmentExists,
                format!("environment {:?} already exists", env.name),
            ));
        }
        Ok(env)
    }

    /// Locks an environment: until it is unlocked, every mutation of its deployments is refused
    /// with `ENV_002`. Locking a locked environment is refused the same way (naming the holder).
    pub async fn lock(&self, ctx: &RequestContext, key: &str, reason: String) -> ApiResult<EnvironmentRecord> {
        if reason.trim().is_empty() || reason.len() > MAX_LOCK_REASON_LEN {
            return Err(ApiError::validation("reason", format!("1 to {MAX_LOCK_REASON_LEN} bytes")));
        }
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_LOCK, Scope::env(env.scope(), None), || not_found(key))?;
        unlocked(&env)?;
        let now = now_ms();
        let lock = EnvironmentLock { by: ctx.principal.audit_name(), reason, at: now };
        let audit = ctx.audit("environment.lock", &env.id, json!({ "name": env.name, "reason": lock.reason }));
        // A concurrent lock may have won since the read: then nothing was written.
        let before = self.state.store.set_environment_lock(&env.id, Some(&lock), &audit, now).await?;
        unlocked(&before.ok_or_else(|| not_found(key))?)?;
        Ok(EnvironmentRecord { lock: Some(lock), updated_at: now, ..env })
    }

    /// Unlocks an environment (idempotent: unlocking an unlocked one changes nothing).
    pub async fn unlock(&self, ctx: &RequestContext, key: &str) -> ApiResult<EnvironmentRecord> {
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_LOCK, Scope::env(env.scope(), None), || not_found(key))?;
        let Some(lock) = &env.lock else { return Ok(env) };
        let now = now_ms();
        let audit = ctx.audit(
            "environment.unlock",
            &env.id,
            json!({ "name": env.name, "lockedBy": lock.by, "reason": lock.reason }),
        );
        self.state.store.set_environment_lock(&env.id, None, &audit, now).await?;
        Ok(EnvironmentRecord { lock: None, updated_at: now, ..env })
    }

    /// Replaces the environment's restrictions: the roles one of which a caller must hold to
    /// change what runs here, and whether such changes wait for a second person's approval.
    /// Pending changes keep waiting (they can still be approved or rejected).
    pub async fn set_restrictions(
        &self,
        ctx: &RequestContext,
        key: &str,
        required_roles: Vec<Role>,
        approval_required: bool,
    ) -> ApiResult<EnvironmentRecord> {
        let mut roles = required_roles;
        roles.sort_unstable();
        roles.dedup();
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::POLICY_UPDATE, Scope::env(env.scope(), None), || not_found(key))?;
        let after = json!({ "requiredRoles": roles, "approvalRequired": approval_required });
        let audit = |before: &EnvironmentRecord| {
            let was = json!({ "requiredRoles": before.required_roles, "approvalRequired": before.approval_required });
            ctx.audit("environment.restrictions", &before.id, json!({ "name": before.name }))
                .with_changes(changes(Some(&was), Some(&after)))
        };
        let updated = self
            .state
            .store
            .update_environment_policy(&env.id, Some((&roles, approval_required)), None, audit, now_ms())
            .await?;
        updated.ok_or_else(|| not_found(key))
    }

    /// Replaces the environment's change windows (`None`: open at all times). The document is
    /// validated first (400 naming the field).
    pub async fn set_change_windows(
        &self,
        ctx: &RequestContext,
        key: &str,
        doc: Option<ChangeWindowsDoc>,
    ) -> ApiResult<EnvironmentRecord> {
        let windows = match doc {
            None => None,
            Some(doc) => Some(doc.compile().map_err(|i| ApiError::validation(&i.field, i.message))?),
        };
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::POLICY_UPDATE, Scope::env(env.scope(), None), || not_found(key))?;
        let doc = windows.as_ref().map(|w| w.doc().clone());
        let audit = |before: &EnvironmentRecord| {
            let was = json!({ "changeWindows": before.change_windows.as_ref().map(|w| w.doc()) });
            ctx.audit("environment.change_windows", &before.id, json!({ "name": before.name }))
                .with_changes(changes(Some(&was), Some(&json!({ "changeWindows": doc }))))
        };
        let updated =
            self.state.store.update_environment_policy(&env.id, None, Some(doc.as_ref()), audit, now_ms()).await?;
        updated.ok_or_else(|| not_found(key))
    }
    /// What an environment's deployments hold together.
    pub async fn usage(&self, env: &EnvironmentRecord) -> ApiResult<Usage> {
        Ok(self.state.store.environment_usage(&env.name).await?)
    }

    /// Changes an environment's configuration (type, description, promotion chain, variables,
    /// limits) in one transaction; a change of its variables rolls out a new revision of each of
    /// its deployments. `action` names the audit record. Returns the environment and the
    /// operations of the rollouts.
    pub async fn configure(
        &self,
        ctx: &RequestContext,
        key: &str,
        change: Configure,
        action: &'static str,
    ) -> ApiResult<(EnvironmentRecord, Vec<OperationRecord>)> {
        if let Some(kind) = &change.kind {
            crate::model::validate_name("type", kind).map_err(|i| ApiError::validation(&i.field, i.message))?;
        }
        if change.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_LEN) {
            return Err(ApiError::validation("description", format!("at most {MAX_DESCRIPTION_LEN} bytes")));
        }
        if let Some(Some(next)) = &change.promotes_to {
            crate::model::validate_name("promotesTo", next).map_err(|i| config_invalid(&i.field, i.message))?;
        }
        if let Some(vars) = &change.variables {
            crate::model::validate_env("variables", vars).map_err(|i| ApiError::validation(&i.field, i.message))?;
        }
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_UPDATE, Scope::env(env.scope(), None), || not_found(key))?;
        if change.kind.as_ref().is_some_and(|k| *k != env.kind) {
            // The type decides which roles act here: a policy change.
            ctx.require(perm::POLICY_UPDATE, Scope::env(env.scope(), None), || not_found(key))?;
        }
        if change.variables.is_some() {
            // Variables change what runs: not while the environment is locked.
            unlocked(&env)?;
        }
        let store_change = EnvironmentChange {
            kind: change.kind,
            description: change.description,
            promotes_to: change.promotes_to,
            variables: change.variables,
            limits: change.limits,
        };
        let check = |before: &EnvironmentRecord, after: &EnvironmentRecord, chain: &[(String, Option<String>)]| {
            if store_change.promotes_to.is_some() {
                match chain_problem(chain, &after.name) {
                    None => {}
                    Some(ChainProblem::Unknown(name)) => {
                        return Err(config_invalid("promotesTo", format!("no environment is named {name:?}")));
                    }
                    Some(ChainProblem::Cycle(path)) => {
                        return Err(config_invalid(
                            "promotesTo",
                            format!("the promotion chain would be a cycle: {}", path.join(" → ")),
                        )
                        .with_details(json!({ "field": "promotesTo", "cycle": path })));
                    }
                }
            }
            let doc = |e: &EnvironmentRecord| {
                json!({
                    "type": e.kind,
                    "description": e.description,
                    "promotesTo": e.promotes_to,
                    "variables": e.variables,
                    "limits": e.limits.doc(),
                })
            };
            Ok(ctx
                .audit(action, &before.id, json!({ "name": before.name }))
                .with_changes(changes(Some(&doc(before)), Some(&doc(after)))))
        };
        let rollout = |d: &crate::store::DeploymentRecord, vars: &BTreeMap<String, String>| {
            crate::deployments::repinned(d, ctx, |config| config.environment_variables.clone_from(vars))
        };
        let configured =
            self.state.store.configure_environment(&env.id, &store_change, check, rollout, now_ms()).await??;
        match configured {
            EnvironmentConfigured::NotFound => Err(not_found(key)),
            EnvironmentConfigured::Done { environment, rolled_out } => {
                let operations: Vec<OperationRecord> = rolled_out.into_iter().map(|(_, op)| op).collect();
                self.state.reconciler.enqueue_all(operations.iter().map(|op| op.deployment_id.clone()));
                Ok((*environment, operations))
            }
        }
    }

    /// Deletes an environment: refused while it is locked, holds live deployments (`ENV_007`)
    /// or another environment promotes to it (`ENV_008`).
    pub async fn delete(&self, ctx: &RequestContext, key: &str) -> ApiResult<()> {
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_DELETE, Scope::env(env.scope(), None), || not_found(key))?;
        unlocked(&env)?;
        let before = json!({ "name": env.name, "type": env.kind, "description": env.description });
        let audit = ctx
            .audit("environment.delete", &env.id, json!({ "name": env.name }))
            .with_changes(changes(Some(&before), None));
        match self.state.store.delete_environment(&env.id, &audit, now_ms()).await? {
            EnvironmentDelete::Deleted => Ok(()),
            EnvironmentDelete::NotFound => Err(not_found(key)),
            EnvironmentDelete::HasDeployments(n) => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::EnvironmentInUse,
                format!("environment {:?} still holds {n} live deployment(s); delete them first", env.name),
            )
            .with_details(json!({ "environment": env.name, "deployments": n }))),
            EnvironmentDelete::Referenced(by) => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::EnvironmentPromotedTo,
                format!(
                    "environment {:?} is the next one in the promotion chain of {}; change their promotesTo first",
                    env.name,
                    by.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                ),
            )
            .with_details(json!({ "environment": env.name, "promotedFrom": by }))),
        }
    }

    /// The live deployments of an environment (that the caller may read), a page of them.
    pub async fn deployments(
        &self,
        ctx: &RequestContext,
        key: &str,
        filter: DeploymentFilter<'_>,
    ) -> ApiResult<(Vec<(crate::reconcile::Parsed, Option<StatusSummary>)>, i64)> {
        let (env, _) = self.get(ctx, key).await?;
        let filter = DeploymentFilter { environment: Some(&env.name), ..filter };
        crate::deployments::Deployments::new(self.state).list(ctx, filter).await
    }

    /// Counts of the environment's deployments (that the caller may read) by status, and what
    /// its deployments hold.
    pub async fn status(&self, ctx: &RequestContext, key: &str) -> ApiResult<EnvironmentStatus> {
        let env = self.state.store.get_environment(key).await?.ok_or_else(|| not_found(key))?;
        ctx.require(perm::ENVIRONMENT_READ, Scope::env(env.scope(), None), || not_found(key))?;
        let visible = crate::deployments::Deployments::new(self.state).visibility(ctx).await?;
        let counts = self.state.store.environment_status_counts(&env.name, visible.as_ref()).await?;
        let usage = self.usage(&env).await?;
        Ok(EnvironmentStatus { environment: env, counts, usage })
    }
}

/// `resources` of an environment: its limits, what is allocated and what is available (`null`
/// where there is no limit). `replicas` is per deployment, so only a limit.
pub fn resources_view(limits: &Limits, usage: &Usage) -> Value {
    use crate::resources::{format_cpu, format_memory};
    let available = |limit: Option<i64>, used: i64| limit.map(|l| (l - used).max(0));
    json!({
        "limits": limits.doc(),
        "allocated": {
            "cpu": format_cpu(usage.cpu_millis),
            "memory": format_memory(usage.memory_bytes),
            "pods": usage.pods,
        },
        "available": {
            "cpu": available(limits.cpu_millis, usage.cpu_millis).map(format_cpu),
            "memory": available(limits.memory_bytes, usage.memory_bytes).map(format_memory),
            "pods": available(limits.pods, usage.pods),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(links: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        links.iter().map(|(n, p)| (n.to_string(), p.map(str::to_string))).collect()
    }

    #[test]
    fn promotion_chains_end_and_never_loop() {
        let default = chain(&[("development", Some("staging")), ("staging", Some("production")), ("production", None)]);
        for from in ["development", "staging", "production"] {
            assert_eq!(chain_problem(&default, from), None, "{from}");
        }
        // production → development closes the loop.
        let looped = chain(&[
            ("development", Some("staging")),
            ("staging", Some("production")),
            ("production", Some("development")),
        ]);
        assert_eq!(
            chain_problem(&looped, "production"),
            Some(ChainProblem::Cycle(
                ["production", "development", "staging", "production"].map(String::from).to_vec()
            ))
        );
        assert_eq!(
            chain_problem(&chain(&[("a", Some("a"))]), "a"),
            Some(ChainProblem::Cycle(vec!["a".into(), "a".into()]))
        );
        assert_eq!(
            chain_problem(&chain(&[("a", Some("b")), ("b", Some("nowhere"))]), "a"),
            Some(ChainProblem::Unknown("nowhere".into()))
        );
        // Two chains may merge (qa and staging both promote to production).
        let merged = chain(&[("qa", Some("production")), ("staging", Some("production")), ("production", None)]);
        assert_eq!(chain_problem(&merged, "qa"), None);
    }

    #[test]
    fn limit_refusals_name_the_limit_and_the_amounts() {
        let e = Exceeded { limit: "pods", max: 4, allocated: 3, requested: 2, available: 1 };
        let err = limit_exceeded("development", &e);
        assert_eq!((err.status, err.code), (StatusCode::CONFLICT, ErrorCode::ReplicaLimit));
        assert_eq!(err.message, "environment \"development\" limits pods to 4: 3 allocated, 1 available, 2 requested");
        assert_eq!(err.details["available"], 1);
        let cpu = Exceeded { limit: "cpu", max: 2000, allocated: 1500, requested: 1000, available: 500 };
        let err = limit_exceeded("staging", &cpu);
        assert_eq!(err.details["available"], "500m");
        assert_eq!(err.details["max"], "2");
        let r = Exceeded { limit: "replicas", max: 3, allocated: 1, requested: 5, available: 3 };
        assert!(limit_exceeded("x", &r).message.contains("at most 3 replicas per deployment; 5 requested"));
    }

    #[test]
    fn resources_show_what_is_left() {
        let limits = Limits { cpu_millis: Some(8000), memory_bytes: None, replicas: Some(3), pods: Some(10) };
        let usage = Usage { pods: 12, cpu_millis: 1500, memory_bytes: 3 << 30 };
        let v = resources_view(&limits, &usage);
        assert_eq!(v["limits"], json!({ "cpu": "8", "memory": null, "replicas": 3, "pods": 10 }));
        assert_eq!(v["allocated"], json!({ "cpu": "1500m", "memory": "3Gi", "pods": 12 }));
        assert_eq!(v["available"], json!({ "cpu": "6500m", "memory": null, "pods": 0 }), "never negative");
    }
}
