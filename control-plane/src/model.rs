//! Deployment configuration as users write it (the seed's Deployment entity, `configuration`
//! block, with the seed's health-check shape), its validation, and its translation to the wire
//! `ProcessSpec` the agents run. The stored desired state is exactly this validated document.

use std::collections::BTreeMap;

use ferry_protocol::{HealthCheck, Probe, ProcessSpec, RestartPolicy};
use serde::{Deserialize, Serialize};

use crate::api::error::ErrorCode;
use crate::planner::Target;

/// Ferry's hard cap on replicas per deployment (a per-environment limit can only be lower).
pub const MAX_REPLICAS: u32 = 10_000;
const MAX_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;
const MAX_ENV: usize = 128;
const MAX_ENV_VALUE: usize = 32 * 1024;
const MAX_TARGET_AGENTS: usize = 100;
/// Variables the runtime sets for every replica.
pub(crate) const RESERVED_ENV: &[&str] = &["PORT", "FERRY_WORKLOAD_ID", "FERRY_REPLICA"];

/// A validation failure: which field, and why (rendered as VALIDATION_001 or a domain code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid { code: ErrorCode::InvalidValue, field: field.into(), message: message.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Configuration {
    #[schema(maximum = 10000)]
    pub replicas: u32,
    /// Not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub command: String,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::shape::args)]
    pub args: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::shape::env)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub working_dir: Option<String>,
    #[serde(default = "default_restart")]
    pub restart_policy: RestartPolicyJson,
    #[serde(default = "default_grace")]
    #[schema(maximum = 3600)]
    pub stop_grace_period_seconds: u32,
    /// How long a rollout may take before its operation is marked failed.
    #[serde(default = "default_deadline")]
    #[schema(minimum = 1, maximum = 86400)]
    pub progress_deadline_seconds: u32,
    /// How long the deployment must have stayed running (every replica ready) before a change's
    /// operation succeeds, like Kubernetes' `minReadySeconds` and Nomad's `min_healthy_time`: a
    /// process that starts and exits at once must not report success in between. Default
    /// [`DEFAULT_MIN_READY_SECONDS`] (at most half the progress deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 3600)]
    pub min_ready_seconds: Option<u32>,
    #[serde(default)]
    pub health_checks: HealthChecks,
    /// The secrets this revision runs with: name → where it comes from and which version
    /// (never a value). Set by Ferry when the deployment's or its environment's secrets change
    /// (`PUT …/secrets`), so that such a change is a new revision; read-only: whatever a
    /// request says here is ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(read_only)]
    pub secrets: BTreeMap<String, SecretPin>,
    /// The environment's variables this revision runs with (`GET/PUT
    /// /v1/environments/{id}/variables`), under `env` (a deployment's own values win). Set by
    /// Ferry when the deployment is created and whenever they change, so that such a change is a
    /// new revision; read-only: whatever a request says here is ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(read_only)]
    pub environment_variables: BTreeMap<String, String>,
    /// CPU each replica asks for (`"500m"`, `"2"`); counted against its environment's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9]{1,20}(\\.[0-9]{1,9})?m?$")]
    pub cpu: Option<String>,
    /// Memory each replica asks for (`"512Mi"`, `"4Gi"`); counted against its environment's
    /// limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9]{1,20}(\\.[0-9]{1,9})?([KMGTPE]i|[kMGTPE])?$")]
    pub memory: Option<String>,
    /// The commit of a Git repository this configuration runs in (a Git source, see
    /// `crate::sources`). Set by Ferry when the deployment is created from a Git source
    /// (`POST /v1/deployments/github`); read-only: whatever a request says here is ignored.
    /// `workingDir`, if given, is then relative to the checkout's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub source: Option<SourcePin>,
}

/// A configuration's pinned Git source: what was asked for and the commit it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourcePin {
    /// `git`.
    #[serde(rename = "type")]
    pub kind: String,
    pub repo_url: String,
    /// What was asked for: `refs/heads/<branch>`, `refs/tags/<tag>` or the commit id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The commit it resolved to (40 hex digits): what every replica runs.
    pub commit: String,
    /// The deployment file, relative to the repository's root.
    pub path: String,
    /// The deployment file's directory (`""`: the root); the default working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
}

impl SourcePin {
    pub const GIT: &'static str = "git";

