//! Entity tags and conditional requests, for every authenticated route (present or future).
//!
//! * **`ETag` on reads** ([`read`]): every `200` JSON answer to a `GET` gets a strong `ETag`, a
//!   SHA-256 of its body (128 bits, hex) — unless the handler set its own: deployments use
//!   `"<resourceVersion>"`, the version their writes compare in the store. Lists get one too (a
//!   page is a representation like any other); Server-Sent Events and other non-JSON answers get
//!   none. `If-None-Match` naming the body's tag answers `304 Not Modified` (weak comparison,
//!   RFC 9110 §13.1.2). A handler's own tag is a version of the desired state, not of the
//!   whole body (a deployment's observed status changes under the same `resourceVersion`), so
//!   it never yields a 304.
//! * **`If-Match` on writes** ([`write`]): `PUT`, `PATCH` and `DELETE` honour it everywhere.
//!   The routes in [`SELF_CHECKED`] compare it themselves, atomically in the store. For every
//!   other one, the current tag is what a `GET` of the resource answers right now: the write
//!   takes a lock on the resource's URI (in this process), reads it through the router with the
//!   caller's own principal, and refuses with `412 PRECONDITION_001` (`details.currentEtag`)
//!   when no listed tag matches (strong comparison); else it runs under the same lock. The
//!   resource is the write's own URI, or for the routes in [`READ_AT_PARENT`] a parent's
//!   (`PUT /v1/environments/{id}/restrictions` changes the environment). A write whose resource
//!   has no `GET` refuses `If-Match` with `400 VALIDATION_001` rather than ignoring it. When the
//!   read fails (404, 403), that is the answer: RFC 9110 §13.2.1 has the server ignore
//!   preconditions when the request would fail without them. `If-Match: *` needs nothing
//!   checked (a write to a missing resource fails with its 404 anyway). A malformed
//!   `If-Match` or `If-None-Match` is `400 VALIDATION_001`.
//!
//! Limit: the check and the write are atomic only against other writes to the same URI on the
//! same replica (every `PUT`/`PATCH`/`DELETE` of the resource takes the lock, conditional or
//! not). A write on another replica, or one that changes the representation through another
//! route (a `POST` action, a sub-resource), can land between check and write. The next step is
//! a version column per resource compared in the write's transaction, as deployments have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt;

use super::{ApiError, ErrorCode, RequestId};
use crate::audit::AuditScope;
use crate::context::Principal;

/// Writes that compare `If-Match` themselves, atomically in their own transaction (method,
/// route template). A route listed here must parse `If-Match` itself.
/// Deployments' routes compare `"<resourceVersion>"`, the tag their `GET`s answer.
pub const SELF_CHECKED: &[(&str, &str)] = &[
    ("PUT", "/v1/deployments/{id}"),
    ("PATCH", "/v1/deployments/{id}/status"),
    ("PUT", "/v1/deployments/{id}/config"),
    ("PUT", "/v1/deployments/{id}/env"),
];

/// Writes whose resource is read at a parent URI: (method, route template, trailing path
/// segments to drop).
pub const READ_AT_PARENT: &[(&str, &str, usize)] = &[("PUT", "/v1/environments/{id}/restrictions", 1)];

/// One entity tag: `"opaque"` or `W/"opaque"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    pub weak: bool,
    /// Without the quotes.
    pub opaque: String,
}

impl EntityTag {
    /// Strong comparison (`If-Match`): both strong and the same.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (`If-None-Match`): the same, weak or not.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    pub fn parse(s: &str) -> Option<EntityTag> {
        let (weak, rest) = match s.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
        // etagc = %x21 / %x23-7E / obs-text
        opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
            .then(|| EntityTag { weak, opaque: opaque.to_string() })
    }
}

impl std::fmt::Display for EntityTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\"{}\"", if self.weak { "W/" } else { "" }, self.opaque)
    }
}

/// An `If-Match` / `If-None-Match` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `*`
    Any,
    Tags(Vec<EntityTag>),
}

/// The condition of `name` (all its lines together), `None` when absent; a malformed one is
/// `400 VALIDATION_001`.
pub fn condition(headers: &HeaderMap, name: &HeaderName) -> Result<Option<Condition>, ApiError> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let invalid = || {
        ApiError::validation(
            name.as_str(),
            format!("{name} must be * or a list of entity tags, e.g. \"3\" or \"a1b2\", W/\"a1b2\""),
        )
    };
    let mut tags = Vec::new();
    let mut any = false;
    for v in values {
        let s = v.to_str().map_err(|_| invalid())?;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                any = true;
            } else {
                tags.push(EntityTag::parse(item).ok_or_else(invalid)?);
            }
        }
    }
    match (any, tags.is_empty()) {
        (true, true) => Ok(Some(Condition::Any)),
        (false, false) => Ok(Some(Condition::Tags(tags))),
        // `*` mixed with tags, or nothing at all.
        _ => Err(invalid()),
    }
}

