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

#[tokio::test]
async fn concurrent_changes_without_if_match_all_apply() {
    let cp = ControlPlane::spawn().await;
    let (s, body) = cp.api(Method::POST, "/v1/deployments", Some(web("busy", 1))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let version = body["deployment"]["resourceVersion"].as_i64().unwrap();
    let calls = (0..20u32).map(|i| {
        let cp = &cp;
        let id = id.clone();
        async move {
            let (s, body) =
                cp.api(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": i + 1 }))).await;
            assert_eq!(s, StatusCode::ACCEPTED, "no precondition was asked, so none may fail: {body}");
        }
    });
    futures_join_all(calls).await;
    let (_, d) = cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(d["resourceVersion"].as_i64().unwrap(), version + 20, "every change was applied once: {d}");
    let actions = cp.running_store().audit_for(&id).await.unwrap();
    assert_eq!(actions.iter().filter(|a| a.0 == "deployment.scale").count(), 20);
}

/// Runs the futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    all = false;
                }
            }
        }
        if all { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
}

async fn next_intent(recv: &mut RecvStream) -> ferry_protocol::IntentUpdate {
    loop {
        match ferry_transport::read_frame_timeout::<ServerMessage>(recv, DEADLINE).await.unwrap() {
            Some(ServerMessage::Intent(u)) => return u,
            Some(_) => continue,
            None => panic!("control stream closed"),
        }
    }
}

