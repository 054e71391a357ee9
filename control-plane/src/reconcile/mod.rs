//! The reconciler: one deployment at a time, desired state → intent rows, then intent vs
//! observed → the stored status summary and operation outcomes.
//!
//! kube-rs style: [`reconcile`] looks at one deployment, makes its intent right, and says when to
//! look again (an open operation's deadline or minimum-ready time); everything else that can
//! change the outcome queues the deployment: a desired-state write (reconciled inline too, so a
//! 202 already reflects the new intent), an agent's report that changed one of its workloads, an
//! agent connecting, disconnecting, changing labels or capabilities, or being revoked. A periodic
//! resync of every deployment is the level-triggered safety net. Reconciles of one deployment are
//! serialized on this replica by a per-deployment lock and across replicas by the intent write
//! transaction, so none is ever lost or applied twice.

mod directory;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use directory::{Directory, candidate};
use queue::{KeyLocks, Queue};

use crate::AppState;
use crate::domain::{DesiredState, OperationKind, OperationStatus};
use crate::ids::now_ms;
use crate::model::{Configuration, TargetJson};
use crate::planner::{self, Desired};
use crate::status::{self, DeploymentStatus, Derived};
use crate::store::{AgentRecord, DeploymentRecord, OperationRecord, StatusSummary, StoreError};

/// How long a delete may take before its operation is marked failed (the deployment's own
/// progress deadline is gone with it).
const DELETE_DEADLINE_MS: i64 = 300_000;
/// Workers draining the queue (SQLite has one writer at a time; more would only wait).
const WORKERS: usize = 2;
/// Every deployment is looked at again this often, whatever happened.
const RESYNC_EVERY: Duration = Duration::from_secs(300);
/// Agents' placement facts and deployments' targets are reloaded this often (changes made by
/// another replica arrive this way).
const DIRECTORY_RELOAD: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct Reconciler {
    queue: Arc<Queue>,
    locks: Arc<KeyLocks>,
    pub directory: Directory,
}

/// A stored deployment, parsed.
pub struct Parsed {
    pub record: DeploymentRecord,
    pub config: Configuration,
    pub target: TargetJson,
}

impl Parsed {
    pub fn from_record(record: DeploymentRecord) -> Result<Self, StoreError> {
        let corrupt =
            |column, e: serde_json::Error| StoreError::Corrupt { table: "deployments", column, message: e.to_string() };
        let config = serde_json::from_str(&record.spec).map_err(|e| corrupt("spec", e))?;
        let target = serde_json::from_str(&record.target).map_err(|e| corrupt("target", e))?;
        Ok(Self { record, config, target })
    }

    pub fn stopped(&self) -> bool {
        self.record.desired_state == DesiredState::Stopped
    }

    /// Replicas wanted now (0 when stopped).
    pub fn desired_replicas(&self) -> u32 {
        if self.stopped() { 0 } else { self.config.replicas }
    }

    fn desired(&self, deleted: bool) -> Desired {
        Desired {
            id: self.record.id.clone(),
            environment: self.record.environment.clone(),
            revision: self.record.revision as u64,
            replicas: if deleted { 0 } else { self.desired_replicas() },
            // A target that no longer validates matches no agent (it cannot be stored so).
            target: self.target.validate().unwrap_or(planner::Target::Agents(Vec::new())),
            kind: "process",
            restart_nonce: self.record.restart_nonce as u64,
            secrets: !self.config.secrets.is_empty(),
            git: self.config.source.is_some(),
        }
    }
}

impl Reconciler {
    /// Queues a deployment to be looked at as soon as a worker is free.
    pub fn enqueue(&self, id: &str) {
        self.queue.push(id, Instant::now());
    }

    pub fn enqueue_all<I: IntoIterator<Item = String>>(&self, ids: I) {
        let now = Instant::now();
        for id in ids {
            self.queue.push(&id, now);
        }
    }

    /// Reconciles one deployment on the caller's task (serialized with the workers).
    pub async fn reconcile_now(&self, state: &AppState, id: &str) -> Result<(), StoreError> {
        let _guard = self.locks.lock(id).await;
        if let Some(after) = reconcile(state, id).await? {
            self.queue.push(id, Instant::now() + after);
        }
        Ok(())
    }

