//! `Idempotency-Key` on every authenticated `POST` (any route, present or future): a repeat of
//! a request with the same key gets the first answer again instead of running again.
//!
//! * A key belongs to the caller's identity ([`crate::context::Principal::identity`]; an API key
//!   is its creator): two callers may use the same key. It is bound to the request it was first
//!   used for: a SHA-256 fingerprint of method, path, query string and body ([`fingerprint`]).
//! * The first request claims the key in the store (one conditional insert, so one request wins
//!   on any number of replicas), runs, and stores its answer: status, the headers worth
//!   replaying ([`KEPT_HEADERS`] and `X-Ferry-*`) and the body, byte for byte. It runs on a task
//!   of its own, so a client that hangs up does not cancel it: its retry gets the answer.
//! * A repeat with the same fingerprint gets that answer with `Idempotent-Replayed: true` (and
//!   its own `X-Request-Id`; the body, error bodies included, names the first request's id). If
//!   the first one is still running, the repeat waits for it (up to [`WAIT`]), then answers
//!   `409 IDEMPOTENCY_002`. A different fingerprint gets `422 IDEMPOTENCY_001`. Nothing runs.
//! * 4xx answers are kept and replayed like any other; 5xx, 429 and 503 are not (the claim is
//!   released, so a retry runs again: a transient failure stays retryable, as with Stripe).
//! * Answers larger than [`MAX_KEPT_BODY`], and answers that carry a credential shown once
//!   (marked [`NotReplayable`] by their handler: new API keys, bootstrap tokens), are not kept:
//!   the key still stops a second run, and a repeat gets `409 IDEMPOTENCY_003` with the status.
//! * Keys expire after `--idempotency-ttl` (24 h by default); [`sweep`] deletes expired ones on
//!   every replica in bounded batches. A claim whose server died mid-request may be taken over
//!   once its [`LEASE`] ran out — the request then runs again, so a crash between the change's
//!   commit and storing its answer can run it twice (the store's own rules, such as unique
//!   deployment names, still apply).
//!
//! `POST /v1/auth/login` is not covered: it has no caller identity, and its answer is a session
//! token, which is never stored.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use super::{ApiError, ErrorCode, RequestId};
use crate::AppState;
use crate::context::Principal;
use crate::ids::{now_ms, random_hex};
use crate::store::{IdempotencyClaim, IdempotencyRecord, IdempotencyState, StoredResponse};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// The largest answer kept for replay.
pub const MAX_KEPT_BODY: usize = 1024 * 1024;
/// How long a claim may stay in flight before another request may take the key over.
pub const LEASE: Duration = Duration::from_secs(5 * 60);
/// How long a repeat waits for the first request to finish.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a waiting repeat looks at the key again.
const POLL: Duration = Duration::from_millis(50);
/// Headers replayed with the answer (besides Ferry's own `X-Ferry-*`).
pub const KEPT_HEADERS: &[&str] = &["content-type", "location", "etag"];
/// Keys deleted per statement by the sweep, and statements per pass.
const SWEEP_BATCH: i64 = 1000;
const SWEEP_BATCHES: usize = 20;

/// A response extension: this answer carries something shown once (a new API key, a bootstrap
/// token) and must never be stored; a repeat of its request gets `IDEMPOTENCY_003`.
#[derive(Debug, Clone, Copy)]
pub struct NotReplayable;

/// What a request is, for matching a repeat: SHA-256 over method, path, query and body (hex).
pub fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Lengths first, so that no two different requests hash the same bytes.
    for part in [method.as_str().as_bytes(), uri.path().as_bytes(), uri.query().unwrap_or("").as_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(body);
    ferry_certs::hex(ctx.finish().as_ref())
}

/// The key of an `Idempotency-Key` value: 1-255 printable ASCII characters.
pub fn key(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
}

fn invalid_key() -> ApiError {
    ApiError::validation("Idempotency-Key", "Idempotency-Key must be 1-255 printable ASCII characters")
}

/// What one `POST` with a key runs through (see the module documentation). `run` is the rest of
/// the chain (the handler).
pub async fn post<F, Fut>(state: &AppState, req: Request, run: F) -> Response
where
    F: FnOnce(Request) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    post_waiting(state, req, run, WAIT).await
}

