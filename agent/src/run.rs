//! The supervisor loop: enroll when needed, run sessions, back off and reconnect, until
//! shutdown or a terminal error.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::backoff::{BASE_DELAY, Backoff, RESET_AFTER};
use crate::config::AgentConfig;
use crate::credentials::{Credentials, fmt_time};
use crate::enroll::enroll;
use crate::error::AgentError;
use crate::intent::Intent;
use crate::net::shutdown_requested;
use crate::session::{self, Session};
use crate::state::StateDir;
use crate::workloads::Workloads;
use crate::{AgentState, Exit};

/// What to do before connecting, given the stored certificate (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Use the stored certificate.
    Connect,
    /// Enroll with the token (no certificate, or an expired one).
    Enroll { expired_at: Option<OffsetDateTime> },
    /// Terminal: nothing stored and no token.
    NotEnrolled,
    /// Terminal: the certificate expired and there is no token to re-enroll with.
    Expired { at: OffsetDateTime },
}

pub(crate) fn plan(stored_not_after: Option<OffsetDateTime>, has_token: bool, now: OffsetDateTime) -> Plan {
    match (stored_not_after, has_token) {
        (Some(at), _) if now < at => Plan::Connect,
        (Some(at), true) => Plan::Enroll { expired_at: Some(at) },
        (Some(at), false) => Plan::Expired { at },
        (None, true) => Plan::Enroll { expired_at: None },
        (None, false) => Plan::NotEnrolled,
    }
}

/// Runs the agent until `shutdown` turns true (→ [`Exit::Stopped`]) or a terminal error
/// (→ [`Exit::Fatal`]), publishing its state through `state`. Either way, every workload is
/// stopped before it returns.
pub async fn run(config: AgentConfig, mut shutdown: watch::Receiver<bool>, state: watch::Sender<AgentState>) -> Exit {
    let mut agent = match Agent::new(config, &state) {
        Ok(agent) => agent,
        Err(e) => return fatal(&state, e),
    };
    let exit = agent.supervise(&mut shutdown).await;
    agent.workloads.shutdown().await;
    if exit == Exit::Stopped {
        tracing::info!("agent stopped");
    }
    exit
}

fn fatal(state: &watch::Sender<AgentState>, e: AgentError) -> Exit {
    let reason = e.to_string();
    tracing::error!(error = %reason, "agent stopping for good");
    state.send_modify(|st| {
        st.connected = false;
        st.last_error = Some(reason.clone());
    });
    Exit::Fatal(reason)
}

struct Agent<'s> {
    config: AgentConfig,
    store: StateDir,
    creds: Option<Credentials>,
    /// The last intent applied (persisted).
    intent: Intent,
    backoff: Backoff,
    state: &'s watch::Sender<AgentState>,
    workloads: Workloads,
}

impl<'s> Agent<'s> {
    fn new(config: AgentConfig, state: &'s watch::Sender<AgentState>) -> Result<Self, AgentError> {
        config.validate()?;
        // rustls needs a process-wide provider for quinn; installing it twice is harmless.
        let _ = ferry_certs::tls::provider();
        let store = StateDir::open(&config.state_dir)?;
        let creds = store.load_credentials()?;
        // One stored without credentials belongs to an identity that is gone.
        let intent = store.load_intent()?.filter(|_| creds.is_some()).unwrap_or_default();
        let last_generation = intent.generation;
        state.send_modify(|st| {
            st.agent_id = creds.as_ref().map(|c| c.agent_id.clone());
            st.cert_serial = creds.as_ref().map(|c| c.info.serial.clone());
            st.cert_not_after = creds.as_ref().map(|c| c.info.not_after);
            st.last_generation = last_generation;
        });
        match &creds {
            Some(c) => tracing::info!(
                agent_id = %c.agent_id,
                state_dir = %store.path().display(),
                not_after = %fmt_time(c.info.not_after),
                last_generation,
                "loaded identity"
            ),
            None => tracing::info!(state_dir = %store.path().display(), "not enrolled yet"),
        }
        let backoff = Backoff::new(BASE_DELAY, config.max_backoff);
        let workloads = Workloads::start(&config, state);
        // Converge on the last intent now, whether or not the control plane answers.
        if intent.generation > 0 {
            tracing::info!(
                generation = intent.generation,
                naming = ?intent.naming,
                workloads = intent.workloads.len(),
                "applying the stored intent"
            );
            workloads.assign(&intent);
        }
        Ok(Self { config, store, creds, intent, backoff, state, workloads })
    }

