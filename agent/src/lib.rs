//! Ferry's agent: enrolls with a bootstrap token, then dials the control plane over mutually
//! authenticated QUIC, keeps its session alive with heartbeats, renews its certificate over the
//! live connection and persists the assignments it receives.
//!
//! * [`config`] — flags, `FERRY_*` variables and an optional TOML file, validated up front.
//! * [`token`] — the `ferry1.<id>.<secret>.<ca-fingerprint>` bootstrap token.
//! * [`state`] — the state directory (`client.pem`, `ca.crt`, `identity.json`, `assignment.json`).
//! * [`backoff`], [`assignment`], [`renewal`] — the pure decisions, unit-tested in isolation.
//! * [`run`] — the supervisor loop: enroll if needed, run a session, back off, reconnect.

pub mod assignment;
pub mod backoff;
pub mod config;
pub mod credentials;
pub mod error;
pub mod renewal;
pub mod state;
pub mod token;

mod enroll;
mod net;
mod run;
mod session;

pub use config::{AgentConfig, ConfigError, Settings};
pub use error::AgentError;
pub use run::run;
pub use token::{ParsedToken, TokenError, parse_token};

/// What the agent is doing, published through a `watch` channel for tests and supervisors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Generation of the last assignment applied (persisted).
    pub last_generation: u64,
    /// The last error that interrupted enrollment or a session.
    pub last_error: Option<String>,
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
