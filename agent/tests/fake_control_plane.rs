//! The agent against a small in-process control plane speaking the real protocol over real
//! QUIC + mutual TLS (ferry-certs, ferry-transport): enrollment, Hello/Welcome, assignments,
//! heartbeats, renewal over the live connection, close codes, restart from the state dir,
//! workloads run by the process runtime, status reports and log shipping; protocol 1 by
//! default, protocol 2 (intent updates, `NeedFull`) when told to.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::{AgentConfig, AgentState, Exit};
use ferry_certs::{Ca, Validity};
use ferry_protocol::{
    Ack, AckOutcome, AgentMessage, Assignment, CertificateRenewed, CloseCode, Enrolled, ErrorCode, HeartbeatAck,
    IntentUpdate, Phase, ProcessSpec, RestartPolicy, ServerMessage, Status, TelemetryAck, Welcome, WireError, Workload,
    WorkloadIntent, WorkloadSpec, WorkloadStatus,
};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{broadcast, watch};

const HEARTBEAT_MS: u32 = 200;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Enrolled(String),
    Hello {
        agent_id: String,
        last_generation: u64,
    },
    Ack(Ack),
    Heartbeat,
    /// A heartbeat received by a session told to stay silent.
    IgnoredHeartbeat,
    Renewed(String),
    /// The agent closed the connection with this code and reason.
    AgentClosed(u64, String),
}

struct Fake {
    addr: SocketAddr,
    ca: Arc<Ca>,
    shared: Arc<Shared>,
}

/// One `LogBatch` received, on the n-th session (counting from 1).
#[derive(Debug, Clone, PartialEq)]
struct Batch {
    session: u32,
    source: String,
    first_seq: u64,
    lines: Vec<String>,
}

struct Shared {
    token: String,
    cert_lifetime: Duration,
    revoked: Mutex<HashSet<String>>,
    conns: Mutex<Vec<Connection>>,
    events: Mutex<Vec<Event>>,
    generation: Mutex<u64>,
    workloads: Mutex<Vec<Workload>>,
    pushes: broadcast::Sender<Assignment>,
    /// The protocol version the fake speaks (1 unless a test says otherwise). With 2 it sends
    /// nothing after Welcome (as a control plane that thinks the agent is up to date), pushes
    /// `intents`, and answers `NeedFull` with `full`.
    protocol: AtomicU16,
    intents: broadcast::Sender<IntentUpdate>,
    full: Mutex<Option<IntentUpdate>>,
    next_id: Mutex<u32>,
    sessions: Mutex<u32>,
    /// Status reports, tagged with their session.
    statuses: Mutex<Vec<(u32, Status)>>,
    batches: Mutex<Vec<Batch>>,
    /// Whether log batches are acknowledged.
    ack_logs: AtomicBool,
    /// The session (counting from 1) that hangs: it keeps the connection open and keeps reading
    /// but answers nothing any more, on any stream. 0: none.
    silent_session: AtomicU32,
    /// Anything the agent did against the protocol.
    violations: Mutex<Vec<String>>,
}

