//! `ferry-server dev`: the control plane plus an embedded local agent that enrolls and connects
//! over real QUIC with mutual TLS on loopback, exactly like a remote one would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_agent::{AgentConfig, AgentState, Exit};
use ferry_control_plane::Running;
use tokio::sync::watch;

/// Label carried by the embedded agent; deployments can target it with a selector.
pub const LOCAL_LABEL: (&str, &str) = ("ferry.dev/agent", "local");

pub async fn run(running: Running, started: Instant) {
    let state_dir = running.state.config.data_dir.join("agent");
    let mut config = AgentConfig::new(running.quic_addr.to_string(), state_dir.clone());
    config.name = "local".into();
    config.labels = BTreeMap::from([(LOCAL_LABEL.0.to_string(), LOCAL_LABEL.1.to_string())]);
    config.max_backoff = Duration::from_secs(2);
    if !state_dir.join("client.pem").exists() {
        let labels = config.labels.clone();
        match ferry_control_plane::tokens::issue(&running.state, 60, labels, "dev mode local agent".into(), "dev", "")
            .await
        {
            Ok((token, _)) => config.token = Some(token.to_string()),
            Err(e) => {
                eprintln!("ferry-server dev: cannot issue a token for the local agent: {e}");
                running.shutdown().await;
                std::process::exit(1);
            }
        }
    }
    let (stop_agent, shutdown_rx) = watch::channel(false);
    let (state_tx, mut agent_state) = watch::channel(AgentState::default());
    let agent = tokio::spawn(ferry_agent::run(config, shutdown_rx, state_tx));

    let ready = tokio::time::timeout(Duration::from_secs(10), agent_state.wait_for(|s| s.connected))
        .await
        .is_ok_and(|r| r.is_ok());
    let agent_id = agent_state.borrow().agent_id.clone().unwrap_or_default();
    if ready {
        eprintln!(
            "ferry-server dev: ready in {} ms\n  API          http://{}\n  admin token  {}\n  local agent  {agent_id} (label {}={}), connected over QUIC to {}",
            started.elapsed().as_millis(),
            running.http_addr,
            running.admin_token_path.display(),
            LOCAL_LABEL.0,
            LOCAL_LABEL.1,
            running.quic_addr,
        );
    } else {
        eprintln!(
            "ferry-server dev: API on http://{} but the local agent is not connected yet ({:?})",
            running.http_addr,
            agent_state.borrow().last_error
        );
    }

    let mut agent = agent;
    tokio::select! {
        _ = wait_for_signal() => {}
        exit = &mut agent => {
            if let Ok(Exit::Fatal(reason)) = exit {
                eprintln!("ferry-server dev: the local agent stopped: {reason}");
            }
        }
    }
    // Stop the agent first so its workloads stop, then the control plane.
    let _ = stop_agent.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    running.shutdown().await;
}

async fn wait_for_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
