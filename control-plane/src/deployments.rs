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
//! Every mutation: checks permission for the deployment's environment and that the environment
//! is not locked, validates, then writes the new desired state, its operation (superseding the
//! deployment's open ones) and its audit record in one transaction, and reconciles the
//! deployment at once so the answer already reflects its new intent.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::audit::mask::changes;
use crate::authz::{Permission, Scope, perm};
use crate::context::RequestContext;
use crate::domain::{DesiredState, OperationKind, OperationStatus};
use crate::ids::{now_ms, random_id};
use crate::model::{self, Configuration, Invalid, TargetJson};
use crate::reconcile::Parsed;
use crate::status::Derived;
use crate::store::{
    CreateRefusal, DEFAULT_WORKSPACE, DeploymentFilter, DeploymentRecord, EnvironmentRecord, OperationRecord,
    SecretScope, StatusSummary, Visibility, Write,
};
use crate::workspaces::{AiZones, Projects, Workspaces, named_workspace_not_found};

/// A deployment to create, as the caller described it.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub name: String,
    pub environment: String,
    pub version: String,
    pub target: TargetJson,
    pub configuration: Configuration,
    /// Only `direct` (the process runtime) exists today.
    pub source: Option<String>,
    /// By id or name; `None`: `default`.
    pub workspace: Option<String>,
    /// A project of that workspace, by id or name.
    pub project: Option<String>,
    /// An AI zone shared or dedicated to that workspace, by id or name.
    pub ai_zone: Option<String>,
}

/// A change to an existing deployment's desired state.
#[derive(Debug, Clone)]
pub enum Change {
    Update { version: Option<String>, target: Option<TargetJson>, configuration: Option<Box<Configuration>> },
    Scale(u32),
    Start,
    Stop,
    Restart,
}

impl Change {
    fn kind(&self) -> OperationKind {
        match self {
            Change::Update { .. } => OperationKind::Update,
            Change::Scale(_) => OperationKind::Scale,
            Change::Start => OperationKind::Start,
            Change::Stop => OperationKind::Stop,
            Change::Restart => OperationKind::Restart,
        }
    }

    /// The permission the change needs: scaling has its own (the seed's `deployment:scale`);
    /// every other change of the configuration or of the desired state is `deployment:update`.
    fn permission(&self) -> Permission {
        match self {
            Change::Scale(_) => perm::DEPLOYMENT_SCALE,
            _ => perm::DEPLOYMENT_UPDATE,
        }
    }

    /// Applies the change to a parsed deployment (validated on the result).
    fn apply(&self, p: &mut Parsed) -> ApiResult<()> {
        match self {
            Change::Update { version, target, configuration } => {
                if let Some(v) = version {
                    p.record.active_version.clone_from(v);
                }
                if let Some(t) = target {
                    p.target = t.clone();
                }
                if let Some(c) = configuration {
                    // Which secrets a revision runs with is Ferry's to say (`PUT …/secrets`).
                    let secrets = std::mem::take(&mut p.config.secrets);
                    p.config = (**c).clone();
                    p.config.secrets = secrets;
                }
            }
            Change::Scale(replicas) => p.config.replicas = *replicas,
            Change::Start => p.record.desired_state = DesiredState::Running,
            Change::Stop => p.record.desired_state = DesiredState::Stopped,
            Change::Restart => {
                p.record.desired_state = DesiredState::Running;
                p.record.restart_nonce += 1;
            }
        }
        p.config.validate().map_err(invalid)
    }
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

