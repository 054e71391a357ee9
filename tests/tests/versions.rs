//! Versions with real processes: a deployment of `hello-web` gets immutable versions, is
//! deployed to another one and rolled back (the replicas answer with each version's greeting),
//! failed versions are skipped by rollbacks, concurrent deploys end on exactly one version, and
//! `/config`, `/env` and `PATCH /status` make the same changes. Bad input gets a precise 4xx.

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// hello-web's configuration greeting with `greeting` (replicas left to the caller).
fn greeter(greeting: &str) -> Value {
    json!({
        "command": bin_path("hello-web").to_str().unwrap(),
        "env": { "GREETING": greeting },
        "stopGracePeriodSeconds": 2,
        "minReadySeconds": 1,
        "healthChecks": {
            "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
        }
    })
}

async fn create(cp: &ControlPlane, name: &str, environment: &str, greeting: &str, replicas: u32) -> (String, Value) {
    let mut configuration = greeter(greeting);
    configuration["replicas"] = json!(replicas);
    let body = json!({
        "deploymentName": name,
        "environment": environment,
        "target": { "selector": {} },
        "configuration": configuration,
    });
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    // A create waiting for approval has no deployment yet; its operation names the id.
    (res["operation"]["deploymentId"].as_str().unwrap().to_string(), res)
}

async fn call(cp: &ControlPlane, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.api(method, path, body).await
}

/// A 202 change: its operation's href.
async fn change(cp: &ControlPlane, method: Method, path: &str, body: Option<Value>) -> (String, Value) {
    let (status, res) = cp.api(method, path, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{path}: {res}");
    (res["operation"]["href"].as_str().unwrap().to_string(), res)
}

async fn op_ends(cp: &ControlPlane, href: &str, want: &str) -> Value {
    eventually(&format!("operation {href} {want}"), DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, href, None).await;
        if want != "failed" {
            assert_ne!(v["status"], "failed", "{v}");
        }
        (v["status"] == want).then_some(v)
    })
    .await
}

/// What every replica answers on `/` once `n` replicas of the current revision are ready.
async fn greetings(cp: &ControlPlane, id: &str, n: u64) -> Vec<String> {
    let status = eventually(&format!("{n} ready replicas"), DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, &format!("/v1/deployments/{id}/status"), None).await;
        (v["status"] == "running"
            && v["resources"]["pods"]["available"] == n
            && v["replicas"].as_array()?.len() as u64 == n)
            .then_some(v)
    })
    .await;
    let mut out = Vec::new();
    for r in status["replicas"].as_array().unwrap() {
        let port = r["port"].as_u64().unwrap();
        let body = reqwest::get(format!("http://127.0.0.1:{port}/")).await.unwrap().text().await.unwrap();
        out.push(body.split(" (replica").next().unwrap().to_string());
    }
    out
}

