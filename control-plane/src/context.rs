//! Who is asking, and under which request: what every service call takes, so that permission
//! checks, environment locks and the audit record are applied in one place per mutation.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;

use crate::api::{Actor, ApiError, RequestId};
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

    /// The audit record of a mutation made under this request.
    pub fn audit(&self, action: &'static str, target: &str, mut details: Value) -> Audit {
        if let (Some(key), Some(obj)) = (&self.idempotency_key, details.as_object_mut()) {
            obj.insert("idempotencyKey".into(), Value::String(key.clone()));
        }
        Audit {
            actor: self.principal.audit_name(),
            action,
            target: target.into(),
            request_id: self.request_id.clone(),
            details,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let actor = parts.extensions.get::<Actor>().cloned().ok_or_else(ApiError::unauthorized)?;
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
        Ok(Self { principal: Principal::Admin(actor.0), request_id, idempotency_key })
    }
}
