//! The whole loop with real processes: a deployment of the example `hello-web` service goes from
//! REST to intent, to an agent that runs it as supervised child processes with health checks,
//! and back as observed state and logs.

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn hello(name: &str, replicas: u32, env: Value) -> Value {
    json!({
        "deploymentName": name,
        "environment": "development",
        "target": { "selector": { "role": "web" } },
        "configuration": {
            "replicas": replicas,
            "command": bin_path("hello-web").to_str().unwrap(),
            "env": env,
            "restartPolicy": "always",
            "stopGracePeriodSeconds": 2,
            "healthChecks": {
                "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
            }
        }
    })
}

async fn create(cp: &ControlPlane, body: Value) -> (String, String) {
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    (res["deployment"]["id"].as_str().unwrap().into(), res["operation"]["href"].as_str().unwrap().into())
}

async fn act(cp: &ControlPlane, id: &str, action: &str, body: Option<Value>) -> String {
    let (status, res) = cp.api(Method::POST, &format!("/v1/deployments/{id}/{action}"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    res["operation"]["href"].as_str().unwrap().into()
}

/// Waits until the status matches `cond`.
async fn until(cp: &ControlPlane, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    eventually(what, DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, &format!("/v1/deployments/{id}/status"), None).await;
        cond(&v).then_some(v)
    })
    .await
}

async fn running(cp: &ControlPlane, id: &str, n: u64) -> Value {
    until(cp, id, &format!("{n} ready replicas"), |v| {
        v["status"] == "running" && v["resources"]["pods"]["available"] == n
    })
    .await
}

async fn op_succeeds(cp: &ControlPlane, href: &str) {
    eventually(&format!("operation {href} succeeded"), DEADLINE, || async {
        let (_, v) = cp.api(Method::GET, href, None).await;
        assert_ne!(v["status"], "failed", "{v}");
        (v["status"] == "succeeded").then_some(())
    })
    .await;
}

fn pids(status: &Value) -> Vec<u32> {
    status["replicas"].as_array().unwrap().iter().map(|r| r["pid"].as_u64().unwrap() as u32).collect()
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped by an init that does not reap) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn http_get(port: u64, path: &str) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn hello_web_runs_heals_scales_restarts_stops_and_is_deleted() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;

    let (id, op) = create(&cp, hello("hello", 2, json!({ "GREETING": "hi" }))).await;
    let st = running(&cp, &id, 2).await;
    op_succeeds(&cp, &op).await;
    // Both replicas answer over HTTP on their own ports.
    let replicas = st["replicas"].as_array().unwrap().clone();
    let ports: Vec<u64> = replicas.iter().map(|r| r["port"].as_u64().unwrap()).collect();
    assert_ne!(ports[0], ports[1]);
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(http_get(*port, "/").await, format!("hi (replica {i})\n"));
    }

    // Kill one replica's process: the agent restarts it and counts the restart; the other is untouched.
    let before = pids(&st);
    let _ = std::process::Command::new("kill").args(["-9", &before[0].to_string()]).status();
    let healed = until(&cp, &id, "replica 0 restarted", |v| {
        v["status"] == "running" && v["replicas"][0]["restarts"] == 1 && v["replicas"][0]["ready"] == true
    })
    .await;
    assert_ne!(pids(&healed)[0], before[0]);
    assert_eq!(pids(&healed)[1], before[1]);
    assert!(healed["replicas"][0]["reason"].as_str().unwrap().contains("signal 9"), "{healed}");

    // Scale up: the existing replicas keep running.
    let op = act(&cp, &id, "scale", Some(json!({ "replicas": 3 }))).await;
    let scaled = running(&cp, &id, 3).await;
    op_succeeds(&cp, &op).await;
    assert_eq!(&pids(&scaled)[..2], &pids(&healed)[..]);

    // Restart: every replica is replaced.
    let op = act(&cp, &id, "restart", None).await;
    op_succeeds(&cp, &op).await;
    let restarted = running(&cp, &id, 3).await;
    for (old, new) in pids(&scaled).iter().zip(pids(&restarted)) {
        assert_ne!(*old, new);
    }

    // Stop: no process left; start brings it back.
    let op = act(&cp, &id, "stop", None).await;
    op_succeeds(&cp, &op).await;
    until(&cp, &id, "stopped", |v| v["status"] == "stopped").await;
    for pid in pids(&restarted) {
        eventually("stopped process gone", DEADLINE, || async { (!alive(pid)).then_some(()) }).await;
    }
    let op = act(&cp, &id, "start", None).await;
    op_succeeds(&cp, &op).await;
    let started = running(&cp, &id, 3).await;

    // Delete: the operation completes once the agent runs nothing for it; processes are gone.
    let (status, res) = cp.api(Method::DELETE, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    op_succeeds(&cp, res["operation"]["href"].as_str().unwrap()).await;
    for pid in pids(&started) {
        eventually("deleted process gone", DEADLINE, || async { (!alive(pid)).then_some(()) }).await;
    }
    assert!(agent.state().workloads.is_empty());
}

