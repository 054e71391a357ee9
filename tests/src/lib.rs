//! Ferry's test harness: a real control plane and real agents in-process on 127.0.0.1:0, with
//! real QUIC and mutual TLS, plus raw protocol clients for the cases a well-behaved agent never
//! produces (foreign certificates, garbage frames, silence), and simulated agents ([`sim`]) that
//! speak the protocol faithfully without running processes, for benchmarks with many agents.
//!
//! Nothing here sleeps and hopes: [`eventually`] polls a condition until a deadline and fails
//! with a description of what it was waiting for.

pub mod binaries;
pub mod raw;
pub mod sim;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_agent::{AgentConfig, AgentState, Exit};
use ferry_control_plane::{Running, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The password of users made by [`ControlPlane::login_as`].
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Default deadline for [`eventually`].
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Logging to the test's captured output, and the crypto provider. Safe to call repeatedly.
pub fn init() {
    ferry_certs::tls::provider();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Every log line this test process writes from the first call on (at `debug`), for tests that
/// check what is and is not logged. It installs the process's tracing subscriber, so a test
/// binary that uses it calls it first in every test (before [`init`] would install another).
pub fn captured_logs() -> &'static LogCapture {
    static CAPTURE: std::sync::OnceLock<&'static LogCapture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static LogCapture = Box::leak(Box::default());
        let filter = tracing_subscriber::EnvFilter::new("debug,quinn=info,rustls=info");
        let installed = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(capture))
            .try_init();
        assert!(installed.is_ok(), "captured_logs() must come before anything installs a subscriber");
        capture
    })
}

/// See [`captured_logs`].
#[derive(Default)]
pub struct LogCapture(std::sync::Mutex<Vec<u8>>);

impl LogCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log capture")).into_owned()
    }
}

struct CaptureWriter(&'static LogCapture);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().expect("log capture").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
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

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A control plane running in this process, with its own data directory.
pub struct ControlPlane {
    running: Option<Running>,
    config: ServerConfig,
    _dir: Option<tempfile::TempDir>,
    pub data_dir: PathBuf,
    pub base_url: String,
    pub admin_token: String,
    http: reqwest::Client,
}

/// Builder for [`ControlPlane`].
pub struct ControlPlaneBuilder {
    config: ServerConfig,
    dir: tempfile::TempDir,
}

impl ControlPlaneBuilder {
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.config.heartbeat_interval = d;
        self
    }

    pub fn agent_cert_lifetime(mut self, d: Duration) -> Self {
        self.config.agent_cert_lifetime = d;
        self
    }

    /// How long pending changes (approvals, changes waiting for a window) stay open.
    pub fn approval_ttl(mut self, d: Duration) -> Self {
        self.config.approval_ttl = d;
        self
    }

    /// Whether Git sources may name local repositories (on by default here, as in
    /// `ferry-server dev`).
    pub fn allow_file_sources(mut self, allow: bool) -> Self {
        self.config.allow_file_sources = allow;
        self
    }

    /// The delay after a failed webhook attempt (doubling per attempt).
    pub fn webhook_retry_base(mut self, d: Duration) -> Self {
        self.config.webhook_retry_base = d;
        self
    }

    pub fn database_url(mut self, url: &str) -> Self {
        self.config.database_url = url.to_string();
        self
    }

    pub async fn spawn(self) -> ControlPlane {
        init();
        let data_dir = self.dir.path().to_path_buf();
        let mut cp = ControlPlane {
            running: None,
            config: self.config,
            _dir: Some(self.dir),
            data_dir,
            base_url: String::new(),
            admin_token: String::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client"),
        };
        cp.start().await;
        cp
    }
}

impl ControlPlane {
    pub fn builder() -> ControlPlaneBuilder {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig::for_tests(dir.path());
        config.heartbeat_interval = Duration::from_millis(500);
        // Scheduled changes apply, and pending ones expire, within a quarter second.
        config.approval_sweep_interval = Duration::from_millis(250);
        // Git sources in tests are local repositories.
        config.allow_file_sources = true;
        config.git_timeout = Duration::from_secs(10);
        ControlPlaneBuilder { config, dir }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    async fn start(&mut self) {
        let running = ferry_control_plane::start(self.config.clone()).await.expect("control plane starts");
        // Pin the ports so that a restart comes back where agents expect it.
        self.config.http_addr = running.http_addr;
        self.config.quic_addr = running.quic_addr;
        self.base_url = format!("http://{}", running.http_addr);
        self.admin_token = std::fs::read_to_string(&running.admin_token_path).expect("admin token").trim().to_string();
        self.running = Some(running);
    }

    pub fn quic_addr(&self) -> std::net::SocketAddr {
        self.config.quic_addr
    }

    /// The store of the running control plane.
    pub fn running_store(&self) -> &ferry_control_plane::store::Store {
        &self.running.as_ref().expect("control plane running").state.store
    }

    /// Stops the control plane (agents see their sessions close) without removing its data.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Stops and starts again on the same data directory, database and ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The UDP port was just released; binding it again can race the OS briefly.
        let mut tries = 0;
        loop {
            match ferry_control_plane::start(self.config.clone()).await {
                Ok(running) => {
                    self.base_url = format!("http://{}", running.http_addr);
                    self.running = Some(running);
                    return;
                }
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::warn!(error = %e, "restart: retrying bind");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("control plane restart failed: {e}"),
            }
        }
    }