    /// The directory a pin of the deployment file at `path` runs in by default.
    pub fn dir_of(path: &str) -> String {
        path.rsplit_once('/').map(|(dir, _)| dir.to_string()).unwrap_or_default()
    }
}

/// Which version of a secret a revision runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretPin {
    /// `deployment` or `environment`.
    pub source: String,
    pub version: i64,
    pub last_rotated: String,
}

fn default_restart() -> RestartPolicyJson {
    RestartPolicyJson::Always
}
fn default_grace() -> u32 {
    10
}
fn default_deadline() -> u32 {
    300
}
/// See [`Configuration::min_ready_seconds`].
pub const DEFAULT_MIN_READY_SECONDS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestartPolicyJson {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<HealthCheckJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<HealthCheckJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup: Option<HealthCheckJson>,
}

/// The seed's health-check shape: exactly one of `httpGet`, `tcpSocket`, `exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default)]
    #[schema(maximum = 3600)]
    pub initial_delay_seconds: u32,
    #[serde(default = "default_period")]
    #[schema(minimum = 1, maximum = 3600)]
    pub period_seconds: u32,
    #[serde(default = "default_timeout")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: u32,
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100)]
    pub success_threshold: u32,
    #[serde(default = "default_failure_threshold")]
    #[schema(minimum = 1, maximum = 100)]
    pub failure_threshold: u32,
}

fn default_period() -> u32 {
    10
}
fn default_timeout() -> u32 {
    1
}
fn one() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    /// Absolute, without spaces or control characters.
    #[schema(pattern = "^/[^\\s\\u0000-\\u001f\\u007f-\\u009f]{0,2047}$")]
    pub path: String,
    /// 0 or absent: the replica's own `PORT`.
    #[serde(default)]
    #[schema(maximum = 65535)]
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocket {
    #[serde(default)]
    #[schema(maximum = 65535)]
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    #[schema(schema_with = crate::api::openapi::shape::exec_command)]
    pub command: Vec<String>,
}

/// Where a deployment runs: `{"agentIds": [...]}` or `{"selector": {...}}` (exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(min_properties = 1, max_properties = 1)]
pub struct TargetJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::api::openapi::shape::agent_ids)]
    pub agent_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::api::openapi::shape::labels)]
    pub selector: Option<BTreeMap<String, String>>,
}

impl TargetJson {
    pub fn validate(&self) -> Result<Target, Invalid> {
        match (&self.agent_ids, &self.selector) {
            (Some(ids), None) => {
                if ids.is_empty() || ids.len() > MAX_TARGET_AGENTS {
                    return Err(invalid("target.agentIds", format!("between 1 and {MAX_TARGET_AGENTS} agent ids")));
                }
                for id in ids {
                    ferry_certs::validate_agent_id(id)
                        .map_err(|_| invalid("target.agentIds", format!("invalid agent id {id:?}")))?;
                }
                Ok(Target::Agents(ids.clone()))
            }
            (None, Some(sel)) => {
                ferry_protocol::limits::validate_labels(sel).map_err(|m| invalid("target.selector", m))?;
                Ok(Target::Selector(sel.clone()))
            }
            _ => Err(invalid("target", "give exactly one of agentIds or selector")),
        }
    }
}

/// What a version does not pin: the deployment's replica count (deploying a version keeps it,
/// like `kubectl rollout undo`) and the fields Ferry sets itself ([`FERRY_SET`]). A Git
/// `source` pin, in contrast, is frozen into the version.
pub const OUTSIDE_VERSIONS: &[&str] = &["replicas", "secrets", "environmentVariables"];
/// Configuration fields set by Ferry, read-only for users: a deployed version runs with the
/// deployment's current ones.
pub const FERRY_SET: &[&str] = &["secrets", "environmentVariables"];

fn strip_outside_versions(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        strip_outside_versions_map(o);
    }
}

fn strip_outside_versions_map(o: &mut serde_json::Map<String, serde_json::Value>) {
    for k in OUTSIDE_VERSIONS {
        o.remove(*k);
    }
}

/// A stored configuration document (a revision's spec) → the template a version of it freezes.
pub fn version_template(spec: &str) -> Result<String, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_str(spec)?;
    strip_outside_versions(&mut v);
    Ok(v.to_string())
}