/// The strong tag of a body: 128 bits of its SHA-256, hex.
pub fn body_etag(body: &[u8]) -> EntityTag {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    EntityTag { weak: false, opaque: ferry_certs::hex(&digest.as_ref()[..16]) }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// `GET`/`HEAD`: adds the body's `ETag` to a 200 JSON answer that has none, and answers 304 to
/// an `If-None-Match` that names it.
pub async fn read(req: Request, next: Next) -> Response {
    let if_none_match = match condition(req.headers(), &header::IF_NONE_MATCH) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let res = next.run(req).await;
    if res.status() != StatusCode::OK || res.headers().contains_key(header::ETAG) || !is_json(res.headers()) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // JSON answers are documents built in memory (streams are not JSON).
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal().with_cause(format!("could not read the answer: {e}")).into_response(),
    };
    let tag = body_etag(&body);
    let value = HeaderValue::from_str(&tag.to_string()).expect("hex in quotes is a valid header");
    let not_modified = match &if_none_match {
        Some(Condition::Any) => true,
        Some(Condition::Tags(tags)) => tags.iter().any(|t| t.weak_eq(&tag)),
        None => false,
    };
    if not_modified {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, value);
        return res;
    }
    parts.headers.insert(header::ETAG, value);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// What a write needs to check `If-Match`: the router to read the resource through, and the
/// per-URI locks. Every request of the served router carries it (an extension); the router it
/// holds lacks it, so nothing refers to itself.
#[derive(Clone)]
pub struct Internal {
    router: Router,
    locks: UriLocks,
}

impl Internal {
    pub fn new(router: Router) -> Self {
        Self { router, locks: UriLocks::default() }
    }
}

/// Marks a read made by [`write`] on the caller's behalf: it carries the caller's principal,
/// so authentication is not repeated.
#[derive(Debug, Clone, Copy)]
pub struct InternalRead;

/// `PUT`/`PATCH`/`DELETE`: serializes writes per resource URI on this replica and checks
/// `If-Match` against the resource's current tag (see the module documentation).
pub async fn write(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let method = req.method().clone();
    if SELF_CHECKED.contains(&(method.as_str(), route.as_str())) {
        return next.run(req).await;
    }
    let if_match = match condition(req.headers(), &header::IF_MATCH) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(internal) = req.extensions().get::<Internal>().cloned() else {
        return match if_match {
            // Never ignore a precondition silently.
            Some(Condition::Tags(_)) => {
                ApiError::internal().with_cause("no router to check If-Match with").into_response()
            }
            _ => next.run(req).await,
        };
    };
    let resource = resource_path(method.as_str(), &route, req.uri().path());
    let _lock = internal.locks.lock(&resource).await;
    if let Some(Condition::Tags(tags)) = &if_match {
        let refusal = match current_tag(&internal.router, req.extensions(), &resource).await {
            Current::Tag(tag) if tags.iter().any(|t| t.strong_eq(&tag)) => None,
            Current::Tag(tag) => Some(
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    ErrorCode::PreconditionFailed,
                    format!("{resource} changed since you read it: If-Match names none of its current tags"),
                )
                .with_details(json!({ "currentEtag": tag.to_string() }))
                .into_response(),
            ),
            Current::NoRead => Some(
                ApiError::validation(
                    "If-Match",
                    format!("If-Match is not supported on {method} {route}: it has no GET to compare with"),
                )
                .into_response(),
            ),
            Current::Refused(res) => Some(res),
        };
        if let Some(res) = refusal {
            // The refusal's audit record (if it gets one) names this write, not the read.
            let (mut parts, body) = req.into_parts();
            if let (Some(scope), Some(principal)) =
                (parts.extensions.get::<AuditScope>().cloned(), parts.extensions.get::<Principal>().cloned())
            {
                scope.set_actor(&principal.audit_name());
                let target = match RawPathParams::from_request_parts(&mut parts, &()).await {
                    Ok(params) => params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string()),
                    Err(_) => None,
                };
                scope.set_route(Some(route), target);
            }
            drop(body);
            return res;
        }
    }
    next.run(req).await
}

/// The URI whose `GET` represents what a write changes.
/// The URI whose `GET` answers the current tag of a write to `path` (matched by `route`).
pub(super) fn resource_path(method: &str, route: &str, path: &str) -> String {
    let drop = READ_AT_PARENT.iter().find(|(m, r, _)| *m == method && *r == route).map_or(0, |(_, _, n)| *n);
    let mut p = path.trim_end_matches('/');
    for _ in 0..drop {
        p = p.rsplit_once('/').map_or(p, |(head, _)| head);
    }
    p.to_string()
}

enum Current {
    Tag(EntityTag),
    /// No `GET` answers for this resource (or it has no tag).
    NoRead,
    /// The read failed: the answer to give instead.
    Refused(Response),
}

