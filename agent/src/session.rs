//! A session: Hello/Welcome on the control stream, then heartbeats, intent updates and
//! certificate renewals until shutdown or until the connection is lost.
//!
//! The agent speaks protocols 1 and 2. With protocol 2 the control plane sends `Intent`
//! updates (whole, or the changes since a generation the agent holds); with protocol 1 (an
//! older control plane) whole `Assignment`s. See [`crate::intent`] for what is applied.

use std::time::Duration;

use ferry_protocol::{
    Ack, AckOutcome, AgentMessage, Assignment, CertificateRenewed, CloseCode, ErrorCode, GIT_CAPABILITY, Heartbeat,
    Hello, IntentUpdate, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, RenewCertificate, SECRETS_CAPABILITY, ServerMessage,
    Status, StatusDelta, Welcome, WireError,
};
use ferry_transport::TransportError;
use quinn::{RecvStream, SendStream};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::AgentState;
use crate::config::AgentConfig;
use crate::credentials::{Credentials, fmt_time};
use crate::error::AgentError;
use crate::intent::{Decision, Intent, Naming, decide};
use crate::logs;
use crate::net::{self, Link, REPLY_TIMEOUT, now_ms, shutdown_requested};
use crate::renewal::Renewer;
use crate::report::StatusSchedule;
use crate::state::StateDir;
use crate::task::AbortOnDrop;
use crate::workloads::Workloads;

/// Shortest heartbeat interval honoured, whatever the control plane asks for.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// The control plane answers every heartbeat: after this many heartbeat intervals without any
/// message from it on the control stream the session is dead, even if QUIC (whose idle timeout
/// is far longer, and whose keep-alives go on while a stuck control plane's session does not)
/// does not think so yet.
const SILENT_INTERVALS: u32 = 3;

/// What a session works on; the run loop owns it across sessions.
pub(crate) struct Session<'a> {
    pub config: &'a AgentConfig,
    pub store: &'a StateDir,
    pub creds: &'a mut Credentials,
    /// The last intent applied (persisted).
    pub intent: &'a mut Intent,
    pub state: &'a watch::Sender<AgentState>,
    pub workloads: &'a Workloads,
}

/// How a session ended.
pub(crate) struct SessionOutcome {
    /// Time since Welcome (zero when the session was never established).
    pub lasted: Duration,
    /// `Ok` when shutdown was requested.
    pub result: Result<(), AgentError>,
}

/// Connects, runs the session and closes the connection.
pub(crate) async fn run(mut s: Session<'_>, shutdown: &mut watch::Receiver<bool>) -> SessionOutcome {
    let mut established = None;
    let result = connect_and_converse(&mut s, shutdown, &mut established).await;
    s.state.send_modify(|st| st.connected = false);
    SessionOutcome { lasted: established.map_or(Duration::ZERO, |t: Instant| t.elapsed()), result }
}

async fn connect_and_converse(
    s: &mut Session<'_>,
    shutdown: &mut watch::Receiver<bool>,
    established: &mut Option<Instant>,
) -> Result<(), AgentError> {
    let tls = s.creds.tls_config()?;
    let link = tokio::select! {
        link = Link::dial(&s.config.server, &s.config.server_name, tls) => link?,
        () = shutdown_requested(shutdown) => return Ok(()),
    };
    let result = converse(&link, s, shutdown, established).await;
    let (code, reason) = close_code(&result);
    link.close(code, reason).await;
    result
}

/// How the agent closes a connection after a session ended this way.
fn close_code(result: &Result<(), AgentError>) -> (CloseCode, &'static str) {
    match result {
        Ok(()) => (CloseCode::Normal, "agent stopping"),
        Err(AgentError::Protocol(_)) => (CloseCode::ProtocolError, "protocol error"),
        Err(AgentError::ServerSilent(_)) => (CloseCode::HeartbeatTimeout, "control plane silent"),
        Err(_) => (CloseCode::Normal, "agent reconnecting"),
    }
}