/// Waits until every replica greets with `want`.
async fn serves(cp: &ControlPlane, id: &str, n: u64, want: &str) {
    eventually(&format!("every replica says {want:?}"), DEADLINE, || async {
        let got = greetings(cp, id, n).await;
        got.iter().all(|g| g == want).then_some(())
    })
    .await;
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn version(cp: &ControlPlane, id: &str, v: &str) -> Value {
    let (status, body) = call(cp, Method::GET, &format!("/v1/deployments/{id}/versions/{v}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn active(cp: &ControlPlane, id: &str) -> Value {
    let (status, body) = call(cp, Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn versions_are_deployed_and_rolled_back_on_real_processes() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;

    let (id, res) = create(&cp, "greeter", "development", "one", 2).await;
    op_ends(&cp, res["operation"]["href"].as_str().unwrap(), "succeeded").await;
    serves(&cp, &id, 2, "one").await;
    let base = format!("/v1/deployments/{id}");

    // The deployment's first version is v1, active and deployed.
    let v1 = version(&cp, &id, "v1").await;
    assert_eq!((v1["active"].as_bool(), v1["status"].as_str()), (Some(true), Some("available")), "{v1}");
    assert!(v1["configuration"].get("replicas").is_none(), "replicas are not part of a version: {v1}");
    assert!(v1["lastDeployed"].is_string() && v1["createdBy"].as_str().unwrap().starts_with("admin:"), "{v1}");

    // v2: created, not deployed. The same again is the same version; another configuration under
    // that name is refused: versions are immutable.
    let v2_body = json!({ "version": "v2", "configuration": greeter("two"), "description": "say two" });
    let (status, v2) = call(&cp, Method::POST, &format!("{base}/versions"), Some(v2_body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!((v2["active"].as_bool(), v2["description"].as_str()), (Some(false), Some("say two")));
    assert_eq!(v2["lastDeployed"], Value::Null);
    let (status, again) = call(&cp, Method::POST, &format!("{base}/versions"), Some(v2_body)).await;
    assert_eq!((status, again["version"].as_str()), (StatusCode::OK, Some("v2")), "{again}");
    let clash = json!({ "version": "v2", "configuration": greeter("three") });
    let (status, err) = call(&cp, Method::POST, &format!("{base}/versions"), Some(clash)).await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "DEPLOY_010"), "{err}");
    let (_, list) = call(&cp, Method::GET, &format!("{base}/versions"), None).await;
    let names: Vec<_> = list["data"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(names, ["v2", "v1"], "newest first");
    assert_eq!(list["pagination"]["totalCount"], 2);
    serves(&cp, &id, 2, "one").await;

    // Deploy v2: the processes greet with v2's value; the replica count stays.
    let (op, res) = change(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None).await;
    assert_eq!(
        (res["operation"]["type"].as_str(), res["deployment"]["activeVersion"].as_str()),
        (Some("deploy"), Some("v2"))
    );
    op_ends(&cp, &op, "succeeded").await;
    serves(&cp, &id, 2, "two").await;
    assert_eq!(active(&cp, &id).await["configuration"]["replicas"], 2);

    // Roll back to the previous good version: v1 again, v2 marked rolled back.
    let (op, res) =
        change(&cp, Method::POST, &format!("{base}/rollback"), Some(json!({ "reason": "two is wrong" }))).await;
    assert_eq!(
        (res["operation"]["type"].as_str(), res["deployment"]["activeVersion"].as_str()),
        (Some("rollback"), Some("v1"))
    );
    op_ends(&cp, &op, "succeeded").await;
    serves(&cp, &id, 2, "one").await;
    let v2 = version(&cp, &id, "v2").await;
    assert_eq!((v2["status"].as_str(), v2["statusReason"].as_str()), (Some("rolled_back"), Some("two is wrong")));
    assert_eq!(version(&cp, &id, "v1").await["active"], true);

    // Nothing is left to roll back to: v2 is skipped.
    let (status, err) = call(&cp, Method::POST, &format!("{base}/rollback"), None).await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "DEPLOY_003"), "{err}");
    assert!(err["error"]["details"]["reason"].as_str().unwrap().contains("v2 (rolled_back)"), "{err}");
    // Nor to a named rolled-back version, nor to the active one.
    for v in ["v2", "v1"] {
        let (status, err) = call(&cp, Method::POST, &format!("{base}/versions/{v}/rollback"), None).await;
        assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "DEPLOY_003"), "{v}: {err}");
    }
    // Unknown versions.
    for (method, path) in [
        (Method::GET, format!("{base}/versions/v9")),
        (Method::POST, format!("{base}/versions/v9/deploy")),
        (Method::POST, format!("{base}/versions/v9/rollback")),
        (Method::GET, format!("{base}/versions/bad%20name")),
    ] {
        let (status, err) = call(&cp, method, &path, None).await;
        assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "DEPLOY_002"), "{path}: {err}");
    }
    let (status, err) = call(&cp, Method::POST, "/v1/deployments/deploy-nope/rollback", None).await;
    assert_eq!((status, code(&err)), (StatusCode::NOT_FOUND, "DEPLOY_006"), "{err}");
    let bad = json!({ "version": "no spaces", "configuration": greeter("x") });
    let (status, err) = call(&cp, Method::POST, &format!("{base}/versions"), Some(bad)).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{err}");
    let (status, err) =
        call(&cp, Method::POST, &format!("{base}/rollback"), Some(json!({ "markFailed": "yes" }))).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{err}");
    serves(&cp, &id, 2, "one").await;

    // A rolled-back version may still be deployed explicitly: the user's call.
    let (op, _) = change(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None).await;
    op_ends(&cp, &op, "succeeded").await;
    serves(&cp, &id, 2, "two").await;

    // The history says who deployed what, when and how.
    let (_, history) = call(&cp, Method::GET, &format!("{base}/history"), None).await;
    let rows: Vec<_> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("v2", "deployment.version.deploy"),
            ("v1", "deployment.rollback"),
            ("v2", "deployment.version.deploy"),
            ("v1", "deployment.create")
        ]
    );
    assert!(history["data"][0]["createdBy"].as_str().unwrap().starts_with("admin:"));
    assert_eq!(history["data"][1]["details"]["fromVersion"], "v2");
    assert_eq!(history["data"][1]["details"]["marked"]["status"], "rolled_back");
    let (_, audit) =
        call(&cp, Method::GET, &format!("/v1/audit?object={id}&action=deployment.version.create"), None).await;
    assert_eq!(audit["data"][0]["details"]["version"], "v2");
    agent.stop().await;
}