impl Shared {
    fn record(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
    fn assignment(&self) -> Assignment {
        Assignment { generation: *self.generation.lock().unwrap(), workloads: self.workloads.lock().unwrap().clone() }
    }
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
    fn is_silent(&self, session: u32) -> bool {
        self.silent_session.load(Ordering::SeqCst) == session
    }
}

impl Fake {
    async fn start(cert_lifetime: Duration) -> Fake {
        let _ = ferry_certs::tls::provider();
        let ca = Arc::new(Ca::generate("fake").unwrap());
        let server = ca.issue_server(&["127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
        let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
        let tls =
            ferry_certs::tls::server_config(&chain, &server.key_pem, &[ca.cert_pem()], ferry_protocol::ALPN).unwrap();
        let endpoint = ferry_transport::server_endpoint("127.0.0.1:0".parse().unwrap(), tls).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let shared = Arc::new(Shared {
            token: format!("ferry1.0011223344556677.00112233445566778899aabbccddeeff.{}", ca.fingerprint()),
            cert_lifetime,
            revoked: Mutex::default(),
            conns: Mutex::default(),
            events: Mutex::default(),
            generation: Mutex::new(1),
            workloads: Mutex::default(),
            pushes: broadcast::channel(16).0,
            protocol: AtomicU16::new(1),
            intents: broadcast::channel(16).0,
            full: Mutex::default(),
            next_id: Mutex::new(0),
            sessions: Mutex::new(0),
            statuses: Mutex::default(),
            batches: Mutex::default(),
            ack_logs: AtomicBool::new(true),
            silent_session: AtomicU32::new(0),
            violations: Mutex::default(),
        });
        let (ca2, shared2) = (ca.clone(), shared.clone());
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (ca, shared) = (ca2.clone(), shared2.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    match ferry_transport::peer_leaf_der(&conn) {
                        None => enroll(conn, &ca, &shared).await,
                        Some(der) => session(conn, der, &ca, &shared).await,
                    }
                });
            }
        });
        Fake { addr, ca, shared }
    }

    fn config(&self, dir: &std::path::Path) -> AgentConfig {
        let mut c = AgentConfig::new(self.addr.to_string(), dir);
        c.name = "test-agent".into();
        c.token = Some(self.shared.token.clone());
        c.max_backoff = Duration::from_millis(200);
        c
    }

    fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().clone()
    }

    fn push(&self, generation: u64) {
        *self.shared.generation.lock().unwrap() = generation;
        let _ = self.shared.pushes.send(self.shared.assignment());
    }

    fn statuses(&self) -> Vec<(u32, Status)> {
        self.shared.statuses.lock().unwrap().clone()
    }

    fn batches(&self) -> Vec<Batch> {
        self.shared.batches.lock().unwrap().clone()
    }

    /// Waits for a status report matching `f(session, status)`.
    async fn wait_status(&self, what: &str, mut f: impl FnMut(u32, &Status) -> bool) -> Status {
        let mut found = None;
        eventually(what, || {
            found = self.statuses().into_iter().find(|(session, s)| f(*session, s)).map(|(_, s)| s);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    fn close_all(&self, code: CloseCode, reason: &str) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            ferry_transport::close(&c, code, reason);
        }
    }

    fn revoke(&self, agent_id: &str) {
        self.shared.revoked.lock().unwrap().insert(agent_id.to_string());
        self.close_all(CloseCode::Revoked, "agent revoked");
    }
}

async fn enroll(conn: Connection, ca: &Ca, shared: &Shared) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let Ok(Some(AgentMessage::Enroll(req))) = ferry_transport::read_frame::<AgentMessage>(&mut recv).await else {
        return ferry_transport::close(&conn, CloseCode::ProtocolError, "expected Enroll");
    };
    let (reply, code) = if req.token == shared.token {
        let id = {
            let mut n = shared.next_id.lock().unwrap();
            *n += 1;
            format!("agent-{n}")
        };
        let issued = ca.sign_agent_csr(&req.csr_pem, &id, Validity::from_now(shared.cert_lifetime)).unwrap();
        shared.record(Event::Enrolled(id.clone()));
        let e = Enrolled { agent_id: id, certificate_pem: issued.cert_pem, ca_pem: ca.cert_pem().into() };
        (ServerMessage::Enrolled(e), CloseCode::Normal)
    } else {
        let e = WireError { code: ErrorCode::TokenUnknown, message: "unknown bootstrap token".into() };
        (ServerMessage::Error(e), CloseCode::EnrollmentRejected)
    };
    ferry_transport::write_frame(&mut send, &reply).await.unwrap();
    let _ = send.finish();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "the agent must close the enrollment connection itself");
    ferry_transport::close(&conn, code, "enrollment finished");
}

