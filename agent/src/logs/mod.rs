//! Log shipping: workload output, from the runtime to the control plane.
//!
//! * A collector task drains the runtime's log channel continuously into an in-memory
//!   [`LogBuffer`] (so the runtime never sees a stalled consumer), numbering each source's lines
//!   from 1. A source is `<workload id>/<replica>/<boot id>`, the boot id being random per
//!   agent run.
//! * While a session is up, a shipper task opens a bidirectional telemetry stream (after
//!   Welcome, so the control stream stays the connection's first), sends
//!   `AgentMessage::LogBatch` frames on it and reads `ServerMessage::TelemetryAck` answers
//!   from it. Batches hold up to 500 lines (and about 1 MiB) of one source, or what that source
//!   produced in 100 ms.
//! * Lines stay buffered until acknowledged; a new stream (after a reconnect, or a broken
//!   stream on a live connection) first resends everything unacknowledged, in sequence order.
//!   The control plane drops duplicates, so resending is always safe.
//! * The buffer holds at most 100,000 lines (64 MiB); beyond that the oldest lines are dropped
//!   and counted in `AgentState::dropped_log_lines`, leaving a gap in the sequence numbers;
//!   `AgentState::unacked_log_lines` tells how many lines wait for an acknowledgement.
//!   The buffer lives in memory only: lines not yet acknowledged are lost if the agent process
//!   itself dies.

mod buffer;
mod shipper;
mod source;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_runtime::SourcedLine;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

pub(crate) use buffer::{Limits, LogBuffer, Next};
pub(crate) use shipper::ship;

/// Lines taken from the runtime's channel per lock of the buffer.
const DRAIN_CHUNK: usize = 256;

/// The buffer's figures, published on every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogCounts {
    /// Lines held until acknowledged.
    pub unacked: u64,
    /// Lines dropped because the buffer was full.
    pub dropped: u64,
}

/// The buffer and what the collector and the shipper share.
pub(crate) struct LogHub {
    boot_id: String,
    buffer: Mutex<LogBuffer>,
    /// Signalled when lines were added.
    ready: Notify,
    counts: watch::Sender<LogCounts>,
}

impl LogHub {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            boot_id: source::boot_id(),
            buffer: Mutex::new(LogBuffer::new(limits)),
            ready: Notify::new(),
            counts: watch::Sender::new(LogCounts::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogBuffer> {
        // Every buffer operation leaves it consistent before anything can panic.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub(crate) fn counts(&self) -> watch::Receiver<LogCounts> {
        self.counts.subscribe()
    }

    fn publish(&self, buffer: &LogBuffer) {
        let now = LogCounts { unacked: buffer.len() as u64, dropped: buffer.dropped() };
        self.counts.send_if_modified(|counts| std::mem::replace(counts, now) != now);
    }

    /// Adds lines to the buffer and wakes the shipper.
    fn add(&self, lines: &mut Vec<SourcedLine>) {
        let now = Instant::now();
        {
            let mut buffer = self.lock();
            for sourced in lines.drain(..) {
                let name = source::source(&sourced.workload_id, sourced.replica, &self.boot_id);
                buffer.push(&name, sourced.line, now);
            }
            self.publish(&buffer);
        }
        self.ready.notify_one();
    }

    /// Releases `source`'s lines up to `last_seq`; returns how many.
    pub(crate) fn ack(&self, source: &str, last_seq: u64) -> usize {
        let mut buffer = self.lock();
        let released = buffer.ack(source, last_seq);
        self.publish(&buffer);
        released
    }
}

/// Drains `lines` into the hub until the runtime goes away.
pub(crate) async fn collect(hub: Arc<LogHub>, mut lines: mpsc::Receiver<SourcedLine>) {
    let mut chunk = Vec::with_capacity(DRAIN_CHUNK);
    while lines.recv_many(&mut chunk, DRAIN_CHUNK).await > 0 {
        hub.add(&mut chunk);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_protocol::{LogLine, LogStream};

    use super::*;

    #[tokio::test]
    async fn the_collector_numbers_lines_per_replica_and_counts_drops() {
        let hub = Arc::new(LogHub::new(Limits { max_lines: 3, ..Limits::DEFAULT }));
        let counts = hub.counts();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(collect(Arc::clone(&hub), rx));
        let line = |replica, text: &str| SourcedLine {
            workload_id: "w".into(),
            replica,
            line: LogLine { ts_ms: 1, stream: LogStream::Stdout, line: text.into() },
        };
        for (replica, text) in [(0, "a"), (1, "b"), (0, "c"), (0, "d")] {
            tx.send(line(replica, text)).await.unwrap();
        }
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(*counts.borrow(), LogCounts { unacked: 3, dropped: 1 });

        let got: Vec<_> = {
            let mut buffer = hub.lock();
            let epoch = buffer.begin_stream();
            let later = Instant::now() + Duration::from_secs(1);
            std::iter::from_fn(|| match buffer.next(epoch, later) {
                Next::Batch(b) => Some((b.source, b.first_seq, b.lines.len())),
                _ => None,
            })
            .collect()
        };
        let boot = hub.boot_id().to_owned();
        assert_eq!(got, vec![(format!("w/0/{boot}"), 2, 2), (format!("w/1/{boot}"), 1, 1)]);
        assert_eq!(hub.ack(&format!("w/0/{boot}"), 3), 2);
        assert_eq!(*counts.borrow(), LogCounts { unacked: 1, dropped: 1 });
    }
}
