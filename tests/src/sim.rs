//! Simulated agents: faithful protocol peers that pretend to run processes instantly, so that one
//! process can stand in for thousands of agents in benchmarks.
//!
//! A simulated agent enrolls with a bootstrap token (pinning the CA by the token's fingerprint,
//! as `ferry-agent` does), then holds one mTLS QUIC session: `Hello` (protocols 1 to 2,
//! declaring `runtime:process`), heartbeats at the interval `Welcome` dictates, an `Ack` for every
//! protocol-2 `Intent` (`Applied`; `Stale` when not newer; `NeedFull` when a delta's base is not
//! the generation it holds) and protocol-1 `Assignment` (`Applied` or `Stale`), and status
//! reports — right after `Welcome`, after every applied update (at most one per 25 ms, like the
//! real agent) and at its refresh every sixth heartbeat — that show every replica it holds
//! running and ready, with a fake pid and port that stay the same while the replica "runs". Like
//! `ferry-agent`, it reports a whole `Status` first and then, under protocol 2, `StatusDelta`s
//! with only what changed (nothing when nothing did).
//!
//! A report is encoded once per change and the same bytes are sent again at later refreshes, so
//! an agent holding 10,000 workloads costs the benchmark's process one encoding per change (the
//! real agent clones and encodes its observed state at every report), while the control plane
//! receives exactly what the real agent would send.
//!
//! What it does not do: reconnect (a lost session is recorded in [`SimState::ended`] and the
//! agent stops, so a benchmark reports it instead of hiding it), renew its certificate (runs are
//! far shorter than the default 12 h lifetime), or ship logs.
//!
//! Many agents share a few quinn [`Endpoint`]s (one UDP socket each) instead of one per agent;
//! see [`Endpoints`].
//!
//! All intent handling lives in [`Workloads`]: the workloads by id and the generation they came
//! with, what to acknowledge, and the status to report.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{
    Ack, AckOutcome, AgentMessage, Assignment, CloseCode, Enroll, FrameError, Heartbeat, Hello, IntentUpdate, Phase,
    ReplicaStatus, ServerMessage, Status, WorkloadSpec, WorkloadStatus,
};
use ferry_transport::TransportError;
use quinn::{Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::raw::Identity;

/// Deadline for one handshake, enrollment round trip or Hello/Welcome.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for writing one frame (a peer that stops reading must not block us forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol versions the simulated agent speaks (it implements exactly these two).
pub const PROTOCOL_MIN: u16 = 1;
pub const PROTOCOL_MAX: u16 = 2;
/// The real agent's status rate limit: at once after a change, at most one report per 25 ms.
const STATUS_GAP: Duration = Duration::from_millis(25);

/// A few client endpoints shared by many simulated agents: connection `i` uses endpoint
/// `i / per_endpoint`, so 10,000 agents need 20 UDP sockets, not 10,000.
pub struct Endpoints {
    endpoints: Vec<Endpoint>,
    per_endpoint: usize,
    server: SocketAddr,
}

impl Endpoints {
    /// Endpoints for `agents` connections to `server`, at most `per_endpoint` on each.
    pub fn new(server: SocketAddr, agents: usize, per_endpoint: usize) -> Result<Self, TransportError> {
        let per_endpoint = per_endpoint.max(1);
        let n = agents.div_ceil(per_endpoint).max(1);
        let endpoints = (0..n).map(|_| ferry_transport::client_endpoint(server)).collect::<Result<_, _>>()?;
        Ok(Self { endpoints, per_endpoint, server })
    }

    /// The endpoint agent number `i` dials from.
    pub fn for_agent(&self, i: usize) -> &Endpoint {
        &self.endpoints[(i / self.per_endpoint).min(self.endpoints.len() - 1)]
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }
}

/// Enrolls with `token` over `endpoint`: a new P-256 key, a CSR, a QUIC + TLS 1.3 handshake that
/// pins the CA by the token's fingerprint, and the CA's answer checked against the same pin.
pub async fn enroll(endpoint: &Endpoint, server: SocketAddr, token: &str, name: &str) -> Result<Identity, String> {
    let parsed = ferry_agent::parse_token(token).map_err(|e| format!("token: {e}"))?;
    let tls = ferry_certs::tls::enrollment_client_config(&parsed.ca_fingerprint, ferry_protocol::ALPN)
        .map_err(|e| format!("TLS config: {e}"))?;
    let cfg = ferry_transport::client_config(tls).map_err(|e| e.to_string())?;
    let conn = ferry_transport::connect(endpoint, cfg, server, ferry_certs::CONTROL_PLANE_NAME, TIMEOUT)
        .await
        .map_err(|e| format!("enrollment handshake: {e}"))?;
    let key = ferry_certs::generate_key().map_err(|e| e.to_string())?;
    let msg = AgentMessage::Enroll(Enroll {
        token: token.into(),
        csr_pem: ferry_certs::csr_pem(&key, name).map_err(|e| e.to_string())?,
        name: name.into(),
        labels: BTreeMap::new(),
        agent_version: "ferry-sim".into(),
    });
    let reply = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        ferry_transport::write_frame_timeout(&mut send, &msg, WRITE_TIMEOUT).await?;
        ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, TIMEOUT).await
    }
    .await;
    ferry_transport::close(&conn, CloseCode::Normal, "enrolled");
    match reply.map_err(|e| format!("enrollment: {e}"))? {
        Some(ServerMessage::Enrolled(e)) => {
            let ca_der = ferry_certs::pem_to_der(&e.ca_pem).map_err(|e| format!("CA certificate: {e}"))?;
            if ferry_certs::fingerprint(&ca_der) != parsed.ca_fingerprint {
                return Err("the CA certificate does not match the fingerprint in the token".into());
            }
            Ok(Identity {
                agent_id: e.agent_id,
                cert_pem: e.certificate_pem,
                key_pem: key.serialize_pem(),
                ca_pem: e.ca_pem,
            })
        }
        Some(ServerMessage::Error(e)) => Err(format!("enrollment refused: {:?}: {}", e.code, e.message)),
        other => Err(format!("unexpected enrollment reply {other:?}")),
    }
}