#[tokio::test]
async fn a_failed_rollout_fails_its_version_and_rollbacks_skip_it() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, res) = create(&cp, "flaky", "development", "one", 1).await;
    op_ends(&cp, res["operation"]["href"].as_str().unwrap(), "succeeded").await;
    let base = format!("/v1/deployments/{id}");

    // v2 never becomes ready (its process exits at once): its operation fails at the progress
    // deadline, and v2 with it.
    let broken = json!({
        "version": "v2",
        "configuration": { "command": "/bin/false", "restartPolicy": "never", "progressDeadlineSeconds": 2 }
    });
    let (status, body) = call(&cp, Method::POST, &format!("{base}/versions"), Some(broken)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (op, _) = change(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None).await;
    let failed = op_ends(&cp, &op, "failed").await;
    assert!(failed["message"].as_str().unwrap().starts_with("progress deadline exceeded"), "{failed}");
    let v2 = version(&cp, &id, "v2").await;
    assert_eq!(v2["status"], "failed", "{v2}");
    assert_eq!(v2["statusReason"], failed["message"]);

    // v3 is good; rolling back from it skips the failed v2 and marks v3 failed as asked.
    let (op, _) = change(
        &cp,
        Method::PUT,
        &format!("{base}/config"),
        Some(json!({ "version": "v3", "configuration": greeter("three") })),
    )
    .await;
    op_ends(&cp, &op, "succeeded").await;
    serves(&cp, &id, 1, "three").await;
    let (op, res) = change(
        &cp,
        Method::POST,
        &format!("{base}/rollback"),
        Some(json!({ "reason": "latency regression", "markFailed": true })),
    )
    .await;
    assert_eq!(res["deployment"]["activeVersion"], "v1");
    op_ends(&cp, &op, "succeeded").await;
    serves(&cp, &id, 1, "one").await;
    let v3 = version(&cp, &id, "v3").await;
    assert_eq!((v3["status"].as_str(), v3["statusReason"].as_str()), (Some("failed"), Some("latency regression")));
    assert_eq!(version(&cp, &id, "v2").await["status"], "failed", "still failed");
    agent.stop().await;
}

