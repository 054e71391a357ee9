//! The in-memory log buffer: numbers each source's lines, cuts them into batches and keeps
//! every line until the control plane acknowledges it.
//!
//! * Sequence numbers start at 1 per source and grow by one per line. They are never reused,
//!   so lines dropped because the buffer was full leave a gap the control plane can see.
//! * A source is ready to send when it holds [`Limits::batch_lines`] unsent lines (or
//!   [`Limits::batch_bytes`]), or when its oldest unsent line has waited [`Limits::linger`].
//!   Ready sources are served round-robin, one batch at a time.
//! * Sending does not release anything; an acknowledgement up to `last_seq` does. When a new
//!   stream starts ([`LogBuffer::begin_stream`]) every unacknowledged line becomes unsent
//!   again, so it is resent first, in sequence order.
//! * At most [`Limits::max_lines`] lines and [`Limits::max_bytes`] bytes are held; beyond that
//!   the oldest lines (across all sources) are dropped and counted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ferry_protocol::{LogBatch, LogLine};
use tokio::time::Instant;

/// Longest line shipped, in bytes; longer ones are cut at a character boundary. (The runtime
/// caps raw output at this size, but replacing invalid UTF-8 can make a line longer.)
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// What a line costs besides its text, roughly (timestamp, stream, length prefix).
const LINE_OVERHEAD: usize = 16;
/// An emptied queue gives back memory above this many slots.
const SHRINK_ABOVE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most lines in one batch.
    pub batch_lines: usize,
    /// Most bytes in one batch (a single line may exceed it); keeps frames well under the
    /// protocol's maximum frame size.
    pub batch_bytes: usize,
    /// How long a line may wait for more lines of its source before it is sent anyway.
    pub linger: Duration,
    /// Most lines held, sent or not, until acknowledged.
    pub max_lines: usize,
    /// Most bytes held.
    pub max_bytes: usize,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        batch_lines: 500,
        batch_bytes: 1024 * 1024,
        linger: Duration::from_millis(100),
        max_lines: 100_000,
        max_bytes: 64 * 1024 * 1024,
    };
}

/// What the stream should do next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    Batch(LogBatch),
    /// Nothing is ready yet; something will be at this moment.
    At(Instant),
    /// Nothing to send until new lines arrive.
    Idle,
    /// A newer stream started: this one must stop.
    Superseded,
}

struct Entry {
    line: LogLine,
    arrived: Instant,
    /// Arrival order across all sources, to find the oldest line when dropping.
    order: u64,
    bytes: usize,
}

/// One source's unacknowledged lines; their sequence numbers are consecutive, ending at
/// `next_seq - 1`. The first `sent` of them were sent on the current stream.
struct Queue {
    next_seq: u64,
    lines: VecDeque<Entry>,
    bytes: usize,
    sent: usize,
    sent_bytes: usize,
    /// The highest sequence number ever sent (on any stream); acks beyond it are bogus.
    max_sent_seq: u64,
}

impl Queue {
    fn new() -> Self {
        Self { next_seq: 1, lines: VecDeque::new(), bytes: 0, sent: 0, sent_bytes: 0, max_sent_seq: 0 }
    }

    fn front_seq(&self) -> u64 {
        self.next_seq - self.lines.len() as u64
    }

    fn unsent(&self) -> usize {
        self.lines.len() - self.sent
    }

    /// When the oldest unsent line stops waiting for company.
    fn due(&self, linger: Duration) -> Option<Instant> {
        self.lines.get(self.sent).map(|e| e.arrived + linger)
    }

    fn ready(&self, limits: &Limits, now: Instant) -> bool {
        self.unsent() >= limits.batch_lines
            || self.bytes - self.sent_bytes >= limits.batch_bytes
            || self.due(limits.linger).is_some_and(|due| due <= now)
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.lines.pop_front()?;
        self.bytes -= entry.bytes;
        if self.sent > 0 {
            self.sent -= 1;
            self.sent_bytes -= entry.bytes;
        }
        if self.lines.is_empty() && self.lines.capacity() > SHRINK_ABOVE {
            self.lines.shrink_to(SHRINK_ABOVE);
        }
        Some(entry)
    }
}

/// See the module docs. Sources are never forgotten (their next sequence number must survive
/// idle periods); an idle source costs its name and a few counters.
pub(crate) struct LogBuffer {
    limits: Limits,
    sources: BTreeMap<String, Queue>,
    lines: usize,
    bytes: usize,
    dropped: u64,
    arrivals: u64,
    epoch: u64,
    /// The source served last, for round-robin.
    cursor: Option<String>,
}

