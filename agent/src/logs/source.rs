//! Log source names: `<workload id>/<replica>/<boot id>`.
//!
//! The boot id is random and generated once per agent run, so sequence numbers (which restart
//! at 1 with every run, the buffer being in memory) never collide with an earlier run's: the
//! control plane sees a new source instead of duplicates of lines it already has.

use std::fmt::Write;

/// Random bytes in a boot id.
const BOOT_ID_BYTES: usize = 8;

/// A fresh boot id: 16 lowercase hex digits from the system's secure random source (falling
/// back to the clock and process id should that ever fail).
pub(crate) fn boot_id() -> String {
    let rng = ring::rand::SystemRandom::new();
    let bytes = match ring::rand::generate::<[u8; BOOT_ID_BYTES]>(&rng) {
        Ok(random) => random.expose(),
        Err(_) => fallback_bytes(),
    };
    hex(&bytes)
}

fn fallback_bytes() -> [u8; BOOT_ID_BYTES] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    mixed.to_be_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The source name of replica `replica` of `workload_id` during the run `boot_id`.
pub(crate) fn source(workload_id: &str, replica: u32, boot_id: &str) -> String {
    format!("{workload_id}/{replica}/{boot_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_are_random_hex() {
        let a = boot_id();
        let b = boot_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{a}");
        assert_ne!(a, b);
        assert_eq!(hex(&fallback_bytes()).len(), 16);
    }

    #[test]
    fn source_format() {
        assert_eq!(source("dep-1", 0, "00ff00ff00ff00ff"), "dep-1/0/00ff00ff00ff00ff");
        assert_eq!(source("a/b", 12, "x"), "a/b/12/x");
    }
}
