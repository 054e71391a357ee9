//! The REST API under `/v1`: routing, request ids, authentication, body limits and extractors
//! that answer bad input in the seed's error format. Handlers live in one module per seed
//! section and call the store / services; they hold no state of their own.

mod agents;
mod deployments;
mod environments;
pub mod error;
mod limits;
mod logs;
mod secrets;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

pub use error::{ApiError, ApiResult, ErrorCode};

use crate::AppState;

const REQUEST_ID: &str = "x-request-id";
/// How much of a request's path its log line shows.
const LOG_PATH_CHARS: usize = 1024;

/// The caller, as authenticated by [`require_admin`]; recorded in audit entries.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// This request's id (taken from a sane incoming `X-Request-Id`, else generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub fn router(state: AppState) -> Router {
    let authed = Router::new()
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/tokens", get(agents::list_tokens).post(agents::create_token))
        .route("/v1/agents/tokens/{id}", axum::routing::delete(agents::delete_token))
        .route("/v1/agents/{id}", get(agents::get).delete(agents::revoke))
        .route("/v1/deployments", get(deployments::list).post(deployments::create))
        .route("/v1/deployments/{id}", get(deployments::get).put(deployments::update).delete(deployments::delete))
        .route("/v1/deployments/{id}/status", get(deployments::status))
        .route("/v1/deployments/{id}/scale", post(deployments::scale))
        .route("/v1/deployments/{id}/secrets", get(secrets::get_deployment).put(secrets::put_deployment))
        .route("/v1/deployments/{id}/{action}", post(deployments::lifecycle))
        .route("/v1/operations/{id}", get(deployments::get_operation))
        .route("/v1/environments", get(environments::list).post(environments::create))
        .route("/v1/environments/{id}", get(environments::get))
        .route("/v1/environments/{id}/secrets", get(secrets::get_environment).put(secrets::put_environment))
        .route("/v1/logs/deployments/{id}", get(logs::list))
        .route("/v1/logs/stream/{id}", get(logs::stream))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::limit_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/v1/health", get(health).route_layer(middleware::from_fn_with_state(state.clone(), limits::limit_body)))
        .merge(authed)
        .fallback(|uri: Uri| async move { ApiError::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), request_id))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => {
            Json(serde_json::json!({ "status": "healthy", "version": env!("CARGO_PKG_VERSION") })).into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "store unavailable")
            .with_cause(e)
            .into_response(),
    }
}

/// Assigns the request id, renders [`ApiError`] bodies and logs each request once; a failure's
/// cause (e.g. a store error) is logged there, with the request id, and stays out of the body.
async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| crate::ids::random_id("req"));
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    // The log gets the start of a long path (a refused URI can be up to hyper's 64 KiB).
    let path: String = req.uri().path().chars().take(LOG_PATH_CHARS).collect();
    let mut res = match limits::check(req, &state) {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let mut cause = None;
    if let Some(mut err) = res.extensions_mut().remove::<ApiError>() {
        cause = err.cause.take().map(|c| (err.code, c));
        let status = res.status();
        let mut headers = std::mem::take(res.headers_mut());
        res = (status, Json(err.body(&id))).into_response();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_TYPE);
        res.headers_mut().extend(headers);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let status = res.status().as_u16();
    match cause {
        Some((code, error)) => {
            tracing::error!(%method, %path, status, request_id = %id, %code, %error, "request failed");
        }
        None => tracing::info!(%method, %path, status, request_id = %id, "request"),
    }
    res
}

/// Every `/v1` route except health requires the admin bearer token.
async fn require_admin(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
        return ApiError::unauthorized().into_response();
    };
    match state.store.admin_token_by_hash(&crate::ids::hash_secret(token)).await {
        Ok(Some(id)) => {
            req.extensions_mut().insert(Actor(format!("admin:{id}")));
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized().into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1) and separated from the token by one or more spaces.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// `Json` whose rejections are [`ApiError`]s: malformed JSON, unknown fields, wrong types,
/// missing content type and oversized bodies each get a precise 4xx.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidValue, e.body_text())
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::MalformedJson, e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "expected a request body with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the request body is larger than the limit",
        ),
        other => ApiError::new(other.status(), ErrorCode::MalformedJson, other.body_text()),
    }
}

/// `Query` with [`ApiError`] rejections.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidValue, e.body_text()))
    }
}

/// `Path` with [`ApiError`] rejections.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidValue, e.body_text()))
    }
}

/// Seed-style pagination parameters.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageParams {
    pub page: Option<i64>,
    pub page_size: Option<i64>,
    pub status: Option<String>,
}

pub const MAX_PAGE_SIZE: i64 = 200;

impl PageParams {
    /// `(page, pageSize)`, checked: `page × pageSize` (and so every offset computed from them)
    /// fits in an `i64`.
    pub fn resolve(&self) -> ApiResult<(i64, i64)> {
        let page = self.page.unwrap_or(1);
        let size = self.page_size.unwrap_or(20);
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::validation("pageSize", format!("pageSize must be between 1 and {MAX_PAGE_SIZE}")));
        }
        if page < 1 {
            return Err(ApiError::validation("page", "page must be 1 or more"));
        }
        if page.checked_mul(size).is_none() {
            return Err(ApiError::validation(
                "page",
                format!("page must be at most {} with pageSize {size}", i64::MAX / size),
            ));
        }
        Ok((page, size))
    }
}

/// One page of an in-memory list, for `(page, size)` from [`PageParams::resolve`].
pub fn paginate<T>(items: impl IntoIterator<Item = T>, page: i64, size: i64) -> Vec<T> {
    let offset = usize::try_from((page - 1) * size).unwrap_or(usize::MAX);
    items.into_iter().skip(offset).take(usize::try_from(size).unwrap_or(usize::MAX)).collect()
}

pub fn page_json<T: serde::Serialize>(data: Vec<T>, page: i64, page_size: i64, total: i64) -> serde_json::Value {
    serde_json::json!({
        "data": data,
        "pagination": {
            "page": page,
            "pageSize": page_size,
            "totalCount": total,
            "hasNext": page * page_size < total,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded_so_offsets_cannot_overflow() {
        let resolve =
            |page, page_size| PageParams { page: Some(page), page_size: Some(page_size), status: None }.resolve();
        assert_eq!(resolve(1, 1).unwrap(), (1, 1));
        assert_eq!(resolve(i64::MAX, 1).unwrap(), (i64::MAX, 1));
        assert_eq!(resolve(i64::MAX / 200, 200).unwrap(), (i64::MAX / 200, 200));
        for (page, size) in [(i64::MAX, 20), (i64::MAX / 200 + 1, 200), (0, 20), (-1, 20), (i64::MIN, 20)] {
            let e = resolve(page, size).unwrap_err();
            assert_eq!((e.code, e.details["field"].as_str()), (ErrorCode::InvalidValue, Some("page")), "{page}");
        }
        assert_eq!(paginate(1..=5, 2, 2), vec![3, 4]);
        assert_eq!(paginate(1..=5, 3, 2), vec![5]);
        assert!(paginate(1..=5, i64::MAX, 1).is_empty());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bEaReR  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("Bearer", None),
            ("Token abc", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }
}
