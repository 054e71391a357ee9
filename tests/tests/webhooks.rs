//! Webhooks and per-request callbacks end to end: a real HTTP receiver on loopback subscribes,
//! a deployment of `hello-web` runs on a real agent, and the receiver gets `deployment.status`
//! and `operation.completed` signed so that an independent HMAC check verifies them; a receiver
//! that answers 500 twice gets the event on the third attempt (the delivery log says so); a
//! delivery can be sent again; a callback URL given with a create gets that operation's
//! completion; bad input is refused precisely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus, Uri};
use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "receiver-secret-0123456789";
const CALLBACK_SECRET: &str = "callback-secret-9876543210";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP server on loopback that records every POST; on `/flaky` it answers 500 to the first
/// two attempts of each delivery.
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let r = Receiver::default();
        let app = axum::Router::new().route("/{*path}", axum::routing::post(receive)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    /// Waits for a hit on `path` whose body satisfies `cond`.
    async fn wait(&self, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Hit {
        eventually(what, DEADLINE, || async { self.hits(path).into_iter().find(|h| cond(&h.json())) }).await
    }
}

async fn receive(State(r): State<Receiver>, uri: Uri, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let path = uri.path().to_string();
    let delivery = headers.get("ferry-delivery").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    r.hits.lock().unwrap().push(Hit { path: path.clone(), headers, body: body.to_vec() });
    if path == "/flaky" {
        let mut attempts = r.attempts.lock().unwrap();
        let n = attempts.entry(delivery).or_default();
        *n += 1;
        if *n <= 2 {
            return AxumStatus::INTERNAL_SERVER_ERROR;
        }
    }
    AxumStatus::NO_CONTENT
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// What a receiver does (README, docs/webhooks.md): HMAC-SHA256 with the secret over
/// `"<Ferry-Timestamp>.<raw body>"`, compared in constant time with `Ferry-Signature`'s `v1=`
/// value, and a timestamp no older than 5 minutes. Written with `ring` directly, not with
/// Ferry's code.
fn verifies(hit: &Hit, secret: &str) -> bool {
    let timestamp = hit.header("ferry-timestamp");
    let ts: i64 = timestamp.parse().expect("Ferry-Timestamp is Unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - ts).abs() < 300, "a fresh timestamp: {ts} vs {now}");
    let Some(sig) = hit.header("ferry-signature").strip_prefix("v1=") else { return false };
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&hit.body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, &signed, &unhex(sig)).is_ok()
}

fn hello(name: &str) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "target": { "selector": { "role": "web" } },
        "configuration": {
            "replicas": 1,
            "command": bin_path("hello-web").to_str().unwrap(),
            "stopGracePeriodSeconds": 2,
            "minReadySeconds": 1,
            "healthChecks": {
                "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
            }
        }
    })
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// A create with extra headers (the harness's `api` sends none).
async fn create_with(cp: &ControlPlane, body: Value, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req =
        reqwest::Client::new().post(format!("{}/v1/deployments", cp.base_url)).bearer_auth(&cp.admin_token).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

async fn subscribe(cp: &ControlPlane, body: Value) -> Value {
    let (status, res) = cp.api(Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_retries_redelivery_and_callbacks() {
    let (receiver, base) = Receiver::start().await;
    let cp = ControlPlane::builder().webhook_retry_base(Duration::from_millis(100)).spawn().await;

    // Bad input changes nothing.
    for (body, field) in [
        (json!({ "url": "ftp://example.com/", "events": ["*"] }), "url"),
        (json!({ "url": "not a url", "events": ["*"] }), "url"),
        (json!({ "url": format!("http://example.com/{}", "a".repeat(2100)), "events": ["*"] }), "url"),
        (json!({ "url": "https://u:p@example.com/", "events": ["*"] }), "url"),
        (json!({ "url": "https://example.com/", "events": ["deployment.exploded"] }), "events"),
        (json!({ "url": "https://example.com/", "events": [] }), "events"),
        (json!({ "url": "https://example.com/", "events": ["*"], "secret": "short" }), "secret"),
    ] {
        let (status, res) = cp.api(Method::POST, "/v1/webhooks", Some(body.clone())).await;
        assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}: {res}");
        assert_eq!(res["error"]["details"]["field"], field, "{res}");
    }
    let (_, res) =
        cp.api(Method::POST, "/v1/webhooks", Some(json!({ "url": "https://example.com/", "events": ["nope"] }))).await;
    assert!(res["error"]["message"].as_str().unwrap().contains("operation.completed"), "lists the known: {res}");
    let (status, res) = cp.api(Method::GET, "/v1/webhooks/wh-missing", None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "WEBHOOK_001"), "{res}");
    let (status, res) = cp.api(Method::DELETE, "/v1/webhooks/wh-missing", None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "WEBHOOK_001"), "{res}");
    let (status, res) = cp.api(Method::GET, "/v1/webhooks/wh-missing/deliveries", None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "WEBHOOK_001"), "{res}");
    let (_, list) = cp.api(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");

    // Two subscriptions: one with a given secret, one whose secret is generated.
    let ok = subscribe(
        &cp,
        json!({ "url": format!("{base}/ok"), "events": ["deployment.status", "operation.completed"],
                "secret": SECRET, "description": "CI" }),
    )
    .await;
    assert_eq!(ok["secret"], SECRET, "shown once, in the create answer");
    let ok_id = ok["id"].as_str().unwrap().to_string();
    let flaky = subscribe(&cp, json!({ "url": format!("{base}/flaky"), "events": ["operation.completed"] })).await;
    let flaky_secret = flaky["secret"].as_str().unwrap().to_string();
    assert!(flaky_secret.starts_with("whsec_") && flaky_secret.len() == 70, "{flaky}");
    let flaky_id = flaky["id"].as_str().unwrap().to_string();
    let (status, got) = cp.api(Method::GET, &format!("/v1/webhooks/{ok_id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (got["secret"].as_str(), got["events"].clone()),
        (Some("********"), json!(["deployment.status", "operation.completed"]))
    );
    let (_, list) = cp.api(Method::GET, "/v1/webhooks?pageSize=1", None).await;
    assert_eq!(
        (list["pagination"]["totalCount"].as_i64(), list["pagination"]["hasNext"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(list["data"][0]["secret"], "********");

    // A bad callback URL is refused before anything is created.
    let (status, res) = create_with(&cp, hello("cb-bad"), &[("Ferry-Callback-Url", "ssh://example.com/")]).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
    assert_eq!(res["error"]["details"]["field"], "Ferry-Callback-Url");
    let (_, deployments) = cp.api(Method::GET, "/v1/deployments", None).await;
    assert_eq!(deployments["pagination"]["totalCount"], 0, "nothing was created");

    // A real deployment, with a callback for its create.
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let callback = format!("{base}/cb");
    let (status, created) = create_with(
        &cp,
        hello("hooked"),
        &[("Ferry-Callback-Url", callback.as_str()), ("Ferry-Callback-Secret", CALLBACK_SECRET)],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let deployment = created["deployment"]["id"].as_str().unwrap().to_string();
    let operation = created["operation"]["id"].as_str().unwrap().to_string();

    let running = receiver
        .wait("/ok", "deployment.status → running", |b| {
            b["type"] == "deployment.status"
                && b["data"]["deployment"]["id"] == deployment.as_str()
                && b["data"]["to"] == "running"
        })
        .await;
    assert!(verifies(&running, SECRET), "signature of {running:?}");
    assert!(!verifies(&running, "another-secret-000000"), "a wrong secret does not verify");
    assert_eq!(running.header("ferry-event"), "deployment.status");
    assert_eq!(running.header("ferry-webhook-id"), ok_id);
    assert!(running.header("ferry-delivery").starts_with("dlv-"));
    assert_eq!(running.header("content-type"), "application/json");
    let body = running.json();
    assert_eq!(body["data"]["deployment"]["name"], "hooked");
    assert_eq!(body["data"]["deployment"]["environment"], "development");
    assert!(body["id"].as_str().unwrap().starts_with("evt-") && body["createdAt"].is_string());

    let completed = receiver
        .wait("/ok", "operation.completed", |b| {
            b["type"] == "operation.completed" && b["data"]["operation"]["id"] == operation.as_str()
        })
        .await;
    assert!(verifies(&completed, SECRET));
    let body = completed.json();
    assert_eq!(
        (body["data"]["operation"]["status"].as_str(), body["data"]["operation"]["type"].as_str()),
        (Some("succeeded"), Some("create"))
    );

    // The callback got the same completion, signed with its own secret.
    let called = receiver
        .wait("/cb", "the callback", |b| {
            b["type"] == "operation.completed" && b["data"]["operation"]["id"] == operation.as_str()
        })
        .await;
    assert!(verifies(&called, CALLBACK_SECRET), "callback signature");
    assert!(!verifies(&called, SECRET));
    assert_eq!(called.header("ferry-webhook-id"), "", "a callback belongs to no webhook");
    assert_eq!(called.json()["id"], body["id"], "the same event");

    // The flaky receiver failed twice; the third attempt delivered, and the log says so.
    let log = eventually("the third attempt delivers", DEADLINE, || async {
        let (_, log) = cp.api(Method::GET, &format!("/v1/webhooks/{flaky_id}/deliveries"), None).await;
        let d = log["data"]
            .as_array()?
            .iter()
            .find(|d| d["payload"]["data"]["operation"]["id"] == operation.as_str())?
            .clone();
        (d["status"] == "delivered").then_some(d)
    })
    .await;
    assert_eq!((log["attempts"].as_i64(), log["lastResponseCode"].as_i64()), (Some(3), Some(204)), "{log}");
    assert_eq!(log["event"], "operation.completed");
    assert!(log["deliveredAt"].is_string() && log["nextAttemptAt"].is_null(), "{log}");
    let tries: Vec<Hit> = receiver
        .hits("/flaky")
        .into_iter()
        .filter(|h| h.header("ferry-delivery") == log["id"].as_str().unwrap())
        .collect();
    assert_eq!(tries.len(), 3, "two 500s, then 204");
    assert!(tries.iter().all(|h| verifies(h, &flaky_secret)));
    assert!(tries.iter().all(|h| h.body == tries[0].body), "every attempt sends the same event");

    // Redeliver: a new delivery of the same event.
    let (status, again) = cp
        .api(
            Method::POST,
            &format!("/v1/webhooks/{flaky_id}/deliveries/{}/redeliver", log["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_ne!(again["id"], log["id"]);
    assert_eq!((again["eventId"].clone(), again["attempts"].as_i64()), (log["eventId"].clone(), Some(0)));
    let new_id = again["id"].as_str().unwrap().to_string();
    let redelivered = eventually("the redelivery", DEADLINE, || async {
        receiver.hits("/flaky").into_iter().filter(|h| h.header("ferry-delivery") == new_id).nth(2)
    })
    .await;
    assert_eq!(redelivered.json()["id"], body["id"]);
    let (status, res) =
        cp.api(Method::POST, &format!("/v1/webhooks/{ok_id}/deliveries/{new_id}/redeliver"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "WEBHOOK_002"), "another webhook's delivery: {res}");

    // The log of the other webhook: newest first, statuses and operations.
    let (_, log) = cp.api(Method::GET, &format!("/v1/webhooks/{ok_id}/deliveries?pageSize=200"), None).await;
    let data = log["data"].as_array().unwrap();
    assert!(data.len() >= 2 && data.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1), "{log}");
    // RFC 3339 with as many fraction digits as needed: compared as instants, not as strings.
    let at = |d: &Value| {
        let s = d["createdAt"].as_str().expect("createdAt");
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("RFC 3339")
    };
    assert!(data.windows(2).all(|w| at(&w[0]) >= at(&w[1])), "newest first: {log}");

    // Audited, never with the secret.
    let (_, trail) = cp.api(Method::GET, "/v1/audit?action=webhook.create", None).await;
    assert_eq!(trail["pagination"]["totalCount"], 2, "{trail}");
    assert!(!trail.to_string().contains(SECRET) && !trail.to_string().contains(&flaky_secret));
    let (_, trail) = cp.api(Method::GET, "/v1/audit?action=deployment.create", None).await;
    assert_eq!(trail["data"][0]["details"]["callbackUrl"], callback.as_str(), "{trail}");
    assert!(!trail.to_string().contains(CALLBACK_SECRET));

    // Deleted: gone with its log, and told nothing more.
    let (status, _) = cp.api(Method::DELETE, &format!("/v1/webhooks/{flaky_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, res) = cp.api(Method::GET, &format!("/v1/webhooks/{flaky_id}"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "WEBHOOK_001"));
    let before = receiver.hits("/flaky").len();
    let (status, res) = cp.api(Method::POST, &format!("/v1/deployments/{deployment}/stop"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let stop = res["operation"]["id"].as_str().unwrap().to_string();
    receiver
        .wait("/ok", "the stop completes", |b| {
            b["type"] == "operation.completed" && b["data"]["operation"]["id"] == stop.as_str()
        })
        .await;
    assert_eq!(receiver.hits("/flaky").len(), before, "a deleted webhook gets nothing");
    agent.stop().await;
}

#[tokio::test]
async fn webhooks_are_for_unscoped_roles() {
    let cp = ControlPlane::spawn().await;
    let viewer = cp.login_as("vera", json!(["viewer"])).await;
    let scoped_admin = cp.login_as("sam", json!([{ "role": "deployment_admin", "workspace": "default" }])).await;
    let developer = cp.login_as("dev", json!(["developer"])).await;
    let body = json!({ "url": "https://example.com/hook", "events": ["*"] });
    for token in [&viewer, &scoped_admin, &developer] {
        let (status, res) = cp.request(Method::POST, "/v1/webhooks", Some(body.clone()), Some(token)).await;
        assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
        assert_eq!(res["error"]["details"]["missingPermission"], "webhook:manage");
    }
    let created = subscribe(&cp, body).await;
    let id = created["id"].as_str().unwrap();
    // `*:read` reads them (secret masked); a developer does not.
    let (status, got) = cp.request(Method::GET, &format!("/v1/webhooks/{id}"), None, Some(&viewer)).await;
    assert_eq!((status, got["secret"].as_str()), (StatusCode::OK, Some("********")));
    let (status, res) = cp.request(Method::GET, "/v1/webhooks", None, Some(&developer)).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"));
    let (status, _) = cp.request(Method::DELETE, &format!("/v1/webhooks/{id}"), None, Some(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
