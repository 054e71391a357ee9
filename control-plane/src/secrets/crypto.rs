//! Secrets at rest: AES-256-GCM (`ring::aead`) under a master key kept outside the database.
//!
//! * Every value gets a fresh random 96-bit nonce (a key seals far fewer than the 2³² values
//!   after which random nonces stop being safe).
//! * The associated data names the row — scope, scope id, secret name and version — so a
//!   ciphertext copied to another row (or an older ciphertext put back under a newer version)
//!   does not decrypt.
//! * Each ciphertext records the id of the key that sealed it (the first 8 bytes of the key's
//!   SHA-256, hex), so a wrong key is reported as such instead of as garbage or a forgery.
//! * The key never appears in `Debug` output or log lines; only its id does.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::MasterKeySource;

/// Bytes in a master key (AES-256).
pub const KEY_LEN: usize = 32;
/// The generated key file's name in the data directory.
pub const KEY_FILE: &str = "master.key";

/// The key that seals every stored secret value.
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A master key that cannot be had or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid master key in {0}: expected 64 hexadecimal characters")]
    Malformed(String),
    #[error("master key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot write the generated master key: {0}")]
    Write(String),
}

/// Why a stored value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed with master key {stored}, but this server has master key {current}")]
    WrongKey { stored: String, current: String },
    #[error("the ciphertext does not authenticate: it was altered or belongs to another secret")]
    Tampered,
    #[error("malformed stored {0}")]
    Malformed(&'static str),
}

/// A sealed value as stored: hex ciphertext (with the GCM tag), hex nonce, and the key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: String,
    pub nonce: String,
    pub key_id: String,
}