#[tokio::test]
async fn a_new_configuration_is_a_new_revision_that_replaces_the_replicas() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, _) = create(&cp, hello("rolling", 2, json!({ "GREETING": "hi" }))).await;
    let before = running(&cp, &id, 2).await;
    let old_ids: Vec<String> = agent.state().workloads.iter().map(|w| w.id.clone()).collect();
    assert_eq!(old_ids.len(), 1, "{old_ids:?}");
    assert!(old_ids[0].starts_with(&format!("{id}@")), "workloads are named <deployment>@<revision>: {old_ids:?}");

    let config = hello("rolling", 2, json!({ "GREETING": "hello" }))["configuration"].clone();
    let (status, res) =
        cp.api(Method::PUT, &format!("/v1/deployments/{id}"), Some(json!({ "configuration": config }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    op_succeeds(&cp, res["operation"]["href"].as_str().unwrap()).await;
    let after = running(&cp, &id, 2).await;
    for (old, new) in pids(&before).iter().zip(pids(&after)) {
        assert_ne!(*old, new);
    }
    for (i, r) in after["replicas"].as_array().unwrap().iter().enumerate() {
        assert_eq!(http_get(r["port"].as_u64().unwrap(), "/").await, format!("hello (replica {i})\n"));
    }
    let state =
        agent.wait_state("only the new revision", |s| s.workloads.len() == 1 && s.workloads[0].id != old_ids[0]).await;
    assert!(state.workloads[0].id.starts_with(&format!("{id}@")), "{:?}", state.workloads);
}

#[tokio::test]
async fn failing_readiness_and_crashing_processes_are_reported_with_reasons() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;

    let (id, _) = create(&cp, hello("unready", 1, json!({ "HELLO_FAIL_HEALTH": "1" }))).await;
    let st = until(&cp, &id, "readiness failure reported", |v| {
        v["status"] == "failed" && v["health"]["issues"].to_string().contains("readiness")
    })
    .await;
    assert_eq!(st["health"]["status"], "unhealthy");
    assert_eq!(st["replicas"][0]["ready"], false);

    let mut crash = hello("crash", 1, json!({}));
    crash["configuration"]["command"] = json!("/bin/sh");
    crash["configuration"]["args"] = json!(["-c", "echo starting; exit 3"]);
    crash["configuration"]["restartPolicy"] = json!("never");
    crash["configuration"]["healthChecks"] = json!({});
    let (id, op) = create(&cp, crash).await;
    until(&cp, &id, "crash reported", |v| {
        v["status"] == "failed" && v["health"]["issues"].to_string().contains("exited with code 3")
    })
    .await;
    let (_, op) = cp.api(Method::GET, &op, None).await;
    assert_eq!(op["status"], "in_progress", "an operation fails only at its progress deadline");
}

#[tokio::test]
async fn a_control_plane_restart_leaves_workloads_untouched() {
    let mut cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, _) = create(&cp, hello("steady", 2, json!({}))).await;
    let before = running(&cp, &id, 2).await;

    cp.restart().await;
    agent.wait_state("reconnected", |s| s.connected && s.sessions >= 2).await;
    let after = running(&cp, &id, 2).await;
    assert_eq!(pids(&after), pids(&before), "workloads were restarted by a control-plane restart");
    let restarts =
        |v: &Value| v["replicas"].as_array().unwrap().iter().map(|r| r["restarts"].clone()).collect::<Vec<_>>();
    assert_eq!(restarts(&after), restarts(&before));
}

