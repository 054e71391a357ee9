//! The control plane under test as a child process: the release `ferry-server` next to this
//! executable, on ephemeral loopback ports, with a temporary data dir and either SQLite (default)
//! or a fresh schema of a PostgreSQL database (dropped at the end). Running it in its own process
//! keeps its CPU time and RSS measurable on their own (`/proc/<pid>`), and keeps the benchmark's
//! clients and simulated agents off its tokio runtime.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use ferry_control_plane::store::{Store, StoreOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Server stderr lines kept to explain a failure.
const TAIL_LINES: usize = 30;
/// The server's log filter when `FERRY_BENCH_SERVER_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "warn";

/// The server's log filter (`RUST_LOG` syntax): `FERRY_BENCH_SERVER_LOG`, default `warn`.
pub fn log_filter() -> String {
    std::env::var("FERRY_BENCH_SERVER_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.into())
}

/// How to start the control plane.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `postgres://…`; `None` for SQLite in the data dir.
    pub database_url: Option<String>,
    /// `--heartbeat-interval` (e.g. `5s`); `None` for the server's default.
    pub heartbeat_interval: Option<String>,
}

/// A running `ferry-server`.
pub struct Server {
    child: Child,
    pub api: Api,
    pub quic_addr: SocketAddr,
    log: Arc<Mutex<LogTail>>,
    pg: Option<PgSchema>,
    _data_dir: tempfile::TempDir,
}

#[derive(Default)]
struct LogTail {
    lines: VecDeque<String>,
    total: u64,
}

struct PgSchema {
    store: Store,
    schema: String,
}

/// `ferry-server` next to this executable (`target/release/` for a release build).
fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ferry-bench")?;
    let path = exe.parent().context("ferry-bench has no parent directory")?.join("ferry-server");
    if !path.exists() {
        bail!(
            "{} not found: build it next to ferry-bench (cargo build --release -p ferry-tests -p ferry-server)",
            path.display()
        );
    }
    Ok(path)
}

fn random_hex(n: usize) -> String {
    let mut rng = crate::stats::Rng::from_time();
    (0..n).map(|_| format!("{:x}", rng.next() % 16)).collect()
}

/// `url` with `options=-c search_path=<schema>` added, so every connection of the server uses it.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

impl Server {
    pub async fn start(opts: &Options) -> anyhow::Result<Self> {
        let binary = server_binary()?;
        let data_dir = tempfile::tempdir().context("creating a data dir")?;
        // Every line the server logs, copied to a file on request (the tail keeps the last few).
        let mut copy = match std::env::var_os("FERRY_BENCH_SERVER_LOG_FILE") {
            Some(path) => Some(std::io::LineWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating FERRY_BENCH_SERVER_LOG_FILE {}", path.to_string_lossy()))?,
            )),
            None => None,
        };
        let mut pg = None;
        let mut cmd = Command::new(&binary);
        cmd.arg("--data-dir")
            .arg(data_dir.path())
            .args(["--http-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
            .env("RUST_LOG", log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(heartbeat) = &opts.heartbeat_interval {
            cmd.args(["--heartbeat-interval", heartbeat]);
        }
        if let Some(url) = &opts.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("--database-url must be postgres://… (SQLite in a temporary data dir is the default)");
            }
            // A schema of our own, created (and migrated) here, used by the server through the
            // connection's search_path, dropped in `stop`.
            let schema = format!("ferry_bench_{}", random_hex(8));
            let store = Store::connect(url, StoreOptions { pg_schema: Some(schema.clone()) })
                .await
                .with_context(|| format!("connecting to PostgreSQL to create schema {schema}"))?;
            cmd.arg("--database-url").arg(with_search_path(url, &schema));
            pg = Some(PgSchema { store, schema });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                drop_schema(pg).await;
                return Err(anyhow!("starting {}: {e}", binary.display()));
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tail = log.clone();
        std::thread::spawn(move || {
            let mut started = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = &mut copy
                    && writeln!(file, "{line}").is_err()
                {
                    eprintln!("ferry-bench: could not write to FERRY_BENCH_SERVER_LOG_FILE; no longer copying");
                    copy = None;
                }
                if !started && line.contains("API on http://") {
                    started = true;
                    let _ = tx.send(line);
                    continue;
                }
                let mut t = tail.lock().expect("log tail");
                t.total += 1;
                t.lines.push_back(line);
                if t.lines.len() > TAIL_LINES {
                    t.lines.pop_front();
                }
            }
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT)).await?;
        let mut server = Self {
            child,
            api: Api::new(String::new(), String::new()),
            quic_addr: "127.0.0.1:0".parse().expect("literal"),
            log,
            pg,
            _data_dir: data_dir,
        };
        let line = match line {
            Ok(line) => line,
            Err(_) => {
                let tail = server.log_tail();
                server.stop().await;
                bail!("ferry-server did not start within {START_TIMEOUT:?}; its output:\n{tail}");
            }
        };
        // "ferry-server: API on http://A · agents dial B · admin token in PATH"
        let parsed = (|| {
            let http = line.split("API on http://").nth(1)?.split_whitespace().next()?;
            let quic = line.split("agents dial ").nth(1)?.split_whitespace().next()?;
            let token_path = line.split("admin token in ").nth(1)?.trim();
            Some((http.to_string(), quic.parse::<SocketAddr>().ok()?, PathBuf::from(token_path)))
        })();
        let Some((http, quic, token_path)) = parsed else {
            server.stop().await;
            bail!("unexpected ferry-server start line: {line}");
        };
        let token = match std::fs::read_to_string(&token_path) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                server.stop().await;
                bail!("reading the admin token {}: {e}", token_path.display());
            }
        };
        server.api = Api::new(format!("http://{http}"), token);
        server.quic_addr = quic;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's CPU time and memory now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid())
    }

    /// Fails when the server process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("ferry-server exited ({status}); its last output:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The server's last stderr lines (warnings and errors by default).
    /// Prints how many lines the server logged and the last ones, if it logged any.
    pub fn print_log_tail(&self) {
        if self.log_lines() > 0 {
            println!(
                "\nferry-server logged {} line(s) at RUST_LOG={}; the last ones:\n{}",
                self.log_lines(),
                log_filter(),
                self.log_tail()
            );
        }
    }

    pub fn log_tail(&self) -> String {
        let t = self.log.lock().expect("log tail");
        let mut s: Vec<&str> = t.lines.iter().map(String::as_str).collect();
        if s.is_empty() {
            s.push("(nothing)");
        }
        s.join("\n")
    }

    /// How many lines the server logged (at [`log_filter`]), not counting its start line.
    pub fn log_lines(&self) -> u64 {
        self.log.lock().expect("log tail").total
    }

    /// SIGTERM, then SIGKILL after 20 s; drops the PostgreSQL schema if one was created.
    pub async fn stop(mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        drop_schema(self.pg.take()).await;
    }
}

