//! The API contract on every endpoint: `Idempotency-Key` replay on `POST`, `ETag` /
//! `If-None-Match` on reads, `If-Match` on `PUT`/`PATCH`/`DELETE`, `Location` on what is
//! accepted or created. Each test runs on PostgreSQL when `DATABASE_URL` is set (a schema of its
//! own), else on SQLite.

use std::sync::Arc;

use ferry_control_plane::store::{Store, StoreOptions};
use ferry_tests::ControlPlane;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A control plane, on PostgreSQL when `DATABASE_URL` is set.
struct Setup {
    cp: ControlPlane,
    pg: Option<(Store, String)>,
}

impl Setup {
    async fn new() -> Setup {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            return Setup { cp: ControlPlane::spawn().await, pg: None };
        };
        let schema = format!("ferry_e2e_{}", ferry_control_plane::ids::random_hex(6));
        // Kept open to drop the schema at the end (connecting to `public` would migrate it).
        let setup = Store::connect(&url, StoreOptions { pg_schema: Some(schema.clone()) }).await.unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        let cp = ControlPlane::builder().database_url(&scoped).spawn().await;
        assert_eq!(cp.running_store().backend(), ferry_control_plane::store::Backend::Postgres);
        Setup { cp, pg: Some((setup, schema)) }
    }

    async fn finish(mut self) {
        self.cp.stop().await;
        if let Some((store, schema)) = self.pg.take() {
            store.drop_pg_schema(&schema).await.unwrap();
            store.close().await;
        }
    }
}

/// An answer, with its exact bytes.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        if self.body.is_empty() { Value::Null } else { serde_json::from_slice(&self.body).expect("JSON body") }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends `body` (serialized once by the caller, so repeats are byte-identical) with `headers`.
async fn send(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{}{path}", cp.base_url)).bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_vec());
    }
    let res = req.send().await.expect("HTTP request");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("HTTP body").to_vec();
    Answer { status, headers, body }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn web(name: &str) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "configuration": { "replicas": 1, "command": "hello-web" },
    })
}

/// How many deployments are called `name`.
async fn deployments_named(cp: &ControlPlane, name: &str) -> i64 {
    let (status, page) = cp.api(Method::GET, &format!("/v1/deployments?name={name}"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["pagination"]["totalCount"].as_i64().unwrap()
}

#[tokio::test]
async fn the_same_post_twice_with_one_key_creates_one_deployment() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let body = bytes(&web("once"));
    let key = [("Idempotency-Key", "create-once-1")];
    let first = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.json());
    assert!(!first.replayed());
    let second = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert!(second.replayed(), "the repeat says it is a replay");
    assert_eq!(second.body, first.body, "byte-identical bodies");
    let (a, b) = (first.json(), second.json());
    assert_eq!(a["operation"]["id"], b["operation"]["id"], "the same operation");
    assert_eq!(a["deployment"]["id"], b["deployment"]["id"]);
    // The replayed headers: Location, ETag, Content-Type; the request id is the repeat's own.
    for h in ["location", "etag", "content-type"] {
        assert_eq!(second.header(h), first.header(h), "{h}");
    }
    assert_eq!(first.header("location"), a["operation"]["href"].as_str());
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(deployments_named(cp, "once").await, 1);

    // Without a key, the same request runs again (and is refused: the name is taken).
    let third = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &[], Some(&body)).await;
    assert_eq!((third.status, third.code().as_str()), (StatusCode::CONFLICT, "DEPLOY_008"));
    // The key is recorded in the create's audit record.
    let id = a["deployment"]["id"].as_str().unwrap();
    let (_, audit) = cp.api(Method::GET, &format!("/v1/deployments/{id}/audit"), None).await;
    let created = audit["data"].as_array().unwrap().iter().find(|r| r["action"] == "deployment.create").unwrap();
    assert_eq!(created["details"]["idempotencyKey"], "create-once-1", "{created}");
    s.finish().await;
}

