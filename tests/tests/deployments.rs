//! The deployments API and the intent/observed loop, driven by a raw protocol agent so every
//! observed state can be chosen: desired → intent (Assignment with growing generations) →
//! observed (Status) → derived status and operation outcomes. Bad input gets a precise 4xx.

use std::time::Duration;

use ferry_protocol::{AgentMessage, Assignment, Phase, ReplicaStatus, ServerMessage, Status, WorkloadStatus};
use ferry_tests::{ControlPlane, DEADLINE, eventually, raw};
use quinn::{RecvStream, SendStream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn web(name: &str, replicas: u32) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "activeVersion": "v1",
        "configuration": {
            "replicas": replicas,
            "command": "hello-web",
            "healthChecks": { "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1 } }
        }
    })
}

async fn next_assignment(recv: &mut RecvStream) -> Assignment {
    loop {
        match ferry_transport::read_frame_timeout::<ServerMessage>(recv, DEADLINE).await.unwrap() {
            Some(ServerMessage::Assignment(a)) => return a,
            Some(_) => continue,
            None => panic!("control stream closed"),
        }
    }
}

fn replica(index: u32, phase: Phase, ready: bool, reason: Option<&str>) -> ReplicaStatus {
    ReplicaStatus {
        index,
        phase,
        pid: Some(1000 + index),
        port: Some(20_000 + index as u16),
        ready,
        restarts: u32::from(reason.is_some()),
        reason: reason.map(str::to_string),
        since_ms: 0,
    }
}

async fn report(send: &mut SendStream, generation: u64, workloads: Vec<WorkloadStatus>) {
    ferry_transport::write_frame(send, &AgentMessage::Status(Status { generation, workloads })).await.unwrap();
}

async fn wait_status(cp: &ControlPlane, id: &str, want: &str) -> Value {
    eventually(&format!("deployment {id} {want}"), DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, &format!("/v1/deployments/{id}/status"), None).await;
        (v["status"] == want).then_some(v)
    })
    .await
}

async fn wait_operation(cp: &ControlPlane, href: &str, want: &str) -> Value {
    eventually(&format!("operation {href} {want}"), DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, href, None).await;
        (v["status"] == want).then_some(v)
    })
    .await
}

