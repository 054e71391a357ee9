//! The secrets service: the secrets of deployments and of environments (a deployment runs with
//! its environment's, overridden by its own of the same name).
//!
//! * Values are sealed at rest ([`crypto`]: AES-256-GCM under the master key, associated data
//!   naming the row) and never leave the control plane in clear except inside an agent's mTLS
//!   session (`quic/intent.rs` opens them at that edge). The API shows names, versions and
//!   `lastRotated`; audit records name secrets and versions; nothing logs a value.
//! * `PUT` is declarative: the body is the whole set, names left out are deleted. A value that
//!   did not change keeps its version; a changed one gets version + 1.
//! * A change is rolled out like any change of the deployments it concerns: each gets a new
//!   revision whose configuration pins the secrets' versions (names and versions only,
//!   [`SecretPin`]), stored with its operation in the transaction that stores the secrets, so the
//!   replicas are replaced with the new values and revisions never hold a value.

pub mod crypto;
mod rotate;

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use ferry_protocol::{SecretMaterial, SecretValue};
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Scope, perm};
use crate::context::RequestContext;
use crate::deployments::{not_found, repinned};
use crate::ids::{now_ms, rfc3339};
use crate::model::SecretPin;
use crate::reconcile::Parsed;
use crate::store::{
    DeploymentRecord, EnvironmentRecord, OperationRecord, SecretRecord, SecretScope, SecretWrite, SecretsWritten,
};
pub use crypto::{MasterKey, OpenError, Sealed};
pub use rotate::{RotateError, Rotation, rotate_master_key};

/// At most this many secrets per deployment, and per environment.
pub const MAX_SECRETS: usize = 100;
/// Names are environment variable names of at most this many characters.
pub const MAX_NAME_LEN: usize = 128;
/// Values are at most 64 KiB.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// The result of a `PUT`: the scope's secrets now (sealed; render names and versions only), and
/// the operations of the rollouts it started.
pub struct Written {
    pub secrets: Vec<SecretRecord>,
    pub operations: Vec<OperationRecord>,
}

pub struct Secrets<'a> {
    state: &'a AppState,
}

