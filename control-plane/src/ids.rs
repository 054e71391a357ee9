//! Identifiers, secrets, hashing and time: small helpers with no policy of their own.

use ring::rand::{SecureRandom, SystemRandom};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).expect("system random number generator");
    ferry_certs::hex(&bytes)
}

/// A random id with a readable prefix, e.g. `agent-3f9c0a1be27d4410`.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_hex(8))
}

/// SHA-256 of a secret, lowercase hex. Secrets here are random and high-entropy, so a fast hash
/// is the right tool (a password hash would only add latency).
pub fn hash_secret(secret: &str) -> String {
    ferry_certs::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// RFC 3339 rendering of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_well_formed() {
        let a = random_id("agent");
        assert!(a.starts_with("agent-") && a.len() == 22);
        assert_ne!(a, random_id("agent"));
        ferry_certs::validate_agent_id(&a).unwrap();
        assert_eq!(hash_secret("x").len(), 64);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