/// The first fake pid; each replica start takes the next one.
const FIRST_PID: u32 = 100_000;

/// The workloads a simulated agent holds and the generation they came with. This is the only
/// place that interprets intent: protocol-2 [`IntentUpdate`]s (whole or deltas) and protocol-1
/// [`Assignment`]s.
#[derive(Debug, Default)]
pub struct Workloads {
    generation: u64,
    by_id: BTreeMap<String, Held>,
    /// Replica starts so far, for fake pids that stay put while a replica "runs".
    starts: u32,
    /// The `Status` frame for what is held, encoded on first use after a change.
    frame: Option<Arc<[u8]>>,
    /// `Status` frames encoded so far.
    encodings: u64,
}

/// One workload held (keyed by its id: `<deployment>@<revision>`, or the deployment id under
/// protocol 1).
#[derive(Debug)]
struct Held {
    spec: WorkloadSpec,
    restart_nonce: u64,
    replicas: Vec<Replica>,
}

/// A replica "running" since `since_ms` (Unix ms) as process `pid`.
#[derive(Debug, Clone, Copy)]
struct Replica {
    pid: u32,
    since_ms: u64,
}

/// The same template, whatever the replica count.
fn same_template(a: &WorkloadSpec, b: &WorkloadSpec) -> bool {
    let without_replicas = |s: &WorkloadSpec| {
        let mut s = s.clone();
        s.process_mut().replicas = 0;
        s
    };
    without_replicas(a) == without_replicas(b)
}

