//! When the session reports the observed state: at once after Welcome, at once after a change
//! unless a report went out less than [`STATUS_MIN_GAP`] ago (then when that gap has passed, so a
//! burst of changes gives one report), and at least once per refresh period
//! ([`STATUS_REFRESH_HEARTBEATS`] heartbeat intervals). Reports travel on a reliable stream of
//! the session and a new session starts with one, so the refresh is only a level-triggered
//! safety net (e.g. after a store error on the control plane): an idle agent costs the control
//! plane a heartbeat per interval, not a heartbeat and a report.

use std::time::Duration;

use tokio::time::Instant;

/// Reports are at least this far apart (at most 40 a second, and only while things change):
/// short enough that the last step of a start-up reaches the control plane promptly.
pub(crate) const STATUS_MIN_GAP: Duration = Duration::from_millis(25);

/// An unchanged state is reported again after this many heartbeat intervals.
pub(crate) const STATUS_REFRESH_HEARTBEATS: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusSchedule {
    due: Instant,
    last_sent: Option<Instant>,
    refresh: Duration,
}

impl StatusSchedule {
    /// The first report is due at once.
    pub(crate) fn new(now: Instant, refresh: Duration) -> Self {
        Self { due: now, last_sent: None, refresh }
    }

    pub(crate) fn due(&self) -> Instant {
        self.due
    }

    /// The observed state changed at `now`.
    pub(crate) fn changed(&mut self, now: Instant) {
        let earliest = self.last_sent.map_or(now, |t| (t + STATUS_MIN_GAP).max(now));
        self.due = self.due.min(earliest);
    }

    /// A report went out at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.due = now + self.refresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_rate_limited_then_refreshed() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let mut s = StatusSchedule::new(t0, ms(5000));
        assert_eq!(s.due(), t0);
        s.sent(t0);
        assert_eq!(s.due(), t0 + ms(5000), "nothing changed: the refresh");
        // A change soon after a report waits for the gap; more changes meanwhile coalesce.
        s.changed(t0 + ms(5));
        s.changed(t0 + ms(10));
        s.changed(t0 + ms(20));
        assert_eq!(s.due(), t0 + ms(25), "a burst coalesces into one report");
        s.sent(t0 + ms(25));
        // A change long after the last report goes out at once.
        s.changed(t0 + ms(4000));
        assert_eq!(s.due(), t0 + ms(4000));
        s.sent(t0 + ms(4000));
        s.changed(t0 + ms(4010));
        assert_eq!(s.due(), t0 + ms(4025));
        // A refresh due sooner than the gap is not postponed.
        let mut short = StatusSchedule::new(t0, ms(20));
        short.sent(t0);
        short.changed(t0 + ms(10));
        assert_eq!(short.due(), t0 + ms(20));
    }
}
