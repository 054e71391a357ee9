//! Child processes in their own process groups: spawning, signalling, stopping and reaping.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::logs::{self, LogSink};
use crate::pidfile;
use ferry_protocol::LogStream;

/// How long to wait for a process to be reaped after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the rest of a group to die after SIGKILL.
const GROUP_WAIT: Duration = Duration::from_secs(2);
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Sends `signal` to process group `pgid`. Returns whether the group existed. Refuses groups 0
/// and 1, which would mean "our own group" and "everything" to the kernel.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> bool {
    let Ok(raw) = i32::try_from(pgid) else { return false };
    if raw <= 1 {
        return false;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(err) => {
            tracing::warn!(pgid, ?signal, error = %err, "cannot signal a process group");
            false
        }
    }
}

/// SIGKILLs a process group when dropped, so that no path — an error, a panic, an aborted task,
/// the async runtime shutting down — leaves the group running.
pub(crate) struct GroupGuard {
    pgid: u32,
}

impl GroupGuard {
    pub(crate) fn new(pgid: u32) -> Self {
        Self { pgid }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

/// A command line to run with an exact environment, in a new process group.
pub(crate) fn command(
    program: impl AsRef<OsStr>,
    args: &[impl AsRef<OsStr>],
    env: &[(OsString, OsString)],
    cwd: Option<&str>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).process_group(0);
    cmd.kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd
}

/// A running replica process whose output is being forwarded.
pub(crate) struct Running {
    child: Child,
    pid: u32,
    guard: GroupGuard,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Spawns `cmd` with piped stdout/stderr forwarded line by line to `sink`.
    pub(crate) fn spawn(mut cmd: Command, sink: &LogSink) -> io::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let Some(pid) = child.id() else {
            return Err(io::Error::other("the child was reaped before its pid was read"));
        };
        let guard = GroupGuard::new(pid);
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(logs::forward(out, LogStream::Stdout, sink.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(logs::forward(err, LogStream::Stderr, sink.clone()));
        }
        Ok(Self { child, pid, guard, readers })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit (cancel-safe).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, SIGKILL to the group after `grace`; returns once the leader is reaped.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        signal_group(self.pid, Signal::SIGTERM);
        if let Ok(status) = timeout(grace, self.child.wait()).await {
            return status;
        }
        tracing::debug!(pid = self.pid, "grace period over, killing the process group");
        signal_group(self.pid, Signal::SIGKILL);
        match timeout(KILL_WAIT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => Err(io::Error::other("the process did not die after SIGKILL")),
        }
    }

    /// After the leader exited: kills whatever is left of its group and waits (bounded) until
    /// no live member remains. Zombies whose new parent does not reap them count as gone.
    pub(crate) async fn finish(self) {
        let Self { child: _child, pid, guard, readers } = self;
        drop(guard);
        let deadline = Instant::now() + GROUP_WAIT;
        while has_live_members(pid) {
            if Instant::now() >= deadline {
                tracing::warn!(pgid = pid, "members of the process group survived SIGKILL");
                break;
            }
            signal_group(pid, Signal::SIGKILL);
            sleep(GROUP_POLL).await;
        }
        // Readers end at EOF, which comes once every holder of the pipes is dead; don't wait on
        // them past that point (a member in uninterruptible sleep could hold them open).
        for reader in readers {
            if timeout(Duration::from_millis(200), reader).await.is_err() {
                tracing::debug!(pgid = pid, "log reader still open after the group died");
            }
        }
    }
}

/// Whether any non-zombie process is in group `pgid` (scans /proc).
pub(crate) fn has_live_members(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else { return false };
    let target = pgid.to_string();
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())).any(|pid| {
        pidfile::stat_fields(pid)
            .is_some_and(|f| f.get(2).is_some_and(|g| *g == target) && f.first().is_some_and(|s| s != "Z" && s != "X"))
    })
}

/// "exited with code 3" / "killed by signal 9".
pub(crate) fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("exited ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe_exit(&ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_exit(&ExitStatus::from_raw(9)), "killed by signal 9");
    }

    #[test]
    fn never_signals_own_group_or_everyone() {
        assert!(!signal_group(0, Signal::SIGTERM));
        assert!(!signal_group(1, Signal::SIGTERM));
        assert!(!signal_group(u32::MAX, Signal::SIGTERM));
    }
}
