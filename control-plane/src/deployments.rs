//! The deployments service: the rules of the deployments area (validation, environment locks,
//! permission, revisions, operations, audit), applied once for every mutation whichever
//! endpoint asks for it. Handlers (`api/deployments.rs`) only parse and render; the store only
//! stores; the reconciler turns what this writes into intent.
//!
//! Every check of permission names the deployment's environment and workspace (the requested
//! one on create, the stored one after), so a caller whose role bindings do not reach the
//! workspace gets `DEPLOY_006` (404) as if the deployment did not exist, and lists show only the
//! (workspace, environment) pairs the caller may read (filtered in SQL, so totals are right).
//!
//! Every mutation: checks permission for the deployment's environment, that the environment is
//! not locked and that its change window is open, validates, then either
//! * writes the new desired state, its operation (superseding the deployment's open ones) and its
//!   audit record in one transaction, and reconciles the deployment at once so the answer already
//!   reflects its new intent; or
//! * when the environment requires approval (or the window is closed and the caller asked to
//!   wait for it), stores the exact request as a pending change with a waiting operation
//!   ([`crate::approvals`]), which applies it later through the same `apply_*` functions.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::approvals::{Approvals, Deferred, NewPending, PendingRequest};
use crate::audit::mask::changes;
use crate::authz::{Permission, Scope, perm};
use crate::context::RequestContext;
use crate::domain::{ApprovalStatus, DesiredState, OperationKind, OperationStatus, VersionStatus};
use crate::ids::{now_ms, random_id};
use crate::model::{self, Configuration, Invalid, TargetJson};
use crate::reconcile::Parsed;
use crate::status::Derived;
use crate::store::{
    Claim, CreateRefusal, DEFAULT_WORKSPACE, DeploymentFilter, DeploymentRecord, EnvironmentRecord, OperationRecord,
    SecretScope, StatusSummary, VersionMark, VersionReads, VersionRecord, VersionsRead, VersionsWrite, Visibility,
    Write,
};
use crate::versions;
use crate::workspaces::{AiZones, Projects, Workspaces, named_workspace_not_found};

/// How a mutation was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `?waitForWindow=true`: outside the change window, store the change and apply it when the
    /// window opens instead of refusing it with `ENV_005`.
    pub wait_for_window: bool,
}

/// What became of a mutation: applied now, or stored as a pending change.
pub enum Outcome<T> {
    Applied(T),
    Deferred(Box<Deferred>),
}

/// A pending change being applied: the claim that consumes it in the write's transaction, its
/// waiting operation (which goes on under the same id) and who approved it.
pub(crate) struct PendingApply {
    pub claim: Claim,
    pub operation: OperationRecord,
    pub approved_by: Option<String>,
}

/// The permission a change of this kind needs: scaling has its own (the seed's
/// `deployment:scale`); every other change of the configuration or of the desired state is
/// `deployment:update`.
pub fn permission_of(kind: OperationKind) -> Permission {
    match kind {
        OperationKind::Create => perm::DEPLOYMENT_CREATE,
        OperationKind::Scale => perm::DEPLOYMENT_SCALE,
        OperationKind::Delete => perm::DEPLOYMENT_DELETE,
        OperationKind::Update | OperationKind::Start | OperationKind::Stop | OperationKind::Restart => {
            perm::DEPLOYMENT_UPDATE
        }
        OperationKind::Deploy => perm::VERSION_DEPLOY,
        OperationKind::Rollback => perm::ROLLBACK_EXECUTE,
        OperationKind::Promote => perm::DEPLOYMENT_PROMOTE,
    }
}

/// Where a promoted version comes from and goes to (`crate::promotions`, which resolved it):
/// named by the change it makes, its audit record and its pending change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Promotion {
    pub source_deployment_id: String,
    pub source_environment: String,
    pub target_environment: String,
    pub version: String,
}

/// A deployment to create, as the caller described it (and as a pending change keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDeployment {
    pub name: String,
    pub environment: String,
    pub version: String,
    pub target: TargetJson,
    pub configuration: Configuration,
    /// `direct` (or `None`), or `github` for a deployment whose configuration pins a Git
    /// source (only `crate::sources` creates those).
    pub source: Option<String>,
    /// By id or name; `None`: `default`.
    pub workspace: Option<String>,
    /// A project of that workspace, by id or name.
    pub project: Option<String>,
    /// An AI zone shared or dedicated to that workspace, by id or name.
    pub ai_zone: Option<String>,
    /// Created by promoting a version from the previous environment (`crate::promotions`):
    /// needs `deployment:promote` instead of `deployment:create`, and its operation is a
    /// `promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

impl NewDeployment {
    fn kind(&self) -> OperationKind {
        if self.promotion.is_some() { OperationKind::Promote } else { OperationKind::Create }
    }
}

/// What a create names, looked up: its environment, workspace (name), project and zone (ids).
pub(crate) struct Resolved {
    env: EnvironmentRecord,
    workspace: String,
    project: Option<String>,
    ai_zone: Option<String>,
}

/// A change to an existing deployment's desired state. Stored as JSON in pending changes: new
/// variants and fields are only ever added (optional ones), so stored changes keep parsing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Change {
    /// `PUT /v1/deployments/{id}` (and `PUT …/config`): a new target, and/or a configuration
    /// and/or a version name. A name of an existing version deploys it (a configuration that
    /// differs from it is refused: versions are immutable); a new name creates that version (of
    /// the configuration, or of the running one) and deploys it; a configuration whose template
    /// differs from the running one, without a name, creates a generated version and deploys it.
    /// A configuration's `replicas` applies either way.
    Update {
        version: Option<String>,
        target: Option<TargetJson>,
        configuration: Option<Box<Configuration>>,
        /// The description of a version this change creates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    Scale(u32),
    Start,
    Stop,
    Restart,
    /// Deploys an existing version, keeping the replica count.
    Deploy {
        version: String,
    },
    /// Rolls back from the active version `from` to `to` (both resolved when the rollback is
    /// asked for, so an approver approves exactly this), marking `from` `rolled_back` (or
    /// `failed`). Refused if the active version is no longer `from` when it applies.
    #[serde(rename_all = "camelCase")]
    Rollback {
        to: Option<String>,
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default)]
        mark_failed: bool,
    },
    /// `PUT …/env`: the running configuration with this `env`, as a new version (named, or
    /// generated) deployed at once.
    Env {
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// `POST …/promote` of the same-named deployment in the previous environment: deploys the
    /// version `promotion.version` with exactly `template` (the source's frozen template, its
    /// Git pin included): the existing version of that name if it has that template (another
    /// one is `DEPLOY_010`), else a new one. `replicas`, if given, applies too.
    Promote {
        promotion: Promotion,
        template: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
    },
}

