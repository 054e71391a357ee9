//! The seed's error format: `{"error":{"code","message","details","requestId","documentation"}}`.
//!
//! Handlers and extractors return [`ApiError`]; it travels as a response extension and the
//! request-id middleware renders the body, so every error — including routing and extractor
//! rejections — carries the request id without threading it through handlers.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// Where each code is explained (shipped in the repository as `docs/errors.md`).
pub const DOCS_BASE: &str = "docs/errors.md#";

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal,)*) => {
        /// Every code the REST API emits. Each one has a row (and an anchor) in `docs/errors.md`;
        /// a unit test keeps the two in step.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// 401: missing, unknown, expired or revoked credential.
    Unauthorized = "AUTH_001",
    /// 403: the caller's roles do not allow this here.
    Forbidden = "AUTH_002",
    /// 401: wrong username or password.
    LoginFailed = "AUTH_003",
    /// 429: too many failed logins for this user or from this address.
    TooManyAttempts = "AUTH_004",
    /// 404: no user with this id or name.
    UserNotFound = "USER_001",
    /// 409: the username is taken.
    UserExists = "USER_002",
    /// 404: no API key with this id.
    ApiKeyNotFound = "APIKEY_001",
    /// 400: a field or query parameter has an invalid value, unknown field, wrong type.
    InvalidValue = "VALIDATION_001",
    /// 400: the body is not valid JSON.
    MalformedJson = "VALIDATION_002",
    /// 413: the body is larger than `--max-body-bytes`.
    BodyTooLarge = "VALIDATION_003",
    /// 415: a JSON body without `Content-Type: application/json`.
    UnsupportedMediaType = "VALIDATION_004",
    /// 414: the request URI is longer than Ferry accepts.
    UriTooLong = "VALIDATION_005",
    /// 404: no such endpoint.
    RouteNotFound = "ROUTE_001",
    /// 405: the endpoint exists, not with this method.
    MethodNotAllowed = "ROUTE_002",
    /// 404: no agent with this id.
    AgentNotFound = "AGENT_001",
    /// 404: no bootstrap token with this id.
    TokenNotFound = "AGENT_002",
    /// 404: the deployment has no version with this name.
    VersionNotFound = "DEPLOY_002",
    /// 409: a rollback cannot happen (no earlier good version, the target is the active one, …).
    RollbackFailed = "DEPLOY_003",
    /// 400: more replicas than Ferry's hard cap; 409: a change would pass one of its
    /// environment's limits (cpu, memory, replicas per deployment, pods).
    ReplicaLimit = "DEPLOY_004",
    /// 404: no deployment with this id.
    DeploymentNotFound = "DEPLOY_006",
    /// 409: a deployment with this name already exists in the workspace and environment.
    DeploymentExists = "DEPLOY_008",
    /// 412: the deployment changed since the caller read it (`If-Match`).
    StaleResourceVersion = "DEPLOY_009",
    /// 409: a version with this name exists with another configuration (versions are immutable).
    VersionExists = "DEPLOY_010",
    /// 400/404: no environment with this name or id.
    EnvironmentNotFound = "ENV_001",
    /// 409: the environment is locked.
    EnvironmentLocked = "ENV_002",
    /// 400: an environment's configuration is invalid (an unknown `promotesTo`, a cycle).
    EnvironmentConfigInvalid = "ENV_003",
    /// 500: a stored secret could not be decrypted or sealed again (wrong master key, altered row).
    SecretRotationFailed = "ENV_004",
    /// 409: an environment with this name already exists.
    EnvironmentExists = "ENV_006",
    /// 409: the change is outside the environment's change window.
    ChangeWindowClosed = "ENV_005",
    /// 409: the environment still holds live deployments.
    EnvironmentInUse = "ENV_007",
    /// 409: another environment promotes to this one.
    EnvironmentPromotedTo = "ENV_008",
    /// 409: no promotion this way: the environment is the last of its chain (no `promotesTo`),
    /// or the environment named is not the next (previous) one in the chain.
    NoPromotionTarget = "ENV_009",
    /// 404: no operation with this id.
    OperationNotFound = "OPERATION_001",
    /// 404: no pending change with this id (or you may not see it).
    ApprovalNotFound = "APPROVAL_001",
    /// 403: the requester of a change cannot approve it.
    SelfApproval = "APPROVAL_002",
    /// 409: the change is no longer pending (applied, rejected, expired or failed).
    ApprovalNotPending = "APPROVAL_003",
    /// 404: no workspace with this id or name (or none the caller has a role in).
    WorkspaceNotFound = "WORKSPACE_001",
    /// 409: a workspace with this name already exists.
    WorkspaceExists = "WORKSPACE_002",
    /// 409: the workspace still has live deployments or projects.
    WorkspaceNotEmpty = "WORKSPACE_003",
    /// 409: the `default` workspace cannot be deleted.
    DefaultWorkspace = "WORKSPACE_004",
    /// 404/400: no project with this id (in this workspace).
    ProjectNotFound = "PROJECT_001",
    /// 409: the workspace already has a project with this name.
    ProjectExists = "PROJECT_002",
    /// 409: live deployments still belong to the project.
    ProjectInUse = "PROJECT_003",
    /// 404/400: no AI zone with this id or name (usable here).
    AiZoneNotFound = "AIZONE_001",
    /// 409: an AI zone with this name already exists.
    AiZoneExists = "AIZONE_002",
    /// 422: a Git source's repository is unreachable, timed out, or its URL is malformed.
    SourceUnreachable = "SOURCE_001",
    /// 422: a Git source's branch, tag or commit does not exist.
    SourceRefNotFound = "SOURCE_002",
    /// 422: a Git source's deployment file is missing or invalid.
    SourceFileInvalid = "SOURCE_003",
    /// 422: the source is not accepted here (not available, local without permission,
    /// credentials in the URL, ssh).
    SourceNotAllowed = "SOURCE_004",
    /// 404: no webhook with this id.
    WebhookNotFound = "WEBHOOK_001",
    /// 404: the webhook has no delivery with this id.
    DeliveryNotFound = "WEBHOOK_002",
    /// 422: the `Idempotency-Key` was used before for another request (method, path, query or body).
    IdempotencyKeyReused = "IDEMPOTENCY_001",
    /// 409: the first request with this `Idempotency-Key` is still running.
    IdempotencyInProgress = "IDEMPOTENCY_002",
    /// 409: the first answer to this `Idempotency-Key` was not kept (too large, or a secret shown once).
    IdempotencyNotReplayable = "IDEMPOTENCY_003",
    /// 412: `If-Match` names none of the resource's current entity tags.
    PreconditionFailed = "PRECONDITION_001",
    /// 503: the database is unreachable or saturated, or a capacity limit was hit.
    Unavailable = "UNAVAILABLE_001",
    /// 500: a bug or an unexpected failure.
    Internal = "INTERNAL_001",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
    /// The underlying failure of a 5xx, for the server log only (never sent to the client).
    pub cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: json!({}), cause: None }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Records the underlying failure for the server log: the request-id middleware logs it
    /// once, with the request id. It never reaches the response body.
    pub fn with_cause(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// 400: a field has an invalid value.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidValue, message).with_details(json!({ "field": field }))
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or invalid credential: send Authorization: Bearer <token> or X-API-Key: <key>",
        )
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, format!("no such endpoint: {path}"))
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; see the server log for this request id",
        )
    }

    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "details": self.details,
                "requestId": request_id,
                "documentation": format!("{DOCS_BASE}{}", self.code.as_str().to_ascii_lowercase()),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// The store error becomes the cause: logged with the request id, never shown to the client.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(sqlx::Error::PoolTimedOut) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "database busy; retry shortly")
            }
            StoreError::NotPending(id) => {
                return Self::new(
                    StatusCode::CONFLICT,
                    ErrorCode::ApprovalNotPending,
                    format!("pending change {id:?} was decided meanwhile"),
                )
                .with_details(serde_json::json!({ "approvalId": id }));
            }
            _ => Self::internal(),
        }
        .with_cause(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOC: &str = include_str!("../../../docs/errors.md");

    /// The codes in the table of `docs/errors.md`: rows of the form
    /// ``| <a id="code_001"></a>`CODE_001` | ...``.
    fn documented() -> Vec<(String, String)> {
        DOC.lines()
            .filter_map(|l| l.strip_prefix("| <a id=\""))
            .map(|rest| {
                let (anchor, rest) = rest.split_once("\"></a>`").expect("row: anchor then `CODE`");
                let (code, _) = rest.split_once('`').expect("row: `CODE`");
                (anchor.to_string(), code.to_string())
            })
            .collect()
    }

    #[test]
    fn every_code_is_documented_and_the_doc_lists_no_other() {
        let rows = documented();
        for (anchor, code) in &rows {
            assert_eq!(anchor, &code.to_ascii_lowercase(), "anchor of {code} in docs/errors.md");
        }
        let doc: BTreeSet<&str> = rows.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(doc.len(), rows.len(), "a code has two rows in docs/errors.md");
        let emitted: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(emitted.len(), ErrorCode::ALL.len(), "two variants share a code");
        let undocumented: Vec<_> = emitted.difference(&doc).collect();
        assert!(undocumented.is_empty(), "codes missing from docs/errors.md: {undocumented:?}");
        let unknown: Vec<_> = doc.difference(&emitted).collect();
        assert!(unknown.is_empty(), "docs/errors.md lists codes ErrorCode lacks: {unknown:?}");
        // The documentation link of every error points at its row.
        for code in ErrorCode::ALL {
            let body = ApiError::new(StatusCode::BAD_REQUEST, *code, "x").body("req-1");
            let link = body["error"]["documentation"].as_str().unwrap();
            let anchor = link.strip_prefix(DOCS_BASE).unwrap();
            assert!(DOC.contains(&format!("<a id=\"{anchor}\"></a>")), "{link}");
        }
    }
}
