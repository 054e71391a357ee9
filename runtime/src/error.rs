//! Internal error types. Nothing here crosses the public API: every failure a replica meets ends
//! up, rendered with `Display`, in [`ferry_protocol::ReplicaStatus::reason`].

use std::io;
use std::path::PathBuf;

/// Failures of the runtime's own bookkeeping.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("no free port in {start}..{end}")]
    NoFreePort { start: u16, end: u16 },
    #[error("pidfile {}: {source}", path.display())]
    Pidfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("process {0} exited before its start time could be read")]
    Vanished(u32),
}

/// Why one health probe failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("timed out after {0} ms")]
    Timeout(u128),
    #[error("cannot connect to 127.0.0.1:{port}: {reason}")]
    Connect { port: u16, reason: String },
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    #[error("malformed HTTP response")]
    MalformedResponse,
    #[error("{0}")]
    Io(String),
    #[error("exec failed: {0}")]
    Spawn(String),
    #[error("{0}")]
    Exit(String),
    #[error("invalid probe: {0}")]
    Invalid(&'static str),
}

/// An I/O error's message without the trailing " (os error N)" noise, e.g. "No such file or
/// directory" — what users read in a replica's `reason`.
pub(crate) fn io_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_suffix_is_stripped() {
        let err = io::Error::from_raw_os_error(2);
        assert_eq!(io_message(&err), "No such file or directory");
        assert_eq!(io_message(&io::Error::other("plain")), "plain");
    }
}
