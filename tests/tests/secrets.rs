//! Secrets end to end: set through the API on a deployment and on its environment, they reach
//! the workload's environment (replicas restart when they change, and a restarted agent gets
//! them again), and their values appear in no API response, no log line of the control plane or
//! the agent, and no file of either (database and WAL included). Bad input changes nothing.

use std::path::Path;

use ferry_control_plane::ids::random_hex;
use ferry_tests::{Agent, ControlPlane, DEADLINE, captured_logs, eventually, files_containing};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A deployment whose one replica writes `$MY_SECRET|$SHARED|$OVERRIDDEN` to `out` in `work`
/// (atomically) and then sleeps. It prints nothing, so its log lines carry no secret either.
fn writer(name: &str, work: &Path) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "target": { "selector": { "role": "web" } },
        "configuration": {
            "replicas": 1,
            "command": "sh",
            "args": ["-c", "printf '%s|%s|%s' \"$MY_SECRET\" \"$SHARED\" \"$OVERRIDDEN\" > out.tmp && mv out.tmp out; exec sleep 3600"],
            "workingDir": work.to_str().unwrap(),
            "stopGracePeriodSeconds": 1,
            // A request cannot set which secrets a revision runs with: ignored.
            "secrets": { "FORGED": { "source": "deployment", "version": 9, "lastRotated": "2024-01-01T00:00:00Z" } }
        }
    })
}

