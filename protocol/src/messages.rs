//! The messages exchanged on a Ferry agent connection.
//!
//! Stream layout (one QUIC connection per agent):
//! * **control stream** — the first bidirectional stream the agent opens. An agent without a
//!   client certificate may only send [`AgentMessage::Enroll`] on it and gets
//!   [`ServerMessage::Enrolled`] or [`ServerMessage::Error`] back. An enrolled agent starts with
//!   [`AgentMessage::Hello`] and the server answers [`ServerMessage::Welcome`]; after that the
//!   server pushes [`ServerMessage::Assignment`]s and the agent sends acks, status, heartbeats and
//!   renewal requests.
//! * **telemetry streams** — bidirectional streams the agent opens after the control stream and
//!   the Welcome, for [`LogBatch`] and [`MetricBatch`], so that a log flood never delays a status
//!   report; the server answers each batch on the same stream with
//!   [`ServerMessage::TelemetryAck`] once it is durably stored.
//!
//! postcard is not self-describing: a message layout change is a protocol version change. New
//! variants are only ever appended to an enum and old payloads never change, so a frame of an
//! older version still decodes the same: protocol 2 added [`ServerMessage::Intent`] (assignments
//! as changes since a generation the agent holds, with workloads that are one revision of one
//! deployment and a [`WorkloadSpec`] per runtime kind), [`AckOutcome::NeedFull`] and
//! [`AgentMessage::StatusDelta`] (reports as what changed); protocol-1 agents still get the
//! whole [`Assignment`] and send whole [`Status`]es.
//!
//! Within protocol 2, [`WorkloadSpec::ProcessWithSecrets`] was appended later: a control plane
//! sends it only to agents that advertise the capability [`SECRETS_CAPABILITY`] in `Hello`, so
//! an agent that cannot decode it never receives it (no version bump was needed).
//! [`WorkloadSpec::ProcessFromGit`] was appended the same way, behind [`GIT_CAPABILITY`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Messages an agent sends to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    Enroll(Enroll),
    Hello(Hello),
    Ack(Ack),
    Status(Status),
    Heartbeat(Heartbeat),
    RenewCertificate(RenewCertificate),
    LogBatch(LogBatch),
    MetricBatch(MetricBatch),
    Error(WireError),
    /// Protocol 2: what changed since the previous report of this session.
    StatusDelta(StatusDelta),
}

/// Messages the control plane sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    Enrolled(Enrolled),
    Welcome(Welcome),
    Assignment(Assignment),
    HeartbeatAck(HeartbeatAck),
    CertificateRenewed(CertificateRenewed),
    TelemetryAck(TelemetryAck),
    Error(WireError),
    /// Protocol 2: the agent's intent, whole or as the changes since a generation it holds.
    Intent(IntentUpdate),
}

/// First message of an agent that has no certificate yet. Sent over a TLS connection on which
/// the agent pinned the control plane's CA by the fingerprint carried in the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    /// The bootstrap token, exactly as the admin received it.
    pub token: String,
    /// A PEM certificate signing request for a key the agent generated and never sends.
    pub csr_pem: String,
    /// Human-friendly name (host name by default). Not an identity.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The identity the control plane assigned; it is also in the certificate's URI SAN.
    pub agent_id: String,
    pub certificate_pem: String,
    /// The CA that signed the certificate (the one the agent pinned).
    pub ca_pem: String,
}

/// First message of an enrolled agent on its control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Inclusive range of protocol versions the agent speaks.
    pub protocol_min: u16,
    pub protocol_max: u16,
    /// The agent's own idea of its id. The control plane trusts the certificate, not this field,
    /// and refuses the session when they differ.
    pub agent_id: String,
    pub agent_version: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Runtimes and features the agent supports, e.g. `"runtime:process"`.
    pub capabilities: Vec<String>,
    /// The generation of the last assignment the agent applied (0 if none).
    pub last_generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub agent_id: String,
    /// How often the agent must send a heartbeat; the server ends sessions silent for three.
    pub heartbeat_interval_ms: u32,
    /// The server's clock, so the agent can report skew.
    pub server_time_ms: u64,
}

/// Protocol 1: the complete list of workloads one agent must run, stamped with a generation
/// that only grows. Level-triggered: an agent that missed updates only needs the latest one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub generation: u64,
    pub workloads: Vec<Workload>,
}

/// Protocol 1: one workload an agent owns, a deployment's process spec to be run as `replicas`
/// processes. Its id is the deployment id (one revision per deployment and agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Stable id of the workload (the deployment id).
    pub id: String,
    pub name: String,
    pub version: String,
    pub spec: ProcessSpec,
    /// Bumped when a user asks for a restart without changing the spec.
    pub restart_nonce: u64,
}