/// What a change does with the deployment's versions (turned into a [`VersionsWrite`] with its
/// audit records).
#[derive(Default)]
struct Placed {
    create: Option<VersionRecord>,
    deployed: bool,
    mark: Option<VersionMark>,
}

/// Who makes a change, and when (for the versions it creates or marks).
struct Author<'a> {
    deployment_id: &'a str,
    who: &'a str,
    now: i64,
}

impl Change {
    fn kind(&self) -> OperationKind {
        match self {
            Change::Update { .. } | Change::Env { .. } => OperationKind::Update,
            Change::Scale(_) => OperationKind::Scale,
            Change::Start => OperationKind::Start,
            Change::Stop => OperationKind::Stop,
            Change::Restart => OperationKind::Restart,
            Change::Deploy { .. } => OperationKind::Deploy,
            Change::Rollback { .. } => OperationKind::Rollback,
            Change::Promote { .. } => OperationKind::Promote,
        }
    }

    fn permission(&self) -> Permission {
        permission_of(self.kind())
    }

    /// Shape checks: bad input is a 400 whatever the deployment's state (a version named in a
    /// path that cannot exist is that version's 404).
    fn validate(&self) -> ApiResult<()> {
        match self {
            Change::Update { version, target, configuration, description } => {
                if let Some(v) = version {
                    model::validate_version(v).map_err(invalid)?;
                }
                if let Some(c) = configuration {
                    c.validate().map_err(invalid)?;
                }
                if let Some(t) = target {
                    t.validate().map_err(invalid)?;
                }
                versions::validate_text("description", description.as_deref())?;
            }
            Change::Deploy { version } => versions::validate_path_version(version)?,
            Change::Rollback { to, reason, .. } => {
                if let Some(v) = to {
                    versions::validate_path_version(v)?;
                }
                versions::validate_text("reason", reason.as_deref())?;
            }
            Change::Env { version, description, .. } => {
                if let Some(v) = version {
                    model::validate_version_field("version", v).map_err(invalid)?;
                }
                versions::validate_text("description", description.as_deref())?;
            }
            // The replica count is checked with the configuration it applies to.
            Change::Promote { promotion, template, .. } => {
                model::validate_version_field("version", &promotion.version).map_err(invalid)?;
                if !template.is_object() {
                    return Err(ApiError::validation("configuration", "a version's configuration must be an object"));
                }
            }
            Change::Scale(_) | Change::Start | Change::Stop | Change::Restart => {}
        }
        Ok(())
    }

    /// What the change reads of the deployment's versions under its row lock.
    fn version_reads(&self) -> VersionReads<'_> {
        match self {
            Change::Update { version, configuration, .. } => VersionReads {
                named: version.as_deref(),
                auto_name: version.is_none() && configuration.is_some(),
                ..Default::default()
            },
            Change::Env { version, .. } => {
                VersionReads { named: version.as_deref(), auto_name: version.is_none(), ..Default::default() }
            }
            Change::Deploy { version } => VersionReads { named: Some(version), ..Default::default() },
            Change::Rollback { to, .. } => VersionReads { named: to.as_deref(), ..Default::default() },
            Change::Promote { promotion, .. } => VersionReads { named: Some(&promotion.version), ..Default::default() },
            Change::Scale(_) | Change::Start | Change::Stop | Change::Restart => VersionReads::default(),
        }
    }

    /// Applies the change to a parsed deployment (validated on the result), with what was read
    /// of its versions under the lock; says what becomes of its versions.
    fn apply(&self, p: &mut Parsed, seen: VersionsRead, by: &Author<'_>) -> ApiResult<Placed> {
        let placed = match self {
            Change::Update { version, target, configuration, description } => {
                if let Some(t) = target {
                    p.target = t.clone();
                }
                // The commit of a Git source is Ferry's to say (`crate::sources`): a request's is
                // ignored, the running one stays.
                let template = configuration.as_ref().map(|c| {
                    let mut c = (**c).clone();
                    c.source.clone_from(&p.config.source);
                    c.template()
                });
                let replicas = configuration.as_ref().map_or(p.config.replicas, |c| c.replicas);
                place(p, &seen, version.as_deref(), template, replicas, description.as_deref(), by)?
            }
            Change::Env { env, version, description } => {
                let mut config = p.config.clone();
                config.env.clone_from(env);
                config.validate().map_err(invalid)?;
                let replicas = p.config.replicas;
                place(p, &seen, version.as_deref(), Some(config.template()), replicas, description.as_deref(), by)?
            }
            Change::Deploy { version } => {
                let target = seen.named.as_ref().ok_or_else(|| versions::not_found(by.deployment_id, version))?;
                run_version(p, target, p.config.replicas)?;
                Placed { deployed: true, ..Default::default() }
            }
            Change::Rollback { to, from, reason, mark_failed } => {
                let (Some(to), Some(from)) = (to, from) else {
                    return Err(ApiError::internal().with_cause("a rollback applied before it was resolved"));
                };
                if p.record.active_version != *from {
                    return Err(versions::rollback_refused(
                        by.deployment_id,
                        format!(
                            "the active version is {:?} now, not {from:?} as when the rollback was asked for",
                            p.record.active_version
                        ),
                    ));
                }
                let target = seen.named.as_ref().ok_or_else(|| versions::not_found(by.deployment_id, to))?;
                if let Err(why) = versions::rollback_target_ok(target, from) {
                    return Err(versions::rollback_refused(by.deployment_id, why));
                }
                run_version(p, target, p.config.replicas)?;
                let status = if *mark_failed { VersionStatus::Failed } else { VersionStatus::RolledBack };
                let reason = reason.clone().unwrap_or_else(|| format!("rolled back to {to} by {}", by.who));
                Placed {
                    deployed: true,
                    mark: Some(VersionMark { version: from.clone(), status, reason }),
                    ..Default::default()
                }
            }
            Change::Promote { promotion, template, replicas } => {
                if p.record.environment != promotion.target_environment {
                    return Err(ApiError::internal().with_cause(format!(
                        "a promotion to {} applied to a deployment in {}",
                        promotion.target_environment, p.record.environment
                    )));
                }
                let description = format!(
                    "promoted from {} ({}) by {}",
                    promotion.source_environment, promotion.source_deployment_id, by.who
                );
                let replicas = replicas.unwrap_or(p.config.replicas);
                let name = Some(promotion.version.as_str());
                place(p, &seen, name, Some(template.clone()), replicas, Some(&description), by)?
            }
            Change::Scale(replicas) => {
                p.config.replicas = *replicas;
                Placed::default()
            }
            Change::Start => {
                p.record.desired_state = DesiredState::Running;
                Placed::default()
            }
            Change::Stop => {
                p.record.desired_state = DesiredState::Stopped;
                Placed::default()
            }
            Change::Restart => {
                p.record.desired_state = DesiredState::Running;
                p.record.restart_nonce += 1;
                Placed::default()
            }
        };
        p.config.validate().map_err(invalid)?;
        Ok(placed)
    }
}