impl Workloads {
    /// The generation of the last applied update (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a workload with this id is held (`<deployment>@<revision>`, or the deployment id
    /// under protocol 1).
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Applies a protocol-2 update if it is newer than what is held: a whole intent (`base:
    /// None`) replaces everything; a delta applies only on top of exactly its base generation,
    /// otherwise the answer is `NeedFull` and nothing changes.
    pub fn apply_intent(&mut self, update: IntentUpdate, now_ms: u64) -> Applied {
        if update.generation <= self.generation {
            return Applied::not(AckOutcome::Stale { current: self.generation });
        }
        let mut old = match update.base {
            None => std::mem::take(&mut self.by_id),
            Some(base) if base != self.generation => {
                return Applied::not(AckOutcome::NeedFull { held: self.generation });
            }
            Some(_) => {
                for id in &update.removals {
                    self.by_id.remove(id);
                }
                BTreeMap::new()
            }
        };
        let mut added = Vec::new();
        for w in update.upserts {
            let previous = old.remove(&w.id).or_else(|| self.by_id.remove(&w.id));
            if previous.is_none() {
                added.push(w.deployment_id);
            }
            let held = self.place(previous, w.spec, w.restart_nonce, now_ms);
            self.by_id.insert(w.id, held);
        }
        self.changed(update.generation);
        Applied { outcome: AckOutcome::Applied, added }
    }

    /// Applies a protocol-1 assignment (the whole list; workloads named by deployment id) if it
    /// is newer than what is held.
    pub fn apply_assignment(&mut self, assignment: Assignment, now_ms: u64) -> Applied {
        if assignment.generation <= self.generation {
            return Applied::not(AckOutcome::Stale { current: self.generation });
        }
        let mut old = std::mem::take(&mut self.by_id);
        let mut added = Vec::new();
        for w in assignment.workloads {
            let previous = old.remove(&w.id);
            if previous.is_none() {
                added.push(w.id.clone());
            }
            let held = self.place(previous, WorkloadSpec::Process(w.spec), w.restart_nonce, now_ms);
            self.by_id.insert(w.id, held);
        }
        self.changed(assignment.generation);
        Applied { outcome: AckOutcome::Applied, added }
    }

    /// A workload as it runs after an update, given what ran before under the same id: the same
    /// template and restart nonce keep their replicas (scaled to the new count, new ones
    /// starting now); anything else "restarts" every replica now.
    fn place(&mut self, previous: Option<Held>, spec: WorkloadSpec, restart_nonce: u64, now_ms: u64) -> Held {
        let mut replicas = match previous {
            Some(p) if p.restart_nonce == restart_nonce && same_template(&p.spec, &spec) => p.replicas,
            _ => Vec::new(),
        };
        let want = spec.replicas() as usize;
        replicas.truncate(want);
        while replicas.len() < want {
            let pid = FIRST_PID.wrapping_add(self.starts);
            self.starts = self.starts.wrapping_add(1);
            replicas.push(Replica { pid, since_ms: now_ms });
        }
        Held { spec, restart_nonce, replicas }
    }

    fn changed(&mut self, generation: u64) {
        self.generation = generation;
        self.frame = None;
    }

    /// Every held replica running and ready, echoing the generation in force.
    pub fn status(&self) -> Status {
        let workloads = self
            .by_id
            .iter()
            .map(|(id, h)| WorkloadStatus {
                id: id.clone(),
                replicas: h
                    .replicas
                    .iter()
                    .zip(0u32..)
                    .map(|(r, index)| ReplicaStatus {
                        index,
                        phase: Phase::Running,
                        pid: Some(r.pid),
                        port: Some(20_000 + (r.pid % 40_000) as u16),
                        ready: true,
                        restarts: 0,
                        reason: None,
                        since_ms: r.since_ms,
                    })
                    .collect(),
            })
            .collect();
        Status { generation: self.generation, workloads }
    }

    /// [`Workloads::status`] as an encoded `AgentMessage::Status` frame, encoded once per change.
    pub fn status_frame(&mut self) -> Result<Arc<[u8]>, FrameError> {
        if let Some(frame) = &self.frame {
            return Ok(frame.clone());
        }
        let frame: Arc<[u8]> = ferry_protocol::encode_frame(&AgentMessage::Status(self.status()))?.into();
        self.frame = Some(frame.clone());
        self.encodings += 1;
        Ok(frame)
    }

