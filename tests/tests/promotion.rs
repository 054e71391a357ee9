//! Promotion along the environments' chain, end to end with real processes: `web` gets versions
//! in development (deployed and rolled back, each replica greeting with its version's value),
//! its active version is promoted to staging (created there with exactly that configuration,
//! running with staging's variables), again (the same version reused), into a locked environment
//! (refused like a direct deploy), into production (waits for approval like a direct deploy
//! there), and past production (`ENV_009`, nothing changes); an environment promotion reports
//! each item on its own (207 when some fail).

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `hello-web` greeting with `$GREETING@$TIER` (`none` without `TIER`, which only environments
/// set here): what each replica answers tells the version's value and the environment's.
fn greeter(greeting: &str) -> Value {
    let script = format!("GREETING=\"$GREETING@${{TIER:-none}}\" exec {}", bin_path("hello-web").display());
    json!({
        "command": "/bin/sh",
        "args": ["-c", script],
        "env": { "GREETING": greeting },
        "stopGracePeriodSeconds": 2,
        "minReadySeconds": 1,
        "healthChecks": {
            "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
        }
    })
}

async fn call(cp: &ControlPlane, method: Method, path: &str, body: Option<Value>, want: StatusCode) -> Value {
    let (status, res) = cp.api(method.clone(), path, body).await;
    assert_eq!(status, want, "{method} {path}: {res}");
    res
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    call(cp, Method::GET, path, None, StatusCode::OK).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn op_ends(cp: &ControlPlane, href: &str, want: &str) -> Value {
    eventually(&format!("operation {href} {want}"), DEADLINE, || async {
        let v = get(cp, href).await;
        assert_ne!(v["status"], "failed", "{v}");
        (v["status"] == want).then_some(v)
    })
    .await
}

/// Waits until the deployment's one replica is ready and answers `want` on `/`.
async fn serves(cp: &ControlPlane, id: &str, want: &str) {
    eventually(&format!("{id} serves {want:?}"), DEADLINE, || async {
        let st = get(cp, &format!("/v1/deployments/{id}/status")).await;
        let replicas = st["replicas"].as_array().cloned().unwrap_or_default();
        if st["status"] != "running" || replicas.len() != 1 || replicas[0]["ready"] != true {
            return None;
        }
        let port = replicas[0]["port"].as_u64()?;
        let body = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?.text().await.ok()?;
        (body == format!("{want} (replica 0)\n")).then_some(())
    })
    .await;
}

/// The deployment named `name` in `environment`, if there is one.
async fn named(cp: &ControlPlane, environment: &str, name: &str) -> Option<Value> {
    let page = get(cp, &format!("/v1/deployments?environment={environment}&name={name}")).await;
    page["data"].as_array().unwrap().first().cloned()
}

#[tokio::test]
async fn a_version_moves_along_the_chain_as_a_direct_deploy_would() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;

    // web in development: v1 ("one"), then v2 ("two") deployed, then rolled back to v1.
    let mut config = greeter("one");
    config["replicas"] = json!(1);
    let body = json!({ "deploymentName": "web", "environment": "development", "configuration": config });
    let created = call(&cp, Method::POST, "/v1/deployments", Some(body), StatusCode::ACCEPTED).await;
    let dev = created["deployment"]["id"].as_str().unwrap().to_string();
    op_ends(&cp, created["operation"]["href"].as_str().unwrap(), "succeeded").await;
    serves(&cp, &dev, "one@none").await;
    let base = format!("/v1/deployments/{dev}");
    let v2 = json!({ "version": "v2", "configuration": greeter("two") });
    call(&cp, Method::POST, &format!("{base}/versions"), Some(v2), StatusCode::CREATED).await;
    call(&cp, Method::POST, &format!("{base}/versions/v2/deploy"), None, StatusCode::ACCEPTED).await;
    serves(&cp, &dev, "two@none").await;
    call(&cp, Method::POST, &format!("{base}/rollback"), None, StatusCode::ACCEPTED).await;
    serves(&cp, &dev, "one@none").await;
    assert_eq!(get(&cp, &base).await["activeVersion"], "v1");

    // Staging's variables, then the promotion: staging gets web, created with exactly v1.
    let vars = json!({ "variables": { "TIER": "staging" } });
    call(&cp, Method::PUT, "/v1/environments/staging/variables", Some(vars), StatusCode::OK).await;
    let promoted = call(&cp, Method::POST, &format!("{base}/promote"), None, StatusCode::ACCEPTED).await;
    let p = &promoted["promotion"];
    assert_eq!(
        (p["sourceDeploymentId"].as_str(), p["version"].as_str(), p["created"].as_bool()),
        (Some(dev.as_str()), Some("v1"), Some(true)),
        "{promoted}"
    );
    assert_eq!(
        (p["sourceEnvironment"].as_str(), p["targetEnvironment"].as_str()),
        (Some("development"), Some("staging"))
    );
    assert_eq!(promoted["operation"]["type"], "promote");
    let stg = promoted["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(p["targetDeploymentId"], stg.as_str());
    let d = &promoted["deployment"];
    assert_eq!(
        (d["deploymentName"].as_str(), d["environment"].as_str(), d["activeVersion"].as_str()),
        (Some("web"), Some("staging"), Some("v1"))
    );
    assert_eq!(d["configuration"]["environmentVariables"], json!({ "TIER": "staging" }));
    op_ends(&cp, promoted["operation"]["href"].as_str().unwrap(), "succeeded").await;
    serves(&cp, &stg, "one@staging").await;
    let source_v1 = get(&cp, &format!("{base}/versions/v1")).await;
    let target_v1 = get(&cp, &format!("/v1/deployments/{stg}/versions/v1")).await;
    assert_eq!(target_v1["configuration"], source_v1["configuration"], "the exact frozen configuration");
    // Audited as a promotion, naming where from and where to.
    let audit = get(&cp, &format!("/v1/deployments/{stg}/audit")).await;
    let record = audit["data"].as_array().unwrap().iter().find(|r| r["action"] == "deployment.promote").cloned();
    let record = record.unwrap_or_else(|| panic!("no deployment.promote record: {audit}"));
    assert_eq!(
        record["details"]["promotion"],
        json!({ "sourceDeploymentId": dev, "sourceEnvironment": "development", "targetEnvironment": "staging",
                "version": "v1" }),
        "{record}"
    );

    // Again: the same version is reused, nothing is duplicated.
    let again = call(&cp, Method::POST, &format!("{base}/promote"), Some(json!({})), StatusCode::ACCEPTED).await;
    assert_eq!(
        (again["promotion"]["created"].as_bool(), again["deployment"]["id"].as_str()),
        (Some(false), Some(stg.as_str()))
    );
    op_ends(&cp, again["operation"]["href"].as_str().unwrap(), "succeeded").await;
    let versions = get(&cp, &format!("/v1/deployments/{stg}/versions")).await;
    assert_eq!(versions["pagination"]["totalCount"], 1, "{versions}");
    assert_eq!(get(&cp, "/v1/deployments?environment=staging").await["pagination"]["totalCount"], 1);

    // Another existing version by name; an unknown one, a wrong target, bad input.
    let v2 =
        call(&cp, Method::POST, &format!("{base}/promote"), Some(json!({ "version": "v2" })), StatusCode::ACCEPTED)
            .await;
    assert_eq!(v2["deployment"]["activeVersion"], "v2");
    serves(&cp, &stg, "two@staging").await;
    let e =
        call(&cp, Method::POST, &format!("{base}/promote"), Some(json!({ "version": "v9" })), StatusCode::NOT_FOUND)
            .await;
    assert_eq!((code(&e), e["error"]["details"]["version"].as_str()), ("DEPLOY_002", Some("v9")), "{e}");
    let e = call(
        &cp,
        Method::POST,
        &format!("{base}/promote"),
        Some(json!({ "targetEnvironment": "production" })),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!((code(&e), e["error"]["details"]["promotesTo"].as_str()), ("ENV_009", Some("staging")), "{e}");
    let e = call(&cp, Method::POST, &format!("{base}/promote"), Some(json!({ "colour": 1 })), StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(code(&e), "VALIDATION_001", "{e}");
    let e = call(&cp, Method::POST, "/v1/deployments/deploy-nope/promote", None, StatusCode::NOT_FOUND).await;
    assert_eq!(code(&e), "DEPLOY_006", "{e}");
    // A same-named version with another configuration in the target is refused.
    let v3 = json!({ "version": "v3", "configuration": greeter("three") });
    call(&cp, Method::POST, &format!("{base}/versions"), Some(v3), StatusCode::CREATED).await;
    let other = json!({ "version": "v3", "configuration": greeter("not three") });
    call(&cp, Method::POST, &format!("/v1/deployments/{stg}/versions"), Some(other), StatusCode::CREATED).await;
    let e = call(&cp, Method::POST, &format!("{base}/promote"), Some(json!({ "version": "v3" })), StatusCode::CONFLICT)
        .await;
    assert_eq!(code(&e), "DEPLOY_010", "{e}");
    assert_eq!(get(&cp, &format!("/v1/deployments/{stg}")).await["activeVersion"], "v2");

    // A locked environment refuses a promotion as it refuses a direct deploy; nothing changes.
    let lock = json!({ "reason": "release freeze" });
    call(&cp, Method::POST, "/v1/environments/staging/lock", Some(lock), StatusCode::OK).await;
    let before = get(&cp, &format!("/v1/deployments/{stg}")).await;
    let e = call(&cp, Method::POST, &format!("{base}/promote"), None, StatusCode::CONFLICT).await;
    assert_eq!(code(&e), "ENV_002", "{e}");
    let direct =
        call(&cp, Method::POST, &format!("/v1/deployments/{stg}/versions/v1/deploy"), None, StatusCode::CONFLICT).await;
    assert_eq!(code(&direct), "ENV_002");
    let after = get(&cp, &format!("/v1/deployments/{stg}")).await;
    assert_eq!(
        (after["resourceVersion"].clone(), after["activeVersion"].clone()),
        (before["resourceVersion"].clone(), json!("v2"))
    );
    call(&cp, Method::POST, "/v1/environments/staging/unlock", None, StatusCode::OK).await;

    // Into production: it needs approval there, so the promotion waits like a direct create
    // would; a second person approves and it runs.
    let stg_base = format!("/v1/deployments/{stg}");
    let waiting = call(&cp, Method::POST, &format!("{stg_base}/promote"), None, StatusCode::ACCEPTED).await;
    assert_eq!(waiting["operation"]["status"], "awaiting_approval", "{waiting}");
    assert_eq!((waiting["deployment"].clone(), waiting["promotion"]["created"].clone()), (Value::Null, json!(true)));
    assert!(named(&cp, "production", "web").await.is_none(), "nothing runs before the approval");
    let approver = cp.login_as("approver", json!(["deployment_admin"])).await;
    let approve = format!("/v1/approvals/{}/approve", waiting["approval"]["id"].as_str().unwrap());
    let (status, res) = cp.request(Method::POST, &approve, None, Some(&approver)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    op_ends(&cp, waiting["operation"]["href"].as_str().unwrap(), "succeeded").await;
    let prod = named(&cp, "production", "web").await.expect("web runs in production");
    assert_eq!(prod["activeVersion"], "v2");
    let prod_id = prod["id"].as_str().unwrap().to_string();
    serves(&cp, &prod_id, "two@none").await;

    // Past production, the end of the chain: a precise 409, and nothing changes.
    let count = get(&cp, "/v1/deployments").await["pagination"]["totalCount"].clone();
    let e = call(&cp, Method::POST, &format!("/v1/deployments/{prod_id}/promote"), None, StatusCode::CONFLICT).await;
    assert_eq!(code(&e), "ENV_009", "{e}");
    assert_eq!(
        (e["error"]["details"]["environment"].as_str(), e["error"]["details"]["promotesTo"].clone()),
        (Some("production"), Value::Null)
    );
    assert_eq!(e["error"]["documentation"], "docs/errors.md#env_009");
    assert!(e["error"]["requestId"].is_string());
    assert_eq!(get(&cp, "/v1/deployments").await["pagination"]["totalCount"], count);
    assert_eq!(get(&cp, &format!("/v1/deployments/{prod_id}")).await["resourceVersion"], prod["resourceVersion"]);
    agent.stop().await;
}

#[tokio::test]
async fn an_environment_promotion_reports_each_item() {
    let cp = ControlPlane::spawn().await;
    // No agent: promotions are about desired state; nothing here needs a process.
    let mut ids = Vec::new();
    for name in ["api", "worker"] {
        let mut config = greeter(name);
        config["replicas"] = json!(1);
        let body = json!({ "deploymentName": name, "environment": "development", "configuration": config });
        let created = call(&cp, Method::POST, "/v1/deployments", Some(body), StatusCode::ACCEPTED).await;
        ids.push(created["deployment"]["id"].as_str().unwrap().to_string());
    }

    // One good (by name), one unknown: 207 with each item's outcome; the good one is promoted.
    let body = json!({ "deployments": ["api", "nope"] });
    let res = call(&cp, Method::POST, "/v1/environments/staging/promote", Some(body), StatusCode::MULTI_STATUS).await;
    assert_eq!((res["environment"].as_str(), res["from"].as_str()), (Some("staging"), Some("development")), "{res}");
    assert_eq!(res["summary"], json!({ "requested": 2, "promoted": 1, "failed": 1 }));
    let items = res["items"].as_array().unwrap();
    assert_eq!((items[0]["deployment"].as_str(), items[0]["status"].as_str()), (Some("api"), Some("promoted")));
    assert_eq!(items[0]["operation"]["type"], "promote");
    assert_eq!(items[0]["promotion"]["sourceDeploymentId"], ids[0].as_str());
    assert_eq!((items[1]["deployment"].as_str(), items[1]["status"].as_str()), (Some("nope"), Some("failed")));
    assert_eq!(items[1]["error"]["code"], "DEPLOY_006", "{res}");
    assert!(items[1]["error"]["message"].as_str().unwrap().contains("development"));
    let api = named(&cp, "staging", "api").await.expect("api promoted");
    assert_eq!(api["activeVersion"], "v1");
    assert!(named(&cp, "staging", "worker").await.is_none());

    // All of them (by id here): every item accepted is a 202; api's promotion reuses its version.
    let body = json!({ "deployments": [ids[0], ids[1]], "from": "development" });
    let res = call(&cp, Method::POST, "/v1/environments/staging/promote", Some(body), StatusCode::ACCEPTED).await;
    assert_eq!(res["summary"], json!({ "requested": 2, "promoted": 2, "failed": 0 }), "{res}");
    let created: Vec<bool> =
        res["items"].as_array().unwrap().iter().map(|i| i["promotion"]["created"].as_bool().unwrap()).collect();
    assert_eq!(created, [false, true]);
    let res =
        call(&cp, Method::POST, "/v1/environments/staging/promote", Some(json!({ "all": true })), StatusCode::ACCEPTED)
            .await;
    assert_eq!(res["summary"]["promoted"], 2, "{res}");
    assert_eq!(get(&cp, "/v1/deployments?environment=staging").await["pagination"]["totalCount"], 2);

    // Bad requests are 400s and promote nothing.
    let too_many: Vec<String> = (0..101).map(|i| format!("d{i}")).collect();
    for body in [
        json!({ "deployments": [] }),
        json!({ "deployments": too_many }),
        json!({ "deployments": ["api"], "all": true }),
        json!({}),
        json!({ "deployments": ["api", "api"] }),
        json!({ "deployments": "api" }),
    ] {
        let e =
            call(&cp, Method::POST, "/v1/environments/staging/promote", Some(body.clone()), StatusCode::BAD_REQUEST)
                .await;
        assert_eq!(code(&e), "VALIDATION_001", "{body}: {e}");
    }
    // A chain that does not lead there: nothing promotes to development; production is not
    // before staging; an unknown environment.
    let e = call(
        &cp,
        Method::POST,
        "/v1/environments/development/promote",
        Some(json!({ "all": true })),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(code(&e), "ENV_009", "{e}");
    let body = json!({ "all": true, "from": "production" });
    let e = call(&cp, Method::POST, "/v1/environments/staging/promote", Some(body), StatusCode::CONFLICT).await;
    assert_eq!((code(&e), e["error"]["details"]["promotedFrom"].clone()), ("ENV_009", json!(["development"])), "{e}");
    let e = call(
        &cp,
        Method::POST,
        "/v1/environments/nowhere/promote",
        Some(json!({ "all": true })),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(code(&e), "ENV_001", "{e}");
    // A staging deployment named by id is not in development.
    let stg_api = named(&cp, "staging", "api").await.unwrap()["id"].as_str().unwrap().to_string();
    let body = json!({ "deployments": [stg_api] });
    let res = call(&cp, Method::POST, "/v1/environments/staging/promote", Some(body), StatusCode::MULTI_STATUS).await;
    assert_eq!(res["items"][0]["error"]["code"], "ENV_009", "{res}");

    // Permission: `deployment:promote` in the target environment. A viewer reads both
    // environments but may promote nothing: its item is refused (and audited as denied); a
    // developer reads the source but may not promote into staging.
    let viewer = cp.login_as("viewer", json!(["viewer"])).await;
    let before = named(&cp, "staging", "worker").await.unwrap()["resourceVersion"].clone();
    let body = json!({ "deployments": ["worker"] });
    let (status, res) = cp.request(Method::POST, "/v1/environments/staging/promote", Some(body), Some(&viewer)).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{res}");
    assert_eq!(res["items"][0]["error"]["code"], "AUTH_002", "{res}");
    let denied = get(&cp, "/v1/audit?outcome=denied&actor=user:viewer").await;
    assert_eq!(denied["data"][0]["object"], ids[1].as_str(), "{denied}");
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let (status, res) =
        cp.request(Method::POST, &format!("/v1/deployments/{}/promote", ids[1]), None, Some(&dev)).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    assert_eq!(named(&cp, "staging", "worker").await.unwrap()["resourceVersion"], before);
}