/// Runs `name` — an existing version (read as `seen.named`), or a new one of `template` (of the
/// running template when `None`) — with `replicas`. Without a name, a template that differs
/// from the running one becomes a new version with a generated name; one that does not only
/// sets `replicas`.
fn place(
    p: &mut Parsed,
    seen: &VersionsRead,
    name: Option<&str>,
    template: Option<Value>,
    replicas: u32,
    description: Option<&str>,
    by: &Author<'_>,
) -> ApiResult<Placed> {
    let running = p.config.template();
    let (name, template) = match (name, template) {
        (None, None) => return Ok(Placed::default()),
        (Some(name), template) => match &seen.named {
            Some(existing) => {
                if let Some(t) = &template
                    && !model::same_template(t, &versions::template_of(existing)?)
                {
                    return Err(versions::exists(by.deployment_id, name));
                }
                run_version(p, existing, replicas)?;
                return Ok(Placed { deployed: true, ..Default::default() });
            }
            None => (name.to_string(), template.unwrap_or(running)),
        },
        (None, Some(t)) if model::same_template(&t, &running) => {
            p.config.replicas = replicas;
            return Ok(Placed::default());
        }
        (None, Some(t)) => {
            let name = seen
                .auto_name
                .clone()
                .ok_or_else(|| ApiError::internal().with_cause("a generated version name was not read"))?;
            (name, t)
        }
    };
    let mut v = VersionRecord::new(by.deployment_id, &name, template.to_string(), by.who.to_string(), by.now);
    v.description = description.unwrap_or_default().to_string();
    run_version(p, &v, replicas)?;
    Ok(Placed { create: Some(v), deployed: true, ..Default::default() })
}

/// Makes `v` the deployment's active version: its template, with `replicas` and the fields Ferry
/// set on the running configuration.
fn run_version(p: &mut Parsed, v: &VersionRecord, replicas: u32) -> ApiResult<()> {
    let mut current = p.config.clone();
    current.replicas = replicas;
    p.config = Configuration::from_template(&versions::template_of(v)?, &current).map_err(invalid)?;
    p.record.active_version.clone_from(&v.version);
    Ok(())
}

/// A change that was accepted: the deployment as it is now (status after its reconcile) and the
/// operation to poll.
pub struct Accepted {
    pub deployment: Parsed,
    pub summary: Option<StatusSummary>,
    pub operation: OperationRecord,
}

/// The deployments service.
pub struct Deployments<'a> {
    state: &'a AppState,
}