#[tokio::test]
async fn twenty_concurrent_repeats_create_one_deployment() {
    let s = Setup::new().await;
    let cp = Arc::new(s.cp);
    let body = Arc::new(bytes(&web("concurrent")));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cp, body) = (cp.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let key = [("Idempotency-Key", "burst-7")];
            send(&cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&body)).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    for a in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.json());
        assert_eq!(a.body, answers[0].body, "every repeat gets the identical body");
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed()).count(), 1, "one ran, the others were replayed");
    assert_eq!(deployments_named(&cp, "concurrent").await, 1, "exactly one deployment exists");
    let Ok(cp) = Arc::try_unwrap(cp) else { panic!("tasks hold no control plane") };
    Setup { cp, pg: s.pg }.finish().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_and_runs_nothing() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let key = [("Idempotency-Key", "reused")];
    let first = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&bytes(&web("first")))).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // Another body, another path, another query string: 422, nothing created.
    let other = bytes(&web("second"));
    for (path, body) in [
        ("/v1/deployments", other.clone()),
        ("/v1/deployments?waitForWindow=true", bytes(&web("first"))),
        ("/v1/workspaces", bytes(&json!({ "name": "second" }))),
    ] {
        let res = send(cp, Method::POST, path, &cp.admin_token, &key, Some(&body)).await;
        assert_eq!((res.status, res.code().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_001"), "{path}");
        let e = res.json();
        assert_eq!(e["error"]["details"]["firstRequest"], "POST /v1/deployments");
        assert_eq!(e["error"]["details"]["firstRequestId"], first.header("x-request-id").unwrap());
    }
    assert_eq!(deployments_named(cp, "second").await, 0, "nothing was created");
    let (status, _) = cp.api(Method::GET, "/v1/workspaces/second", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A malformed key is a 400.
    let bad =
        send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &[("Idempotency-Key", "two words")], Some(&other))
            .await;
    assert_eq!((bad.status, bad.code().as_str()), (StatusCode::BAD_REQUEST, "VALIDATION_001"));
    s.finish().await;
}

#[tokio::test]
async fn keys_belong_to_their_caller() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let other = cp.login_as("other-caller", json!(["deployment_admin"])).await;
    let key = [("Idempotency-Key", "shared-key")];
    let a = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&bytes(&web("mine")))).await;
    let b = send(cp, Method::POST, "/v1/deployments", &other, &key, Some(&bytes(&web("theirs")))).await;
    assert_eq!((a.status, b.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{:?}", b.json());
    assert!(!a.replayed() && !b.replayed());
    assert_ne!(a.json()["deployment"]["id"], b.json()["deployment"]["id"]);
    assert_eq!((deployments_named(cp, "mine").await, deployments_named(cp, "theirs").await), (1, 1));
    s.finish().await;
}

#[tokio::test]
async fn error_answers_are_replayed_too_and_nothing_runs_again() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let (status, _) = cp.api(Method::POST, "/v1/environments/staging/lock", Some(json!({ "reason": "release" }))).await;
    assert_eq!(status, StatusCode::OK);
    let body = bytes(&json!({
        "deploymentName": "blocked",
        "environment": "staging",
        "configuration": { "replicas": 1, "command": "hello-web" },
    }));
    let key = [("Idempotency-Key", "while-locked")];
    let first = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!((first.status, first.code().as_str()), (StatusCode::CONFLICT, "ENV_002"));
    let (status, _) = cp.api(Method::POST, "/v1/environments/staging/unlock", None).await;
    assert_eq!(status, StatusCode::OK);
    // The environment is open now, but the repeat gets the first answer: it did not run again.
    let second = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert!(second.replayed());
    assert_eq!(second.body, first.body, "byte-identical, the first request's id included");
    assert_eq!(second.json()["error"]["requestId"], first.header("x-request-id").unwrap());
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(deployments_named(cp, "blocked").await, 0);
    // A validation error is kept as well.
    let invalid = bytes(&json!({ "deploymentName": "x" }));
    let key = [("Idempotency-Key", "invalid-body")];
    let first = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&invalid)).await;
    let second = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &key, Some(&invalid)).await;
    assert_eq!((first.status, second.status), (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST));
    assert!(second.replayed() && second.body == first.body);
    s.finish().await;
}

