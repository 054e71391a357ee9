//! The state directory (mode 0700):
//!
//! * `client.pem` (0600) — the agent certificate followed by its private key. Its presence
//!   means "enrolled"; it is written last during enrollment.
//! * `ca.crt` — the CA the agent trusts.
//! * `identity.json` — `{"agentId": "..."}`.
//! * `intent.json` (0600, it may carry configuration in environment variables) — the last
//!   applied intent: `{"format": 2, "generation": …, "naming": "revision" | "deployment",
//!   "workloads": [WorkloadIntent…], "withheld": [id…]}` (`naming` says whether workload ids are
//!   `<deployment>@<revision>`, protocol 2, or deployment ids, protocol 1). Secret values are
//!   never written: workloads that carry secrets are stored without them and listed in
//!   `withheld` (absent when empty), so after a restart they wait until the control plane sends
//!   them again.
//! * `assignment.json` — what agents before protocol 2 stored instead (a protocol-1
//!   [`Assignment`]). It is still read when there is no `intent.json` (the workloads keep their
//!   ids, the deployment ids, until the control plane sends a whole intent that replaces them)
//!   and removed once `intent.json` is written. An older agent started on this directory finds
//!   no `assignment.json` and gets its whole assignment from the control plane.
//!
//! Every file is replaced atomically (write to a temporary name, then rename).

use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::{Assignment, WorkloadIntent};
use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;
use crate::intent::{Intent, Naming};

pub const CLIENT_PEM: &str = "client.pem";
pub const CA_CRT: &str = "ca.crt";
pub const IDENTITY_JSON: &str = "identity.json";
pub const INTENT_JSON: &str = "intent.json";
/// The state file of agents before protocol 2 (read, never written).
pub const ASSIGNMENT_JSON: &str = "assignment.json";

/// The `format` of `intent.json` this agent reads and writes.
const INTENT_FORMAT: u32 = 2;

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

