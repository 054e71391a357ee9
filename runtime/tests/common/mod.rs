//! Helpers for the runtime's integration tests: real processes, conditions awaited with deadlines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use ferry_protocol::{HealthCheck, Phase, Probe, ProcessSpec, ReplicaStatus, RestartPolicy, WorkloadSpec};
use ferry_runtime::{ProcessRuntime, RuntimeConfig, SourcedLine, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};

/// Polls `check` every 20 ms until it returns `Some`, for up to 10 s.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an async check.
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A runtime with its own run dir and port range, and the receiving end of its log channel.
pub struct Harness {
    pub rt: ProcessRuntime,
    pub logs: mpsc::Receiver<SourcedLine>,
    pub run_dir: PathBuf,
}

static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

/// A fresh, empty directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_RANGE.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ferry-runtime-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Harness {
    pub fn new(tag: &str) -> Self {
        let run_dir = temp_dir(tag);
        // Each harness gets its own 40-port slice (below the ephemeral range) so tests running
        // in parallel never compete for ports.
        let slice = NEXT_RANGE.fetch_add(1, Ordering::Relaxed) % 200;
        let base = 12000 + slice * 40;
        let config = RuntimeConfig { port_range: base..base + 40, run_dir: run_dir.clone() };
        let (tx, logs) = mpsc::channel(1024);
        Self { rt: ProcessRuntime::new(config, tx), logs, run_dir }
    }

    pub fn replica(&self, id: &str, index: u32) -> Option<ReplicaStatus> {
        let status = self.rt.status();
        let workload = status.into_iter().find(|w| w.id == id)?;
        workload.replicas.into_iter().find(|r| r.index == index)
    }

    pub fn replicas(&self, id: &str) -> Vec<ReplicaStatus> {
        self.rt.status().into_iter().find(|w| w.id == id).map(|w| w.replicas).unwrap_or_default()
    }

    /// Waits until replica `index` of `id` satisfies `pred`; returns that status.
    pub async fn wait_for(
        &self,
        id: &str,
        index: u32,
        what: &str,
        pred: impl Fn(&ReplicaStatus) -> bool,
    ) -> ReplicaStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.replica(id, index);
            if let Some(status) = status.as_ref().filter(|r| pred(r)) {
                return status.clone();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {id}[{index}] {what}; last seen: {status:?}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_running(&self, id: &str, index: u32) -> ReplicaStatus {
        self.wait_for(id, index, "running and ready", |r| r.phase == Phase::Running && r.ready && r.pid.is_some()).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// The process spec of a test workload, to tweak it.
pub trait Process {
    fn process(&mut self) -> &mut ProcessSpec;
}

impl Process for Workload {
    fn process(&mut self) -> &mut ProcessSpec {
        self.spec.process_mut()
    }
}

/// A workload of one `OnFailure` replica with no probes and a 2 s grace period; its deployment
/// is `id` up to an `@`, if any.
pub fn workload(id: &str, command: &str, args: &[&str]) -> Workload {
    Workload {
        id: id.to_owned(),
        deployment_id: id.split('@').next().unwrap_or(id).to_owned(),
        restart_nonce: 0,
        spec: WorkloadSpec::Process(ProcessSpec {
            command: command.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            replicas: 1,
            restart_policy: RestartPolicy::OnFailure,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 2000,
        }),
    }
}

/// A shell-script workload.
pub fn sh(id: &str, script: &str) -> Workload {
    workload(id, "sh", &["-c", script])
}

/// A fast check: no initial delay, 100 ms period, 1 s timeout, thresholds 1/2.
pub fn check(probe: Probe) -> HealthCheck {
    HealthCheck {
        probe,
        initial_delay_ms: 0,
        period_ms: 100,
        timeout_ms: 1000,
        success_threshold: 1,
        failure_threshold: 2,
    }
}

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

/// A tiny HTTP server on 127.0.0.1:$PORT answering 200 "ok" to every GET, silently.
pub fn http_server(id: &str) -> Workload {
    let script = r#"
import http.server, os

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'ok ' + os.environ['FERRY_REPLICA'].encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"#;
    workload(id, python(), &["-c", script])
}

/// GET / on 127.0.0.1:`port`; returns the response (status line first), if any.
pub async fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await.ok()?.ok()?;
    Some(response)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                let Some((_, rest)) = stat.rsplit_once(')') else { return false };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
            })
        })
        .collect()
}

/// Field 22 of /proc/<pid>/stat.
pub fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("comm");
    rest.split_whitespace().nth(19).expect("field 22").parse().expect("number")
}
