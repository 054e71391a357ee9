//! The audit trail end to end: every change of a deployment is recorded with its request id,
//! source address and a before/after of what changed; its history lists revisions with who made
//! them; its events are the status transitions an agent's reports cause; its timeline merges
//! both in time order. Bad queries get a precise 400 and nothing can change a record.

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Calls the API as the admin with an `X-Request-Id`; asserts it comes back.
async fn call(
    cp: &ControlPlane,
    method: Method,
    path: &str,
    body: Option<Value>,
    request_id: &str,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("x-request-id", request_id);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("HTTP request");
    assert_eq!(res.headers()["x-request-id"], request_id);
    let status = res.status();
    let bytes = res.bytes().await.expect("body");
    (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") })
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    let (status, body) = cp.api(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn web(name: &str, command: &str, replicas: u32) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "activeVersion": "v1",
        "configuration": {
            "replicas": replicas,
            "command": command,
            "env": { "GREETING": "hi", "API_TOKEN": "plain-config" },
            "stopGracePeriodSeconds": 2,
            "healthChecks": { "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1 } }
        }
    })
}

fn field<'a>(items: &'a [Value], key: &str) -> Vec<&'a str> {
    items.iter().map(|i| i[key].as_str().unwrap_or("")).collect()
}

#[tokio::test]
async fn every_change_is_audited_in_order_with_request_ids_and_what_changed() {
    let cp = ControlPlane::spawn().await;
    let (status, body) =
        call(&cp, Method::POST, "/v1/deployments", Some(web("audited", "/bin/true", 1)), "req-create").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let (status, body) =
        call(&cp, Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 3 })), "req-scale")
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let update = json!({ "activeVersion": "v2" });
    let (status, body) = call(&cp, Method::PUT, &format!("/v1/deployments/{id}"), Some(update), "req-update").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = call(&cp, Method::POST, &format!("/v1/deployments/{id}/stop"), None, "req-stop").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = call(&cp, Method::DELETE, &format!("/v1/deployments/{id}"), None, "req-delete").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // The whole trail, filtered to this deployment, oldest first.
    let trail = get(&cp, &format!("/v1/audit?object={id}&order=asc")).await;
    let records = trail["data"].as_array().unwrap();
    assert_eq!(
        field(records, "action"),
        ["deployment.create", "deployment.scale", "deployment.update", "deployment.stop", "deployment.delete"]
    );
    assert_eq!(field(records, "requestId"), ["req-create", "req-scale", "req-update", "req-stop", "req-delete"]);
    assert_eq!(trail["pagination"], json!({ "page": 1, "pageSize": 20, "totalCount": 5, "hasNext": false }));
    for r in records {
        assert_eq!((r["objectType"].as_str(), r["object"].as_str()), (Some("deployment"), Some(id.as_str())), "{r}");
        assert_eq!((r["outcome"].as_str(), r["source"].as_str()), (Some("success"), Some("127.0.0.1")), "{r}");
        assert!(r["actor"].as_str().unwrap().starts_with("admin:"), "{r}");
        assert!(r["id"].as_str().is_some() && r["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
    }
    // What changed, before and after.
    assert_eq!(records[1]["changes"], json!({ "before": { "replicas": 1 }, "after": { "replicas": 3 } }));
    assert_eq!(
        records[2]["changes"],
        json!({ "before": { "activeVersion": "v1", "revision": 1 }, "after": { "activeVersion": "v2", "revision": 2 } })
    );
    assert_eq!(
        records[3]["changes"],
        json!({ "before": { "desiredState": "running" }, "after": { "desiredState": "stopped" } })
    );
    let created = &records[0]["changes"];
    assert_eq!((created["before"].clone(), created["after"]["replicas"].clone()), (Value::Null, json!(1)));
    assert_eq!(created["after"]["configuration"]["env"]["API_TOKEN"], "plain-config", "env values are not secrets");
    assert_eq!(records[4]["changes"]["after"], Value::Null);
    assert_eq!(records[4]["changes"]["before"]["activeVersion"], "v2");

    // Newest first by default, paged.
    let newest = get(&cp, &format!("/v1/audit?object={id}&pageSize=2")).await;
    assert_eq!(field(newest["data"].as_array().unwrap(), "requestId"), ["req-delete", "req-stop"]);
    assert_eq!(newest["pagination"]["hasNext"], true);
    let filtered = get(&cp, &format!("/v1/audit?object={id}&action=deployment.scale&outcome=success")).await;
    assert_eq!(field(filtered["data"].as_array().unwrap(), "requestId"), ["req-scale"]);
    let later = get(&cp, "/v1/audit?from=2999-01-01T00:00:00Z").await;
    assert_eq!(later["pagination"]["totalCount"], 0);

    // The deployment's own trail outlives it.
    let own = get(&cp, &format!("/v1/deployments/{id}/audit?order=asc")).await;
    assert_eq!(own["data"], trail["data"]);
    // Its history: the revisions, newest first, each with who made it and under which request.
    let history = get(&cp, &format!("/v1/deployments/{id}/history")).await;
    let revisions = history["data"].as_array().unwrap();
    assert_eq!(history["pagination"]["totalCount"], 2);
    assert_eq!(
        revisions.iter().map(|r| (r["revision"].as_i64().unwrap(), r["version"].as_str().unwrap())).collect::<Vec<_>>(),
        [(2, "v2"), (1, "v1")]
    );
    assert_eq!(field(revisions, "requestId"), ["req-update", "req-create"]);
    assert_eq!(field(revisions, "action"), ["deployment.update", "deployment.create"]);
    assert_eq!((revisions[0]["current"].as_bool(), revisions[1]["current"].as_bool()), (Some(true), Some(false)));
    assert!(revisions.iter().all(|r| r["createdBy"].as_str().unwrap().starts_with("admin:")));
    assert_eq!(revisions[1]["configuration"]["command"], "/bin/true");

    // An environment's creation shows what it was created as.
    let (status, body) =
        call(&cp, Method::POST, "/v1/environments", Some(json!({ "name": "qa", "description": "QA" })), "req-env")
            .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let envs = get(&cp, "/v1/audit?objectType=environment").await;
    let e = &envs["data"][0];
    assert_eq!((e["action"].as_str(), e["requestId"].as_str()), (Some("environment.create"), Some("req-env")));
    assert_eq!(e["changes"], json!({ "before": null, "after": { "name": "qa", "type": "qa", "description": "QA" } }));

    // Unknown deployments are 404 on every view; nothing changes a record.
    for view in ["audit", "history", "events", "timeline"] {
        let (status, body) = cp.api(Method::GET, &format!("/v1/deployments/deploy-none/{view}"), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("DEPLOY_006")), "{view}");
    }
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let (status, body) = cp.api(method.clone(), "/v1/audit", Some(json!({}))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("ROUTE_002")),
            "{method}"
        );
        let (status, _) = cp.api(method.clone(), &format!("/v1/deployments/{id}/audit"), Some(json!({}))).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    assert_eq!(get(&cp, &format!("/v1/audit?object={id}&order=asc")).await["data"], trail["data"]);
}

