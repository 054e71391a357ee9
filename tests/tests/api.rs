//! The REST shell: authentication, the seed's error format, and bad input answered with a
//! precise 4xx that changes nothing.

use ferry_tests::ControlPlane;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["details"].is_object(), "{body}");
    assert!(e["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    assert!(e["documentation"].as_str().is_some_and(|d| d.ends_with(&code.to_ascii_lowercase())), "{body}");
}

#[tokio::test]
async fn health_is_public_everything_else_needs_the_admin_token() {
    let cp = ControlPlane::spawn().await;
    let (status, body) = cp.request(Method::GET, "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    for (method, path) in [
        (Method::GET, "/v1/agents"),
        (Method::GET, "/v1/agents/agent-x"),
        (Method::DELETE, "/v1/agents/agent-x"),
        (Method::GET, "/v1/agents/tokens"),
        (Method::POST, "/v1/agents/tokens"),
    ] {
        let (status, body) = cp.request(method.clone(), path, None, None).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001");
        let (status, body) = cp.request(method, path, None, Some("ferry_admin_wrong")).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001");
    }
    // The scheme is case-insensitive (RFC 9110); other schemes are still refused.
    let client = reqwest::Client::new();
    for (scheme, want) in [
        ("bearer", StatusCode::OK),
        ("BEARER", StatusCode::OK),
        ("Bearer", StatusCode::OK),
        ("Basic", StatusCode::UNAUTHORIZED),
    ] {
        let res = client
            .get(format!("{}/v1/agents", cp.base_url))
            .header("authorization", format!("{scheme} {}", cp.admin_token))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        if want == StatusCode::OK {
            assert_eq!(status, want, "{scheme}: {body}");
        } else {
            assert_error(status, &body, want, "AUTH_001");
        }
    }
    // The plaintext was written once, 0600; only a hash is stored.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cp.data_dir.join("admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn bad_input_gets_a_precise_4xx_and_stores_nothing() {
    let cp = ControlPlane::spawn().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "ttlSeconds": 0 }), "VALIDATION_001", "ttlSeconds"),
        (json!({ "ttlSeconds": 99_999_999 }), "VALIDATION_001", "ttlSeconds"),
        (json!({ "ttlSeconds": "soon" }), "VALIDATION_001", "ttlSeconds"),
        (json!({ "ttl": 60 }), "VALIDATION_001", "unknown field"),
        (json!({ "labels": { "bad key!": "x" } }), "VALIDATION_001", "label"),
        (json!({ "labels": { "k": "v/w" } }), "VALIDATION_001", "label"),
        (json!({ "description": "x".repeat(300) }), "VALIDATION_001", "description"),
        (json!([1, 2]), "VALIDATION_001", "invalid type"),
    ];
    for (body, code, needle) in cases {
        let (status, res) = cp.api(Method::POST, "/v1/agents/tokens", Some(body.clone())).await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, code);
        let msg = res["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body} -> {msg}");
    }
    let client = reqwest::Client::new();
    let url = format!("{}/v1/agents/tokens", cp.base_url);
    let send = |body: Vec<u8>, ct: Option<&'static str>| {
        let mut req = client.post(&url).bearer_auth(&cp.admin_token).body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, res) = send(b"{\"ttlSeconds\": ".to_vec(), Some("application/json")).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_002");
    let (status, res) = send(b"{}".to_vec(), None).await;
    assert_error(status, &res, StatusCode::UNSUPPORTED_MEDIA_TYPE, "VALIDATION_004");
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (status, res) = send(huge.into_bytes(), Some("application/json")).await;
    assert_error(status, &res, StatusCode::PAYLOAD_TOO_LARGE, "VALIDATION_003");

    // None of it created a token.
    let (_, tokens) = cp.api(Method::GET, "/v1/agents/tokens", None).await;
    assert_eq!(tokens["pagination"]["totalCount"], 0, "{tokens}");

    for (path, status, code) in [
        ("/v1/agents?page=0", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?pageSize=1000", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?status=sleeping", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?page=x", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?page=9223372036854775807", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?page=46116860184273880&pageSize=200", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/deployments?page=9223372036854775807", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/environments?page=9223372036854775807", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents?colour=red", StatusCode::BAD_REQUEST, "VALIDATION_001"),
        ("/v1/agents/agent-missing", StatusCode::NOT_FOUND, "AGENT_001"),
        ("/v1/nothing-here", StatusCode::NOT_FOUND, "ROUTE_001"),
    ] {
        let (s, res) = cp.api(Method::GET, path, None).await;
        assert_error(s, &res, status, code);
    }
    // Unknown query values and parameters are refused, naming the parameter and what it accepts.
    for (path, field, needle) in [
        ("/v1/deployments?status=bogus", "status", "running, deploying, degraded, failed"),
        ("/v1/agents/tokens?status=bogus", "status", "active, used, expired"),
        ("/v1/agents/tokens?page=0", "page", "1 or more"),
        ("/v1/agents/tokens?pageSize=1000", "pageSize", "between 1 and 200"),
        ("/v1/agents/tokens?page=9223372036854775807", "page", "at most"),
    ] {
        let (s, res) = cp.api(Method::GET, path, None).await;
        assert_error(s, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
        assert_eq!(res["error"]["details"]["field"], field, "{path}: {res}");
        let msg = res["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{path}: {msg}");
    }
    let (s, res) = cp.api(Method::GET, "/v1/agents/tokens?colour=red", None).await;
    assert_error(s, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    assert!(res["error"]["message"].as_str().unwrap().contains("colour"), "{res}");

    let (s, res) = cp.api(Method::DELETE, "/v1/agents/tokens/0000000000000000", None).await;
    assert_error(s, &res, StatusCode::NOT_FOUND, "AGENT_002");
    let (s, res) = cp.api(Method::PATCH, "/v1/agents", None).await;
    assert_error(s, &res, StatusCode::METHOD_NOT_ALLOWED, "ROUTE_002");
}

#[tokio::test]
async fn request_ids_are_echoed_and_pagination_has_the_seed_shape() {
    let cp = ControlPlane::spawn().await;
    let res = reqwest::Client::new()
        .get(format!("{}/v1/agents/agent-x", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["requestId"], "trace-123");

    let fp = cp.ca().fingerprint();
    for _ in 0..3 {
        ferry_tests::raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &fp).await.unwrap();
    }
    let (_, page1) = cp.api(Method::GET, "/v1/agents?page=1&pageSize=2", None).await;
    assert_eq!(page1["pagination"], json!({ "page": 1, "pageSize": 2, "totalCount": 3, "hasNext": true }));
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    let (_, page2) = cp.api(Method::GET, "/v1/agents?page=2&pageSize=2", None).await;
    assert_eq!(page2["pagination"]["hasNext"], false);
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    assert_ne!(page1["data"][0]["id"], page2["data"][0]["id"]);

    // Tokens page and filter the same way.
    let (_, page2) = cp.api(Method::GET, "/v1/agents/tokens?status=used&page=2&pageSize=2", None).await;
    assert_eq!(page2["pagination"], json!({ "page": 2, "pageSize": 2, "totalCount": 3, "hasNext": false }));
    assert_eq!(page2["data"].as_array().unwrap().len(), 1, "{page2}");
    let (_, active) = cp.api(Method::GET, "/v1/agents/tokens?status=active", None).await;
    assert_eq!(active["pagination"]["totalCount"], 0, "{active}");
}

/// Log output of the tests that look at it (the test runtime runs the server on this thread).
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn store_failures_are_logged_once_with_the_request_id_and_kept_out_of_the_body() {
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cp = ControlPlane::spawn().await;
    cp.running_store().close().await;
    let res = reqwest::Client::new()
        .get(format!("{}/v1/agents", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("x-request-id", "trace-store-1")
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_001");
    assert_eq!(body["error"]["requestId"], "trace-store-1");
    assert!(!body.to_string().contains("pool"), "the store error leaked into the body: {body}");

    let log = logs.text();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("trace-store-1")).collect();
    assert_eq!(failures.len(), 1, "one line per request:\n{log}");
    assert!(failures[0].contains("ERROR") && failures[0].contains("closed pool"), "{log}");
    assert!(!log.contains("store error"), "store errors are logged without the request id:\n{log}");
}

#[tokio::test]
async fn control_characters_are_refused_in_what_agents_would_run() {
    let cp = ControlPlane::spawn().await;
    for (key, value, field) in [
        ("command", json!("/bin/true\u{0}"), "configuration.command"),
        ("command", json!("/bin/\ttrue"), "configuration.command"),
        ("args", json!(["ok", "a\u{1b}[2J"]), "configuration.args"),
        ("workingDir", json!("/srv\u{0}"), "configuration.workingDir"),
        ("env", json!({ "A": "1\u{0}" }), "configuration.env"),
        (
            "healthChecks",
            json!({ "liveness": { "exec": { "command": ["test", "\u{7}"] } } }),
            "configuration.healthChecks.liveness.exec.command",
        ),
        (
            "healthChecks",
            json!({ "readiness": { "httpGet": { "path": "/health\u{0}" } } }),
            "configuration.healthChecks.readiness.httpGet.path",
        ),
    ] {
        let mut body = json!({
            "deploymentName": "web", "environment": "development",
            "configuration": { "replicas": 1, "command": "/bin/true" },
        });
        body["configuration"][key] = value;
        let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(body.clone())).await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
        assert_eq!(res["error"]["details"]["field"], field, "{body} -> {res}");
        assert!(res["error"]["message"].as_str().unwrap().contains("control character"), "{res}");
    }
    let (_, list) = cp.api(Method::GET, "/v1/deployments", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");
}

#[tokio::test]
async fn a_deployment_may_ask_for_up_to_ten_thousand_replicas() {
    let cp = ControlPlane::spawn().await;
    let body = |replicas: u32| {
        json!({
            "deploymentName": "web", "environment": "development",
            "configuration": { "replicas": replicas, "command": "/bin/true" },
        })
    };
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(body(10_001))).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "DEPLOY_004");
    assert!(res["error"]["message"].as_str().unwrap().contains("limit of 10000 replicas"), "{res}");
    assert_eq!(res["error"]["details"]["field"], "configuration.replicas", "{res}");
    // 10,000 is accepted; with no agent enrolled yet it waits, pending, for one.
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(body(10_000))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["deployment"]["status"], "pending", "{res}");
    assert_eq!(res["deployment"]["health"]["issues"][0], "no agent matches the target", "{res}");
}