    /// How many `Status` frames were encoded (a report repeats the last one when nothing
    /// changed since).
    pub fn status_encodings(&self) -> u64 {
        self.encodings
    }
}

/// The outcome of applying an update to [`Workloads`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// What to acknowledge.
    pub outcome: AckOutcome,
    /// The deployments of the workloads the update brought that were not held before.
    pub added: Vec<String>,
}

impl Applied {
    /// Nothing applied; acknowledge with `outcome`.
    fn not(outcome: AckOutcome) -> Self {
        Self { outcome, added: Vec::new() }
    }
}

/// What a simulated agent has seen, for the benchmark to read.
#[derive(Debug, Default)]
pub struct SimState {
    /// A session is established (Welcome received) and has not ended.
    pub connected: bool,
    pub heartbeat_interval: Option<Duration>,
    /// The protocol version the control plane chose in `Welcome`.
    pub protocol: Option<u16>,
    pub workloads: Workloads,
    /// When a workload of each deployment first arrived in an applied update. Keyed by
    /// deployment id, so that it reads the same under protocol 1 and 2.
    pub received_at: HashMap<String, Instant>,
    /// When a status first reported each deployment's workload (all replicas ready) to the
    /// control plane, by deployment id.
    pub reported_at: HashMap<String, Instant>,
    /// Updates (`Intent` or `Assignment`) applied, whole ones among them.
    pub updates_applied: u64,
    pub full_updates_applied: u64,
    /// Updates acknowledged `Stale` (not newer than what was held).
    pub updates_stale: u64,
    /// Deltas answered `NeedFull` (their base was not the generation held).
    pub need_full_sent: u64,
    pub statuses_sent: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    /// Why the session ended (close code and reason, or the transport error), if it did.
    pub ended: Option<String>,
    /// Deployments received but not reported yet.
    unreported: Vec<String>,
    /// The last report of the session: with protocol 2 the next one is only what changed, as
    /// `ferry-agent` sends it.
    last_reported: Option<ferry_protocol::Status>,
}