impl<'a> Deployments<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        mut new: NewDeployment,
        opts: Options,
    ) -> ApiResult<Outcome<Accepted>> {
        // Only a Git source pins a commit (`crate::sources`, which resolved it).
        if new.source.as_deref() != Some(crate::sources::GITHUB) {
            new.configuration.source = None;
        }
        validate_new(&new)?;
        let workspace_key = new.workspace.as_deref().unwrap_or(DEFAULT_WORKSPACE);
        let env = self.environment(&new.environment).await?;
        // A workspace the caller's bindings do not reach answers like one that does not exist:
        // 404 `WORKSPACE_001`, before anything else about it (its projects, zones, names) is
        // looked at.
        let ws = Workspaces::new(self.state).named(workspace_key).await?;
        // A create by promotion needs `deployment:promote` there instead.
        let kind = new.kind();
        let permission = permission_of(kind);
        ctx.require(permission, Scope::env(env.scope(), Some(&ws.name)), || named_workspace_not_found(workspace_key))?;
        // What it names must exist now (400); a deferred change looks it up again when it applies.
        let named = self.named_in(&ws.name, &new).await?;
        let id = random_id("deploy");
        match self.route(&env, permission, opts)? {
            None => {
                let resolved = Resolved { env, workspace: ws.name, project: named.0, ai_zone: named.1 };
                Ok(Outcome::Applied(self.apply_create(ctx, id, new, None, Some(resolved)).await?))
            }
            Some(status) => {
                let filter = DeploymentFilter {
                    environment: Some(&env.name),
                    workspace: Some(&ws.name),
                    name: Some(&new.name),
                    page: 1,
                    page_size: 1,
                    ..Default::default()
                };
                if self.state.store.list_deployments(filter).await?.1 > 0 {
                    return Err(name_taken(&new.name, &env.name, &ws.name));
                }
                let pending = NewPending {
                    deployment_id: id,
                    deployment_name: new.name.clone(),
                    workspace: ws.name.clone(),
                    action: kind,
                    request: PendingRequest::Create { deployment: Box::new(new) },
                    status,
                    wait_for_window: opts.wait_for_window,
                };
                Ok(Outcome::Deferred(Box::new(Approvals::new(self.state).defer(ctx, &env, pending).await?)))
            }
        }
    }

    /// The project and AI zone a new deployment names, as ids (400 if missing or not usable in
    /// its workspace).
    async fn named_in(&self, workspace: &str, new: &NewDeployment) -> ApiResult<(Option<String>, Option<String>)> {
        let project = match &new.project {
            Some(key) => Some(Projects::new(self.state).for_deployment(workspace, key).await?.id),
            None => None,
        };
        let ai_zone = match &new.ai_zone {
            Some(key) => Some(AiZones::new(self.state).for_deployment(workspace, key).await?.id),
            None => None,
        };
        Ok((project, ai_zone))
    }

    /// Writes a new deployment (permission, lock and window already checked), as `ctx`'s
    /// change; with `pending`, as the approved pending change it consumes.
    /// `resolved`: what the caller already looked up in this request (the direct path); a
    /// deferred change looks everything up again, as it is when it applies.
    pub(crate) async fn apply_create(
        &self,
        ctx: &RequestContext,
        id: String,
        mut new: NewDeployment,
        pending: Option<&PendingApply>,
        resolved: Option<Resolved>,
    ) -> ApiResult<Accepted> {
        validate_new(&new)?;
        let target = new.target.validate().map_err(invalid)?;
        let Resolved { env, workspace, project, ai_zone } = match resolved {
            Some(r) => r,
            None => {
                let workspace_key = new.workspace.as_deref().unwrap_or(DEFAULT_WORKSPACE);
                let env = self.environment(&new.environment).await?;
                let ws = Workspaces::new(self.state).named(workspace_key).await?;
                let (project, ai_zone) = self.named_in(&ws.name, &new).await?;
                Resolved { env, workspace: ws.name, project, ai_zone }
            }
        };
        // Its first revision runs with its environment's secrets (as they are when it applies).
        let env_secrets = self.state.store.list_secrets(SecretScope::Environment, &env.id).await?;
        new.configuration.secrets = crate::secrets::pins(&env_secrets, &[]);
        // And with its environment's variables (under its own env, which wins).
        new.configuration.environment_variables = env.variables.clone();
        let kind = new.kind();
        let now = now_ms();
        let record = DeploymentRecord {
            id,
            name: new.name,
            environment: env.name,
            active_version: new.version,
            spec: serde_json::to_string(&new.configuration).expect("configuration serializes"),
            target: serde_json::to_string(&new.target).expect("target serializes"),
            desired_state: DesiredState::Running,
            restart_nonce: 0,
            revision: 1,
            resource_version: 1,
            created_at: now,
            updated_at: now,
            last_deployed_at: now,
            workspace,
            project_id: project,
            ai_zone_id: ai_zone,
        };
        let op = change_operation(kind, &record.id, ctx, now, pending);
        let mut details = json!({
            "name": record.name,
            "environment": record.environment,
            "version": record.active_version,
            "workspace": record.workspace,
            "projectId": record.project_id,
            "aiZoneId": record.ai_zone_id,
        });
        if let Some(promotion) = &new.promotion {
            details["promotion"] = json!(promotion);
            details["createdDeployment"] = json!(true);
        }
        let details = with_approval(details, pending);
        let after = audit_doc(&record, &new.configuration, &new.target);
        let audit = ctx.audit(kind.audit_action(), &record.id, details).with_changes(changes(None, Some(&after)));
        match self.state.store.create_deployment(&record, &op, &audit, pending.map(|p| &p.claim)).await? {
            Ok(()) => {}
            Err(CreateRefusal::NameTaken) => {
                return Err(name_taken(&record.name, &record.environment, &record.workspace));
            }
            // Deleted since it was looked up.
            Err(CreateRefusal::WorkspaceMissing) => return Err(named_workspace_not_found(&record.workspace)),
            Err(CreateRefusal::ProjectMissing) => {
                let key = new.project.as_deref().unwrap_or_default();
                return Err(crate::workspaces::project_not_in_workspace(&record.workspace, key));
            }
            Err(CreateRefusal::ZoneMissing) => {
                let key = new.ai_zone.as_deref().unwrap_or_default();
                return Err(crate::workspaces::zone_not_usable(&record.workspace, key));
            }
            Err(CreateRefusal::EnvironmentMissing) => return Err(environment_not_found(&record.environment)),
            Err(CreateRefusal::LimitExceeded(e)) => {
                return Err(crate::environments::limit_exceeded(&record.environment, &e));
            }
        }
        self.state.reconciler.directory.deployment_changed(&record.id, Some(target));
        // The environment's secrets and variables may have changed since they were read: pin
        // what is there now.
        let (record, op) = crate::secrets::Secrets::new(self.state).repin(ctx, &env.id, record, op).await?;
        self.accepted(record, op).await
    }

    /// Changes a deployment: one read-modify-write under the row's lock, so concurrent changes
    /// serialize and none is lost; with `if_match`, a stale version is refused (412).
    pub async fn change(
        &self,
        ctx: &RequestContext,
        id: &str,
        if_match: Option<i64>,
        change: Change,
        opts: Options,
    ) -> ApiResult<Outcome<Accepted>> {
        change.validate()?;
        let current = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&current.environment).await?;
        ctx.require(change.permission(), Scope::env(env.scope(), Some(&current.workspace)), || not_found(id))?;
        let change = self.prepare(change, &current).await?;
        match self.route(&env, change.permission(), opts)? {
            None => Ok(Outcome::Applied(self.apply_change(ctx, id, if_match, change, None).await?)),
            Some(status) => {
                // A precondition already stale is refused now; it is checked again on applying.
                if let Some(v) = if_match
                    && v != current.resource_version
                {
                    return Err(stale(current.resource_version));
                }
                let action = change.kind();
                let request = PendingRequest::Change { change, if_match };
                self.defer_existing(ctx, &env, current, action, request, status, opts).await
            }
        }
    }

    /// Checks what a change names among the deployment's versions as it is now (so a request
    /// for a version that does not exist, or a rollback that cannot happen, is refused before it
    /// is stored for approval), and resolves a rollback's versions: from the active one to the
    /// one named, or to the previous good one. Applying checks all of it again under the lock.
    async fn prepare(&self, change: Change, current: &DeploymentRecord) -> ApiResult<Change> {
        let id = current.id.as_str();
        let store = &self.state.store;
        Ok(match change {
            Change::Deploy { version } => {
                store.get_version(id, &version).await?.ok_or_else(|| versions::not_found(id, &version))?;
                Change::Deploy { version }
            }
            Change::Rollback { to, from: _, reason, mark_failed } => {
                let active = current.active_version.clone();
                let to = match to {
                    Some(name) => {
                        let target =
                            store.get_version(id, &name).await?.ok_or_else(|| versions::not_found(id, &name))?;
                        versions::rollback_target_ok(&target, &active)
                            .map_err(|why| versions::rollback_refused(id, why))?;
                        name
                    }
                    None => {
                        let history = store.deploy_history(id).await?;
                        versions::previous_good(&history, &active)
                            .map_err(|why| versions::rollback_refused(id, why))?
                            .version
                            .clone()
                    }
                };
                Change::Rollback { to: Some(to), from: Some(active), reason, mark_failed }
            }
            Change::Update { version: Some(name), target, configuration: Some(c), description } => {
                if let Some(existing) = store.get_version(id, &name).await?
                    && !model::same_template(&c.template(), &versions::template_of(&existing)?)
                {
                    return Err(versions::exists(id, &name));
                }
                Change::Update { version: Some(name), target, configuration: Some(c), description }
            }
            Change::Env { env, version, description } => {
                let parsed = Parsed::from_record(current.clone())?;
                let mut config = parsed.config;
                config.env.clone_from(&env);
                config.validate().map_err(invalid)?;
                if let Some(name) = &version
                    && let Some(existing) = store.get_version(id, name).await?
                    && !model::same_template(&config.template(), &versions::template_of(&existing)?)
                {
                    return Err(versions::exists(id, name));
                }
                Change::Env { env, version, description }
            }
            Change::Promote { promotion, template, replicas } => {
                if let Some(existing) = store.get_version(id, &promotion.version).await?
                    && !model::same_template(&template, &versions::template_of(&existing)?)
                {
                    return Err(versions::exists(id, &promotion.version));
                }
                Change::Promote { promotion, template, replicas }
            }
            other => other,
        })
    }

    /// Stores a change of an existing deployment as pending; the answer shows the deployment as
    /// it still is.
    #[allow(clippy::too_many_arguments)]
    async fn defer_existing<T>(
        &self,
        ctx: &RequestContext,
        env: &EnvironmentRecord,
        current: DeploymentRecord,
        action: OperationKind,
        request: PendingRequest,
        status: ApprovalStatus,
        opts: Options,
    ) -> ApiResult<Outcome<T>> {
        let pending = NewPending {
            deployment_id: current.id.clone(),
            deployment_name: current.name.clone(),
            workspace: current.workspace.clone(),
            action,
            request,
            status,
            wait_for_window: opts.wait_for_window,
        };
        let mut deferred = Approvals::new(self.state).defer(ctx, env, pending).await?;
        let summary = self.state.store.status_summary(&current.id).await?;
        deferred.deployment = Some((Parsed::from_record(current)?, summary));
        Ok(Outcome::Deferred(Box::new(deferred)))
    }

    /// Writes a change (permission, lock and window already checked), as `ctx`'s; with
    /// `pending`, as the approved pending change it consumes.
    pub(crate) async fn apply_change(
        &self,
        ctx: &RequestContext,
        id: &str,
        if_match: Option<i64>,
        change: Change,
        pending: Option<&PendingApply>,
    ) -> ApiResult<Accepted> {
        change.validate()?;
        let kind = change.kind();
        let mut made = None;
        let who = ctx.principal.audit_name();
        let outcome = self
            .state
            .store
            .modify_deployment_versioned(
                id,
                if_match,
                pending.map(|p| &p.claim),
                change.version_reads(),
                |stored, seen| {
                    let before = Parsed::from_record(stored.clone())?;
                    let mut parsed = Parsed::from_record(stored.clone())?;
                    let now = now_ms();
                    let placed = change.apply(&mut parsed, seen, &Author { deployment_id: id, who: &who, now })?;
                    let mut record = parsed.record.clone();
                    // A new template (what the processes run, or the version label) is a new revision.
                    // (Secrets make new revisions through the secrets service, which sets the pins.)
                    if before.record.active_version != parsed.record.active_version
                        || template(&before) != template(&parsed)
                        || before.config.source != parsed.config.source
                    {
                        record.revision += 1;
                    }
                    record.spec = serde_json::to_string(&parsed.config).expect("configuration serializes");
                    record.target = serde_json::to_string(&parsed.target).expect("target serializes");
                    record.updated_at = now;
                    if kind != OperationKind::Stop {
                        record.last_deployed_at = now;
                    }
                    let op = change_operation(kind, id, ctx, now, pending);
                    let mut details = json!({
                        "version": record.active_version,
                        "desiredState": record.desired_state,
                        "revision": record.revision,
                        "replicas": parsed.config.replicas,
                    });
                    if before.record.active_version != record.active_version {
                        details["fromVersion"] = json!(before.record.active_version);
                    }
                    if let Some(v) = &placed.create {
                        details["createdVersion"] = json!({ "version": v.version, "description": v.description });
                    }
                    if let Some(m) = &placed.mark {
                        details["marked"] = json!({ "version": m.version, "status": m.status, "reason": m.reason });
                    }
                    if let Change::Promote { promotion, .. } = &change {
                        details["promotion"] = json!(promotion);
                    }
                    let details = with_approval(details, pending);
                    made = Some(op.clone());
                    let diff = changes(
                        Some(&audit_doc(&before.record, &before.config, &before.target)),
                        Some(&audit_doc(&record, &parsed.config, &parsed.target)),
                    );
                    let versions =
                        VersionsWrite { create: placed.create, deployed: placed.deployed, mark: placed.mark };
                    let audit = ctx.audit(kind.audit_action(), id, details).with_changes(diff);
                    Ok::<_, ApiError>((record, op, audit, versions))
                },
            )
            .await??;
        match outcome {
            Write::Done(updated) => {
                if let Change::Update { target: Some(t), .. } = &change {
                    let target = t.validate().map_err(invalid)?;
                    self.state.reconciler.directory.deployment_changed(id, Some(target));
                }
                self.accepted(updated, made.expect("a written change has its operation")).await
            }
            Write::NotFound => Err(not_found(id)),
            Write::Conflict { current } => Err(stale(current)),
            Write::LimitExceeded(e) => {
                let environment = self.state.store.get_deployment(id).await?.map(|d| d.environment).unwrap_or_default();
                Err(crate::environments::limit_exceeded(&environment, &e))
            }
        }
    }

    /// Deletes a deployment (its workloads are removed from every agent); the operation
    /// succeeds once no agent reports its replicas.
    pub async fn delete(&self, ctx: &RequestContext, id: &str, opts: Options) -> ApiResult<Outcome<OperationRecord>> {
        let current = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&current.environment).await?;
        ctx.require(perm::DEPLOYMENT_DELETE, Scope::env(env.scope(), Some(&current.workspace)), || not_found(id))?;
        match self.route(&env, perm::DEPLOYMENT_DELETE, opts)? {
            None => Ok(Outcome::Applied(self.apply_delete(ctx, &current, None).await?)),
            Some(status) => {
                let request = PendingRequest::Delete;
                self.defer_existing(ctx, &env, current, OperationKind::Delete, request, status, opts).await
            }
        }
    }

    /// Deletes (permission, lock and window already checked), as `ctx`'s change; with
    /// `pending`, as the approved pending change it consumes.
    pub(crate) async fn apply_delete(
        &self,
        ctx: &RequestContext,
        current: &DeploymentRecord,
        pending: Option<&PendingApply>,
    ) -> ApiResult<OperationRecord> {
        let id = current.id.as_str();
        let now = now_ms();
        let op = change_operation(OperationKind::Delete, id, ctx, now, pending);
        let before = Parsed::from_record(current.clone())?;
        let audit = ctx
            .audit(OperationKind::Delete.audit_action(), id, with_approval(json!({ "name": current.name }), pending))
            .with_changes(changes(Some(&audit_doc(current, &before.config, &before.target)), None));
        if !self.state.store.delete_deployment(id, &op, &audit, now, pending.map(|p| &p.claim)).await? {
            return Err(not_found(id));
        }
        self.state.reconciler.directory.deployment_changed(id, None);
        self.reconcile_now(id).await;
        Ok(op)
    }

    /// Where a change needing `p` in `env` goes, once permission is granted: `ENV_002` if the
    /// environment is locked, `ENV_005` if its window is closed (unless the caller waits for
    /// it); `None` to apply it now, or the status of the pending change to store instead
    /// (`pending`: it needs approval first; `scheduled`: it only waits for the window).
    fn route(&self, env: &EnvironmentRecord, p: Permission, opts: Options) -> ApiResult<Option<ApprovalStatus>> {
        crate::environments::unlocked(env)?;
        if !p.changes_deployments() {
            return Ok(None);
        }
        let closed = match crate::environments::window_open(env, now_ms()) {
            Ok(()) => false,
            Err(_) if opts.wait_for_window => true,
            Err(e) => return Err(e),
        };
        Ok(if env.approval_required {
            Some(ApprovalStatus::Pending)
        } else if closed {
            Some(ApprovalStatus::Scheduled)
        } else {
            None
        })
    }

    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<(Parsed, Option<StatusSummary>)> {
        let parsed = self.load(ctx, id).await?;
        let summary = self.state.store.status_summary(id).await?;
        Ok((parsed, summary))
    }

    /// One page of deployments with their stored status; the filters run in SQL.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        filter: DeploymentFilter<'_>,
    ) -> ApiResult<(Vec<(Parsed, Option<StatusSummary>)>, i64)> {
        let mut filter = filter;
        if let Some(name) = filter.environment {
            // 403 when no role of the caller reads deployments in this environment anywhere.
            let env = self.environment(name).await?;
            ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), None), || not_found(""))?;
        }
        let visible = self.visibility(ctx).await?;
        filter.visible = visible.as_ref();
        let (rows, total) = self.state.store.list_deployments(filter).await?;
        let mut page = Vec::with_capacity(rows.len());
        for (record, summary) in rows {
            page.push((Parsed::from_record(record)?, summary));
        }
        Ok((page, total))
    }

    /// The deployment's status derived now, with per-replica detail.
    pub async fn status(&self, ctx: &RequestContext, id: &str) -> ApiResult<(Parsed, Derived)> {
        let parsed = self.load(ctx, id).await?;
        let derived = crate::reconcile::derive(self.state, &parsed).await?;
        Ok((parsed, derived))
    }

    pub async fn operation(&self, ctx: &RequestContext, id: &str) -> ApiResult<OperationRecord> {
        let op_not_found = || {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, format!("operation {id:?} not found"))
                .with_details(json!({ "operationId": id }))
        };
        let op = self.state.store.get_operation(id).await?.ok_or_else(op_not_found)?;
        // An operation is read with its deployment (which may be deleted since, or, for a
        // create waiting for approval, not exist yet: then with its pending change).
        let (environment, workspace) = match self.state.store.get_deployment_any(&op.deployment_id).await? {
            Some((deployment, _)) => (deployment.environment, deployment.workspace),
            None => match &op.approval_id {
                Some(a) => {
                    let a = self.state.store.get_approval(a).await?.ok_or_else(op_not_found)?;
                    (a.environment, a.workspace)
                }
                None => return Err(op_not_found()),
            },
        };
        let env = self.environment(&environment).await?;
        ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), Some(&workspace)), op_not_found)?;
        Ok(op)
    }

    /// Checks that the caller may read a live deployment's logs (`logs:read` where it runs);
    /// 404 `DEPLOY_006` for a deployment it may not know of.
    pub async fn authorize_logs(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&record.environment).await?;
        ctx.require(perm::LOGS_READ, Scope::env(env.scope(), Some(&record.workspace)), || not_found(id))
    }

    /// A live deployment the caller may read.
    async fn load(&self, ctx: &RequestContext, id: &str) -> ApiResult<Parsed> {
        self.load_for(ctx, id, perm::DEPLOYMENT_READ).await
    }

    /// A live deployment on which the caller holds `p` (`DEPLOY_006` if it may not know of it).
    pub(crate) async fn load_for(&self, ctx: &RequestContext, id: &str, p: Permission) -> ApiResult<Parsed> {
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&record.environment).await?;
        ctx.require(p, Scope::env(env.scope(), Some(&record.workspace)), || not_found(id))?;
        Ok(Parsed::from_record(record)?)
    }

    /// Which deployments the caller may read, as (workspace, environment) pairs for SQL;
    /// `None` when it may read every deployment.
    pub async fn visibility(&self, ctx: &RequestContext) -> ApiResult<Option<Visibility>> {
        Ok(visibility(ctx, &self.state.store.list_environments().await?))
    }

    async fn environment(&self, name: &str) -> ApiResult<EnvironmentRecord> {
        self.state.store.get_environment(name).await?.ok_or_else(|| environment_not_found(name))
    }

    /// Reconciles the deployment now (so the answer reflects its new intent) and reads back
    /// its status.
    async fn accepted(&self, record: DeploymentRecord, operation: OperationRecord) -> ApiResult<Accepted> {
        self.reconcile_now(&record.id).await;
        let summary = self.state.store.status_summary(&record.id).await?;
        Ok(Accepted { deployment: Parsed::from_record(record)?, summary, operation })
    }

    /// A failure is logged and retried by the queue: the desired state is safely stored.
    async fn reconcile_now(&self, id: &str) {
        if let Err(e) = self.state.reconciler.reconcile_now(self.state, id).await {
            tracing::warn!(deployment = %id, error = %e, "reconcile after a change failed; it will be retried");
            self.state.reconciler.enqueue(id);
        }
    }
}

