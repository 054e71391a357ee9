//! Agent configuration: flags, `FERRY_*` environment variables and an optional TOML file
//! (precedence in that order, then defaults), validated before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::token::parse_token;

pub const DEFAULT_STATE_DIR: &str = "ferry-agent-state";
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Ports handed to workload replicas, END excluded.
pub const DEFAULT_PORT_RANGE: Range<u16> = 20000..30000;
/// The runtime's directory under the state directory, unless `--run-dir` says otherwise.
pub const DEFAULT_RUN_SUBDIR: &str = "run";

/// An invalid configuration, as one human-readable line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(msg: impl Into<String>) -> Self {
        // Callers print this as a single line.
        Self(msg.into().replace('\n', " "))
    }
}

/// What [`crate::run`] needs.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `HOST:PORT` of the control plane's QUIC listener; a DNS name is resolved on every dial.
    pub server: String,
    /// Bootstrap token, used when there is no certificate yet or it has expired.
    pub token: Option<String>,
    pub state_dir: PathBuf,
    /// Human-friendly name reported to the control plane.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The TLS name the control plane's certificate must carry.
    pub server_name: String,
    /// Upper bound of the reconnect backoff.
    pub max_backoff: Duration,
    /// Where the process runtime keeps its pidfiles; `None` means `<state_dir>/run`.
    pub run_dir: Option<PathBuf>,
    /// Ports handed to workload replicas as `PORT` (END excluded).
    pub port_range: Range<u16>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("server_name", &self.server_name)
            .field("max_backoff", &self.max_backoff)
            .field("run_dir", &self.run_dir)
            .field("port_range", &self.port_range)
            .finish()
    }
}

impl AgentConfig {
    /// A configuration with every optional setting at its default.
    pub fn new(server: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            server: server.into(),
            token: None,
            state_dir: state_dir.into(),
            name: default_name(),
            labels: BTreeMap::new(),
            server_name: ferry_certs::CONTROL_PLANE_NAME.to_string(),
            max_backoff: DEFAULT_MAX_BACKOFF,
            run_dir: None,
            port_range: DEFAULT_PORT_RANGE,
        }
    }

    /// The runtime directory in effect: `run_dir`, else `<state_dir>/run`.
    pub fn effective_run_dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| self.state_dir.join(DEFAULT_RUN_SUBDIR))
    }

    /// What the process runtime is created with.
    pub fn runtime_config(&self) -> ferry_runtime::RuntimeConfig {
        ferry_runtime::RuntimeConfig { port_range: self.port_range.clone(), run_dir: self.effective_run_dir() }
    }

    /// Checks every field; the error names the offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_server(&self.server)?;
        if let Some(token) = &self.token {
            parse_token(token).map_err(|e| ConfigError::new(format!("invalid --token: {e}")))?;
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("invalid --state-dir: empty path"));
        }
        ferry_protocol::limits::validate_name(&self.name)
            .map_err(|e| ConfigError::new(format!("invalid --name: {e}")))?;
        ferry_protocol::limits::validate_labels(&self.labels)
            .map_err(|e| ConfigError::new(format!("invalid --label: {e}")))?;
        if rustls::pki_types::ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err(ConfigError::new(format!(
                "invalid --server-name {:?}: expected a DNS name or an IP address",
                self.server_name
            )));
        }
        if self.max_backoff.is_zero() || self.max_backoff > MAX_MAX_BACKOFF {
            return Err(ConfigError::new(format!("invalid --max-backoff {:?}: between 1ms and 1h", self.max_backoff)));
        }
        if self.run_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::new("invalid --run-dir: empty path"));
        }
        if self.port_range.start == 0 || self.port_range.start >= self.port_range.end {
            return Err(ConfigError::new(format!(
                "invalid --port-range {}-{}: expected START-END with 1 <= START < END <= 65535",
                self.port_range.start, self.port_range.end
            )));
        }
        Ok(())
    }
}

