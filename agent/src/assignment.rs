//! Whether an incoming assignment is applied or acknowledged as stale.
//!
//! Generations only grow, so an assignment is applied exactly when it is newer than the last
//! one applied; anything else (a replay after reconnecting, a reordered push) is answered with
//! `Stale { current }` and leaves the persisted assignment alone.

use ferry_protocol::AckOutcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Persist the assignment and acknowledge it as applied.
    Apply,
    /// Keep the current assignment; acknowledge with the generation in force.
    Stale { current: u64 },
}

/// Decides what to do with an assignment of generation `incoming` when `last_applied` is the
/// generation of the last assignment applied (0 if none).
pub fn decide(last_applied: u64, incoming: u64) -> Decision {
    if incoming > last_applied { Decision::Apply } else { Decision::Stale { current: last_applied } }
}

impl Decision {
    /// The acknowledgement sent once the decision has been carried out.
    pub fn outcome(self) -> AckOutcome {
        match self {
            Decision::Apply => AckOutcome::Applied,
            Decision::Stale { current } => AckOutcome::Stale { current },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        // (last applied, incoming, expected)
        let cases = [
            (0, 0, Decision::Stale { current: 0 }),
            (0, 1, Decision::Apply),
            (4, 5, Decision::Apply),
            (4, 100, Decision::Apply),
            (5, 5, Decision::Stale { current: 5 }),
            (5, 4, Decision::Stale { current: 5 }),
            (5, 0, Decision::Stale { current: 5 }),
            (u64::MAX, u64::MAX, Decision::Stale { current: u64::MAX }),
            (u64::MAX - 1, u64::MAX, Decision::Apply),
        ];
        for (last, incoming, want) in cases {
            assert_eq!(decide(last, incoming), want, "last {last}, incoming {incoming}");
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(Decision::Apply.outcome(), AckOutcome::Applied);
        assert_eq!(Decision::Stale { current: 3 }.outcome(), AckOutcome::Stale { current: 3 });
    }
}
