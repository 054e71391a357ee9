//! The audit trail service: reading the trail (`GET /v1/audit`) and a deployment's audit records,
//! history (revisions), events (status transitions) and timeline (both merged), each behind the
//! same permission check as reading the object; and the recording of refused requests.
//!
//! Writing happens elsewhere, once per mutation: services build the record with
//! [`RequestContext::audit`] and the store writes it in the mutation's transaction. Requests that
//! are refused never reach a store write, so the request-id middleware (`api/mod.rs`) records them
//! with [`refused`], from what [`AuditScope`] learnt while the request was routed.

pub mod mask;

use std::sync::{Arc, Mutex};

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult};
use crate::authz::perm;
use crate::context::RequestContext;
use crate::domain::AuditOutcome;
use crate::store::{
    Audit, AuditFilter, AuditRecord, DeploymentRecord, EventRecord, Page, RevisionRecord, TimelineItem,
};

/// What a refused request's audit record names, learnt while the request is routed: the
/// request-id middleware puts one in every request's extensions, the [`RequestContext`]
/// extractor fills in the caller, the route template and the object id. An authentication layer
/// that refuses with 403 before a `RequestContext` exists should call [`AuditScope::set_actor`].
#[derive(Debug, Clone, Default)]
pub struct AuditScope(Arc<Mutex<Scope>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub actor: Option<String>,
    /// The matched route template, e.g. `/v1/deployments/{id}/scale`.
    pub route: Option<String>,
    /// The `{id}` of the route, if it has one.
    pub target: Option<String>,
}

impl AuditScope {
    pub fn set_actor(&self, actor: &str) {
        self.0.lock().expect("audit scope").actor = Some(actor.to_string());
    }

    pub fn set_route(&self, route: Option<String>, target: Option<String>) {
        let mut s = self.0.lock().expect("audit scope");
        s.route = route.or(s.route.take());
        s.target = target.or(s.target.take());
    }

    pub fn get(&self) -> Scope {
        self.0.lock().expect("audit scope").clone()
    }
}

/// The audit record of a refused request, if it gets one:
/// * 403 (permission denied), whoever asked: outcome `denied`;
/// * 409 or 412 (a conflict, a locked environment, a stale version) to a change asked for by an
///   authenticated caller: outcome `failed`.
///
/// Nothing else: 401s are anonymous junk (recording them would let anyone fill the audit table;
/// they are logged), and 400/404s change nothing and say nothing about permission. Failed logins
/// are recorded by the login code with [`crate::store::Store::record_audit`].
pub fn refused(
    scope: &Scope,
    method: &Method,
    path: &str,
    request_id: &str,
    source: Option<String>,
    error: &ApiError,
) -> Option<Audit> {
    let mutation = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let outcome = match error.status {
        StatusCode::FORBIDDEN => AuditOutcome::Denied,
        StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED if mutation && scope.actor.is_some() => {
            AuditOutcome::Failed
        }
        _ => return None,
    };
    let route = scope.route.as_deref().unwrap_or(path);
    let details = json!({
        "status": error.status.as_u16(),
        "code": error.code.as_str(),
        "message": error.message,
        "error": error.details,
    });
    Some(
        Audit::new(
            scope.actor.clone().unwrap_or_else(|| "anonymous".into()),
            format!("{method} {route}"),
            scope.target.clone().unwrap_or_default(),
            request_id,
            details,
        )
        .with_object_type(object_type_for_route(route))
        .with_outcome(outcome)
        .with_source(source),
    )
}

/// The kind of object a route is about: `/v1/deployments/{id}/scale` → `deployment`,
/// `/v1/agents/tokens/{id}` → `token`.
pub fn object_type_for_route(route: &str) -> &'static str {
    let mut parts = route.trim_start_matches('/').split('/').skip(1);
    match (parts.next().unwrap_or(""), parts.next().unwrap_or("")) {
        ("agents", "tokens") => "token",
        ("agents", _) => "agent",
        ("deployments" | "logs", _) => "deployment",
        ("operations", _) => "operation",
        ("environments", _) => "environment",
        ("users", _) | ("auth", _) => "user",
        ("api-keys", _) => "apikey",
        ("approvals", _) => "approval",
        ("workspaces", _) => "workspace",
        ("projects", _) => "project",
        ("aizones", _) => "aizone",
        ("audit", _) => "audit",
        _ => "other",
    }
}

/// The audit trail service.
pub struct AuditTrail<'a> {
    state: &'a AppState,
}

