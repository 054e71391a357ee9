//! Enrollment and identity: tokens, certificates, revocation — real control plane, real agents,
//! real QUIC with mutual TLS on loopback.

use std::time::Duration;

use ferry_agent::Exit;
use ferry_certs::Validity;
use ferry_protocol::CloseCode;
use ferry_tests::{Agent, ControlPlane, DEADLINE, eventually, raw};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn fatal(exit: Exit) -> String {
    match exit {
        Exit::Fatal(msg) => msg,
        Exit::Stopped => panic!("expected a fatal exit, the agent stopped normally"),
    }
}

#[tokio::test]
async fn agent_enrolls_connects_and_is_listed() {
    let cp = ControlPlane::spawn().await;
    let token = cp.token(600, &[("zone", "eu-1"), ("role", "db")]).await;
    let agent = Agent::spawn(&cp, &token);
    let state = agent.wait_connected().await;
    let id = state.agent_id.clone().unwrap();
    assert!(id.starts_with("agent-"), "{id}");

    let view = cp.wait_agent_status(&id, "connected").await;
    assert_eq!(view["name"], "test-agent");
    // The token's labels win over what the agent declares.
    assert_eq!(view["labels"], json!({ "zone": "eu-1", "role": "db" }));
    assert_eq!(view["certificate"]["serial"], json!(state.cert_serial.clone().unwrap()));
    assert!(view["connectedSince"].is_string() && view["lastHeartbeat"].is_string());
    assert_eq!(view["version"], env!("CARGO_PKG_VERSION"));

    // Listed, filterable, and the token shows as used by this agent.
    let (status, list) = cp.api(Method::GET, "/v1/agents?status=connected", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["pagination"]["totalCount"], 1);
    assert_eq!(list["data"][0]["id"], json!(id));
    let (_, list) = cp.api(Method::GET, "/v1/agents?status=revoked", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0);
    let (_, tokens) = cp.api(Method::GET, "/v1/agents/tokens", None).await;
    assert_eq!(tokens["data"][0]["state"], "used");
    assert_eq!(tokens["data"][0]["usedBy"], json!(id));

    // The key never left the agent: its state dir holds it, mode 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent.state_dir.join("client.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(matches!(agent.stop().await, Exit::Stopped));
    cp.wait_agent_status(&id, "disconnected").await;
}

#[tokio::test]
async fn a_token_works_once() {
    let cp = ControlPlane::spawn().await;
    let token = cp.token(600, &[]).await;
    let first = Agent::spawn(&cp, &token);
    first.wait_connected().await;
    let second = Agent::spawn(&cp, &token);
    let msg = fatal(second.exit().await);
    assert!(msg.contains("already used"), "{msg}");
    // Raw enrollment gets the same answer.
    let err = raw::enroll(cp.quic_addr(), &token, &cp.ca().fingerprint()).await.unwrap_err();
    assert!(err.contains("TokenUsed"), "{err}");
}