impl LogBuffer {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, sources: BTreeMap::new(), lines: 0, bytes: 0, dropped: 0, arrivals: 0, epoch: 0, cursor: None }
    }

    /// Lines held (sent or not) until acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.lines
    }

    /// Lines dropped because the buffer was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends a line to `source`, returning its sequence number.
    pub(crate) fn push(&mut self, source: &str, mut line: LogLine, now: Instant) -> u64 {
        truncate(&mut line.line, MAX_LINE_BYTES);
        let bytes = line.line.len() + LINE_OVERHEAD;
        if !self.sources.contains_key(source) {
            self.sources.insert(source.to_owned(), Queue::new());
        }
        let Some(queue) = self.sources.get_mut(source) else { unreachable!("inserted above") };
        let seq = queue.next_seq;
        queue.lines.push_back(Entry { line, arrived: now, order: self.arrivals, bytes });
        queue.next_seq += 1;
        queue.bytes += bytes;
        self.arrivals += 1;
        self.lines += 1;
        self.bytes += bytes;
        self.enforce_bound();
        seq
    }

    /// Drops the oldest lines while over a limit.
    fn enforce_bound(&mut self) {
        while self.lines > self.limits.max_lines || self.bytes > self.limits.max_bytes {
            let oldest = self
                .sources
                .values_mut()
                .filter_map(|q| {
                    let order = q.lines.front()?.order;
                    Some((order, q))
                })
                .min_by_key(|(order, _)| *order);
            let Some((_, queue)) = oldest else { return };
            if let Some(entry) = queue.pop_front() {
                self.lines -= 1;
                self.bytes -= entry.bytes;
                self.dropped += 1;
            }
        }
    }

    /// Starts a new stream: everything unacknowledged is to be sent again. Returns the
    /// stream's epoch, which [`Self::next`] checks.
    pub(crate) fn begin_stream(&mut self) -> u64 {
        self.epoch += 1;
        for queue in self.sources.values_mut() {
            queue.sent = 0;
            queue.sent_bytes = 0;
        }
        self.cursor = None;
        self.epoch
    }

    /// The next batch to send on the stream of `epoch`, marked as sent.
    pub(crate) fn next(&mut self, epoch: u64, now: Instant) -> Next {
        if epoch != self.epoch {
            return Next::Superseded;
        }
        let cursor = self.cursor.as_deref();
        let after_cursor = |key: &str| cursor.is_some_and(|c| key > c);
        // Round-robin: the sources after the last one served, then the others.
        let candidates = self
            .sources
            .iter()
            .filter(|(key, _)| after_cursor(key))
            .chain(self.sources.iter().filter(|(key, _)| !after_cursor(key)));
        let mut wake: Option<Instant> = None;
        let mut chosen = None;
        for (key, queue) in candidates {
            if queue.unsent() == 0 {
                continue;
            }
            if queue.ready(&self.limits, now) {
                chosen = Some(key.clone());
                break;
            }
            wake = wake.into_iter().chain(queue.due(self.limits.linger)).min();
        }
        match (chosen, wake) {
            (Some(source), _) => Next::Batch(self.cut(source)),
            (None, Some(at)) => Next::At(at),
            (None, None) => Next::Idle,
        }
    }

    fn cut(&mut self, source: String) -> LogBatch {
        let limits = self.limits;
        let Some(queue) = self.sources.get_mut(&source) else { unreachable!("chosen among the sources") };
        let first_seq = queue.front_seq() + queue.sent as u64;
        let mut lines = Vec::new();
        let mut bytes = 0;
        for entry in queue.lines.range(queue.sent..) {
            if lines.len() == limits.batch_lines || (!lines.is_empty() && bytes + entry.bytes > limits.batch_bytes) {
                break;
            }
            bytes += entry.bytes;
            lines.push(entry.line.clone());
        }
        queue.sent += lines.len();
        queue.sent_bytes += bytes;
        queue.max_sent_seq = queue.max_sent_seq.max(first_seq + lines.len() as u64 - 1);
        self.cursor = Some(source.clone());
        LogBatch { source, first_seq, lines }
    }

    /// Releases `source`'s lines up to `last_seq` (bounded by what was ever sent). Returns how
    /// many were released; unknown sources (another run's) release nothing.
    pub(crate) fn ack(&mut self, source: &str, last_seq: u64) -> usize {
        let Some(queue) = self.sources.get_mut(source) else { return 0 };
        let upto = last_seq.min(queue.max_sent_seq);
        let mut released = 0;
        while !queue.lines.is_empty() && queue.front_seq() <= upto {
            if let Some(entry) = queue.pop_front() {
                self.lines -= 1;
                self.bytes -= entry.bytes;
                released += 1;
            }
        }
        released
    }
}

