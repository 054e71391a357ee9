//! Forwarding a child's output, line by line, to the runtime's log channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_protocol::{LogLine, LogStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

use crate::SourcedLine;
use crate::status::now_ms;

/// Longest line forwarded; the rest of a longer line is discarded.
pub(crate) const MAX_LINE: usize = 16 * 1024;
/// How long a reader waits for room in a full channel before dropping a line.
const SEND_WAIT: Duration = Duration::from_millis(50);

/// Where one replica's lines go.
#[derive(Clone)]
pub(crate) struct LogSink {
    pub(crate) tx: mpsc::Sender<SourcedLine>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) workload_id: Arc<str>,
    pub(crate) replica: u32,
}

/// Reads `reader` to EOF in a task, forwarding each line to `sink`.
pub(crate) fn forward<R>(reader: R, stream: LogStream, sink: LogSink) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut sender = Sender { sink, waiting: true };
        let mut lines = LineReader::new(reader);
        while let Some(line) = lines.next_line().await {
            sender.send(LogLine { ts_ms: now_ms(), stream, line }).await;
        }
    })
}

struct Sender {
    sink: LogSink,
    /// False while the consumer is stalled: lines are then dropped without waiting, so a stalled
    /// consumer never throttles the workload by more than one `SEND_WAIT`.
    waiting: bool,
}

impl Sender {
    async fn send(&mut self, line: LogLine) {
        let sourced = SourcedLine { workload_id: self.sink.workload_id.to_string(), replica: self.sink.replica, line };
        let sourced = match self.sink.tx.try_send(sourced) {
            Ok(()) => {
                self.waiting = true;
                return;
            }
            Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(sourced)) => sourced,
        };
        if self.waiting && matches!(tokio::time::timeout(SEND_WAIT, self.sink.tx.send(sourced)).await, Ok(Ok(()))) {
            return;
        }
        self.waiting = false;
        self.sink.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Splits a byte stream into lines: `\n`-terminated, trailing `\r` removed, lossy UTF-8, each
/// capped at [`MAX_LINE`] bytes. A final unterminated line is returned too.
struct LineReader<R> {
    reader: BufReader<R>,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(reader: R) -> Self {
        Self { reader: BufReader::new(reader), done: false }
    }

    async fn next_line(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        loop {
            let buf = match self.reader.fill_buf().await {
                Ok(buf) => buf,
                Err(err) => {
                    tracing::debug!(error = %err, "log pipe read failed");
                    &[]
                }
            };
            if buf.is_empty() {
                self.done = true;
                return (!line.is_empty()).then(|| finish(line));
            }
            let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (&buf[..at], at + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(used);
            if complete {
                return Some(finish(line));
            }
        }
    }
}

fn finish(mut line: Vec<u8>) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn split(input: &[u8]) -> Vec<String> {
        let mut reader = LineReader::new(input);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_caps_and_decodes_lossily() {
        assert_eq!(split(b"a\r\nb\n\nlast").await, vec!["a", "b", "", "last"]);
        assert_eq!(split(b"\xffok\n").await, vec!["\u{fffd}ok"]);
        let long = [vec![b'x'; MAX_LINE + 100], b"\nnext\n".to_vec()].concat();
        let lines = split(&long).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "next");
    }

    #[tokio::test]
    async fn full_channel_drops_and_counts_without_stalling() {
        let (tx, mut rx) = mpsc::channel(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = LogSink { tx, dropped: Arc::clone(&dropped), workload_id: Arc::from("w"), replica: 2 };
        let handle = forward(&b"one\ntwo\nthree\nfour\n"[..], LogStream::Stderr, sink);
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("reader finished").expect("no panic");
        let first = rx.recv().await.expect("first line kept");
        assert_eq!((first.workload_id.as_str(), first.replica, first.line.line.as_str()), ("w", 2, "one"));
        assert_eq!(first.line.stream, LogStream::Stderr);
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
    }
}