    /// An agent enrolled, connected, disconnected, changed labels or capabilities, or was
    /// revoked: queue what its change may affect (deployments its placement facts concern, and
    /// deployments it holds intent for, whose status depends on its connectivity).
    pub async fn agent_changed(&self, state: &AppState, agent: &AgentRecord) {
        let mut ids = self.directory.agent_changed(candidate(agent));
        match state.store.deployments_on_agent(&agent.id).await {
            Ok(on) => ids.extend(on),
            Err(e) => tracing::warn!(agent_id = %agent.id, error = %e, "could not list the agent's deployments"),
        }
        self.enqueue_all(ids);
    }
}

/// Starts the workers and the periodic reload/resync; returns when `shutdown` turns true.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let r = state.reconciler.clone();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (state, r) = (state.clone(), r.clone());
        workers.spawn(async move {
            loop {
                let id = r.queue.next().await;
                let _guard = r.locks.lock(&id).await;
                match reconcile(&state, &id).await {
                    Ok(Some(after)) => r.queue.push(&id, Instant::now() + after),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(deployment = %id, error = %e, "reconcile failed; retrying");
                        r.queue.push(&id, Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        });
    }
    let mut reload = tokio::time::interval(DIRECTORY_RELOAD);
    let mut last_resync: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = reload.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        if let Err(e) = r.directory.reload(&state.store).await {
            tracing::warn!(error = %e, "could not reload agents and targets");
            continue;
        }
        if last_resync.is_none_or(|t| t.elapsed() >= RESYNC_EVERY) {
            let mut ids = r.directory.deployments();
            match state.store.deployments_with_open_operations().await {
                Ok(open) => ids.extend(open),
                Err(e) => tracing::warn!(error = %e, "could not list open operations"),
            }
            tracing::debug!(deployments = ids.len(), "resync");
            r.enqueue_all(ids);
            last_resync = Some(Instant::now());
        }
    }
    workers.shutdown().await;
}

/// Looks at one deployment: makes its intent right, stores its derived status, settles its
/// operations. Returns when to look again, if time alone can change something.
async fn reconcile(state: &AppState, id: &str) -> Result<Option<Duration>, StoreError> {
    let Some((record, deleted_at)) = state.store.get_deployment_any(id).await? else {
        return Ok(None);
    };
    let deleted = deleted_at.is_some();
    let parsed = match Parsed::from_record(record) {
        Ok(p) => p,
        Err(e) => {
            // A row that does not parse is reported and left alone; it must not stall others.
            tracing::error!(deployment = %id, error = %e, "skipping");
            return Ok(None);
        }
    };
    let agents = state.reconciler.directory.agents();
    let now = now_ms();
    // Planned from the deployment as it is under the write lock, not as read above.
    let changed = state
        .store
        .reconcile_intent(id, now, |record, deleted, rows| match Parsed::from_record(record.clone()) {
            Ok(locked) => planner::plan(&locked.desired(deleted), agents.values(), rows),
            Err(_) => Vec::new(),
        })
        .await?;
    for (agent_id, generation) in &changed {
        tracing::debug!(deployment = %id, %agent_id, generation, "new intent");
        state.sessions.notify_intent(agent_id);
    }
    let ops = state.store.open_operations_of(id).await?;
    if deleted {
        return settle_delete(state, id, &ops, now).await;
    }
    let derived = derive(state, &parsed).await?;
    let previous = state.store.status_summary(id).await?;
    let running_since = match (&previous, derived.status) {
        (Some(p), DeploymentStatus::Running) if p.status == "running" => p.running_since.or(Some(now)),
        (_, DeploymentStatus::Running) => Some(now),
        _ => None,
    };
    let summary = StatusSummary {
        status: derived.status.as_str().to_string(),
        desired: derived.desired,
        current: derived.current,
        ready: derived.ready,
        reasons: derived.reasons.clone(),
        running_since,
    };
    if previous.as_ref() != Some(&summary) {
        state.store.put_status_summary(id, &summary, now).await?;
    }
    settle(state, &parsed, &derived, running_since, &ops, now).await
}