async fn session(conn: Connection, der: Vec<u8>, ca: &Ca, shared: &Arc<Shared>) {
    let agent_id = ferry_certs::agent_id_from_cert(&der).unwrap();
    if shared.revoked.lock().unwrap().contains(&agent_id) {
        return ferry_transport::close(&conn, CloseCode::Revoked, "agent revoked");
    }
    shared.conns.lock().unwrap().push(conn.clone());
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let Ok(Some(AgentMessage::Hello(hello))) = ferry_transport::read_frame::<AgentMessage>(&mut recv).await else {
        return ferry_transport::close(&conn, CloseCode::ProtocolError, "expected Hello");
    };
    assert_eq!(hello.agent_id, agent_id);
    assert_eq!(hello.capabilities, vec!["runtime:process".to_string(), "secrets:v1".to_string(), "git:v1".to_string()]);
    shared.record(Event::Hello { agent_id: agent_id.clone(), last_generation: hello.last_generation });
    let number = {
        let mut n = shared.sessions.lock().unwrap();
        *n += 1;
        *n
    };
    // Any further bidirectional stream is a telemetry stream.
    let telemetry = {
        let (conn, shared) = (conn.clone(), shared.clone());
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(telemetry(number, send, recv, shared.clone()));
            }
        })
    };
    let protocol = shared.protocol.load(Ordering::SeqCst);
    let welcome = Welcome {
        protocol_version: protocol,
        agent_id: agent_id.clone(),
        heartbeat_interval_ms: HEARTBEAT_MS,
        server_time_ms: 0,
    };
    let mut pushes = shared.pushes.subscribe();
    let mut intents = shared.intents.subscribe();
    ferry_transport::write_frame(&mut send, &ServerMessage::Welcome(welcome)).await.unwrap();
    if protocol == 1 {
        ferry_transport::write_frame(&mut send, &ServerMessage::Assignment(shared.assignment())).await.unwrap();
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(m)) = ferry_transport::read_frame::<AgentMessage>(&mut recv).await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut reported: Option<ferry_protocol::Status> = None;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            Ok(a) = pushes.recv() => {
                if !shared.is_silent(number) {
                    let _ = ferry_transport::write_frame(&mut send, &ServerMessage::Assignment(a)).await;
                }
                continue;
            }
            Ok(u) = intents.recv() => {
                let _ = ferry_transport::write_frame(&mut send, &ServerMessage::Intent(u)).await;
                continue;
            }
        };
        let Some(msg) = msg else { break };
        if shared.is_silent(number) {
            if matches!(msg, AgentMessage::Heartbeat(_)) {
                shared.record(Event::IgnoredHeartbeat);
            }
            continue;
        }
        let reply = match msg {
            AgentMessage::Heartbeat(hb) => {
                shared.record(Event::Heartbeat);
                ServerMessage::HeartbeatAck(HeartbeatAck { seq: hb.seq, server_time_ms: 0 })
            }
            AgentMessage::Ack(ack) => {
                let need_full = matches!(ack.outcome, AckOutcome::NeedFull { .. });
                if need_full && protocol == 1 {
                    shared.violation(format!("NeedFull under protocol 1: {ack:?}"));
                }
                shared.record(Event::Ack(ack));
                let full = shared.full.lock().unwrap().clone();
                match full {
                    Some(full) if need_full => ServerMessage::Intent(full),
                    _ => continue,
                }
            }
            AgentMessage::Status(status) => {
                reported = Some(status.clone());
                shared.statuses.lock().unwrap().push((number, status));
                continue;
            }
            AgentMessage::StatusDelta(d) => {
                // Rebuild the whole report the delta stands for, as the control plane does.
                let mut whole = reported.clone().expect("a whole status comes first in a session");
                whole.generation = d.generation;
                whole.workloads.retain(|w| !d.removed.contains(&w.id));
                for w in d.changed {
                    match whole.workloads.iter_mut().find(|x| x.id == w.id) {
                        Some(x) => *x = w,
                        None => whole.workloads.push(w),
                    }
                }
                whole.workloads.sort_by(|a, b| a.id.cmp(&b.id));
                reported = Some(whole.clone());
                shared.statuses.lock().unwrap().push((number, whole));
                continue;
            }
            AgentMessage::RenewCertificate(req) => {
                let issued =
                    ca.sign_agent_csr(&req.csr_pem, &agent_id, Validity::from_now(shared.cert_lifetime)).unwrap();
                shared.record(Event::Renewed(issued.serial));
                let not_after_ms = (issued.not_after.unix_timestamp_nanos() / 1_000_000) as u64;
                ServerMessage::CertificateRenewed(CertificateRenewed { certificate_pem: issued.cert_pem, not_after_ms })
            }
            other => panic!("unexpected {other:?}"),
        };
        if ferry_transport::write_frame(&mut send, &reply).await.is_err() {
            break;
        }
    }
    if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
        shared.record(Event::AgentClosed(c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into()));
    }
    telemetry.abort();
}

/// Records the log batches of one telemetry stream and acknowledges them (unless told not to).
async fn telemetry(session: u32, mut send: SendStream, mut recv: RecvStream, shared: Arc<Shared>) {
    while let Ok(Some(msg)) = ferry_transport::read_frame::<AgentMessage>(&mut recv).await {
        let AgentMessage::LogBatch(b) = msg else {
            return shared.violation(format!("unexpected {msg:?} on a telemetry stream"));
        };
        if b.lines.is_empty() || b.lines.len() > 500 || b.first_seq == 0 {
            shared.violation(format!("bad batch: {} lines from seq {}", b.lines.len(), b.first_seq));
        }
        let last_seq = b.first_seq + b.lines.len() as u64 - 1;
        let lines = b.lines.iter().map(|l| l.line.clone()).collect();
        shared.batches.lock().unwrap().push(Batch { session, source: b.source.clone(), first_seq: b.first_seq, lines });
        if shared.ack_logs.load(Ordering::SeqCst) && !shared.is_silent(session) {
            let ack = ServerMessage::TelemetryAck(TelemetryAck { source: b.source, last_seq });
            if ferry_transport::write_frame(&mut send, &ack).await.is_err() {
                return;
            }
        }
    }
}