impl<'a> AuditTrail<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// A page of the whole trail, filtered.
    pub async fn list(&self, ctx: &RequestContext, filter: &AuditFilter<'_>) -> ApiResult<(Vec<AuditRecord>, i64)> {
        ctx.require_global(perm::AUDIT_READ)?;
        Ok(self.state.store.list_audit(filter).await?)
    }

    /// A page of a deployment's audit records (deleted deployments keep theirs).
    pub async fn deployment_audit(
        &self,
        ctx: &RequestContext,
        id: &str,
        page: Page,
    ) -> ApiResult<(Vec<AuditRecord>, i64)> {
        self.readable(ctx, id).await?;
        let filter = AuditFilter {
            actor: None,
            action: None,
            target: Some(id),
            object_type: None,
            outcome: None,
            from_ms: None,
            to_ms: None,
            page,
        };
        Ok(self.state.store.list_audit(&filter).await?)
    }

    /// A page of a deployment's revisions, with its current revision.
    pub async fn history(
        &self,
        ctx: &RequestContext,
        id: &str,
        page: Page,
    ) -> ApiResult<(DeploymentRecord, Vec<RevisionRecord>, i64)> {
        let d = self.readable(ctx, id).await?;
        let (rows, total) = self.state.store.deployment_history(id, page).await?;
        Ok((d, rows, total))
    }

    /// A page of a deployment's status transitions.
    pub async fn events(&self, ctx: &RequestContext, id: &str, page: Page) -> ApiResult<(Vec<EventRecord>, i64)> {
        self.readable(ctx, id).await?;
        Ok(self.state.store.deployment_events(id, page).await?)
    }

    /// A page of a deployment's audit records and status transitions, merged in time order.
    pub async fn timeline(&self, ctx: &RequestContext, id: &str, page: Page) -> ApiResult<(Vec<TimelineItem>, i64)> {
        self.readable(ctx, id).await?;
        Ok(self.state.store.deployment_timeline(id, page).await?)
    }

    /// The deployment, deleted or not, if the caller may read it (the same answers as reading the
    /// deployment itself: 404 if there is none, the permission check's refusal otherwise).
    async fn readable(&self, ctx: &RequestContext, id: &str) -> ApiResult<DeploymentRecord> {
        let not_found = || crate::deployments::not_found(id);
        let (d, _) = self.state.store.get_deployment_any(id).await?.ok_or_else(not_found)?;
        let env = self.state.store.get_environment(&d.environment).await?.ok_or_else(not_found)?;
        ctx.require(perm::DEPLOYMENT_READ, crate::authz::Scope::env(env.scope(), Some(&d.workspace)), not_found)?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    fn err(status: StatusCode) -> ApiError {
        ApiError::new(status, ErrorCode::Unauthorized, "no").with_details(json!({ "permission": "deployment:scale" }))
    }

    #[test]
    fn refused_requests_are_audited_as_denied_or_failed() {
        let scope = Scope {
            actor: Some("user:dev".into()),
            route: Some("/v1/deployments/{id}/scale".into()),
            target: Some("deploy-1".into()),
        };
        let a = refused(
            &scope,
            &Method::POST,
            "/v1/deployments/deploy-1/scale",
            "req-1",
            Some("10.0.0.1".into()),
            &err(StatusCode::FORBIDDEN),
        )
        .unwrap();
        assert_eq!(
            (a.actor.as_str(), a.action.as_str(), a.object_type.as_str(), a.target.as_str(), a.outcome),
            ("user:dev", "POST /v1/deployments/{id}/scale", "deployment", "deploy-1", AuditOutcome::Denied)
        );
        assert_eq!((a.request_id.as_str(), a.source.as_deref()), ("req-1", Some("10.0.0.1")));
        assert_eq!(a.details["status"], 403);
        assert_eq!(a.details["error"]["permission"], "deployment:scale");
        // A denied read is audited too.
        let read = refused(&scope, &Method::GET, "/x", "r", None, &err(StatusCode::FORBIDDEN)).unwrap();
        assert_eq!(read.outcome, AuditOutcome::Denied);
        // Conflicts of authenticated changes fail; of reads, or of anonymous callers, are not audited.
        let conflict = refused(&scope, &Method::POST, "/x", "r", None, &err(StatusCode::CONFLICT)).unwrap();
        assert_eq!(conflict.outcome, AuditOutcome::Failed);
        assert!(refused(&scope, &Method::GET, "/x", "r", None, &err(StatusCode::CONFLICT)).is_none());
        assert!(refused(&Scope::default(), &Method::POST, "/x", "r", None, &err(StatusCode::CONFLICT)).is_none());
        for status in [StatusCode::UNAUTHORIZED, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::OK] {
            assert!(refused(&scope, &Method::POST, "/x", "r", None, &err(status)).is_none(), "{status}");
        }
        // Without a route (refused before routing) the raw path names the action.
        let early =
            refused(&Scope::default(), &Method::DELETE, "/v1/agents/a-1", "r", None, &err(StatusCode::FORBIDDEN))
                .unwrap();
        assert_eq!((early.actor.as_str(), early.action.as_str()), ("anonymous", "DELETE /v1/agents/a-1"));
        assert_eq!(early.object_type, "agent");
    }

    #[test]
    fn routes_name_their_object_type() {
        for (route, kind) in [
            ("/v1/deployments", "deployment"),
            ("/v1/deployments/{id}/scale", "deployment"),
            ("/v1/agents/{id}", "agent"),
            ("/v1/agents/tokens/{id}", "token"),
            ("/v1/environments/{id}/lock", "environment"),
            ("/v1/api-keys", "apikey"),
            ("/v1/users/{id}", "user"),
            ("/v1/approvals/{id}/approve", "approval"),
            ("/v1/audit", "audit"),
            ("/v1/logs/stream/{id}", "deployment"),
            ("/elsewhere", "other"),
        ] {
            assert_eq!(object_type_for_route(route), kind, "{route}");
        }
    }
}