#[tokio::test]
async fn concurrent_deploys_of_two_versions_end_on_exactly_one() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, res) = create(&cp, "racer", "development", "one", 2).await;
    op_ends(&cp, res["operation"]["href"].as_str().unwrap(), "succeeded").await;
    let base = format!("/v1/deployments/{id}");
    for (v, greeting) in [("v2", "two"), ("v3", "three")] {
        let body = json!({ "version": v, "configuration": greeter(greeting) });
        let (status, res) = call(&cp, Method::POST, &format!("{base}/versions"), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{res}");
    }

    let (path2, path3) = (format!("{base}/versions/v2/deploy"), format!("{base}/versions/v3/deploy"));
    let (a, b) = tokio::join!(cp.api(Method::POST, &path2, None), cp.api(Method::POST, &path3, None));
    assert_eq!((a.0, b.0), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{} {}", a.1, b.1);
    // Both serialized under the deployment's lock: the later write won and superseded the
    // earlier one's operation.
    let winner = active(&cp, &id).await["activeVersion"].as_str().unwrap().to_string();
    let (won, lost) = if winner == "v2" { (a.1, b.1) } else { (b.1, a.1) };
    assert!(["v2", "v3"].contains(&winner.as_str()));
    assert_eq!(won["deployment"]["activeVersion"], winner.as_str(), "the last write is what stays");
    let lost = op_ends(&cp, lost["operation"]["href"].as_str().unwrap(), "failed").await;
    assert_eq!(lost["message"], "superseded by a newer change");
    op_ends(&cp, won["operation"]["href"].as_str().unwrap(), "succeeded").await;
    let want = if winner == "v2" { "two" } else { "three" };
    serves(&cp, &id, 2, want).await;
    // Every replica runs the winner's template: no mix.
    assert_eq!(greetings(&cp, &id, 2).await, [want, want]);
    let other = if winner == "v2" { "v3" } else { "v2" };
    assert_eq!(version(&cp, &id, other).await["status"], "available", "being superseded is not a failure");
    agent.stop().await;
}

#[tokio::test]
async fn config_env_and_status_make_versions_and_changes() {
    // No agent: the API's answers are what is checked here.
    let cp = ControlPlane::spawn().await;
    let (id, res) = create(&cp, "configured", "development", "one", 3).await;
    let base = format!("/v1/deployments/{id}");
    let rv = res["deployment"]["resourceVersion"].as_i64().unwrap();

    // GET /config and /env: the active version, with the resource version as ETag.
    let res = reqwest::Client::new()
        .get(format!("{}{base}/config", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["etag"], format!("\"{rv}\"").as_str());
    let config: Value = res.json().await.unwrap();
    assert_eq!((config["version"].as_str(), config["configuration"]["replicas"].as_i64()), (Some("v1"), Some(3)));
    let (_, env) = call(&cp, Method::GET, &format!("{base}/env"), None).await;
    assert_eq!(env, json!({ "version": "v1", "env": { "GREETING": "one" } }));

    // PUT /env: a generated version, deployed at once, replicas kept.
    let (_, res) =
        change(&cp, Method::PUT, &format!("{base}/env"), Some(json!({ "env": { "GREETING": "two" } }))).await;
    assert_eq!(res["deployment"]["activeVersion"], "v2");
    assert_eq!(res["deployment"]["configuration"]["env"]["GREETING"], "two");
    assert_eq!(res["deployment"]["configuration"]["replicas"], 3);
    // deploy: false only stores it.
    let stored = json!({ "env": { "GREETING": "three" }, "version": "v3-candidate", "deploy": false });
    let (status, v) = call(&cp, Method::PUT, &format!("{base}/env"), Some(stored)).await;
    assert_eq!((status, v["active"].as_bool()), (StatusCode::CREATED, Some(false)), "{v}");
    assert_eq!(v["configuration"]["env"]["GREETING"], "three");
    assert_eq!(active(&cp, &id).await["activeVersion"], "v2");

    // PUT /config: a configuration without replicas keeps the deployment's.
    let (_, res) =
        change(&cp, Method::PUT, &format!("{base}/config"), Some(json!({ "configuration": greeter("four") }))).await;
    assert_eq!(res["deployment"]["activeVersion"], "v4", "v<versions + 1>");
    assert_eq!(res["deployment"]["configuration"]["replicas"], 3);
    // The same configuration again (no name): nothing new to version.
    let (_, res) =
        change(&cp, Method::PUT, &format!("{base}/config"), Some(json!({ "configuration": greeter("four") }))).await;
    assert_eq!(res["deployment"]["activeVersion"], "v4");
    // An existing name with another configuration is refused, on every path.
    for (path, body) in [
        (format!("{base}/config"), json!({ "version": "v2", "configuration": greeter("five") })),
        (format!("{base}/env"), json!({ "version": "v2", "env": { "GREETING": "five" } })),
        (base.clone(), json!({ "activeVersion": "v1", "configuration": { "replicas": 1, "command": "/bin/true" } })),
    ] {
        let (status, err) = call(&cp, Method::PUT, &path, Some(body)).await;
        assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "DEPLOY_010"), "{path}: {err}");
    }
    // PUT /deployments/{id} naming an existing version deploys it (replicas kept).
    let (_, res) = change(&cp, Method::PUT, &base, Some(json!({ "activeVersion": "v3-candidate" }))).await;
    assert_eq!(res["deployment"]["configuration"]["env"]["GREETING"], "three");
    assert_eq!(res["deployment"]["configuration"]["replicas"], 3);

    // If-Match on PUTs.
    let res = reqwest::Client::new()
        .put(format!("{}{base}/env", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("if-match", format!("\"{rv}\""))
        .json(&json!({ "env": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
    // Bad input.
    let (status, err) = call(&cp, Method::PUT, &format!("{base}/env"), Some(json!({ "env": { "PORT": "1" } }))).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{err}");
    let (status, err) =
        call(&cp, Method::PUT, &format!("{base}/config"), Some(json!({ "configuration": { "args": [] } }))).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{err}");

    // PATCH /status: the seed's desired-status changes.
    let (_, res) = change(&cp, Method::PATCH, &format!("{base}/status"), Some(json!({ "status": "stopped" }))).await;
    assert_eq!(
        (res["operation"]["type"].as_str(), res["deployment"]["desiredState"].as_str()),
        (Some("stop"), Some("stopped"))
    );
    let (_, res) = change(&cp, Method::PATCH, &format!("{base}/status"), Some(json!({ "status": "running" }))).await;
    assert_eq!(res["deployment"]["desiredState"], "running");
    let (_, res) = change(&cp, Method::PATCH, &format!("{base}/status"), Some(json!({ "status": "restarting" }))).await;
    assert_eq!(res["operation"]["type"], "restart");
    let (status, err) = call(&cp, Method::PATCH, &format!("{base}/status"), Some(json!({ "status": "paused" }))).await;
    assert_eq!((status, code(&err)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("running, stopped, restarting"), "{err}");
    // Scale, start, stop and restart make no version.
    let (_, list) = call(&cp, Method::GET, &format!("{base}/versions?pageSize=1"), None).await;
    assert_eq!(list["pagination"]["totalCount"], 4, "v1, v2, v3-candidate, v4");
}

#[tokio::test]
async fn deploys_and_rollbacks_wait_for_approval_in_production() {
    let cp = ControlPlane::spawn().await;
    let approver = cp.login_as("approver", json!(["deployment_admin"])).await;
    let approve = |approval: String| {
        let (cp, approver) = (&cp, approver.clone());
        async move {
            let (status, res) =
                cp.request(Method::POST, &format!("/v1/approvals/{approval}/approve"), None, Some(&approver)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{res}");
            res
        }
    };
    let (id, res) = create(&cp, "prod-web", "production", "one", 1).await;
    approve(res["approval"]["id"].as_str().unwrap().to_string()).await;
    let base = format!("/v1/deployments/{id}");
    let (status, body) =
        call(&cp, Method::POST, &format!("{base}/versions"), Some(json!({ "configuration": greeter("two") }))).await;
    assert_eq!((status, body["version"].as_str()), (StatusCode::CREATED, Some("v2")), "creating needs no approval");

    // Deploying waits for approval; the deployment is unchanged until then.
    let (op, res) = change(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None).await;
    assert_eq!(
        (res["operation"]["status"].as_str(), res["deployment"]["activeVersion"].as_str()),
        (Some("awaiting_approval"), Some("v1"))
    );
    approve(res["approval"]["id"].as_str().unwrap().to_string()).await;
    let (_, o) = call(&cp, Method::GET, &op, None).await;
    assert_eq!((o["type"].as_str(), o["status"].as_str()), (Some("deploy"), Some("in_progress")), "{o}");
    assert_eq!(active(&cp, &id).await["activeVersion"], "v2");

    // A rollback is resolved when asked for (v2 → v1) and applied as approved.
    let (_, res) = change(&cp, Method::POST, &format!("{base}/rollback"), None).await;
    assert_eq!(res["deployment"]["activeVersion"], "v2");
    let approval = res["approval"]["id"].as_str().unwrap().to_string();
    let (_, pending) = call(&cp, Method::GET, &format!("/v1/approvals/{approval}"), None).await;
    assert_eq!(pending["action"], "rollback", "{pending}");
    approve(approval).await;
    assert_eq!(active(&cp, &id).await["activeVersion"], "v1");
    assert_eq!(version(&cp, &id, "v2").await["status"], "rolled_back");

    // A rollback approved after the active version changed is refused and changes nothing.
    let (_, res) = change(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None).await;
    approve(res["approval"]["id"].as_str().unwrap().to_string()).await;
    let (_, res) = change(&cp, Method::POST, &format!("{base}/rollback"), None).await;
    assert_eq!(res["deployment"]["activeVersion"], "v2");
    let stale_rollback = res["approval"]["id"].as_str().unwrap().to_string();
    let (_, res) = change(&cp, Method::PUT, &format!("{base}/env"), Some(json!({ "env": { "GREETING": "x" } }))).await;
    approve(res["approval"]["id"].as_str().unwrap().to_string()).await;
    assert_eq!(active(&cp, &id).await["activeVersion"], "v3");
    let (status, err) =
        cp.request(Method::POST, &format!("/v1/approvals/{stale_rollback}/approve"), None, Some(&approver)).await;
    assert_eq!((status, code(&err)), (StatusCode::CONFLICT, "DEPLOY_003"), "{err}");
    assert_eq!(active(&cp, &id).await["activeVersion"], "v3");
    let (_, a) = call(&cp, Method::GET, &format!("/v1/approvals/{stale_rollback}"), None).await;
    assert_eq!(a["status"], "failed", "{a}");
}
