//! Simulated agents: faithful protocol peers that pretend to run processes instantly, so that one
//! process can stand in for thousands of agents in benchmarks.
//!
//! A simulated agent enrolls with a bootstrap token (pinning the CA by the token's fingerprint,
//! as `ferry-agent` does), then holds one mTLS QUIC session: `Hello` (declaring
//! `runtime:process`), heartbeats at the interval `Welcome` dictates, an `Ack` for every
//! `Assignment` (`Applied` when newer than the last one, `Stale` otherwise), and `Status` reports
//! — right after `Welcome`, after every applied assignment (at most one per 25 ms, like the real
//! agent) and at every heartbeat — that show every assigned replica running and ready, with a
//! fake pid and port.
//!
//! What it does not do: reconnect (a lost session is recorded in [`SimState::ended`] and the
//! agent stops, so a benchmark reports it instead of hiding it), renew its certificate (runs are
//! far shorter than the default 12 h lifetime), or ship logs.
//!
//! Many agents share a few quinn [`Endpoint`]s (one UDP socket each) instead of one per agent;
//! see [`Endpoints`].
//!
//! All assignment handling lives in [`Workloads`]: the workloads by id and the generation they
//! came with, what to acknowledge, and the status to report.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{
    AckOutcome, AgentMessage, Assignment, CloseCode, Enroll, Heartbeat, Hello, Phase, ReplicaStatus, ServerMessage,
    Status, Workload, WorkloadStatus,
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

/// The workloads a simulated agent holds and the generation they came with. This is the only
/// place that interprets assignments; a delta message would be applied here too.
#[derive(Debug, Default)]
pub struct Workloads {
    generation: u64,
    by_id: BTreeMap<String, Held>,
}

#[derive(Debug)]
struct Held {
    workload: Workload,
    /// When its replicas "started" (Unix ms): kept while the spec and restart nonce stay.
    since_ms: u64,
}

impl Workloads {
    /// The generation of the last applied assignment (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Applies a full assignment if it is newer than the last one. Replicas of an unchanged
    /// workload keep their start time; changed ones "restart" now.
    pub fn apply(&mut self, assignment: Assignment, now_ms: u64) -> Applied {
        if assignment.generation <= self.generation {
            return Applied { outcome: AckOutcome::Stale { current: self.generation }, added: Vec::new() };
        }
        let mut old = std::mem::take(&mut self.by_id);
        let mut added = Vec::new();
        for workload in assignment.workloads {
            let since_ms = match old.remove(&workload.id) {
                Some(h) if h.workload.spec == workload.spec && h.workload.restart_nonce == workload.restart_nonce => {
                    h.since_ms
                }
                Some(_) => now_ms,
                None => {
                    added.push(workload.id.clone());
                    now_ms
                }
            };
            self.by_id.insert(workload.id.clone(), Held { workload, since_ms });
        }
        self.generation = assignment.generation;
        Applied { outcome: AckOutcome::Applied, added }
    }

    /// Every held replica running and ready, echoing the generation in force.
    pub fn status(&self) -> Status {
        let workloads = self
            .by_id
            .values()
            .enumerate()
            .map(|(w, h)| WorkloadStatus {
                id: h.workload.id.clone(),
                replicas: (0..h.workload.spec.replicas)
                    .map(|index| ReplicaStatus {
                        index,
                        phase: Phase::Running,
                        pid: Some(100_000 + w as u32 * 100 + index),
                        port: Some(20_000 + ((w as u32 * 100 + index) % 40_000) as u16),
                        ready: true,
                        restarts: 0,
                        reason: None,
                        since_ms: h.since_ms,
                    })
                    .collect(),
            })
            .collect();
        Status { generation: self.generation, workloads }
    }
}

/// The outcome of [`Workloads::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// What to acknowledge.
    pub outcome: AckOutcome,
    /// Workload ids the agent did not hold before.
    pub added: Vec<String>,
}

/// What a simulated agent has seen, for the benchmark to read.
#[derive(Debug, Default)]
pub struct SimState {
    /// A session is established (Welcome received) and has not ended.
    pub connected: bool,
    pub heartbeat_interval: Option<Duration>,
    pub workloads: Workloads,
    /// When each workload id first appeared in an applied assignment.
    pub received_at: HashMap<String, Instant>,
    /// When a status first reported each workload (all replicas ready) to the control plane.
    pub reported_at: HashMap<String, Instant>,
    pub assignments_applied: u64,
    pub assignments_stale: u64,
    pub statuses_sent: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    /// Why the session ended (close code and reason, or the transport error), if it did.
    pub ended: Option<String>,
    /// Workloads received but not reported yet.
    unreported: Vec<String>,
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

    pub fn received_at(&self, workload: &str) -> Option<Instant> {
        self.with_state(|s| s.received_at.get(workload).copied())
    }