#[tokio::test]
async fn answers_that_carry_a_credential_are_not_kept() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let body = bytes(&json!({ "name": "ci", "roles": ["deployment_admin"] }));
    let key = [("Idempotency-Key", "one-key")];
    let first = send(cp, Method::POST, "/v1/api-keys", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.json());
    let secret = first.json()["key"].as_str().unwrap().to_string();
    let second = send(cp, Method::POST, "/v1/api-keys", &cp.admin_token, &key, Some(&body)).await;
    assert_eq!((second.status, second.code().as_str()), (StatusCode::CONFLICT, "IDEMPOTENCY_003"));
    assert_eq!(second.json()["error"]["details"]["status"], 201);
    assert!(!String::from_utf8_lossy(&second.body).contains(&secret));
    let (_, keys) = cp.api(Method::GET, "/v1/api-keys", None).await;
    assert_eq!(keys["pagination"]["totalCount"], 1, "one key was created: {keys}");
    s.finish().await;
}

/// `(status, ETag, body)` of a GET.
async fn get(cp: &ControlPlane, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(cp, Method::GET, path, &cp.admin_token, headers, None).await
}

#[tokio::test]
async fn reads_have_etags_and_if_none_match_answers_304() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let created =
        send(cp, Method::POST, "/v1/workspaces", &cp.admin_token, &[], Some(&bytes(&json!({ "name": "team-e" }))))
            .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let ws = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(created.header("location"), Some(format!("/v1/workspaces/{ws}").as_str()));
    let user = cp
        .api(Method::POST, "/v1/users", Some(json!({ "username": "etag-user", "password": "correct-horse-battery" })))
        .await;
    let user_id = user.1["id"].as_str().unwrap().to_string();
    let paths = [
        "/v1/environments/production".to_string(),
        "/v1/environments/production/secrets".to_string(),
        "/v1/environments/production/change-windows".to_string(),
        "/v1/environments".to_string(),
        format!("/v1/workspaces/{ws}"),
        "/v1/workspaces".to_string(),
        format!("/v1/users/{user_id}"),
        "/v1/users".to_string(),
        "/v1/auth/me".to_string(),
    ];
    for path in &paths {
        let a = get(cp, path, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let tag = a.header("etag").unwrap_or_else(|| panic!("{path} has no ETag")).to_string();
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34, "{path}: {tag}");
        assert_eq!(get(cp, path, &[]).await.header("etag"), Some(tag.as_str()), "{path}: stable");
        let not_modified = get(cp, path, &[("If-None-Match", &tag)]).await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("etag"), Some(tag.as_str()));
        // Weak comparison; and a list naming it among others.
        let weak = format!("W/{tag}");
        assert_eq!(get(cp, path, &[("If-None-Match", &weak)]).await.status, StatusCode::NOT_MODIFIED, "{path}");
        let list = format!("\"other\", {tag}");
        assert_eq!(get(cp, path, &[("If-None-Match", &list)]).await.status, StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(get(cp, path, &[("If-None-Match", "\"other\"")]).await.status, StatusCode::OK, "{path}");
    }
    // A change changes the tag.
    let before = get(cp, &format!("/v1/workspaces/{ws}"), &[]).await;
    let (status, _) = cp.api(Method::PUT, &format!("/v1/workspaces/{ws}"), Some(json!({ "description": "new" }))).await;
    assert_eq!(status, StatusCode::OK);
    let old = before.header("etag").unwrap();
    let after = get(cp, &format!("/v1/workspaces/{ws}"), &[("If-None-Match", old)]).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_ne!(after.header("etag"), Some(old));
    // A malformed If-None-Match is a 400.
    let bad = get(cp, "/v1/environments/production", &[("If-None-Match", "unquoted")]).await;
    assert_eq!((bad.status, bad.code().as_str()), (StatusCode::BAD_REQUEST, "VALIDATION_001"));

    // Deployments keep their resourceVersion tag (what writes compare); it is never a 304,
    // because the observed status changes under the same resourceVersion.
    let created = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &[], Some(&bytes(&web("tagged")))).await;
    let id = created.json()["deployment"]["id"].as_str().unwrap().to_string();
    let d = get(cp, &format!("/v1/deployments/{id}"), &[]).await;
    let rv = d.json()["resourceVersion"].as_i64().unwrap();
    assert_eq!(d.header("etag"), Some(format!("\"{rv}\"").as_str()));
    let again = get(cp, &format!("/v1/deployments/{id}"), &[("If-None-Match", &format!("\"{rv}\""))]).await;
    assert_eq!(again.status, StatusCode::OK);
    // Streams get none.
    let client = reqwest::Client::new();
    let res =
        client.get(format!("{}/v1/logs/stream/{id}", cp.base_url)).bearer_auth(&cp.admin_token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("etag").is_none());
    drop(res);
    s.finish().await;
}