    pub async fn create(&self, ctx: &RequestContext, mut new: NewDeployment) -> ApiResult<Accepted> {
        model::validate_name("deploymentName", &new.name).map_err(invalid)?;
        model::validate_version(&new.version).map_err(invalid)?;
        if new.source.as_deref().is_some_and(|s| s != "direct") {
            return Err(ApiError::validation("deploymentSource", "only \"direct\" deployments are supported"));
        }
        new.configuration.validate().map_err(invalid)?;
        let target = new.target.validate().map_err(invalid)?;
        let workspace_key = new.workspace.as_deref().unwrap_or(DEFAULT_WORKSPACE);
        model::validate_name("workspace", workspace_key).map_err(invalid)?;
        for (field, key) in [("projectId", &new.project), ("aiZoneId", &new.ai_zone)] {
            if let Some(k) = key {
                model::validate_name(field, k).map_err(invalid)?;
            }
        }
        let env = self.environment(&new.environment).await?;
        // A workspace the caller's bindings do not reach answers like one that does not exist:
        // 404 `WORKSPACE_001`, before anything else about it (its projects, zones, names) is
        // looked at.
        let ws = Workspaces::new(self.state).named(workspace_key).await?;
        ctx.require(perm::DEPLOYMENT_CREATE, Scope::env(env.scope(), Some(&ws.name)), || {
            named_workspace_not_found(workspace_key)
        })?;
        let project = match &new.project {
            Some(key) => Some(Projects::new(self.state).for_deployment(&ws.name, key).await?.id),
            None => None,
        };
        let ai_zone = match &new.ai_zone {
            Some(key) => Some(AiZones::new(self.state).for_deployment(&ws.name, key).await?.id),
            None => None,
        };
        self.unlocked(&env)?;
        // Its first revision runs with its environment's secrets.
        let env_secrets = self.state.store.list_secrets(SecretScope::Environment, &env.id).await?;
        new.configuration.secrets = crate::secrets::pins(&env_secrets, &[]);
        let now = now_ms();
        let record = DeploymentRecord {
            id: random_id("deploy"),
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
            workspace: ws.name,
            project_id: project,
            ai_zone_id: ai_zone,
        };
        let op = operation(OperationKind::Create, &record.id, ctx, now);
        let details = json!({
            "name": record.name,
            "environment": record.environment,
            "version": record.active_version,
            "workspace": record.workspace,
            "projectId": record.project_id,
            "aiZoneId": record.ai_zone_id,
        });
        let after = audit_doc(&record, &new.configuration, &new.target);
        let audit = ctx
            .audit(OperationKind::Create.audit_action(), &record.id, details)
            .with_changes(changes(None, Some(&after)));
        match self.state.store.create_deployment(&record, &op, &audit).await? {
            Ok(()) => {}
            Err(CreateRefusal::NameTaken) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::DeploymentExists,
                    format!(
                        "a deployment named {:?} already exists in {:?} of workspace {:?}",
                        record.name, record.environment, record.workspace
                    ),
                ));
            }
            // Deleted since it was looked up.
            Err(CreateRefusal::WorkspaceMissing) => return Err(named_workspace_not_found(workspace_key)),
            Err(CreateRefusal::ProjectMissing) => {
                let key = new.project.as_deref().unwrap_or_default();
                return Err(crate::workspaces::project_not_in_workspace(&record.workspace, key));
            }
            Err(CreateRefusal::ZoneMissing) => {
                let key = new.ai_zone.as_deref().unwrap_or_default();
                return Err(crate::workspaces::zone_not_usable(&record.workspace, key));
            }
        }
        self.state.reconciler.directory.deployment_changed(&record.id, Some(target));
        // The environment's secrets may have changed since they were read: pin what is there now.
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
    ) -> ApiResult<Accepted> {
        // Shape checks first: bad input is a 400 whatever the deployment's state.
        if let Change::Update { version, target, configuration } = &change {
            if let Some(v) = version {
                model::validate_version(v).map_err(invalid)?;
            }
            if let Some(c) = configuration {
                c.validate().map_err(invalid)?;
            }
            if let Some(t) = target {
                t.validate().map_err(invalid)?;
            }
        }
        let current = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&current.environment).await?;
        ctx.require(change.permission(), Scope::env(env.scope(), Some(&current.workspace)), || not_found(id))?;
        self.unlocked(&env)?;
        let kind = change.kind();
        let mut made = None;
        let outcome = self
            .state
            .store
            .modify_deployment(id, if_match, |stored| {
                let before = Parsed::from_record(stored.clone())?;
                let mut parsed = Parsed::from_record(stored.clone())?;
                change.apply(&mut parsed)?;
                let now = now_ms();
                let mut record = parsed.record.clone();
                // A new template (what the processes run, or the version label) is a new revision.
                // (Secrets make new revisions through the secrets service, which sets the pins.)
                if before.record.active_version != parsed.record.active_version
                    || template(&before) != template(&parsed)
                {
                    record.revision += 1;
                }
                record.spec = serde_json::to_string(&parsed.config).expect("configuration serializes");
                record.target = serde_json::to_string(&parsed.target).expect("target serializes");
                record.updated_at = now;
                if kind != OperationKind::Stop {
                    record.last_deployed_at = now;
                }
                let op = operation(kind, id, ctx, now);
                let details = json!({
                    "version": record.active_version,
                    "desiredState": record.desired_state,
                    "revision": record.revision,
                    "replicas": parsed.config.replicas,
                });
                made = Some(op.clone());
                let diff = changes(
                    Some(&audit_doc(&before.record, &before.config, &before.target)),
                    Some(&audit_doc(&record, &parsed.config, &parsed.target)),
                );
                Ok::<_, ApiError>((record, op, ctx.audit(kind.audit_action(), id, details).with_changes(diff)))
            })
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
            Write::Conflict { current } => Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                ErrorCode::StaleResourceVersion,
                "the deployment changed since you read it; fetch it again and retry",
            )
            .with_details(json!({ "resourceVersion": current }))),
        }
    }

    /// Deletes a deployment (its workloads are removed from every agent); the operation
    /// succeeds once no agent reports its replicas.
    pub async fn delete(&self, ctx: &RequestContext, id: &str) -> ApiResult<OperationRecord> {
        let current = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&current.environment).await?;
        ctx.require(perm::DEPLOYMENT_DELETE, Scope::env(env.scope(), Some(&current.workspace)), || not_found(id))?;
        self.unlocked(&env)?;
        let now = now_ms();
        let op = operation(OperationKind::Delete, id, ctx, now);
        let before = Parsed::from_record(current.clone())?;
        let audit = ctx
            .audit(OperationKind::Delete.audit_action(), id, json!({ "name": current.name }))
            .with_changes(changes(Some(&audit_doc(&current, &before.config, &before.target)), None));
        if !self.state.store.delete_deployment(id, &op, &audit, now).await? {
            return Err(not_found(id));
        }
        self.state.reconciler.directory.deployment_changed(id, None);
        self.reconcile_now(id).await;
        Ok(op)
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
        let op = self.state.store.get_operation(id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, format!("operation {id:?} not found"))
                .with_details(json!({ "operationId": id }))
        })?;
        let op_not_found = || {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, format!("operation {id:?} not found"))
                .with_details(json!({ "operationId": id }))
        };
        // An operation is read with its deployment (which may be deleted since).
        let (deployment, _) = self.state.store.get_deployment_any(&op.deployment_id).await?.ok_or_else(op_not_found)?;
        let env = self.environment(&deployment.environment).await?;
        ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), Some(&deployment.workspace)), op_not_found)?;
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
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&record.environment).await?;
        ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), Some(&record.workspace)), || not_found(id))?;
        Ok(Parsed::from_record(record)?)
    }

    /// Which deployments the caller may read, as (workspace, environment) pairs for SQL;
    /// `None` when it may read every deployment.
    pub async fn visibility(&self, ctx: &RequestContext) -> ApiResult<Option<Visibility>> {
        Ok(visibility(ctx, &self.state.store.list_environments().await?))
    }

    async fn environment(&self, name: &str) -> ApiResult<EnvironmentRecord> {
        self.state.store.get_environment(name).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::EnvironmentNotFound,
                format!("environment {name:?} not found"),
            )
            .with_details(json!({ "field": "environment" }))
        })
    }

    pub(crate) fn unlocked(&self, env: &EnvironmentRecord) -> ApiResult<()> {
        crate::environments::unlocked(env)
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

pub(crate) fn operation(kind: OperationKind, deployment_id: &str, ctx: &RequestContext, now: i64) -> OperationRecord {
    OperationRecord {
        id: random_id("op"),
        kind,
        deployment_id: deployment_id.into(),
        status: OperationStatus::InProgress,
        message: String::new(),
        request_id: ctx.request_id.clone(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
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
