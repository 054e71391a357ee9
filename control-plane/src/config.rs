//! `ferry-server` configuration: flags, `FERRY_*` environment variables and an optional TOML
//! file (precedence in that order), validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// The resolved configuration the control plane runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    /// `host:port` agents should dial; shown in token responses. `None`: the bound QUIC address.
    pub advertise_addr: Option<String>,
    /// `sqlite://…` or `postgres://…`; defaults to `<data-dir>/ferry.db`.
    pub database_url: String,
    /// Extra DNS names / IP addresses for the server certificate.
    pub sans: Vec<String>,
    pub agent_cert_lifetime: Duration,
    pub heartbeat_interval: Duration,
    pub max_body_bytes: usize,
    pub json_logs: bool,
    /// How long a pending change (awaiting approval or its change window) stays open.
    pub approval_ttl: Duration,
    /// How often the sweep expires pending changes and applies scheduled ones.
    pub approval_sweep_interval: Duration,
    /// Where the master key that encrypts secrets comes from.
    pub master_key: MasterKeySource,
    /// Whether Git sources may name local repositories (`file://` URLs and paths). Off by
    /// default: it would let API users read any repository on the server's disk.
    pub allow_file_sources: bool,
    /// Deadline of one Git operation (resolving a ref, reading a deployment file), fetch
    /// included.
    pub git_timeout: Duration,
    /// The delay after a failed webhook attempt; it doubles per attempt, up to an hour.
    pub webhook_retry_base: Duration,
    /// Attempts per webhook delivery before it is marked failed.
    pub webhook_max_attempts: u32,
    /// How long an `Idempotency-Key` and the answer it replays are kept.
    pub idempotency_ttl: Duration,
}

/// Where the master key (AES-256, 64 hexadecimal characters) comes from. It is kept outside
/// the database; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `FERRY_MASTER_KEY` (checked: 64 hexadecimal characters).
    Env(String),
    /// `--master-key-file` / `FERRY_MASTER_KEY_FILE` / `master_key_file`.
    File(PathBuf),
    /// Neither: `<data-dir>/master.key`, generated (mode 0600) at the first start.
    DataDir,
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::Env(_) => f.write_str("Env(FERRY_MASTER_KEY)"),
            MasterKeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            MasterKeySource::DataDir => f.write_str("DataDir"),
        }
    }
}

/// The environment variable holding the master key itself (never a flag: command lines are
/// visible to every local user).
pub const MASTER_KEY_ENV: &str = "FERRY_MASTER_KEY";

impl ServerConfig {
    /// Defaults for a data directory, with both listeners on ephemeral loopback ports.
    pub fn for_tests(data_dir: &Path) -> Self {
        let mut c = Self::resolve(Args::parse_from(["ferry-server"]), None, None).expect("defaults are valid");
        c.data_dir = data_dir.to_path_buf();
        c.database_url = default_db_url(data_dir);
        c.http_addr = "127.0.0.1:0".parse().expect("literal");
        c.quic_addr = "127.0.0.1:0".parse().expect("literal");
        c
    }