/// A deployment's desired state as its audit records show it (before/after of each change):
/// the replica count at the top, beside the version, desired state and revision.
fn audit_doc(r: &DeploymentRecord, config: &Configuration, target: &TargetJson) -> Value {
    let mut configuration = serde_json::to_value(config).expect("configuration serializes");
    if let Some(c) = configuration.as_object_mut() {
        c.remove("replicas");
    }
    json!({
        "activeVersion": r.active_version,
        "desiredState": r.desired_state,
        "revision": r.revision,
        "restartNonce": r.restart_nonce,
        "replicas": config.replicas,
        "target": target,
        "configuration": configuration,
    })
}

/// [`Deployments::visibility`] over these environments (pure).
pub fn visibility(ctx: &RequestContext, environments: &[EnvironmentRecord]) -> Option<Visibility> {
    // Readable through unscoped bindings alone: in every workspace.
    let everywhere: Vec<String> = environments
        .iter()
        .filter(|e| ctx.allows(perm::DEPLOYMENT_READ, Scope::env(e.scope(), Some(crate::workspaces::ANY_WORKSPACE))))
        .map(|e| e.name.clone())
        .collect();
    if everywhere.len() == environments.len() {
        return None;
    }
    let workspaces = crate::workspaces::bound_workspaces(ctx)
        .into_iter()
        .map(|w| {
            let envs = environments
                .iter()
                .filter(|e| !everywhere.contains(&e.name))
                .filter(|e| ctx.allows(perm::DEPLOYMENT_READ, Scope::env(e.scope(), Some(w))))
                .map(|e| e.name.clone())
                .collect();
            (w.to_string(), envs)
        })
        .filter(|(_, envs): &(String, Vec<String>)| !envs.is_empty())
        .collect();
    Some(Visibility { everywhere, workspaces })
}

