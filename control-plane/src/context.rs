//! Who is asking, and under which request: what every service call takes, so that permission
//! checks, environment locks and the audit record are applied in one place per mutation.

use axum::extract::{FromRef, FromRequestParts};
use axum::extract::{MatchedPath, RawPathParams};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode, RequestId};
use crate::audit::AuditScope;
use crate::authz::{Decision, Denial, Permission, Role, RoleBinding, Scope, decide};
use crate::store::{Audit, OperationCallback};

/// What kind of credential the caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The bootstrap administrator token written at first start (`admin.token`).
    Admin,
    /// A user, through a login session token.
    User,
    /// An API key (machines).
    ApiKey,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Admin => "admin",
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "apikey",
        }
    }
}

/// The authenticated caller, with its role bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The record's id (admin token id, user id, API key id).
    pub id: String,
    /// Username, key name, or the admin token id.
    pub name: String,
    pub roles: Vec<RoleBinding>,
    /// For an API key: the principal that created it (its audit name).
    pub owner: Option<String>,
}

impl Principal {
    pub fn admin(id: &str) -> Self {
        Self {
            kind: PrincipalKind::Admin,
            id: id.into(),
            name: id.into(),
            roles: vec![RoleBinding::global(Role::DeploymentAdmin)],
            owner: None,
        }
    }

    /// How the principal appears in audit records: `user:alice`, `apikey:ci-deploy/key-3f9c…`,
    /// `admin:admin-3f9c…`.
    pub fn audit_name(&self) -> String {
        match self.kind {
            // Key names are chosen freely and need not be unique: the id tells keys apart.
            PrincipalKind::ApiKey => format!("apikey:{}/{}", self.name, self.id),
            _ => format!("{}:{}", self.kind.as_str(), self.name),
        }
    }

    /// The person (or bootstrap credential) behind the request: an API key stands for whoever
    /// created it, so nobody approves their own change through a key of theirs.
    pub fn identity(&self) -> String {
        self.owner.clone().unwrap_or_else(|| self.audit_name())
    }
}

/// A request as services see it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub principal: Principal,
    pub request_id: String,
    /// The client's `Idempotency-Key`, if it sent one (1-255 printable ASCII characters).
    pub idempotency_key: Option<String>,
    /// The client's address, when known.
    pub source: Option<String>,
    /// The callback its `Ferry-Callback-Url` asked for (secret sealed): operations this request
    /// starts carry it, and their `operation.completed` goes there too (`webhooks/`).
    pub callback: Option<OperationCallback>,
}

impl RequestContext {
    /// Whether the principal may do `p` on an object in `scope`: the one place permission is
    /// decided ([`crate::authz::decide`]). A denial is a 403 naming what is missing; an object
    /// in a workspace the caller has no role in is `hidden()` (its own 404), so that its
    /// existence does not leak.
    pub fn require(&self, p: Permission, scope: Scope<'_>, hidden: impl FnOnce() -> ApiError) -> ApiResult<()> {
        match decide(&self.principal.roles, p, scope) {
            Decision::Allow => Ok(()),
            Decision::Hidden => Err(hidden()),
            Decision::Deny(denial) => Err(forbidden(&denial)),
        }
    }

    /// [`Self::require`] for platform-wide objects (users, keys, agents, the audit trail,
    /// workspaces themselves): only unscoped bindings count, so a role limited to one workspace
    /// learns nothing about the others through them.
    pub fn require_global(&self, p: Permission) -> ApiResult<()> {
        match decide(&self.unscoped_roles(), p, Scope::GLOBAL) {
            Decision::Allow => Ok(()),
            Decision::Deny(denial) => Err(forbidden(&denial)),
            Decision::Hidden => Err(forbidden(&Denial::Permission { permission: p.to_string() })),
        }
    }

    /// Whether [`Self::require_global`] would allow `p`.
    pub fn allows_global(&self, p: Permission) -> bool {
        decide(&self.unscoped_roles(), p, Scope::GLOBAL) == Decision::Allow
    }

    fn unscoped_roles(&self) -> Vec<RoleBinding> {
        self.principal.roles.iter().filter(|b| b.workspace.is_none()).cloned().collect()
    }

    /// Whether `p` would be allowed in `scope` (for filtering lists).
    pub fn allows(&self, p: Permission, scope: Scope<'_>) -> bool {
        decide(&self.principal.roles, p, scope) == Decision::Allow
    }

    /// The audit record of a mutation made under this request (outcome `success`; the object
    /// type is the action's prefix, `deployment.scale` → `deployment`). Add what changed with
    /// [`Audit::with_changes`]; secret-looking fields are masked when it is stored.
    pub fn audit(&self, action: &str, target: &str, mut details: Value) -> Audit {
        if let (Some(key), Some(obj)) = (&self.idempotency_key, details.as_object_mut()) {
            obj.insert("idempotencyKey".into(), Value::String(key.clone()));
        }
        if let (Some(callback), Some(obj)) = (&self.callback, details.as_object_mut()) {
            obj.insert("callbackUrl".into(), Value::String(callback.url.clone()));
        }
        Audit::new(self.principal.audit_name(), action, target, self.request_id.clone(), details)
            .with_source(self.source.clone())
    }
}

/// The 403 for a denial, naming the missing permission, environment or roles.
pub fn forbidden(denial: &Denial) -> ApiError {
    let (message, details) = match denial {
        Denial::Permission { permission } => {
            (format!("your roles do not grant {permission}"), json!({ "missingPermission": permission }))
        }
        Denial::Environment { permission, environment } => (
            format!("your roles do not grant {permission} in environment {environment:?}"),
            json!({ "missingPermission": permission, "environment": environment }),
        ),
        Denial::RequiredRole { environment, required } => (
            format!(
                "changes in environment {environment:?} need one of the roles {}",
                required.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
            ),
            json!({ "environment": environment, "requiredRoles": required }),
        ),
    };
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message).with_details(details)
}

impl<S> FromRequestParts<S> for RequestContext
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
        // What a refused request's audit record names (see `AuditScope`).
        if let Some(scope) = parts.extensions.get::<AuditScope>().cloned() {
            scope.set_actor(&principal.audit_name());
            let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_string());
            let target = match RawPathParams::from_request_parts(parts, state).await {
                Ok(params) => params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string()),
                Err(_) => None,
            };
            scope.set_route(route, target);
        }
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
        let Source(source) = Source::from_request_parts(parts, state).await?;
        // Checked (400) before the handler runs, so a bad one changes nothing.
        let callback = if parts.headers.contains_key(crate::webhooks::CALLBACK_URL_HEADER)
            || parts.headers.contains_key(crate::webhooks::CALLBACK_SECRET_HEADER)
        {
            let app = AppState::from_ref(state);
            crate::webhooks::parse_callback(&parts.headers, Some(&app.master_key))?
        } else {
            None
        };
        Ok(Self { principal, request_id, idempotency_key, source, callback })
    }
}

/// The client's IP address, when the server knows it (it always does when serving; handlers
/// called without a socket, as in unit tests, get `None`).
#[derive(Debug, Clone)]
pub struct Source(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self(
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string()),
        ))
    }
}