/// The host name (from the kernel, then `$HOSTNAME`), or `"agent"`.
pub fn default_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .into_iter()
        .chain(std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

/// `HOST:PORT` where HOST is an IP address (IPv6 in brackets) or a DNS name.
fn validate_server(server: &str) -> Result<(), ConfigError> {
    let err = |why: &str| ConfigError::new(format!("invalid --server {server:?}: {why}"));
    if server.is_empty() {
        return Err(ConfigError::new("missing --server HOST:PORT (or FERRY_SERVER, or server in the config file)"));
    }
    if server.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = server.rsplit_once(':').ok_or_else(|| err("expected HOST:PORT"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(err("the port must be a number between 1 and 65535")),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !host_ok {
        return Err(err("expected HOST:PORT with a DNS name or an IP address ([v6]:port)"));
    }
    Ok(())
}

pub use ferry_protocol::units::parse_duration;

/// Command-line flags; each can also come from a `FERRY_*` variable.
#[derive(Debug, Parser)]
#[command(name = "ferry-agent", version, about = "Ferry agent")]
pub struct Args {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HOST:PORT of the control plane's QUIC listener (required).
    #[arg(long, env = "FERRY_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Bootstrap token (ferry1.…), needed to enroll.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory for the agent's key, certificates and state [default: ferry-agent-state].
    #[arg(long, env = "FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Name reported to the control plane [default: the host name].
    #[arg(long, env = "FERRY_NAME")]
    pub name: Option<String>,
    /// Label KEY=VALUE (repeatable; FERRY_LABELS is comma-separated).
    #[arg(long = "label", env = "FERRY_LABELS", value_delimiter = ',', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// TLS name to verify on the control plane's certificate [default: control-plane.ferry.internal].
    #[arg(long, env = "FERRY_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "FERRY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Longest wait between reconnect attempts, in seconds (or 500ms, 2m) [default: 30].
    #[arg(long, env = "FERRY_MAX_BACKOFF")]
    pub max_backoff: Option<String>,
    /// Directory for the workloads' pidfiles [default: <state-dir>/run].
    #[arg(long, env = "FERRY_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Ports handed to workloads as PORT, START-END with END excluded [default: 20000-30000].
    #[arg(long, env = "FERRY_PORT_RANGE", value_name = "START-END")]
    pub port_range: Option<String>,
}

/// The validated configuration `main` runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentConfig,
    pub json_logs: bool,
}

impl Settings {
    /// Parses flags (and environment) from an iterator, as `main` does with the process args.
    /// Help and version requests are errors here; `main` handles them before calling this.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|e| clap_error(&e))?;
        Self::from_args(args)
    }

    /// Merges flags/environment, the optional file and defaults, then validates.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let server = args.server.or(file.server).unwrap_or_default().trim().to_string();
        let token = args.token.or(file.token).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let state_dir = args.state_dir.or(file.state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let name = args.name.or(file.name).unwrap_or_else(default_name);
        let server_name =
            args.server_name.or(file.server_name).unwrap_or_else(|| ferry_certs::CONTROL_PLANE_NAME.to_string());

        // Labels: the file's first, then flags/environment override key by key.
        let mut labels = file.labels.unwrap_or_default();
        labels.extend(parse_labels(file.label.unwrap_or_default().iter(), "label in the config file")?);
        labels.extend(parse_labels(args.labels.iter(), "--label")?);

        let max_backoff = match args.max_backoff {
            Some(s) => parse_backoff(&s)?,
            None => match file.max_backoff {
                Some(FileDuration::Seconds(n)) => Duration::from_secs(n),
                Some(FileDuration::Text(s)) => parse_backoff(&s)?,
                None => DEFAULT_MAX_BACKOFF,
            },
        };
        let json_logs = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::new(format!("invalid --log-format {other:?}: text or json")));
            }
        };
        let run_dir = args.run_dir.or(file.run_dir);
        let port_range = match args.port_range.or(file.port_range) {
            Some(s) => parse_port_range(&s).ok_or_else(|| {
                ConfigError::new(format!("invalid --port-range {s:?}: expected START-END, e.g. 20000-30000"))
            })?,
            None => DEFAULT_PORT_RANGE,
        };
        let agent =
            AgentConfig { server, token, state_dir, name, labels, server_name, max_backoff, run_dir, port_range };
        agent.validate()?;
        Ok(Self { agent, json_logs })
    }
}

/// `START-END` (END excluded); the bounds are checked by [`AgentConfig::validate`].
pub fn parse_port_range(s: &str) -> Option<Range<u16>> {
    let (start, end) = s.trim().split_once('-')?;
    Some(start.trim().parse().ok()?..end.trim().parse().ok()?)
}

