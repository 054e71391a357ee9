//! The QUIC endpoint agents dial.
//!
//! A connection without a client certificate may only enroll ([`enroll`]); one with a
//! certificate (already verified against Ferry's CA by rustls during the handshake) runs a
//! [`session`]. Every wait has a deadline, every failure closes only the connection at fault.

mod enroll;
pub mod intent;
mod observed;
mod session;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::CloseCode;
use quinn::{Connection, Endpoint};
use tokio::sync::watch;

use crate::AppState;

/// How long a client may take to complete the handshake or send its first frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A live session as the registry knows it.
struct Live {
    session_id: String,
    conn: Connection,
    handle: Arc<Handle>,
}

/// What a session shares with the registry.
#[derive(Default)]
pub(crate) struct Handle {
    /// Woken when the agent's intent changes.
    intent: tokio::sync::Notify,
    /// The newest intent generation the session sent.
    sent: AtomicU64,
    /// Set when a batch holding this session's report could not be stored: the session then
    /// forgets what it reported, so its next report is written whole.
    resync: std::sync::atomic::AtomicBool,
}

/// Live sessions held by this replica, by agent id, the revision templates they send, and the
/// writer that stores their reports in batches.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Live>>>,
    pub templates: Arc<intent::Templates>,
    observed: observed::Writer,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { inner: Arc::default(), templates: Arc::default(), observed: observed::Writer::new() }
    }
}

impl Sessions {
    /// Registers a session, closing the one it supersedes.
    fn insert(&self, agent_id: &str, session_id: &str, conn: Connection) -> Arc<Handle> {
        let handle = Arc::new(Handle::default());
        let live = Live { session_id: session_id.into(), conn, handle: handle.clone() };
        let old = self.inner.lock().expect("sessions lock").insert(agent_id.into(), live);
        if let Some(old) = old {
            ferry_transport::close(&old.conn, CloseCode::Superseded, "a newer session replaced this one");
        }
        handle
    }

    /// `(agent id, session id, generation sent)` of every live session on this replica.
    fn snapshot(&self) -> Vec<(String, String, u64)> {
        let map = self.inner.lock().expect("sessions lock");
        map.iter().map(|(a, l)| (a.clone(), l.session_id.clone(), l.handle.sent.load(Ordering::Relaxed))).collect()
    }

    /// Closes the agent's session if it is still `session_id`.
    fn close_session(&self, agent_id: &str, session_id: &str, code: CloseCode, reason: &str) {
        let mut map = self.inner.lock().expect("sessions lock");
        if map.get(agent_id).is_some_and(|l| l.session_id == session_id)
            && let Some(live) = map.remove(agent_id)
        {
            ferry_transport::close(&live.conn, code, reason);
        }
    }

    /// Tells the agent's session (if this replica holds it) that its intent changed.
    pub fn notify_intent(&self, agent_id: &str) {
        if let Some(live) = self.inner.lock().expect("sessions lock").get(agent_id) {
            live.handle.intent.notify_one();
        }
    }

    /// Forgets a session if it is still the registered one.
    fn remove(&self, agent_id: &str, session_id: &str) {
        let mut map = self.inner.lock().expect("sessions lock");
        if map.get(agent_id).is_some_and(|l| l.session_id == session_id) {
            map.remove(agent_id);
        }
    }

    /// Closes the agent's live session on this replica, if any.
    pub fn close(&self, agent_id: &str, code: CloseCode, reason: &str) {
        if let Some(live) = self.inner.lock().expect("sessions lock").remove(agent_id) {
            ferry_transport::close(&live.conn, code, reason);
        }
    }
}

/// Accepts connections until `shutdown` turns true, then closes the endpoint and waits for the
/// connection tasks to record their session ends.
pub async fn serve(endpoint: Endpoint, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(incoming) = incoming else { break };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.accept() {
                Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
                Err(e) => {
                    return tracing::debug!(%remote, error = %e, "refused incoming connection");
                }
            };
            let conn = match conn {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return tracing::info!(%remote, error = %e, "handshake failed"),
                Err(_) => return tracing::info!(%remote, "handshake timed out"),
            };
            match ferry_transport::peer_leaf_der(&conn) {
                None => enroll::handle(conn, state).await,
                Some(der) => session::handle(conn, der, state, shutdown).await,
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(CloseCode::Normal as u32), b"control plane stopping");
    let drain = async {
        while tasks.join_next().await.is_some() {}
        endpoint.wait_idle().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tracing::warn!("connection tasks still running at shutdown; aborting them");
    }
}

pub use observed::write_observed;

/// Agent liveness, in batches: heartbeats are answered in memory, and every heartbeat interval
/// one pass records a heartbeat time for every live session of this replica (a few multi-row
/// statements, not one write per heartbeat), closes the sessions that lost their agent (revoked,
/// superseded on another replica, deleted), and wakes the sessions whose agent's intent moved
/// past what they sent (intent written by another replica reaches its agent this way).
pub async fn flush_liveness(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let live = state.sessions.snapshot();
        if live.is_empty() {
            continue;
        }
        let pairs: Vec<(String, String)> = live.iter().map(|(a, s, _)| (a.clone(), s.clone())).collect();
        let found = match state.store.flush_liveness(&pairs, crate::ids::now_ms()).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, sessions = pairs.len(), "could not record heartbeats");
                continue;
            }
        };
        for ((agent, session, sent), (_, ownership, generation)) in live.iter().zip(found) {
            use crate::store::Ownership;
            match ownership {
                Ownership::Owned if generation > *sent => state.sessions.notify_intent(agent),
                Ownership::Owned => {}
                Ownership::Revoked => state.sessions.close_session(agent, session, CloseCode::Revoked, "agent revoked"),
                Ownership::Superseded => state.sessions.close_session(
                    agent,
                    session,
                    CloseCode::Superseded,
                    "a newer session replaced this one",
                ),
                Ownership::Unknown => {
                    state.sessions.close_session(agent, session, CloseCode::UnknownAgent, "unknown agent")
                }
            }
        }
    }
}