/// Whether `text` (surrounding whitespace aside) is a master key: 64 hexadecimal characters.
pub fn is_key_hex(text: &str) -> bool {
    let t = text.trim();
    t.len() == KEY_LEN * 2 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The associated data of a secret: what row it belongs to.
pub fn associated_data(scope: &str, scope_id: &str, name: &str, version: i64) -> Vec<u8> {
    format!("ferry-secret/v1\0{scope}\0{scope_id}\0{name}\0{version}").into_bytes()
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let id = ferry_certs::hex(&ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..8]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"));
        Self { key, id }
    }

    /// Parses 64 hexadecimal characters (surrounding whitespace ignored); `what` names the
    /// source in the error, which never shows the text.
    pub fn from_hex(text: &str, what: &str) -> Result<Self, KeyError> {
        let bytes = is_key_hex(text).then(|| unhex(text.trim())).flatten();
        let bytes: [u8; KEY_LEN] =
            bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| KeyError::Malformed(what.to_string()))?;
        Ok(Self::from_bytes(&bytes))
    }

    /// A new random key and its hex form (to be written to a key file).
    pub fn generate() -> (Self, String) {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).expect("system random number generator");
        (Self::from_bytes(&bytes), ferry_certs::hex(&bytes))
    }

    /// The key the configuration names: `FERRY_MASTER_KEY`, the `--master-key-file`, or
    /// `<data-dir>/master.key`, generated (mode 0600) if it does not exist yet.
    pub fn load(source: &MasterKeySource, data_dir: &Path) -> Result<Self, KeyError> {
        match source {
            MasterKeySource::Env(hex) => Self::from_hex(hex, crate::config::MASTER_KEY_ENV),
            MasterKeySource::File(path) => Self::read(path),
            MasterKeySource::DataDir => {
                let path = data_dir.join(KEY_FILE);
                if path.exists() {
                    return Self::read(&path);
                }
                let (key, hex) = Self::generate();
                ferry_certs::write_private(&path, &format!("{hex}\n")).map_err(|e| KeyError::Write(e.to_string()))?;
                tracing::info!(path = %path.display(), key_id = %key.id, "generated the master key for secrets");
                Ok(key)
            }
        }
    }

    /// Reads a key file (64 hexadecimal characters and optional whitespace).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the master key file is readable by other users; chmod 600 it");
            }
        }
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Its id: the first 8 bytes of its SHA-256, hex. Safe to show and log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for the row that `aad` ([`associated_data`]) names.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("system random number generator");
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .expect("AES-GCM seals any input below 64 GiB");
        Sealed { ciphertext: ferry_certs::hex(&buf), nonce: ferry_certs::hex(&nonce), key_id: self.id.clone() }
    }

    /// Opens a sealed value of the row that `aad` names.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.key_id != self.id {
            return Err(OpenError::WrongKey { stored: sealed.key_id.clone(), current: self.id.clone() });
        }
        let nonce: [u8; NONCE_LEN] =
            unhex(&sealed.nonce).and_then(|n| n.try_into().ok()).ok_or(OpenError::Malformed("nonce"))?;
        let mut buf = unhex(&sealed.ciphertext).ok_or(OpenError::Malformed("ciphertext"))?;
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| OpenError::Tampered)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; KEY_LEN])
    }

    #[test]
    fn round_trip_with_a_fresh_nonce_every_time() {
        let k = key(1);
        let aad = associated_data("deployment", "deploy-1", "TOKEN", 1);
        let a = k.seal(&aad, b"hunter2");
        let b = k.seal(&aad, b"hunter2");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.contains(&ferry_certs::hex(b"hunter2")));
        assert_eq!(k.open(&a, &aad).unwrap(), b"hunter2");
        assert_eq!(k.open(&b, &aad).unwrap(), b"hunter2");
        assert_eq!(k.open(&k.seal(&aad, b""), &aad).unwrap(), b"");
        assert_eq!(a.key_id, k.id());
        assert_eq!(k.id().len(), 16);
    }

    #[test]
    fn the_wrong_key_is_named_not_decrypted_into_garbage() {
        let aad = associated_data("deployment", "d", "A", 1);
        let sealed = key(1).seal(&aad, b"v");
        let e = key(2).open(&sealed, &aad).unwrap_err();
        assert_eq!(e, OpenError::WrongKey { stored: key(1).id().to_string(), current: key(2).id().to_string() });
        // A forged key id does not help either: the tag does not verify.
        let forged = Sealed { key_id: key(2).id().to_string(), ..sealed };
        assert_eq!(key(2).open(&forged, &aad).unwrap_err(), OpenError::Tampered);
    }

    #[test]
    fn tampered_ciphertexts_and_nonces_are_refused() {
        let k = key(3);
        let aad = associated_data("environment", "env-1", "DB_PASSWORD", 4);
        let sealed = k.seal(&aad, b"correct horse battery staple");
        for i in [0, 7, sealed.ciphertext.len() - 1] {
            let mut c = sealed.ciphertext.clone().into_bytes();
            c[i] = if c[i] == b'0' { b'1' } else { b'0' };
            let tampered = Sealed { ciphertext: String::from_utf8(c).unwrap(), ..sealed.clone() };
            assert_eq!(k.open(&tampered, &aad).unwrap_err(), OpenError::Tampered, "byte {i}");
        }
        let other_nonce = Sealed { nonce: "00".repeat(NONCE_LEN), ..sealed.clone() };
        assert_eq!(k.open(&other_nonce, &aad).unwrap_err(), OpenError::Tampered);
        let truncated = Sealed { ciphertext: sealed.ciphertext[..20].to_string(), ..sealed.clone() };
        assert_eq!(k.open(&truncated, &aad).unwrap_err(), OpenError::Tampered);
        let not_hex = Sealed { ciphertext: "zz".into(), ..sealed.clone() };
        assert_eq!(k.open(&not_hex, &aad).unwrap_err(), OpenError::Malformed("ciphertext"));
        let short_nonce = Sealed { nonce: "00".into(), ..sealed };
        assert_eq!(k.open(&short_nonce, &aad).unwrap_err(), OpenError::Malformed("nonce"));
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
        let k = key(4);
        let sealed = k.seal(&associated_data("deployment", "deploy-a", "TOKEN", 2), b"v");
        for (scope, id, name, version) in [
            ("deployment", "deploy-b", "TOKEN", 2),
            ("deployment", "deploy-a", "OTHER", 2),
            ("environment", "deploy-a", "TOKEN", 2),
            ("deployment", "deploy-a", "TOKEN", 1),
            // No ambiguity from the separators.
            ("deployment", "deploy-a\0TOKEN", "", 2),
        ] {
            let aad = associated_data(scope, id, name, version);
            assert_eq!(k.open(&sealed, &aad).unwrap_err(), OpenError::Tampered, "{scope} {id} {name} {version}");
        }
    }

    #[test]
    fn keys_come_from_hex_files_or_are_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_key_hex(&format!(" {}\n", "aB".repeat(32))));
        assert!(!is_key_hex(&"a".repeat(63)) && !is_key_hex(&"g".repeat(64)));
        let e = MasterKey::from_hex("not a key", "FERRY_MASTER_KEY").unwrap_err().to_string();
        assert!(e.contains("FERRY_MASTER_KEY") && !e.contains("not a key"), "{e}");

        let generated = MasterKey::load(&MasterKeySource::DataDir, dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = MasterKey::load(&MasterKeySource::DataDir, dir.path()).unwrap();
        assert_eq!(again.id(), generated.id(), "the generated key is kept");
        let from_file = MasterKey::load(&MasterKeySource::File(path.clone()), Path::new("/nonexistent")).unwrap();
        assert_eq!(from_file.id(), generated.id());
        let text = std::fs::read_to_string(&path).unwrap();
        let from_env = MasterKey::load(&MasterKeySource::Env(text.trim().into()), dir.path()).unwrap();
        assert_eq!(from_env.id(), generated.id());
        assert!(!format!("{from_env:?}").contains(text.trim()));
        let missing = MasterKey::load(&MasterKeySource::File(dir.path().join("nope")), dir.path()).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
