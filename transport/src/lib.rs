//! QUIC plumbing shared by the control plane and the agent: endpoint construction with sane
//! transport limits, and framed reading/writing of protocol messages on quinn streams.
//!
//! Neither side's logic lives here; this crate only knows bytes, frames and timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::frame::{self, FrameError, HEADER_LEN, MAX_FRAME_LEN};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::{Serialize, de::DeserializeOwned};

pub use ferry_protocol::CloseCode;

/// How long a connection may stay silent before QUIC declares it dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC keep-alive period (below the idle timeout, so NAT bindings and idle sessions survive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("endpoint: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// The close code, when the peer closed the connection with one of Ferry's codes.
    pub fn close_code(&self) -> Option<(CloseCode, String)> {
        let conn_err = match self {
            TransportError::Connection(e) => e,
            TransportError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => e,
            TransportError::Write(quinn::WriteError::ConnectionLost(e)) => e,
            _ => return None,
        };
        match conn_err {
            quinn::ConnectionError::ApplicationClosed(close) => CloseCode::from_u64(close.error_code.into_inner())
                .map(|c| (c, String::from_utf8_lossy(&close.reason).into_owned())),
            _ => None,
        }
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits")));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // One control stream plus a few telemetry streams per agent.
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(16u32.into());
    Arc::new(t)
}

/// A server endpoint bound to `addr`.
pub fn server_endpoint(addr: SocketAddr, tls: rustls::ServerConfig) -> Result<Endpoint, TransportError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(Endpoint::server(cfg, addr)?)
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(server: SocketAddr) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr =
        if server.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("literal address");
    Ok(Endpoint::client(bind)?)
}

/// quinn client configuration from a rustls one.
pub fn client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// Dials `server` and completes the handshake within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    cfg: quinn::ClientConfig,
    server: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    let connecting = endpoint.connect_with(cfg, server, server_name)?;
    tokio::time::timeout(timeout, connecting).await.map_err(|_| TransportError::Timeout(timeout))?.map_err(Into::into)
}

/// Closes `conn` with one of Ferry's close codes and a short human-readable reason.
pub fn close(conn: &Connection, code: CloseCode, reason: &str) {
    conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
}

/// Writes one framed message.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), TransportError> {
    let bytes = frame::encode_frame(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Writes one framed message, giving up after `timeout` (a peer that stops reading must not
/// block the writer forever: QUIC flow control would otherwise stall the write indefinitely).
pub async fn write_frame_timeout<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
    timeout: Duration,
) -> Result<(), TransportError> {
    tokio::time::timeout(timeout, write_frame(send, msg)).await.map_err(|_| TransportError::Timeout(timeout))?
}

/// Reads one framed message. `Ok(None)` means the peer finished the stream cleanly between
/// frames. The length is checked before the payload buffer is allocated.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<Option<T>, TransportError> {
    read_frame_max(recv, MAX_FRAME_LEN).await
}

pub async fn read_frame_max<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::payload_len(header, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(frame::decode_body(&body)?))
}

/// A framed message read with a deadline.
pub async fn read_frame_timeout<T: DeserializeOwned>(
    recv: &mut RecvStream,
    timeout: Duration,
) -> Result<Option<T>, TransportError> {
    tokio::time::timeout(timeout, read_frame(recv)).await.map_err(|_| TransportError::Timeout(timeout))?
}

/// The DER of the peer's leaf certificate, if it presented one.
pub fn peer_leaf_der(conn: &Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| c.as_ref().to_vec())
}