#[tokio::test]
async fn desired_state_flows_to_intent_and_observed_state_to_status() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let agent =
        raw::enroll(cp.quic_addr(), &cp.token(600, &[("role", "web")]).await, &cp.ca().fingerprint()).await.unwrap();
    let (_c, mut send, mut recv, _) = raw::session(cp.quic_addr(), &agent).await.unwrap();

    // Create: 202, an operation to poll, and the intent reaches the agent.
    let (status, body) = cp.api(Method::POST, "/v1/deployments", Some(web("hello", 2))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let op = body["operation"]["href"].as_str().unwrap().to_string();
    assert_eq!(body["operation"]["status"], "in_progress");
    assert_eq!(body["deployment"]["status"], "deploying");
    let a1 = next_assignment(&mut recv).await;
    assert_eq!(a1.workloads.len(), 1);
    assert_eq!((a1.workloads[0].id.as_str(), a1.workloads[0].spec.replicas), (id.as_str(), 2));

    // Observed: both replicas ready at that generation → running, operation succeeded.
    let both = vec![WorkloadStatus {
        id: id.clone(),
        replicas: vec![replica(0, Phase::Running, true, None), replica(1, Phase::Running, true, None)],
    }];
    report(&mut send, a1.generation, both.clone()).await;
    let st = wait_status(&cp, &id, "running").await;
    assert_eq!(st["health"]["status"], "healthy");
    assert_eq!(st["resources"]["pods"], json!({ "desired": 2, "current": 2, "available": 2, "updated": 2 }));
    assert_eq!(st["replicas"].as_array().unwrap().len(), 2);
    let done = wait_operation(&cp, &op, "succeeded").await;
    assert!(done["finishedAt"].is_string());

    // Scale to 3: a newer generation; the old report no longer counts.
    let (status, body) =
        cp.api(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 3 }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let a2 = next_assignment(&mut recv).await;
    assert!(a2.generation > a1.generation);
    assert_eq!(a2.workloads[0].spec.replicas, 3);
    assert_eq!(body["deployment"]["status"], "deploying");

    // Partial success: two ready, one crashing → degraded, with the reason.
    let partial = vec![WorkloadStatus {
        id: id.clone(),
        replicas: vec![
            replica(0, Phase::Running, true, None),
            replica(1, Phase::Running, true, None),
            replica(2, Phase::Failed, false, Some("exited with code 3")),
        ],
    }];
    report(&mut send, a2.generation, partial).await;
    let st = wait_status(&cp, &id, "degraded").await;
    assert!(st["health"]["issues"].to_string().contains("exited with code 3"), "{st}");

    // Stop: the agent is told to run nothing; once it reports so, the deployment is stopped.
    let (status, body) = cp.api(Method::POST, &format!("/v1/deployments/{id}/stop"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stop_op = body["operation"]["href"].as_str().unwrap().to_string();
    let a3 = next_assignment(&mut recv).await;
    assert!(a3.workloads.is_empty());
    report(&mut send, a3.generation, vec![]).await;
    wait_status(&cp, &id, "stopped").await;
    wait_operation(&cp, &stop_op, "succeeded").await;

    // Start again, then delete: removed from intent, operation done once nothing runs.
    let (status, _) = cp.api(Method::POST, &format!("/v1/deployments/{id}/start"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let a4 = next_assignment(&mut recv).await;
    assert_eq!(a4.workloads[0].spec.replicas, 3);
    report(&mut send, a4.generation, both).await;
    let (status, body) = cp.api(Method::DELETE, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let del_op = body["operation"]["href"].as_str().unwrap().to_string();
    let a5 = next_assignment(&mut recv).await;
    assert!(a5.workloads.is_empty());
    report(&mut send, a5.generation, vec![]).await;
    wait_operation(&cp, &del_op, "succeeded").await;
    let (status, err) = cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "DEPLOY_006");

    // Every change was audited.
    let actions: Vec<String> = cp.running_store().audit_for(&id).await.unwrap().into_iter().map(|a| a.0).collect();
    assert_eq!(
        actions,
        ["deployment.create", "deployment.scale", "deployment.stop", "deployment.start", "deployment.delete"]
    );
}

#[tokio::test]
async fn a_restarted_control_plane_resends_the_same_intent_and_keeps_state() {
    let mut cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let agent = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    let (c, mut send, mut recv, _) = raw::session(cp.quic_addr(), &agent).await.unwrap();
    let (_, body) = cp.api(Method::POST, "/v1/deployments", Some(web("hello", 1))).await;
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let before = next_assignment(&mut recv).await;
    report(
        &mut send,
        before.generation,
        vec![WorkloadStatus { id: id.clone(), replicas: vec![replica(0, Phase::Running, true, None)] }],
    )
    .await;
    wait_status(&cp, &id, "running").await;
    drop(c);

    cp.restart().await;

    // Same generation, same workloads: nothing for the agent to change (workloads untouched).
    let (_c, mut send, mut recv, _) = raw::session(cp.quic_addr(), &agent).await.unwrap();
    let after = next_assignment(&mut recv).await;
    assert_eq!(after, before);
    report(
        &mut send,
        after.generation,
        vec![WorkloadStatus { id: id.clone(), replicas: vec![replica(0, Phase::Running, true, None)] }],
    )
    .await;
    wait_status(&cp, &id, "running").await;
}

#[tokio::test]
async fn bad_deployment_input_gets_a_precise_4xx_and_stores_nothing() {
    let cp = ControlPlane::spawn().await;
    let agent = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();

    let mut cases: Vec<(Value, StatusCode, &str, &str)> = Vec::new();
    let mut with = |f: &dyn Fn(&mut Value), status, code, needle| {
        let mut v = web("hello", 1);
        f(&mut v);
        cases.push((v, status, code, needle));
    };
    with(&|v| v["configuration"]["command"] = json!(""), StatusCode::BAD_REQUEST, "VALIDATION_001", "command");
    with(
        &|v| {
            v["configuration"].as_object_mut().unwrap().remove("command");
        },
        StatusCode::BAD_REQUEST,
        "VALIDATION_001",
        "command",
    );
    with(&|v| v["configuration"]["replicas"] = json!(-1), StatusCode::BAD_REQUEST, "VALIDATION_001", "replicas");
    with(&|v| v["configuration"]["replicas"] = json!(100_000), StatusCode::BAD_REQUEST, "DEPLOY_004", "replicas");
    with(&|v| v["environment"] = json!("mars"), StatusCode::BAD_REQUEST, "ENV_001", "mars");
    with(&|v| v["colour"] = json!("red"), StatusCode::BAD_REQUEST, "VALIDATION_001", "unknown field");
    with(&|v| v["deploymentName"] = json!("Not A Name"), StatusCode::BAD_REQUEST, "VALIDATION_001", "deploymentName");
    with(
        &|v| v["target"] = json!({ "selector": {}, "agentIds": ["agent-0000000000000000"] }),
        StatusCode::BAD_REQUEST,
        "VALIDATION_001",
        "target",
    );
    with(&|v| v["target"] = json!({ "agentIds": ["Not An Id"] }), StatusCode::BAD_REQUEST, "VALIDATION_001", "target");
    with(
        &|v| v["configuration"]["healthChecks"]["readiness"]["periodSeconds"] = json!(0),
        StatusCode::BAD_REQUEST,
        "VALIDATION_001",
        "periodSeconds",
    );
    for (body, status, code, needle) in cases {
        let (s, err) = cp.api(Method::POST, "/v1/deployments", Some(body.clone())).await;
        assert_eq!(s, status, "{body} -> {err}");
        assert_eq!(err["error"]["code"], code, "{body} -> {err}");
        assert!(err.to_string().contains(needle), "{body} -> {err}");
        assert!(err["error"]["requestId"].is_string());
    }
    let (_, list) = cp.api(Method::GET, "/v1/deployments", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");

    // Malformed JSON and oversized bodies.
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(format!("{}/v1/deployments", cp.base_url))
            .bearer_auth(&cp.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = post(b"{\"deploymentName\":".to_vec()).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = post(vec![b' '; 2 * 1024 * 1024]).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown ids, everywhere.
    for (method, path) in [
        (Method::GET, "/v1/deployments/deploy-nope"),
        (Method::DELETE, "/v1/deployments/deploy-nope"),
        (Method::GET, "/v1/deployments/deploy-nope/status"),
        (Method::POST, "/v1/deployments/deploy-nope/start"),
        (Method::POST, "/v1/deployments/deploy-nope/stop"),
        (Method::POST, "/v1/deployments/deploy-nope/restart"),
    ] {
        let (s, err) = cp.api(method.clone(), path, None).await;
        assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("DEPLOY_006")), "{method} {path}");
    }
    let (s, err) = cp.api(Method::POST, "/v1/deployments/deploy-nope/fly", None).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("ROUTE_001")));
    let (s, err) = cp.api(Method::GET, "/v1/operations/op-nope", None).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("OPERATION_001")));

    // A real one, then conflicting and racing updates.
    let (s, body) = cp.api(Method::POST, "/v1/deployments", Some(web("hello", 1))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let (s, err) = cp.api(Method::POST, "/v1/deployments", Some(web("hello", 1))).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("DEPLOY_008")));
    let (s, err) = cp.api(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": -2 }))).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_001")));
    let stale = client
        .put(format!("{}/v1/deployments/{id}", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("if-match", "\"999\"")
        .json(&json!({ "activeVersion": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let (_, d) = cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(d["activeVersion"], "v1", "a refused update changed nothing");
    let ok = client
        .put(format!("{}/v1/deployments/{id}", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("if-match", format!("\"{}\"", d["resourceVersion"]))
        .json(&json!({ "activeVersion": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let _ = agent;

    // Environments: seeded, listed, created, and validated.
    let (_, envs) = cp.api(Method::GET, "/v1/environments", None).await;
    let names: Vec<&str> = envs["data"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["development", "staging", "production"]);
    let (s, _) = cp.api(Method::POST, "/v1/environments", Some(json!({ "name": "qa", "description": "QA" }))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, err) = cp.api(Method::POST, "/v1/environments", Some(json!({ "name": "qa" }))).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("ENV_006")));
    let (s, err) = cp.api(Method::GET, "/v1/environments/nope", None).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("ENV_001")));
    for bad in [json!({ "name": "Not Valid" }), json!({ "name": "ok", "colour": "red" }), json!({})] {
        let (s, err) = cp.api(Method::POST, "/v1/environments", Some(bad.clone())).await;
        assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_001")), "{bad}");
    }
    let (s, err) = cp.api(Method::GET, "/v1/environments?pageSize=0", None).await;
    assert_eq!((s, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION_001")));
    let (_, envs) = cp.api(Method::GET, "/v1/environments", None).await;
    assert_eq!(envs["pagination"]["totalCount"], 4, "refused creations stored nothing");
}

#[tokio::test]
async fn an_agent_ahead_of_the_store_gets_a_generation_it_accepts() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let agent = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    // As after a restore of the control plane's database from an older backup.
    let c = raw::connect(cp.quic_addr(), &agent.ca_pem, &agent.cert_pem, &agent.key_pem).await.unwrap();
    let (_send, mut recv, _) = raw::hello_at(&c, &agent.agent_id, 50).await.unwrap();
    let first = next_assignment(&mut recv).await;
    assert!(first.generation > 50, "generation {} would be refused as stale", first.generation);
    let (status, _) = cp.api(Method::POST, "/v1/deployments", Some(web("hello", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let next = next_assignment(&mut recv).await;
    assert!(next.generation > first.generation);
    assert_eq!(next.workloads.len(), 1);
}