/// `intent.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IntentFile {
    format: u32,
    generation: u64,
    naming: Naming,
    workloads: Vec<WorkloadIntent>,
    /// Workloads stored without their secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    withheld: Vec<String>,
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
        self.remove(INTENT_JSON)?;
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

    /// The last applied intent, if any: `intent.json`, or else the `assignment.json` of an
    /// agent before protocol 2, converted.
    pub fn load_intent(&self) -> Result<Option<Intent>, StateError> {
        if let Some(text) = self.read_optional(INTENT_JSON)? {
            let corrupt = |reason: String| StateError::Corrupt { path: self.file(INTENT_JSON), reason };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
            match value.get("format").and_then(serde_json::Value::as_u64) {
                Some(f) if f == u64::from(INTENT_FORMAT) => {}
                Some(f) => return Err(corrupt(format!("format {f}, not {INTENT_FORMAT} (written by a newer agent?)"))),
                None => return Err(corrupt("no format".into())),
            }
            let file: IntentFile =
                serde_json::from_value(value).map_err(|e| corrupt(format!("invalid intent: {e}")))?;
            let workloads = file.workloads.into_iter().map(|w| (w.id.clone(), w)).collect();
            let withheld = file.withheld.into_iter().collect();
            return Ok(Some(Intent { generation: file.generation, naming: file.naming, workloads, withheld }));
        }
        if self.read_optional(ASSIGNMENT_JSON)?.is_none() {
            return Ok(None);
        }
        let old: Assignment = self.read_json(ASSIGNMENT_JSON)?;
        Ok(Some(Intent::from_assignment(old)))
    }

    /// Replaces `intent.json` (atomically, 0600) with `intent` stripped of its secrets, then
    /// removes a pre-protocol-2 `assignment.json` (a crash in between leaves both;
    /// `intent.json` wins).
    pub fn save_intent(&self, intent: &Intent) -> Result<(), StateError> {
        let stored = intent.without_secrets();
        let file = IntentFile {
            format: INTENT_FORMAT,
            generation: stored.generation,
            naming: stored.naming,
            workloads: stored.workloads.into_values().collect(),
            withheld: stored.withheld.into_iter().collect(),
        };
        let json = serde_json::to_string_pretty(&file).map_err(|e| self.write_err(INTENT_JSON, e))?;
        ferry_certs::write_private(&self.file(INTENT_JSON), &json).map_err(|e| self.write_err(INTENT_JSON, e))?;
        self.remove(ASSIGNMENT_JSON)
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
    use ferry_protocol::{HealthCheck, Probe, ProcessSpec, RestartPolicy, WorkloadSpec};

    use super::*;
    use crate::credentials::tests::issue;
    use crate::intent::tests::workload;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn intent(generation: u64) -> Intent {
        let workloads = [workload("dep-1", 2, 1), workload("dep-2", 1, 3)];
        Intent {
            generation,
            naming: Naming::Revision,
            workloads: workloads.map(|w| (w.id.clone(), w)).into(),
            withheld: Default::default(),
        }
    }

    #[test]
    fn secret_values_never_reach_the_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let mut held = intent(3);
        let secret = crate::intent::tests::with_secret("dep-3", 1, "hunter2-never-on-disk");
        held.workloads.insert(secret.id.clone(), secret);
        dir.save_intent(&held).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(INTENT_JSON)).unwrap();
        assert!(!text.contains("hunter2-never-on-disk"), "{text}");
        assert!(text.contains("dep-3@1") && text.contains("withheld"), "{text}");
        let back = dir.load_intent().unwrap().unwrap();
        assert_eq!(back, held.without_secrets());
        assert_eq!(back.withheld.iter().collect::<Vec<_>>(), ["dep-3@1"]);
        // Without secrets, nothing is listed as withheld and the file is as before.
        dir.save_intent(&intent(4)).unwrap();
        assert!(!std::fs::read_to_string(tmp.path().join(INTENT_JSON)).unwrap().contains("withheld"));
        assert_eq!(dir.load_intent().unwrap(), Some(intent(4)));
    }

    #[test]
    fn round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nested/state");
        let dir = StateDir::open(&root).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&root), 0o700);
        assert!(dir.load_credentials().unwrap().is_none());
        assert!(dir.load_intent().unwrap().is_none());

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

        dir.save_intent(&intent(3)).unwrap();
        assert_eq!(dir.load_intent().unwrap(), Some(intent(3)));
        #[cfg(unix)]
        assert_eq!(mode(&root.join(INTENT_JSON)), 0o600);

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
        assert!(dir.load_intent().unwrap().is_none());
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
        assert!(matches!(dir.load_intent(), Err(StateError::Corrupt { .. })));
        std::fs::write(tmp.path().join(INTENT_JSON), "[]").unwrap();
        assert!(matches!(dir.load_intent(), Err(StateError::Corrupt { .. })));
        std::fs::write(tmp.path().join(INTENT_JSON), r#"{"format":3,"generation":1}"#).unwrap();
        let e = dir.load_intent().unwrap_err();
        assert!(e.to_string().contains("format 3"), "{e}");
    }

    /// `assignment.json` exactly as the agent before protocol 2 wrote it.
    const OLD_ASSIGNMENT_JSON: &str = r#"{
  "generation": 12,
  "workloads": [
    {
      "id": "dep-1",
      "name": "web",
      "version": "v1",
      "spec": {
        "command": "/bin/true",
        "args": [
          "--port",
          "$(PORT)"
        ],
        "env": {
          "SECRET": "x"
        },
        "working_dir": null,
        "replicas": 2,
        "restart_policy": "Always",
        "liveness": null,
        "readiness": {
          "probe": {
            "Http": {
              "path": "/healthz",
              "port": 0
            }
          },
          "initial_delay_ms": 0,
          "period_ms": 1000,
          "timeout_ms": 1000,
          "success_threshold": 1,
          "failure_threshold": 3
        },
        "startup": null,
        "stop_grace_ms": 1000
      },
      "restart_nonce": 4
    }
  ]
}"#;

    #[test]
    fn an_assignment_json_of_the_previous_agent_loads_and_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join(ASSIGNMENT_JSON), OLD_ASSIGNMENT_JSON).unwrap();

        let old = dir.load_intent().unwrap().expect("the old file loads");
        assert_eq!((old.generation, old.naming), (12, Naming::Deployment));
        assert_eq!(old.workloads.keys().collect::<Vec<_>>(), ["dep-1"], "it keeps its old id");
        let w = &old.workloads["dep-1"];
        assert_eq!((w.deployment_id.as_str(), w.revision, w.restart_nonce), ("dep-1", 0, 4));
        let expected = ProcessSpec {
            command: "/bin/true".into(),
            args: vec!["--port".into(), "$(PORT)".into()],
            env: [("SECRET".to_string(), "x".to_string())].into(),
            working_dir: None,
            replicas: 2,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: Some(HealthCheck {
                probe: Probe::Http { path: "/healthz".into(), port: 0 },
                initial_delay_ms: 0,
                period_ms: 1000,
                timeout_ms: 1000,
                success_threshold: 1,
                failure_threshold: 3,
            }),
            startup: None,
            stop_grace_ms: 1000,
        };
        assert_eq!(w.spec, WorkloadSpec::Process(expected));

        // Saved again (as the first intent is): the new format, and the old file is gone.
        dir.save_intent(&old).unwrap();
        assert!(!tmp.path().join(ASSIGNMENT_JSON).exists());
        assert_eq!(dir.load_intent().unwrap(), Some(old));
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(INTENT_JSON)).unwrap()).unwrap();
        assert_eq!((saved["format"].as_u64(), saved["naming"].as_str()), (Some(2), Some("deployment")));

        // Both present (a crash between writing one and removing the other): intent.json wins.
        std::fs::write(tmp.path().join(ASSIGNMENT_JSON), OLD_ASSIGNMENT_JSON).unwrap();
        dir.save_intent(&intent(13)).unwrap();
        std::fs::write(tmp.path().join(ASSIGNMENT_JSON), OLD_ASSIGNMENT_JSON).unwrap();
        assert_eq!(dir.load_intent().unwrap(), Some(intent(13)));
    }
}