impl<'a> Secrets<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// A deployment's own secrets.
    pub async fn of_deployment(&self, ctx: &RequestContext, id: &str) -> ApiResult<Vec<SecretRecord>> {
        let d = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&d.environment).await?;
        ctx.require(perm::SECRET_READ, Scope::env(env.scope(), Some(&d.workspace)), || not_found(id))?;
        Ok(self.state.store.list_secrets(SecretScope::Deployment, id).await?)
    }

    /// Replaces a deployment's secrets with `values` and rolls the change out.
    pub async fn set_for_deployment(
        &self,
        ctx: &RequestContext,
        id: &str,
        values: BTreeMap<String, String>,
    ) -> ApiResult<Written> {
        validate(&values)?;
        let d = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&d.environment).await?;
        ctx.require(perm::SECRET_UPDATE, Scope::env(env.scope(), Some(&d.workspace)), || not_found(id))?;
        crate::environments::unlocked(&env)?;
        let written = self.write(ctx, SecretScope::Deployment, id, "deployment.secrets.update", Some(values)).await?;
        let written = Written::from(written.ok_or_else(|| not_found(id))?);
        for op in &written.operations {
            self.reconcile_now(&op.deployment_id).await;
        }
        Ok(written)
    }

    /// An environment's secrets (by environment id or name).
    pub async fn of_environment(
        &self,
        ctx: &RequestContext,
        key: &str,
    ) -> ApiResult<(EnvironmentRecord, Vec<SecretRecord>)> {
        let env = self.environment(key).await?;
        ctx.require(perm::SECRET_READ, Scope::env(env.scope(), None), || environment_not_found(key))?;
        let secrets = self.state.store.list_secrets(SecretScope::Environment, &env.id).await?;
        Ok((env, secrets))
    }

    /// Replaces an environment's secrets with `values` and rolls the change out to every
    /// deployment of the environment (each is queued for its reconcile).
    pub async fn set_for_environment(
        &self,
        ctx: &RequestContext,
        key: &str,
        values: BTreeMap<String, String>,
    ) -> ApiResult<(EnvironmentRecord, Written)> {
        validate(&values)?;
        let env = self.environment(key).await?;
        // Environment secrets reach every workspace's deployments there: an unscoped binding.
        ctx.require(perm::SECRET_UPDATE, Scope::env(env.scope(), None), || environment_not_found(key))?;
        crate::environments::unlocked(&env)?;
        let written =
            self.write(ctx, SecretScope::Environment, &env.id, "environment.secrets.update", Some(values)).await?;
        let written = Written::from(written.ok_or_else(|| environment_not_found(key))?);
        self.state.reconciler.enqueue_all(written.operations.iter().map(|op| op.deployment_id.clone()));
        Ok((env, written))
    }

    /// The secrets of each of these environments (already authorized by the caller), for their
    /// listing: `environment id → secrets`.
    pub async fn of_environments(&self, envs: &[&EnvironmentRecord]) -> ApiResult<HashMap<String, Vec<SecretRecord>>> {
        let mut out = HashMap::new();
        for e in envs {
            out.insert(e.id.clone(), self.state.store.list_secrets(SecretScope::Environment, &e.id).await?);
        }
        Ok(out)
    }

    /// Makes a just-created deployment's revision pin the secrets and environment variables
    /// there are now (its environment's may have changed between reading them and storing the
    /// deployment): returns the deployment as it is, or with a new revision and its operation.
    pub async fn repin(
        &self,
        ctx: &RequestContext,
        environment_id: &str,
        record: DeploymentRecord,
        op: OperationRecord,
    ) -> ApiResult<(DeploymentRecord, OperationRecord)> {
        let env_secrets = self.state.store.list_secrets(SecretScope::Environment, environment_id).await?;
        let variables = self.state.store.get_environment(environment_id).await?.map(|e| e.variables);
        let config = Parsed::from_record(record.clone())?.config;
        if config.secrets == pins(&env_secrets, &[]) && variables.is_none_or(|v| v == config.environment_variables) {
            return Ok((record, op));
        }
        let written = self.write(ctx, SecretScope::Deployment, &record.id, "", None).await?;
        match written.and_then(|w| w.rolled_out.into_iter().next()) {
            Some(next) => Ok(next),
            None => Ok((record, op)),
        }
    }

    /// Writes one scope's secrets (`None`: none, only re-pin its deployments) under the
    /// store's locks; `None` if the scope does not exist (any more).
    async fn write(
        &self,
        ctx: &RequestContext,
        scope: SecretScope,
        scope_id: &str,
        action: &'static str,
        values: Option<BTreeMap<String, String>>,
    ) -> ApiResult<Option<Rolled>> {
        let key = &self.state.master_key;
        let change = |current: &[SecretRecord]| match &values {
            Some(values) => change(key, ctx, scope, scope_id, action, current, values),
            None => Ok(None),
        };
        // Each deployment pins the secrets that apply to it, and (kept in step here too) its
        // environment's variables.
        let rollout = |d: &DeploymentRecord,
                       environment: Option<&EnvironmentRecord>,
                       env: &[SecretRecord],
                       own: &[SecretRecord]| {
            repinned(d, ctx, |config| {
                config.secrets = pins(env, own);
                if let Some(e) = environment {
                    config.environment_variables.clone_from(&e.variables);
                }
            })
        };
        match self.state.store.write_secrets(scope, scope_id, change, rollout).await?? {
            SecretsWritten::NotFound => Ok(None),
            SecretsWritten::Done { secrets, rolled_out } => Ok(Some(Rolled { secrets, rolled_out })),
        }
    }

    async fn environment(&self, key: &str) -> ApiResult<EnvironmentRecord> {
        self.state.store.get_environment(key).await?.ok_or_else(|| environment_not_found(key))
    }

    /// A failure is logged and retried by the queue: the desired state is safely stored.
    async fn reconcile_now(&self, id: &str) {
        if let Err(e) = self.state.reconciler.reconcile_now(self.state, id).await {
            tracing::warn!(deployment = %id, error = %e, "reconcile after a secrets change failed; it will be retried");
            self.state.reconciler.enqueue(id);
        }
    }
}

/// What [`Secrets::write`] stored.
struct Rolled {
    secrets: Vec<SecretRecord>,
    rolled_out: Vec<(DeploymentRecord, OperationRecord)>,
}

