//! The seed's error format: `{"error":{"code","message","details","requestId","documentation"}}`.
//!
//! Handlers and extractors return [`ApiError`]; it travels as a response extension and the
//! request-id middleware renders the body, so every error — including routing and extractor
//! rejections — carries the request id without threading it through handlers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// Where each code is explained (shipped in the repository as `docs/errors.md`).
pub const DOCS_BASE: &str = "docs/errors.md#";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: json!({}) }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400: a field has an invalid value.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_001", message).with_details(json!({ "field": field }))
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AUTH_001", "missing or invalid bearer token")
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ROUTE_001", format!("no such endpoint: {path}"))
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_001",
            "internal error; see the server log for this request id",
        )
    }

    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "requestId": request_id,
                "documentation": format!("{DOCS_BASE}{}", self.code.to_ascii_lowercase()),
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        match e {
            StoreError::Db(sqlx::Error::PoolTimedOut) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE_001", "database busy; retry shortly")
            }
            _ => Self::internal(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
