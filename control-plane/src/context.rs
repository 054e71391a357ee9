//! Who is asking, and under which request: what every service call takes, so that permission
//! checks, environment locks and the audit record are applied in one place per mutation.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams};
use axum::http::request::Parts;
use serde_json::Value;

use crate::api::{Actor, ApiError, RequestId};
use crate::audit::AuditScope;
use crate::store::Audit;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap administrator credential (`admin:<token id>`): may do everything.
    Admin(String),
}

impl Principal {
    /// How the principal appears in audit records.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Admin(id) => id.clone(),
        }
    }
}

/// A request as services see it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub principal: Principal,
    pub request_id: String,
    /// The client's `Idempotency-Key`, if it sent one (1-255 printable ASCII characters).
    pub idempotency_key: Option<String>,
    /// The client's address (the TCP peer's IP), recorded in audit records; `None` when the
    /// server was not started with connection info (unit tests).
    pub source: Option<String>,
}

/// What a principal is about to do, for the permission check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Create,
    Update,
    Scale,
    Operate,
    Delete,
}

impl RequestContext {
    /// Whether the principal may do `action` in `environment`. The one place permission is
    /// decided; roles and environment restrictions (governance) extend it.
    pub fn authorize(&self, _action: Action, _environment: &str) -> Result<(), ApiError> {
        match &self.principal {
            Principal::Admin(_) => Ok(()),
        }
    }

    /// The audit record of a mutation made under this request (outcome `success`; the object
    /// type is the action's prefix, `deployment.scale` → `deployment`). Add what changed with
    /// [`Audit::with_changes`]; secret-looking fields are masked when it is stored.
    pub fn audit(&self, action: &str, target: &str, mut details: Value) -> Audit {
        if let (Some(key), Some(obj)) = (&self.idempotency_key, details.as_object_mut()) {
            obj.insert("idempotencyKey".into(), Value::String(key.clone()));
        }
        Audit::new(self.principal.audit_name(), action, target, self.request_id.clone(), details)
            .with_source(self.source.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let actor = parts.extensions.get::<Actor>().cloned().ok_or_else(ApiError::unauthorized)?;
        // What a refused request's audit record names (see `AuditScope`).
        if let Some(scope) = parts.extensions.get::<AuditScope>().cloned() {
            scope.set_actor(&actor.0);
            let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_string());
            let target = match RawPathParams::from_request_parts(parts, state).await {
                Ok(params) => params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string()),
                Err(_) => None,
            };
            scope.set_route(route, target);
        }
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let idempotency_key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
                Some(
                    key.ok_or_else(|| ApiError::validation("Idempotency-Key", "1-255 printable ASCII characters"))?
                        .to_string(),
                )
            }
        };
        Ok(Self { principal: Principal::Admin(actor.0), request_id, idempotency_key, source })
    }
}
