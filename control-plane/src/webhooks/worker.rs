//! The delivery worker: one per replica. It claims due attempts (`Store::claim_deliveries`: one
//! replica per attempt, leased), POSTs them concurrently (at most [`MAX_IN_FLIGHT`]), and
//! records each outcome: a 2xx delivers; anything else is retried after
//! [`super::retry_delay`] until `--webhook-max-attempts`, then the delivery fails. It is woken
//! when this replica commits a delivery and polls every [`POLL`] for the rows of other replicas
//! and for retries that came due.
//!
//! HTTP client: reqwest (already in the tree for the tests) on hyper, with rustls on the ring
//! provider and the operating system's trust store (`rustls-native-certs`): receivers are often
//! internal services behind a corporate CA that operators already trust system-wide, and a
//! bundled root list would go stale between releases. No proxy, no redirects (a 3xx is a failed
//! attempt: the signature covers a body, not a destination), 10 s per attempt.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{retry_delay, secret_aad, signature};
use crate::AppState;
use crate::ids::{now_ms, random_id};
use crate::store::{AttemptOutcome, ClaimedDelivery};

/// Attempts in flight per replica.
pub const MAX_IN_FLIGHT: usize = 16;
/// Time allowed per attempt (connect, send, answer head).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed attempt is sent again by any replica if its outcome is not recorded by then.
const LEASE: Duration = Duration::from_secs(60);
/// How often due rows are looked for without a wake-up.
pub const POLL: Duration = Duration::from_secs(1);
/// Finished deliveries are kept this long (the delivery log), then swept.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 86_400);
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_BATCH: i64 = 1_000;

/// The HTTP client deliveries are sent with; `system_roots`: trust the operating system's
/// certificate store (else no root at all: only plain-HTTP receivers can be reached).
pub fn client(system_roots: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_built_in_native_certs(system_roots)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("Ferry-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs until `shutdown` turns true; attempts still in flight then are given back (due at once,
/// not counted), so another replica or the next start sends them.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    // A system store that cannot be read must not stop plain-HTTP deliveries.
    let client = match client(true).or_else(|e| {
        tracing::error!(error = %e, "cannot load the system's trusted certificates; HTTPS webhooks will fail");
        client(false)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are not delivered");
            return;
        }
    };
    let claimer = random_id("replica");
    let wake = state.store.webhook_wakeup();
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep: Option<tokio::time::Instant> = None;
    loop {
        let free = MAX_IN_FLIGHT - in_flight.len();
        if free > 0 {
            let now = now_ms();
            let lease_end = now + LEASE.as_millis() as i64;
            match state.store.claim_deliveries(&claimer, now, lease_end, free as i64).await {
                Ok(claimed) => {
                    for c in claimed {
                        in_flight.spawn(attempt(state.clone(), client.clone(), claimer.clone(), c));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
            }
        }
        // No arm awaits (the select's output holds a `watch::Ref`, which must not cross one).
        let tick = tokio::select! {
            _ = wake.notified() => false,
            _ = poll.tick() => true,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => false,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        if tick && last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            last_sweep = Some(tokio::time::Instant::now());
            let before = now_ms() - KEEP_FINISHED.as_millis() as i64;
            match state.store.sweep_deliveries(before, SWEEP_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept finished webhook deliveries"),
                Err(e) => tracing::warn!(error = %e, "could not sweep webhook deliveries"),
            }
        }
    }
    in_flight.shutdown().await;
    match state.store.release_deliveries(&claimer, now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(released = n, "gave back unfinished webhook deliveries"),
        Err(e) => {
            tracing::warn!(error = %e, "could not give back webhook deliveries; they are retried after their lease")
        }
    }
}

/// Sends one claimed attempt and records how it ended.
async fn attempt(state: AppState, client: reqwest::Client, claimer: String, c: ClaimedDelivery) {
    let d = &c.delivery;
    let outcome = match send(&state, &client, &c).await {
        Ok(status) if (200..300).contains(&status) => AttemptOutcome::Delivered { status },
        Ok(status) => failed(&state, d.attempts, Some(status), format!("the receiver answered HTTP {status}")),
        Err(Fatal(error)) => AttemptOutcome::Failed { status: None, error },
        Err(Retryable(error)) => failed(&state, d.attempts, None, error),
    };
    match &outcome {
        AttemptOutcome::Delivered { status } => {
            tracing::debug!(delivery = %d.id, event = %d.event_type, attempt = d.attempts, status, "webhook delivered")
        }
        AttemptOutcome::Retry { error, .. } | AttemptOutcome::Failed { error, .. } => {
            tracing::info!(delivery = %d.id, webhook = ?d.webhook_id, event = %d.event_type, attempt = d.attempts,
                %error, last = matches!(outcome, AttemptOutcome::Failed { .. }), "webhook delivery attempt failed")
        }
    }
    match state.store.record_attempt(&d.id, &claimer, d.attempts, &outcome, now_ms()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(delivery = %d.id, "attempt outcome not recorded: the lease was lost or the webhook deleted")
        }
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "could not record a webhook attempt; it is retried after its lease")
        }
    }
}

/// A failed attempt: retried later, or the last one.
fn failed(state: &AppState, attempts: i64, status: Option<u16>, error: String) -> AttemptOutcome {
    if attempts >= i64::from(state.config.webhook_max_attempts) {
        return AttemptOutcome::Failed { status, error };
    }
    let delay = retry_delay(state.config.webhook_retry_base, attempts.clamp(1, u32::MAX as i64) as u32, jitter());
    AttemptOutcome::Retry { status, error, at: now_ms() + delay.as_millis() as i64 }
}

/// Uniform in [0, 1).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Why an attempt could not get an answer.
enum Failure {
    /// Retrying cannot help (the webhook is gone).
    Fatal(String),
    Retryable(String),
}
use Failure::{Fatal, Retryable};

/// POSTs the payload with Ferry's headers; the answer's status code.
async fn send(state: &AppState, client: &reqwest::Client, c: &ClaimedDelivery) -> Result<u16, Failure> {
    let d = &c.delivery;
    let Some(url) = &c.url else {
        return Err(Fatal("the webhook was deleted".into()));
    };
    let timestamp = now_ms() / 1000;
    let mut req = client
        .post(url.as_str())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Ferry-Event", &d.event_type)
        .header("Ferry-Delivery", &d.id)
        .header("Ferry-Timestamp", timestamp.to_string());
    if let Some(w) = &d.webhook_id {
        req = req.header("Ferry-Webhook-Id", w);
    }
    if let Some((sealed, kind, id)) = &c.secret {
        let secret = state
            .master_key
            .open(sealed, &secret_aad(kind, id))
            .map_err(|e| Retryable(format!("cannot open the signing secret: {e}")))?;
        req = req.header("Ferry-Signature", signature(&secret, timestamp, d.payload.as_bytes()));
    }
    let res = req.body(d.payload.clone()).send().await.map_err(|e| Retryable(describe(&e)))?;
    Ok(res.status().as_u16())
}

/// A transport error without the URL (it may carry a token in its path or query).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") }
}