struct Running {
    stop: watch::Sender<bool>,
    state: watch::Receiver<AgentState>,
    task: tokio::task::JoinHandle<Exit>,
}

fn start(config: AgentConfig) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let (tx, state) = watch::channel(AgentState::default());
    Running { stop, state, task: tokio::spawn(ferry_agent::run(config, shutdown, tx)) }
}

impl Running {
    async fn wait(&mut self, what: &str, f: impl FnMut(&AgentState) -> bool) -> AgentState {
        let found = match tokio::time::timeout(Duration::from_secs(20), self.state.wait_for(f)).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        found.unwrap_or_else(|| panic!("timed out waiting for {what}; state: {:?}", *self.state.borrow()))
    }

    async fn stop(self) -> Exit {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("agent stops promptly").unwrap()
    }

    async fn exit(self) -> Exit {
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("agent exits").unwrap()
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn enroll_session_assignments_renewal_restart() {
    let fake = Fake::start(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));

    let s = agent.wait("first session", |s| s.sessions == 1 && s.last_generation == 1).await;
    assert_eq!(s.agent_id.as_deref(), Some("agent-1"));
    assert!(s.connected && s.cert_serial.is_some() && s.cert_not_after.is_some());
    assert_eq!(s.renewals, 0, "a fresh 1 h certificate is not renewed");
    let applied = |g| Event::Ack(Ack { generation: g, outcome: AckOutcome::Applied });
    eventually("ack of generation 1", || fake.events().contains(&applied(1))).await;

    // Pushes: newer applied, older or equal stale.
    fake.push(3);
    agent.wait("generation 3", |s| s.last_generation == 3).await;
    fake.push(2);
    let stale = Event::Ack(Ack { generation: 2, outcome: AckOutcome::Stale { current: 3 } });
    eventually("stale ack", || fake.events().contains(&stale)).await;
    eventually("heartbeats", || fake.events().iter().filter(|e| **e == Event::Heartbeat).count() >= 2).await;

    // State dir contents.
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let identity: serde_json::Value = serde_json::from_str(&read("identity.json")).unwrap();
    assert_eq!(identity["agentId"], "agent-1");
    let saved: serde_json::Value = serde_json::from_str(&read("intent.json")).unwrap();
    assert_eq!((saved["generation"].as_u64(), saved["naming"].as_str()), (Some(3), Some("deployment")));
    assert_eq!(read("ca.crt"), fake.ca.cert_pem());
    let client = read("client.pem");
    assert!(client.contains("BEGIN CERTIFICATE") && client.contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("client.pem"), 0o600);
        assert_eq!(mode(""), 0o700);
    }

    // A graceful stop closes with Normal.
    assert_eq!(agent.stop().await, Exit::Stopped);
    let normal = Event::AgentClosed(CloseCode::Normal as u64, "agent stopping".into());
    eventually("agent close", || fake.events().contains(&normal)).await;

    // Restart without a token: the stored identity and generation are used.
    let mut config = fake.config(dir.path());
    config.token = None;
    let mut agent = start(config);
    agent.wait("second run", |s| s.sessions == 1).await;
    let hello = Event::Hello { agent_id: "agent-1".into(), last_generation: 3 };
    eventually("hello with generation 3", || fake.events().contains(&hello)).await;
    // The server re-sends generation 2 (its current): stale.
    let stale_again = Event::Ack(Ack { generation: 2, outcome: AckOutcome::Stale { current: 3 } });
    eventually("stale ack after restart", || fake.events().iter().filter(|e| **e == stale_again).count() >= 2).await;

    // Superseded: the agent reconnects.
    fake.close_all(CloseCode::Superseded, "a newer session replaced this one");
    let s = agent.wait("reconnect", |s| s.sessions == 2 && s.connected).await;
    assert!(s.last_error.is_none());

