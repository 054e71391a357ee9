//! The deployments service: the rules of the deployments area (validation, environment locks,
//! permission, revisions, operations, audit), applied once for every mutation whichever
//! endpoint asks for it. Handlers (`api/deployments.rs`) only parse and render; the store only
//! stores; the reconciler turns what this writes into intent.
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
use crate::store::{DeploymentFilter, DeploymentRecord, EnvironmentRecord, OperationRecord, StatusSummary, Write};

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
                    p.config = (**c).clone();
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

    pub async fn create(&self, ctx: &RequestContext, new: NewDeployment) -> ApiResult<Accepted> {
        model::validate_name("deploymentName", &new.name).map_err(invalid)?;
        model::validate_version(&new.version).map_err(invalid)?;
        if new.source.as_deref().is_some_and(|s| s != "direct") {
            return Err(ApiError::validation("deploymentSource", "only \"direct\" deployments are supported"));
        }
        new.configuration.validate().map_err(invalid)?;
        let target = new.target.validate().map_err(invalid)?;
        let env = self.environment(&new.environment).await?;
        ctx.require(perm::DEPLOYMENT_CREATE, Scope::env(env.scope(), None), || not_found(""))?;
        self.unlocked(&env)?;
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
        };
        let op = operation(OperationKind::Create, &record.id, ctx, now);
        let details =
            json!({ "name": record.name, "environment": record.environment, "version": record.active_version });
        let after = audit_doc(&record, &new.configuration, &new.target);
        let audit = ctx
            .audit(OperationKind::Create.audit_action(), &record.id, details)
            .with_changes(changes(None, Some(&after)));
        if !self.state.store.create_deployment(&record, &op, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::DeploymentExists,
                format!("a deployment named {:?} already exists in {:?}", record.name, record.environment),
            ));
        }
        self.state.reconciler.directory.deployment_changed(&record.id, Some(target));
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
        ctx.require(change.permission(), Scope::env(env.scope(), None), || not_found(id))?;
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
        ctx.require(perm::DEPLOYMENT_DELETE, Scope::env(env.scope(), None), || not_found(id))?;
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
        let visible = match filter.environment {
            Some(name) => {
                let env = self.environment(name).await?;
                ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), None), || not_found(""))?;
                None
            }
            None => Some(self.readable_environments(ctx).await?),
        };
        filter.visible_environments = visible.as_deref();
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
        ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), None), op_not_found)?;
        Ok(op)
    }

    /// Whether the caller may read the logs of this (live) deployment: `logs:read` in its
    /// environment.
    pub async fn authorize_logs(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&record.environment).await?;
        ctx.require(perm::LOGS_READ, Scope::env(env.scope(), None), || not_found(id))
    }

    /// A live deployment the caller may read.
    async fn load(&self, ctx: &RequestContext, id: &str) -> ApiResult<Parsed> {
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        let env = self.environment(&record.environment).await?;
        ctx.require(perm::DEPLOYMENT_READ, Scope::env(env.scope(), None), || not_found(id))?;
        Ok(Parsed::from_record(record)?)
    }

    /// The environments in which the caller may read deployments.
    async fn readable_environments(&self, ctx: &RequestContext) -> ApiResult<Vec<String>> {
        let envs = self.state.store.list_environments().await?;
        Ok(envs
            .into_iter()
            .filter(|e| ctx.allows(perm::DEPLOYMENT_READ, Scope::env(e.scope(), None)))
            .map(|e| e.name)
            .collect())
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

    fn unlocked(&self, env: &EnvironmentRecord) -> ApiResult<()> {
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

/// What a revision pins: the process template, whatever the replica count.
fn template(p: &Parsed) -> ferry_protocol::ProcessSpec {
    let mut spec = p.config.to_process_spec();
    spec.replicas = 0;
    spec
}

fn operation(kind: OperationKind, deployment_id: &str, ctx: &RequestContext, now: i64) -> OperationRecord {
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
