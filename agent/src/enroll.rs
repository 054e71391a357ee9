//! Enrollment: trade the bootstrap token and a CSR for a certificate, over a connection on
//! which the control plane's CA is pinned by the fingerprint carried in the token.

use ferry_protocol::{AgentMessage, CloseCode, Enroll, Enrolled, ErrorCode, ServerMessage, WireError};
use ferry_transport::TransportError;

use crate::config::AgentConfig;
use crate::credentials::Credentials;
use crate::error::{AgentError, we_rejected_unknown_ca};
use crate::net::{self, Link, REPLY_TIMEOUT};
use crate::state::StateDir;
use crate::token::{ParsedToken, parse_token};

/// Enrolls with `token` and persists the new identity. Network failures are retryable;
/// refusals, and a server that cannot show the CA the token pins, are terminal (see
/// [`AgentError::is_terminal`]).
pub(crate) async fn enroll(config: &AgentConfig, token: &str, store: &StateDir) -> Result<Credentials, AgentError> {
    let parsed =
        parse_token(token).map_err(|e| AgentError::Config(crate::ConfigError(format!("invalid --token: {e}"))))?;
    let key = ferry_certs::generate_key()?;
    let request = Enroll {
        token: token.to_string(),
        csr_pem: ferry_certs::csr_pem(&key, &config.name)?,
        name: config.name.clone(),
        labels: config.labels.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let tls = ferry_certs::tls::enrollment_client_config(&parsed.ca_fingerprint, ferry_protocol::ALPN)?;
    tracing::info!(server = %config.server, token_id = %parsed.id, name = %config.name, "enrolling");
    let link = Link::dial(&config.server, &config.server_name, tls).await.map_err(|e| match e {
        // The server could not show the pinned CA: talking to it again cannot change that.
        AgentError::Transport { source, .. } if we_rejected_unknown_ca(&source) => {
            AgentError::CaPinMismatch { server: config.server.clone(), fingerprint: parsed.ca_fingerprint.clone() }
        }
        e => e,
    })?;

    let outcome = match exchange(&link, request).await {
        Ok(enrolled) => accept(enrolled, &parsed, &key.serialize_pem())
            .and_then(|creds| store.save_enrollment(&creds).map(|()| creds).map_err(Into::into)),
        Err(e) => Err(e),
    };
    // The control plane waits for us to close once we have its answer.
    let (code, reason) = match &outcome {
        Ok(_) => (CloseCode::Normal, "enrolled"),
        Err(AgentError::BadEnrollment(_)) => (CloseCode::ProtocolError, "invalid enrollment response"),
        Err(_) => (CloseCode::Normal, "enrollment failed"),
    };
    link.close(code, reason).await;
    let creds = outcome?;
    tracing::info!(
        agent_id = %creds.agent_id,
        serial = %creds.info.serial,
        not_after = %crate::credentials::fmt_time(creds.info.not_after),
        "enrolled"
    );
    Ok(creds)
}

/// Sends the request on one bidirectional stream and reads the one answer.
async fn exchange(link: &Link, request: Enroll) -> Result<Enrolled, AgentError> {
    let (mut send, mut recv) = link.open_bi().await.map_err(|e| classify("open stream", e))?;
    net::send(&mut send, &AgentMessage::Enroll(request)).await.map_err(|e| classify("send enrollment", e))?;
    // Nothing else will be sent; if the stream is already gone the read below says why.
    let _ = send.finish();
    let reply = ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, REPLY_TIMEOUT).await;
    match reply {
        Ok(Some(ServerMessage::Enrolled(enrolled))) => Ok(enrolled),
        Ok(Some(ServerMessage::Error(e))) => Err(refusal(e)),
        Ok(Some(other)) => {
            Err(AgentError::Protocol(format!("expected Enrolled, got {}", crate::session::message_name(&other))))
        }
        Ok(None) => Err(match link.close_cause().await {
            Some(e) => classify("waiting for the enrollment answer", e),
            None => AgentError::Protocol("the control plane ended the stream without answering".into()),
        }),
        Err(e) => Err(classify("waiting for the enrollment answer", e)),
    }
}