    /// Heartbeats missed for this long end a session and mark the agent disconnected.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_interval * 3
    }

    /// The configuration from flags, the `FERRY_*` environment (including `FERRY_MASTER_KEY`)
    /// and the TOML file they name.
    pub fn from_args(args: Args) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => Some(FileConfig::load(path)?),
            None => None,
        };
        let env_key = std::env::var(MASTER_KEY_ENV).ok().filter(|k| !k.is_empty());
        Self::resolve(args, file, env_key)
    }

    fn resolve(args: Args, file: Option<FileConfig>, env_key: Option<String>) -> Result<Self, String> {
        let f = file.unwrap_or_default();
        let data_dir = args.data_dir.or(f.data_dir).unwrap_or_else(|| PathBuf::from("ferry-data"));
        let addr = |flag: Option<String>, file: Option<String>, default: &str, name: &str| {
            let s = flag.or(file).unwrap_or_else(|| default.to_string());
            s.parse::<SocketAddr>().map_err(|_| format!("invalid {name} {s:?}: expected IP:PORT"))
        };
        let http_addr = addr(args.http_addr, f.http_addr, "127.0.0.1:7700", "--http-addr")?;
        let quic_addr = addr(args.quic_addr, f.quic_addr, "127.0.0.1:7701", "--quic-addr")?;
        let advertise_addr = args.advertise_addr.or(f.advertise_addr);
        let database_url = args.database_url.or(f.database_url).unwrap_or_else(|| default_db_url(&data_dir));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(format!("invalid --database-url {database_url:?}: use sqlite://PATH or postgres://…"));
        }
        let mut sans = f.san.unwrap_or_default();
        sans.extend(args.san);
        for s in &sans {
            let ok = s.parse::<std::net::IpAddr>().is_ok()
                || (!s.is_empty()
                    && s.len() <= 253
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !ok {
                return Err(format!("invalid --san {s:?}: expected a DNS name or an IP address"));
            }
        }
        let dur = |flag: Option<String>, file: Option<String>, default: &str, name: &str, min: Duration| {
            let s = flag.or(file).unwrap_or_else(|| default.to_string());
            let d = parse_duration(&s).ok_or_else(|| format!("invalid {name} {s:?}: expected e.g. 30s, 10m, 12h"))?;
            if d < min {
                return Err(format!("invalid {name} {s:?}: must be at least {min:?}"));
            }
            Ok(d)
        };
        let agent_cert_lifetime = dur(
            args.agent_cert_lifetime,
            f.agent_cert_lifetime,
            "12h",
            "--agent-cert-lifetime",
            Duration::from_secs(3),
        )?;
        let heartbeat_interval = dur(
            args.heartbeat_interval,
            f.heartbeat_interval,
            "5s",
            "--heartbeat-interval",
            Duration::from_millis(100),
        )?;
        if heartbeat_interval > Duration::from_secs(60) {
            return Err("invalid --heartbeat-interval: at most 60s".into());
        }
        let approval_ttl = dur(args.approval_ttl, f.approval_ttl, "24h", "--approval-ttl", Duration::from_millis(100))?;
        if approval_ttl > Duration::from_secs(90 * 86_400) {
            return Err("invalid --approval-ttl: at most 90 days".into());
        }
        let approval_sweep_interval = dur(
            args.approval_sweep_interval,
            f.approval_sweep_interval,
            "10s",
            "--approval-sweep-interval",
            Duration::from_millis(100),
        )?;
        if approval_sweep_interval > Duration::from_secs(3600) {
            return Err("invalid --approval-sweep-interval: at most 1h".into());
        }
        let git_timeout = dur(args.git_timeout, f.git_timeout, "60s", "--git-timeout", Duration::from_millis(100))?;
        if git_timeout > Duration::from_secs(3600) {
            return Err("invalid --git-timeout: at most 1h".into());
        }
        let allow_file_sources = args.allow_file_sources || f.allow_file_sources.unwrap_or(false);
        let webhook_retry_base = dur(
            args.webhook_retry_base,
            f.webhook_retry_base,
            "5s",
            "--webhook-retry-base",
            Duration::from_millis(10),
        )?;
        if webhook_retry_base > Duration::from_secs(3600) {
            return Err("invalid --webhook-retry-base: at most 1h".into());
        }
        let webhook_max_attempts = args.webhook_max_attempts.or(f.webhook_max_attempts).unwrap_or(12);
        if !(1..=50).contains(&webhook_max_attempts) {
            return Err(format!("invalid --webhook-max-attempts {webhook_max_attempts}: between 1 and 50"));
        }
        let idempotency_ttl =
            dur(args.idempotency_ttl, f.idempotency_ttl, "24h", "--idempotency-ttl", Duration::from_secs(1))?;
        if idempotency_ttl > Duration::from_secs(30 * 86_400) {
            return Err("invalid --idempotency-ttl: at most 30 days".into());
        }
        let max_body_bytes = args.max_body_bytes.or(f.max_body_bytes).unwrap_or(1024 * 1024);
        if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(format!("invalid --max-body-bytes {max_body_bytes}: between 1024 and 67108864"));
        }
        let json_logs = match args.log_format.or(f.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(format!("invalid --log-format {other:?}: text or json")),
        };
        let master_key = match (env_key, args.master_key_file.or(f.master_key_file)) {
            (Some(_), Some(_)) => {
                return Err(format!("give one of {MASTER_KEY_ENV} and --master-key-file, not both"));
            }
            // The value itself is never echoed.
            (Some(key), None) if !crate::secrets::crypto::is_key_hex(&key) => {
                return Err(format!("invalid {MASTER_KEY_ENV}: expected 64 hexadecimal characters"));
            }
            (Some(key), None) => MasterKeySource::Env(key.trim().to_string()),
            (None, Some(path)) => MasterKeySource::File(path),
            (None, None) => MasterKeySource::DataDir,
        };
        Ok(Self {
            data_dir,
            http_addr,
            quic_addr,
            advertise_addr,
            database_url,
            sans,
            agent_cert_lifetime,
            heartbeat_interval,
            max_body_bytes,
            json_logs,
            approval_ttl,
            approval_sweep_interval,
            master_key,
            allow_file_sources,
            git_timeout,
            webhook_retry_base,
            webhook_max_attempts,
            idempotency_ttl,
        })
    }
}

