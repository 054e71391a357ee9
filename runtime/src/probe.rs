//! One-shot health probes: HTTP GET, TCP connect, exec.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::error::{ProbeError, io_message};
use crate::process::{GroupGuard, command, describe_exit};

/// Longest HTTP status line accepted.
const MAX_STATUS_LINE: usize = 1024;

/// What a probe runs against: the replica's port, environment and working directory.
pub(crate) struct ProbeTarget {
    pub(crate) port: u16,
    pub(crate) env: Arc<Vec<(OsString, OsString)>>,
    pub(crate) cwd: Option<String>,
}

/// Runs `probe` once; the whole probe (connect, request, response, or the exec'd command) must
/// finish within `limit`.
pub(crate) async fn run(probe: &Probe, target: &ProbeTarget, limit: Duration) -> Result<(), ProbeError> {
    let port = |p: u16| if p == 0 { target.port } else { p };
    match probe {
        Probe::Http { path, port: p } => within(limit, http_get(port(*p), path)).await,
        Probe::Tcp { port: p } => within(limit, async { connect(port(*p)).await.map(drop) }).await,
        Probe::Exec { command } => exec(command, target, limit).await,
    }
}

async fn within(limit: Duration, work: impl Future<Output = Result<(), ProbeError>>) -> Result<(), ProbeError> {
    timeout(limit, work).await.unwrap_or(Err(ProbeError::Timeout(limit.as_millis())))
}

async fn connect(port: u16) -> Result<TcpStream, ProbeError> {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|err| ProbeError::Connect { port, reason: io_message(&err) })
}

async fn http_get(port: u16, path: &str) -> Result<(), ProbeError> {
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(ProbeError::Invalid("the HTTP path must start with '/' and contain no spaces"));
    }
    let mut stream = connect(port).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ferry-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let io_err = |err: std::io::Error| ProbeError::Io(io_message(&err));
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !response.contains(&b'\n') && response.len() < MAX_STATUS_LINE {
        let read = stream.read(&mut chunk).await.map_err(io_err)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
    }
    match status_code(&response) {
        Some(code) if (200..=399).contains(&code) => Ok(()),
        Some(code) => Err(ProbeError::HttpStatus(code)),
        None => Err(ProbeError::MalformedResponse),
    }
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
fn status_code(response: &[u8]) -> Option<u16> {
    let end = response.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&response[..end]).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Runs the command in its own process group; success is exit code 0 within `limit`. On timeout
/// the whole group is killed.
async fn exec(argv: &[String], target: &ProbeTarget, limit: Duration) -> Result<(), ProbeError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ProbeError::Invalid("empty exec command"));
    };
    let mut cmd = command(program, args, &target.env, target.cwd.as_deref());
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|err| ProbeError::Spawn(io_message(&err)))?;
    let Some(pid) = child.id() else {
        return Err(ProbeError::Spawn("the probe was reaped before its pid was read".to_owned()));
    };
    // Kills the probe's group on every way out, including this future being dropped.
    let _guard = GroupGuard::new(pid);
    match timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ProbeError::Exit(describe_exit(&status))),
        Ok(Err(err)) => Err(ProbeError::Io(io_message(&err))),
        Err(_) => {
            // The guard's SIGKILL plus kill_on_drop make tokio reap the child in the background.
            Err(ProbeError::Timeout(limit.as_millis()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\nx"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None, "incomplete line");
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20 OK\r\n"), None);
    }

    #[tokio::test]
    async fn rejects_bad_paths_and_empty_exec() {
        let target = ProbeTarget { port: 1, env: Arc::new(Vec::new()), cwd: None };
        let bad = Probe::Http { path: "/a b".to_owned(), port: 0 };
        assert!(matches!(run(&bad, &target, Duration::from_secs(1)).await, Err(ProbeError::Invalid(_))));
        let empty = Probe::Exec { command: Vec::new() };
        assert!(matches!(run(&empty, &target, Duration::from_secs(1)).await, Err(ProbeError::Invalid(_))));
    }
}
