//! When the session reports the observed state: at once after Welcome, shortly after a change
//! (a burst of changes gives one report) and at least once per refresh period.

use std::time::Duration;

use tokio::time::Instant;

/// How long after the first change of a burst the report goes out.
pub(crate) const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusSchedule {
    due: Instant,
    refresh: Duration,
}

impl StatusSchedule {
    /// The first report is due at once.
    pub(crate) fn new(now: Instant, refresh: Duration) -> Self {
        Self { due: now, refresh }
    }

    pub(crate) fn due(&self) -> Instant {
        self.due
    }

    /// The observed state changed at `now`.
    pub(crate) fn changed(&mut self, now: Instant) {
        self.due = self.due.min(now + STATUS_DEBOUNCE);
    }

    /// A report went out at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.due = now + self.refresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_debounced_then_refreshed() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        let mut s = StatusSchedule::new(t0, ms(5000));
        assert_eq!(s.due(), t0);
        s.sent(t0);
        assert_eq!(s.due(), t0 + ms(5000), "nothing changed: the refresh");
        s.changed(t0 + ms(10));
        s.changed(t0 + ms(50));
        s.changed(t0 + ms(90));
        assert_eq!(s.due(), t0 + ms(110), "a burst coalesces into one report");
        s.sent(t0 + ms(110));
        s.changed(t0 + ms(4990));
        s.changed(t0 + ms(5080));
        assert_eq!(s.due(), t0 + ms(5090));
        // A refresh due sooner than the debounce is not postponed.
        let mut short = StatusSchedule::new(t0, ms(50));
        short.sent(t0);
        short.changed(t0 + ms(10));
        assert_eq!(short.due(), t0 + ms(50));
    }
}
