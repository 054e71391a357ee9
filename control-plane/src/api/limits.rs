//! Ferry's limits on the request itself, answered in the error format like everything else.
//!
//! * The request URI may not exceed [`MAX_URI_BYTES`], well below what hyper refuses on its own.
//! * The body may not exceed `--max-body-bytes` on any endpoint, whether or not its handler
//!   reads a body: a declared `Content-Length` is checked before anything runs ([`check`]); a
//!   body of unknown length (chunked) is read up front, up to the limit ([`limit_body`]).
//!
//! What hyper refuses while parsing (a malformed request line or header, a URI over 65,534
//! bytes, more than 100 headers or a request head over ~408 KiB) never reaches the router:
//! hyper answers those itself with a bare status and closes the connection. See `docs/errors.md`.

use std::time::Duration;

use axum::body::{Body, BodyDataStream, HttpBody};
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_stream::StreamExt;

use super::{ApiError, ErrorCode};
use crate::AppState;

/// The longest request URI (request target) Ferry answers; hyper's own limit is 64 KiB.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// After a refusal, what the client still sends is read and dropped for at most this long and
/// this much (and not past shutdown), so that it can read the answer: closing a socket with
/// unread input makes the kernel send a reset, which a client still writing its body gets
/// instead of the answer.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

pub fn body_too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than the limit of {max} bytes"),
    )
    .with_details(json!({ "maxBytes": max }))
}

/// The length of the request target as the client sent it (origin or absolute form).
pub fn uri_len(uri: &Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// Checks what the request head declares, before authentication or routing. On a refusal the
/// request is consumed (its body drained in the background, see [`LINGER`]).
pub fn check(req: Request, state: &AppState) -> Result<Request, ApiError> {
    let max_body_bytes = state.config.max_body_bytes;
    let len = uri_len(req.uri());
    if len > MAX_URI_BYTES {
        linger(req, state);
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            format!("the request URI is {len} bytes long; the limit is {MAX_URI_BYTES}"),
        )
        .with_details(json!({ "maxBytes": MAX_URI_BYTES })));
    }
    if req.body().size_hint().lower() > max_body_bytes as u64 {
        linger(req, state);
        return Err(body_too_large(max_body_bytes));
    }
    Ok(req)
}

/// Reads a body of unknown length (chunked) before the handler runs, so that it is refused with
/// 413 past the limit even where the handler never reads it. A body of declared length passes
/// through: [`check`] already held it to the limit and hyper holds it to its declared length.
pub async fn limit_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let max = state.config.max_body_bytes;
    if req.body().is_end_stream() || req.body().size_hint().exact().is_some() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let mut chunks = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) if buf.len() + chunk.len() <= max => buf.extend_from_slice(&chunk),
            Ok(_) => {
                drain(chunks, &state);
                return body_too_large(max).into_response();
            }
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MalformedJson,
                    format!("could not read the request body: {e}"),
                )
                .into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

fn linger(req: Request, state: &AppState) {
    // A client that sent `Expect: 100-continue` waits for the answer before sending anything.
    if !req.headers().contains_key(header::EXPECT) {
        drain(req.into_body().into_data_stream(), state);
    }
}

fn drain(mut chunks: BodyDataStream, state: &AppState) {
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut read = 0;
        let drained = async {
            while let Some(Ok(chunk)) = chunks.next().await {
                read += chunk.len();
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, drained) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    });
}