#[tokio::test]
async fn a_stale_if_match_changes_nothing() {
    let s = Setup::new().await;
    let cp = &s.cp;
    // A workspace: read, change with the current tag, then with the stale one.
    let (_, w) = cp.api(Method::POST, "/v1/workspaces", Some(json!({ "name": "team-m", "description": "one" }))).await;
    let path = format!("/v1/workspaces/{}", w["id"].as_str().unwrap());
    let read = get(cp, &path, &[]).await;
    let tag = read.header("etag").unwrap().to_string();
    let change = |d: &str| bytes(&json!({ "description": d }));
    let ok = send(cp, Method::PUT, &path, &cp.admin_token, &[("If-Match", &tag)], Some(&change("two"))).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
    let stale = send(cp, Method::PUT, &path, &cp.admin_token, &[("If-Match", &tag)], Some(&change("three"))).await;
    assert_eq!((stale.status, stale.code().as_str()), (StatusCode::PRECONDITION_FAILED, "PRECONDITION_001"));
    let now = get(cp, &path, &[]).await;
    assert_eq!(now.json()["description"], "two", "nothing changed");
    assert_eq!(stale.json()["error"]["details"]["currentEtag"], now.header("etag").unwrap());
    // `*`, and a list that names the current tag, pass.
    for list in [false, true] {
        let current = get(cp, &path, &[]).await.header("etag").unwrap().to_string();
        let cond = if list { format!("\"nope\", {current}") } else { "*".to_string() };
        let res = send(cp, Method::PUT, &path, &cp.admin_token, &[("If-Match", &cond)], Some(&change("four"))).await;
        assert_eq!(res.status, StatusCode::OK, "{cond}");
    }
    // A weak tag never matches If-Match (strong comparison).
    let weak = format!("W/{}", get(cp, &path, &[]).await.header("etag").unwrap());
    let res = send(cp, Method::PUT, &path, &cp.admin_token, &[("If-Match", &weak)], Some(&change("five"))).await;
    assert_eq!(res.status, StatusCode::PRECONDITION_FAILED);
    // Malformed: 400, nothing changed.
    let res = send(cp, Method::PUT, &path, &cp.admin_token, &[("If-Match", "four")], Some(&change("six"))).await;
    assert_eq!((res.status, res.code().as_str()), (StatusCode::BAD_REQUEST, "VALIDATION_001"));
    assert_eq!(get(cp, &path, &[]).await.json()["description"], "four");

    // An environment's restrictions are part of the environment: its tag guards them.
    let env = get(cp, "/v1/environments/staging", &[]).await;
    let tag = env.header("etag").unwrap().to_string();
    let restrict = |approval: bool| bytes(&json!({ "requiredRoles": [], "approvalRequired": approval }));
    let path = "/v1/environments/staging/restrictions";
    let ok = send(cp, Method::PUT, path, &cp.admin_token, &[("If-Match", &tag)], Some(&restrict(true))).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
    let stale = send(cp, Method::PUT, path, &cp.admin_token, &[("If-Match", &tag)], Some(&restrict(false))).await;
    assert_eq!((stale.status, stale.code().as_str()), (StatusCode::PRECONDITION_FAILED, "PRECONDITION_001"));
    let env = get(cp, "/v1/environments/staging", &[]).await;
    assert_eq!(env.json()["restrictions"]["approvalRequired"], true, "nothing changed");
    assert_eq!(stale.json()["error"]["details"]["currentEtag"], env.header("etag").unwrap());
    // The refusal is in the audit trail, naming the write.
    let (_, trail) = cp.api(Method::GET, "/v1/audit?outcome=failed", None).await;
    let actions: Vec<&str> = trail["data"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"PUT /v1/environments/{id}/restrictions"), "{actions:?}");
    assert!(actions.contains(&"PUT /v1/workspaces/{id}"), "{actions:?}");

    // A missing resource answers its own 404 (RFC 9110 §13.2.1), whatever the condition.
    let res =
        send(cp, Method::PUT, "/v1/workspaces/nope", &cp.admin_token, &[("If-Match", "\"x\"")], Some(&change("x")))
            .await;
    assert_eq!((res.status, res.code().as_str()), (StatusCode::NOT_FOUND, "WORKSPACE_001"));
    // A write with nothing to read refuses If-Match instead of ignoring it.
    let (_, key) = cp.api(Method::POST, "/v1/api-keys", Some(json!({ "name": "k", "roles": ["viewer"] }))).await;
    let path = format!("/v1/api-keys/{}", key["id"].as_str().unwrap());
    let res = send(cp, Method::DELETE, &path, &cp.admin_token, &[("If-Match", "\"x\"")], None).await;
    assert_eq!((res.status, res.code().as_str()), (StatusCode::BAD_REQUEST, "VALIDATION_001"));
    assert_eq!(res.json()["error"]["details"]["field"], "If-Match");
    let res = send(cp, Method::DELETE, &path, &cp.admin_token, &[], None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "without If-Match it is deleted");

    // Deployments: DELETE is checked against the resourceVersion tag; PUT compares it itself.
    let created = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &[], Some(&bytes(&web("guarded")))).await;
    let id = created.json()["deployment"]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/deployments/{id}");
    let rv = get(cp, &path, &[]).await.json()["resourceVersion"].as_i64().unwrap();
    let stale = format!("\"{}\"", rv - 1);
    let res = send(
        cp,
        Method::PUT,
        &path,
        &cp.admin_token,
        &[("If-Match", &stale)],
        Some(&bytes(&json!({ "activeVersion": "v2" }))),
    )
    .await;
    assert_eq!((res.status, res.code().as_str()), (StatusCode::PRECONDITION_FAILED, "DEPLOY_009"));
    let res = send(cp, Method::DELETE, &path, &cp.admin_token, &[("If-Match", &stale)], None).await;
    assert_eq!((res.status, res.code().as_str()), (StatusCode::PRECONDITION_FAILED, "PRECONDITION_001"));
    assert_eq!(res.json()["error"]["details"]["currentEtag"], format!("\"{rv}\""));
    assert_eq!(get(cp, &path, &[]).await.json()["desiredState"], "running", "not deleted");
    let res = send(cp, Method::DELETE, &path, &cp.admin_token, &[("If-Match", &format!("\"{rv}\""))], None).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{:?}", res.json());
    s.finish().await;
}

