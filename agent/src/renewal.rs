//! Certificate renewal over the live session.
//!
//! A certificate is renewed once less than a third of its lifetime (`not_after - not_before`)
//! remains: the agent generates a new key, sends a CSR for it and installs the certificate the
//! control plane answers with. Without an answer the same CSR is sent again after
//! [`RENEW_RETRY`]; the key stays the same for the whole attempt, so any answer matches it.

use std::time::Duration;

use ferry_certs::{CertError, CertInfo, csr_pem, generate_key};
use time::OffsetDateTime;

use crate::credentials::{CredentialError, Credentials};

/// How long to wait for `CertificateRenewed` before asking again.
pub const RENEW_RETRY: Duration = Duration::from_secs(30);
/// Longest single sleep: a far-away deadline is re-checked against the wall clock regularly,
/// which also copes with suspended hosts and clock jumps.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The moment less than a third of the certificate's lifetime remains.
pub fn renewal_point(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_after - (not_after - not_before) / 3
}

/// When to renew. For a certificate that was just renewed (`fresh`), also wait at least half
/// of its remaining validity: a CA that backdates `not_before` (to absorb clock skew) by more
/// than half the lifetime puts the one-third point in the past on issue, and renewing again at
/// once would loop.
pub fn renewal_due(info: &CertInfo, now: OffsetDateTime, fresh: bool) -> OffsetDateTime {
    let point = renewal_point(info.not_before, info.not_after);
    if fresh { point.max(now + (info.not_after - now) / 2) } else { point }
}

/// How long to wait for an answer before asking again: [`RENEW_RETRY`], but no more than half
/// the remaining validity (and at least a second).
pub fn retry_after(not_after: OffsetDateTime, now: OffsetDateTime) -> Duration {
    let half_remaining = to_std(not_after - now) / 2;
    RENEW_RETRY.min(half_remaining).max(Duration::from_secs(1))
}

fn to_std(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// The renewal state of one session.
#[derive(Debug)]
pub struct Renewer {
    due: OffsetDateTime,
    pending: Option<Pending>,
}

struct Pending {
    key_pem: String,
    csr_pem: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending { .. }")
    }
}

impl Renewer {
    /// Schedules the renewal of the certificate a session starts with.
    pub fn new(info: &CertInfo, now: OffsetDateTime) -> Self {
        Self { due: renewal_due(info, now, false), pending: None }
    }

    pub fn due(&self) -> OffsetDateTime {
        self.due
    }

