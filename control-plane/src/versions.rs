//! The versions service: a deployment's immutable, named versions (`/versions`, `/config`,
//! `/env`) and the rules for choosing where a rollback goes. Handlers (`api/versions.rs`) parse
//! and render; deploying and rolling back are changes of the deployment, so they go through
//! [`Deployments::change`](crate::deployments::Deployments::change) like every other change
//! (permission, lock, change window, approvals, one read-modify-write under the row lock).
//!
//! A version freezes a template: the configuration without the replica count (deploying a
//! version keeps the deployment's, like `kubectl rollout undo`) and without what Ferry sets
//! itself (pinned secrets, environment variables — a deployed version runs with the current
//! ones). Once created it never changes, except for its status: `available`, `failed` (the
//! operation that deployed it failed at its progress deadline, or a rollback said so) or
//! `rolled_back`. A rollback never goes to a version that is not `available`; deploying one
//! explicitly is the user's call and allowed.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Permission, perm};
use crate::context::RequestContext;
use crate::deployments::{Deployments, invalid};
use crate::domain::VersionStatus;
use crate::ids::now_ms;
use crate::model::{self, Configuration};
use crate::reconcile::Parsed;
use crate::sources::{SourceConfiguration, Sources};
use crate::store::{DeploymentRecord, StoreError, VersionCreate, VersionRecord, Write};

/// Longest description or rollback reason.
pub const MAX_TEXT_LEN: usize = 1024;

/// A version to create, as a request gives it.
#[derive(Debug, Clone, Default)]
pub struct NewVersion {
    /// `None`: a generated name (`v<N>`).
    pub version: Option<String>,
    /// A full configuration (`replicas` may be left out). `None`: the running one's template
    /// (with `env`, if given).
    pub configuration: Option<Value>,
    /// With no configuration: the running template with this `env`.
    pub env: Option<BTreeMap<String, String>>,
    pub description: Option<String>,
    /// A Git-sourced deployment's new version from a commit: the ref is resolved and the
    /// deployment file read at that commit ([`Sources::resolve_source`]); the version runs its
    /// configuration pinned to that commit. Exclusive with `configuration`.
    pub source: Option<SourceConfiguration>,
}

pub struct Versions<'a> {
    state: &'a AppState,
}

impl<'a> Versions<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// A page of the deployment's versions, newest first, with the deployment.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        id: &str,
        page: i64,
        page_size: i64,
    ) -> ApiResult<(DeploymentRecord, Vec<VersionRecord>, i64)> {
        let d = Deployments::new(self.state).load_for(ctx, id, perm::VERSION_READ).await?;
        let (rows, total) = self.state.store.list_versions(id, page, page_size).await?;
        Ok((d.record, rows, total))
    }

    pub async fn get(
        &self,
        ctx: &RequestContext,
        id: &str,
        version: &str,
    ) -> ApiResult<(DeploymentRecord, VersionRecord)> {
        let d = Deployments::new(self.state).load_for(ctx, id, perm::VERSION_READ).await?;
        validate_path_version(version)?;
        let v = self.state.store.get_version(id, version).await?.ok_or_else(|| not_found(id, version))?;
        Ok((d.record, v))
    }

    /// Stores a new version without deploying it (`p`: `version:create`, or
    /// `deployment:update` for `PUT …/config|env` with `deploy: false`). A version of that name
    /// with the same template is answered as it is (`false`: nothing was created); one with
    /// another template is `DEPLOY_010`. With `if_match`, only if the deployment has not
    /// changed since (412).
    pub async fn create(
        &self,
        ctx: &RequestContext,
        id: &str,
        if_match: Option<i64>,
        new: NewVersion,
        p: Permission,
    ) -> ApiResult<Stored> {
        if let Some(v) = &new.version {
            model::validate_version_field("version", v).map_err(invalid)?;
        }
        validate_text("description", new.description.as_deref())?;
        if new.source.is_some() && (new.configuration.is_some() || new.env.is_some()) {
            return Err(ApiError::validation(
                "sourceConfiguration",
                "give either a configuration or a sourceConfiguration, not both",
            ));
        }
        // Permission first: nobody makes the server fetch without it.
        let running = Deployments::new(self.state).load_for(ctx, id, p).await?;
        let (template, name, pin) = match new.source {
            Some(sc) => {
                let (template, name, pin) = self.template_from_git(&running, &sc, new.version).await?;
                (template, Some(name), Some(pin))
            }
            None => (template_for(&running, new.configuration, new.env)?, new.version, None),
        };
        let who = ctx.principal.audit_name();
        let description = new.description.unwrap_or_default();
        let written = self
            .state
            .store
            .create_version(id, if_match, name.as_deref(), |_, name| {
                let now = now_ms();
                let mut v = VersionRecord::new(id, name, template.to_string(), who.clone(), now);
                v.description = description.clone();
                v.source.clone_from(&pin);
                let mut details = json!({ "version": name, "description": description });
                if let Some(pin) = &pin {
                    details["source"] = serde_json::from_str(pin).unwrap_or(Value::Null);
                }
                let audit = ctx.audit("deployment.version.create", id, details);
                (v, audit)
            })
            .await?;
        let active = running.record.active_version;
        match written {
            Write::Done(VersionCreate::Created(version)) => Ok(Stored { version, fresh: true, active }),
            Write::Done(VersionCreate::Existing(version)) => {
                if model::same_template(&template, &template_of(&version)?) {
                    Ok(Stored { version, fresh: false, active })
                } else {
                    Err(exists(id, &version.version))
                }
            }
            Write::NotFound => Err(crate::deployments::not_found(id)),
            Write::Conflict { current } => Err(crate::deployments::stale(current)),
            // Creating a version changes nothing a deployment holds.
            Write::LimitExceeded(e) => {
                Err(ApiError::internal().with_cause(format!("a version create hit a limit: {e:?}")))
            }
        }
    }
}