#[tokio::test]
async fn accepted_and_created_answers_say_where_to_look() {
    let s = Setup::new().await;
    let cp = &s.cp;
    let created = send(cp, Method::POST, "/v1/deployments", &cp.admin_token, &[], Some(&bytes(&web("located")))).await;
    let d = created.json();
    assert_eq!(created.header("location"), d["operation"]["href"].as_str());
    let id = d["deployment"]["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::POST, format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 2 }))),
        (Method::POST, format!("/v1/deployments/{id}/restart"), None),
        (Method::DELETE, format!("/v1/deployments/{id}"), None),
    ] {
        let res = send(cp, method.clone(), &path, &cp.admin_token, &[], body.as_ref().map(bytes).as_deref()).await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{method} {path}: {:?}", res.json());
        let href = res.json()["operation"]["href"].as_str().unwrap().to_string();
        assert_eq!(res.header("location"), Some(href.as_str()), "{method} {path}");
        assert_eq!(get(cp, &href, &[]).await.status, StatusCode::OK);
    }
    let creates = [
        ("/v1/environments", json!({ "name": "qa", "type": "staging" })),
        ("/v1/workspaces", json!({ "name": "team-l" })),
        ("/v1/projects", json!({ "name": "p1" })),
        ("/v1/aizones", json!({ "name": "zone-l" })),
        ("/v1/users", json!({ "username": "located", "password": "correct-horse-battery" })),
    ];
    for (path, body) in creates {
        let res = send(cp, Method::POST, path, &cp.admin_token, &[], Some(&bytes(&body))).await;
        assert_eq!(res.status, StatusCode::CREATED, "{path}: {:?}", res.json());
        let location = res.header("location").unwrap_or_else(|| panic!("{path}: no Location")).to_string();
        assert_eq!(location, format!("{path}/{}", res.json()["id"].as_str().unwrap()));
        let read = get(cp, &location, &[]).await;
        assert_eq!(read.status, StatusCode::OK, "{location}");
        assert_eq!(read.body, res.body, "{location}: the created representation");
    }
    s.finish().await;
}