/// The deployment's derived status, from its intent rows and what agents reported.
pub async fn derive(state: &AppState, parsed: &Parsed) -> Result<Derived, StoreError> {
    let placed = state.store.placed_rows_of(&parsed.record.id).await?;
    let observed = state.store.observed_of(&parsed.record.id).await?;
    let timeout = state.config.heartbeat_timeout().as_millis() as i64;
    let slices = status::slices(
        &status::DesiredTemplate {
            revision: parsed.record.revision as u64,
            restart_nonce: parsed.record.restart_nonce as u64,
            stopped: parsed.stopped(),
        },
        &placed,
        &observed,
        now_ms(),
        timeout,
    );
    Ok(status::derive(parsed.stopped(), parsed.desired_replicas(), &slices))
}

/// Ends the deployment's open operations whose outcome is known; returns when to look again.
async fn settle(
    state: &AppState,
    parsed: &Parsed,
    d: &Derived,
    running_since: Option<i64>,
    ops: &[OperationRecord],
    now: i64,
) -> Result<Option<Duration>, StoreError> {
    let deadline_ms = parsed.config.progress_deadline_seconds as i64 * 1000;
    let min_ready_ms = parsed.config.min_ready() as i64 * 1000;
    let mut next: Option<i64> = None;
    for op in ops {
        let (done, wait) = if op.kind == OperationKind::Stop {
            (d.status == DeploymentStatus::Stopped, None)
        } else {
            match running_since {
                // Replicas must stay ready for minReadySeconds: a process that starts and then
                // exits must not make its operation succeed in the moment before it exits.
                Some(since) if now - since >= min_ready_ms => (true, None),
                Some(since) => (false, Some(since + min_ready_ms - now)),
                None => (false, None),
            }
        };
        let outcome = if done {
            Some((OperationStatus::Succeeded, format!("{} of {} replicas ready", d.ready, d.desired)))
        } else if now - op.started() > deadline_ms {
            let why = if d.reasons.is_empty() { d.status.as_str().to_string() } else { d.reasons.join("; ") };
            let message = format!("progress deadline exceeded: {why}");
            // The version this operation deployed (if any) is marked failed in the same
            // transaction, so rollbacks skip it.
            if state.store.fail_rollout(&op.id, &message, now).await? {
                tracing::info!(operation = %op.id, kind = %op.kind, deployment = %op.deployment_id, %message, "operation failed");
            }
            None
        } else {
            let until_deadline = op.started() + deadline_ms + 1 - now;
            let soonest = wait.map_or(until_deadline, |w| w.min(until_deadline));
            next = Some(next.map_or(soonest, |n| n.min(soonest)));
            None
        };
        finish(state, op, outcome, now).await?;
    }
    Ok(next.map(|ms| Duration::from_millis(ms.max(1) as u64)))
}

/// A deleted deployment: its delete operation succeeds once no agent reports its replicas.
async fn settle_delete(
    state: &AppState,
    id: &str,
    ops: &[OperationRecord],
    now: i64,
) -> Result<Option<Duration>, StoreError> {
    if ops.is_empty() {
        return Ok(None);
    }
    let reporting: Vec<String> =
        state.store.observed_of(id).await?.into_iter().filter(|o| !o.replicas.is_empty()).map(|o| o.agent_id).collect();
    let mut next = None;
    for op in ops {
        let outcome = if op.kind != OperationKind::Delete {
            Some((OperationStatus::Failed, "the deployment was deleted".to_string()))
        } else if reporting.is_empty() {
            Some((OperationStatus::Succeeded, "all replicas removed".to_string()))
        } else if now - op.started() > DELETE_DEADLINE_MS {
            Some((
                OperationStatus::Failed,
                format!("progress deadline exceeded: still running on {}", reporting.join(", ")),
            ))
        } else {
            next = Some(Duration::from_millis((op.started() + DELETE_DEADLINE_MS + 1 - now).max(1) as u64));
            None
        };
        finish(state, op, outcome, now).await?;
    }
    Ok(next)
}

async fn finish(
    state: &AppState,
    op: &OperationRecord,
    outcome: Option<(OperationStatus, String)>,
    now: i64,
) -> Result<(), StoreError> {
    if let Some((status, message)) = outcome
        && state.store.finish_operation(&op.id, status, &message, now).await?
    {
        tracing::info!(operation = %op.id, kind = %op.kind, deployment = %op.deployment_id, %status, %message, "operation finished");
    }
    Ok(())
}