/// Protocol 2: an agent's intent at `generation`. With `base: None`, `upserts` is the complete
/// list and replaces whatever the agent holds (a full resync). With `base: Some(g)`, the update
/// applies on top of generation `g` exactly: upsert these workloads (by id), remove these ids.
/// An agent that does not hold generation `g` answers [`AckOutcome::NeedFull`] and gets the
/// whole intent. Either way the result is the complete, level-triggered list at `generation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentUpdate {
    pub generation: u64,
    pub base: Option<u64>,
    pub upserts: Vec<WorkloadIntent>,
    pub removals: Vec<String>,
}

/// Protocol 2: one workload, i.e. one revision of one deployment, so two revisions of a
/// deployment can run side by side on one agent (canary, blue-green).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadIntent {
    /// `<deployment id>@<revision>`; also the prefix of its log sources.
    pub id: String,
    pub deployment_id: String,
    pub revision: u64,
    /// The deployment's name (for humans and logs).
    pub name: String,
    /// The version label the user gave this revision.
    pub version: String,
    /// Bumped when a user asks for a restart without changing the spec.
    pub restart_nonce: u64,
    pub spec: WorkloadSpec,
}

/// What to run, by runtime kind. An agent advertises the kinds it can run in
/// [`Hello::capabilities`] (`runtime:<kind>`); the control plane places a workload only on an
/// agent that can run its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkloadSpec {
    /// Supervised local processes (`runtime:process`).
    Process(ProcessSpec),
    /// Supervised local processes (`runtime:process`) that also get secrets. Sent only to agents
    /// that advertise [`SECRETS_CAPABILITY`] (an older agent could not decode it), and only
    /// inside the agent's mutually authenticated session; the agent keeps the material in
    /// memory and never writes it to disk.
    ProcessWithSecrets { spec: ProcessSpec, secrets: SecretMaterial },
    /// Supervised local processes (`runtime:process`) run in a checkout of one commit of a Git
    /// repository: the agent checks `source` out (exactly that commit, never a branch) and
    /// runs `spec` with its working directory in the checkout ([`GitCheckout::dir`]); it builds
    /// and runs nothing else. `secrets` as in `ProcessWithSecrets` (empty when there are none).
    /// Sent only to agents that advertise [`GIT_CAPABILITY`].
    ProcessFromGit { spec: ProcessSpec, secrets: SecretMaterial, source: GitCheckout },
}

/// The capability of an agent that can receive [`WorkloadSpec::ProcessFromGit`] (and check
/// commits out); the control plane places a Git-sourced workload only on agents that advertise
/// it.
pub const GIT_CAPABILITY: &str = "git:v1";

/// A commit of a Git repository to run a workload in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCheckout {
    /// The repository, as the control plane accepted it (`https://`, `git://`, `file://`…).
    pub url: String,
    /// The full commit id (40 hex digits).
    pub commit: String,
    /// The working directory, relative to the checkout's root (`""`: the root). Never absolute,
    /// never `..`.
    pub dir: String,
}

/// The capability of an agent that can receive [`WorkloadSpec::ProcessWithSecrets`]; the control
/// plane places a workload that has secrets only on agents that advertise it.
pub const SECRETS_CAPABILITY: &str = "secrets:v1";

impl WorkloadSpec {
    /// The runtime kind, as in the `runtime:<kind>` capability.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkloadSpec::Process(_)
            | WorkloadSpec::ProcessWithSecrets { .. }
            | WorkloadSpec::ProcessFromGit { .. } => "process",
        }
    }

    /// Replicas this agent runs.
    pub fn replicas(&self) -> u32 {
        match self {
            WorkloadSpec::Process(p)
            | WorkloadSpec::ProcessWithSecrets { spec: p, .. }
            | WorkloadSpec::ProcessFromGit { spec: p, .. } => p.replicas,
        }
    }

    /// The secret material the workload carries, if it is of a kind that carries any.
    pub fn secrets(&self) -> Option<&SecretMaterial> {
        match self {
            WorkloadSpec::Process(_) => None,
            WorkloadSpec::ProcessWithSecrets { secrets, .. } | WorkloadSpec::ProcessFromGit { secrets, .. } => {
                Some(secrets)
            }
        }
    }

    /// The process template, whatever the variant.
    pub fn process(&self) -> &ProcessSpec {
        match self {
            WorkloadSpec::Process(p)
            | WorkloadSpec::ProcessWithSecrets { spec: p, .. }
            | WorkloadSpec::ProcessFromGit { spec: p, .. } => p,
        }
    }

    /// The process template, whatever the variant, to change.
    pub fn process_mut(&mut self) -> &mut ProcessSpec {
        match self {
            WorkloadSpec::Process(p)
            | WorkloadSpec::ProcessWithSecrets { spec: p, .. }
            | WorkloadSpec::ProcessFromGit { spec: p, .. } => p,
        }
    }

    /// The commit to check out first, for a workload that runs in one.
    pub fn git(&self) -> Option<&GitCheckout> {
        match self {
            WorkloadSpec::ProcessFromGit { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Secrets delivered with a workload: environment variables set in every replica, over the
/// spec's own `env`. Its `Debug` output shows names only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMaterial {
    pub env: BTreeMap<String, SecretValue>,
}

/// A secret's clear value. `Debug` and `Display` print `***`; [`SecretValue::expose`] is the
/// one way to read it, so that reading it is a visible decision.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl WorkloadIntent {
    /// The workload id for a deployment's revision.
    pub fn id_for(deployment_id: &str, revision: u64) -> String {
        format!("{deployment_id}@{revision}")
    }
}

/// `Debug` shows `env` names only: values may be secrets (the agent's runtime merges a
/// workload's [`SecretMaterial`] into them).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub replicas: u32,
    pub restart_policy: RestartPolicy,
    pub liveness: Option<HealthCheck>,
    pub readiness: Option<HealthCheck>,
    pub startup: Option<HealthCheck>,
    pub stop_grace_ms: u32,
}

