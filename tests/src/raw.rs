//! Raw protocol clients: speak Ferry's protocol directly, without the agent's policies, so tests
//! can present forged certificates, send garbage or fall silent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_protocol::{AgentMessage, Enroll, Hello, ServerMessage, Welcome};
use ferry_transport::TransportError;
use quinn::{Connection, Endpoint, RecvStream, SendStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// An agent identity: what enrollment yields.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// A connection together with the endpoint that drives it.
pub struct Conn {
    pub endpoint: Endpoint,
    pub conn: Connection,
}

async fn dial(addr: SocketAddr, tls: rustls::ClientConfig) -> Result<Conn, TransportError> {
    let endpoint = ferry_transport::client_endpoint(addr)?;
    let cfg = ferry_transport::client_config(tls)?;
    let conn = ferry_transport::connect(&endpoint, cfg, addr, ferry_certs::CONTROL_PLANE_NAME, TIMEOUT).await?;
    Ok(Conn { endpoint, conn })
}

/// Enrolls with `token` and returns the identity, or the server's refusal message.
pub async fn enroll(addr: SocketAddr, token: &str, ca_fingerprint: &str) -> Result<Identity, String> {
    let tls =
        ferry_certs::tls::enrollment_client_config(ca_fingerprint, ferry_protocol::ALPN).map_err(|e| e.to_string())?;
    let c = dial(addr, tls).await.map_err(|e| e.to_string())?;
    let key = ferry_certs::generate_key().map_err(|e| e.to_string())?;
    let (mut send, mut recv) = c.conn.open_bi().await.map_err(|e| e.to_string())?;
    let msg = AgentMessage::Enroll(Enroll {
        token: token.into(),
        csr_pem: ferry_certs::csr_pem(&key, "raw").map_err(|e| e.to_string())?,
        name: "raw".into(),
        labels: BTreeMap::new(),
        agent_version: "test".into(),
    });
    ferry_transport::write_frame(&mut send, &msg).await.map_err(|e| e.to_string())?;
    let reply =
        ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, TIMEOUT).await.map_err(|e| e.to_string())?;
    ferry_transport::close(&c.conn, ferry_protocol::CloseCode::Normal, "done");
    match reply {
        Some(ServerMessage::Enrolled(e)) => Ok(Identity {
            agent_id: e.agent_id,
            cert_pem: e.certificate_pem,
            key_pem: key.serialize_pem(),
            ca_pem: e.ca_pem,
        }),
        Some(ServerMessage::Error(e)) => Err(format!("{:?}: {}", e.code, e.message)),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Connects with a client certificate. A refused certificate may only show on first use.
pub async fn connect(addr: SocketAddr, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Conn, TransportError> {
    let tls = ferry_certs::tls::client_config(ca_pem, cert_pem, key_pem, ferry_protocol::ALPN)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    dial(addr, tls).await
}

/// Opens the control stream, says Hello and reads the Welcome: the round trip that proves the
/// server accepted the session.
pub async fn hello(c: &Conn, agent_id: &str) -> Result<(SendStream, RecvStream, Welcome), TransportError> {
    hello_at(c, agent_id, 0).await
}

/// [`hello`] from an agent that says it last applied `last_generation`. It speaks protocol 1
/// only, as agents built before intent deltas do (see [`hello_with`]).
pub async fn hello_at(
    c: &Conn,
    agent_id: &str,
    last_generation: u64,
) -> Result<(SendStream, RecvStream, Welcome), TransportError> {
    hello_with(c, agent_id, last_generation, 1).await
}

/// Hello from an agent speaking protocols `1..=protocol_max` that runs processes.
pub async fn hello_with(
    c: &Conn,
    agent_id: &str,
    last_generation: u64,
    protocol_max: u16,
) -> Result<(SendStream, RecvStream, Welcome), TransportError> {
    let (mut send, mut recv) = c.conn.open_bi().await?;
    let msg = AgentMessage::Hello(Hello {
        protocol_min: ferry_protocol::PROTOCOL_VERSION_MIN,
        protocol_max,
        agent_id: agent_id.into(),
        agent_version: "test".into(),
        name: "raw".into(),
        labels: BTreeMap::new(),
        capabilities: vec!["runtime:process".into()],
        last_generation,
    });
    ferry_transport::write_frame(&mut send, &msg).await?;
    match ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, TIMEOUT).await? {
        Some(ServerMessage::Welcome(w)) => Ok((send, recv, w)),
        other => Err(TransportError::Tls(format!("expected Welcome, got {other:?}"))),
    }
}

/// Connects with `identity` and completes Hello/Welcome speaking protocol 2 (intent deltas).
pub async fn session_v2(
    addr: SocketAddr,
    id: &Identity,
) -> Result<(Conn, SendStream, RecvStream, Welcome), TransportError> {
    let c = connect(addr, &id.ca_pem, &id.cert_pem, &id.key_pem).await?;
    let (send, recv, welcome) = hello_with(&c, &id.agent_id, 0, 2).await?;
    Ok((c, send, recv, welcome))
}

/// Connects with `identity` and completes Hello/Welcome (protocol 1).
pub async fn session(
    addr: SocketAddr,
    id: &Identity,
) -> Result<(Conn, SendStream, RecvStream, Welcome), TransportError> {
    let c = connect(addr, &id.ca_pem, &id.cert_pem, &id.key_pem).await?;
    let (send, recv, welcome) = hello(&c, &id.agent_id).await?;
    Ok((c, send, recv, welcome))
}

/// Waits for the server to close `conn` and returns its close code, if it used one of Ferry's.
pub async fn closed_with(conn: &Connection) -> Option<ferry_protocol::CloseCode> {
    let err = tokio::time::timeout(TIMEOUT, conn.closed()).await.expect("server closes the connection");
    TransportError::Connection(err).close_code().map(|(code, _)| code)
}

/// Splits an agent's `client.pem` (certificate, then key) into its two PEM blocks.
pub fn split_client_pem(pem: &str) -> (String, String) {
    let idx = pem.find("-----BEGIN PRIVATE KEY-----").expect("private key block in client.pem");
    (pem[..idx].to_string(), pem[idx..].to_string())
}
