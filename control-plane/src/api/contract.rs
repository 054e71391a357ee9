//! The API contract every authenticated route gets without asking, present or future: one
//! middleware ([`layer`]) in front of every handler, after authentication.
//!
//! * `POST`: `Idempotency-Key` replay ([`super::idempotency`]).
//! * `GET`/`HEAD`: `ETag` and `If-None-Match` ([`super::preconditions::read`]).
//! * `PUT`/`PATCH`/`DELETE`: `If-Match` ([`super::preconditions::write`]).
//! * Every `202 Accepted` names what to poll in `Location`: a handler that did not set it gets
//!   the `href` of the operation in its body ([`operation_location`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{ApiError, idempotency, preconditions};
use crate::AppState;

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match *req.method() {
        Method::POST => {
            idempotency::post(&state, req, move |req| async move { operation_location(next.run(req).await).await })
                .await
        }
        Method::PUT | Method::PATCH | Method::DELETE => operation_location(preconditions::write(req, next).await).await,
        Method::GET | Method::HEAD => preconditions::read(req, next).await,
        _ => next.run(req).await,
    }
}

/// A 202 without `Location` gets the operation's `href` from its body (`operation.href`, or a
/// top-level `href`).
pub async fn operation_location(res: Response) -> Response {
    if res.status() != StatusCode::ACCEPTED || res.headers().contains_key(header::LOCATION) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal().with_cause(format!("could not read the answer: {e}")).into_response(),
    };
    if let Ok(doc) = serde_json::from_slice::<Value>(&body) {
        let href = doc.pointer("/operation/href").or_else(|| doc.get("href")).and_then(Value::as_str);
        if let Some(v) = href.filter(|h| h.starts_with("/v1/")).and_then(|h| HeaderValue::from_str(h).ok()) {
            parts.headers.insert(header::LOCATION, v);
        }
    }
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use axum::Json;
    use serde_json::json;

    use super::*;

    async fn location(status: StatusCode, body: Value, preset: Option<&'static str>) -> Option<String> {
        let mut res = (status, Json(body)).into_response();
        if let Some(l) = preset {
            res.headers_mut().insert(header::LOCATION, HeaderValue::from_static(l));
        }
        let res = operation_location(res).await;
        res.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn accepted_answers_name_their_operation() {
        let op = json!({ "operation": { "id": "op-1", "href": "/v1/operations/op-1" } });
        assert_eq!(location(StatusCode::ACCEPTED, op.clone(), None).await.as_deref(), Some("/v1/operations/op-1"));
        let top = json!({ "id": "op-2", "href": "/v1/operations/op-2" });
        assert_eq!(location(StatusCode::ACCEPTED, top, None).await.as_deref(), Some("/v1/operations/op-2"));
        // The handler's own wins; other statuses and bodies without an operation are left alone.
        assert_eq!(location(StatusCode::ACCEPTED, op.clone(), Some("/v1/x")).await.as_deref(), Some("/v1/x"));
        assert_eq!(location(StatusCode::OK, op, None).await, None);
        assert_eq!(location(StatusCode::ACCEPTED, json!({ "href": "http://elsewhere/" }), None).await, None);
    }
}