/// [`post`], waiting at most `wait` for a first request still in flight.
async fn post_waiting<F, Fut>(state: &AppState, req: Request, run: F, wait: Duration) -> Response
where
    F: FnOnce(Request) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let Some(value) = req.headers().get(HEADER) else { return run(req).await };
    let Some(key) = key(value).map(str::to_string) else { return invalid_key().into_response() };
    let Some(principal) = req.extensions().get::<Principal>().cloned() else { return run(req).await };
    let (parts, body) = req.into_parts();
    // Bodies are already held to the limit (`limits`); this reads at most that much.
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return super::limits::body_too_large(state.config.max_body_bytes).into_response(),
    };
    let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let claim = IdempotencyClaim {
        identity: principal.identity(),
        key,
        fingerprint: fingerprint(&parts.method, &parts.uri, &body),
        request: format!("{} {}", parts.method, parts.uri.path()),
        owner: random_hex(16),
        request_id: request_id.clone(),
        lease_ms: LEASE.as_millis() as i64,
        ttl_ms: state.config.idempotency_ttl.as_millis() as i64,
    };
    match wait_for_turn(state, &claim, wait).await {
        Ok(Turn::Run) => {}
        Ok(Turn::Answer(res)) => return res,
        Err(e) => return e.into_response(),
    }
    let req = Request::from_parts(parts, Body::from(body));
    let store = state.store.clone();
    let task = {
        let claim = claim.clone();
        tokio::spawn(async move {
            let res = run(req).await;
            finish(&store, &claim, &request_id, res).await
        })
    };
    match task.await {
        Ok(res) => res,
        Err(e) => {
            // The handler panicked: let a retry run again.
            if let Err(e) = state.store.release_idempotency_key(&claim.identity, &claim.key, &claim.owner).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
            ApiError::internal().with_cause(format!("handler failed: {e}")).into_response()
        }
    }
}

/// Whether this request runs, or what it answers instead.
enum Turn {
    Run,
    Answer(Response),
}

/// Claims the key, or waits (up to `wait`) for the request holding it and answers what it
/// answered.
async fn wait_for_turn(state: &AppState, claim: &IdempotencyClaim, wait: Duration) -> Result<Turn, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if state.store.claim_idempotency_key(claim, now_ms()).await? {
            return Ok(Turn::Run);
        }
        // Held: read it until it is answered, or becomes claimable (released, expired, lease
        // over), without writing meanwhile.
        loop {
            let Some(held) = state.store.idempotency_key(&claim.identity, &claim.key).await? else { break };
            if held.is_claimable(now_ms()) {
                break;
            }
            if held.fingerprint != claim.fingerprint {
                return Err(reused(&claim.key, &held));
            }
            if held.state == IdempotencyState::Done {
                return Ok(Turn::Answer(replay(&claim.key, &held)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::IdempotencyInProgress,
                    format!(
                        "the first request with Idempotency-Key {:?} is still running; retry later for its answer",
                        claim.key
                    ),
                )
                .with_details(json!({ "idempotencyKey": claim.key, "firstRequestId": held.request_id })));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn reused(key: &str, held: &IdempotencyRecord) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::IdempotencyKeyReused,
        format!(
            "Idempotency-Key {key:?} was already used for another request ({}); use a new key for a new request",
            held.request
        ),
    )
    .with_details(json!({ "idempotencyKey": key, "firstRequest": held.request, "firstRequestId": held.request_id }))
}

/// The stored answer, with `Idempotent-Replayed: true`.
fn replay(key: &str, held: &IdempotencyRecord) -> Response {
    let status = held.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
    let Some(body) = &held.body else {
        return ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::IdempotencyNotReplayable,
            format!(
                "the request with Idempotency-Key {key:?} already ran (status {}), but its answer is not kept \
                 (too large, or a credential shown once)",
                status.as_u16()
            ),
        )
        .with_details(json!({ "idempotencyKey": key, "status": status.as_u16(), "firstRequestId": held.request_id }))
        .into_response();
    };
    let mut res = Response::new(Body::from(body.clone()));
    *res.status_mut() = status;
    for (name, value) in &held.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            res.headers_mut().append(n, v);
        }
    }
    res.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    res
}