fn default_db_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("ferry.db").display())
}

pub use ferry_protocol::units::parse_duration;

/// Command-line flags (each also readable from a `FERRY_*` variable).
#[derive(Debug, Parser)]
#[command(name = "ferry-server", version, about = "Ferry control plane")]
pub struct Args {
    /// TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the CA, the admin token and the SQLite database [default: ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// REST API listen address [default: 127.0.0.1:7700].
    #[arg(long, env = "FERRY_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// QUIC listen address agents dial [default: 127.0.0.1:7701].
    #[arg(long, env = "FERRY_QUIC_ADDR")]
    pub quic_addr: Option<String>,
    /// HOST:PORT agents should use to reach the QUIC listener [default: --quic-addr].
    #[arg(long, env = "FERRY_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// sqlite://PATH or postgres://… [default: sqlite in the data dir].
    #[arg(long, env = "FERRY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "san", env = "FERRY_SANS", value_delimiter = ',')]
    pub san: Vec<String>,
    /// Lifetime of agent client certificates; agents renew at two thirds [default: 12h].
    #[arg(long, env = "FERRY_AGENT_CERT_LIFETIME")]
    pub agent_cert_lifetime: Option<String>,
    /// Heartbeat interval agents are told to use; three missed end the session [default: 5s].
    #[arg(long, env = "FERRY_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Largest accepted REST request body in bytes [default: 1048576].
    #[arg(long, env = "FERRY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "FERRY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// How long a change waiting for approval (or its change window) stays open before it
    /// expires [default: 24h].
    #[arg(long, env = "FERRY_APPROVAL_TTL")]
    pub approval_ttl: Option<String>,
    /// How often pending changes are expired and scheduled ones applied once their change
    /// window opens [default: 10s].
    #[arg(long, env = "FERRY_APPROVAL_SWEEP_INTERVAL")]
    pub approval_sweep_interval: Option<String>,
    /// File holding the master key that encrypts secrets (64 hexadecimal characters), instead of
    /// FERRY_MASTER_KEY [default: <data-dir>/master.key, generated at the first start].
    #[arg(long, env = "FERRY_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Let Git sources name repositories on this machine (file:// URLs and paths); `ferry-server
    /// dev` sets it.
    #[arg(long, env = "FERRY_ALLOW_FILE_SOURCES")]
    pub allow_file_sources: bool,
    /// Deadline of one Git operation of a Git source (resolving a ref, reading the deployment
    /// file, fetch included) [default: 60s].
    #[arg(long, env = "FERRY_GIT_TIMEOUT")]
    pub git_timeout: Option<String>,
    /// Delay after a failed webhook delivery attempt; it doubles per attempt (with jitter) up to
    /// 1h [default: 5s].
    #[arg(long, env = "FERRY_WEBHOOK_RETRY_BASE")]
    pub webhook_retry_base: Option<String>,
    /// Attempts per webhook delivery before it is marked failed [default: 12, about 2.5 hours].
    #[arg(long, env = "FERRY_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<u32>,
    /// How long an Idempotency-Key is remembered: a POST repeated with the same key within
    /// this time gets the first answer again [default: 24h].
    #[arg(long, env = "FERRY_IDEMPOTENCY_TTL")]
    pub idempotency_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    quic_addr: Option<String>,
    advertise_addr: Option<String>,
    database_url: Option<String>,
    san: Option<Vec<String>>,
    agent_cert_lifetime: Option<String>,
    heartbeat_interval: Option<String>,
    max_body_bytes: Option<usize>,
    log_format: Option<String>,
    approval_ttl: Option<String>,
    approval_sweep_interval: Option<String>,
    master_key_file: Option<PathBuf>,
    allow_file_sources: Option<bool>,
    git_timeout: Option<String>,
    webhook_retry_base: Option<String>,
    webhook_max_attempts: Option<u32>,
    idempotency_ttl: Option<String>,
}