impl std::fmt::Debug for ProcessSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: BTreeMap<&str, &str> = self.env.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("ProcessSpec")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &env)
            .field("working_dir", &self.working_dir)
            .field("replicas", &self.replicas)
            .field("restart_policy", &self.restart_policy)
            .field("liveness", &self.liveness)
            .field("readiness", &self.readiness)
            .field("startup", &self.startup)
            .field("stop_grace_ms", &self.stop_grace_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub initial_delay_ms: u32,
    pub period_ms: u32,
    pub timeout_ms: u32,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Probe {
    /// HTTP GET; `port` 0 means the replica's assigned `PORT`.
    Http {
        path: String,
        port: u16,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// The agent's answer to an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub generation: u64,
    pub outcome: AckOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AckOutcome {
    Applied,
    /// The agent already applied this generation or a newer one.
    Stale {
        current: u64,
    },
    Rejected {
        reason: String,
    },
    /// Protocol 2: the update's base is not the generation the agent holds (it holds `held`);
    /// the control plane answers with the whole intent. An agent may also send it unasked, at
    /// any time in a session, when it cannot use what it holds (e.g. an intent it kept from
    /// protocol 1); the answer is the same.
    NeedFull {
        held: u64,
    },
}

/// Observed state, echoing the generation the agent is acting on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub workloads: Vec<WorkloadStatus>,
}

/// Protocol 2: the observed state as the changes since the previous report of this session
/// (reports travel in order on the control stream, and each session starts with a whole
/// [`Status`]), so an agent running many workloads reports what changed, not everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDelta {
    /// The generation the agent acts on now.
    pub generation: u64,
    /// Workloads whose replicas changed, or that are new, whole.
    pub changed: Vec<WorkloadStatus>,
    /// Workloads no longer running.
    pub removed: Vec<String>,
}

impl StatusDelta {
    /// The delta from report `before` to report `after` (`None` if nothing changed).
    pub fn between(before: &Status, after: &Status) -> Option<Self> {
        let old: std::collections::HashMap<&str, &WorkloadStatus> =
            before.workloads.iter().map(|w| (w.id.as_str(), w)).collect();
        let new: std::collections::HashSet<&str> = after.workloads.iter().map(|w| w.id.as_str()).collect();
        let changed: Vec<WorkloadStatus> =
            after.workloads.iter().filter(|w| old.get(w.id.as_str()) != Some(w)).cloned().collect();
        let removed: Vec<String> =
            before.workloads.iter().filter(|w| !new.contains(w.id.as_str())).map(|w| w.id.clone()).collect();
        if changed.is_empty() && removed.is_empty() && before.generation == after.generation {
            return None;
        }
        Some(Self { generation: after.generation, changed, removed })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub id: String,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub index: u32,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub ready: bool,
    pub restarts: u32,
    pub reason: Option<String>,
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Degraded,
    Failed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub sent_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub seq: u64,
    pub server_time_ms: u64,
}

/// Asks for a fresh client certificate for a new key. The identity comes from the current
/// (authenticated) certificate; the CSR's subject is ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewCertificate {
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRenewed {
    pub certificate_pem: String,
    pub not_after_ms: u64,
}

/// A batch of log lines from one source (one replica's stdout/stderr). `first_seq` numbers the
/// first line; lines are numbered consecutively, so the control plane can drop what it already has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub source: String,
    pub first_seq: u64,
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts_ms: u64,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    pub source: String,
    pub first_seq: u64,
    pub samples: Vec<MetricSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub ts_ms: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Acknowledges telemetry up to and including `last_seq` for `source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryAck {
    pub source: String,
    pub last_seq: u64,
}

/// An error either side reports before closing or refusing a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    TokenUnknown,
    TokenUsed,
    TokenExpired,
    InvalidCsr,
    InvalidRequest,
    UnsupportedVersion,
    UnexpectedMessage,
    IdentityMismatch,
    Revoked,
    Internal,
}