/// What a revision pins: the process template, whatever the replica count.
fn template(p: &Parsed) -> ferry_protocol::ProcessSpec {
    let mut spec = p.config.to_process_spec();
    spec.replicas = 0;
    spec
}

/// The operation of a change applied now: a new one, or the pending change's, which goes on.
fn change_operation(
    kind: OperationKind,
    deployment_id: &str,
    ctx: &RequestContext,
    now: i64,
    pending: Option<&PendingApply>,
) -> OperationRecord {
    match pending {
        Some(p) => OperationRecord {
            status: OperationStatus::InProgress,
            message: String::new(),
            updated_at: now,
            started_at: Some(now),
            ..p.operation.clone()
        },
        None => OperationRecord {
            id: random_id("op"),
            kind,
            deployment_id: deployment_id.into(),
            status: OperationStatus::InProgress,
            message: String::new(),
            request_id: ctx.request_id.clone(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            approval_id: None,
            started_at: Some(now),
            callback: ctx.callback.clone(),
        },
    }
}

/// A new operation for a change applied now (the secrets service's rollouts use it too).
pub(crate) fn operation(kind: OperationKind, deployment_id: &str, ctx: &RequestContext, now: i64) -> OperationRecord {
    change_operation(kind, deployment_id, ctx, now, None)
}

/// A deployment re-pinned by Ferry (the secrets, the environment's variables a revision runs
/// with): `edit` sets the pins on its configuration; `None` if that changes nothing, else its new
/// desired state — a new revision, so replicas are replaced like for any template change — and
/// the `update` operation that rolls it out. Used by every rollout of such a change.
pub(crate) fn repinned(
    d: &DeploymentRecord,
    ctx: &RequestContext,
    edit: impl FnOnce(&mut Configuration),
) -> ApiResult<Option<(DeploymentRecord, OperationRecord)>> {
    let mut parsed = Parsed::from_record(d.clone())?;
    let before = parsed.config.clone();
    edit(&mut parsed.config);
    if parsed.config == before {
        return Ok(None);
    }
    let now = now_ms();
    let mut record = d.clone();
    record.spec = serde_json::to_string(&parsed.config).expect("configuration serializes");
    record.revision += 1;
    record.updated_at = now;
    record.last_deployed_at = now;
    Ok(Some((record, operation(OperationKind::Update, &d.id, ctx, now))))
}

/// `ENV_001` (400) for an environment a request names.
fn environment_not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::EnvironmentNotFound, format!("environment {name:?} not found"))
        .with_details(json!({ "field": "environment" }))
}

