//! Human-friendly units shared by both ends' configuration, so that `--heartbeat-interval 5s` on
//! the control plane and `--max-backoff 5s` on an agent always mean the same thing.

use std::time::Duration;

/// `500ms`, `30s`, `10m`, `12h`, `7d`; a bare number means seconds. `None` for anything else
/// (including overflow).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(500)),
            ("30", Some(30_000)),
            (" 30s ", Some(30_000)),
            ("2m", Some(120_000)),
            ("2h", Some(7_200_000)),
            ("7d", Some(604_800_000)),
            ("h", None),
            ("5y", None),
            ("-1s", None),
            ("", None),
            ("1.5s", None),
            ("99999999999999999999s", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), want.map(Duration::from_millis), "{s:?}");
        }
    }
}