/// A running simulated agent. Dropping it closes its session.
pub struct SimAgent {
    pub agent_id: String,
    state: Arc<Mutex<SimState>>,
    connected: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimAgent {
    /// Connects with `identity` from `endpoint` and runs the session on a task of its own.
    /// Use [`SimAgent::wait_connected`] to wait for the Welcome.
    pub fn start(endpoint: Endpoint, server: SocketAddr, identity: Identity, name: String) -> Self {
        let state = Arc::new(Mutex::new(SimState::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let agent_id = identity.agent_id.clone();
        let session = Session { state: state.clone(), identity, name, connected: connected_tx };
        let task = tokio::spawn(async move {
            let ended = session.run(&endpoint, server, shutdown_rx).await;
            let mut s = session.state.lock().expect("sim state");
            s.connected = false;
            s.ended = Some(ended);
            drop(s);
            session.connected.send_replace(false);
        });
        Self { agent_id, state, connected, shutdown, task: Some(task) }
    }

    /// Waits for the Welcome; an error says why the session ended first, or that it timed out.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.connected.clone();
        // The session task drops the sender when it ends, which ends the wait with an error.
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(self.ended().unwrap_or_else(|| "session ended".into())),
            Err(_) => Err(format!("no Welcome within {timeout:?}")),
        }
    }

    /// Reads the agent's state under its lock.
    pub fn with_state<T>(&self, f: impl FnOnce(&SimState) -> T) -> T {
        f(&self.state.lock().expect("sim state"))
    }

    pub fn is_connected(&self) -> bool {
        self.with_state(|s| s.connected)
    }

    pub fn ended(&self) -> Option<String> {
        self.with_state(|s| s.ended.clone())
    }

    /// When a workload of `deployment` first arrived.
    pub fn received_at(&self, deployment: &str) -> Option<Instant> {
        self.with_state(|s| s.received_at.get(deployment).copied())
    }

    /// When a status first reported `deployment`'s workload ready.
    pub fn reported_at(&self, deployment: &str) -> Option<Instant> {
        self.with_state(|s| s.reported_at.get(deployment).copied())
    }

    /// Closes the session (close code `Normal`) and waits for the task to finish.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct Session {
    state: Arc<Mutex<SimState>>,
    identity: Identity,
    name: String,
    connected: watch::Sender<bool>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn describe(e: &TransportError) -> String {
    match e.close_code() {
        Some((code, reason)) => format!("closed by the control plane: {code:?} ({reason})"),
        None => e.to_string(),
    }
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().expect("sim state")
    }

    /// Runs one session until it ends; returns why.
    async fn run(&self, endpoint: &Endpoint, server: SocketAddr, mut shutdown: watch::Receiver<bool>) -> String {
        let id = &self.identity;
        let tls = match ferry_certs::tls::client_config(&id.ca_pem, &id.cert_pem, &id.key_pem, ferry_protocol::ALPN) {
            Ok(t) => t,
            Err(e) => return format!("TLS config: {e}"),
        };
        let cfg = match ferry_transport::client_config(tls) {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let conn = match ferry_transport::connect(endpoint, cfg, server, ferry_certs::CONTROL_PLANE_NAME, TIMEOUT).await
        {
            Ok(c) => c,
            Err(e) => return format!("handshake: {}", describe(&e)),
        };
        let ended = tokio::select! {
            r = self.serve(&conn) => match r {
                Ok(reason) => reason,
                Err(e) => describe(&e),
            },
            _ = shutdown.wait_for(|s| *s) => "stopped".into(),
        };
        ferry_transport::close(&conn, CloseCode::Normal, "simulated agent stopping");
        ended
    }

    async fn serve(&self, conn: &quinn::Connection) -> Result<String, TransportError> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = AgentMessage::Hello(Hello {
            protocol_min: PROTOCOL_MIN,
            protocol_max: PROTOCOL_MAX,
            agent_id: self.identity.agent_id.clone(),
            agent_version: "ferry-sim".into(),
            name: self.name.clone(),
            labels: BTreeMap::new(),
            capabilities: vec!["runtime:process".into()],
            last_generation: self.lock().workloads.generation(),
        });
        ferry_transport::write_frame_timeout(&mut send, &hello, WRITE_TIMEOUT).await?;
        let welcome = match ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, TIMEOUT).await? {
            Some(ServerMessage::Welcome(w)) => w,
            Some(ServerMessage::Error(e)) => return Ok(format!("refused: {:?}: {}", e.code, e.message)),
            other => return Ok(format!("expected Welcome, got {other:?}")),
        };
        if !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&welcome.protocol_version) {
            return Ok(format!(
                "the control plane chose protocol {}, we speak {PROTOCOL_MIN}..={PROTOCOL_MAX}",
                welcome.protocol_version
            ));
        }
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        {
            let mut s = self.lock();
            s.connected = true;
            s.heartbeat_interval = Some(interval);
            s.protocol = Some(welcome.protocol_version);
        }
        self.connected.send_replace(true);
        let mut frames = spawn_reader(recv);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        // The real agent reports right after Welcome.
        self.send_status(&mut send).await?;
        let mut last_status = tokio::time::Instant::now();
        let mut status_due = false;
        loop {
            let next_status = last_status + STATUS_GAP;
            tokio::select! {
                msg = frames.recv() => {
                    let msg = match msg {
                        Some(Ok(Some(m))) => m,
                        Some(Ok(None)) | None => return Ok("the control plane finished the control stream".into()),
                        Some(Err(e)) => return Err(e),
                    };
                    let ack = match msg {
                        ServerMessage::Intent(u) => {
                            let (generation, full) = (u.generation, u.base.is_none());
                            Some(self.apply(generation, full, |w, now| w.apply_intent(u, now)))
                        }
                        ServerMessage::Assignment(a) => {
                            let generation = a.generation;
                            Some(self.apply(generation, true, |w, now| w.apply_assignment(a, now)))
                        }
                        ServerMessage::HeartbeatAck(_) => {
                            self.lock().heartbeats_acked += 1;
                            None
                        }
                        ServerMessage::Error(e) => return Ok(format!("error from the control plane: {:?}: {}", e.code, e.message)),
                        other => return Ok(format!("unexpected message in session: {other:?}")),
                    };
                    if let Some(ack) = ack {
                        status_due |= ack.outcome == AckOutcome::Applied;
                        ferry_transport::write_frame_timeout(&mut send, &AgentMessage::Ack(ack), WRITE_TIMEOUT).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    let hb = AgentMessage::Heartbeat(Heartbeat { seq, sent_at_ms: now_ms() });
                    ferry_transport::write_frame_timeout(&mut send, &hb, WRITE_TIMEOUT).await?;
                    self.lock().heartbeats_sent += 1;
                    // The real agent reports an unchanged state again every sixth heartbeat.
                    if seq.is_multiple_of(6) {
                        status_due = true;
                    }
                }
                () = tokio::time::sleep_until(next_status), if status_due => {}
            }
            if status_due && tokio::time::Instant::now() >= last_status + STATUS_GAP {
                self.send_status(&mut send).await?;
                last_status = tokio::time::Instant::now();
                status_due = false;
            }
        }
    }