impl FileConfig {
    fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            format!("invalid config {}: {}", path.display(), e.message().lines().next().unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, String> {
        let mut v = vec!["ferry-server"];
        v.extend_from_slice(args);
        ServerConfig::from_args(Args::try_parse_from(v).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:7700");
        assert_eq!(c.quic_addr.to_string(), "127.0.0.1:7701");
        assert_eq!(c.advertise_addr, None);
        assert_eq!(c.agent_cert_lifetime, Duration::from_secs(12 * 3600));
        assert!(c.database_url.starts_with("sqlite://ferry-data/ferry.db"));
        assert_eq!(c.approval_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.approval_sweep_interval, Duration::from_secs(10));
        assert_eq!((c.webhook_retry_base, c.webhook_max_attempts), (Duration::from_secs(5), 12));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn invalid_values_give_one_clear_line() {
        for (args, needle) in [
            (vec!["--http-addr", "nope"], "--http-addr"),
            (vec!["--agent-cert-lifetime", "1s"], "at least"),
            (vec!["--agent-cert-lifetime", "12 parsecs"], "--agent-cert-lifetime"),
            (vec!["--database-url", "mysql://x"], "--database-url"),
            (vec!["--san", "bad name!"], "--san"),
            (vec!["--log-format", "xml"], "--log-format"),
            (vec!["--max-body-bytes", "10"], "--max-body-bytes"),
            (vec!["--approval-ttl", "1ms"], "--approval-ttl"),
            (vec!["--approval-ttl", "100d"], "--approval-ttl"),
            (vec!["--approval-sweep-interval", "2h"], "--approval-sweep-interval"),
            (vec!["--webhook-retry-base", "1ms"], "--webhook-retry-base"),
            (vec!["--webhook-retry-base", "2h"], "--webhook-retry-base"),
            (vec!["--webhook-max-attempts", "0"], "--webhook-max-attempts"),
            (vec!["--webhook-max-attempts", "51"], "--webhook-max-attempts"),
            (vec!["--idempotency-ttl", "0s"], "--idempotency-ttl"),
            (vec!["--idempotency-ttl", "31d"], "--idempotency-ttl"),
        ] {
            let err = parse(&args).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_master_key_comes_from_the_environment_a_file_or_the_data_dir() {
        let resolve = |flags: &[&str], env: Option<&str>| {
            let mut v = vec!["ferry-server"];
            v.extend_from_slice(flags);
            ServerConfig::resolve(Args::try_parse_from(v).unwrap(), None, env.map(str::to_string))
        };
        assert_eq!(resolve(&[], None).unwrap().master_key, MasterKeySource::DataDir);
        let key = "ab".repeat(32);
        let c = resolve(&[], Some(&key)).unwrap();
        assert_eq!(c.master_key, MasterKeySource::Env(key.clone()));
        assert!(!format!("{c:?}").contains(&key), "Debug shows no key material");
        assert_eq!(
            resolve(&["--master-key-file", "/etc/ferry/master.key"], None).unwrap().master_key,
            MasterKeySource::File("/etc/ferry/master.key".into())
        );
        let both = resolve(&["--master-key-file", "k"], Some(&key)).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        for bad in ["abc", "zz".repeat(32).as_str(), "ab".repeat(33).as_str()] {
            let e = resolve(&[], Some(bad)).unwrap_err();
            assert!(e.contains(MASTER_KEY_ENV) && !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn file_then_flags_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "http_addr = \"127.0.0.1:9000\"\nquic_addr = \"127.0.0.1:9001\"\n").unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--quic-addr", "127.0.0.1:9101"]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(c.quic_addr.to_string(), "127.0.0.1:9101");
        std::fs::write(&path, "htp_addr = \"x\"\n").unwrap();
        assert!(parse(&["--config", p]).unwrap_err().contains("unknown field"));
    }
}
