//! Hostile bytes on the wire: garbage and oversized frames close only the offending connection.

use ferry_protocol::CloseCode;
use ferry_tests::{Agent, ControlPlane, DEADLINE, eventually, raw};

/// Asserts a well-behaved agent keeps heartbeating through whatever the test did.
async fn still_served(cp: &ControlPlane, agent: &Agent, id: &str) {
    let before = cp.agent_json(id).await["lastHeartbeat"].as_str().unwrap().to_string();
    eventually("a fresh heartbeat from the healthy agent", DEADLINE, || async {
        let v = cp.agent_json(id).await;
        (v["status"] == "connected" && v["lastHeartbeat"].as_str() != Some(before.as_str())).then_some(())
    })
    .await;
    assert_eq!(agent.state().sessions, 1, "the healthy agent's session was disturbed");
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_that_connection_only() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    let id = agent.wait_connected().await.agent_id.unwrap();
    let fp = cp.ca().fingerprint();
    let bad = raw::enroll(cp.quic_addr(), &cp.token(600, &[]).await, &fp).await.unwrap();

    // 1. Garbage instead of Hello.
    let c = raw::connect(cp.quic_addr(), &bad.ca_pem, &bad.cert_pem, &bad.key_pem).await.unwrap();
    let (mut send, _recv) = c.conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]).await.unwrap();
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::ProtocolError));
    still_served(&cp, &agent, &id).await;

    // 2. Garbage in an established session.
    let (c, mut send, _recv, _) = raw::session(cp.quic_addr(), &bad).await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xc8, 0x01, 0x02]).await.unwrap();
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::ProtocolError));

    // 3. A header announcing a 4 GiB frame: refused before any payload is read or allocated.
    let (c, mut send, _recv, _) = raw::session(cp.quic_addr(), &bad).await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::FrameTooLarge));

    // 4. An unauthenticated connection that sends garbage instead of enrolling.
    let tls = ferry_certs::tls::enrollment_client_config(&fp, ferry_protocol::ALPN).unwrap();
    let endpoint = ferry_transport::client_endpoint(cp.quic_addr()).unwrap();
    let cfg = ferry_transport::client_config(tls).unwrap();
    let conn = ferry_transport::connect(&endpoint, cfg, cp.quic_addr(), ferry_certs::CONTROL_PLANE_NAME, DEADLINE)
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 1, 0, 1]).await.unwrap(); // 64 KiB + 1: over the enrollment limit
    assert_eq!(raw::closed_with(&conn).await, Some(CloseCode::FrameTooLarge));

    // 5. A message out of place: telemetry on the control stream.
    let (c, mut send, _recv, _) = raw::session(cp.quic_addr(), &bad).await.unwrap();
    let batch = ferry_protocol::AgentMessage::LogBatch(ferry_protocol::LogBatch {
        source: "x".into(),
        first_seq: 0,
        lines: vec![],
    });
    ferry_transport::write_frame(&mut send, &batch).await.unwrap();
    assert_eq!(raw::closed_with(&c.conn).await, Some(CloseCode::ProtocolError));

    still_served(&cp, &agent, &id).await;
    // The offender may come back with a proper session.
    raw::session(cp.quic_addr(), &bad).await.unwrap();
}