fn parse_backoff(s: &str) -> Result<Duration, ConfigError> {
    parse_duration(s)
        .ok_or_else(|| ConfigError::new(format!("invalid --max-backoff {s:?}: expected seconds, e.g. 30 or 500ms")))
}

/// `KEY=VALUE` entries; empty entries (a trailing comma in FERRY_LABELS) are skipped and a key
/// given twice in the same source is an error.
fn parse_labels<'a>(
    entries: impl Iterator<Item = &'a String>,
    source: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for entry in entries.map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::new(format!("invalid {source} {entry:?}: expected KEY=VALUE")))?;
        if out.insert(k.trim().to_string(), v.trim().to_string()).is_some() {
            return Err(ConfigError::new(format!("invalid {source}: label {:?} given twice", k.trim())));
        }
    }
    Ok(out)
}

/// The first line of a clap error, without clap's `error: ` prefix.
pub fn clap_error(e: &clap::Error) -> ConfigError {
    let text = e.to_string();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    ConfigError::new(line.trim().trim_start_matches("error: "))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
    state_dir: Option<PathBuf>,
    name: Option<String>,
    /// `label = ["zone=eu-1"]`, like the flag.
    label: Option<Vec<String>>,
    /// `[labels]` table, `zone = "eu-1"`.
    labels: Option<BTreeMap<String, String>>,
    server_name: Option<String>,
    log_format: Option<String>,
    max_backoff: Option<FileDuration>,
    run_dir: Option<PathBuf>,
    port_range: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Seconds(u64),
    Text(String),
}

impl FileConfig {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().lines().next().unwrap_or_default().to_string();
            ConfigError::new(format!("invalid config {}: {msg}", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut v = vec!["ferry-agent"];
        v.extend_from_slice(args);
        Settings::try_parse_from(v)
    }

    fn token() -> String {
        format!("ferry1.0011223344556677.00112233445566778899aabbccddeeff.{}", "ab".repeat(32))
    }

    #[test]
    fn defaults() {
        let s = parse(&["--server", "127.0.0.1:7701"]).unwrap();
        let c = s.agent;
        assert_eq!(c.server, "127.0.0.1:7701");
        assert_eq!(c.token, None);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.server_name, ferry_certs::CONTROL_PLANE_NAME);
        assert_eq!(c.max_backoff, DEFAULT_MAX_BACKOFF);
        assert_eq!(c.run_dir, None);
        assert_eq!(c.effective_run_dir(), PathBuf::from(DEFAULT_STATE_DIR).join("run"));
        assert_eq!(c.port_range, 20000..30000);
        assert_eq!(c.runtime_config().port_range, 20000..30000);
        assert!(c.labels.is_empty());
        assert!(!c.name.is_empty());
        assert!(!s.json_logs);
        assert_eq!(AgentConfig::new("127.0.0.1:7701", DEFAULT_STATE_DIR), c);
    }

