//! An enrolled agent's session: Hello/Welcome, intent (protocol 2: the changes since the
//! generation the agent holds; protocol 1: whole assignments), observed state, heartbeats,
//! certificate renewal over the live connection, and closing with a reason the agent can act on.
//!
//! A status report costs what changed: the session remembers what the agent last reported and
//! writes only the workloads whose replicas changed (nothing at all for an unchanged report),
//! then queues just the deployments concerned. Heartbeats are answered in memory; liveness is
//! recorded in batches by [`super::flush_liveness`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_certs::Validity;
use ferry_protocol::{
    AckOutcome, AgentMessage, CertificateRenewed, CloseCode, ErrorCode, HeartbeatAck, ReplicaStatus, ServerMessage,
    Welcome, WireError, WorkloadIntent,
};
use ferry_transport::TransportError;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{HANDSHAKE_TIMEOUT, Handle, observed};
use crate::AppState;
use crate::ids::{now_ms, random_id};
use crate::store::ObservedReport;

/// Capabilities an agent may declare, and how long each may be.
const MAX_CAPABILITIES: usize = 32;
const MAX_CAPABILITY_LEN: usize = 64;

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
    let mut session = Session {
        conn: conn.clone(),
        state: state.clone(),
        agent_id: agent_id.clone(),
        session_id: random_id("sess"),
        cert_not_after_ms: (info.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        protocol: 0,
        sent: 0,
        handle: None,
        resend_full: false,
        by_deployment: HashMap::new(),
        reported: HashMap::new(),
        reported_generation: None,
        secrets: false,
        git: false,
    };
    let End(code, reason) = session.run(shutdown).await;
    tracing::info!(%remote, %agent_id, ?code, %reason, "session ended");
    ferry_transport::close(&conn, code, &reason);
    state.sessions.remove(&agent_id, &session.session_id);
    if session.handle.is_some() {
        if let Err(e) = state.store.end_session(&agent_id, &session.session_id).await {
            tracing::warn!(%agent_id, error = %e, "could not record session end");
        }
        // Its deployments' status depends on its connectivity.
        match state.store.deployments_on_agent(&agent_id).await {
            Ok(ids) => state.reconciler.enqueue_all(ids),
            Err(e) => tracing::warn!(%agent_id, error = %e, "could not list the agent's deployments"),
        }
    }
}

/// A reported workload: `(workload id, (deployment id, replicas))`.
type Reported = (String, (String, Vec<ReplicaStatus>));

