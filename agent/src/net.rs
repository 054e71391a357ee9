//! Dialing the control plane and bounded network waits.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_protocol::{AgentMessage, CloseCode};
use ferry_transport::TransportError;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::watch;

use crate::error::AgentError;

/// DNS resolution, QUIC + TLS handshake, opening a stream, writing a frame: each gets this long.
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the control plane's first answer (Enrolled or Welcome).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// After closing a live connection, how long to let the endpoint deliver the close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// After the control plane ended a stream, how long to wait for its close code.
const CLOSE_CAUSE_WAIT: Duration = Duration::from_secs(2);

/// Resolves `HOST:PORT` (a DNS name is looked up on every dial).
pub(crate) async fn resolve(server: &str) -> Result<SocketAddr, AgentError> {
    let err = |reason: String| AgentError::Resolve { server: server.to_string(), reason };
    let addrs = tokio::time::timeout(NET_TIMEOUT, tokio::net::lookup_host(server))
        .await
        .map_err(|_| err(format!("timed out after {NET_TIMEOUT:?}")))?
        .map_err(|e| err(e.to_string()))?;
    let addrs: Vec<SocketAddr> = addrs.collect();
    // Prefer IPv4 when both families are offered: it works on more networks.
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()).copied().ok_or_else(|| err("no address found".into()))
}

/// One QUIC connection and the endpoint it lives on.
pub(crate) struct Link {
    endpoint: Endpoint,
    pub conn: Connection,
}

impl Link {
    /// Resolves `server`, binds an ephemeral UDP port and completes the handshake.
    pub async fn dial(server: &str, server_name: &str, tls: rustls::ClientConfig) -> Result<Link, AgentError> {
        let transport = |context| move |source| AgentError::Transport { context, source };
        let addr = resolve(server).await?;
        let endpoint = ferry_transport::client_endpoint(addr).map_err(transport("bind"))?;
        let cfg = ferry_transport::client_config(tls).map_err(transport("TLS setup"))?;
        let conn = ferry_transport::connect(&endpoint, cfg, addr, server_name, NET_TIMEOUT)
            .await
            .map_err(transport("connect"))?;
        tracing::debug!(%addr, "connected");
        Ok(Link { endpoint, conn })
    }

    /// Opens the control stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        tokio::time::timeout(NET_TIMEOUT, self.conn.open_bi())
            .await
            .map_err(|_| TransportError::Timeout(NET_TIMEOUT))?
            .map_err(Into::into)
    }

    /// Why the peer closed the connection, waiting briefly for it to do so.
    pub async fn close_cause(&self) -> Option<TransportError> {
        tokio::time::timeout(CLOSE_CAUSE_WAIT, self.conn.closed()).await.ok().map(TransportError::Connection)
    }

    /// Closes the connection with `code` unless it is closed already (by either side).
    pub fn close_now(&self, code: CloseCode, reason: &str) {
        if self.conn.close_reason().is_none() {
            ferry_transport::close(&self.conn, code, reason);
        }
    }

    /// Closes the connection like [`Self::close_now`] and, when this side closed it, gives the
    /// endpoint a moment to deliver the close frame.
    pub async fn close(self, code: CloseCode, reason: &str) {
        self.close_now(code, reason);
        if matches!(self.conn.close_reason(), Some(quinn::ConnectionError::LocallyClosed)) {
            let _ = tokio::time::timeout(CLOSE_LINGER, self.endpoint.wait_idle()).await;
        }
    }
}

/// Writes one message with a deadline.
pub(crate) async fn send(stream: &mut SendStream, msg: &AgentMessage) -> Result<(), TransportError> {
    tokio::time::timeout(NET_TIMEOUT, ferry_transport::write_frame(stream, msg))
        .await
        .map_err(|_| TransportError::Timeout(NET_TIMEOUT))?
}

/// Resolves once shutdown is requested. A dropped sender means nobody can ask any more: that
/// never resolves.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_literals_and_names() {
        assert_eq!(resolve("127.0.0.1:7701").await.unwrap(), "127.0.0.1:7701".parse().unwrap());
        assert_eq!(resolve("[::1]:7701").await.unwrap(), "[::1]:7701".parse().unwrap());
        assert_eq!(resolve("localhost:7701").await.unwrap().port(), 7701);
        assert!(matches!(resolve("nonexistent.invalid:1").await, Err(AgentError::Resolve { .. })));
    }

    #[tokio::test]
    async fn dropped_shutdown_sender_never_resolves() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_millis(50), shutdown_requested(&mut rx)).await;
        assert!(waited.is_err());
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        shutdown_requested(&mut rx).await;
    }
}