/// What [`Versions::create`] stored: the version, whether it is new (else the same one existed),
/// and the deployment's active version (creating one does not change it).
pub struct Stored {
    pub version: VersionRecord,
    pub fresh: bool,
    pub active: String,
}

impl Versions<'_> {
    /// A version of a Git-sourced deployment from `sc`: the ref resolved to a commit and the
    /// deployment file read there (its configuration, pinned to the commit; the running
    /// replica count). Named `version`, else the file's `activeVersion`, else `git-<commit>`.
    /// Returns the template, the name and the pin (JSON) it records as its source.
    async fn template_from_git(
        &self,
        running: &Parsed,
        sc: &SourceConfiguration,
        version: Option<String>,
    ) -> ApiResult<(Value, String, String)> {
        if running.config.source.is_none() {
            return Err(ApiError::validation(
                "sourceConfiguration",
                format!(
                    "deployment {:?} is not Git-sourced (its source is direct): its versions take a configuration",
                    running.record.id
                ),
            ));
        }
        let resolved = Sources::new(self.state).resolve_source(sc).await?;
        let name =
            version.or_else(|| resolved.file.active_version.clone()).unwrap_or_else(|| resolved.default_version());
        model::validate_version_field("version", &name).map_err(invalid)?;
        let mut config = resolved.file.configuration;
        config.replicas = running.config.replicas;
        config.validate().map_err(invalid)?;
        let pin = serde_json::to_string(&config.source).expect("a pin serializes");
        Ok((config.template(), name, pin))
    }
}

/// The template a new version freezes: of the configuration given (its `replicas` may be left
/// out), else of the running configuration (with `env` replaced, if given).
fn template_for(
    running: &Parsed,
    configuration: Option<Value>,
    env: Option<BTreeMap<String, String>>,
) -> ApiResult<Value> {
    let config = match configuration {
        Some(c) => {
            let mut c = Configuration::from_request(c, running.config.replicas).map_err(invalid)?;
            // The commit of a Git source is Ferry's to say (`crate::sources`): the running one.
            c.source.clone_from(&running.config.source);
            c
        }
        None => {
            let mut c = running.config.clone();
            if let Some(env) = env {
                c.env = env;
            }
            c.validate().map_err(invalid)?;
            c
        }
    };
    Ok(config.template())
}

/// A stored version's template.
pub fn template_of(v: &VersionRecord) -> ApiResult<Value> {
    serde_json::from_str(&v.configuration).map_err(|e| {
        StoreError::Corrupt { table: "deployment_versions", column: "configuration", message: e.to_string() }.into()
    })
}