/// A refusal is final, except an internal server error (the token was not consumed).
fn refusal(e: WireError) -> AgentError {
    match e.code {
        ErrorCode::Internal => AgentError::Server(e.message),
        code => AgentError::EnrollmentRefused(format!("{} ({code:?})", e.message)),
    }
}

fn classify(context: &'static str, e: TransportError) -> AgentError {
    match e.close_code() {
        Some((CloseCode::EnrollmentRejected, reason)) => AgentError::EnrollmentRefused(reason),
        Some((code, reason)) => AgentError::Closed { code, reason },
        None => AgentError::Transport { context, source: e },
    }
}

/// Checks the answer against what we pinned and asked for.
fn accept(enrolled: Enrolled, token: &ParsedToken, key_pem: &str) -> Result<Credentials, AgentError> {
    let bad = |m: String| AgentError::BadEnrollment(m);
    let ca_der = ferry_certs::pem_to_der(&enrolled.ca_pem).map_err(|e| bad(format!("CA certificate: {e}")))?;
    if ferry_certs::fingerprint(&ca_der) != token.ca_fingerprint {
        return Err(bad("the CA certificate does not match the fingerprint in the token".into()));
    }
    ferry_certs::validate_agent_id(&enrolled.agent_id).map_err(|e| bad(e.to_string()))?;
    Credentials::issued(&enrolled.agent_id, &enrolled.ca_pem, &enrolled.certificate_pem, key_pem)
        .map_err(|e| bad(format!("certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_certs::{Ca, Validity};

    use super::*;

    fn token_for(ca: &Ca) -> ParsedToken {
        parse_token(&format!("ferry1.id.secret.{}", ca.fingerprint())).unwrap()
    }

    /// What the control plane answers to a CSR.
    fn enrolled(ca: &Ca, agent_id: &str, csr: &str) -> Enrolled {
        let issued = ca.sign_agent_csr(csr, agent_id, Validity::from_now(Duration::from_secs(600))).unwrap();
        Enrolled { agent_id: agent_id.into(), certificate_pem: issued.cert_pem, ca_pem: ca.cert_pem().into() }
    }

    #[test]
    fn accepts_only_what_matches_the_pin_and_the_key() {
        let ca = Ca::generate("t").unwrap();
        let key = ferry_certs::generate_key().unwrap();
        let ok = enrolled(&ca, "agent-1", &ferry_certs::csr_pem(&key, "n").unwrap());
        let creds = accept(ok.clone(), &token_for(&ca), &key.serialize_pem()).unwrap();
        assert_eq!(creds.agent_id, "agent-1");

        // Another CA than the pinned one.
        let other = Ca::generate("other").unwrap();
        let e = accept(ok.clone(), &token_for(&other), &key.serialize_pem()).unwrap_err();
        assert!(matches!(e, AgentError::BadEnrollment(_)) && e.is_terminal(), "{e}");
        // A certificate for another key.
        let other_key = ferry_certs::generate_key().unwrap();
        assert!(accept(ok.clone(), &token_for(&ca), &other_key.serialize_pem()).is_err());
        // An agent id that is not the certificate's.
        let mut wrong_id = ok;
        wrong_id.agent_id = "agent-2".into();
        assert!(accept(wrong_id, &token_for(&ca), &key.serialize_pem()).is_err());
    }

    #[test]
    fn refusals_are_terminal_except_internal_errors() {
        let e = refusal(WireError { code: ErrorCode::TokenUsed, message: "bootstrap token already used".into() });
        assert!(e.is_terminal());
        assert!(e.to_string().contains("bootstrap token already used"), "{e}");
        assert!(!refusal(WireError { code: ErrorCode::Internal, message: "db".into() }).is_terminal());
    }
}