async fn converse(
    link: &Link,
    s: &mut Session<'_>,
    shutdown: &mut watch::Receiver<bool>,
    established: &mut Option<Instant>,
) -> Result<(), AgentError> {
    let (send, recv, welcome) = tokio::select! {
        r = handshake(link, s) => r?,
        () = shutdown_requested(shutdown) => return Ok(()),
    };
    *established = Some(Instant::now());
    let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.into()).max(MIN_HEARTBEAT);
    let creds = &*s.creds;
    s.state.send_modify(|st| {
        st.agent_id = Some(creds.agent_id.clone());
        st.connected = true;
        st.sessions += 1;
        st.cert_serial = Some(creds.info.serial.clone());
        st.cert_not_after = Some(creds.info.not_after);
        st.last_error = None;
    });
    tracing::info!(
        agent_id = %creds.agent_id,
        server = %s.config.server,
        protocol = welcome.protocol_version,
        heartbeat_ms = heartbeat_every.as_millis() as u64,
        skew_ms = now_ms() as i64 - welcome.server_time_ms as i64,
        "session established"
    );
    let (inbound, reader) = spawn_reader(recv);
    // Logs go on their own stream and task, so they never hold up the control stream.
    let shipper = AbortOnDrop(tokio::spawn(logs::ship(link.conn.clone(), s.workloads.logs())));
    let observed = s.workloads.observed();
    let mut control = Control {
        naming: Naming::of_protocol(welcome.protocol_version),
        renewer: Renewer::new(&creds.info, OffsetDateTime::now_utc()),
        s,
        link,
        send,
        inbound,
        _reader: reader,
        _shipper: shipper,
        heartbeat_every,
        seq: 0,
        last_heard: Instant::now(),
        observed,
        report: StatusSchedule::new(Instant::now(), heartbeat_every * crate::report::STATUS_REFRESH_HEARTBEATS),
        last_reported: None,
    };
    let result = control.start(shutdown).await;
    // Close while the streams are still open: dropping them finishes them, and the control
    // plane must learn why the session ended (the close code), not merely that a stream did.
    let (code, reason) = close_code(&result);
    link.close_now(code, reason);
    result
}

/// Sends Hello and waits for Welcome.
async fn handshake(link: &Link, s: &Session<'_>) -> Result<(SendStream, RecvStream, Welcome), AgentError> {
    let id = s.creds.agent_id.as_str();
    let (mut send, mut recv) =
        link.open_bi().await.map_err(|e| AgentError::from_transport("open control stream", e, id))?;
    let hello = Hello {
        protocol_min: PROTOCOL_VERSION_MIN,
        protocol_max: PROTOCOL_VERSION,
        agent_id: id.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        name: s.config.name.clone(),
        labels: s.config.labels.clone(),
        // What this agent can run: its runtime's capability (`runtime:process`), and workloads
        // with secrets (`secrets:v1`, `WorkloadSpec::ProcessWithSecrets`).
        // Git sources it checks out (`git:v1`, `WorkloadSpec::ProcessFromGit`).
        capabilities: vec![s.workloads.capability(), SECRETS_CAPABILITY.to_string(), GIT_CAPABILITY.to_string()],
        last_generation: s.intent.generation,
    };
    net::send(&mut send, &AgentMessage::Hello(hello))
        .await
        .map_err(|e| AgentError::from_transport("send Hello", e, id))?;
    // A client certificate the control plane rejects (revoked, expired, another CA) surfaces
    // here, as a TLS alert or a close code.
    let context = "waiting for Welcome";
    match ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, REPLY_TIMEOUT).await {
        Ok(Some(ServerMessage::Welcome(w))) => {
            check_welcome(&w, id)?;
            Ok((send, recv, w))
        }
        Ok(Some(ServerMessage::Error(e))) => Err(refused(link, e, id).await),
        Ok(Some(other)) => Err(AgentError::Protocol(format!("expected Welcome, got {}", message_name(&other)))),
        Ok(None) => Err(lost(link, context, id).await),
        Err(e) => Err(AgentError::from_transport(context, e, id)),
    }
}

/// The session was refused with an error message; the close code that follows, if terminal,
/// is the better explanation.
async fn refused(link: &Link, e: WireError, id: &str) -> AgentError {
    if e.code == ErrorCode::Revoked {
        return AgentError::Revoked { agent_id: id.to_string() };
    }
    if let Some(cause) = link.close_cause().await {
        let err = AgentError::from_transport("session refused", cause, id);
        if err.is_terminal() {
            return err;
        }
    }
    AgentError::Server(format!("session refused: {} ({:?})", e.message, e.code))
}

/// The control plane finished the control stream: find out why from the connection.
async fn lost(link: &Link, context: &'static str, id: &str) -> AgentError {
    match link.close_cause().await {
        Some(e) => AgentError::from_transport(context, e, id),
        None => AgentError::Protocol("the control plane ended the control stream".into()),
    }
}

