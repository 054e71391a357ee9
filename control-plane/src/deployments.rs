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
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::context::{Action, RequestContext};
use crate::domain::{DesiredState, OperationKind, OperationStatus};
use crate::ids::{now_ms, random_id};
use crate::model::{self, Configuration, Invalid, TargetJson};
use crate::reconcile::Parsed;
use crate::status::Derived;
use crate::store::{
    DeploymentFilter, DeploymentRecord, EnvironmentRecord, OperationRecord, SecretScope, StatusSummary, Write,
};

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

    fn action(&self) -> Action {
        match self {
            Change::Update { .. } => Action::Update,
            Change::Scale(_) => Action::Scale,
            Change::Start | Change::Stop | Change::Restart => Action::Operate,
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
        let env = self.environment(&new.environment).await?;
        ctx.authorize(Action::Create, &env.name)?;
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
        };
        let op = operation(OperationKind::Create, &record.id, ctx, now);
        let details =
            json!({ "name": record.name, "environment": record.environment, "version": record.active_version });
        let audit = ctx.audit(OperationKind::Create.audit_action(), &record.id, details);
        if !self.state.store.create_deployment(&record, &op, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::DeploymentExists,
                format!("a deployment named {:?} already exists in {:?}", record.name, record.environment),
            ));
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
        ctx.authorize(change.action(), &env.name)?;
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
                Ok::<_, ApiError>((record, op, ctx.audit(kind.audit_action(), id, details)))
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
        ctx.authorize(Action::Delete, &env.name)?;
        self.unlocked(&env)?;
        let now = now_ms();
        let op = operation(OperationKind::Delete, id, ctx, now);
        let audit = ctx.audit(OperationKind::Delete.audit_action(), id, json!({ "name": current.name }));
        if !self.state.store.delete_deployment(id, &op, &audit, now).await? {
            return Err(not_found(id));
        }
        self.state.reconciler.directory.deployment_changed(id, None);
        self.reconcile_now(id).await;
        Ok(op)
    }

    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<(Parsed, Option<StatusSummary>)> {
        let parsed = self.load(id).await?;
        ctx.authorize(Action::Read, &parsed.record.environment)?;
        let summary = self.state.store.status_summary(id).await?;
        Ok((parsed, summary))
    }

    /// One page of deployments with their stored status; the filters run in SQL.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        filter: DeploymentFilter<'_>,
    ) -> ApiResult<(Vec<(Parsed, Option<StatusSummary>)>, i64)> {
        ctx.authorize(Action::Read, filter.environment.unwrap_or("*"))?;
        let (rows, total) = self.state.store.list_deployments(filter).await?;
        let mut page = Vec::with_capacity(rows.len());
        for (record, summary) in rows {
            page.push((Parsed::from_record(record)?, summary));
        }
        Ok((page, total))
    }

    /// The deployment's status derived now, with per-replica detail.
    pub async fn status(&self, ctx: &RequestContext, id: &str) -> ApiResult<(Parsed, Derived)> {
        let parsed = self.load(id).await?;
        ctx.authorize(Action::Read, &parsed.record.environment)?;
        let derived = crate::reconcile::derive(self.state, &parsed).await?;
        Ok((parsed, derived))
    }

    pub async fn operation(&self, ctx: &RequestContext, id: &str) -> ApiResult<OperationRecord> {
        let op = self.state.store.get_operation(id).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, format!("operation {id:?} not found"))
                .with_details(json!({ "operationId": id }))
        })?;
        let environment = match self.state.store.get_deployment_any(&op.deployment_id).await? {
            Some((d, _)) => d.environment,
            None => "*".to_string(),
        };
        ctx.authorize(Action::Read, &environment)?;
        Ok(op)
    }

    async fn load(&self, id: &str) -> ApiResult<Parsed> {
        let record = self.state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
        Ok(Parsed::from_record(record)?)
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
        if env.locked {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::EnvironmentLocked,
                format!("environment {:?} is locked", env.name),
            )
            .with_details(json!({ "environment": env.name })));
        }
        Ok(())
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
