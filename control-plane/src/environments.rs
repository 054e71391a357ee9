//! The environments service: every deployment belongs to one; `development`, `staging` and
//! `production` exist from the first start. Handlers (`api/environments.rs`) parse and render.

use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::audit::mask::changes;
use crate::authz::{Role, Scope, perm};
use crate::change_windows::{self, ChangeWindowsDoc};
use crate::context::RequestContext;
use crate::ids::{now_ms, random_id};
use crate::store::{DeploymentFilter, EnvironmentLock, EnvironmentRecord, Visibility};

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
}