/// Cuts `line` to at most `max` bytes, at a character boundary.
fn truncate(line: &mut String, max: usize) {
    if line.len() > max {
        let mut cut = max;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::LogStream;

    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine { ts_ms: 1, stream: LogStream::Stdout, line: text.to_owned() }
    }

    fn small(batch_lines: usize, max_lines: usize) -> Limits {
        Limits { batch_lines, max_lines, ..Limits::DEFAULT }
    }

    fn batch(next: Next) -> LogBatch {
        match next {
            Next::Batch(b) => b,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn texts(b: &LogBatch) -> Vec<&str> {
        b.lines.iter().map(|l| l.line.as_str()).collect()
    }

    #[test]
    fn numbers_lines_per_source_and_waits_for_the_linger() {
        let mut buf = LogBuffer::new(Limits::DEFAULT);
        let t0 = Instant::now();
        let epoch = buf.begin_stream();
        assert_eq!(buf.next(epoch, t0), Next::Idle);
        assert_eq!(buf.push("a", line("a1"), t0), 1);
        assert_eq!(buf.push("b", line("b1"), t0 + Duration::from_millis(10)), 1);
        assert_eq!(buf.push("a", line("a2"), t0 + Duration::from_millis(20)), 2);
        // Nothing is due before the oldest line has waited 100 ms.
        assert_eq!(buf.next(epoch, t0 + Duration::from_millis(50)), Next::At(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_millis(200);
        let a = batch(buf.next(epoch, later));
        assert_eq!((a.source.as_str(), a.first_seq, texts(&a)), ("a", 1, vec!["a1", "a2"]));
        let b = batch(buf.next(epoch, later));
        assert_eq!((b.source.as_str(), b.first_seq, texts(&b)), ("b", 1, vec!["b1"]));
        assert_eq!(buf.next(epoch, later), Next::Idle);
        assert_eq!(buf.push("a", line("a3"), later), 3);
        assert_eq!(buf.len(), 4, "nothing is released before an ack");
    }

    #[test]
    fn full_batches_go_at_once_and_are_capped() {
        let mut buf = LogBuffer::new(Limits::DEFAULT);
        let now = Instant::now();
        let epoch = buf.begin_stream();
        for i in 0..1200 {
            buf.push("a", line(&format!("{i}")), now);
        }
        let first = batch(buf.next(epoch, now));
        assert_eq!((first.first_seq, first.lines.len()), (1, 500));
        let second = batch(buf.next(epoch, now));
        assert_eq!((second.first_seq, second.lines.len()), (501, 500));
        // 200 left: not a full batch, so they wait for the linger.
        assert_eq!(buf.next(epoch, now), Next::At(now + Limits::DEFAULT.linger));
        let last = batch(buf.next(epoch, now + Limits::DEFAULT.linger));
        assert_eq!((last.first_seq, last.lines.len(), texts(&last)[0]), (1001, 200, "1000"));
    }

    #[test]
    fn batches_are_capped_in_bytes_and_lines_in_length() {
        let mut buf = LogBuffer::new(Limits::DEFAULT);
        let now = Instant::now();
        let epoch = buf.begin_stream();
        let long = "x".repeat(MAX_LINE_BYTES + 500);
        for _ in 0..100 {
            buf.push("a", line(&long), now);
        }
        let first = batch(buf.next(epoch, now));
        let per_batch = Limits::DEFAULT.batch_bytes / (MAX_LINE_BYTES + LINE_OVERHEAD);
        assert_eq!(first.lines.len(), per_batch);
        assert!(first.lines.iter().all(|l| l.line.len() == MAX_LINE_BYTES));
        // The rest is less than a full batch: it waits for the linger.
        assert_eq!(buf.next(epoch, now), Next::At(now + Limits::DEFAULT.linger));
        let second = batch(buf.next(epoch, now + Limits::DEFAULT.linger));
        assert_eq!((second.first_seq, second.lines.len()), (1 + per_batch as u64, 100 - per_batch));

        // Cutting never splits a character.
        let mut s = format!("{}é", "a".repeat(MAX_LINE_BYTES - 1));
        truncate(&mut s, MAX_LINE_BYTES);
        assert_eq!(s.len(), MAX_LINE_BYTES - 1);
    }

    #[test]
    fn ready_sources_are_served_round_robin() {
        let mut buf = LogBuffer::new(small(2, 1000));
        let now = Instant::now();
        let epoch = buf.begin_stream();
        for i in 0..4 {
            buf.push("a", line(&format!("a{i}")), now);
            buf.push("b", line(&format!("b{i}")), now);
        }
        let order: Vec<(String, u64)> =
            (0..4).map(|_| batch(buf.next(epoch, now))).map(|b| (b.source, b.first_seq)).collect();
        let want = [("a", 1), ("b", 1), ("a", 3), ("b", 3)].map(|(s, n)| (s.to_owned(), n));
        assert_eq!(order, want);
    }

    #[test]
    fn a_new_stream_resends_what_was_not_acknowledged_in_order() {
        let mut buf = LogBuffer::new(small(4, 1000));
        let now = Instant::now();
        let epoch = buf.begin_stream();
        for i in 1..=10 {
            buf.push("a", line(&format!("{i}")), now);
        }
        let later = now + Duration::from_secs(1);
        let sent: Vec<u64> = (0..3).map(|_| batch(buf.next(epoch, later)).first_seq).collect();
        assert_eq!(sent, [1, 5, 9]);
        assert_eq!(buf.ack("a", 6), 6);
        assert_eq!(buf.ack("a", 6), 0, "acks are idempotent");
        assert_eq!(buf.ack("other/0/boot", 6), 0);
        assert_eq!(buf.len(), 4);

        let epoch2 = buf.begin_stream();
        assert_eq!(buf.next(epoch, later), Next::Superseded, "the old stream must stop");
        let again = batch(buf.next(epoch2, later));
        assert_eq!((again.first_seq, texts(&again)), (7, vec!["7", "8", "9", "10"]));
        assert_eq!(buf.next(epoch2, later), Next::Idle);
        buf.push("a", line("11"), later);
        assert_eq!(batch(buf.next(epoch2, later + Duration::from_secs(1))).first_seq, 11);
        assert_eq!(buf.ack("a", 11), 5);
        assert_eq!(buf.len(), 0);
    }

    #[test]
    fn acks_cannot_release_unsent_lines() {
        let mut buf = LogBuffer::new(small(2, 1000));
        let now = Instant::now();
        let epoch = buf.begin_stream();
        for i in 1..=5 {
            buf.push("a", line(&format!("{i}")), now);
        }
        batch(buf.next(epoch, now));
        assert_eq!(buf.ack("a", 1000), 2);
        assert_eq!(buf.len(), 3);
        assert_eq!(batch(buf.next(epoch, now)).first_seq, 3);
    }

    #[test]
    fn over_the_bound_the_oldest_lines_are_dropped_and_counted() {
        let mut buf = LogBuffer::new(small(500, 5));
        let t0 = Instant::now();
        let epoch = buf.begin_stream();
        let at = |ms| t0 + Duration::from_millis(ms);
        buf.push("a", line("a1"), at(0));
        buf.push("b", line("b1"), at(1));
        buf.push("a", line("a2"), at(2));
        buf.push("b", line("b2"), at(3));
        buf.push("a", line("a3"), at(4));
        assert_eq!((buf.len(), buf.dropped()), (5, 0));
        buf.push("b", line("b3"), at(5)); // drops a1
        buf.push("b", line("b4"), at(6)); // drops b1
        assert_eq!((buf.len(), buf.dropped()), (5, 2));
        let later = at(1000);
        let a = batch(buf.next(epoch, later));
        assert_eq!((a.source.as_str(), a.first_seq, texts(&a)), ("a", 2, vec!["a2", "a3"]));
        let b = batch(buf.next(epoch, later));
        assert_eq!((b.source.as_str(), b.first_seq, texts(&b)), ("b", 2, vec!["b2", "b3", "b4"]));
        // Sent but unacknowledged lines are dropped too, and a new stream resumes after them.
        buf.push("a", line("a4"), later);
        assert_eq!(buf.dropped(), 3);
        let epoch = buf.begin_stream();
        let a = batch(buf.next(epoch, later + Duration::from_secs(1)));
        assert_eq!((a.first_seq, texts(&a)), (3, vec!["a3", "a4"]));

        // The byte bound works the same way.
        let mut buf = LogBuffer::new(Limits { max_bytes: 3 * (10 + LINE_OVERHEAD), ..Limits::DEFAULT });
        for i in 0..5 {
            buf.push("a", line(&format!("{i:010}")), t0);
        }
        assert_eq!((buf.len(), buf.dropped()), (3, 2));
    }
}