#[tokio::test]
async fn an_agent_that_disconnects_is_reported_truthfully() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, _) = create(&cp, hello("lonely", 1, json!({}))).await;
    running(&cp, &id, 1).await;
    assert!(matches!(agent.stop().await, ferry_agent::Exit::Stopped));
    let st = until(&cp, &id, "disconnection reported", |v| v["status"] == "unknown").await;
    assert!(st["health"]["issues"].to_string().contains("disconnected"), "{st}");
}

#[tokio::test]
async fn a_replica_whose_port_was_taken_moves_to_another_port() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, _) = create(&cp, hello("squatted", 1, json!({}))).await;
    let st = running(&cp, &id, 1).await;
    let port = st["replicas"][0]["port"].as_u64().unwrap() as u16;
    let _ = std::process::Command::new("kill").args(["-9", &pids(&st)[0].to_string()]).status();
    // Another process grabs the port before the replica comes back.
    let squatter =
        eventually("port free to squat", DEADLINE, || async { std::net::TcpListener::bind(("127.0.0.1", port)).ok() })
            .await;
    let moved = until(&cp, &id, "replica running on another port", |v| {
        v["status"] == "running" && v["replicas"][0]["port"].as_u64() != Some(port as u64)
    })
    .await;
    let new_port = moved["replicas"][0]["port"].as_u64().unwrap();
    assert!(http_get(new_port, "/").await.contains("replica 0"));
    drop(squatter);
}

#[tokio::test]
async fn workload_logs_reach_the_api_and_the_live_stream() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, _) = create(&cp, hello("chatty", 1, json!({}))).await;
    let st = running(&cp, &id, 1).await;
    let port = st["replicas"][0]["port"].as_u64().unwrap();

    // Follow the live stream, then make the service log a request.
    let mut sse = reqwest::Client::new()
        .get(format!("{}/v1/logs/stream/{id}", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    http_get(port, "/from-the-test").await;
    let mut seen = String::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = sse.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("GET /from-the-test -> 404") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "stream so far:\n{seen}");
    assert!(seen.contains("listening on 127.0.0.1:"), "the start-up line comes first:\n{seen}");

    let (_, page) = cp.api(Method::GET, &format!("/v1/logs/deployments/{id}?stream=stdout"), None).await;
    let lines: Vec<&str> = page["data"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.contains("GET /from-the-test -> 404")), "{lines:?}");
}

/// The same loop with PostgreSQL as the store (a schema of its own, dropped afterwards).
#[tokio::test]
async fn the_loop_runs_on_postgresql() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("skipping: DATABASE_URL is not set");
        return;
    };
    use ferry_control_plane::store::{Store, StoreOptions};
    let schema = format!("ferry_e2e_{}", ferry_control_plane::ids::random_hex(6));
    // Kept open to drop the schema at the end (connecting to `public` would migrate it).
    let setup = Store::connect(&url, StoreOptions { pg_schema: Some(schema.clone()) }).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");

    let mut cp = ControlPlane::builder().database_url(&scoped).spawn().await;
    assert_eq!(cp.running_store().backend(), ferry_control_plane::store::Backend::Postgres);
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let (id, op) = create(&cp, hello("on-postgres", 2, json!({}))).await;
    let before = running(&cp, &id, 2).await;
    op_succeeds(&cp, &op).await;
    cp.restart().await;
    agent.wait_state("reconnected", |s| s.connected && s.sessions >= 2).await;
    assert_eq!(pids(&running(&cp, &id, 2).await), pids(&before));
    drop(agent);
    cp.stop().await;

    setup.drop_pg_schema(&schema).await.unwrap();
    setup.close().await;
}
