//! An enrolled agent's session: Hello/Welcome, heartbeats, certificate renewal over the live
//! connection, and closing with a reason the agent can act on.

use std::time::Duration;

use ferry_certs::Validity;
use ferry_protocol::{
    AgentMessage, CertificateRenewed, CloseCode, ErrorCode, HeartbeatAck, ServerMessage, Welcome, WireError,
};
use ferry_transport::TransportError;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::HANDSHAKE_TIMEOUT;
use crate::AppState;
use crate::ids::{now_ms, random_id};

/// How long one frame may take to write before the session is considered dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended, as told to the agent.
struct End(CloseCode, String);

impl End {
    fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self(code, reason.into())
    }
}

pub async fn handle(conn: Connection, leaf_der: Vec<u8>, state: AppState, shutdown: watch::Receiver<bool>) {
    let remote = conn.remote_address();
    let info = match ferry_certs::cert_info(&leaf_der) {
        Ok(info) => info,
        Err(e) => {
            tracing::info!(%remote, error = %e, "unparsable client certificate");
            return ferry_transport::close(&conn, CloseCode::UnknownAgent, "unrecognised client certificate");
        }
    };
    let Some(agent_id) = info.agent_id else {
        return ferry_transport::close(&conn, CloseCode::UnknownAgent, "certificate names no agent");
    };
    match state.store.get_agent(&agent_id).await {
        Ok(Some(a)) if a.revoked_at.is_some() => {
            tracing::info!(%remote, %agent_id, "refused revoked agent");
            return ferry_transport::close(&conn, CloseCode::Revoked, "agent revoked");
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::info!(%remote, %agent_id, "refused unknown agent");
            return ferry_transport::close(&conn, CloseCode::UnknownAgent, "unknown agent");
        }
        Err(e) => {
            tracing::error!(error = %e, "store error at session start");
            return ferry_transport::close(&conn, CloseCode::InternalError, "try again later");
        }
    }
    let session = Session {
        conn: conn.clone(),
        state: state.clone(),
        agent_id: agent_id.clone(),
        session_id: random_id("sess"),
        cert_not_after_ms: (info.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
    };
    let End(code, reason) = session.run(shutdown).await;
    tracing::info!(%remote, %agent_id, ?code, %reason, "session ended");
    ferry_transport::close(&conn, code, &reason);
    state.sessions.remove(&agent_id, &session.session_id);
    if let Err(e) = state.store.end_session(&agent_id, &session.session_id).await {
        tracing::warn!(%agent_id, error = %e, "could not record session end");
    }
}

struct Session {
    conn: Connection,
    state: AppState,
    agent_id: String,
    session_id: String,
    cert_not_after_ms: i64,
}

fn transport_end(e: &TransportError) -> End {
    match e {
        TransportError::Frame(ferry_protocol::FrameError::TooLarge { .. }) => {
            End::new(CloseCode::FrameTooLarge, e.to_string())
        }
        TransportError::Frame(_) => End::new(CloseCode::ProtocolError, e.to_string()),
        TransportError::Timeout(d) => End::new(CloseCode::ProtocolError, format!("peer timed out after {d:?}")),
        _ => End::new(CloseCode::Normal, format!("connection lost: {e}")),
    }
}

impl Session {
    async fn run(&self, mut shutdown: watch::Receiver<bool>) -> End {
        let (mut send, mut recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::new(CloseCode::Normal, format!("connection lost: {e}")),
            Err(_) => return End::new(CloseCode::ProtocolError, "no control stream opened"),
        };
        let hello = match ferry_transport::read_frame_timeout::<AgentMessage>(&mut recv, HANDSHAKE_TIMEOUT).await {
            Ok(Some(AgentMessage::Hello(h))) => h,
            Ok(_) => return End::new(CloseCode::ProtocolError, "expected Hello"),
            Err(e) => return transport_end(&e),
        };
        if hello.agent_id != self.agent_id {
            let _ = self
                .error(&mut send, ErrorCode::IdentityMismatch, "Hello names another agent than the certificate")
                .await;
            return End::new(CloseCode::ProtocolError, "identity mismatch");
        }
        let Some(version) = ferry_protocol::negotiate(hello.protocol_min, hello.protocol_max) else {
            let msg = format!(
                "no common protocol version: agent speaks {}..={}, server {}..={}",
                hello.protocol_min,
                hello.protocol_max,
                ferry_protocol::PROTOCOL_VERSION_MIN,
                ferry_protocol::PROTOCOL_VERSION
            );
            let _ = self.error(&mut send, ErrorCode::UnsupportedVersion, &msg).await;
            return End::new(CloseCode::UnsupportedVersion, msg);
        };
        if ferry_protocol::limits::validate_name(&hello.name).is_err()
            || ferry_protocol::limits::validate_labels(&hello.labels).is_err()
        {
            let _ = self.error(&mut send, ErrorCode::InvalidRequest, "invalid name or labels in Hello").await;
            return End::new(CloseCode::ProtocolError, "invalid Hello");
        }
        let version_str: String = hello.agent_version.chars().take(64).collect();
        let started = self
            .state
            .store
            .start_session(&self.agent_id, &self.session_id, &hello.name, &version_str, &hello.labels, now_ms())
            .await;
        match started {
            Ok(Some(_)) => {}
            Ok(None) => return End::new(CloseCode::Revoked, "agent revoked"),
            Err(e) => {
                tracing::error!(error = %e, "store error at session start");
                return End::new(CloseCode::InternalError, "try again later");
            }
        }
        let intent_changed = self.state.sessions.insert(&self.agent_id, &self.session_id, self.conn.clone());
        let interval = self.state.config.heartbeat_interval;
        let welcome = ServerMessage::Welcome(Welcome {
            protocol_version: version,
            agent_id: self.agent_id.clone(),
            heartbeat_interval_ms: interval.as_millis() as u32,
            server_time_ms: now_ms() as u64,
        });
        if let Err(e) = ferry_transport::write_frame_timeout(&mut send, &welcome, WRITE_TIMEOUT).await {
            return transport_end(&e);
        }
        // Telemetry (log batches) arrives on further streams of this connection, off this task.
        let telemetry = tokio::spawn(super::telemetry::serve(
            self.conn.clone(),
            self.agent_id.clone(),
            self.state.clone(),
            shutdown.clone(),
        ));
        let _abort_telemetry = AbortOnDrop(telemetry);
        tracing::info!(agent_id = %self.agent_id, session_id = %self.session_id, name = %hello.name,
            last_generation = hello.last_generation, "session started");
        match self.state.store.lift_generation(&self.agent_id, hello.last_generation, now_ms()).await {
            Ok(true) => {
                tracing::warn!(agent_id = %self.agent_id, agent_generation = hello.last_generation,
                    "the agent is ahead of the store (restored database?); its intent moves past it");
                self.state.reconciler.poke();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(agent_id = %self.agent_id, error = %e, "could not compare generations"),
        }
        let mut sent = 0;
        if let Err(e) = self.push_intent(&mut send, &mut sent).await {
            return transport_end(&e);
        }
        self.serve(send, recv, &mut shutdown, &intent_changed, sent).await
    }

    async fn serve(
        &self,
        mut send: SendStream,
        recv: RecvStream,
        shutdown: &mut watch::Receiver<bool>,
        intent_changed: &tokio::sync::Notify,
        mut sent: u64,
    ) -> End {
        let mut frames = spawn_reader(recv);
        let silence_limit = self.state.config.heartbeat_timeout();
        let mut deadline = Instant::now() + silence_limit;
        let mut cert_expiry = expiry_instant(self.cert_not_after_ms);
        loop {
            let msg = tokio::select! {
                msg = frames.recv() => Some(msg),
                _ = tokio::time::sleep_until(deadline) => {
                    return End::new(CloseCode::HeartbeatTimeout, format!("no heartbeat for {silence_limit:?}"));
                }
                _ = tokio::time::sleep_until(cert_expiry) => {
                    return End::new(CloseCode::CertificateExpired, "client certificate expired without renewal");
                }
                _ = shutdown.wait_for(|s| *s) => return End::new(CloseCode::Normal, "control plane stopping"),
                _ = intent_changed.notified() => None,
                e = self.conn.closed() => return End::new(CloseCode::Normal, format!("connection closed: {e}")),
            };
            let Some(msg) = msg else {
                if let Err(e) = self.push_intent(&mut send, &mut sent).await {
                    return transport_end(&e);
                }
                continue;
            };
            let msg = match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return transport_end(&e),
                None => return End::new(CloseCode::Normal, "agent closed its control stream"),
            };
            deadline = Instant::now() + silence_limit;
            let reply = match msg {
                AgentMessage::Heartbeat(hb) => {
                    match self.state.store.heartbeat(&self.agent_id, &self.session_id, now_ms()).await {
                        Ok(true) => {}
                        Ok(false) => return self.lost_ownership().await,
                        Err(e) => {
                            tracing::warn!(agent_id = %self.agent_id, error = %e, "could not record heartbeat")
                        }
                    }
                    // Intent changed by another control-plane replica reaches the agent here.
                    if let Err(e) = self.push_intent(&mut send, &mut sent).await {
                        return transport_end(&e);
                    }
                    Some(ServerMessage::HeartbeatAck(HeartbeatAck { seq: hb.seq, server_time_ms: now_ms() as u64 }))
                }
                AgentMessage::RenewCertificate(req) => match self.renew(&req.csr_pem).await {
                    Ok(renewed) => {
                        cert_expiry = expiry_instant(renewed.not_after_ms as i64);
                        Some(ServerMessage::CertificateRenewed(renewed))
                    }
                    Err(err) => Some(ServerMessage::Error(err)),
                },
                AgentMessage::Ack(ack) => {
                    let error = match &ack.outcome {
                        ferry_protocol::AckOutcome::Rejected { reason } => {
                            tracing::warn!(agent_id = %self.agent_id, generation = ack.generation, %reason, "assignment rejected");
                            // Offer it again at the next heartbeat (the cause may be transient).
                            sent = sent.min(ack.generation.saturating_sub(1));
                            Some(reason.as_str())
                        }
                        _ => None,
                    };
                    if let Err(e) = self.state.store.record_ack(&self.agent_id, ack.generation, error).await {
                        tracing::warn!(agent_id = %self.agent_id, error = %e, "could not record ack");
                    }
                    None
                }
                AgentMessage::Status(status) => {
                    if let Err(e) = self.state.store.record_status(&self.agent_id, &status, now_ms()).await {
                        tracing::warn!(agent_id = %self.agent_id, error = %e, "could not record status");
                    }
                    self.state.reconciler.poke();
                    None
                }
                AgentMessage::LogBatch(_) | AgentMessage::MetricBatch(_) => {
                    return End::new(CloseCode::ProtocolError, "telemetry belongs on its own stream");
                }
                AgentMessage::Error(err) => {
                    tracing::warn!(agent_id = %self.agent_id, code = ?err.code, message = %err.message, "agent reported an error");
                    None
                }
                AgentMessage::Enroll(_) | AgentMessage::Hello(_) => {
                    return End::new(CloseCode::ProtocolError, "unexpected message in an established session");
                }
            };
            if let Some(reply) = reply
                && let Err(e) = ferry_transport::write_frame_timeout(&mut send, &reply, WRITE_TIMEOUT).await
            {
                return transport_end(&e);
            }
        }
    }

    /// Sends the agent's current intent if it is newer than what this session already sent.
    async fn push_intent(&self, send: &mut SendStream, sent: &mut u64) -> Result<(), TransportError> {
        let intent = match self.state.store.intent(&self.agent_id).await {
            Ok(Some(a)) if a.generation > *sent => a,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(agent_id = %self.agent_id, error = %e, "could not read intent");
                return Ok(());
            }
        };
        let generation = intent.generation;
        ferry_transport::write_frame_timeout(send, &ServerMessage::Assignment(intent), WRITE_TIMEOUT).await?;
        *sent = generation;
        tracing::debug!(agent_id = %self.agent_id, generation, "assignment sent");
        Ok(())
    }

    /// The heartbeat no longer matched our session: revoked, or replaced by a newer session.
    async fn lost_ownership(&self) -> End {
        match self.state.store.get_agent(&self.agent_id).await {
            Ok(Some(a)) if a.revoked_at.is_some() => End::new(CloseCode::Revoked, "agent revoked"),
            Ok(None) => End::new(CloseCode::UnknownAgent, "unknown agent"),
            _ => End::new(CloseCode::Superseded, "a newer session replaced this one"),
        }
    }

    async fn renew(&self, csr_pem: &str) -> Result<CertificateRenewed, WireError> {
        let issued = self
            .state
            .ca
            .sign_agent_csr(csr_pem, &self.agent_id, Validity::from_now(self.state.config.agent_cert_lifetime))
            .map_err(|e| WireError { code: ErrorCode::InvalidCsr, message: e.to_string() })?;
        let not_after_ms = (issued.not_after.unix_timestamp_nanos() / 1_000_000) as i64;
        self.state.store.update_certificate(&self.agent_id, &issued.serial, not_after_ms).await.map_err(|e| {
            tracing::error!(error = %e, "could not record renewed certificate");
            WireError { code: ErrorCode::Internal, message: "internal error".into() }
        })?;
        tracing::info!(agent_id = %self.agent_id, serial = %issued.serial, "certificate renewed");
        Ok(CertificateRenewed { certificate_pem: issued.cert_pem, not_after_ms: not_after_ms as u64 })
    }

    async fn error(&self, send: &mut SendStream, code: ErrorCode, message: &str) -> Result<(), TransportError> {
        ferry_transport::write_frame_timeout(
            send,
            &ServerMessage::Error(WireError { code, message: message.into() }),
            WRITE_TIMEOUT,
        )
        .await?;
        let _ = send.finish();
        // Give the agent a moment to read the reason before the connection is closed.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.conn.closed()).await;
        Ok(())
    }
}

/// Aborts a task when the session that spawned it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads frames on a task of their own (reads are not cancel-safe inside `select!`).
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<AgentMessage, TransportError>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let r = ferry_transport::read_frame::<AgentMessage>(&mut recv).await;
            let stop = !matches!(r, Ok(Some(_)));
            match r {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
            if stop {
                return;
            }
        }
    });
    rx
}

fn expiry_instant(not_after_ms: i64) -> Instant {
    let left = (not_after_ms - now_ms()).max(0) as u64;
    Instant::now() + Duration::from_millis(left)
}