/// Whether a rollback (from the active version `active`) may go to `target`; why not otherwise.
pub fn rollback_target_ok(target: &VersionRecord, active: &str) -> Result<(), String> {
    let v = &target.version;
    if v == active {
        return Err(format!("{v} is the active version already"));
    }
    if target.deployed_seq.is_none() {
        return Err(format!("{v} was never deployed, so it is not a rollback target; deploy it instead"));
    }
    if target.status != VersionStatus::Available {
        let why = if target.status_reason.is_empty() { String::new() } else { format!(": {}", target.status_reason) };
        return Err(format!(
            "{v} is marked {}{why}; rollbacks skip it (deploy it explicitly if you mean it)",
            target.status
        ));
    }
    Ok(())
}

/// The previous good version: of the deployment's deploys (`history`, last deployed first), the
/// most recent one of another version than the active one that is still `available`.
pub fn previous_good<'h>(history: &'h [VersionRecord], active: &str) -> Result<&'h VersionRecord, String> {
    history.iter().find(|v| rollback_target_ok(v, active).is_ok()).ok_or_else(|| {
        let skipped: Vec<String> = history
            .iter()
            .filter(|v| v.version != active && v.status != VersionStatus::Available)
            .map(|v| format!("{} ({})", v.version, v.status))
            .collect();
        if skipped.is_empty() {
            format!("no version was deployed before {active}, so there is nothing to roll back to")
        } else {
            format!(
                "no earlier deployed version is available to roll back to from {active} (skipped: {})",
                skipped.join(", ")
            )
        }
    })
}

/// A version named in a path: one that cannot exist is that version's 404.
pub fn validate_path_version(version: &str) -> ApiResult<()> {
    model::validate_version_field("version", version).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::VersionNotFound,
            "version not found: version names are 1-64 characters of [A-Za-z0-9._+-]",
        )
        .with_details(json!({ "version": version }))
    })
}