/// Whether two version templates describe the same thing (compared in their canonical form,
/// so a default written out and a default left out are the same). A template that does not
/// parse is only equal to the same text.
pub fn same_template(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let canonical = |t: &serde_json::Value| {
        let mut t = t.clone();
        if let Some(o) = t.as_object_mut() {
            o.insert("replicas".into(), 0.into());
        }
        serde_json::from_value::<Configuration>(t).ok().map(|c| c.template())
    };
    match (canonical(a), canonical(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Names of deployments and environments: 1-63 of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(invalid(field, format!("invalid {field} {name:?}: 1-63 characters of [a-z0-9-]"))) }
}

pub fn validate_version(v: &str) -> Result<(), Invalid> {
    validate_version_field("activeVersion", v)
}

/// A version name: 1-64 of `[A-Za-z0-9._+-]`.
pub fn validate_version_field(field: &str, v: &str) -> Result<(), Invalid> {
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok { Ok(()) } else { Err(invalid(field, format!("invalid version {v:?}: 1-64 characters of [A-Za-z0-9._+-]"))) }
}

/// A relative path that stays inside its root: no leading `/`, no `..` component.
fn is_relative_inside(path: &str) -> bool {
    !path.starts_with('/') && path.split('/').all(|c| c != "..")
}

/// Commands, arguments and paths go to `execve` and the file system as they are: a control
/// character (NUL, which cannot be passed at all, tab, newline, escapes…) is refused.
fn no_control_chars(field: &str, what: &str, value: &str) -> Result<(), Invalid> {
    match value.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(invalid(field, format!("{what} contains the control character U+{:04X}", u32::from(c)))),
    }
}

/// The rules of an environment map (`configuration.env`, an environment's variables): at most
/// 128 names of `[A-Za-z_][A-Za-z0-9_]*` (at most 128 characters), none of [`RESERVED_ENV`],
/// values of at most 32 KiB without control characters other than tab and line breaks.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if env.len() > MAX_ENV {
        return Err(invalid(field, format!("at most {MAX_ENV} variables")));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && k.len() <= 128
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            let shown: String = k.chars().take(128).collect();
            return Err(invalid(field, format!("invalid variable name {shown:?}")));
        }
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(invalid(field, format!("{k} is set by Ferry for every replica")));
        }
        if v.len() > MAX_ENV_VALUE {
            return Err(invalid(field, format!("value of {k} is longer than {MAX_ENV_VALUE} bytes")));
        }
        // Multi-line values (certificates, scripts) are common; other control characters
        // (NUL first: it cannot even be passed to a process) are refused.
        if let Some(c) = v.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
            return Err(invalid(field, format!("value of {k} contains the control character U+{:04X}", u32::from(c))));
        }
    }
    Ok(())
}