struct Session {
    conn: Connection,
    state: AppState,
    agent_id: String,
    session_id: String,
    cert_not_after_ms: i64,
    /// The negotiated protocol version.
    protocol: u16,
    /// The newest intent generation sent (or that the agent said it holds).
    sent: u64,
    handle: Option<Arc<Handle>>,
    /// The agent rejected an assignment: offer the whole intent again at the next heartbeat.
    resend_full: bool,
    /// Protocol 1 names workloads by deployment id: the workload each deployment id stands for.
    by_deployment: HashMap<String, String>,
    /// What the agent last reported, by workload id: (deployment id, replicas).
    reported: HashMap<String, (String, Vec<ReplicaStatus>)>,
    reported_generation: Option<u64>,
    /// Whether the agent can receive secrets (it advertised `secrets:v1`).
    secrets: bool,
    /// Whether the agent checks Git sources out (it advertised `git:v1`).
    git: bool,
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
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> End {
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
        let capabilities_ok = hello.capabilities.len() <= MAX_CAPABILITIES
            && hello
                .capabilities
                .iter()
                .all(|c| !c.is_empty() && c.len() <= MAX_CAPABILITY_LEN && c.bytes().all(|b| b.is_ascii_graphic()));
        if ferry_protocol::limits::validate_name(&hello.name).is_err()
            || ferry_protocol::limits::validate_labels(&hello.labels).is_err()
            || !capabilities_ok
        {
            let _ = self.error(&mut send, ErrorCode::InvalidRequest, "invalid name or labels in Hello").await;
            return End::new(CloseCode::ProtocolError, "invalid Hello");
        }
        let version_str: String = hello.agent_version.chars().take(64).collect();
        let started = self
            .state
            .store
            .start_session(
                &self.agent_id,
                &self.session_id,
                &hello.name,
                &version_str,
                &hello.labels,
                &hello.capabilities,
                now_ms(),
            )
            .await;
        let record = match started {
            Ok(Some(record)) => record,
            Ok(None) => return End::new(CloseCode::Revoked, "agent revoked"),
            Err(e) => {
                tracing::error!(error = %e, "store error at session start");
                return End::new(CloseCode::InternalError, "try again later");
            }
        };
        self.protocol = version;
        self.secrets = version >= 2 && hello.capabilities.iter().any(|c| c == ferry_protocol::SECRETS_CAPABILITY);
        self.git = version >= 2 && hello.capabilities.iter().any(|c| c == ferry_protocol::GIT_CAPABILITY);
        let handle = self.state.sessions.insert(&self.agent_id, &self.session_id, self.conn.clone());
        self.handle = Some(handle.clone());
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
            protocol = version, last_generation = hello.last_generation, "session started");
        // Its placement facts (labels, capabilities) and its connectivity may have changed.
        self.state.reconciler.agent_changed(&self.state, &record).await;
        // Start from what the agent reported last, so that its first report of this session also
        // clears what stopped while it was away (or what a failed batch left behind).
        match self.state.store.observed_of_agent(&self.agent_id).await {
            Ok(stored) => self.reported = stored.into_iter().collect(),
            Err(e) => {
                tracing::warn!(agent_id = %self.agent_id, error = %e, "could not read what the agent reported last")
            }
        }
        if let Err(e) = self.first_intent(&mut send, hello.last_generation).await {
            return transport_end(&e);
        }
        self.serve(send, recv, &mut shutdown, &handle).await
    }

    /// Brings the agent up to date after Hello: nothing if it holds the current generation, the
    /// changes since the one it holds (protocol 2) if we still have them, else the whole intent.
    async fn first_intent(&mut self, send: &mut SendStream, held: u64) -> Result<(), TransportError> {
        let lifted = match self.state.store.lift_generation(&self.agent_id, held, now_ms()).await {
            Ok(lifted) => lifted,
            Err(e) => {
                tracing::warn!(agent_id = %self.agent_id, error = %e, "could not compare generations");
                None
            }
        };
        if lifted.is_some() {
            tracing::warn!(agent_id = %self.agent_id, agent_generation = held,
                "the agent is ahead of the store (restored database?); its intent moves past it");
            return self.push_intent(send, true).await;
        }
        let head = match self.state.store.intent_head(&self.agent_id).await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(agent_id = %self.agent_id, error = %e, "could not read intent");
                return Ok(());
            }
        };
        if self.protocol < 2 {
            // Protocol-1 reports name deployments; learn which workload each one is.
            if held == head.generation {
                self.set_sent(held);
                if let Ok((_, rows)) = self.state.store.intent_snapshot(&self.agent_id, None).await {
                    self.learn(rows.iter().map(|r| (&r.deployment_id, &r.workload_id)));
                }
                return Ok(());
            }
            return self.push_intent(send, true).await;
        }
        if held == head.generation || (held > 0 && held >= head.floor) {
            self.set_sent(held);
            return self.push_intent(send, false).await;
        }
        self.push_intent(send, true).await
    }

    /// Records the generation the agent has (or was sent), also for the liveness pass, which
    /// wakes a session only when the store's generation moved past it.
    fn set_sent(&mut self, generation: u64) {
        self.sent = generation;
        if let Some(h) = &self.handle {
            h.sent.store(generation, Ordering::Relaxed);
        }
    }

    fn learn<'a>(&mut self, pairs: impl Iterator<Item = (&'a String, &'a String)>) {
        for (deployment, workload) in pairs {
            self.by_deployment.insert(deployment.clone(), workload.clone());
        }
    }

    async fn serve(
        &mut self,
        mut send: SendStream,
        recv: RecvStream,
        shutdown: &mut watch::Receiver<bool>,
        handle: &Handle,
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
                _ = handle.intent.notified() => None,
                e = self.conn.closed() => return End::new(CloseCode::Normal, format!("connection closed: {e}")),
            };
            let Some(msg) = msg else {
                if let Err(e) = self.push_intent(&mut send, false).await {
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
                    // Liveness is recorded in batches (`flush_liveness`); a rejected assignment
                    // is offered again here.
                    if std::mem::take(&mut self.resend_full)
                        && let Err(e) = self.push_intent(&mut send, true).await
                    {
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
                    let (generation, error) = match &ack.outcome {
                        AckOutcome::Applied => (ack.generation, None),
                        AckOutcome::Stale { current } => (*current, None),
                        AckOutcome::Rejected { reason } => {
                            tracing::warn!(agent_id = %self.agent_id, generation = ack.generation, %reason, "assignment rejected");
                            // Offer it again at the next heartbeat (the cause may be transient).
                            self.resend_full = true;
                            (ack.generation, Some(reason.as_str()))
                        }
                        AckOutcome::NeedFull { held } => {
                            tracing::info!(agent_id = %self.agent_id, held, "the agent asks for its whole intent");
                            if let Err(e) = self.push_intent(&mut send, true).await {
                                return transport_end(&e);
                            }
                            continue;
                        }
                    };
                    if let Err(e) = self.state.store.record_ack(&self.agent_id, generation, error).await {
                        tracing::warn!(agent_id = %self.agent_id, error = %e, "could not record ack");
                    }
                    None
                }
                AgentMessage::Status(status) => {
                    if let Some(end) = self.observe(status.generation, status.workloads, None).await {
                        return end;
                    }
                    None
                }
                AgentMessage::StatusDelta(d) if self.protocol >= 2 && self.reported_generation.is_some() => {
                    if let Some(end) = self.observe(d.generation, d.changed, Some(d.removed)).await {
                        return end;
                    }
                    None
                }
                AgentMessage::StatusDelta(_) => {
                    return End::new(
                        CloseCode::ProtocolError,
                        "a status delta needs protocol 2 and a whole status first",
                    );
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

    /// Sends the agent's intent if it is newer than what this session sent: the changes since
    /// then (protocol 2), or the whole intent (`full`, or protocol 1, or when the tombstones
    /// needed for a delta are gone). A store error is logged; the next wake-up retries.
    async fn push_intent(&mut self, send: &mut SendStream, full: bool) -> Result<(), TransportError> {
        let state = self.state.clone();
        let store = &state.store;
        let delta_base = (self.protocol >= 2 && !full && self.sent > 0).then_some(self.sent);
        let ((head, rows), base) = match store.intent_snapshot(&self.agent_id, delta_base).await {
            // The tombstones a delta from there needs are gone: send everything.
            Ok((head, _)) if delta_base.is_some_and(|base| base < head.floor) => {
                match store.intent_snapshot(&self.agent_id, None).await {
                    Ok(snapshot) => (snapshot, None),
                    Err(e) => {
                        self.store_trouble(e);
                        return Ok(());
                    }
                }
            }
            Ok(snapshot) => (snapshot, delta_base),
            Err(e) => {
                self.store_trouble(e);
                return Ok(());
            }
        };
        if head.generation == 0 || (!full && head.generation <= self.sent) {
            return Ok(());
        }
        let templates = &state.sessions.templates;
        let msg = if self.protocol >= 2 {
            let secrets = self.secrets.then_some(&*state.master_key);
            match templates.update(store, secrets, self.git, head, base, &rows).await {
                Ok(u) => ServerMessage::Intent(u),
                Err(e) => {
                    self.store_trouble(e);
                    return Ok(());
                }
            }
        } else {
            self.learn(rows.iter().filter(|r| !r.removed).map(|r| (&r.deployment_id, &r.workload_id)));
            match templates.assignment(store, head, &rows).await {
                Ok(a) => ServerMessage::Assignment(a),
                Err(e) => {
                    self.store_trouble(e);
                    return Ok(());
                }
            }
        };
        ferry_transport::write_frame_timeout(send, &msg, WRITE_TIMEOUT).await?;
        self.set_sent(head.generation);
        tracing::debug!(agent_id = %self.agent_id, generation = head.generation, delta = base.is_some(),
            rows = rows.len(), "intent sent");
        Ok(())
    }

    fn store_trouble(&self, e: crate::store::StoreError) {
        tracing::warn!(agent_id = %self.agent_id, error = %e, "could not read intent");
    }

    /// Records what changed in a status report (a whole `Status`, or with `removed` a
    /// `StatusDelta` on the previous report) and queues the deployments concerned; costs what
    /// the report changed. Ends the session if an earlier report could not be stored: the agent
    /// reconnects and reports whole.
    async fn observe(
        &mut self,
        generation: u64,
        workloads: Vec<ferry_protocol::WorkloadStatus>,
        removed: Option<Vec<String>>,
    ) -> Option<End> {
        if self.handle.as_ref().is_some_and(|h| h.resync.load(Ordering::Relaxed)) {
            return Some(End::new(CloseCode::InternalError, "a status report could not be stored; report again"));
        }
        let mut entries: Vec<Reported> = Vec::with_capacity(workloads.len());
        for w in workloads {
            let (workload, deployment) = if self.protocol >= 2 {
                match w.id.rsplit_once('@') {
                    Some((d, rev)) if !d.is_empty() && rev.parse::<u64>().is_ok() => (w.id.clone(), d.to_string()),
                    _ => {
                        tracing::debug!(agent_id = %self.agent_id, workload = %w.id, "ignoring a malformed workload id");
                        continue;
                    }
                }
            } else {
                let workload =
                    self.by_deployment.get(&w.id).cloned().unwrap_or_else(|| WorkloadIntent::id_for(&w.id, 0));
                (workload, w.id)
            };
            entries.push((workload, (deployment, w.replicas)));
        }
        let mut whole: Option<HashMap<String, (String, Vec<ReplicaStatus>)>> = None;
        let (changed_entries, gone): (Vec<Reported>, Vec<String>) = match &removed {
            // A delta: only what it names can have changed.
            Some(removed) => (
                entries.into_iter().filter(|(w, v)| self.reported.get(w) != Some(v)).collect(),
                removed.iter().filter(|w| self.reported.contains_key(*w)).cloned().collect(),
            ),
            // A whole report: anything missing from it is gone.
            None => {
                let now: HashMap<String, (String, Vec<ReplicaStatus>)> = entries.into_iter().collect();
                let gone = self.reported.keys().filter(|w| !now.contains_key(*w)).cloned().collect();
                let changed = now
                    .iter()
                    .filter(|(w, v)| self.reported.get(*w) != Some(*v))
                    .map(|(w, v)| (w.clone(), v.clone()))
                    .collect();
                whole = Some(now);
                (changed, gone)
            }
        };
        let previous_generation = self.reported_generation;
        if changed_entries.is_empty() && gone.is_empty() && previous_generation == Some(generation) {
            return None;
        }
        let mut affected: Vec<String> = changed_entries.iter().map(|(_, (d, _))| d.clone()).collect();
        affected.extend(gone.iter().filter_map(|w| self.reported.get(w).map(|(d, _)| d.clone())));
        affected.sort_unstable();
        affected.dedup();
        match whole {
            Some(now) => self.reported = now,
            None => {
                for w in &gone {
                    self.reported.remove(w);
                }
                for (w, v) in &changed_entries {
                    self.reported.insert(w.clone(), v.clone());
                }
            }
        }
        // Rows this report now says the agent applied (or, after a reconnect, all of them).
        let generation_moved = (previous_generation != Some(generation))
            .then(|| (previous_generation.unwrap_or(0).min(generation), generation));
        let changed = changed_entries.into_iter().map(|(w, (d, r))| (w, d, r)).collect();
        let report = ObservedReport { agent_id: self.agent_id.clone(), generation, changed, gone };
        let handle = self.handle.clone().expect("a session reports only after Hello");
        self.state.sessions.observed.send(observed::Pending { report, affected, generation_moved, handle }).await;
        self.reported_generation = Some(generation);
        None
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