    /// How long to sleep before calling [`Self::is_due`] again.
    pub fn sleep_for(&self, now: OffsetDateTime) -> Duration {
        to_std(self.due - now).min(MAX_SLEEP)
    }

    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        now >= self.due
    }

    /// Whether a request is outstanding.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts (or repeats) a renewal: returns the CSR to send, for a new key unless a request
    /// is already outstanding, and schedules the retry.
    pub fn request(
        &mut self,
        not_after: OffsetDateTime,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<String, CertError> {
        // Reschedule first: a failure below must not turn into a busy loop.
        self.due = now + retry_after(not_after, now);
        let pending = match self.pending.take() {
            Some(p) => p,
            None => {
                let key = generate_key()?;
                Pending { csr_pem: csr_pem(&key, subject)?, key_pem: key.serialize_pem() }
            }
        };
        let csr = pending.csr_pem.clone();
        self.pending = Some(pending);
        Ok(csr)
    }

    /// Handles a `CertificateRenewed` answer. `Ok(None)` when nothing was requested (a late
    /// duplicate); an error when the certificate does not fit the request (the request stays
    /// outstanding and is retried).
    pub fn complete(
        &mut self,
        current: &Credentials,
        certificate_pem: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Credentials>, CredentialError> {
        let Some(pending) = &self.pending else { return Ok(None) };
        let renewed = Credentials::issued(&current.agent_id, &current.ca_pem, certificate_pem, &pending.key_pem)?;
        self.pending = None;
        self.due = renewal_due(&renewed.info, now, true);
        Ok(Some(renewed))
    }
}

#[cfg(test)]
mod tests {
    use ferry_certs::{Ca, Validity};
    use time::macros::datetime;

    use super::*;
    use crate::credentials::tests::issue;

    fn info(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertInfo {
        CertInfo { serial: "01".into(), not_before, not_after, agent_id: Some("a".into()) }
    }

    #[test]
    fn one_third_rule() {
        let nb = datetime!(2030-01-01 0:00 UTC);
        let na = datetime!(2030-01-01 12:00 UTC);
        assert_eq!(renewal_point(nb, na), datetime!(2030-01-01 8:00 UTC));
        let i = info(nb, na);
        // At start-up the one-third point applies, even when it is already past.
        assert_eq!(renewal_due(&i, nb, false), datetime!(2030-01-01 8:00 UTC));
        assert_eq!(renewal_due(&i, datetime!(2030-01-01 10:00 UTC), false), datetime!(2030-01-01 8:00 UTC));
        // A freshly issued long-lived certificate: the one-third point is later than half.
        assert_eq!(renewal_due(&i, nb + time::Duration::minutes(1), true), datetime!(2030-01-01 8:00 UTC));
    }

    #[test]
    fn short_lifetimes_do_not_renew_in_a_loop() {
        // 5 s lifetime backdated by 60 s: the one-third point is already past on issue.
        let now = datetime!(2030-01-01 0:00 UTC);
        let i = info(now - time::Duration::seconds(60), now + time::Duration::seconds(5));
        assert!(renewal_due(&i, now, false) <= now);
        assert_eq!(renewal_due(&i, now, true), now + time::Duration::milliseconds(2500));
    }

    #[test]
    fn retry_delays() {
        let now = datetime!(2030-01-01 0:00 UTC);
        assert_eq!(retry_after(now + time::Duration::hours(4), now), RENEW_RETRY);
        assert_eq!(retry_after(now + time::Duration::seconds(10), now), Duration::from_secs(5));
        assert_eq!(retry_after(now + time::Duration::seconds(1), now), Duration::from_secs(1));
        assert_eq!(retry_after(now - time::Duration::seconds(10), now), Duration::from_secs(1));
    }

    #[test]
    fn sleeps_are_capped_and_never_negative() {
        let now = datetime!(2030-01-01 0:00 UTC);
        let long = Renewer::new(&info(now, now + time::Duration::days(3650)), now);
        assert_eq!(long.sleep_for(now), MAX_SLEEP);
        assert!(!long.is_due(now));
        let past = Renewer::new(&info(now - time::Duration::hours(12), now + time::Duration::hours(1)), now);
        assert_eq!(past.sleep_for(now), Duration::ZERO);
        assert!(past.is_due(now));
    }

    #[test]
    fn request_answer_cycle() {
        let ca = Ca::generate("t").unwrap();
        let current = issue(&ca, "agent-1", std::time::Duration::from_secs(600));
        let now = OffsetDateTime::now_utc();
        let mut r = Renewer::new(&current.info, now);

        // Nothing requested: an answer is ignored.
        assert!(r.complete(&current, &current.cert_pem, now).unwrap().is_none());

        let csr = r.request(current.info.not_after, "agent-1", now).unwrap();
        assert!(r.is_pending());
        assert_eq!(r.due(), now + RENEW_RETRY);
        // Asking again re-sends the same CSR (same key).
        assert_eq!(r.request(current.info.not_after, "agent-1", now).unwrap(), csr);

        // A certificate for another key does not fit; the request stays outstanding.
        assert!(r.complete(&current, &current.cert_pem, now).is_err());
        assert!(r.is_pending());
        // Nor does one for another agent.
        let v = Validity::from_now(std::time::Duration::from_secs(600));
        let wrong_id = ca.sign_agent_csr(&csr, "agent-2", v).unwrap();
        assert!(r.complete(&current, &wrong_id.cert_pem, now).is_err());

        let issued = ca.sign_agent_csr(&csr, "agent-1", v).unwrap();
        let renewed = r.complete(&current, &issued.cert_pem, now).unwrap().unwrap();
        assert!(!r.is_pending());
        assert_eq!(renewed.info.serial, issued.serial);
        assert_ne!(renewed.key_pem(), current.key_pem());
        assert!(r.due() > now);
        renewed.tls_config().unwrap();
    }
}
