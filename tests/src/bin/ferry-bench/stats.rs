//! Percentiles, formatting and a small deterministic random source for the benchmarks.

use std::time::Duration;

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Nearest-rank percentiles; `None` for an empty set.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let p = |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)];
        Some(Self { n: sorted.len(), p50: p(0.50), p90: p(0.90), p99: p(0.99), max: sorted[sorted.len() - 1] })
    }
}

/// Milliseconds with two decimals' worth of precision.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b` of two durations, for "how much slower" figures.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() { f64::INFINITY } else { a.as_secs_f64() / b.as_secs_f64() }
}

/// Prints `name n p50 p90 p99 max` on one line (the `basics` format).
pub fn percentiles(name: &str, samples: Vec<Duration>) {
    let Some(s) = Summary::of(&samples) else {
        println!("{name:<28} no samples");
        return;
    };
    println!(
        "{name:<28} n={:<4} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        s.n,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

/// xorshift64*: enough to pick random pages, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn from_time() -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `1..=n` (`n` ≥ 1).
    pub fn one_to(&mut self, n: u64) -> u64 {
        1 + self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(
            (s.p50, s.p99, s.max),
            (Duration::from_millis(50), Duration::from_millis(99), Duration::from_millis(100))
        );
        assert!(Summary::of(&[]).is_none());
    }
}