impl From<Rolled> for Written {
    fn from(r: Rolled) -> Self {
        Written { secrets: r.secrets, operations: r.rolled_out.into_iter().map(|(_, op)| op).collect() }
    }
}

/// The scope's new secrets: unchanged values keep their row, changed ones are sealed again with
/// version + 1, new ones start at version 1, names left out are deleted. `None` if nothing
/// changes.
fn change(
    key: &MasterKey,
    ctx: &RequestContext,
    scope: SecretScope,
    scope_id: &str,
    action: &'static str,
    current: &[SecretRecord],
    values: &BTreeMap<String, String>,
) -> ApiResult<Option<SecretWrite>> {
    let now = now_ms();
    let by_name: HashMap<&str, &SecretRecord> = current.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut upserts = Vec::new();
    let mut audited = BTreeMap::new();
    for (name, value) in values {
        let (version, created_at, what) = match by_name.get(name.as_str()) {
            Some(old) => {
                if open(key, old).map_err(|e| rotation_failed(&old.name, e))?.expose() == value {
                    continue;
                }
                (old.version + 1, old.created_at, "updated")
            }
            None => (1, now, "created"),
        };
        let sealed = key.seal(&crypto::associated_data(scope.as_str(), scope_id, name, version), value.as_bytes());
        upserts.push(SecretRecord {
            scope,
            scope_id: scope_id.to_string(),
            name: name.clone(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            key_id: sealed.key_id,
            version,
            created_at,
            updated_at: now,
        });
        audited.insert(name.clone(), json!({ "change": what, "version": version }));
    }
    let deletes: Vec<String> =
        current.iter().filter(|s| !values.contains_key(&s.name)).map(|s| s.name.clone()).collect();
    for s in current.iter().filter(|s| !values.contains_key(&s.name)) {
        audited.insert(s.name.clone(), json!({ "change": "deleted", "version": s.version }));
    }
    if upserts.is_empty() && deletes.is_empty() {
        return Ok(None);
    }
    // Names and versions only: never a value.
    let audit = ctx.audit(action, scope_id, json!({ "secrets": audited }));
    Ok(Some(SecretWrite { upserts, deletes, audit: Some(audit) }))
}

/// Opens a stored secret with `key`.
pub fn open(key: &MasterKey, s: &SecretRecord) -> Result<SecretValue, OpenError> {
    let sealed = Sealed { ciphertext: s.ciphertext.clone(), nonce: s.nonce.clone(), key_id: s.key_id.clone() };
    let aad = crypto::associated_data(s.scope.as_str(), &s.scope_id, &s.name, s.version);
    let clear = key.open(&sealed, &aad)?;
    String::from_utf8(clear).map(SecretValue::new).map_err(|_| OpenError::Malformed("value (not UTF-8)"))
}

/// What a deployment's revision pins: its environment's secrets, overridden by its own.
pub fn pins(environment: &[SecretRecord], own: &[SecretRecord]) -> BTreeMap<String, SecretPin> {
    environment
        .iter()
        .chain(own)
        .map(|s| {
            let pin =
                SecretPin { source: s.scope.as_str().into(), version: s.version, last_rotated: rfc3339(s.updated_at) };
            (s.name.clone(), pin)
        })
        .collect()
}

/// The material an agent gets for a deployment, from the secrets that apply to it (its
/// environment's and its own, in any order): its own win.
pub fn material(key: &MasterKey, secrets: &[&SecretRecord]) -> Result<SecretMaterial, OpenError> {
    let mut ordered: Vec<&SecretRecord> = secrets.to_vec();
    ordered.sort_by_key(|s| s.scope == SecretScope::Deployment);
    let mut env = BTreeMap::new();
    for s in ordered {
        env.insert(s.name.clone(), open(key, s)?);
    }
    Ok(SecretMaterial { env })
}

/// Checks a `PUT` body's set: names, sizes, count. Messages never include a value.
pub fn validate(values: &BTreeMap<String, String>) -> ApiResult<()> {
    if values.len() > MAX_SECRETS {
        return Err(ApiError::validation("secrets", format!("at most {MAX_SECRETS} secrets")));
    }
    for (name, value) in values {
        let field = format!("secrets.{name}");
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            let shown: String = name.chars().take(MAX_NAME_LEN).collect();
            return Err(ApiError::validation(
                "secrets",
                format!(
                    "invalid secret name {shown:?}: an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most \
                     {MAX_NAME_LEN} characters)"
                ),
            ));
        }
        if crate::model::RESERVED_ENV.contains(&name.as_str()) {
            return Err(ApiError::validation(&field, format!("{name} is set by Ferry for every replica")));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(ApiError::validation(
                &field,
                format!("the value of {name} is longer than {MAX_VALUE_LEN} bytes"),
            ));
        }
        // As for `configuration.env`: multi-line values are fine, NUL (which no environment can
        // carry) and other control characters are not.
        if let Some(c) = value.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
            return Err(ApiError::validation(
                &field,
                format!("the value of {name} contains the control character U+{:04X}", u32::from(c)),
            ));
        }
    }
    Ok(())
}