/// The applied change's audit details, naming the pending change and its approver.
fn with_approval(mut details: Value, pending: Option<&PendingApply>) -> Value {
    if let (Some(p), Some(obj)) = (pending, details.as_object_mut()) {
        obj.insert("approvalId".into(), json!(p.claim.approval_id));
        obj.insert("approvedBy".into(), json!(p.approved_by));
    }
    details
}

/// Shape checks of a create (400s before anything is looked up).
fn validate_new(new: &NewDeployment) -> ApiResult<()> {
    model::validate_name("deploymentName", &new.name).map_err(invalid)?;
    model::validate_version(&new.version).map_err(invalid)?;
    match (new.source.as_deref(), &new.configuration.source) {
        (None | Some(crate::sources::DIRECT), None) | (Some(crate::sources::GITHUB), Some(_)) => {}
        _ => {
            return Err(ApiError::validation(
                "deploymentSource",
                "\"direct\" here; Git sources are created with POST /v1/deployments/github",
            ));
        }
    }
    new.configuration.validate().map_err(invalid)?;
    new.target.validate().map_err(invalid)?;
    model::validate_name("workspace", new.workspace.as_deref().unwrap_or(DEFAULT_WORKSPACE)).map_err(invalid)?;
    for (field, key) in [("projectId", &new.project), ("aiZoneId", &new.ai_zone)] {
        if let Some(k) = key {
            model::validate_name(field, k).map_err(invalid)?;
        }
    }
    Ok(())
}

