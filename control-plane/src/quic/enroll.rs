//! Enrollment: token + CSR in, certificate out, over a connection on which the agent pinned our
//! CA by the fingerprint in its token.

use std::time::Duration;

use ferry_certs::Validity;
use ferry_protocol::{AgentMessage, CloseCode, Enroll, Enrolled, ErrorCode, ServerMessage, WireError};
use quinn::Connection;

use super::HANDSHAKE_TIMEOUT;
use crate::AppState;
use crate::ids::{hash_secret, now_ms, random_id};
use crate::store::{EnrollRefusal, NewAgent};
use crate::tokens::BootstrapToken;

/// An enrollment request is small: a token, a CSR and a few labels.
const MAX_ENROLL_FRAME: usize = 64 * 1024;

pub async fn handle(conn: Connection, state: AppState) {
    let remote = conn.remote_address();
    let (mut send, mut recv) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            return ferry_transport::close(&conn, CloseCode::ProtocolError, "expected an enrollment request");
        }
    };
    let msg = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        ferry_transport::read_frame_max::<AgentMessage>(&mut recv, MAX_ENROLL_FRAME),
    )
    .await;
    let req = match msg {
        Ok(Ok(Some(AgentMessage::Enroll(req)))) => req,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "bad enrollment frame");
            let code = match e {
                ferry_transport::TransportError::Frame(ferry_protocol::FrameError::TooLarge { .. }) => {
                    CloseCode::FrameTooLarge
                }
                _ => CloseCode::ProtocolError,
            };
            return ferry_transport::close(&conn, code, "undecodable enrollment request");
        }
        _ => {
            tracing::info!(%remote, "connection without a client certificate sent no enrollment request");
            return ferry_transport::close(&conn, CloseCode::ProtocolError, "a client certificate is required");
        }
    };
    let (reply, code) = match enroll(&state, req).await {
        Ok(enrolled) => {
            tracing::info!(%remote, agent_id = %enrolled.agent_id, "agent enrolled");
            (ServerMessage::Enrolled(enrolled), CloseCode::Normal)
        }
        Err(err) => {
            tracing::info!(%remote, code = ?err.code, message = %err.message, "enrollment refused");
            (ServerMessage::Error(err), CloseCode::EnrollmentRejected)
        }
    };
    if ferry_transport::write_frame_timeout(&mut send, &reply, HANDSHAKE_TIMEOUT).await.is_ok() {
        let _ = send.finish();
        // The client closes once it has read the reply; closing first could discard it.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    ferry_transport::close(&conn, code, "enrollment finished");
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError { code, message: message.into() }
}

async fn enroll(state: &AppState, req: Enroll) -> Result<Enrolled, WireError> {
    let token = BootstrapToken::parse(&req.token)
        .ok_or_else(|| refuse(ErrorCode::TokenUnknown, "malformed bootstrap token"))?;
    if token.ca_fingerprint != state.ca.fingerprint() {
        return Err(refuse(ErrorCode::TokenUnknown, "the token was issued by another control plane"));
    }
    ferry_protocol::limits::validate_name(&req.name).map_err(|m| refuse(ErrorCode::InvalidRequest, m))?;
    ferry_protocol::limits::validate_labels(&req.labels).map_err(|m| refuse(ErrorCode::InvalidRequest, m))?;
    let agent_id = random_id("agent");
    let issued = state
        .ca
        .sign_agent_csr(&req.csr_pem, &agent_id, Validity::from_now(state.config.agent_cert_lifetime))
        .map_err(|e| refuse(ErrorCode::InvalidCsr, e.to_string()))?;
    let agent = NewAgent {
        id: agent_id.clone(),
        name: req.name,
        labels: req.labels,
        version: req.agent_version.chars().take(64).collect(),
        cert_serial: issued.serial,
        cert_not_after: (issued.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
    };
    let outcome = state.store.enroll(&token.id, &hash_secret(&token.secret), &agent, now_ms()).await.map_err(|e| {
        tracing::error!(error = %e, "enrollment store error");
        refuse(ErrorCode::Internal, "internal error")
    })?;
    match outcome {
        Ok(_) => Ok(Enrolled { agent_id, certificate_pem: issued.cert_pem, ca_pem: state.ca.cert_pem().to_string() }),
        Err(EnrollRefusal::Unknown) => Err(refuse(ErrorCode::TokenUnknown, "unknown bootstrap token")),
        Err(EnrollRefusal::Used) => Err(refuse(ErrorCode::TokenUsed, "bootstrap token already used")),
        Err(EnrollRefusal::Expired) => Err(refuse(ErrorCode::TokenExpired, "bootstrap token expired")),
    }
}