#[tokio::test]
async fn expired_unknown_and_deleted_tokens_are_refused() {
    let cp = ControlPlane::spawn().await;
    let fp = cp.ca().fingerprint();

    let (status, body) = cp.api(Method::POST, "/v1/agents/tokens", Some(json!({ "ttlSeconds": 1 }))).await;
    assert_eq!(status, StatusCode::CREATED);
    let expires = time::OffsetDateTime::parse(
        body["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    eventually("token expiry time to pass", DEADLINE, || async {
        (time::OffsetDateTime::now_utc() > expires).then_some(())
    })
    .await;
    let err = raw::enroll(cp.quic_addr(), body["token"].as_str().unwrap(), &fp).await.unwrap_err();
    assert!(err.contains("TokenExpired"), "{err}");
    let agent = Agent::spawn(&cp, body["token"].as_str().unwrap());
    assert!(fatal(agent.exit().await).contains("expired"));

    // Well-formed but never issued.
    let unknown = format!("ferry1.{}.{}.{fp}", "0".repeat(16), "0".repeat(32));
    let err = raw::enroll(cp.quic_addr(), &unknown, &fp).await.unwrap_err();
    assert!(err.contains("TokenUnknown"), "{err}");

    // Right id, wrong secret: indistinguishable from unknown.
    let real = cp.token(600, &[]).await;
    let parts: Vec<&str> = real.split('.').collect();
    let forged = format!("ferry1.{}.{}.{fp}", parts[1], "f".repeat(32));
    let err = raw::enroll(cp.quic_addr(), &forged, &fp).await.unwrap_err();
    assert!(err.contains("TokenUnknown"), "{err}");
    // ...and the real token still works afterwards.
    raw::enroll(cp.quic_addr(), &real, &fp).await.unwrap();

    // A deleted token is gone.
    let (_, body) = cp.api(Method::POST, "/v1/agents/tokens", Some(json!({}))).await;
    let (status, _) =
        cp.api(Method::DELETE, &format!("/v1/agents/tokens/{}", body["id"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let err = raw::enroll(cp.quic_addr(), body["token"].as_str().unwrap(), &fp).await.unwrap_err();
    assert!(err.contains("TokenUnknown"), "{err}");
}

#[tokio::test]
async fn the_agent_pins_the_ca_from_its_token() {
    let cp = ControlPlane::spawn().await;
    let token = cp.token(600, &[]).await;
    // Another CA's fingerprint: the server's chain does not match the pin, no TLS session.
    let other = ferry_certs::Ca::generate("impostor").unwrap().fingerprint();
    let err = raw::enroll(cp.quic_addr(), &token, &other).await.unwrap_err();
    assert!(!err.contains("Enrolled"), "{err}");
    // The token was not consumed by the failed attempt.
    raw::enroll(cp.quic_addr(), &token, &cp.ca().fingerprint()).await.unwrap();
}

#[tokio::test]
async fn an_agent_whose_token_pins_another_ca_stops_for_good() {
    let cp = ControlPlane::spawn().await;
    let token = cp.token(600, &[]).await;
    // This control plane's token id and secret, another CA's fingerprint (a token from another
    // control plane, or the wrong --server): retrying cannot help, the agent stops (exit 78).
    let parts: Vec<&str> = token.split('.').collect();
    let other = ferry_certs::Ca::generate("impostor").unwrap().fingerprint();
    let pinned_elsewhere = format!("ferry1.{}.{}.{other}", parts[1], parts[2]);
    let agent = Agent::spawn(&cp, &pinned_elsewhere);
    let msg = fatal(agent.exit().await);
    assert!(msg.contains("does not hold the CA the token pins") && msg.contains(&other), "{msg}");
    // The handshake failed before the token was sent: it is still unused, and works.
    let (_, tokens) = cp.api(Method::GET, "/v1/agents/tokens", None).await;
    assert_eq!(tokens["data"][0]["state"], "active", "{tokens}");
    Agent::spawn(&cp, &token).wait_connected().await;
}

#[tokio::test]
async fn foreign_and_expired_certificates_are_refused() {
    let cp = ControlPlane::spawn().await;
    let id = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    // Sanity: the genuine identity gets a session.
    let (c, ..) = raw::session(cp.quic_addr(), &id).await.unwrap();
    ferry_transport::close(&c.conn, CloseCode::Normal, "done");

    // Same agent id, signed by another CA.
    let foreign = ferry_certs::Ca::generate("foreign").unwrap();
    let key = ferry_certs::generate_key().unwrap();
    let csr = ferry_certs::csr_pem(&key, "x").unwrap();
    let cert = foreign.sign_agent_csr(&csr, &id.agent_id, Validity::from_now(Duration::from_secs(600))).unwrap();
    let forged = raw::Identity { cert_pem: cert.cert_pem, key_pem: key.serialize_pem(), ..id.clone() };
    assert!(raw::session(cp.quic_addr(), &forged).await.is_err(), "foreign CA accepted");

    // Signed by the right CA but expired.
    let now = time::OffsetDateTime::now_utc();
    let past = Validity { not_before: now - time::Duration::hours(2), not_after: now - time::Duration::hours(1) };
    let cert = cp.ca().sign_agent_csr(&csr, &id.agent_id, past).unwrap();
    let expired = raw::Identity { cert_pem: cert.cert_pem, key_pem: key.serialize_pem(), ..id.clone() };
    assert!(raw::session(cp.quic_addr(), &expired).await.is_err(), "expired certificate accepted");

    // Signed by the right CA for an agent that was never enrolled.
    let cert = cp.ca().sign_agent_csr(&csr, "agent-ghost", Validity::from_now(Duration::from_secs(600))).unwrap();
    let ghost = raw::Identity {
        agent_id: "agent-ghost".into(),
        cert_pem: cert.cert_pem,
        key_pem: key.serialize_pem(),
        ..id.clone()
    };
    let c = raw::connect(cp.quic_addr(), &ghost.ca_pem, &ghost.cert_pem, &ghost.key_pem).await.unwrap();
    assert!(raw::hello(&c, "agent-ghost").await.is_err());
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::UnknownAgent));

    // A Hello claiming another identity than the certificate is refused.
    let c = raw::connect(cp.quic_addr(), &id.ca_pem, &id.cert_pem, &id.key_pem).await.unwrap();
    assert!(raw::hello(&c, "agent-someone-else").await.is_err());
}

#[tokio::test]
async fn revoking_closes_the_session_and_refuses_the_certificate() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    let id = agent.wait_connected().await.agent_id.unwrap();
    let pem = agent.client_pem();
    let ca = ferry_tests::stored_ca(&agent.state_dir);

    let (status, body) = cp.api(Method::DELETE, &format!("/v1/agents/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "revoked");
    let msg = fatal(agent.exit().await);
    assert!(msg.contains("revoked"), "{msg}");

    // The same certificate cannot open a session any more.
    let (cert, key) = raw::split_client_pem(&pem);
    let c = raw::connect(cp.quic_addr(), &ca, &cert, &key).await.unwrap();
    assert!(raw::hello(&c, &id).await.is_err());
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::Revoked));

    // Revocation is idempotent and audited; unknown agents are a 404 in the seed's format.
    let (status, again) = cp.api(Method::DELETE, &format!("/v1/agents/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["revokedAt"], body["revokedAt"]);
    let audit = cp.running_store().audit_for(&id).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(actions, ["agent.enroll", "agent.revoke", "agent.revoke"]);
    let (status, err) = cp.api(Method::DELETE, "/v1/agents/agent-nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "AGENT_001");
}

#[tokio::test]
async fn certificates_renew_over_the_live_session() {
    let cp = ControlPlane::builder().agent_cert_lifetime(Duration::from_secs(3)).spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    let first = agent.wait_connected().await;
    let id = first.agent_id.clone().unwrap();
    // Three renewals span more than two whole lifetimes of the first certificate.
    let later = agent.wait_state("three renewals", |s| s.renewals >= 3).await;
    assert_eq!(later.sessions, 1, "the session was re-established instead of surviving renewal");
    assert!(later.connected);
    assert_ne!(later.cert_serial, first.cert_serial);
    assert!(later.cert_not_after.unwrap() > time::OffsetDateTime::now_utc());
    let view = cp.wait_agent_status(&id, "connected").await;
    assert!(
        first.cert_not_after.unwrap() < time::OffsetDateTime::now_utc(),
        "first certificate should be expired by now"
    );
    // The registry records the newest certificate (allow one renewal in flight).
    eventually("registry shows the agent's current certificate", DEADLINE, || async {
        let v = cp.agent_json(&id).await;
        (v["certificate"]["serial"] == json!(agent.state().cert_serial.unwrap())).then_some(())
    })
    .await;
    assert_eq!(view["status"], "connected");
}

#[tokio::test]
async fn state_survives_a_control_plane_restart_and_agents_reconnect() {
    let mut cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    let id = agent.wait_connected().await.agent_id.unwrap();
    let revoked = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    let (status, _) = cp.api(Method::DELETE, &format!("/v1/agents/{}", revoked.agent_id), None).await;
    assert_eq!(status, StatusCode::OK);
    let unused = cp.token(600, &[]).await;

    cp.restart().await;

    let state = agent.wait_state("reconnected after restart", |s| s.connected && s.sessions >= 2).await;
    assert_eq!(state.agent_id.as_deref(), Some(id.as_str()), "the agent kept its identity");
    cp.wait_agent_status(&id, "connected").await;
    assert_eq!(cp.agent_json(&revoked.agent_id).await["status"], "revoked");
    let c = raw::connect(cp.quic_addr(), &revoked.ca_pem, &revoked.cert_pem, &revoked.key_pem).await.unwrap();
    assert!(raw::hello(&c, &revoked.agent_id).await.is_err());
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::Revoked));
    // The admin token and the CA survived too: an unused token still enrolls.
    raw::enroll(cp.quic_addr(), &unused, &cp.ca().fingerprint()).await.unwrap();
}

#[tokio::test]
async fn agents_that_go_silent_are_marked_disconnected() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_millis(200)).spawn().await;
    let id = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &cp.ca().fingerprint()).await.unwrap();
    let (c, _send, _recv, welcome) = raw::session(cp.quic_addr(), &id).await.unwrap();
    assert_eq!(welcome.heartbeat_interval_ms, 200);
    cp.wait_agent_status(&id.agent_id, "connected").await;
    // Say nothing more: three intervals later the server ends the session.
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::HeartbeatTimeout));
    cp.wait_agent_status(&id.agent_id, "disconnected").await;
}