/// A stored secret could not be opened (wrong master key, or an altered row): `ENV_004`.
fn rotation_failed(name: &str, e: OpenError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::SecretRotationFailed,
        "a stored secret could not be decrypted with this server's master key; nothing was changed (see the \
         server log for this request id)",
    )
    .with_details(json!({ "secret": name }))
    .with_cause(e)
}

fn environment_not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::EnvironmentNotFound, format!("environment {key:?} not found"))
        .with_details(json!({ "environmentId": key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scope: SecretScope, name: &str, version: i64) -> SecretRecord {
        let key = MasterKey::from_bytes(&[7; crypto::KEY_LEN]);
        let sealed = key
            .seal(&crypto::associated_data(scope.as_str(), "x", name, version), format!("{name}-{scope:?}").as_bytes());
        SecretRecord {
            scope,
            scope_id: "x".into(),
            name: name.into(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            key_id: sealed.key_id,
            version,
            created_at: 0,
            updated_at: 1_000,
        }
    }

    #[test]
    fn a_deployment_s_own_secrets_override_its_environment_s() {
        let env = [record(SecretScope::Environment, "A", 3), record(SecretScope::Environment, "B", 1)];
        let own = [record(SecretScope::Deployment, "B", 2)];
        let p = pins(&env, &own);
        assert_eq!(p["A"], SecretPin { source: "environment".into(), version: 3, last_rotated: rfc3339(1_000) });
        assert_eq!((p["B"].source.as_str(), p["B"].version), ("deployment", 2));
        let key = MasterKey::from_bytes(&[7; crypto::KEY_LEN]);
        let all: Vec<&SecretRecord> = own.iter().chain(&env).collect();
        let m = material(&key, &all).unwrap();
        assert_eq!(m.env["A"].expose(), "A-Environment");
        assert_eq!(m.env["B"].expose(), "B-Deployment");
        let wrong = MasterKey::from_bytes(&[8; crypto::KEY_LEN]);
        assert!(matches!(material(&wrong, &all), Err(OpenError::WrongKey { .. })));
    }

    #[test]
    fn names_sizes_and_counts_are_checked_without_echoing_values() {
        let ok: BTreeMap<String, String> =
            [("DB_PASSWORD", "multi\nline\tvalue"), ("_x1", ""), ("A", &"v".repeat(MAX_VALUE_LEN))]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into();
        validate(&ok).unwrap();
        let cases: [(&str, String, &str); 7] = [
            ("1ABC", "v".into(), "secrets"),
            ("A-B", "v".into(), "secrets"),
            ("", "v".into(), "secrets"),
            (&"N".repeat(MAX_NAME_LEN + 1), "v".into(), "secrets"),
            ("PORT", "v".into(), "secrets.PORT"),
            ("BIG", "s3cr3t".repeat(MAX_VALUE_LEN), "secrets.BIG"),
            ("NUL", "s3cr3t\0".into(), "secrets.NUL"),
        ];
        for (name, value, field) in cases {
            let e = validate(&BTreeMap::from([(name.to_string(), value)])).unwrap_err();
            assert_eq!((e.code, e.details["field"].as_str()), (ErrorCode::InvalidValue, Some(field)), "{name:?}");
            assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        }
        let many: BTreeMap<String, String> = (0..=MAX_SECRETS).map(|i| (format!("S{i}"), String::new())).collect();
        assert_eq!(validate(&many).unwrap_err().details["field"], "secrets");
    }
}