async fn drop_schema(pg: Option<PgSchema>) {
    if let Some(PgSchema { store, schema }) = pg {
        if let Err(e) = store.drop_pg_schema(&schema).await {
            eprintln!("ferry-bench: could not drop PostgreSQL schema {schema}: {e}");
        }
        store.close().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a server behind (a panic, or an early return without `stop`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU time since the process started.
    pub cpu: Duration,
    pub rss_kib: u64,
    /// Peak RSS.
    pub hwm_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        Self::read(&format!("/proc/{pid}"))
    }

    pub fn own() -> anyhow::Result<Self> {
        Self::read("/proc/self")
    }

    fn read(dir: &str) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("reading {dir}/stat"))?;
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // utime and stime are fields 14 and 15 of stat(5); `fields[0]` is field 3.
        let (Some(utime), Some(stime)) = (field(11), field(12)) else {
            bail!("unexpected {dir}/stat: {stat}");
        };
        let status =
            std::fs::read_to_string(format!("{dir}/status")).with_context(|| format!("reading {dir}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ticks = utime + stime;
        let hz = clock_ticks();
        Ok(Self {
            cpu: Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz),
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        })
    }
}

/// `sysconf(_SC_CLK_TCK)` without unsafe code: `getconf CLK_TCK`, 100 if that fails.
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100)
    })
}

/// CPU use between two readings, as % of one core.
pub fn cpu_percent(before: &Usage, after: &Usage, wall: Duration) -> f64 {
    after.cpu.saturating_sub(before.cpu).as_secs_f64() / wall.as_secs_f64() * 100.0
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The REST API as the admin.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String, token: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(256)
            .build()
            .expect("HTTP client");
        Self { base, token, http }
    }

    /// Calls the API; returns the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = res.status();
        let bytes = res.bytes().await.with_context(|| format!("{method} {path}: body"))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: JSON body"))?
        };
        Ok((status, value))
    }

    /// Creates a bootstrap token (valid for a day) with these labels.
    pub async fn token(&self, labels: &Value) -> anyhow::Result<String> {
        let body = json!({ "ttlSeconds": 86_400, "labels": labels, "description": "ferry-bench" });
        let (status, res) = self.call(Method::POST, "/v1/agents/tokens", Some(&body)).await?;
        if status != StatusCode::CREATED {
            bail!("POST /v1/agents/tokens: {status} {res}");
        }
        res["token"].as_str().map(str::to_string).context("token missing from the response")
    }

    /// How many agents the control plane counts as connected.
    pub async fn connected_agents(&self) -> anyhow::Result<u64> {
        let (status, res) = self.call(Method::GET, "/v1/agents?status=connected&pageSize=1", None).await?;
        if status != StatusCode::OK {
            bail!("GET /v1/agents: {status} {res}");
        }
        res["pagination"]["totalCount"].as_u64().context("totalCount missing")
    }
}
