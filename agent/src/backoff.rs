//! Jittered exponential backoff for reconnects.
//!
//! The ceiling starts at the base delay and doubles per failed attempt up to a maximum; the
//! delay is drawn with "equal jitter": half the ceiling is fixed and the other half random, so
//! a fleet of agents that lost the control plane at the same instant spreads its reconnects
//! while no agent ever retries in a tight loop.

use std::time::Duration;

/// First reconnect ceiling.
pub const BASE_DELAY: Duration = Duration::from_millis(250);
/// A session that lasted at least this long resets the backoff to [`BASE_DELAY`].
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// Exponential backoff state with its own small random generator.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: XorShift,
}

impl Backoff {
    /// A backoff seeded from the system random number generator.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self::with_seed(base, max, system_seed())
    }

    /// A deterministic backoff (for tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Self {
        Self { base, max, attempt: 0, rng: XorShift::new(seed) }
    }

    /// The delay before the next attempt; each call grows the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = ceiling(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        equal_jitter(ceiling, self.rng.next())
    }

    /// Back to the base delay (after a session that lasted [`RESET_AFTER`]).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// `min(max, base * 2^attempt)`, without overflow.
pub fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(max, |d| d.min(max))
}

/// Half of `ceiling` plus a uniformly chosen part of the other half, from random bits `r`.
pub fn equal_jitter(ceiling: Duration, r: u64) -> Duration {
    let total = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    let half = total / 2;
    let spread = total - half; // the random part, rounding up
    let extra = if spread == 0 { 0 } else { r % (spread + 1) };
    Duration::from_micros(half + extra)
}

fn system_seed() -> u64 {
    let rng = ring::rand::SystemRandom::new();
    match ring::rand::generate::<[u8; 8]>(&rng) {
        Ok(bytes) => u64::from_le_bytes(bytes.expose()),
        // Jitter only spreads load; the clock is an acceptable fallback seed.
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64),
    }
}

/// xorshift64*: tiny, fast, good enough for jitter. Not for anything secret.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn ceiling_doubles_then_caps() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(ceiling(BASE_DELAY, MAX, 0), ms(250));
        assert_eq!(ceiling(BASE_DELAY, MAX, 1), ms(500));
        assert_eq!(ceiling(BASE_DELAY, MAX, 2), ms(1000));
        assert_eq!(ceiling(BASE_DELAY, MAX, 6), ms(16_000));
        assert_eq!(ceiling(BASE_DELAY, MAX, 7), MAX);
        assert_eq!(ceiling(BASE_DELAY, MAX, 1000), MAX);
        assert_eq!(ceiling(BASE_DELAY, MAX, u32::MAX), MAX);
        // A maximum below the base caps from the start.
        assert_eq!(ceiling(BASE_DELAY, ms(100), 0), ms(100));
    }

    #[test]
    fn equal_jitter_stays_within_half_and_full_ceiling() {
        let c = Duration::from_millis(1000);
        assert_eq!(equal_jitter(c, 0), Duration::from_millis(500));
        assert_eq!(equal_jitter(c, 500_000), c);
        for r in [1, 7, 123_456_789, u64::MAX] {
            let d = equal_jitter(c, r);
            assert!(d >= c / 2 && d <= c, "{d:?}");
        }
        assert_eq!(equal_jitter(Duration::ZERO, 42), Duration::ZERO);
    }

    #[test]
    fn delays_grow_cap_and_reset() {
        let mut b = Backoff::with_seed(BASE_DELAY, MAX, 7);
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 0..50 {
            let c = ceiling(BASE_DELAY, MAX, attempt);
            assert!(c >= previous_ceiling);
            previous_ceiling = c;
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "attempt {attempt}: {d:?} vs ceiling {c:?}");
            assert!(d <= MAX);
        }
        assert_eq!(b.attempt(), 50);
        b.reset();
        let d = b.next_delay();
        assert!(d >= BASE_DELAY / 2 && d <= BASE_DELAY, "{d:?}");
    }

    #[test]
    fn jitter_actually_varies() {
        let mut b = Backoff::with_seed(BASE_DELAY, MAX, 42);
        let delays: Vec<_> = (0..20)
            .map(|_| {
                b.reset();
                b.next_delay()
            })
            .collect();
        assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
        // Seeded from the system: still within bounds.
        let d = Backoff::new(BASE_DELAY, MAX).next_delay();
        assert!(d >= BASE_DELAY / 2 && d <= BASE_DELAY);
    }
}
