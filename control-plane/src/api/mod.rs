//! The REST API under `/v1`: routing, request ids, authentication, body limits and extractors
//! that answer bad input in the seed's error format. Handlers live in one module per seed
//! section and call the store / services; they hold no state of their own. Every authenticated
//! route also gets the API contract ([`contract`]): idempotency keys on `POST`, `ETag` on reads,
//! `If-Match` on writes.

mod agents;
mod approvals;
mod audit;
mod auth;
mod contract;
mod deployments;
mod environments;
pub mod error;
pub mod idempotency;
mod limits;
mod logs;
pub(crate) mod openapi;
pub mod preconditions;
mod promotions;
mod schemas;
mod secrets;
mod sources;
mod versions;
mod webhooks;
mod workspaces;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;

pub use approvals::approval_view;
pub use deployments::operation_view;
pub use error::{ApiError, ApiResult, ErrorCode};

use crate::AppState;
use crate::audit::AuditScope;

const REQUEST_ID: &str = "x-request-id";
/// How much of a request's path its log line shows.
const LOG_PATH_CHARS: usize = 1024;

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
        .route("/v1/deployments/direct", post(deployments::create))
        .route("/v1/deployments/github", post(sources::create_github))
        .route("/v1/deployments/sources", get(sources::list))
        .route("/v1/deployments/sources/validate", post(sources::validate))
        .route("/v1/deployments/{id}", get(deployments::get).put(deployments::update).delete(deployments::delete))
        .route("/v1/deployments/{id}/status", get(deployments::status).patch(versions::patch_status))
        .route("/v1/deployments/{id}/versions", get(versions::list).post(versions::create))
        .route("/v1/deployments/{id}/versions/{version}", get(versions::get))
        .route("/v1/deployments/{id}/versions/{version}/deploy", post(versions::deploy))
        .route("/v1/deployments/{id}/versions/{version}/rollback", post(versions::rollback_to))
        .route("/v1/deployments/{id}/rollback", post(versions::rollback_previous))
        .route("/v1/deployments/{id}/config", get(versions::get_config).put(versions::put_config))
        .route("/v1/deployments/{id}/env", get(versions::get_env).put(versions::put_env))
        .route("/v1/deployments/{id}/audit", get(audit::deployment))
        .route("/v1/deployments/{id}/history", get(audit::history))
        .route("/v1/deployments/{id}/events", get(audit::events))
        .route("/v1/deployments/{id}/timeline", get(audit::timeline))
        .route("/v1/deployments/{id}/scale", post(deployments::scale))
        .route("/v1/deployments/{id}/secrets", get(secrets::get_deployment).put(secrets::put_deployment))
        .route("/v1/deployments/{id}/promote", post(promotions::promote_deployment))
        .route("/v1/deployments/{id}/{action}", post(deployments::lifecycle))
        .route("/v1/operations/{id}", get(deployments::get_operation))
        .route("/v1/environments", get(environments::list).post(environments::create))
        .route("/v1/environments/{id}", get(environments::get).put(environments::update).delete(environments::delete))
        .route("/v1/environments/{id}/config", get(environments::get_config).put(environments::put_config))
        .route("/v1/environments/{id}/variables", get(environments::get_variables).put(environments::put_variables))
        .route("/v1/environments/{id}/limits", get(environments::get_limits).put(environments::put_limits))
        .route("/v1/environments/{id}/deployments", get(environments::deployments))
        .route("/v1/environments/{id}/status", get(environments::status))
        .route("/v1/environments/{id}/lock", post(environments::lock))
        .route("/v1/environments/{id}/unlock", post(environments::unlock))
        .route("/v1/environments/{id}/promote", post(promotions::promote_environment))
        .route("/v1/environments/{id}/restrictions", axum::routing::put(environments::set_restrictions))
        .route(
            "/v1/environments/{id}/change-windows",
            get(environments::get_change_windows)
                .put(environments::set_change_windows)
                .delete(environments::delete_change_windows),
        )
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::get))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/v1/auth/me", get(auth::me))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/users", get(auth::list_users).post(auth::create_user))
        .route("/v1/users/{id}", get(auth::get_user).put(auth::update_user).delete(auth::delete_user))
        .route("/v1/api-keys", get(auth::list_keys).post(auth::create_key))
        .route("/v1/api-keys/{id}", axum::routing::delete(auth::revoke_key))
        .route("/v1/workspaces", get(workspaces::list_workspaces).post(workspaces::create_workspace))
        .route(
            "/v1/workspaces/{id}",
            get(workspaces::get_workspace).put(workspaces::update_workspace).delete(workspaces::delete_workspace),
        )
        .route("/v1/projects", get(workspaces::list_projects).post(workspaces::create_project))
        .route(
            "/v1/projects/{id}",
            get(workspaces::get_project).put(workspaces::update_project).delete(workspaces::delete_project),
        )
        .route("/v1/aizones", get(workspaces::list_zones).post(workspaces::create_zone))
        .route("/v1/aizones/{id}", get(workspaces::get_zone).put(workspaces::update_zone))
        .route("/v1/aizones/{id}/deployments", get(workspaces::zone_deployments))
        .route("/v1/environments/{id}/secrets", get(secrets::get_environment).put(secrets::put_environment))
        .route("/v1/logs/deployments/{id}", get(logs::list))
        .route("/v1/logs/stream/{id}", get(logs::stream))
        .route("/v1/audit", get(audit::list))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/v1/webhooks/{id}", get(webhooks::get).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(webhooks::redeliver))
        .route_layer(middleware::from_fn_with_state(state.clone(), contract::layer))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::limit_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let open = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/openapi.json", get(openapi::json).route_layer(middleware::from_fn(preconditions::read)))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::limit_body));
    let routes = Router::new()
        .merge(open)
        .merge(authed)
        .merge(openapi::ui())
        .fallback(|uri: Uri| async move { ApiError::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state.clone());
    // Writes read the resource they change through the routes (`If-Match`); the copy they use
    // does not carry itself.
    let internal = preconditions::Internal::new(routes.clone());
    routes.layer(Extension(internal)).layer(middleware::from_fn_with_state(state, request_id))
}