    /// Calls the API as the admin. Returns the status and the JSON body (`Null` when empty).
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.request(method, path, body, Some(&self.admin_token)).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base_url));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("HTTP request");
        let status = res.status();
        let bytes = res.bytes().await.expect("HTTP body");
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        (status, value)
    }

    /// Creates a user with these role bindings (`["developer"]`, `[{"role":…,"workspace":…}]`)
    /// and logs it in; returns its session token.
    pub async fn login_as(&self, username: &str, roles: Value) -> String {
        let (status, body) = self
            .api(
                Method::POST,
                "/v1/users",
                Some(json!({ "username": username, "password": TEST_PASSWORD, "roles": roles })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(username, TEST_PASSWORD).await
    }

    /// Logs a user in; returns its session token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .request(Method::POST, "/v1/auth/login", Some(json!({ "username": username, "password": password })), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("session token").to_string()
    }

    /// Creates a bootstrap token and returns its full string.
    pub async fn token(&self, ttl_seconds: i64, labels: &[(&str, &str)]) -> String {
        let labels: BTreeMap<_, _> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (status, body) = self
            .api(Method::POST, "/v1/agents/tokens", Some(json!({ "ttlSeconds": ttl_seconds, "labels": labels })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token string").to_string()
    }

    pub async fn agent_json(&self, id: &str) -> Value {
        let (status, body) = self.api(Method::GET, &format!("/v1/agents/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the registry reports `status` for agent `id`.
    pub async fn wait_agent_status(&self, id: &str, status: &str) -> Value {
        eventually(&format!("agent {id} {status}"), DEADLINE, || async {
            let v = self.agent_json(id).await;
            (v["status"] == status).then_some(v)
        })
        .await
    }

    /// The control plane's CA (PEM certificate and key), for tests that forge certificates.
    pub fn ca(&self) -> ferry_certs::Ca {
        let cert = std::fs::read_to_string(self.data_dir.join("ca.crt")).expect("ca.crt");
        let key = std::fs::read_to_string(self.data_dir.join("ca.key")).expect("ca.key");
        ferry_certs::Ca::from_pem(&cert, &key).expect("CA loads")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Best effort: stop listeners of a test that panicked.
            tokio::spawn(r.shutdown());
        }
    }
}

/// An agent running in this process.
pub struct Agent {
    task: Option<JoinHandle<Exit>>,
    shutdown: watch::Sender<bool>,
    state: watch::Receiver<AgentState>,
    config: AgentConfig,
    dir: Option<tempfile::TempDir>,
    pub state_dir: PathBuf,
}

impl Agent {
    /// Enrolls with `token` (if not enrolled yet) and runs until stopped.
    pub fn spawn(cp: &ControlPlane, token: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = AgentConfig::new(cp.quic_addr().to_string(), dir.path().join("state"));
        config.token = Some(token.to_string());
        config.name = "test-agent".into();
        config.labels = BTreeMap::from([("role".into(), "web".into())]);
        config.max_backoff = Duration::from_millis(500);
        config.port_range = port_slice();
        Self::spawn_with(config, Some(dir))
    }

    pub fn spawn_with(config: AgentConfig, dir: Option<tempfile::TempDir>) -> Self {
        init();
        let state_dir = config.state_dir.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (state_tx, state) = watch::channel(AgentState::default());
        let task = tokio::spawn(ferry_agent::run(config.clone(), shutdown_rx, state_tx));
        Self { task: Some(task), shutdown, state, config, dir, state_dir }
    }

    /// Stops the agent (its workloads stop with it) and starts it again on the same state
    /// directory, as a restarted agent process would.
    pub async fn restart(mut self) -> Self {
        let _ = self.shutdown.send(true);
        let task = self.task.take().expect("running");
        tokio::time::timeout(DEADLINE, task).await.expect("agent stops").expect("agent task");
        let mut config = self.config.clone();
        config.token = None;
        Self::spawn_with(config, self.dir.take())
    }

    pub fn state(&self) -> AgentState {
        self.state.borrow().clone()
    }

    /// Waits until the agent holds a live session; returns its state.
    pub async fn wait_connected(&self) -> AgentState {
        self.wait_state("agent connected", |s| s.connected && s.agent_id.is_some()).await
    }

    pub async fn wait_state(&self, what: &str, cond: impl Fn(&AgentState) -> bool) -> AgentState {
        let mut rx = self.state.clone();
        match tokio::time::timeout(DEADLINE, rx.wait_for(|s| cond(s))).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => panic!("agent stopped while waiting for: {what}; last state {:?}", self.state()),
            Err(_) => panic!("timed out after {DEADLINE:?} waiting for: {what}; last state {:?}", self.state()),
        }
    }

    /// Waits for the agent to stop on its own (a terminal error) and returns why.
    pub async fn exit(mut self) -> Exit {
        let task = self.task.take().expect("running");
        tokio::time::timeout(DEADLINE, task).await.expect("agent stops by itself").expect("agent task")
    }

    /// Asks the agent to stop and waits for it.
    pub async fn stop(mut self) -> Exit {
        let _ = self.shutdown.send(true);
        let task = self.task.take().expect("running");
        tokio::time::timeout(DEADLINE, task).await.expect("agent stops").expect("agent task")
    }

    /// The agent's stored certificate + key (`client.pem`).
    pub fn client_pem(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("client.pem")).expect("client.pem")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A slice of the port range of its own for each agent of this test process, so agents running
/// in parallel never hand the same port to two replicas.
fn port_slice() -> std::ops::Range<u16> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200;
    let start = 20_000 + n * 50;
    start..start + 50
}

/// The CA certificate an enrolled agent stored.
pub fn stored_ca(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("ca.crt")).expect("ca.crt")
}