/// The current tag of `path`: a `GET` through the router as the same caller.
async fn current_tag(router: &Router, ext: &Extensions, path: &str) -> Current {
    let Ok(mut get) = Request::builder().method(Method::GET).uri(path).body(Body::empty()) else {
        return Current::NoRead;
    };
    if let Some(p) = ext.get::<Principal>() {
        get.extensions_mut().insert(p.clone());
        get.extensions_mut().insert(InternalRead);
    }
    if let Some(id) = ext.get::<RequestId>() {
        get.extensions_mut().insert(id.clone());
    }
    if let Some(c) = ext.get::<ConnectInfo<std::net::SocketAddr>>() {
        get.extensions_mut().insert(*c);
    }
    // A scope of its own: the write's audit record, if any, is set by the caller.
    get.extensions_mut().insert(AuditScope::default());
    let res = match router.clone().oneshot(get).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    if res.status() == StatusCode::OK {
        return match res.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).and_then(EntityTag::parse) {
            Some(tag) => Current::Tag(tag),
            None => Current::NoRead,
        };
    }
    match res.extensions().get::<ApiError>().map(|e| e.code) {
        Some(ErrorCode::MethodNotAllowed | ErrorCode::RouteNotFound) => Current::NoRead,
        _ => Current::Refused(res),
    }
}

/// One async lock per resource URI, dropped from the map once nobody holds or waits for it.
#[derive(Clone, Default)]
pub struct UriLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

pub struct UriLock {
    map: UriLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl UriLocks {
    pub async fn lock(&self, key: &str) -> UriLock {
        let lock = self.0.lock().expect("uri locks").entry(key.to_string()).or_default().clone();
        let guard = lock.clone().lock_owned().await;
        UriLock { map: self.clone(), key: key.to_string(), lock, guard: Some(guard) }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("uri locks").len()
    }
}

impl Drop for UriLock {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.0.lock().expect("uri locks");
        // Only the map and this handle left: nobody holds or waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(values: &[&str]) -> Result<Option<Condition>, ApiError> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        condition(&h, &header::IF_MATCH)
    }

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag { weak, opaque: opaque.into() }
    }

    #[test]
    fn conditions_parse_lists_stars_and_weak_tags() {
        assert_eq!(cond(&[]).unwrap(), None);
        assert_eq!(cond(&["*"]).unwrap(), Some(Condition::Any));
        assert_eq!(cond(&["\"3\""]).unwrap(), Some(Condition::Tags(vec![tag(false, "3")])));
        assert_eq!(
            cond(&[" \"a\" , W/\"b\",", "\"\""]).unwrap(),
            Some(Condition::Tags(vec![tag(false, "a"), tag(true, "b"), tag(false, "")]))
        );
        for bad in ["3", "\"3", "'3'", "w/\"3\"", "\"a b\"", "\"a\"\"", "*, \"a\"", ",", ""] {
            let e = cond(&[bad]).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, ErrorCode::InvalidValue), "{bad:?}");
            assert_eq!(e.details["field"], "if-match");
        }
    }

    #[test]
    fn comparisons_follow_rfc_9110() {
        // RFC 9110 §8.8.3.2's table.
        assert!(!tag(true, "1").strong_eq(&tag(true, "1")) && tag(true, "1").weak_eq(&tag(true, "1")));
        assert!(!tag(true, "1").strong_eq(&tag(true, "2")) && !tag(true, "1").weak_eq(&tag(true, "2")));
        assert!(!tag(true, "1").strong_eq(&tag(false, "1")) && tag(true, "1").weak_eq(&tag(false, "1")));
        assert!(tag(false, "1").strong_eq(&tag(false, "1")) && tag(false, "1").weak_eq(&tag(false, "1")));
        assert_eq!(tag(true, "x").to_string(), "W/\"x\"");
        assert_eq!(EntityTag::parse(&tag(false, "x").to_string()), Some(tag(false, "x")));
    }

    #[test]
    fn body_tags_are_strong_and_follow_the_bytes() {
        let a = body_etag(br#"{"a":1}"#);
        assert!(!a.weak && a.opaque.len() == 32 && a.opaque.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, body_etag(br#"{"a":1}"#));
        assert_ne!(a, body_etag(br#"{"a":2}"#));
    }

    #[test]
    fn writes_are_checked_against_their_resource() {
        assert_eq!(resource_path("PUT", "/v1/workspaces/{id}", "/v1/workspaces/w1"), "/v1/workspaces/w1");
        assert_eq!(
            resource_path("PUT", "/v1/environments/{id}/restrictions", "/v1/environments/production/restrictions"),
            "/v1/environments/production"
        );
        assert_eq!(
            resource_path("DELETE", "/v1/environments/{id}/change-windows", "/v1/environments/e/change-windows"),
            "/v1/environments/e/change-windows"
        );
    }

    #[tokio::test]
    async fn uri_locks_serialize_per_uri_and_are_dropped_when_free() {
        let locks = UriLocks::default();
        let a = locks.lock("/a").await;
        // Another URI is not held up.
        let b = locks.lock("/b").await;
        drop(b);
        assert_eq!(locks.len(), 1);
        let second = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("/a")).await;
        assert!(second.is_err(), "a second writer of /a waits while the first holds it");
        drop(a);
        drop(locks.lock("/a").await);
        assert_eq!(locks.len(), 0, "no lock is kept for a free URI");
    }
}