#[tokio::test]
async fn bad_audit_queries_are_refused_precisely() {
    let cp = ControlPlane::spawn().await;
    for (query, field_name) in [
        ("from=yesterday", Some("from")),
        ("to=2024-02-15", Some("to")),
        ("from=2024-02-16T00:00:00Z&to=2024-02-15T00:00:00Z", Some("from")),
        ("outcome=maybe", Some("outcome")),
        ("pageSize=0", Some("pageSize")),
        ("pageSize=201", Some("pageSize")),
        ("page=0", Some("page")),
        ("order=sideways", Some("order")),
        ("actor=", Some("actor")),
        ("pageSize=ten", None),
        ("target=x", None),
        ("unknown=1", None),
    ] {
        let (status, body) = cp.api(Method::GET, &format!("/v1/audit?{query}"), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_001")),
            "{query}: {body}"
        );
        if let Some(f) = field_name {
            assert_eq!(body["error"]["details"]["field"], f, "{query}: {body}");
        }
    }
    let (_, body) = cp.api(Method::POST, "/v1/deployments", Some(web("q", "/bin/true", 0))).await;
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    for view in ["audit", "history", "events", "timeline"] {
        for query in ["pageSize=500", "status=running", "order=new", "page=-1"] {
            let (status, body) = cp.api(Method::GET, &format!("/v1/deployments/{id}/{view}?{query}"), None).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("VALIDATION_001")),
                "{view}?{query}: {body}"
            );
        }
    }
    // Reading the trail needs credentials like everything else.
    let (status, _) = cp.request(Method::GET, "/v1/audit", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn events_and_the_timeline_follow_what_a_real_agent_reports() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let hello = bin_path("hello-web");
    let (status, body) =
        call(&cp, Method::POST, "/v1/deployments", Some(web("evented", hello.to_str().unwrap(), 1)), "req-create")
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();

    // The agent runs it: a transition to running appears among the events.
    let events = eventually("an event to running", DEADLINE, || async {
        let v = get(&cp, &format!("/v1/deployments/{id}/events?order=asc")).await;
        let data = v["data"].as_array().unwrap().clone();
        data.iter().any(|e| e["to"] == "running").then_some(data)
    })
    .await;
    assert_eq!(events[0]["from"], Value::Null, "the first status has no predecessor");
    for pair in events.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "transitions chain: {events:?}");
        assert_ne!(pair[1]["from"], pair[1]["to"], "only transitions are events");
    }
    let running = events.iter().find(|e| e["to"] == "running").unwrap();
    assert_eq!(
        (running["type"].as_str(), running["message"].as_str()),
        (Some("status_changed"), Some("1 of 1 replicas ready"))
    );

    // Stop it: the change and the transition it causes both appear, in time order.
    let (status, body) = call(&cp, Method::POST, &format!("/v1/deployments/{id}/stop"), None, "req-stop").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let timeline = eventually("a transition to stopped on the timeline", DEADLINE, || async {
        let v = get(&cp, &format!("/v1/deployments/{id}/timeline?order=asc&pageSize=200")).await;
        let data = v["data"].as_array().unwrap().clone();
        data.iter()
            .any(|i| i["type"] == "event" && i["event"]["to"] == "stopped")
            .then_some((data, v["pagination"].clone()))
    })
    .await;
    let (items, pagination) = timeline;
    assert_eq!(pagination["totalCount"].as_u64(), Some(items.len() as u64));
    let at: Vec<&str> = items.iter().map(|i| i["at"].as_str().unwrap()).collect();
    let parsed: Vec<time::OffsetDateTime> = at
        .iter()
        .map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap())
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] <= w[1]), "time order: {at:?}");
    let kinds: Vec<String> = items
        .iter()
        .map(|i| match i["type"].as_str().unwrap() {
            "audit" => format!("audit:{}", i["audit"]["requestId"].as_str().unwrap()),
            _ => format!("event:{}", i["event"]["to"].as_str().unwrap()),
        })
        .collect();
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("{k} in {kinds:?}"));
    assert_eq!(pos("audit:req-create"), 0, "{kinds:?}");
    assert!(pos("audit:req-create") < pos("event:running"), "{kinds:?}");
    assert!(pos("event:running") < pos("audit:req-stop"), "{kinds:?}");
    assert!(pos("audit:req-stop") < pos("event:stopped"), "{kinds:?}");
    let events_total = get(&cp, &format!("/v1/deployments/{id}/events")).await["pagination"]["totalCount"].as_u64();
    let audit_total = get(&cp, &format!("/v1/deployments/{id}/audit")).await["pagination"]["totalCount"].as_u64();
    assert_eq!(Some(events_total.unwrap() + audit_total.unwrap()), pagination["totalCount"].as_u64());
    // Newest first by default: the stop's transition leads.
    let newest = get(&cp, &format!("/v1/deployments/{id}/timeline?pageSize=1")).await;
    assert_eq!(newest["data"][0]["event"]["to"], "stopped");
    agent.stop().await;
}