#[utoipa::path(
    get,
    path = "/v1/health",
    operation_id = "health",
    tag = "meta",
    summary = "Is the server up (public)",
    responses(
        (status = 200, description = "Healthy", body = schemas::Health),
    ),
)]
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
/// A refused request (403, or a conflict refusing an authenticated change) gets its audit record
/// here ([`crate::audit::refused`]), whichever layer refused it.
async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| crate::ids::random_id("req"));
    req.extensions_mut().insert(RequestId(id.clone()));
    let scope = AuditScope::default();
    req.extensions_mut().insert(scope.clone());
    let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
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
        if let Some(audit) = crate::audit::refused(&scope.get(), &method, &path, &id, source.clone(), &err) {
            // The refusal stands whether or not it could be recorded.
            if let Err(e) = state.store.record_audit(&audit).await {
                tracing::error!(request_id = %id, action = %audit.action, error = %e, "could not audit a refused request");
            }
        }
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
    let source = source.as_deref().unwrap_or("-");
    match cause {
        Some((code, error)) => {
            tracing::error!(%method, %path, status, request_id = %id, %source, %code, %error, "request failed");
        }
        // Refused credentials are logged (not audited: anyone can send them).
        None if status == 401 => {
            tracing::warn!(%method, %path, status, request_id = %id, %source, "request refused: not authenticated")
        }
        None => tracing::info!(%method, %path, status, request_id = %id, %source, "request"),
    }
    res
}

