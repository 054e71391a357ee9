//! Environments in full, end to end with real processes: an environment's variables reach the
//! replicas of its deployments (a deployment's own values win, and a change replaces the
//! replicas), its limits refuse growth with `DEPLOY_004` and change nothing, its status and
//! deployment listing, and the rules of its promotion chain and of deleting it.

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `hello-web` answers `GET /` with `$GREETING (replica N)`.
fn hello(name: &str, environment: &str, replicas: u32, env: Value) -> Value {
    json!({
        "deploymentName": name,
        "environment": environment,
        "target": { "selector": { "role": "web" } },
        "configuration": {
            "replicas": replicas,
            "command": bin_path("hello-web").to_str().unwrap(),
            "env": env,
            "cpu": "250m",
            "memory": "64Mi",
            "stopGracePeriodSeconds": 2,
            "healthChecks": {
                "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
            },
            // Ferry pins these itself: a request cannot set them.
            "environmentVariables": { "GREETING": "forged" }
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

async fn create(cp: &ControlPlane, body: Value) -> Value {
    call(cp, Method::POST, "/v1/deployments", Some(body), StatusCode::ACCEPTED).await
}

/// The one replica's status once it is running and ready at `revision`.
async fn ready(cp: &ControlPlane, id: &str, revision: i64) -> Value {
    eventually(&format!("{id} running at revision {revision}"), DEADLINE, || async {
        let st = get(cp, &format!("/v1/deployments/{id}/status")).await;
        let replicas = st["replicas"].as_array().cloned().unwrap_or_default();
        let ok = st["status"] == "running"
            && st["revision"] == revision
            && replicas.len() == 1
            && replicas[0]["ready"] == true;
        ok.then_some(st)
    })
    .await
}

async fn greeting(st: &Value) -> String {
    let port = st["replicas"][0]["port"].as_u64().expect("a port");
    reqwest::get(format!("http://127.0.0.1:{port}/")).await.unwrap().text().await.unwrap()
}

/// Waits until the replica answers `want` (replicas are replaced one by one).
async fn serves(cp: &ControlPlane, id: &str, revision: i64, want: &str) -> Value {
    eventually(&format!("{id} serves {want:?}"), DEADLINE, || async {
        let st = ready(cp, id, revision).await;
        (greeting(&st).await == want).then_some(st)
    })
    .await
}

#[tokio::test]
async fn variables_reach_replicas_and_limits_refuse_growth() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;

    // The environment's variables, set before the deployments exist.
    let vars = json!({ "variables": { "GREETING": "from development", "LOG_LEVEL": "debug" } });
    let body = call(&cp, Method::PUT, "/v1/environments/development/variables", Some(vars), StatusCode::OK).await;
    assert_eq!(body["operations"], json!([]), "nothing to roll out yet: {body}");
    assert_eq!(get(&cp, "/v1/environments/development/variables").await["variables"]["LOG_LEVEL"], "debug");

    // A deployment without its own GREETING runs with the environment's.
    let plain = create(&cp, hello("plain", "development", 1, json!({}))).await;
    let plain_id = plain["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(plain["deployment"]["configuration"]["environmentVariables"]["GREETING"], "from development");
    serves(&cp, &plain_id, 1, "from development (replica 0)\n").await;
    // One with its own value wins over the environment's.
    let own = create(&cp, hello("own", "development", 1, json!({ "GREETING": "my own" }))).await;
    let own_id = own["deployment"]["id"].as_str().unwrap().to_string();
    serves(&cp, &own_id, 1, "my own (replica 0)\n").await;

    // A change of the variables replaces the replicas of every deployment there with a new
    // revision; the deployment's own value still wins.
    let before = ready(&cp, &plain_id, 1).await["replicas"][0]["pid"].clone();
    let vars = json!({ "variables": { "GREETING": "changed", "LOG_LEVEL": "debug" } });
    let body = call(&cp, Method::PUT, "/v1/environments/development/variables", Some(vars), StatusCode::OK).await;
    let mut rolled: Vec<&str> =
        body["operations"].as_array().unwrap().iter().map(|o| o["deploymentId"].as_str().unwrap()).collect();
    rolled.sort_unstable();
    let mut both = vec![plain_id.as_str(), own_id.as_str()];
    both.sort_unstable();
    assert_eq!(rolled, both, "{body}");
    let st = serves(&cp, &plain_id, 2, "changed (replica 0)\n").await;
    assert_ne!(st["replicas"][0]["pid"], before, "the replica was replaced");
    serves(&cp, &own_id, 2, "my own (replica 0)\n").await;
    let d = get(&cp, &format!("/v1/deployments/{plain_id}")).await;
    assert_eq!(d["configuration"]["environmentVariables"]["GREETING"], "changed");
    assert_eq!(d["configuration"]["env"], json!({}));
    // A configuration update keeps the pinned variables (whatever the request says).
    let mut update = hello("plain", "development", 1, json!({ "OTHER": "1" }))["configuration"].clone();
    update["environmentVariables"] = json!({});
    call(
        &cp,
        Method::PUT,
        &format!("/v1/deployments/{plain_id}"),
        Some(json!({ "configuration": update })),
        StatusCode::ACCEPTED,
    )
    .await;
    serves(&cp, &plain_id, 3, "changed (replica 0)\n").await;
    // Reserved names are refused, and nothing changes.
    let bad = json!({ "variables": { "PORT": "1" } });
    let e = call(&cp, Method::PUT, "/v1/environments/development/variables", Some(bad), StatusCode::BAD_REQUEST).await;
    assert_eq!(e["error"]["code"], "VALIDATION_001", "{e}");
    assert_eq!(get(&cp, "/v1/environments/development/variables").await["variables"]["GREETING"], "changed");

    // Limits: 2 running replicas of 250m and 64Mi are allocated; 3 pods at most.
    let limits = json!({ "cpu": "2", "memory": "1Gi", "pods": 3 });
    let set = call(&cp, Method::PUT, "/v1/environments/development/limits", Some(limits), StatusCode::OK).await;
    assert_eq!(set, json!({ "cpu": "2", "memory": "1Gi", "replicas": null, "pods": 3 }));
    let status = get(&cp, "/v1/environments/development/status").await;
    assert_eq!(status["resources"]["allocated"], json!({ "cpu": "500m", "memory": "128Mi", "pods": 2 }), "{status}");
    assert_eq!(status["resources"]["available"], json!({ "cpu": "1500m", "memory": "896Mi", "pods": 1 }));
    assert_eq!(status["deployments"]["total"], 2);
    assert_eq!(status["deployments"]["running"], 2, "{status}");
    assert_eq!(status["deployments"]["failed"], 0);

    // Scaling past `pods` is refused with DEPLOY_004 naming the limit; the deployment is unchanged.
    let before = get(&cp, &format!("/v1/deployments/{plain_id}")).await;
    let path = format!("/v1/deployments/{plain_id}/scale");
    let e = call(&cp, Method::POST, &path, Some(json!({ "replicas": 3 })), StatusCode::CONFLICT).await;
    assert_eq!(e["error"]["code"], "DEPLOY_004", "{e}");
    let details = &e["error"]["details"];
    assert_eq!(
        (details["limit"].clone(), details["available"].clone(), details["requested"].clone()),
        (json!("pods"), json!(1), json!(2))
    );
    let after = get(&cp, &format!("/v1/deployments/{plain_id}")).await;
    assert_eq!(
        (after["resourceVersion"].clone(), after["configuration"]["replicas"].clone()),
        (before["resourceVersion"].clone(), json!(1))
    );
    assert_eq!(get(&cp, "/v1/environments/development/status").await["resources"]["allocated"]["pods"], 2);
    // A create past `cpu` too; within the limits it passes.
    let mut big = hello("big", "development", 1, json!({}));
    big["configuration"]["cpu"] = json!("1600m");
    let e = call(&cp, Method::POST, "/v1/deployments", Some(big), StatusCode::CONFLICT).await;
    assert_eq!(
        (e["error"]["code"].clone(), e["error"]["details"]["limit"].clone()),
        (json!("DEPLOY_004"), json!("cpu"))
    );
    let e = call(&cp, Method::POST, &path, Some(json!({ "replicas": 2 })), StatusCode::ACCEPTED).await;
    assert_eq!(e["deployment"]["configuration"]["replicas"], 2);
    // Garbage quantities are 400s.
    let e = call(
        &cp,
        Method::PUT,
        "/v1/environments/development/limits",
        Some(json!({ "cpu": "lots" })),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["error"]["details"]["field"], "cpu");

    // The environment's deployments, as the deployment listing shows them.
    let page = get(&cp, "/v1/environments/development/deployments?pageSize=1").await;
    assert_eq!(
        (page["data"].as_array().unwrap().len(), page["pagination"]["totalCount"].clone()),
        (1, json!(2)),
        "{page}"
    );
    let env = get(&cp, "/v1/environments/development").await;
    assert_eq!(env["promotesTo"], "staging");
    assert_eq!(env["configuration"]["variables"]["GREETING"], "changed");
    assert_eq!(env["resources"]["limits"]["pods"], 3);
    let config = get(&cp, "/v1/environments/development/config").await;
    assert_eq!(config["limits"]["memory"], "1Gi");
    assert_eq!(config["promotesTo"], "staging");
}

#[tokio::test]
async fn chains_refuse_cycles_and_environments_are_deleted_only_when_empty() {
    let cp = ControlPlane::spawn().await;

    // The default chain, and a cycle or an unknown name refused with ENV_003 (nothing changes).
    for (name, next) in
        [("development", json!("staging")), ("staging", json!("production")), ("production", json!(null))]
    {
        assert_eq!(get(&cp, &format!("/v1/environments/{name}")).await["promotesTo"], next, "{name}");
    }
    let e = call(
        &cp,
        Method::PUT,
        "/v1/environments/production",
        Some(json!({ "promotesTo": "development" })),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["error"]["code"], "ENV_003", "{e}");
    assert_eq!(e["error"]["details"]["cycle"], json!(["production", "development", "staging", "production"]));
    let e = call(
        &cp,
        Method::PUT,
        "/v1/environments/staging",
        Some(json!({ "promotesTo": "nowhere" })),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["error"]["code"], "ENV_003");
    assert_eq!(get(&cp, "/v1/environments/staging").await["promotesTo"], "production");
    let e =
        call(&cp, Method::PUT, "/v1/environments/staging", Some(json!({ "name": "stage" })), StatusCode::BAD_REQUEST)
            .await;
    assert_eq!(e["error"]["details"]["field"], "name");
    // The same through the configuration document.
    let e = call(
        &cp,
        Method::PUT,
        "/v1/environments/production/config",
        Some(json!({ "promotesTo": "production" })),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["error"]["code"], "ENV_003");

    // Permissions: a release manager updates production (environment:* there) but may not
    // change its type (which decides who acts there: policy:update), nor touch staging; a
    // developer may change no environment.
    let rm = cp.login_as("rm", json!(["release_manager"])).await;
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let put = |path: &'static str, body: Value, token: String| {
        let cp = &cp;
        async move { cp.request(Method::PUT, path, Some(body), Some(&token)).await }
    };
    let (status, body) = put("/v1/environments/production", json!({ "description": "Prod" }), rm.clone()).await;
    assert_eq!((status, body["description"].clone()), (StatusCode::OK, json!("Prod")), "{body}");
    let (status, body) = put("/v1/environments/production", json!({ "type": "development" }), rm.clone()).await;
    assert_eq!(
        (status, body["error"]["details"]["missingPermission"].clone()),
        (StatusCode::FORBIDDEN, json!("policy:update")),
        "{body}"
    );
    let (status, _) = put("/v1/environments/staging/limits", json!({ "pods": 1 }), rm.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = put("/v1/environments/development/variables", json!({ "variables": {} }), dev.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = cp.request(Method::DELETE, "/v1/environments/development", None, Some(&dev)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(get(&cp, "/v1/environments/production").await["type"], "production");
    // A locked environment's variables cannot change, nor can it be deleted.
    call(&cp, Method::POST, "/v1/environments/staging/lock", Some(json!({ "reason": "release" })), StatusCode::OK)
        .await;
    let e = call(
        &cp,
        Method::PUT,
        "/v1/environments/staging/variables",
        Some(json!({ "variables": { "A": "1" } })),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(e["error"]["code"], "ENV_002");
    call(&cp, Method::POST, "/v1/environments/staging/unlock", None, StatusCode::OK).await;

    // A new environment, put in the chain between staging and production.
    call(&cp, Method::POST, "/v1/environments", Some(json!({ "name": "qa", "type": "staging" })), StatusCode::CREATED)
        .await;
    let qa = call(
        &cp,
        Method::PUT,
        "/v1/environments/qa",
        Some(json!({ "promotesTo": "production", "description": "QA" })),
        StatusCode::OK,
    )
    .await;
    assert_eq!((qa["promotesTo"].clone(), qa["description"].clone()), (json!("production"), json!("QA")));
    call(&cp, Method::PUT, "/v1/environments/staging", Some(json!({ "promotesTo": "qa" })), StatusCode::OK).await;

    // Refused while it holds a deployment, or while another environment promotes to it.
    let d = create(&cp, hello("web", "qa", 1, json!({}))).await;
    let id = d["deployment"]["id"].as_str().unwrap().to_string();
    let e = call(&cp, Method::DELETE, "/v1/environments/qa", None, StatusCode::CONFLICT).await;
    assert_eq!(
        (e["error"]["code"].clone(), e["error"]["details"]["deployments"].clone()),
        (json!("ENV_007"), json!(1)),
        "{e}"
    );
    call(&cp, Method::DELETE, &format!("/v1/deployments/{id}"), None, StatusCode::ACCEPTED).await;
    let e = call(&cp, Method::DELETE, "/v1/environments/qa", None, StatusCode::CONFLICT).await;
    assert_eq!(
        (e["error"]["code"].clone(), e["error"]["details"]["promotedFrom"].clone()),
        (json!("ENV_008"), json!(["staging"]))
    );
    call(&cp, Method::PUT, "/v1/environments/staging", Some(json!({ "promotesTo": "production" })), StatusCode::OK)
        .await;
    call(&cp, Method::DELETE, "/v1/environments/qa", None, StatusCode::NO_CONTENT).await;
    let e = call(&cp, Method::GET, "/v1/environments/qa", None, StatusCode::NOT_FOUND).await;
    assert_eq!(e["error"]["code"], "ENV_001");
    let e = call(&cp, Method::POST, "/v1/deployments", Some(hello("web", "qa", 1, json!({}))), StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(e["error"]["code"], "ENV_001");
}