/// A Welcome must speak a version we offered and greet us by our certificate's identity.
pub(crate) fn check_welcome(w: &Welcome, agent_id: &str) -> Result<(), AgentError> {
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&w.protocol_version) {
        return Err(AgentError::Protocol(format!(
            "the control plane chose protocol version {}, we speak {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}",
            w.protocol_version
        )));
    }
    if w.agent_id != agent_id {
        return Err(AgentError::Protocol(format!(
            "the control plane greeted agent {} but our certificate names {agent_id}",
            w.agent_id
        )));
    }
    Ok(())
}

/// Everything the reader task can report.
enum Inbound {
    Message(ServerMessage),
    Finished,
    Failed(TransportError),
}

/// `read_frame` is not cancel-safe, so one task owns the receive side and forwards messages.
/// The task is aborted when the session ends, whichever way.
fn spawn_reader(mut recv: RecvStream) -> (mpsc::Receiver<Inbound>, AbortOnDrop<()>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            let item = match ferry_transport::read_frame::<ServerMessage>(&mut recv).await {
                Ok(Some(msg)) => Inbound::Message(msg),
                Ok(None) => Inbound::Finished,
                Err(e) => Inbound::Failed(e),
            };
            let last = !matches!(item, Inbound::Message(_));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// The established session's loop.
struct Control<'c, 'a> {
    s: &'c mut Session<'a>,
    link: &'c Link,
    send: SendStream,
    inbound: mpsc::Receiver<Inbound>,
    _reader: AbortOnDrop<()>,
    _shipper: AbortOnDrop<()>,
    heartbeat_every: Duration,
    /// How the negotiated protocol names workloads.
    naming: Naming,
    seq: u64,
    renewer: Renewer,
    /// When the control plane last sent a message on the control stream.
    last_heard: Instant,
    /// The runtime's observed state, reported as `Status`.
    observed: watch::Receiver<Status>,
    report: StatusSchedule,
    /// The last report of this session: with protocol 2 the next one is only what changed.
    last_reported: Option<Status>,
}

impl Control<'_, '_> {
    /// Asks for the whole intent first if the held one is named for the other protocol (the
    /// state of an agent upgraded from protocol 1) or lacks the secrets of some workloads (they
    /// are never stored): a delta cannot apply to it, and if the control plane thinks the agent
    /// is up to date it would send nothing at all. Then runs.
    async fn start(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        let held = self.s.intent.generation;
        if self.naming == Naming::Revision && self.s.intent.needs_whole(self.naming) {
            tracing::info!(
                generation = held,
                renamed = self.s.intent.needs_renaming(self.naming),
                without_secrets = self.s.intent.withheld.len(),
                "the held intent is incomplete or named by deployment; asking for the whole intent"
            );
            let ack = Ack { generation: held, outcome: AckOutcome::NeedFull { held } };
            self.write("ask for the whole intent", AgentMessage::Ack(ack)).await?;
        }
        self.run(shutdown).await
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        let mut heartbeat = tokio::time::interval_at(Instant::now() + self.heartbeat_every, self.heartbeat_every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence_limit = self.heartbeat_every * SILENT_INTERVALS;
        loop {
            let renew_in = self.renewer.sleep_for(OffsetDateTime::now_utc());
            tokio::select! {
                () = shutdown_requested(shutdown) => {
                    tracing::info!(agent_id = %self.id(), "stopping: closing the session");
                    return Ok(());
                }
                item = self.inbound.recv() => self.on_inbound(item).await?,
                () = tokio::time::sleep_until(self.last_heard + silence_limit) => {
                    // If this process was starved, a message may be waiting: it still counts.
                    match self.inbound.try_recv() {
                        Ok(item) => self.on_inbound(Some(item)).await?,
                        Err(mpsc::error::TryRecvError::Disconnected) => self.on_inbound(None).await?,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            let silent = self.last_heard.elapsed();
                            tracing::warn!(agent_id = %self.id(), silent_ms = silent.as_millis() as u64,
                                "the control plane stopped answering; ending the session");
                            return Err(AgentError::ServerSilent(silent));
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    self.seq += 1;
                    let hb = Heartbeat { seq: self.seq, sent_at_ms: now_ms() };
                    self.write("send heartbeat", AgentMessage::Heartbeat(hb)).await?;
                }
                () = tokio::time::sleep(renew_in) => self.renew().await?,
                Ok(()) = self.observed.changed() => self.report.changed(Instant::now()),
                () = tokio::time::sleep_until(self.report.due()) => self.send_status().await?,
            }
        }
    }

    fn id(&self) -> &str {
        &self.s.creds.agent_id
    }

    /// What the reader task delivered: a message (which also proves the control plane alive),
    /// or the end of the control stream.
    async fn on_inbound(&mut self, item: Option<Inbound>) -> Result<(), AgentError> {
        match item {
            Some(Inbound::Message(msg)) => {
                self.last_heard = Instant::now();
                self.handle(msg).await
            }
            Some(Inbound::Failed(e)) => Err(AgentError::from_transport("control stream", e, self.id())),
            Some(Inbound::Finished) | None => Err(lost(self.link, "control stream", self.id()).await),
        }
    }

    /// Reports the generation the runtime applied last and every assigned workload's status:
    /// whole at the start of a session (and always with protocol 1), then, with protocol 2, only
    /// what changed since the previous report (nothing if nothing did).
    async fn send_status(&mut self) -> Result<(), AgentError> {
        let status = self.observed.borrow_and_update().clone();
        self.report.sent(Instant::now());
        let msg = match &self.last_reported {
            Some(previous) if self.naming == Naming::Revision => match StatusDelta::between(previous, &status) {
                Some(delta) => AgentMessage::StatusDelta(delta),
                None => return Ok(()),
            },
            _ => AgentMessage::Status(status.clone()),
        };
        tracing::trace!(generation = status.generation, workloads = status.workloads.len(), "sending status");
        self.write("send status", msg).await?;
        self.last_reported = Some(status);
        Ok(())
    }

    async fn write(&mut self, context: &'static str, msg: AgentMessage) -> Result<(), AgentError> {
        net::send(&mut self.send, &msg)
            .await
            .map_err(|e| AgentError::from_transport(context, e, &self.s.creds.agent_id))
    }

    async fn handle(&mut self, msg: ServerMessage) -> Result<(), AgentError> {
        match msg {
            ServerMessage::Assignment(a) if self.naming == Naming::Deployment => self.assignment(a).await,
            ServerMessage::Intent(u) if self.naming == Naming::Revision => self.intent(u).await,
            ServerMessage::CertificateRenewed(c) => {
                self.renewed(c);
                Ok(())
            }
            ServerMessage::HeartbeatAck(ack) => {
                tracing::debug!(seq = ack.seq, "heartbeat acknowledged");
                Ok(())
            }
            ServerMessage::TelemetryAck(ack) => {
                // Acknowledgements belong on the telemetry stream, where the shipper reads them.
                tracing::debug!(source = %ack.source, last_seq = ack.last_seq, "ignoring a telemetry ack on the control stream");
                Ok(())
            }
            ServerMessage::Error(e) => {
                tracing::warn!(code = ?e.code, message = %e.message, "control plane reported an error");
                Ok(())
            }
            other @ (ServerMessage::Welcome(_)
            | ServerMessage::Enrolled(_)
            | ServerMessage::Assignment(_)
            | ServerMessage::Intent(_)) => {
                tracing::warn!(kind = message_name(&other), "ignoring an unexpected message");
                Ok(())
            }
        }
    }

    /// Protocol 1: a whole assignment.
    async fn assignment(&mut self, a: Assignment) -> Result<(), AgentError> {
        let generation = a.generation;
        let decision = decide(self.s.intent, generation, None, Naming::Deployment);
        self.accept(generation, decision, move |_| Intent::from_assignment(a)).await
    }

    /// Protocol 2: an intent update, whole or on top of a generation.
    async fn intent(&mut self, u: IntentUpdate) -> Result<(), AgentError> {
        let generation = u.generation;
        let decision = decide(self.s.intent, generation, u.base, Naming::Revision);
        tracing::debug!(generation, base = ?u.base, upserts = u.upserts.len(), removals = u.removals.len(),
            ?decision, "intent update");
        self.accept(generation, decision, move |held| held.updated(u)).await
    }

    /// Carries out `decision` on an update of `generation` and acknowledges it: a newer intent
    /// (built from the held one by `next`) is persisted first, then handed to the runtime
    /// (which applies it on its own task); one that cannot be persisted is rejected.
    async fn accept(
        &mut self,
        generation: u64,
        decision: Decision,
        next: impl FnOnce(&Intent) -> Intent,
    ) -> Result<(), AgentError> {
        let outcome = match decision {
            Decision::Apply => {
                let intent = next(self.s.intent);
                match self.s.store.save_intent(&intent) {
                    Ok(()) => {
                        tracing::info!(generation, workloads = intent.workloads.len(), "intent accepted");
                        self.s.workloads.assign(&intent);
                        *self.s.intent = intent;
                        self.s.state.send_modify(|st| st.last_generation = generation);
                        decision.outcome()
                    }
                    Err(e) => {
                        tracing::warn!(generation, error = %e, "cannot persist the intent");
                        AckOutcome::Rejected { reason: format!("cannot persist the intent: {e}") }
                    }
                }
            }
            Decision::Stale { current } => {
                tracing::debug!(generation, current, "stale intent");
                decision.outcome()
            }
            Decision::NeedFull { held } => {
                tracing::info!(generation, held, "an update on a generation not held; asking for the whole intent");
                decision.outcome()
            }
        };
        self.write("send ack", AgentMessage::Ack(Ack { generation, outcome })).await
    }

    /// Sends (or re-sends) a renewal request when one is due.
    async fn renew(&mut self) -> Result<(), AgentError> {
        let now = OffsetDateTime::now_utc();
        if !self.renewer.is_due(now) {
            return Ok(());
        }
        let retry = self.renewer.is_pending();
        let not_after = self.s.creds.info.not_after;
        let csr_pem = match self.renewer.request(not_after, &self.s.creds.agent_id, now) {
            Ok(csr) => csr,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a renewal request; will retry");
                return Ok(());
            }
        };
        tracing::info!(
            agent_id = %self.id(),
            not_after = %fmt_time(not_after),
            retry,
            "requesting a new certificate"
        );
        self.write("send renewal request", AgentMessage::RenewCertificate(RenewCertificate { csr_pem })).await
    }

    /// Installs a renewed certificate: persisted for the next connections, in memory at once.
    fn renewed(&mut self, c: CertificateRenewed) {
        let renewed = match self.renewer.complete(&*self.s.creds, &c.certificate_pem, OffsetDateTime::now_utc()) {
            Ok(Some(renewed)) => renewed,
            Ok(None) => return tracing::debug!("ignoring a certificate we did not ask for (late duplicate)"),
            Err(e) => return tracing::warn!(error = %e, "refusing the renewed certificate; will ask again"),
        };
        if let Err(e) = self.s.store.save_client_pem(&renewed) {
            // Keep going with the new certificate in memory; the next renewal writes again.
            tracing::error!(error = %e, "cannot persist the renewed certificate");
        }
        *self.s.creds = renewed;
        let info = &self.s.creds.info;
        self.s.state.send_modify(|st| {
            st.renewals += 1;
            st.cert_serial = Some(info.serial.clone());
            st.cert_not_after = Some(info.not_after);
        });
        tracing::info!(
            agent_id = %self.s.creds.agent_id,
            serial = %info.serial,
            not_after = %fmt_time(info.not_after),
            next_renewal = %fmt_time(self.renewer.due()),
            "certificate renewed"
        );
    }
}

/// The variant name of a server message, for logs and errors.
pub(crate) fn message_name(msg: &ServerMessage) -> &'static str {
    match msg {
        ServerMessage::Enrolled(_) => "Enrolled",
        ServerMessage::Welcome(_) => "Welcome",
        ServerMessage::Assignment(_) => "Assignment",
        ServerMessage::HeartbeatAck(_) => "HeartbeatAck",
        ServerMessage::CertificateRenewed(_) => "CertificateRenewed",
        ServerMessage::TelemetryAck(_) => "TelemetryAck",
        ServerMessage::Error(_) => "Error",
        ServerMessage::Intent(_) => "Intent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(version: u16, agent_id: &str) -> Welcome {
        Welcome { protocol_version: version, agent_id: agent_id.into(), heartbeat_interval_ms: 5000, server_time_ms: 0 }
    }

    #[test]
    fn welcome_checks() {
        assert_eq!(PROTOCOL_VERSION, 2, "this agent speaks protocol 2");
        assert!(check_welcome(&welcome(1, "agent-1"), "agent-1").is_ok(), "and still protocol 1");
        assert!(check_welcome(&welcome(PROTOCOL_VERSION, "agent-1"), "agent-1").is_ok());
        let e = check_welcome(&welcome(PROTOCOL_VERSION, "agent-2"), "agent-1").unwrap_err();
        assert!(matches!(e, AgentError::Protocol(_)) && !e.is_terminal());
        assert!(check_welcome(&welcome(PROTOCOL_VERSION + 1, "agent-1"), "agent-1").is_err());
        assert!(check_welcome(&welcome(0, "agent-1"), "agent-1").is_err());
    }
}