fn name_taken(name: &str, environment: &str, workspace: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::DeploymentExists,
        format!("a deployment named {name:?} already exists in {environment:?} of workspace {workspace:?}"),
    )
}

pub(crate) fn stale(current: i64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        ErrorCode::StaleResourceVersion,
        "the deployment changed since you read it; fetch it again and retry",
    )
    .with_details(json!({ "resourceVersion": current }))
}

/// A validation failure, as the seed's error.
pub fn invalid(i: Invalid) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, i.code, i.message).with_details(json!({ "field": i.field }))
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::DeploymentNotFound, format!("deployment {id:?} not found"))
        .with_details(json!({ "deploymentId": id }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Role, RoleBinding};
    use crate::context::{Principal, PrincipalKind};

    fn ctx(roles: &[(Role, Option<&str>)]) -> RequestContext {
        let roles =
            roles.iter().map(|(role, w)| RoleBinding { role: *role, workspace: w.map(str::to_string) }).collect();
        RequestContext {
            principal: Principal { kind: PrincipalKind::User, id: "u".into(), name: "u".into(), roles, owner: None },
            request_id: "req".into(),
            idempotency_key: None,
            source: None,
            callback: None,
        }
    }

    fn envs() -> Vec<EnvironmentRecord> {
        ["development", "staging", "production"]
            .into_iter()
            .map(|name| {
                let (required_roles, approval_required) = crate::authz::default_restrictions(name);
                EnvironmentRecord {
                    id: format!("env-{name}"),
                    name: name.into(),
                    kind: name.into(),
                    description: String::new(),
                    required_roles,
                    approval_required,
                    lock: None,
                    change_windows: None,
                    promotes_to: None,
                    variables: Default::default(),
                    limits: Default::default(),
                    created_at: 0,
                    updated_at: 0,
                }
            })
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn visibility_is_the_workspace_environment_pairs_the_bindings_read() {
        use Role::*;
        let envs = envs();
        // Unscoped bindings reading everything: no filter at all (the fast path).
        assert_eq!(visibility(&ctx(&[(DeploymentAdmin, None)]), &envs), None);
        assert_eq!(visibility(&ctx(&[(Viewer, None)]), &envs), None);
        // An unscoped developer reads development in every workspace.
        assert_eq!(
            visibility(&ctx(&[(Developer, None)]), &envs),
            Some(Visibility { everywhere: names(&["development"]), workspaces: vec![] })
        );
        // Scoped bindings: only their workspaces, each with what its roles read there.
        assert_eq!(
            visibility(&ctx(&[(Developer, Some("team-a")), (Viewer, Some("team-b"))]), &envs),
            Some(Visibility {
                everywhere: vec![],
                workspaces: vec![
                    ("team-a".into(), names(&["development"])),
                    ("team-b".into(), names(&["development", "staging", "production"])),
                ],
            })
        );
        // Both: a workspace lists only what the unscoped bindings do not already cover.
        assert_eq!(
            visibility(&ctx(&[(Developer, None), (Viewer, Some("team-b")), (DevopsEngineer, Some("team-c"))]), &envs),
            Some(Visibility {
                everywhere: names(&["development"]),
                workspaces: vec![("team-b".into(), names(&["staging", "production"]))]
            }),
            "devops_engineer has no deployment:read, so team-c adds nothing"
        );
        assert_eq!(visibility(&ctx(&[]), &envs), Some(Visibility::default()));
    }
}