    pub fn reported_at(&self, workload: &str) -> Option<Instant> {
        self.with_state(|s| s.reported_at.get(workload).copied())
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
            protocol_min: ferry_protocol::PROTOCOL_VERSION_MIN,
            protocol_max: ferry_protocol::PROTOCOL_VERSION,
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
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        {
            let mut s = self.lock();
            s.connected = true;
            s.heartbeat_interval = Some(interval);
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
                    match msg {
                        ServerMessage::Assignment(a) => {
                            let at = Instant::now();
                            let ack = self.apply(a, at);
                            ferry_transport::write_frame_timeout(&mut send, &AgentMessage::Ack(ack.clone()), WRITE_TIMEOUT).await?;
                            status_due |= ack.outcome == AckOutcome::Applied;
                        }
                        ServerMessage::HeartbeatAck(_) => self.lock().heartbeats_acked += 1,
                        ServerMessage::Error(e) => return Ok(format!("error from the control plane: {:?}: {}", e.code, e.message)),
                        other => return Ok(format!("unexpected message in session: {other:?}")),
                    }
                }
                _ = heartbeat.tick() => {
                    seq += 1;
                    let hb = AgentMessage::Heartbeat(Heartbeat { seq, sent_at_ms: now_ms() });
                    ferry_transport::write_frame_timeout(&mut send, &hb, WRITE_TIMEOUT).await?;
                    self.lock().heartbeats_sent += 1;
                    // The real agent also reports its status at every heartbeat.
                    status_due = true;
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

    /// Applies an assignment to the held workloads and records when new workloads arrived.
    fn apply(&self, assignment: Assignment, at: Instant) -> ferry_protocol::Ack {
        let generation = assignment.generation;
        let mut s = self.lock();
        let Applied { outcome, added } = s.workloads.apply(assignment, now_ms());
        if outcome == AckOutcome::Applied {
            s.assignments_applied += 1;
            for id in &added {
                s.received_at.entry(id.clone()).or_insert(at);
            }
            s.unreported.extend(added);
        } else {
            s.assignments_stale += 1;
        }
        ferry_protocol::Ack { generation, outcome }
    }

    async fn send_status(&self, send: &mut SendStream) -> Result<(), TransportError> {
        let (status, reported) = {
            let mut s = self.lock();
            (s.workloads.status(), std::mem::take(&mut s.unreported))
        };
        ferry_transport::write_frame_timeout(send, &AgentMessage::Status(status), WRITE_TIMEOUT).await?;
        let at = Instant::now();
        let mut s = self.lock();
        s.statuses_sent += 1;
        for id in reported {
            s.reported_at.entry(id).or_insert(at);
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
    use ferry_protocol::{ProcessSpec, RestartPolicy};

    use super::*;

    fn workload(id: &str, replicas: u32) -> Workload {
        Workload {
            id: id.into(),
            name: id.into(),
            version: "v1".into(),
            spec: ProcessSpec {
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
            },
            restart_nonce: 0,
        }
    }

    #[test]
    fn applies_newer_and_acks_stale() {
        let mut w = Workloads::default();
        let a = Assignment { generation: 2, workloads: vec![workload("d-1", 2), workload("d-2", 1)] };
        assert_eq!(
            w.apply(a.clone(), 10),
            Applied { outcome: AckOutcome::Applied, added: vec!["d-1".into(), "d-2".into()] }
        );
        assert_eq!(w.apply(a, 20), Applied { outcome: AckOutcome::Stale { current: 2 }, added: vec![] });
        let old = Assignment { generation: 1, workloads: vec![] };
        assert_eq!(w.apply(old, 30).outcome, AckOutcome::Stale { current: 2 });
        assert_eq!((w.generation(), w.len()), (2, 2));
        let status = w.status();
        assert_eq!(status.generation, 2);
        assert_eq!(status.workloads.iter().map(|s| s.replicas.len()).collect::<Vec<_>>(), [2, 1]);
        assert!(status.workloads.iter().flat_map(|s| &s.replicas).all(|r| r.ready && r.phase == Phase::Running));
    }

    #[test]
    fn unchanged_workloads_keep_their_start_time() {
        let mut w = Workloads::default();
        w.apply(Assignment { generation: 1, workloads: vec![workload("d-1", 1), workload("d-2", 1)] }, 10);
        let change = w.apply(Assignment { generation: 2, workloads: vec![workload("d-1", 1), workload("d-2", 3)] }, 20);
        assert!(change.added.is_empty());
        let since: Vec<u64> = w.status().workloads.iter().map(|s| s.replicas[0].since_ms).collect();
        assert_eq!(since, [10, 20]);
        w.apply(Assignment { generation: 3, workloads: vec![workload("d-2", 3)] }, 30);
        assert!(!w.contains("d-1") && w.contains("d-2"));
    }
}