    /// Applies an update (`generation`; `full` for a whole intent) to the held workloads with
    /// `apply`, records when new deployments arrived, and returns the ack.
    fn apply(&self, generation: u64, full: bool, apply: impl FnOnce(&mut Workloads, u64) -> Applied) -> Ack {
        let at = Instant::now();
        let mut s = self.lock();
        let Applied { outcome, added } = apply(&mut s.workloads, now_ms());
        match outcome {
            AckOutcome::Applied => {
                s.updates_applied += 1;
                s.full_updates_applied += u64::from(full);
                for deployment in &added {
                    s.received_at.entry(deployment.clone()).or_insert(at);
                }
                s.unreported.extend(added);
            }
            AckOutcome::NeedFull { .. } => s.need_full_sent += 1,
            AckOutcome::Stale { .. } => s.updates_stale += 1,
            // `Workloads` never rejects an update.
            AckOutcome::Rejected { .. } => {}
        }
        Ack { generation, outcome }
    }

    /// Sends the status of what is held: the frame encoded after the last change, again if
    /// nothing changed since.
    async fn send_status(&self, send: &mut SendStream) -> Result<(), TransportError> {
        let (frame, reported) = {
            let mut s = self.lock();
            let frame: Arc<[u8]> = match (&s.last_reported, s.protocol) {
                (Some(previous), Some(p)) if p >= 2 => {
                    let current = s.workloads.status();
                    let Some(delta) = ferry_protocol::StatusDelta::between(previous, &current) else {
                        return Ok(());
                    };
                    s.last_reported = Some(current);
                    ferry_protocol::encode_frame(&AgentMessage::StatusDelta(delta))?.into()
                }
                _ => {
                    s.last_reported = Some(s.workloads.status());
                    s.workloads.status_frame()?
                }
            };
            (frame, std::mem::take(&mut s.unreported))
        };
        tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&frame))
            .await
            .map_err(|_| TransportError::Timeout(WRITE_TIMEOUT))??;
        let at = Instant::now();
        let mut s = self.lock();
        s.statuses_sent += 1;
        for deployment in reported {
            s.reported_at.entry(deployment).or_insert(at);
        }
        Ok(())
    }
}

