//! The state directory (mode 0700):
//!
//! * `client.pem` (0600) — the agent certificate followed by its private key. Its presence
//!   means "enrolled"; it is written last during enrollment.
//! * `ca.crt` — the CA the agent trusts.
//! * `identity.json` — `{"agentId": "..."}`.
//! * `assignment.json` (0600, it may carry secrets in environment variables) — the last
//!   applied [`Assignment`].
//!
//! Every file is replaced atomically (write to a temporary name, then rename).

use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::Assignment;
use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;

pub const CLIENT_PEM: &str = "client.pem";
pub const CA_CRT: &str = "ca.crt";
pub const IDENTITY_JSON: &str = "identity.json";
pub const ASSIGNMENT_JSON: &str = "assignment.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("state directory: cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("state directory is corrupt: {path}: {reason}; remove it and re-enroll")]
    Corrupt { path: PathBuf, reason: String },
}

/// `identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    pub agent_id: String,
}

/// An opened (existing or newly created) state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the directory if needed and restricts it to mode 0700.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let io_err = |source| StateError::Io { path: root.to_path_buf(), source };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            builder.mode(0o700);
            builder.create(root).map_err(io_err)?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        }
        #[cfg(not(unix))]
        builder.create(root).map_err(io_err)?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The stored credentials, `None` when the agent never enrolled (no `client.pem`).
    pub fn load_credentials(&self) -> Result<Option<Credentials>, StateError> {
        let Some(client_pem) = self.read_optional(CLIENT_PEM)? else { return Ok(None) };
        let identity: Identity = self.read_json(IDENTITY_JSON)?;
        let ca_pem = self.read_required(CA_CRT)?;
        Credentials::from_client_pem(&identity.agent_id, &ca_pem, &client_pem)
            .map(Some)
            .map_err(|e| StateError::Corrupt { path: self.file(CLIENT_PEM), reason: e.0 })
    }

    /// Persists a new identity. `client.pem` is written last, so a crash midway leaves an agent
    /// that is simply not enrolled. The previous identity's assignment is removed: generations
    /// belong to an agent id.
    pub fn save_enrollment(&self, creds: &Credentials) -> Result<(), StateError> {
        self.remove(ASSIGNMENT_JSON)?;
        self.remove(CLIENT_PEM)?;
        let identity = Identity { agent_id: creds.agent_id.clone() };
        let json = serde_json::to_string_pretty(&identity).map_err(|e| self.write_err(IDENTITY_JSON, e))?;
        ferry_certs::write_public(&self.file(CA_CRT), &creds.ca_pem).map_err(|e| self.write_err(CA_CRT, e))?;
        ferry_certs::write_public(&self.file(IDENTITY_JSON), &json).map_err(|e| self.write_err(IDENTITY_JSON, e))?;
        self.save_client_pem(creds)
    }

    /// Replaces `client.pem` (after a renewal).
    pub fn save_client_pem(&self, creds: &Credentials) -> Result<(), StateError> {
        ferry_certs::write_private(&self.file(CLIENT_PEM), &creds.client_pem())
            .map_err(|e| self.write_err(CLIENT_PEM, e))
    }

    /// The last applied assignment, if any.
    pub fn load_assignment(&self) -> Result<Option<Assignment>, StateError> {
        if self.read_optional(ASSIGNMENT_JSON)?.is_none() {
            return Ok(None);
        }
        self.read_json(ASSIGNMENT_JSON).map(Some)
    }

    pub fn save_assignment(&self, assignment: &Assignment) -> Result<(), StateError> {
        let json = serde_json::to_string_pretty(assignment).map_err(|e| self.write_err(ASSIGNMENT_JSON, e))?;
        ferry_certs::write_private(&self.file(ASSIGNMENT_JSON), &json).map_err(|e| self.write_err(ASSIGNMENT_JSON, e))
    }

    fn write_err(&self, name: &str, e: impl std::fmt::Display) -> StateError {
        StateError::Write { path: self.file(name), reason: e.to_string() }
    }

    fn read_optional(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.file(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(StateError::Corrupt { path, reason: "not UTF-8 text".into() })
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn read_required(&self, name: &str) -> Result<String, StateError> {
        self.read_optional(name)?.ok_or_else(|| StateError::Corrupt {
            path: self.file(name),
            reason: format!("missing (but {CLIENT_PEM} exists)"),
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, StateError> {
        let text = self.read_required(name)?;
        serde_json::from_str(&text)
            .map_err(|e| StateError::Corrupt { path: self.file(name), reason: format!("invalid JSON: {e}") })
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_certs::Ca;
    use ferry_protocol::{ProcessSpec, RestartPolicy, Workload};

    use super::*;
    use crate::credentials::tests::issue;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn assignment(generation: u64) -> Assignment {
        Assignment {
            generation,
            workloads: vec![Workload {
                id: "dep-1".into(),
                name: "web".into(),
                version: "v1".into(),
                spec: ProcessSpec {
                    command: "/bin/true".into(),
                    args: vec![],
                    env: [("SECRET".to_string(), "x".to_string())].into(),
                    working_dir: None,
                    replicas: 1,
                    restart_policy: RestartPolicy::Always,
                    liveness: None,
                    readiness: None,
                    startup: None,
                    stop_grace_ms: 1000,
                },
                restart_nonce: 0,
            }],
        }
    }

    #[test]
    fn round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nested/state");
        let dir = StateDir::open(&root).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&root), 0o700);
        assert!(dir.load_credentials().unwrap().is_none());
        assert!(dir.load_assignment().unwrap().is_none());

        let ca = Ca::generate("t").unwrap();
        let creds = issue(&ca, "agent-1", Duration::from_secs(600));
        dir.save_enrollment(&creds).unwrap();
        let back = dir.load_credentials().unwrap().unwrap();
        assert_eq!(back.agent_id, "agent-1");
        assert_eq!(back.info, creds.info);
        assert_eq!(back.ca_pem, ca.cert_pem());
        #[cfg(unix)]
        assert_eq!(mode(&root.join(CLIENT_PEM)), 0o600);
        let identity = std::fs::read_to_string(root.join(IDENTITY_JSON)).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&identity).unwrap()["agentId"], "agent-1");

        dir.save_assignment(&assignment(3)).unwrap();
        assert_eq!(dir.load_assignment().unwrap(), Some(assignment(3)));
        #[cfg(unix)]
        assert_eq!(mode(&root.join(ASSIGNMENT_JSON)), 0o600);

        // A renewal replaces client.pem and keeps it private.
        let renewed = issue(&ca, "agent-1", Duration::from_secs(900));
        dir.save_client_pem(&renewed).unwrap();
        assert_eq!(dir.load_credentials().unwrap().unwrap().info, renewed.info);
        #[cfg(unix)]
        assert_eq!(mode(&root.join(CLIENT_PEM)), 0o600);

        // Re-enrolling as another agent forgets the old identity's assignment.
        let other = issue(&ca, "agent-2", Duration::from_secs(600));
        dir.save_enrollment(&other).unwrap();
        assert_eq!(dir.load_credentials().unwrap().unwrap().agent_id, "agent-2");
        assert!(dir.load_assignment().unwrap().is_none());
        // No temporary files left behind.
        let names: Vec<_> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn existing_directory_is_tightened_to_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::open(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let ca = Ca::generate("t").unwrap();
        let creds = issue(&ca, "agent-1", Duration::from_secs(600));
        dir.save_enrollment(&creds).unwrap();

        std::fs::write(tmp.path().join(IDENTITY_JSON), "{not json").unwrap();
        let e = dir.load_credentials().unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }) && e.to_string().contains(IDENTITY_JSON), "{e}");

        std::fs::write(tmp.path().join(IDENTITY_JSON), r#"{"agentId":"agent-9"}"#).unwrap();
        let e = dir.load_credentials().unwrap_err();
        assert!(e.to_string().contains("agent-9"), "{e}");

        std::fs::write(tmp.path().join(IDENTITY_JSON), r#"{"agentId":"agent-1"}"#).unwrap();
        std::fs::remove_file(tmp.path().join(CA_CRT)).unwrap();
        let e = dir.load_credentials().unwrap_err();
        assert!(e.to_string().contains(CA_CRT) && e.to_string().contains("missing"), "{e}");

        dir.save_enrollment(&creds).unwrap();
        std::fs::write(tmp.path().join(CLIENT_PEM), "garbage").unwrap();
        assert!(matches!(dir.load_credentials(), Err(StateError::Corrupt { .. })));

        std::fs::write(tmp.path().join(ASSIGNMENT_JSON), "[]").unwrap();
        assert!(matches!(dir.load_assignment(), Err(StateError::Corrupt { .. })));
    }
}