/// Keeps the answer (or releases the key for a retryable failure) and returns it.
async fn finish(store: &crate::store::Store, claim: &IdempotencyClaim, request_id: &str, res: Response) -> Response {
    let status = res.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if let Err(e) = store.release_idempotency_key(&claim.identity, &claim.key, &claim.owner).await {
            tracing::warn!(request_id, error = %e, "could not release an idempotency key");
        }
        return res;
    }
    let (parts, body) = res.into_parts();
    // POST answers are JSON documents built in memory: buffering them costs nothing more.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = store.release_idempotency_key(&claim.identity, &claim.key, &claim.owner).await;
            return ApiError::internal().with_cause(format!("could not read the answer: {e}")).into_response();
        }
    };
    let (headers, kept) = match parts.extensions.get::<ApiError>() {
        // An error travels as an extension and is rendered by the request-id middleware, with
        // exactly these bytes (`Json` of the same document); keep what the client will get.
        Some(err) => {
            let bytes = serde_json::to_vec(&err.body(request_id)).expect("JSON values serialize");
            let mut headers = kept_headers(&parts.headers);
            headers.retain(|(n, _)| n.as_str() != header::CONTENT_TYPE.as_str());
            headers.insert(0, (header::CONTENT_TYPE.to_string(), "application/json".into()));
            (headers, Some(bytes))
        }
        None => (kept_headers(&parts.headers), Some(body.to_vec())),
    };
    let not_kept =
        parts.extensions.get::<NotReplayable>().is_some() || kept.as_ref().is_some_and(|b| b.len() > MAX_KEPT_BODY);
    let stored = StoredResponse {
        status: status.as_u16(),
        headers: if not_kept { Vec::new() } else { headers },
        body: if not_kept { None } else { kept },
    };
    match store.complete_idempotency_key(&claim.identity, &claim.key, &claim.owner, &stored).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(request_id, "idempotency key was taken over before its answer was stored"),
        // The answer stands; a repeat waits, then may take the key over once the lease ran out.
        Err(e) => tracing::error!(request_id, error = %e, "could not store the answer of an idempotency key"),
    }
    Response::from_parts(parts, Body::from(body))
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| KEPT_HEADERS.contains(&n.as_str()) || n.as_str().starts_with("x-ferry-"))
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// Deletes expired keys, on every replica, once a minute (or every `ttl` if shorter): at most
/// [`SWEEP_BATCHES`] indexed statements of [`SWEEP_BATCH`] rows per pass.
pub async fn sweep(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let every = state.config.idempotency_ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        for _ in 0..SWEEP_BATCHES {
            match state.store.sweep_idempotency_keys(now_ms(), SWEEP_BATCH).await {
                Ok(n) if n < SWEEP_BATCH as u64 => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency sweep failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;

    use super::*;

    async fn state(dir: &std::path::Path) -> AppState {
        AppState::for_tests(dir).await
    }

    fn request(key: &str, body: &str) -> Request {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/v1/things")
            .header(HEADER, key)
            .body(Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(Principal::admin("admin-1"));
        req.extensions_mut().insert(RequestId(format!("req-{}", random_hex(4))));
        req
    }

    /// A handler that counts its runs and answers `status` with `body`, after `gate` opens.
    fn handler(
        runs: &Arc<AtomicUsize>,
        status: StatusCode,
        body: String,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> impl FnOnce(Request) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> + Send + 'static
    {
        let runs = runs.clone();
        move |_req| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if let Some(g) = gate {
                    let _permit = g.acquire().await.unwrap();
                }
                (status, Json(json!({ "body": body }))).into_response()
            })
        }
    }

    async fn body_of(res: Response) -> Vec<u8> {
        axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap().to_vec()
    }

    fn code(res: &Response) -> Option<ErrorCode> {
        res.extensions().get::<ApiError>().map(|e| e.code)
    }

    #[tokio::test]
    async fn a_server_error_is_not_kept_so_a_retry_runs_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        for status in
            [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE]
        {
            let res = post(&state, request("k", "{}"), handler(&runs, status, "x".into(), None)).await;
            assert_eq!(res.status(), status);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3, "each retry ran");
        let ok = post(&state, request("k", "{}"), handler(&runs, StatusCode::ACCEPTED, "done".into(), None)).await;
        assert_eq!((ok.status(), runs.load(Ordering::SeqCst)), (StatusCode::ACCEPTED, 4));
        let first = body_of(ok).await;
        let again = post(&state, request("k", "{}"), handler(&runs, StatusCode::ACCEPTED, "other".into(), None)).await;
        assert_eq!(again.headers()[REPLAYED], "true");
        assert_eq!((again.status(), runs.load(Ordering::SeqCst)), (StatusCode::ACCEPTED, 4), "replayed, not run");
        assert_eq!(body_of(again).await, first);
    }

    #[tokio::test]
    async fn a_repeat_waits_for_the_first_request_and_replays_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let first = {
            let (state, h) = (state.clone(), handler(&runs, StatusCode::CREATED, "first".into(), Some(gate.clone())));
            tokio::spawn(async move { post(&state, request("slow", "{}"), h).await })
        };
        // Once the first one runs (it holds the key), repeats must wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first request never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let h = handler(&runs, StatusCode::CREATED, "second".into(), None);
        let gave_up = post_waiting(&state, request("slow", "{}"), h, Duration::from_millis(120)).await;
        assert_eq!((gave_up.status(), code(&gave_up)), (StatusCode::CONFLICT, Some(ErrorCode::IdempotencyInProgress)));
        let waiting = {
            let (state, h) = (state.clone(), handler(&runs, StatusCode::CREATED, "third".into(), None));
            tokio::spawn(async move { post(&state, request("slow", "{}"), h).await })
        };
        gate.add_permits(1);
        let first = first.await.unwrap();
        let waited = waiting.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "only the first request ran");
        assert_eq!((first.status(), waited.status()), (StatusCode::CREATED, StatusCode::CREATED));
        assert!(waited.headers().contains_key(REPLAYED) && !first.headers().contains_key(REPLAYED));
        assert_eq!(body_of(waited).await, body_of(first).await);
    }

    #[tokio::test]
    async fn answers_too_large_to_keep_still_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let big = "x".repeat(MAX_KEPT_BODY);
        let res = post(&state, request("big", "{}"), handler(&runs, StatusCode::OK, big.clone(), None)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(body_of(res).await.len() > MAX_KEPT_BODY, "the first caller gets the whole answer");
        let res = post(&state, request("big", "{}"), handler(&runs, StatusCode::OK, big, None)).await;
        assert_eq!((res.status(), code(&res)), (StatusCode::CONFLICT, Some(ErrorCode::IdempotencyNotReplayable)));
        assert_eq!(res.extensions().get::<ApiError>().unwrap().details["status"], 200);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Requests without a key are not concerned.
        let mut plain = request("x", "{}");
        plain.headers_mut().remove(HEADER);
        for _ in 0..2 {
            let res = post(&state, plain_clone(&plain), handler(&runs, StatusCode::OK, "y".into(), None)).await;
            assert!(!res.headers().contains_key(REPLAYED));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    fn plain_clone(req: &Request) -> Request {
        let mut r = Request::builder().method(req.method()).uri(req.uri()).body(Body::empty()).unwrap();
        r.extensions_mut().insert(Principal::admin("admin-1"));
        r
    }

    fn fp(method: Method, uri: &str, body: &str) -> String {
        fingerprint(&method, &uri.parse().unwrap(), body.as_bytes())
    }

    #[test]
    fn fingerprints_tell_every_part_of_a_request_apart() {
        let base = fp(Method::POST, "/v1/deployments", r#"{"a":1}"#);
        assert_eq!(base.len(), 64);
        assert_eq!(base, fp(Method::POST, "/v1/deployments", r#"{"a":1}"#), "stable");
        let others = [
            fp(Method::PUT, "/v1/deployments", r#"{"a":1}"#),
            fp(Method::POST, "/v1/environments", r#"{"a":1}"#),
            fp(Method::POST, "/v1/deployments?waitForWindow=true", r#"{"a":1}"#),
            fp(Method::POST, "/v1/deployments", r#"{"a":2}"#),
            fp(Method::POST, "/v1/deployments", r#"{"a": 1}"#),
            // Moving bytes between parts changes the hash (lengths are hashed too).
            fp(Method::POST, "/v1/deployment", r#"s{"a":1}"#),
            fp(Method::POST, "/v1/deployments?x", r#"{"a":1}"#),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(&base, o, "variant {i}");
        }
    }

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        let ok = |s: &str| key(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("a") && ok(&"k".repeat(255)) && ok("retry-1_2.3:~"));
        assert!(!ok("") && !ok(&"k".repeat(256)) && !ok("two words"));
        assert!(key(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
    }

    #[test]
    fn kept_headers_are_the_replayable_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::LOCATION, HeaderValue::from_static("/v1/operations/op-1"));
        h.insert(header::ETAG, HeaderValue::from_static("\"3\""));
        h.insert("x-ferry-thing", HeaderValue::from_static("1"));
        h.insert("x-request-id", HeaderValue::from_static("req-1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let names: Vec<String> = kept_headers(&h).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["content-type", "location", "etag", "x-ferry-thing"]);
    }
}