/// Every `/v1` route except health and login needs a credential: the principal it names is
/// what services authorize against ([`crate::principals::authenticate`]).
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // A read made for a write's `If-Match` check already carries the writer's principal.
    let internal = req.extensions().get::<preconditions::InternalRead>().is_some();
    if internal && req.extensions().get::<crate::context::Principal>().is_some() {
        return next.run(req).await;
    }
    match crate::principals::authenticate(&state, req.headers()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// `201 Created` with the new resource's `Location` (`path`; ids are valid header values, and
/// one that is not is left out rather than failing the request).
pub(crate) fn created(path: &str, body: serde_json::Value) -> Response {
    let location = HeaderValue::from_str(path).ok().map(|v| (header::LOCATION, v));
    (StatusCode::CREATED, axum::response::AppendHeaders(location), Json(body)).into_response()
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1) and separated from the token by one or more spaces.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
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
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageParams {
    #[param(minimum = 1)]
    pub page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
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

    mod refused {

        use axum::http::Method;
        use tower::ServiceExt;

        use super::super::*;
        use crate::context::RequestContext;
        use crate::domain::AuditOutcome;
        use crate::store::{AuditFilter, Page, Store};

        async fn state(dir: &std::path::Path) -> AppState {
            AppState::for_tests(dir).await
        }

        /// Routes that refuse as a permission check or a rule would, behind the real
        /// authentication and request-id middleware.
        fn app(state: &AppState) -> Router {
            let deny = |_ctx: RequestContext| async {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Unauthorized, "missing permission deployment:scale")
                    .with_details(serde_json::json!({ "permission": "deployment:scale", "environment": "production" }))
            };
            let conflict = |_ctx: RequestContext| async {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::EnvironmentLocked, "environment is locked")
            };
            Router::new()
                .route("/v1/deployments/{id}/scale", post(deny).get(deny))
                .route("/v1/deployments/{id}/stop", post(conflict).get(conflict))
                .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
                .route(
                    "/v1/open",
                    get(|| async { ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Unauthorized, "no") }),
                )
                .layer(middleware::from_fn_with_state(state.clone(), request_id))
                .with_state(state.clone())
        }

        fn request(method: Method, path: &str, token: Option<&str>, from: Option<&str>) -> Request {
            let mut req = Request::builder().method(method).uri(path).header(REQUEST_ID, format!("req-{path}"));
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let mut req = req.body(Body::empty()).unwrap();
            if let Some(ip) = from {
                let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 40000);
                req.extensions_mut().insert(ConnectInfo(addr));
            }
            req
        }

        async fn trail(store: &Store) -> Vec<crate::store::AuditRecord> {
            let filter = AuditFilter {
                actor: None,
                action: None,
                target: None,
                object_type: None,
                outcome: None,
                from_ms: None,
                to_ms: None,
                page: Page { page: 1, page_size: 50, oldest_first: true },
            };
            store.list_audit(&filter).await.unwrap().0
        }

        #[tokio::test]
        async fn refusals_are_audited_by_the_request_id_middleware() {
            let dir = tempfile::tempdir().unwrap();
            let state = state(dir.path()).await;
            state.store.insert_admin_token("admin-t", &crate::ids::hash_secret("secret-token"), 1).await.unwrap();
            let app = app(&state);
            let send = |req| app.clone().oneshot(req);

            let res =
                send(request(Method::POST, "/v1/deployments/deploy-1/scale", Some("secret-token"), Some("10.1.2.3")))
                    .await
                    .unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            // A denied read, without connection info (as in unit tests): no source, still audited.
            let res =
                send(request(Method::GET, "/v1/deployments/deploy-2/scale", Some("secret-token"), None)).await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            // An authenticated change refused by a rule fails; the same refusal of a read is not audited.
            let res = send(request(Method::POST, "/v1/deployments/deploy-1/stop", Some("secret-token"), Some("::1")))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CONFLICT);
            let res =
                send(request(Method::GET, "/v1/deployments/deploy-1/stop", Some("secret-token"), None)).await.unwrap();
            assert_eq!(res.status(), StatusCode::CONFLICT);
            // Anonymous and forged credentials are logged, not audited.
            for token in [None, Some("forged")] {
                let res = send(request(Method::POST, "/v1/deployments/deploy-1/scale", token, Some("10.9.9.9")))
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            }

            let got: Vec<_> = trail(&state.store)
                .await
                .into_iter()
                .map(|a| (a.actor, a.action, a.object_type, a.target, a.request_id, a.source, a.outcome))
                .collect();
            let row = |action: &str, target: &str, req: &str, source: Option<&str>, outcome| {
                (
                    "admin:admin-t".to_string(),
                    action.to_string(),
                    "deployment".to_string(),
                    target.to_string(),
                    format!("req-{req}"),
                    source.map(str::to_string),
                    outcome,
                )
            };
            assert_eq!(
                got,
                [
                    row(
                        "POST /v1/deployments/{id}/scale",
                        "deploy-1",
                        "/v1/deployments/deploy-1/scale",
                        Some("10.1.2.3"),
                        AuditOutcome::Denied
                    ),
                    row(
                        "GET /v1/deployments/{id}/scale",
                        "deploy-2",
                        "/v1/deployments/deploy-2/scale",
                        None,
                        AuditOutcome::Denied
                    ),
                    row(
                        "POST /v1/deployments/{id}/stop",
                        "deploy-1",
                        "/v1/deployments/deploy-1/stop",
                        Some("::1"),
                        AuditOutcome::Failed
                    ),
                ]
            );
            let first = &trail(&state.store).await[0];
            assert_eq!(first.details["error"]["permission"], "deployment:scale");
            assert_eq!(first.details["code"], "AUTH_001");
        }

        #[tokio::test]
        async fn a_refusal_stands_when_it_cannot_be_audited() {
            let dir = tempfile::tempdir().unwrap();
            let state = state(dir.path()).await;
            state.store.close().await;
            let res = app(&state).oneshot(request(Method::GET, "/v1/open", None, None)).await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "not a 500");
            let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["requestId"], "req-/v1/open");
        }
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