/// Protocol 2: a deployment that matches no agent waits, pending; an agent that matches gets
/// it; every later change reaches the agent as just that change (a delta on the generation it
/// holds); a new template is a new revision replacing the old; an agent that lost track asks
/// for, and gets, the whole intent.
#[tokio::test]
async fn intent_reaches_protocol_2_agents_as_changes_since_what_they_hold() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let mut spec = web("first", 1);
    spec["target"] = json!({ "selector": { "role": "web" } });
    let (s, body) = cp.api(Method::POST, "/v1/deployments", Some(spec)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deployment"]["status"], "pending", "{body}");
    let first = body["deployment"]["id"].as_str().unwrap().to_string();

    let agent =
        raw::enroll(cp.quic_addr(), &cp.token(600, &[("role", "web")]).await, &cp.ca().fingerprint()).await.unwrap();
    let (_c, mut send, mut recv, welcome) = raw::session_v2(cp.quic_addr(), &agent).await.unwrap();
    assert_eq!(welcome.protocol_version, 2);
    assert_eq!(cp.agent_json(&agent.agent_id).await["capabilities"], json!(["runtime:process"]));
    let whole = next_intent(&mut recv).await;
    assert_eq!(whole.base, None, "a new agent gets its whole intent");
    assert_eq!(whole.upserts.len(), 1);
    let w = &whole.upserts[0];
    assert_eq!((w.id.clone(), w.deployment_id.as_str(), w.revision), (format!("{first}@1"), first.as_str(), 1));
    let up = |id: &str, n: u32| WorkloadStatus {
        id: id.to_string(),
        replicas: (0..n).map(|i| replica(i, Phase::Running, true, None)).collect(),
    };
    report(&mut send, whole.generation, vec![up(&format!("{first}@1"), 1)]).await;
    wait_status(&cp, &first, "running").await;

    // Scale: one changed row, sent as a delta on the generation the agent holds.
    cp.api(Method::POST, &format!("/v1/deployments/{first}/scale"), Some(json!({ "replicas": 2 }))).await;
    let scaled = next_intent(&mut recv).await;
    assert_eq!(scaled.base, Some(whole.generation));
    assert_eq!((scaled.upserts.len(), scaled.removals.len()), (1, 0));
    assert_eq!(scaled.upserts[0].spec.replicas(), 2);

    // Another deployment: the delta carries it alone, not the agent's other workloads.
    let mut second_spec = web("second", 1);
    second_spec["target"] = json!({ "selector": { "role": "web" } });
    let (_, body) = cp.api(Method::POST, "/v1/deployments", Some(second_spec)).await;
    let second = body["deployment"]["id"].as_str().unwrap().to_string();
    let added = next_intent(&mut recv).await;
    assert_eq!(added.base, Some(scaled.generation));
    assert_eq!(added.upserts.iter().map(|w| w.deployment_id.as_str()).collect::<Vec<_>>(), [second.as_str()]);

    // A new command is a new revision: the new one in, the old one out, in one update.
    let (s, body) = cp
        .api(
            Method::PUT,
            &format!("/v1/deployments/{first}"),
            Some(json!({ "configuration": { "replicas": 2, "command": "hello-web", "args": ["--v2"] } })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deployment"]["revision"], 2);
    let revised = next_intent(&mut recv).await;
    assert_eq!(revised.upserts.iter().map(|w| w.id.clone()).collect::<Vec<_>>(), [format!("{first}@2")]);
    assert_eq!(revised.removals, [format!("{first}@1")]);
    report(&mut send, revised.generation, vec![up(&format!("{first}@2"), 2), up(&format!("{second}@1"), 1)]).await;
    wait_status(&cp, &first, "running").await;
    wait_status(&cp, &second, "running").await;

    // A status delta says only what changed: the second deployment's replica is gone.
    let delta = ferry_protocol::StatusDelta {
        generation: revised.generation,
        changed: vec![],
        removed: vec![format!("{second}@1")],
    };
    ferry_transport::write_frame(&mut send, &AgentMessage::StatusDelta(delta)).await.unwrap();
    wait_status(&cp, &second, "deploying").await;
    let st = wait_status(&cp, &first, "running").await;
    assert_eq!(st["replicas"].as_array().unwrap().len(), 2, "what the delta did not name is unchanged");

    // An agent that does not hold the base asks for everything, and gets it.
    let ask = ferry_protocol::Ack {
        generation: revised.generation,
        outcome: ferry_protocol::AckOutcome::NeedFull { held: 0 },
    };
    ferry_transport::write_frame(&mut send, &AgentMessage::Ack(ask)).await.unwrap();
    let resync = next_intent(&mut recv).await;
    assert_eq!(resync.base, None);
    let mut ids: Vec<String> = resync.upserts.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    let mut want = vec![format!("{first}@2"), format!("{second}@1")];
    want.sort();
    assert_eq!(ids, want);
    assert!(resync.removals.is_empty());
}

/// A revoked agent's share moves to the agents left, at once (not at the next periodic reload
/// of the agents' placement facts, which is 10 s away).
#[tokio::test]
async fn a_revoked_agents_share_moves_to_the_others() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let agent = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
        let (c, send, recv, _) = raw::session_v2(cp.quic_addr(), &agent).await.unwrap();
        sessions.push((agent, c, send, recv));
    }
    let (_, body) = cp.api(Method::POST, "/v1/deployments", Some(web("spread", 2))).await;
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    for (_, _, _, recv) in sessions.iter_mut() {
        let first = next_intent(recv).await;
        assert_eq!(first.upserts[0].spec.replicas(), 1, "one replica each");
    }
    let (gone, _, _, _) = &sessions[1];
    let (s, _) = cp.api(Method::DELETE, &format!("/v1/agents/{}", gone.agent_id), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, _, recv) = &mut sessions[0];
    let moved = tokio::time::timeout(Duration::from_secs(8), next_intent(recv)).await.expect("the share moved");
    assert_eq!(moved.upserts.len(), 1);
    assert_eq!((moved.upserts[0].deployment_id.as_str(), moved.upserts[0].spec.replicas()), (id.as_str(), 2));
}

/// What stopped while an agent was away is seen gone from its first report of the next session.
#[tokio::test]
async fn a_new_session_clears_what_the_agent_no_longer_runs() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(5)).spawn().await;
    let agent = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    let (c, mut send, mut recv, _) = raw::session_v2(cp.quic_addr(), &agent).await.unwrap();
    let (_, body) = cp.api(Method::POST, "/v1/deployments", Some(web("away", 1))).await;
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    let intent = next_intent(&mut recv).await;
    let running =
        vec![WorkloadStatus { id: format!("{id}@1"), replicas: vec![replica(0, Phase::Running, true, None)] }];
    report(&mut send, intent.generation, running).await;
    wait_status(&cp, &id, "running").await;
    drop((c, send, recv));

    let c = raw::connect(cp.quic_addr(), &agent.ca_pem, &agent.cert_pem, &agent.key_pem).await.unwrap();
    let (mut send, _recv, _) = raw::hello_with(&c, &agent.agent_id, intent.generation, 2).await.unwrap();
    report(&mut send, intent.generation, vec![]).await;
    let st = wait_status(&cp, &id, "deploying").await;
    assert!(st["replicas"].as_array().unwrap().is_empty(), "{st}");
}