    // Revoked: the agent stops for good.
    fake.revoke("agent-1");
    let exit = agent.exit().await;
    assert_eq!(exit, Exit::Fatal("agent agent-1 was revoked by the control plane; re-enroll with a new token".into()));
    assert_eq!(fake.events().iter().filter(|e| matches!(e, Event::Enrolled(_))).count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn renews_over_the_live_session() {
    // 4 s certificates (backdated 60 s by the CA): renewed right away, then every ~2 s.
    let fake = Fake::start(Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));
    let first = agent.wait("session", |s| s.sessions == 1).await;
    let s = agent.wait("three renewals", |s| s.renewals >= 3).await;
    assert_eq!(s.sessions, 1, "renewals must not interrupt the session");
    assert!(s.connected);
    assert_ne!(s.cert_serial, first.cert_serial);
    // The persisted certificate is the latest one.
    let renewed: Vec<String> =
        fake.events().into_iter().filter_map(|e| if let Event::Renewed(s) = e { Some(s) } else { None }).collect();
    assert!(renewed.len() >= 3 && renewed.len() <= 6, "{renewed:?}");
    assert!(renewed.contains(s.cert_serial.as_ref().unwrap()));
    assert_eq!(agent.stop().await, Exit::Stopped);
    let client = std::fs::read_to_string(dir.path().join("client.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let stored = ferry_agent::credentials::Credentials::from_client_pem("agent-1", &ca, &client).unwrap();
    assert!(renewed.contains(&stored.info.serial));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_control_plane_is_left_after_three_heartbeat_intervals() {
    let fake = Fake::start(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));
    agent.wait("first session", |s| s.sessions == 1 && s.connected).await;
    eventually("an acknowledged heartbeat", || fake.events().contains(&Event::Heartbeat)).await;

    // The control plane hangs: the connection stays open (QUIC keeps it alive), nothing comes back.
    fake.shared.silent_session.store(1, Ordering::SeqCst);
    let s = agent.wait("a new session", |s| s.sessions == 2 && s.connected).await;
    assert!(s.last_error.is_none(), "{s:?}");
    // The agent ended the silent session itself, with the close code that says why.
    let silent = Event::AgentClosed(CloseCode::HeartbeatTimeout as u64, "control plane silent".into());
    eventually("the agent's close", || fake.events().contains(&silent)).await;
    // After three heartbeat intervals of silence, i.e. after about three unanswered heartbeats
    // (counted on the agent's own clock, so a slow machine does not change the count much):
    // QUIC's 30 s idle timeout would have taken ~150 of them.
    let ignored = fake.events().iter().filter(|e| **e == Event::IgnoredHeartbeat).count();
    assert!(ignored <= 6, "{ignored} heartbeats went unanswered before the agent gave up");
    assert_eq!(agent.stop().await, Exit::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_token_is_fatal() {
    let fake = Fake::start(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = fake.config(dir.path());
    config.token = Some(format!("ferry1.ffff.eeee.{}", fake.ca.fingerprint()));
    let exit = start(config).exit().await;
    let Exit::Fatal(msg) = exit else { panic!("{exit:?}") };
    assert!(msg.contains("enrollment refused") && msg.contains("unknown bootstrap token"), "{msg}");
    assert!(!dir.path().join("client.pem").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_pinning_another_ca_is_fatal() {
    // The server cannot show the CA the token pins (wrong --server, or a token from another
    // control plane): retrying cannot help, so the agent stops for good (the binary exits 78).
    let fake = Fake::start(Duration::from_secs(3600)).await;
    let other = Ca::generate("other").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = fake.config(dir.path());
    config.token = Some(format!("ferry1.id.secret.{}", other.fingerprint()));
    let exit = start(config).exit().await;
    let Exit::Fatal(msg) = exit else { panic!("{exit:?}") };
    assert!(msg.contains("does not hold the CA the token pins") && msg.contains(&other.fingerprint()), "{msg}");
    // The handshake failed before anything was sent: the token never reached the server.
    assert!(fake.events().is_empty());
    assert!(!dir.path().join("client.pem").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_is_rejected_and_retried() {
    // A state dir enrolled with another control plane: the server refuses the certificate
    // during the handshake; the agent reports it and keeps retrying.
    let fake = Fake::start(Duration::from_secs(3600)).await;
    let other = Fake::start(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(other.config(dir.path()));
    agent.wait("enrolled elsewhere", |s| s.sessions == 1).await;
    agent.stop().await;

    // Trust this control plane's CA, but keep the certificate the other one issued.
    std::fs::write(dir.path().join("ca.crt"), fake.ca.cert_pem()).unwrap();

    let mut config = fake.config(dir.path());
    config.token = None;
    let mut agent = start(config);
    let s = agent.wait("an error", |s| s.last_error.is_some()).await;
    let err = s.last_error.unwrap();
    assert!(err.contains("rejected our client certificate"), "{err}");
    assert_eq!(agent.stop().await, Exit::Stopped);
}

fn sh_workload(id: &str, script: &str, replicas: u32) -> Workload {
    Workload {
        id: id.into(),
        name: id.into(),
        version: "v1".into(),
        spec: ProcessSpec {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            working_dir: None,
            replicas,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 2000,
        },
        restart_nonce: 0,
    }
}

/// The pids of `id`'s replicas when exactly `replicas` of them are Running.
fn running_pids(workloads: &[WorkloadStatus], id: &str, replicas: usize) -> Option<Vec<u32>> {
    let w = workloads.iter().find(|w| w.id == id)?;
    let pids: Vec<u32> = w.replicas.iter().filter(|r| r.phase == Phase::Running).filter_map(|r| r.pid).collect();
    (w.replicas.len() == replicas && pids.len() == replicas).then_some(pids)
}

/// Lines received on session `session`: source → seq → line.
fn received(batches: &[Batch], session: u32) -> BTreeMap<String, BTreeMap<u64, String>> {
    let mut out: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for b in batches.iter().filter(|b| b.session == session) {
        let lines = out.entry(b.source.clone()).or_default();
        lines.extend(b.lines.iter().enumerate().map(|(i, l)| (b.first_seq + i as u64, l.clone())));
    }
    out
}

/// Both replicas' `hello` and `oops`, numbered 1 and 2 in either order.
fn has_all_lines(lines: &BTreeMap<String, BTreeMap<u64, String>>) -> bool {
    lines.len() == 2
        && lines.values().all(|by_seq| {
            let mut texts: Vec<&str> = by_seq.values().map(String::as_str).collect();
            texts.sort_unstable();
            by_seq.keys().copied().eq([1, 2]) && texts == ["hello", "oops"]
        })
}

/// Whether a process of group `pgid` is alive (zombies do not count).
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).any(|pid| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first().is_some_and(|s| *s != "Z" && *s != "X")
    })
}

fn assert_gone(pids: &[u32]) {
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived the agent");
        assert!(!group_alive(*pid), "process group {pid} outlived the agent");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_workloads_reports_status_and_ships_logs() {
    let fake = Fake::start(Duration::from_secs(3600)).await;
    *fake.shared.workloads.lock().unwrap() = vec![sh_workload("web", "echo hello; echo oops >&2; sleep 1000", 2)];
    // The first session's logs are not acknowledged: the agent must send them again.
    fake.shared.ack_logs.store(false, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));

    // Status reports: both replicas Running under generation 1; AgentState says the same.
    let status = fake
        .wait_status("two running replicas", |n, s| {
            n == 1 && s.generation == 1 && running_pids(&s.workloads, "web", 2).is_some()
        })
        .await;
    let pids = running_pids(&status.workloads, "web", 2).unwrap();
    agent.wait("workloads in the agent state", |s| running_pids(&s.workloads, "web", 2).as_ref() == Some(&pids)).await;

    // Logs: one source per replica, `web/<replica>/<boot id>`, lines numbered from 1.
    eventually("both replicas' lines", || has_all_lines(&received(&fake.batches(), 1))).await;
    let first = received(&fake.batches(), 1);
    let boots: HashSet<&str> = first.keys().map(|s| s.rsplit('/').next().unwrap()).collect();
    assert_eq!(boots.len(), 1, "{first:?}");
    let boot = *boots.iter().next().unwrap();
    assert!(boot.len() == 16 && boot.bytes().all(|b| b.is_ascii_hexdigit()), "{boot}");
    let sources: Vec<String> = first.keys().cloned().collect();
    assert_eq!(sources, [format!("web/0/{boot}"), format!("web/1/{boot}")]);
    agent.wait("four unacknowledged lines", |s| s.unacked_log_lines == 4).await;

    // A reconnect restarts nothing, and the unacknowledged lines are sent again, in order.
    fake.shared.ack_logs.store(true, Ordering::SeqCst);
    fake.close_all(CloseCode::Superseded, "test: reconnect");
    agent.wait("second session", |s| s.sessions == 2 && s.connected).await;
    let status = fake.wait_status("a status on the second session", |n, _| n == 2).await;
    assert_eq!(status.generation, 1);
    assert_eq!(running_pids(&status.workloads, "web", 2), Some(pids.clone()), "{status:?}");
    eventually("the lines sent again", || received(&fake.batches(), 2) == first).await;
    for source in &sources {
        let resent: Vec<u64> =
            fake.batches().iter().filter(|b| b.session == 2 && b.source == *source).map(|b| b.first_seq).collect();
        assert_eq!(resent.first(), Some(&1), "{source}: {resent:?}");
    }
    agent.wait("everything acknowledged", |s| s.unacked_log_lines == 0).await;

    // Once acknowledged, nothing is sent again.
    fake.close_all(CloseCode::Superseded, "test: reconnect");
    agent.wait("third session", |s| s.sessions == 3 && s.connected).await;
    let on_third = || fake.statuses().into_iter().filter(|(n, _)| *n == 3).map(|(_, s)| s).collect::<Vec<_>>();
    eventually("two status reports on the third session", || on_third().len() >= 2).await;
    for s in on_third() {
        assert_eq!(running_pids(&s.workloads, "web", 2), Some(pids.clone()), "{s:?}");
    }
    assert!(received(&fake.batches(), 3).is_empty(), "{:?}", fake.batches());
    assert_eq!(agent.state.borrow().dropped_log_lines, 0);

    // Stopping the agent stops its workloads.
    assert_eq!(agent.stop().await, Exit::Stopped);
    assert_gone(&pids);

    // Offline: a restarted agent runs its stored assignment before reaching any control plane.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = fake.config(dir.path());
    config.token = None;
    config.server = silent.local_addr().unwrap().to_string();
    let mut agent = start(config);
    let s = agent.wait("the stored workloads running", |s| running_pids(&s.workloads, "web", 2).is_some()).await;
    assert_eq!((s.connected, s.sessions), (false, 0));
    let offline_pids = running_pids(&s.workloads, "web", 2).unwrap();
    assert!(offline_pids.iter().all(|p| !pids.contains(p)), "an agent restart starts the workloads afresh");
    assert_eq!(agent.stop().await, Exit::Stopped);
    assert_gone(&offline_pids);
    assert!(fake.shared.violations.lock().unwrap().is_empty(), "{:?}", fake.shared.violations.lock().unwrap());
}

/// A protocol-2 workload: revision `revision` of deployment `deployment`, sleeping.
fn sleeper(deployment: &str, revision: u64) -> WorkloadIntent {
    let Workload { name, version, spec, restart_nonce, .. } = sh_workload(deployment, "exec sleep 1000", 1);
    WorkloadIntent {
        id: WorkloadIntent::id_for(deployment, revision),
        deployment_id: deployment.into(),
        revision,
        name,
        version,
        restart_nonce,
        spec: WorkloadSpec::Process(spec),
    }
}

fn workload_ids(s: &AgentState) -> Vec<&str> {
    s.workloads.iter().map(|w| w.id.as_str()).collect()
}

fn all_running(s: &AgentState) -> bool {
    s.workloads.iter().all(|w| w.replicas.iter().all(|r| r.phase == Phase::Running))
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_2_intents_after_an_upgrade_from_protocol_1() {
    let fake = Fake::start(Duration::from_secs(3600)).await;
    *fake.shared.workloads.lock().unwrap() = vec![sh_workload("dep-1", "exec sleep 1000", 1)];
    fake.push(4);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));
    agent
        .wait("the protocol-1 assignment running", |s| {
            s.last_generation == 4 && workload_ids(s) == ["dep-1"] && all_running(s)
        })
        .await;
    assert_eq!(agent.stop().await, Exit::Stopped);

    // The control plane now speaks protocol 2 and thinks the agent up to date (it sends nothing):
    // the agent, holding workloads named by deployment, asks for the whole intent at once.
    fake.shared.protocol.store(2, Ordering::SeqCst);
    *fake.shared.full.lock().unwrap() =
        Some(IntentUpdate { generation: 4, base: None, upserts: vec![sleeper("dep-1", 1)], removals: vec![] });
    let mut config = fake.config(dir.path());
    config.token = None;
    let mut agent = start(config);
    let ack = |generation, outcome| Event::Ack(Ack { generation, outcome });
    eventually("NeedFull", || fake.events().contains(&ack(4, AckOutcome::NeedFull { held: 4 }))).await;
    agent.wait("dep-1@1 replaced dep-1", |s| workload_ids(s) == ["dep-1@1"] && all_running(s)).await;
    eventually("applied", || fake.events().contains(&ack(4, AckOutcome::Applied))).await;
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("intent.json")).unwrap()).unwrap();
    assert_eq!((saved["generation"].as_u64(), saved["naming"].as_str()), (Some(4), Some("revision")));
    assert!(!dir.path().join("assignment.json").exists());

    // A delta on the generation held: a new revision takes over.
    let delta = |generation, base| IntentUpdate {
        generation,
        base: Some(base),
        upserts: vec![sleeper("dep-1", 2)],
        removals: vec!["dep-1@1".into()],
    };
    let _ = fake.shared.intents.send(delta(5, 4));
    agent.wait("dep-1@2", |s| s.last_generation == 5 && workload_ids(s) == ["dep-1@2"] && all_running(s)).await;
    let status = fake.wait_status("a status naming the revision", |_, s| s.generation == 5).await;
    assert_eq!(status.workloads.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["dep-1@2"]);

    // A delta on a generation the agent does not hold: NeedFull, then the whole intent.
    *fake.shared.full.lock().unwrap() = Some(IntentUpdate {
        generation: 7,
        base: None,
        upserts: vec![sleeper("dep-1", 2), sleeper("dep-2", 1)],
        removals: vec![],
    });
    let _ = fake.shared.intents.send(delta(7, 6));
    eventually("NeedFull for a foreign base", || fake.events().contains(&ack(7, AckOutcome::NeedFull { held: 5 })))
        .await;
    agent.wait("generation 7", |s| s.last_generation == 7 && workload_ids(s) == ["dep-1@2", "dep-2@1"]).await;
    eventually("applied 7", || fake.events().contains(&ack(7, AckOutcome::Applied))).await;

    // Not newer: stale, delta or not.
    let _ = fake.shared.intents.send(delta(7, 5));
    eventually("stale", || fake.events().contains(&ack(7, AckOutcome::Stale { current: 7 }))).await;
    assert_eq!(agent.stop().await, Exit::Stopped);
    assert!(fake.shared.violations.lock().unwrap().is_empty());
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_live_in_memory_only_and_come_again_after_a_restart() {
    use ferry_protocol::{SecretMaterial, SecretValue};
    let fake = Fake::start(Duration::from_secs(3600)).await;
    fake.shared.protocol.store(2, Ordering::SeqCst);
    let out = tempfile::tempdir().unwrap();
    let written = out.path().join("out");
    let secret = "s3cret-in-memory-only-7f3a";
    let mut with_secret = sleeper("dep-s", 1);
    let WorkloadSpec::Process(mut spec) = with_secret.spec else { unreachable!() };
    spec.args = vec!["-c".into(), "printf %s \"$TOKEN\" > out.tmp && mv out.tmp out; exec sleep 1000".into()];
    spec.working_dir = Some(out.path().to_str().unwrap().into());
    let secrets = SecretMaterial { env: [("TOKEN".to_string(), SecretValue::new(secret))].into() };
    with_secret.spec = WorkloadSpec::ProcessWithSecrets { spec, secrets };
    let full =
        IntentUpdate { generation: 3, base: None, upserts: vec![sleeper("dep-p", 1), with_secret], removals: vec![] };
    *fake.shared.full.lock().unwrap() = Some(full.clone());

    let dir = tempfile::tempdir().unwrap();
    let mut agent = start(fake.config(dir.path()));
    agent.wait("connected", |s| s.connected).await;
    let _ = fake.shared.intents.send(full);
    let both = |s: &AgentState| s.last_generation == 3 && s.workloads.len() == 2 && all_running(s);
    agent.wait("both workloads running", both).await;
    eventually("the workload saw its secret", || std::fs::read_to_string(&written).is_ok_and(|v| v == secret)).await;
    let stored = std::fs::read_to_string(dir.path().join("intent.json")).unwrap();
    assert!(stored.contains("dep-s@1") && stored.contains("withheld"), "{stored}");
    assert_eq!(agent.stop().await, Exit::Stopped);
    assert_eq!(files_containing(dir.path(), secret), Vec::<std::path::PathBuf>::new());
    std::fs::remove_file(&written).unwrap();

    // Offline, the stored intent runs, except the workload whose secrets were not stored.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut offline = fake.config(dir.path());
    offline.token = None;
    offline.server = silent.local_addr().unwrap().to_string();
    let mut agent = start(offline);
    let s = agent
        .wait("dep-p running, dep-s waiting for its secrets", |s| {
            running_pids(&s.workloads, "dep-p@1", 1).is_some()
                && s.workloads.iter().any(|w| w.id == "dep-s@1" && w.replicas.iter().all(|r| r.phase == Phase::Pending))
        })
        .await;
    let reason = s.workloads.iter().find(|w| w.id == "dep-s@1").unwrap().replicas[0].reason.clone();
    assert!(reason.as_deref().is_some_and(|r| r.contains("secrets")), "{reason:?}");
    assert!(!written.exists(), "it never ran without its secret");
    assert_eq!(agent.stop().await, Exit::Stopped);

    // Online, it asks for the whole intent at once (the control plane thinks it up to date) and
    // runs the workload with its secret again.
    let mut online = fake.config(dir.path());
    online.token = None;
    let mut agent = start(online);
    let need_full = Event::Ack(Ack { generation: 3, outcome: AckOutcome::NeedFull { held: 3 } });
    eventually("NeedFull", || fake.events().contains(&need_full)).await;
    agent.wait("both workloads running again", both).await;
    eventually("the secret came again", || std::fs::read_to_string(&written).is_ok_and(|v| v == secret)).await;
    assert_eq!(agent.stop().await, Exit::Stopped);
    assert_eq!(files_containing(dir.path(), secret), Vec::<std::path::PathBuf>::new());
    assert!(fake.shared.violations.lock().unwrap().is_empty(), "{:?}", fake.shared.violations.lock().unwrap());
}