/// A description or reason: at most [`MAX_TEXT_LEN`] bytes, no control characters but newlines.
pub fn validate_text(field: &str, text: Option<&str>) -> ApiResult<()> {
    if let Some(t) = text
        && (t.len() > MAX_TEXT_LEN || t.chars().any(|c| c.is_control() && c != '\n'))
    {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {MAX_TEXT_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

pub fn not_found(deployment_id: &str, version: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::VersionNotFound,
        format!("deployment {deployment_id:?} has no version {version:?}"),
    )
    .with_details(json!({ "deploymentId": deployment_id, "version": version }))
}

pub fn exists(deployment_id: &str, version: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::VersionExists,
        format!(
            "version {version:?} of deployment {deployment_id:?} exists with another configuration; versions are \
             immutable: choose a new name"
        ),
    )
    .with_details(json!({ "deploymentId": deployment_id, "version": version }))
}

pub fn rollback_refused(deployment_id: &str, reason: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::RollbackFailed, format!("cannot roll back: {reason}"))
        .with_details(json!({ "deploymentId": deployment_id, "reason": reason }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, deployed_seq: Option<i64>, status: VersionStatus) -> VersionRecord {
        let mut v = VersionRecord::new("d", name, "{}".into(), "admin:a".into(), 0);
        v.deployed_seq = deployed_seq;
        v.status = status;
        v
    }

    /// Deploys in order v1, v2, v3: history is last deployed first.
    fn history(rows: &[(&str, VersionStatus)]) -> Vec<VersionRecord> {
        let n = rows.len() as i64;
        rows.iter().enumerate().map(|(i, (name, status))| version(name, Some(n - i as i64), *status)).collect()
    }

    #[test]
    fn the_previous_good_version_is_the_last_deployed_available_other_one() {
        use VersionStatus::*;
        type Case<'a> = (&'a [(&'a str, VersionStatus)], &'a str, Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            // v3 active: back to v2.
            (&[("v3", Available), ("v2", Available), ("v1", Available)], "v3", Ok("v2")),
            // v2 failed: skipped.
            (&[("v3", Available), ("v2", Failed), ("v1", Available)], "v3", Ok("v1")),
            (&[("v3", Available), ("v2", RolledBack), ("v1", Available)], "v3", Ok("v1")),
            // After a rollback v2 → v1 (v2 rolled back), nothing is left.
            (&[("v1", Available), ("v2", RolledBack)], "v1", Err("no earlier deployed version is available")),
            // The active version is never its own target, even if it was deployed before too.
            (&[("v1", Available), ("v2", Available), ("v1", Available)], "v1", Ok("v2")),
            // A failed active version can still be rolled back from.
            (&[("v2", Failed), ("v1", Available)], "v2", Ok("v1")),
            (&[("v1", Available)], "v1", Err("no version was deployed before v1")),
            (&[], "v1", Err("nothing to roll back to")),
        ];
        for (rows, active, want) in cases {
            let h = history(rows);
            let got = previous_good(&h, active).map(|v| v.version.as_str());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{rows:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{rows:?}: {g}"),
                (g, w) => panic!("{rows:?}: got {g:?}, want {w:?}"),
            }
        }
        let h = history(&[("v3", Available), ("v2", Failed), ("v1", RolledBack)]);
        assert_eq!(
            previous_good(&h, "v3").unwrap_err(),
            "no earlier deployed version is available to roll back to from v3 (skipped: v2 (failed), v1 (rolled_back))"
        );
    }

    #[test]
    fn named_rollback_targets_must_be_earlier_good_deploys() {
        use VersionStatus::*;
        assert!(rollback_target_ok(&version("v1", Some(1), Available), "v2").is_ok());
        let refusal = |v: VersionRecord| rollback_target_ok(&v, "v2").unwrap_err();
        assert!(refusal(version("v2", Some(2), Available)).contains("active version already"));
        assert!(refusal(version("v3", None, Available)).contains("never deployed"));
        let mut failed = version("v1", Some(1), Failed);
        failed.status_reason = "progress deadline exceeded".into();
        assert_eq!(
            refusal(failed),
            "v1 is marked failed: progress deadline exceeded; rollbacks skip it (deploy it explicitly if you mean it)"
        );
        assert!(refusal(version("v1", Some(1), RolledBack)).contains("marked rolled_back"));
    }

    #[test]
    fn version_names_and_texts_are_checked() {
        for ok in ["v1", "1.2.3+build-4", "release_7", &"a".repeat(64)] {
            assert!(model::validate_version_field("version", ok).is_ok(), "{ok}");
            assert!(validate_path_version(ok).is_ok());
        }
        for bad in ["", "v 1", "v/1", "é", &"a".repeat(65)] {
            assert_eq!(model::validate_version_field("version", bad).unwrap_err().field, "version", "{bad:?}");
            assert_eq!(validate_path_version(bad).unwrap_err().code, ErrorCode::VersionNotFound);
        }
        assert!(validate_text("reason", Some("bad deploy\nsee incident 7")).is_ok());
        assert!(validate_text("reason", Some("bell\u{7}")).is_err());
        assert!(validate_text("reason", Some(&"x".repeat(MAX_TEXT_LEN + 1))).is_err());
    }

    #[test]
    fn templates_leave_out_replicas_and_what_ferry_sets() {
        let c: Configuration = serde_json::from_value(json!({
            "replicas": 3, "command": "/bin/web", "env": { "GREETING": "one" },
            "secrets": { "DB": { "source": "deployment", "version": 2, "lastRotated": "x" } }
        }))
        .unwrap();
        let t = c.template();
        assert!(t.get("replicas").is_none() && t.get("secrets").is_none(), "{t}");
        assert_eq!(t["env"]["GREETING"], "one");
        // Running it keeps the deployment's replicas and secrets.
        let mut running = c.clone();
        running.replicas = 5;
        let back = Configuration::from_template(&t, &running).unwrap();
        assert_eq!((back.replicas, back.secrets.len()), (5, 1));
        assert_eq!(back.template(), t);
        // The same template with its defaults written out is the same template.
        let explicit = json!({ "command": "/bin/web", "env": { "GREETING": "one" }, "restartPolicy": "always" });
        assert!(model::same_template(&explicit, &t));
        assert!(!model::same_template(&json!({ "command": "/bin/web", "env": { "GREETING": "two" } }), &t));
        // The stored form of a revision's spec, as the migration computes it.
        let stored = model::version_template(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), t);
        // A request may leave replicas out, and what it says about secrets is ignored.
        let req =
            json!({ "command": "/bin/web", "secrets": { "X": { "source": "d", "version": 1, "lastRotated": "" } } });
        let parsed = Configuration::from_request(req, 4).unwrap();
        assert_eq!((parsed.replicas, parsed.secrets.len()), (4, 0));
        let e = Configuration::from_request(json!({ "command": "/bin/web", "colour": 1 }), 1).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }
}