impl Configuration {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.replicas > MAX_REPLICAS {
            return Err(Invalid {
                code: ErrorCode::ReplicaLimit,
                field: "configuration.replicas".into(),
                message: format!(
                    "replicas {} exceeds Ferry's limit of {MAX_REPLICAS} replicas per deployment",
                    self.replicas
                ),
            });
        }
        if self.command.trim().is_empty() || self.command.len() > MAX_ARG_LEN {
            return Err(invalid("configuration.command", "command is required (at most 4096 bytes)"));
        }
        no_control_chars("configuration.command", "command", &self.command)?;
        if self.args.len() > MAX_ARGS || self.args.iter().any(|a| a.len() > MAX_ARG_LEN) {
            return Err(invalid("configuration.args", format!("at most {MAX_ARGS} arguments of {MAX_ARG_LEN} bytes")));
        }
        for (i, arg) in self.args.iter().enumerate() {
            no_control_chars("configuration.args", &format!("argument {i}"), arg)?;
        }
        validate_env("configuration.env", &self.env)?;
        if let Some(cpu) = &self.cpu {
            crate::resources::parse_cpu(cpu, crate::resources::MAX_REPLICA_CPU_MILLIS)
                .map_err(|m| invalid("configuration.cpu", m))?;
        }
        if let Some(memory) = &self.memory {
            crate::resources::parse_memory(memory, crate::resources::MAX_REPLICA_MEMORY_BYTES)
                .map_err(|m| invalid("configuration.memory", m))?;
        }
        if let Some(dir) = &self.working_dir {
            if dir.is_empty() || dir.len() > MAX_ARG_LEN {
                return Err(invalid("configuration.workingDir", "invalid working directory"));
            }
            no_control_chars("configuration.workingDir", "workingDir", dir)?;
            if self.source.is_some() && !is_relative_inside(dir) {
                return Err(invalid(
                    "configuration.workingDir",
                    "with a Git source, workingDir is relative to the checkout (no leading '/', no '..')",
                ));
            }
        }
        if let Some(s) = &self.source {
            let commit_ok = s.commit.len() == 40 && s.commit.bytes().all(|b| b.is_ascii_hexdigit());
            if s.kind != SourcePin::GIT || !commit_ok || !(s.dir.is_empty() || is_relative_inside(&s.dir)) {
                return Err(invalid("configuration.source", "an invalid source pin"));
            }
        }
        if self.stop_grace_period_seconds > 3600 {
            return Err(invalid("configuration.stopGracePeriodSeconds", "at most 3600"));
        }
        if !(1..=86_400).contains(&self.progress_deadline_seconds) {
            return Err(invalid("configuration.progressDeadlineSeconds", "between 1 and 86400"));
        }
        if self.min_ready_seconds.is_some_and(|m| m > 3600 || m >= self.progress_deadline_seconds) {
            return Err(invalid(
                "configuration.minReadySeconds",
                "at most 3600, and less than progressDeadlineSeconds",
            ));
        }
        for (name, hc) in [
            ("liveness", &self.health_checks.liveness),
            ("readiness", &self.health_checks.readiness),
            ("startup", &self.health_checks.startup),
        ] {
            if let Some(hc) = hc {
                hc.validate(&format!("configuration.healthChecks.{name}"))?;
            }
        }
        Ok(())
    }

    /// The template a version of this configuration freezes (without [`OUTSIDE_VERSIONS`]).
    pub fn template(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("configuration serializes");
        strip_outside_versions(&mut v);
        v
    }

    /// A version's template run as a deployment now runs: with `current`'s replica count and
    /// the fields Ferry set on it ([`FERRY_SET`]); validated.
    pub fn from_template(template: &serde_json::Value, current: &Configuration) -> Result<Configuration, Invalid> {
        let mut v = template.clone();
        let now = serde_json::to_value(current).expect("configuration serializes");
        let Some(o) = v.as_object_mut() else {
            return Err(invalid("configuration", "a version's configuration must be an object"));
        };
        strip_outside_versions_map(o);
        o.insert("replicas".into(), current.replicas.into());
        for k in FERRY_SET {
            if let Some(value) = now.get(*k) {
                o.insert((*k).into(), value.clone());
            }
        }
        let c: Configuration = serde_json::from_value(v).map_err(|e| invalid("configuration", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// A configuration as a request gives it: `replicas` may be left out (then `replicas`), and
    /// whatever it says in the fields Ferry sets is ignored (they are taken from the deployment
    /// when it runs). Parsed and validated.
    pub fn from_request(mut value: serde_json::Value, replicas: u32) -> Result<Configuration, Invalid> {
        let Some(o) = value.as_object_mut() else {
            return Err(invalid("configuration", "configuration must be an object"));
        };
        for k in FERRY_SET {
            o.remove(*k);
        }
        o.entry("replicas").or_insert_with(|| replicas.into());
        let c: Configuration =
            serde_json::from_value(value).map_err(|e| invalid("configuration", format!("configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Seconds every replica must stay ready before a change's operation succeeds.
    pub fn min_ready(&self) -> u32 {
        self.min_ready_seconds.unwrap_or(DEFAULT_MIN_READY_SECONDS.min(self.progress_deadline_seconds / 2))
    }

    /// What an agent checks out before running this configuration's processes (a Git
    /// source): the commit, and the working directory in it (`workingDir`, else the deployment
    /// file's directory).
    pub fn checkout(&self) -> Option<ferry_protocol::GitCheckout> {
        self.source.as_ref().map(|s| ferry_protocol::GitCheckout {
            url: s.repo_url.clone(),
            commit: s.commit.clone(),
            dir: self.working_dir.clone().unwrap_or_else(|| s.dir.clone()),
        })
    }

    /// The wire spec for `replicas` replicas (the planner sets each agent's share). With a Git
    /// source the working directory is the agent's to set, in its checkout ([`Self::checkout`]).
    pub fn to_process_spec(&self) -> ProcessSpec {
        ProcessSpec {
            command: self.command.clone(),
            args: self.args.clone(),
            // The environment's variables first; the deployment's own values win.
            env: self.environment_variables.iter().chain(&self.env).map(|(k, v)| (k.clone(), v.clone())).collect(),
            working_dir: if self.source.is_some() { None } else { self.working_dir.clone() },
            replicas: self.replicas,
            restart_policy: match self.restart_policy {
                RestartPolicyJson::Always => RestartPolicy::Always,
                RestartPolicyJson::OnFailure => RestartPolicy::OnFailure,
                RestartPolicyJson::Never => RestartPolicy::Never,
            },
            liveness: self.health_checks.liveness.as_ref().map(HealthCheckJson::to_wire),
            readiness: self.health_checks.readiness.as_ref().map(HealthCheckJson::to_wire),
            startup: self.health_checks.startup.as_ref().map(HealthCheckJson::to_wire),
            stop_grace_ms: self.stop_grace_period_seconds.saturating_mul(1000),
        }
    }
}

impl HealthCheckJson {
    fn validate(&self, field: &str) -> Result<(), Invalid> {
        let kinds = [self.http_get.is_some(), self.tcp_socket.is_some(), self.exec.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(invalid(field, "give exactly one of httpGet, tcpSocket or exec"));
        }
        if let Some(h) = &self.http_get
            && (!h.path.starts_with('/')
                || h.path.len() > 2048
                || h.path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                &format!("{field}.httpGet.path"),
                "an absolute path without spaces or control characters",
            ));
        }
        if let Some(e) = &self.exec {
            if e.command.is_empty() || e.command.len() > MAX_ARGS || e.command.iter().any(|a| a.len() > MAX_ARG_LEN) {
                return Err(invalid(&format!("{field}.exec.command"), "a non-empty argument list"));
            }
            for (i, arg) in e.command.iter().enumerate() {
                no_control_chars(&format!("{field}.exec.command"), &format!("argument {i}"), arg)?;
            }
        }
        let ranges = [
            ("initialDelaySeconds", self.initial_delay_seconds, 0, 3600),
            ("periodSeconds", self.period_seconds, 1, 3600),
            ("timeoutSeconds", self.timeout_seconds, 1, 3600),
            ("successThreshold", self.success_threshold, 1, 100),
            ("failureThreshold", self.failure_threshold, 1, 100),
        ];
        for (name, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(invalid(&format!("{field}.{name}"), format!("{name} must be between {lo} and {hi}")));
            }
        }
        Ok(())
    }

    fn to_wire(&self) -> HealthCheck {
        let probe = if let Some(h) = &self.http_get {
            Probe::Http { path: h.path.clone(), port: h.port }
        } else if let Some(t) = &self.tcp_socket {
            Probe::Tcp { port: t.port }
        } else {
            Probe::Exec { command: self.exec.as_ref().map(|e| e.command.clone()).unwrap_or_default() }
        };
        HealthCheck {
            probe,
            initial_delay_ms: self.initial_delay_seconds * 1000,
            period_ms: self.period_seconds * 1000,
            timeout_ms: self.timeout_seconds * 1000,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(v: serde_json::Value) -> Result<Configuration, String> {
        let c: Configuration = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| format!("{} {}: {}", e.code, e.field, e.message))?;
        Ok(c)
    }

    #[test]
    fn defaults_and_translation() {
        let c = config(json!({
            "replicas": 2, "command": "python3", "args": ["-m", "http.server"],
            "healthChecks": { "readiness": { "httpGet": { "path": "/" }, "periodSeconds": 1 } }
        }))
        .unwrap();
        let spec = c.to_process_spec();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.restart_policy, RestartPolicy::Always);
        assert_eq!(spec.stop_grace_ms, 10_000);
        let r = spec.readiness.unwrap();
        assert_eq!(r.probe, Probe::Http { path: "/".into(), port: 0 });
        assert_eq!((r.period_ms, r.timeout_ms, r.failure_threshold), (1000, 1000, 3));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (json!({ "replicas": 1, "command": "" }), "configuration.command"),
            (
                json!({ "replicas": 10_001, "command": "x" }),
                "DEPLOY_004 configuration.replicas: replicas 10001 exceeds Ferry's limit of 10000 replicas per deployment",
            ),
            (json!({ "replicas": -1, "command": "x" }), "invalid value"),
            (json!({ "replicas": 1 }), "missing field `command`"),
            (json!({ "replicas": 1, "command": "x", "colour": 1 }), "unknown field"),
            (json!({ "replicas": 1, "command": "x", "env": { "PORT": "1" } }), "configuration.env"),
            (json!({ "replicas": 1, "command": "x", "env": { "1X": "1" } }), "configuration.env"),
            (json!({ "replicas": 1, "command": "x", "restartPolicy": "sometimes" }), "unknown variant"),
            (
                json!({ "replicas": 1, "command": "x", "healthChecks": { "liveness": { "periodSeconds": 1 } } }),
                "exactly one",
            ),
            (
                json!({ "replicas": 1, "command": "x", "healthChecks": { "liveness": { "httpGet": { "path": "x" } } } }),
                "httpGet.path",
            ),
            (
                json!({ "replicas": 1, "command": "x",
                        "healthChecks": { "readiness": { "tcpSocket": {}, "failureThreshold": 0 } } }),
                "failureThreshold",
            ),
            // Control characters, NUL first.
            (
                json!({ "replicas": 1, "command": "x\u{0000}y" }),
                "configuration.command: command contains the control character U+0000",
            ),
            (
                json!({ "replicas": 1, "command": "x\ty" }),
                "configuration.command: command contains the control character U+0009",
            ),
            (
                json!({ "replicas": 1, "command": "x\u{001b}[2J" }),
                "configuration.command: command contains the control character U+001B",
            ),
            (
                json!({ "replicas": 1, "command": "x", "args": ["ok", "a\u{0000}"] }),
                "configuration.args: argument 1 contains the control character U+0000",
            ),
            (
                json!({ "replicas": 1, "command": "x", "args": ["a\nb"] }),
                "configuration.args: argument 0 contains the control character U+000A",
            ),
            (
                json!({ "replicas": 1, "command": "x", "args": ["a\u{007f}"] }),
                "configuration.args: argument 0 contains the control character U+007F",
            ),
            (
                json!({ "replicas": 1, "command": "x", "args": ["a\u{0085}"] }),
                "configuration.args: argument 0 contains the control character U+0085",
            ),
            (
                json!({ "replicas": 1, "command": "x", "workingDir": "/srv/\u{0000}" }),
                "configuration.workingDir: workingDir contains the control character U+0000",
            ),
            (
                json!({ "replicas": 1, "command": "x", "workingDir": "/srv\t/app" }),
                "configuration.workingDir: workingDir contains the control character U+0009",
            ),
            (
                json!({ "replicas": 1, "command": "x", "env": { "A": "1\u{0000}2" } }),
                "configuration.env: value of A contains the control character U+0000",
            ),
            (
                json!({ "replicas": 1, "command": "x", "env": { "A": "\u{001b}" } }),
                "configuration.env: value of A contains the control character U+001B",
            ),
            (
                json!({ "replicas": 1, "command": "x",
                        "healthChecks": { "liveness": { "exec": { "command": ["sh", "-c", "x\u{0000}"] } } } }),
                "configuration.healthChecks.liveness.exec.command: argument 2 contains the control character U+0000",
            ),
            (
                json!({ "replicas": 1, "command": "x",
                        "healthChecks": { "readiness": { "httpGet": { "path": "/health\u{0000}" } } } }),
                "configuration.healthChecks.readiness.httpGet.path",
            ),
            (
                json!({ "replicas": 1, "command": "x",
                        "healthChecks": { "readiness": { "httpGet": { "path": "/a\u{0007}b" } } } }),
                "configuration.healthChecks.readiness.httpGet.path",
            ),
        ];
        for (v, needle) in cases {
            let err = config(v.clone()).unwrap_err();
            assert!(err.contains(needle), "{v} -> {err}");
        }
    }

    #[test]
    fn printable_text_and_multi_line_env_values_are_accepted() {
        let c = config(json!({
            "replicas": 1, "command": "/usr/bin/python3", "args": ["-c", "print('héllo wörld ✓')"],
            "workingDir": "/srv/my app", "env": { "CERT": "-----BEGIN-----\r\nAAAA\n\tBBBB\n-----END-----\n" },
            "healthChecks": { "liveness": { "exec": { "command": ["test", "-f", "/tmp/ok file"] } } }
        }));
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn environment_variables_come_first_and_the_deployment_wins() {
        let mut c = config(json!({ "replicas": 1, "command": "x", "env": { "A": "own", "B": "own" } })).unwrap();
        c.environment_variables = [("A", "env"), ("C", "env")].map(|(k, v)| (k.to_string(), v.to_string())).into();
        let env = c.to_process_spec().env;
        assert_eq!(env.get("A").map(String::as_str), Some("own"));
        assert_eq!(env.get("B").map(String::as_str), Some("own"));
        assert_eq!(env.get("C").map(String::as_str), Some("env"));
    }

    #[test]
    fn resource_requests_are_quantities() {
        assert!(config(json!({ "replicas": 1, "command": "x", "cpu": "2000m", "memory": "4Gi" })).is_ok());
        let cpu = config(json!({ "replicas": 1, "command": "x", "cpu": "lots" })).unwrap_err();
        assert!(cpu.contains("configuration.cpu"), "{cpu}");
        let memory = config(json!({ "replicas": 1, "command": "x", "memory": "4GB" })).unwrap_err();
        assert!(memory.contains("configuration.memory"), "{memory}");
        assert!(config(json!({ "replicas": 1, "command": "x", "memory": "2Ti" })).is_err(), "above 1Ti per replica");
    }

    #[test]
    fn up_to_ten_thousand_replicas() {
        assert_eq!(config(json!({ "replicas": 10_000, "command": "x" })).unwrap().to_process_spec().replicas, 10_000);
    }

    #[test]
    fn targets_and_names() {
        let t: TargetJson = serde_json::from_value(json!({ "selector": { "role": "web" } })).unwrap();
        assert!(matches!(t.validate(), Ok(Target::Selector(_))));
        let both: TargetJson = serde_json::from_value(json!({ "selector": {}, "agentIds": ["agent-1"] })).unwrap();
        assert!(both.validate().is_err());
        let bad: TargetJson = serde_json::from_value(json!({ "agentIds": ["Agent One"] })).unwrap();
        assert!(bad.validate().is_err());
        assert!(validate_name("deploymentName", "hello-web").is_ok());
        for bad in ["", "-x", "Hello", "a_b", &"a".repeat(64)] {
            assert!(validate_name("deploymentName", bad).is_err(), "{bad:?}");
        }
        assert!(validate_version("v1.2.3+build-4").is_ok() && validate_version("v 1").is_err());
    }

    #[test]
    fn a_git_source_runs_in_its_checkout() {
        let pin = json!({ "type": "git", "repoUrl": "https://example.com/app.git", "ref": "refs/heads/main",
            "commit": "0123456789abcdef0123456789abcdef01234567", "path": "deploy/ferry.json", "dir": "deploy" });
        let c = config(json!({ "replicas": 1, "command": "sh", "source": pin })).unwrap();
        assert_eq!(c.to_process_spec().working_dir, None, "the agent sets it, in its checkout");
        let checkout = c.checkout().unwrap();
        assert_eq!(
            (checkout.commit.as_str(), checkout.dir.as_str()),
            ("0123456789abcdef0123456789abcdef01234567", "deploy")
        );
        let c = config(json!({ "replicas": 1, "command": "sh", "workingDir": "app/bin", "source": pin })).unwrap();
        assert_eq!(c.checkout().unwrap().dir, "app/bin");
        for dir in ["/srv", "../x", "a/../../b"] {
            let e = config(json!({ "replicas": 1, "command": "sh", "workingDir": dir, "source": pin })).unwrap_err();
            assert!(e.contains("configuration.workingDir"), "{dir}: {e}");
        }
        let mut bad = pin.clone();
        bad["commit"] = json!("main");
        let e = config(json!({ "replicas": 1, "command": "sh", "source": bad })).unwrap_err();
        assert!(e.contains("configuration.source"), "{e}");
        assert_eq!(SourcePin::dir_of("ferry.json"), "");
        assert_eq!(SourcePin::dir_of("a/b/ferry.json"), "a/b");
    }
}