    #[test]
    fn flags() {
        let t = token();
        let s = parse(&[
            "--server",
            "cp.example.com:7701",
            "--token",
            &t,
            "--state-dir",
            "/var/lib/ferry",
            "--name",
            "web-1",
            "--label",
            "zone=eu-1",
            "--label",
            "team/app=shop",
            "--server-name",
            "cp.internal",
            "--log-format",
            "json",
            "--max-backoff",
            "5",
            "--run-dir",
            "/run/ferry",
            "--port-range",
            "4000-4100",
        ])
        .unwrap();
        let c = s.agent;
        assert_eq!(c.token.as_deref(), Some(t.as_str()));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ferry"));
        assert_eq!(c.name, "web-1");
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("eu-1"));
        assert_eq!(c.labels.get("team/app").map(String::as_str), Some("shop"));
        assert_eq!(c.server_name, "cp.internal");
        assert_eq!(c.max_backoff, Duration::from_secs(5));
        assert_eq!(c.run_dir.as_deref(), Some(Path::new("/run/ferry")));
        assert_eq!(c.runtime_config().run_dir, PathBuf::from("/run/ferry"));
        assert_eq!(c.port_range, 4000..4100);
        assert!(s.json_logs);
        assert!(!format!("{c:?}").contains("00112233445566778899aabbccddeeff"), "token leaked in Debug");
    }

    #[test]
    fn server_forms() {
        for ok in ["127.0.0.1:1", "[::1]:7701", "localhost:7701", "cp.example.com:443", "a-b.c:65535"] {
            assert!(validate_server(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "127.0.0.1", "host:", ":7701", "host:0", "host:70000", "::1:7701", "bad host:1", "a..b:1", "[::1]"]
        {
            assert!(validate_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_values_give_one_clear_line() {
        let t = token();
        let long = "n".repeat(64);
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec![], "missing --server"),
            (vec!["--server", "nohost"], "--server"),
            (vec!["--server", "h:1", "--token", "ferry1.a.b"], "--token"),
            (vec!["--server", "h:1", "--name", &long], "--name"),
            (vec!["--server", "h:1", "--name", "a b"], "--name"),
            (vec!["--server", "h:1", "--label", "novalue"], "--label"),
            (vec!["--server", "h:1", "--label", "=v"], "--label"),
            (vec!["--server", "h:1", "--label", "k=a b"], "--label"),
            (vec!["--server", "h:1", "--label", "k=1", "--label", "k=2"], "twice"),
            (vec!["--server", "h:1", "--server-name", "not a name"], "--server-name"),
            (vec!["--server", "h:1", "--log-format", "xml"], "--log-format"),
            (vec!["--server", "h:1", "--max-backoff", "soon"], "--max-backoff"),
            (vec!["--server", "h:1", "--max-backoff", "0"], "--max-backoff"),
            (vec!["--server", "h:1", "--run-dir", ""], "--run-dir"),
            (vec!["--server", "h:1", "--port-range", "20000"], "--port-range"),
            (vec!["--server", "h:1", "--port-range", "a-b"], "--port-range"),
            (vec!["--server", "h:1", "--port-range", "30000-20000"], "--port-range"),
            (vec!["--server", "h:1", "--port-range", "5-5"], "--port-range"),
            (vec!["--server", "h:1", "--port-range", "0-100"], "--port-range"),
            (vec!["--server", "h:1", "--port-range", "1-70000"], "--port-range"),
            (vec!["--server", "h:1", "--bogus"], "--bogus"),
            (vec!["--server", "h:1", "--config", "/nonexistent/ferry.toml"], "cannot read config"),
        ];
        for (args, needle) in cases {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle) && !err.contains('\n'), "{args:?}: {err}");
            assert!(!err.contains("00112233445566778899aabbccddeeff"), "{err}");
        }
        let _ = t;
    }

    #[test]
    fn file_then_flags_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "server = \"file.example:7701\"\nname = \"from-file\"\nmax_backoff = 7\n\
             label = [\"a=1\"]\n[labels]\nzone = \"file\"\nrack = \"r1\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--name", "from-flag", "--label", "zone=flag"]).unwrap().agent;
        assert_eq!(c.server, "file.example:7701");
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.max_backoff, Duration::from_secs(7));
        let want: BTreeMap<String, String> =
            [("a", "1"), ("rack", "r1"), ("zone", "flag")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(c.labels, want);

        std::fs::write(&path, "server = \"h:1\"\nmax_backoff = \"750ms\"\n").unwrap();
        assert_eq!(parse(&["--config", p]).unwrap().agent.max_backoff, Duration::from_millis(750));

        std::fs::write(&path, "server = \"h:1\"\nrun_dir = \"/srv/run\"\nport_range = \"7000-7010\"\n").unwrap();
        let c = parse(&["--config", p]).unwrap().agent;
        assert_eq!((c.run_dir.as_deref(), c.port_range), (Some(Path::new("/srv/run")), 7000..7010));
        let c = parse(&["--config", p, "--port-range", "8000-8001"]).unwrap().agent;
        assert_eq!(c.port_range, 8000..8001);

        std::fs::write(&path, "sever = \"x\"\n").unwrap();
        let err = parse(&["--config", p]).unwrap_err().to_string();
        assert!(err.contains("unknown field") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn empty_token_means_none() {
        let c = parse(&["--server", "h:1", "--token", "  "]).unwrap().agent;
        assert_eq!(c.token, None);
    }
}