async fn put(cp: &ControlPlane, path: &str, secrets: Value) -> Value {
    let (status, body) = cp.api(Method::PUT, path, Some(json!({ "secrets": secrets }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits until the workload wrote `want`.
async fn observed(work: &Path, want: &str) {
    let out = work.join("out");
    eventually(&format!("the workload sees {want:?}"), DEADLINE, || async {
        (std::fs::read_to_string(&out).ok().as_deref() == Some(want)).then_some(())
    })
    .await;
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    let (status, body) = cp.api(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn version(body: &Value, name: &str) -> i64 {
    body["secrets"][name]["version"].as_i64().unwrap_or_else(|| panic!("{name} in {body}"))
}

#[tokio::test]
async fn secrets_reach_the_workload_and_nothing_else() {
    let logs = captured_logs();
    let cp = ControlPlane::spawn().await;
    let mut agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let work = tempfile::tempdir().unwrap();
    let tag = random_hex(6);
    let [mine1, mine2, shared1, shared2, env_own, own] =
        ["mine-1", "mine-2", "shared-1", "shared-2", "env-own", "own"].map(|v| format!("s3cret-{v}-{tag}"));
    let values = [&mine1, &mine2, &shared1, &shared2, &env_own, &own];

    // Environment secrets first: a deployment created afterwards runs with them.
    let body =
        put(&cp, "/v1/environments/development/secrets", json!({ "SHARED": shared1, "OVERRIDDEN": env_own })).await;
    assert_eq!(body["secrets"]["SHARED"]["value"], "********");
    assert_eq!(body["operations"], json!([]), "no deployment to roll out yet");
    let (status, created) = cp.api(Method::POST, "/v1/deployments", Some(writer("writer", work.path()))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["deployment"]["id"].as_str().unwrap().to_string();
    let pins = &created["deployment"]["configuration"]["secrets"];
    assert_eq!(pins["SHARED"]["source"], "environment", "{pins}");
    assert!(pins.get("FORGED").is_none(), "{pins}");
    observed(work.path(), &format!("|{shared1}|{env_own}")).await;

    // The deployment's own secrets: one more, one overriding the environment's. A new revision.
    let secrets = format!("/v1/deployments/{id}/secrets");
    let body = put(&cp, &secrets, json!({ "MY_SECRET": mine1, "OVERRIDDEN": own })).await;
    assert_eq!((version(&body, "MY_SECRET"), body["operations"].as_array().unwrap().len()), (1, 1), "{body}");
    observed(work.path(), &format!("{mine1}|{shared1}|{own}")).await;
    let deployment = get(&cp, &format!("/v1/deployments/{id}")).await;
    assert_eq!(deployment["revision"], 2);
    assert_eq!(deployment["configuration"]["secrets"]["OVERRIDDEN"]["source"], "deployment");

    // The same set again changes nothing: no new version, no rollout.
    let body = put(&cp, &secrets, json!({ "MY_SECRET": mine1, "OVERRIDDEN": own })).await;
    assert_eq!((version(&body, "MY_SECRET"), body["operations"].clone()), (1, json!([])));
    assert_eq!(get(&cp, &format!("/v1/deployments/{id}")).await["revision"], 2);

    // A new value: version 2, the replica is replaced and sees it.
    let pid = |status: &Value| status["replicas"][0]["pid"].as_u64();
    let before = pid(&get(&cp, &format!("/v1/deployments/{id}/status")).await);
    let body = put(&cp, &secrets, json!({ "MY_SECRET": mine2, "OVERRIDDEN": own })).await;
    assert_eq!(version(&body, "MY_SECRET"), 2);
    observed(work.path(), &format!("{mine2}|{shared1}|{own}")).await;
    let op = body["operations"][0]["href"].as_str().unwrap().to_string();
    eventually("the rollout succeeded", DEADLINE, || async {
        (get(&cp, &op).await["status"] == "succeeded").then_some(())
    })
    .await;
    assert_ne!(pid(&get(&cp, &format!("/v1/deployments/{id}/status")).await), before);

    // A change of the environment's secret rolls out to its deployments.
    let body =
        put(&cp, "/v1/environments/development/secrets", json!({ "SHARED": shared2, "OVERRIDDEN": env_own })).await;
    assert_eq!(body["operations"][0]["deploymentId"], id.as_str(), "{body}");
    observed(work.path(), &format!("{mine2}|{shared2}|{own}")).await;
    let env = get(&cp, "/v1/environments/development").await;
    let listed: Vec<&str> =
        env["configuration"]["secrets"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["OVERRIDDEN", "SHARED"]);
    assert_eq!(env["configuration"]["secrets"][1]["type"], "ferry");

    // A restarted agent stored no secret; it gets them again from the control plane.
    let intent = std::fs::read_to_string(agent.state_dir.join("intent.json")).unwrap();
    assert!(intent.contains(&id) && intent.contains("withheld"), "{intent}");
    std::fs::remove_file(work.path().join("out")).unwrap();
    agent = agent.restart().await;
    observed(work.path(), &format!("{mine2}|{shared2}|{own}")).await;

    // No API answer shows a value.
    let mut answers = Vec::new();
    for path in [
        format!("/v1/deployments/{id}"),
        format!("/v1/deployments/{id}/status"),
        secrets.clone(),
        "/v1/deployments".to_string(),
        "/v1/environments".to_string(),
        "/v1/environments/development".to_string(),
        "/v1/environments/development/secrets".to_string(),
        format!("/v1/logs/deployments/{id}"),
        op.clone(),
    ] {
        answers.push(get(&cp, &path).await.to_string());
    }
    answers.push(created.to_string());
    for value in values {
        assert!(answers.iter().all(|a| !a.contains(value.as_str())), "{value} in an answer: {answers:?}");
    }
    let audit: Vec<String> = cp.running_store().audit_for(&id).await.unwrap().into_iter().map(|(a, _, _)| a).collect();
    assert!(audit.iter().any(|a| a == "deployment.secrets.update"), "{audit:?}");

    // No file holds a value: not the agent's state (nor its run dir), not the control plane's
    // data dir (the database and its WAL included), while running and, for the control plane,
    // after it stopped (the WAL checkpointed into the database).
    let leaks = |dir: &Path, when: &str| {
        for value in values {
            let found = files_containing(dir, value);
            assert!(found.is_empty(), "{when}: {value} in {found:?}");
        }
    };
    assert!(cp.data_dir.join("ferry.db-wal").exists() && cp.data_dir.join("master.key").exists());
    assert_eq!(files_containing(work.path(), &mine2), [work.path().join("out")], "the search finds what is there");
    leaks(&agent.state_dir, "running");
    leaks(&cp.data_dir, "running");
    agent.stop().await;
    let mut cp = cp;
    cp.stop().await;
    leaks(&cp.data_dir, "stopped");

    // No log line either, though the capture saw the whole story.
    let text = logs.text();
    assert!(text.contains("intent accepted") && text.contains("request"), "the capture works");
    for value in values {
        assert!(!text.contains(value.as_str()), "{value} was logged");
    }
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    captured_logs();
    let cp = ControlPlane::spawn().await;
    let work = tempfile::tempdir().unwrap();
    let (status, created) = cp.api(Method::POST, "/v1/deployments", Some(writer("victim", work.path()))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["deployment"]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/deployments/{id}/secrets");
    put(&cp, &path, json!({ "KEEP": "kept" })).await;
    let before = (get(&cp, &path).await, get(&cp, &format!("/v1/deployments/{id}")).await["revision"].clone());

    let many: serde_json::Map<String, Value> = (0..101).map(|i| (format!("S{i}"), json!("v"))).collect();
    for (body, field) in [
        (json!({ "secrets": { "1BAD": "v" } }), "secrets"),
        (json!({ "secrets": { "A-B": "v" } }), "secrets"),
        (json!({ "secrets": { "N".repeat(129): "v" } }), "secrets"),
        (json!({ "secrets": { "PORT": "v" } }), "secrets.PORT"),
        (json!({ "secrets": { "BIG": "x".repeat(64 * 1024 + 1) } }), "secrets.BIG"),
        (json!({ "secrets": { "NUL": "a\u{0000}b" } }), "secrets.NUL"),
        (json!({ "secrets": { "GONE": null } }), "secrets.GONE"),
        (json!({ "secrets": { "NUM": 5 } }), "secrets.NUM"),
        (json!({ "secrets": Value::Object(many) }), "secrets"),
        (json!({ "secrets": { "A": "v" }, "extra": 1 }), "extra"),
        (json!({ "values": {} }), "values"),
    ] {
        for target in [path.as_str(), "/v1/environments/development/secrets"] {
            let (status, res) = cp.api(Method::PUT, target, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{target} {body}: {res}");
            assert_eq!(res["error"]["code"], "VALIDATION_001", "{res}");
            assert_eq!(res["error"]["details"]["field"], field, "{res}");
        }
    }
    let (status, res) = cp.api(Method::PUT, &path, None).await;
    assert_eq!((status, res["error"]["code"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("VALIDATION_004")));

    // Unknown deployment or environment: 404, for reads and writes.
    for (method, target, code) in [
        (Method::GET, "/v1/deployments/deploy-nope/secrets", "DEPLOY_006"),
        (Method::PUT, "/v1/deployments/deploy-nope/secrets", "DEPLOY_006"),
        (Method::GET, "/v1/environments/nope/secrets", "ENV_001"),
        (Method::PUT, "/v1/environments/nope/secrets", "ENV_001"),
    ] {
        let body = (method == Method::PUT).then(|| json!({ "secrets": { "A": "v" } }));
        let (status, res) = cp.api(method, target, body).await;
        assert_eq!((status, res["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some(code)), "{target}: {res}");
    }

    // A locked environment: neither its secrets nor its deployments' can change (reads work).
    let (status, res) = cp.api(Method::POST, "/v1/environments", Some(json!({ "name": "frozen" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let (status, res) = cp
        .api(
            Method::POST,
            "/v1/deployments",
            Some(json!({ "deploymentName": "frozen", "environment": "frozen",
                         "configuration": { "replicas": 0, "command": "true" } })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let frozen_id = res["deployment"]["id"].as_str().unwrap().to_string();
    let (status, res) =
        cp.api(Method::POST, "/v1/environments/frozen/lock", Some(json!({ "reason": "change freeze" }))).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let frozen_path = format!("/v1/deployments/{frozen_id}/secrets");
    for target in [frozen_path.as_str(), "/v1/environments/frozen/secrets"] {
        let (status, res) = cp.api(Method::PUT, target, Some(json!({ "secrets": { "A": "v" } }))).await;
        assert_eq!((status, res["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("ENV_002")), "{res}");
        assert_eq!(get(&cp, target).await, json!({ "secrets": {} }));
    }

    // Nothing changed.
    let after = (get(&cp, &path).await, get(&cp, &format!("/v1/deployments/{id}")).await["revision"].clone());
    assert_eq!(after, before);
    assert_eq!(get(&cp, "/v1/environments/development/secrets").await, json!({ "secrets": {} }));
}
