//! Pidfiles, so that an agent restarted after a crash can kill the process groups its previous
//! run left behind.
//!
//! One file per live replica process, `<run_dir>/<escaped workload id>.<replica>.pid`, holding
//! `<pgid> <start time>\n` where the start time is field 22 of `/proc/<pgid>/stat` (clock ticks
//! since boot). The start time makes PID reuse harmless: a group is only killed if its leader
//! still has the recorded start time.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::error::RuntimeError;
use crate::process::signal_group;

/// A written pidfile; removed when dropped.
pub(crate) struct Pidfile {
    path: PathBuf,
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot remove pidfile");
        }
    }
}

/// Records process group `pgid` (whose leader is `pgid`) for replica `index` of `workload_id`.
pub(crate) fn write(run_dir: &Path, workload_id: &str, index: u32, pgid: u32) -> Result<Pidfile, RuntimeError> {
    let start = start_time(pgid).ok_or(RuntimeError::Vanished(pgid))?;
    let path = run_dir.join(format!("{}.{index}.pid", escape(workload_id)));
    let tmp = path.with_extension("pid.tmp");
    let result = fs::write(&tmp, format!("{pgid} {start}\n")).and_then(|()| fs::rename(&tmp, &path));
    match result {
        Ok(()) => Ok(Pidfile { path }),
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            Err(RuntimeError::Pidfile { path, source })
        }
    }
}

/// Kills the process groups recorded in `run_dir` by a previous run and removes their pidfiles.
/// Returns how many groups were signalled.
pub(crate) fn kill_leftovers(run_dir: &Path) -> usize {
    let entries = match fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(dir = %run_dir.display(), error = %err, "cannot read the run directory");
            return 0;
        }
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".pid.tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".pid") {
            continue;
        }
        match fs::read_to_string(&path).ok().as_deref().and_then(parse) {
            Some((pgid, start)) if is_ours(pgid, start) => {
                if signal_group(pgid, Signal::SIGKILL) {
                    tracing::info!(pgid, pidfile = %path.display(), "killed a process group left by a previous run");
                    killed += 1;
                }
            }
            Some((pgid, _)) => tracing::debug!(pgid, "pidfile names a process that is not ours any more"),
            None => tracing::warn!(pidfile = %path.display(), "ignoring an unreadable pidfile"),
        }
        if let Err(err) = fs::remove_file(&path) {
            tracing::warn!(pidfile = %path.display(), error = %err, "cannot remove a stale pidfile");
        }
    }
    killed
}

/// Whether group `pgid` is still the one we recorded. If its leader is gone, the number cannot
/// have been reused as a group id while members of our old group survive, so signalling the
/// group reaches only those members (or nobody).
fn is_ours(pgid: u32, recorded_start: u64) -> bool {
    match start_time(pgid) {
        Some(start) => start == recorded_start,
        None => true,
    }
}

fn parse(text: &str) -> Option<(u32, u64)> {
    let mut fields = text.split_whitespace();
    let pgid = fields.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((pgid, start))
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`, or `None` if the process does not exist.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state).
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    split_stat(&stat)
}

fn split_stat(stat: &str) -> Option<Vec<String>> {
    // The command name (field 2) is parenthesised and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// File-name-safe, injective encoding of a workload id.
fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_file_name_safe() {
        assert_eq!(escape("web-1_a"), "web-1_a");
        assert_eq!(escape("a/b.c%"), "a%2Fb%2Ec%25");
    }

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let fields = split_stat(stat).expect("fields");
        assert_eq!(fields[0], "S");
        assert_eq!(fields[19], "987654");
        assert_eq!(parse("12 345\n"), Some((12, 345)));
        assert_eq!(parse("12"), None);
        assert_eq!(parse("12 345 6"), None);
        assert!(start_time(std::process::id()).is_some());
    }
}