    /// Sessions, backoff and reconnects until shutdown or a terminal error.
    async fn supervise(&mut self, shutdown: &mut watch::Receiver<bool>) -> Exit {
        loop {
            if *shutdown.borrow() {
                return Exit::Stopped;
            }
            let (lasted, result) = self.attempt(shutdown).await;
            let e = match result {
                Ok(()) => return Exit::Stopped,
                Err(e) if e.is_terminal() => return fatal(self.state, e),
                Err(e) => e,
            };
            if lasted >= RESET_AFTER {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "no session with the control plane; will retry");
            self.state.send_modify(|st| st.last_error = Some(e.to_string()));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown_requested(shutdown) => return Exit::Stopped,
            }
        }
    }

    /// One attempt: enroll if needed, then a session. Returns how long the session lasted and
    /// `Ok(())` when it ended because shutdown was requested.
    async fn attempt(&mut self, shutdown: &mut watch::Receiver<bool>) -> (Duration, Result<(), AgentError>) {
        let stored = self.creds.as_ref().map(|c| c.info.not_after);
        match plan(stored, self.config.token.is_some(), OffsetDateTime::now_utc()) {
            Plan::Connect => {}
            Plan::NotEnrolled => return (Duration::ZERO, Err(AgentError::NotEnrolled)),
            Plan::Expired { at } => {
                return (Duration::ZERO, Err(AgentError::CertificateExpired { at: fmt_time(at) }));
            }
            Plan::Enroll { expired_at } => {
                if let Some(at) = expired_at {
                    tracing::warn!(expired_at = %fmt_time(at), "the certificate expired; re-enrolling with the token");
                }
                let token = self.config.token.clone().unwrap_or_default();
                let enrolled = tokio::select! {
                    r = enroll(&self.config, &token, &self.store) => r,
                    () = shutdown_requested(shutdown) => return (Duration::ZERO, Ok(())),
                };
                match enrolled {
                    Ok(creds) => self.adopt(creds),
                    Err(AgentError::EnrollmentRefused(why)) if expired_at.is_some() => {
                        let at = expired_at.map(fmt_time).unwrap_or_default();
                        let why = format!("{why}; the certificate expired at {at}, re-enroll with a new token");
                        return (Duration::ZERO, Err(AgentError::EnrollmentRefused(why)));
                    }
                    Err(e) => return (Duration::ZERO, Err(e)),
                }
            }
        }
        let Some(creds) = self.creds.as_mut() else {
            return (Duration::ZERO, Err(AgentError::NotEnrolled));
        };
        let outcome = session::run(
            Session {
                config: &self.config,
                store: &self.store,
                creds,
                intent: &mut self.intent,
                state: self.state,
                workloads: &self.workloads,
            },
            shutdown,
        )
        .await;
        (outcome.lasted, outcome.result)
    }

    /// A new identity: the intent of the previous one no longer applies, and its workloads stop.
    fn adopt(&mut self, creds: Credentials) {
        self.intent = Intent::default();
        self.workloads.assign(&self.intent);
        self.state.send_modify(|st| {
            st.agent_id = Some(creds.agent_id.clone());
            st.cert_serial = Some(creds.info.serial.clone());
            st.cert_not_after = Some(creds.info.not_after);
            st.last_generation = 0;
        });
        self.creds = Some(creds);
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn plan_table() {
        let now = datetime!(2030-01-01 12:00 UTC);
        let later = now + time::Duration::hours(1);
        let earlier = now - time::Duration::hours(1);
        assert_eq!(plan(Some(later), false, now), Plan::Connect);
        assert_eq!(plan(Some(later), true, now), Plan::Connect);
        assert_eq!(plan(Some(earlier), true, now), Plan::Enroll { expired_at: Some(earlier) });
        assert_eq!(plan(Some(now), true, now), Plan::Enroll { expired_at: Some(now) });
        assert_eq!(plan(Some(earlier), false, now), Plan::Expired { at: earlier });
        assert_eq!(plan(None, true, now), Plan::Enroll { expired_at: None });
        assert_eq!(plan(None, false, now), Plan::NotEnrolled);
    }

    #[tokio::test]
    async fn not_enrolled_without_token_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::new("127.0.0.1:9", dir.path().join("state"));
        let (_stop, shutdown) = watch::channel(false);
        let (state, watch_state) = watch::channel(AgentState::default());
        let exit = run(config, shutdown, state).await;
        assert_eq!(exit, Exit::Fatal("not enrolled: pass --token".into()));
        assert_eq!(watch_state.borrow().last_error.as_deref(), Some("not enrolled: pass --token"));
    }

    #[tokio::test]
    async fn invalid_config_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::new("no port", dir.path());
        let (_stop, shutdown) = watch::channel(false);
        let exit = run(config, shutdown, watch::channel(AgentState::default()).0).await;
        assert!(matches!(exit, Exit::Fatal(ref m) if m.contains("--server")), "{exit:?}");
    }

    #[tokio::test]
    async fn expired_certificate_without_token_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ferry_certs::Ca::generate("t").unwrap();
        let key = ferry_certs::generate_key().unwrap();
        let now = OffsetDateTime::now_utc();
        let validity = ferry_certs::Validity {
            not_before: now - time::Duration::hours(2),
            not_after: now - time::Duration::hours(1),
        };
        let issued = ca.sign_agent_csr(&ferry_certs::csr_pem(&key, "x").unwrap(), "agent-1", validity).unwrap();
        let creds = Credentials::new("agent-1", ca.cert_pem(), &issued.cert_pem, &key.serialize_pem()).unwrap();
        StateDir::open(dir.path()).unwrap().save_enrollment(&creds).unwrap();

        let config = AgentConfig::new("127.0.0.1:9", dir.path());
        let (_stop, shutdown) = watch::channel(false);
        let exit = run(config, shutdown, watch::channel(AgentState::default()).0).await;
        let Exit::Fatal(msg) = exit else { panic!("{exit:?}") };
        assert!(msg.contains("expired at") && msg.contains("re-enroll"), "{msg}");
    }
}