/// Reads frames on a task of their own (reads are not cancel-safe inside `select!`).
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<Option<ServerMessage>, TransportError>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let r = ferry_transport::read_frame::<ServerMessage>(&mut recv).await;
            let more = matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || !more {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use ferry_protocol::{ProcessSpec, RestartPolicy, Workload, WorkloadIntent};

    use super::*;

    fn spec(replicas: u32) -> ProcessSpec {
        ProcessSpec {
            command: "/bin/sleep".into(),
            args: vec!["3600".into()],
            env: BTreeMap::new(),
            working_dir: None,
            replicas,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 1000,
        }
    }

    fn workload(id: &str, replicas: u32) -> Workload {
        Workload { id: id.into(), name: id.into(), version: "v1".into(), spec: spec(replicas), restart_nonce: 0 }
    }

    fn intent(deployment: &str, revision: u64, replicas: u32) -> WorkloadIntent {
        WorkloadIntent {
            id: WorkloadIntent::id_for(deployment, revision),
            deployment_id: deployment.into(),
            revision,
            name: deployment.into(),
            version: format!("v{revision}"),
            restart_nonce: 0,
            spec: WorkloadSpec::Process(spec(replicas)),
        }
    }

    fn full(generation: u64, upserts: Vec<WorkloadIntent>) -> IntentUpdate {
        IntentUpdate { generation, base: None, upserts, removals: vec![] }
    }

    fn delta(generation: u64, base: u64, upserts: Vec<WorkloadIntent>, removals: &[&str]) -> IntentUpdate {
        IntentUpdate {
            generation,
            base: Some(base),
            upserts,
            removals: removals.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Workload id → (replica count, pids, since_ms of the first replica).
    fn seen(w: &Workloads) -> BTreeMap<String, (usize, Vec<u32>, u64)> {
        w.status()
            .workloads
            .into_iter()
            .map(|s| {
                let pids = s.replicas.iter().map(|r| r.pid.expect("pid")).collect();
                (s.id, (s.replicas.len(), pids, s.replicas[0].since_ms))
            })
            .collect()
    }

    #[test]
    fn applies_newer_assignments_and_acks_stale() {
        let mut w = Workloads::default();
        let a = Assignment { generation: 2, workloads: vec![workload("d-1", 2), workload("d-2", 1)] };
        assert_eq!(
            w.apply_assignment(a.clone(), 10),
            Applied { outcome: AckOutcome::Applied, added: vec!["d-1".into(), "d-2".into()] }
        );
        assert_eq!(w.apply_assignment(a, 20), Applied { outcome: AckOutcome::Stale { current: 2 }, added: vec![] });
        let old = Assignment { generation: 1, workloads: vec![] };
        assert_eq!(w.apply_assignment(old, 30).outcome, AckOutcome::Stale { current: 2 });
        assert_eq!((w.generation(), w.len()), (2, 2));
        let status = w.status();
        assert_eq!(status.generation, 2);
        assert_eq!(status.workloads.iter().map(|s| s.replicas.len()).collect::<Vec<_>>(), [2, 1]);
        assert!(status.workloads.iter().flat_map(|s| &s.replicas).all(|r| r.ready && r.phase == Phase::Running));
    }

    #[test]
    fn unchanged_assignment_workloads_keep_their_start_time() {
        let mut w = Workloads::default();
        w.apply_assignment(Assignment { generation: 1, workloads: vec![workload("d-1", 1), workload("d-2", 1)] }, 10);
        let change = w.apply_assignment(
            Assignment { generation: 2, workloads: vec![workload("d-1", 1), workload("d-2", 3)] },
            20,
        );
        assert!(change.added.is_empty());
        let since: Vec<u64> = w.status().workloads.iter().flat_map(|s| s.replicas.iter().map(|r| r.since_ms)).collect();
        assert_eq!(since, [10, 10, 20, 20], "d-2 scaled from 1 to 3: its first replica keeps running");
        let mut restarted = workload("d-1", 1);
        restarted.restart_nonce = 1;
        w.apply_assignment(Assignment { generation: 3, workloads: vec![restarted, workload("d-2", 3)] }, 30);
        assert_eq!(seen(&w)["d-1"].2, 30, "a new restart nonce restarts");
        w.apply_assignment(Assignment { generation: 4, workloads: vec![workload("d-2", 3)] }, 40);
        assert!(!w.contains("d-1") && w.contains("d-2"));
    }

    #[test]
    fn whole_intent_replaces_and_deltas_apply_on_their_base_only() {
        let mut w = Workloads::default();
        let applied = w.apply_intent(full(3, vec![intent("d-1", 1, 2), intent("d-2", 1, 1)]), 10);
        assert_eq!(applied, Applied { outcome: AckOutcome::Applied, added: vec!["d-1".into(), "d-2".into()] });
        let ids: Vec<String> = w.status().workloads.into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["d-1@1", "d-2@1"], "status names workloads <deployment>@<revision>");

        // A delta on the generation held: a canary revision next to d-1@1, d-2 gone.
        let applied = w.apply_intent(delta(5, 3, vec![intent("d-1", 2, 1)], &["d-2@1"]), 20);
        assert_eq!(applied, Applied { outcome: AckOutcome::Applied, added: vec!["d-1".into()] });
        assert_eq!(seen(&w).keys().collect::<Vec<_>>(), ["d-1@1", "d-1@2"]);
        assert_eq!(w.generation(), 5);

        // A delta on another base changes nothing and asks for the whole intent.
        let before = seen(&w);
        assert_eq!(
            w.apply_intent(delta(7, 6, vec![intent("d-3", 1, 1)], &["d-1@1"]), 30).outcome,
            AckOutcome::NeedFull { held: 5 }
        );
        assert_eq!((w.generation(), seen(&w)), (5, before));

        // Not newer: stale, whole or delta.
        assert_eq!(w.apply_intent(full(5, vec![]), 40).outcome, AckOutcome::Stale { current: 5 });
        assert_eq!(w.apply_intent(delta(4, 3, vec![], &["d-1@1"]), 40).outcome, AckOutcome::Stale { current: 5 });
        assert_eq!(w.len(), 2);

        // A whole intent replaces everything; what stays keeps running.
        let pids = seen(&w)["d-1@2"].1.clone();
        let applied = w.apply_intent(full(8, vec![intent("d-1", 2, 1), intent("d-3", 1, 1)]), 50);
        assert_eq!(applied.added, ["d-3"]);
        let now = seen(&w);
        assert_eq!(now.keys().collect::<Vec<_>>(), ["d-1@2", "d-3@1"]);
        assert_eq!((now["d-1@2"].1.clone(), now["d-1@2"].2), (pids, 20));
    }

    #[test]
    fn replicas_keep_their_pid_when_other_workloads_come_and_go() {
        // The control plane writes only what changed in a report: adding a workload must not
        // change what is reported for the others.
        let mut w = Workloads::default();
        w.apply_intent(full(1, vec![intent("d-b", 1, 2)]), 10);
        let before = seen(&w)["d-b@1"].clone();
        w.apply_intent(delta(2, 1, vec![intent("d-a", 1, 1)], &[]), 20);
        w.apply_intent(delta(3, 2, vec![intent("d-c", 1, 1)], &[]), 30);
        assert_eq!(seen(&w)["d-b@1"], before);
        let pids: Vec<u32> = seen(&w).values().flat_map(|s| s.1.clone()).collect();
        let mut unique = pids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), pids.len(), "every replica has a pid of its own");
    }

    #[test]
    fn the_status_frame_is_encoded_once_per_change() {
        let mut w = Workloads::default();
        let empty = w.status_frame().expect("encodes");
        assert_eq!(Arc::as_ptr(&empty), Arc::as_ptr(&w.status_frame().expect("encodes")));
        w.apply_intent(full(1, vec![intent("d-1", 1, 3)]), 10);
        let frame = w.status_frame().expect("encodes");
        w.apply_intent(delta(2, 5, vec![], &["d-1@1"]), 20); // NeedFull: no change
        w.apply_intent(full(1, vec![]), 20); // stale: no change
        assert_eq!(Arc::as_ptr(&frame), Arc::as_ptr(&w.status_frame().expect("encodes")));
        assert_eq!(w.status_encodings(), 2);
        let mut decoder = ferry_protocol::FrameDecoder::default();
        decoder.push(&frame);
        assert_eq!(decoder.decode::<AgentMessage>().expect("decodes"), Some(AgentMessage::Status(w.status())));
    }
}
