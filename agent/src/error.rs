//! The agent's error type and its one important property: whether retrying can help.

use ferry_protocol::CloseCode;
use ferry_transport::TransportError;

use crate::config::ConfigError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("not enrolled: pass --token")]
    NotEnrolled,
    #[error("the agent certificate expired at {at}; re-enroll with a new token (--token)")]
    CertificateExpired { at: String },
    #[error("enrollment refused by the control plane: {0}")]
    EnrollmentRefused(String),
    #[error("invalid enrollment response: {0}")]
    BadEnrollment(String),
    #[error(
        "the control plane at {server} does not hold the CA the token pins (SHA-256 {fingerprint}); \
         check --server, or get a token from this control plane"
    )]
    CaPinMismatch { server: String, fingerprint: String },
    #[error("agent {agent_id} was revoked by the control plane; re-enroll with a new token")]
    Revoked { agent_id: String },
    #[error("the control plane does not know agent {agent_id}; re-enroll with a new token")]
    UnknownAgent { agent_id: String },
    #[error("local certificate material is unusable: {0}")]
    Certificate(#[from] ferry_certs::CertError),
    #[error("cannot resolve {server}: {reason}")]
    Resolve { server: String, reason: String },
    #[error("{context}: {source}")]
    Transport {
        context: &'static str,
        #[source]
        source: TransportError,
    },
    #[error("the control plane rejected our client certificate (TLS alert: {alert})")]
    CertificateRejected { alert: String },
    #[error("the control plane closed the connection ({code:?}): {reason}")]
    Closed { code: CloseCode, reason: String },
    #[error("no message from the control plane for {0:?}")]
    ServerSilent(std::time::Duration),
    #[error("control plane error: {0}")]
    Server(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl AgentError {
    /// Whether the agent must stop: retrying with the same configuration and identity cannot
    /// succeed. Everything else is retried with backoff.
    pub fn is_terminal(&self) -> bool {
        match self {
            AgentError::Config(_)
            | AgentError::State(_)
            | AgentError::NotEnrolled
            | AgentError::CertificateExpired { .. }
            | AgentError::EnrollmentRefused(_)
            | AgentError::BadEnrollment(_)
            | AgentError::CaPinMismatch { .. }
            | AgentError::Revoked { .. }
            | AgentError::UnknownAgent { .. }
            | AgentError::Certificate(_) => true,
            AgentError::Resolve { .. }
            | AgentError::Transport { .. }
            | AgentError::CertificateRejected { .. }
            | AgentError::Closed { .. }
            | AgentError::ServerSilent(_)
            | AgentError::Server(_)
            | AgentError::Protocol(_) => false,
        }
    }

    /// The error for a connection the control plane closed with `code`.
    pub fn closed(code: CloseCode, reason: String, agent_id: &str) -> Self {
        match code {
            CloseCode::Revoked => AgentError::Revoked { agent_id: agent_id.to_string() },
            CloseCode::UnknownAgent => AgentError::UnknownAgent { agent_id: agent_id.to_string() },
            code => AgentError::Closed { code, reason },
        }
    }

    /// Classifies a transport failure of an enrolled agent's session: a Ferry close code first,
    /// then a TLS alert (the server refusing our certificate), else a plain network error.
    pub fn from_transport(context: &'static str, e: TransportError, agent_id: &str) -> Self {
        if let Some((code, reason)) = e.close_code() {
            return Self::closed(code, reason, agent_id);
        }
        if let Some(alert) = tls_alert(&e) {
            return AgentError::CertificateRejected { alert };
        }
        AgentError::Transport { context, source: e }
    }
}

/// Whether *we* ended a handshake because the server's chain does not lead to a CA we trust:
/// rustls answers a verifier's `UnknownIssuer` with an `unknown_ca` alert, which quinn reports
/// as a locally raised transport error (a peer's alert would be `ConnectionClosed` instead).
/// During enrollment the only verifier is the token's CA pin, so this is a pin mismatch.
pub(crate) fn we_rejected_unknown_ca(e: &TransportError) -> bool {
    let unknown_ca = quinn::TransportErrorCode::crypto(u8::from(rustls::AlertDescription::UnknownCA));
    matches!(e, TransportError::Connection(quinn::ConnectionError::TransportError(t)) if t.code == unknown_ca)
}

/// When the peer ended the handshake because of our certificate: the alert it sent and its
/// reason. (A connection *we* closed because of the server's certificate is a local
/// transport error instead, and is not matched.)
fn tls_alert(e: &TransportError) -> Option<String> {
    let conn_err = match e {
        TransportError::Connection(c) => c,
        TransportError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c))) => c,
        TransportError::Write(quinn::WriteError::ConnectionLost(c)) => c,
        _ => return None,
    };
    let quinn::ConnectionError::ConnectionClosed(close) = conn_err else { return None };
    let code = u64::from(close.error_code);
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let reason = String::from_utf8_lossy(&close.reason);
    let name = match code - 0x100 {
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        116 => "certificate_required",
        // rustls answers a bad signature with decrypt_error and an unparsable certificate with
        // decode_error; its reason text tells those apart from other handshake failures.
        50 if reason.contains("peer certificate") => "decode_error",
        51 if reason.contains("peer certificate") => "decrypt_error",
        _ => return None,
    };
    Some(if reason.is_empty() { name.to_string() } else { format!("{name}: {reason}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_close_codes_stop_the_agent() {
        let revoked = AgentError::closed(CloseCode::Revoked, "revoked".into(), "agent-1");
        assert!(revoked.is_terminal());
        assert_eq!(revoked.to_string(), "agent agent-1 was revoked by the control plane; re-enroll with a new token");
        assert!(AgentError::closed(CloseCode::UnknownAgent, String::new(), "a").is_terminal());
        for code in [
            CloseCode::Normal,
            CloseCode::HeartbeatTimeout,
            CloseCode::Superseded,
            CloseCode::CertificateExpired,
            CloseCode::ProtocolError,
            CloseCode::InternalError,
        ] {
            assert!(!AgentError::closed(code, String::new(), "a").is_terminal(), "{code:?}");
        }
        assert!(AgentError::NotEnrolled.is_terminal());
        assert!(!AgentError::Protocol("x".into()).is_terminal());
    }

    #[test]
    fn our_unknown_ca_alert_is_recognised() {
        let local = |alert: rustls::AlertDescription| {
            let code = quinn::TransportErrorCode::crypto(u8::from(alert));
            TransportError::Connection(quinn::ConnectionError::TransportError(code.into()))
        };
        assert!(we_rejected_unknown_ca(&local(rustls::AlertDescription::UnknownCA)));
        assert!(!we_rejected_unknown_ca(&local(rustls::AlertDescription::CertificateExpired)));
        assert!(!we_rejected_unknown_ca(&local(rustls::AlertDescription::BadCertificate)));
        assert!(!we_rejected_unknown_ca(&TransportError::Connection(quinn::ConnectionError::TimedOut)));
        let pin = AgentError::CaPinMismatch { server: "cp:7701".into(), fingerprint: "ab".into() };
        assert!(pin.is_terminal());
    }
}
