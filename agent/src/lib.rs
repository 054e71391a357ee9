//! Ferry's agent: enrolls with a bootstrap token, then dials the control plane over mutually
//! authenticated QUIC, keeps its session alive with heartbeats, renews its certificate over the
//! live connection, persists the intent it receives (protocol 2: whole or as changes since a
//! generation it holds; protocol 1: whole assignments) and runs its workloads with a
//! runtime (`ferry_runtime::Runtime`, held as `Arc<dyn Runtime>`; today the process runtime,
//! announced in `Hello` as the capability `runtime:process`), reporting their status and shipping
//! their logs.
//!
//! # Workloads
//!
//! * At start-up, before connecting, the agent applies the intent stored in the state
//!   directory: it converges on its last intent even while the control plane is unreachable.
//!   Every newer intent received is persisted, handed to the runtime and acknowledged `Applied`
//!   (the runtime applies it on a task of its own; only the newest pending one is applied).
//!   Workloads go to the runtime of their kind; a new revision of a deployment takes over from
//!   the old one replica by replica.
//! * Status: `AgentMessage::Status { generation, workloads }` on the control stream right after
//!   Welcome, 100 ms after the runtime observes a change (changes within that window are
//!   coalesced), and at least once per heartbeat interval. `generation` is the last one the
//!   runtime finished applying (0 before the first); `workloads` lists every assigned workload.
//! * Logs: each replica's output lines are numbered per source `<workload id>/<replica>/<boot
//!   id>` (the boot id is random per run) and sent as `LogBatch` frames on a bidirectional
//!   telemetry stream opened after Welcome; `TelemetryAck`s come back on the same stream.
//!   Unacknowledged lines are kept **in memory** and resent first after a reconnect; beyond
//!   100,000 lines (64 MiB) the oldest are dropped and counted in
//!   [`AgentState::dropped_log_lines`]. Lines not yet acknowledged are lost if the agent process
//!   itself dies.
//! * Secrets (`WorkloadSpec::ProcessWithSecrets`, sent only because the agent announces
//!   `secrets:v1` in `Hello`) arrive inside the mTLS session, become the replicas' environment
//!   variables, and are kept in memory only: `intent.json` stores such workloads without them
//!   (listed as `withheld`). After a restart they stay `Pending` until the control plane sends
//!   them again; the agent asks for its whole intent right after Welcome to get them.
//! * Git sources (`WorkloadSpec::ProcessFromGit`, sent only because the agent announces
//!   `git:v1`): the agent checks out exactly the commit it is told into
//!   `<state-dir>/checkouts/<key(url)>/<commit>` (atomic, reused, removed once no workload
//!   names it; network repositories are fetched into `<state-dir>/git-cache`), then runs the
//!   command there; it builds nothing. While the checkout fails the workload is `Failed` with
//!   the reason, and it is retried with backoff.
//! * **Agent restarts restart workloads; control-plane restarts do not.** Sessions come and go
//!   around the runtime, so a lost connection, a reconnect or a control-plane restart leaves
//!   every process running (re-applying the same intent is a no-op). When the agent exits
//!   (shutdown requested, or a terminal error such as revocation) it stops every workload —
//!   SIGTERM to each process group, SIGKILL after the grace period — so none outlives it. If the
//!   agent process dies without that (crash, SIGKILL, a second SIGINT), the next start kills
//!   the process groups the previous run left behind (pidfiles in `--run-dir`) and starts the
//!   workloads afresh.
//!
//! * [`config`] — flags, `FERRY_*` variables and an optional TOML file, validated up front.
//! * [`token`] — the `ferry1.<id>.<secret>.<ca-fingerprint>` bootstrap token.
//! * [`state`] — the state directory (`client.pem`, `ca.crt`, `identity.json`, `intent.json`;
//!   an older agent's `assignment.json` is still read).
//! * [`backoff`], [`intent`], [`renewal`] — the pure decisions, unit-tested in isolation.
//! * [`run`] — the supervisor loop: enroll if needed, run a session, back off, reconnect.
//! * `workloads` — the runtime host: applier, observer, log collector; `logs` — the log
//!   buffer and telemetry stream.

pub mod backoff;
mod checkouts;
pub mod config;
pub mod credentials;
pub mod error;
pub mod intent;
pub mod renewal;
pub mod state;
pub mod token;

mod enroll;
mod logs;
mod net;
mod report;
mod run;
mod session;
mod task;
mod workloads;

pub use config::{AgentConfig, ConfigError, Settings};
pub use error::AgentError;
pub use run::run;
pub use token::{ParsedToken, TokenError, parse_token};

/// What the agent is doing, published through a `watch` channel for tests and supervisors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    /// The identity the control plane assigned (known once enrolled).
    pub agent_id: Option<String>,
    /// Whether a session is established (Welcome received and not yet lost).
    pub connected: bool,
    /// Sessions established since start, i.e. Welcome messages received.
    pub sessions: u64,
    /// Serial (lowercase hex) of the certificate in use.
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<time::OffsetDateTime>,
    /// Certificates renewed over a live session since start.
    pub renewals: u64,
    /// Generation of the last intent applied (persisted).
    pub last_generation: u64,
    /// The last error that interrupted enrollment or a session.
    pub last_error: Option<String>,
    /// What the runtime observes of every assigned workload, updated on every change (and,
    /// after the agent stopped them, showing them `Stopped`).
    pub workloads: Vec<ferry_protocol::WorkloadStatus>,
    /// Workload log lines lost before they could be acknowledged by the control plane: dropped
    /// by the runtime because the agent fell behind, or by the agent's full log buffer.
    pub dropped_log_lines: u64,
    /// Workload log lines held in memory until the control plane acknowledges them.
    pub unacked_log_lines: u64,
}

/// Why [`run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested.
    Stopped,
    /// A terminal error: retrying cannot help (revoked, token refused, invalid state, ...).
    Fatal(String),
}

/// Installs a global `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default
/// `info`). Calling it again is harmless.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // An error only means a subscriber is already installed (e.g. by a test harness).
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
