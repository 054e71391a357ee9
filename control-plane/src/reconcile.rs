//! The reconciler: desired state → intent, and intent vs observed → operation outcomes.
//!
//! Level-triggered and idempotent. It runs after every desired-state change (synchronously, so
//! a 202 answer already reflects the new intent), whenever an agent reports, and every second as
//! a safety net (which is also how changes made by another control-plane replica are picked up).
//! Intent writes are compare-and-set on the generation, so concurrent reconcilers on several
//! replicas can never hand out the same generation twice; a lost race simply retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, watch};

use crate::AppState;
use crate::ids::now_ms;
use crate::model::{Configuration, TargetJson};
use crate::planner::{self, Candidate, Desired};
use crate::status::{AgentSlice, DeploymentStatus, Derived, derive};
use crate::store::{AgentRecord, DeploymentRecord, OperationRecord, StoreError};

/// How long a delete may take before its operation is marked failed (the deployment's own
/// progress deadline is gone with it).
const DELETE_DEADLINE_MS: i64 = 300_000;

/// Wakes the background loop; serializes passes within this replica.
#[derive(Clone, Default)]
pub struct Reconciler {
    wake: Arc<Notify>,
    pass: Arc<Mutex<()>>,
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
        self.record.desired_state == "stopped"
    }

    fn desired(&self) -> Option<Desired> {
        Some(Desired {
            id: self.record.id.clone(),
            name: self.record.name.clone(),
            version: self.record.active_version.clone(),
            spec: self.config.to_process_spec(),
            replicas: if self.stopped() { 0 } else { self.config.replicas },
            target: self.target.validate().ok()?,
            restart_nonce: self.record.restart_nonce as u64,
        })
    }
}

impl Reconciler {
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// One full pass: plan, write intents, wake the affected sessions, settle operations.
    pub async fn run_once(&self, state: &AppState) -> Result<(), StoreError> {
        let _pass = self.pass.lock().await;
        // Operations are read before the desired state they are settled against, so an operation
        // created during this pass is never judged by an intent planned before its change.
        let ops = state.store.open_operations().await?;
        let deployments = state.store.all_deployments().await?;
        // A row that does not parse is reported and left out; it must not stall every other one.
        let parsed: Vec<Parsed> = deployments
            .into_iter()
            .filter_map(|d| {
                let id = d.id.clone();
                Parsed::from_record(d).map_err(|e| tracing::error!(deployment = %id, error = %e, "skipping")).ok()
            })
            .collect();
        let desired: Vec<Desired> = parsed.iter().filter_map(Parsed::desired).collect();
        let agents = state.store.all_agents().await?;
        let candidates: Vec<Candidate> = agents
            .iter()
            .map(|a| Candidate { id: a.id.clone(), labels: a.labels.clone(), revoked: a.revoked_at.is_some() })
            .collect();
        let current = state.store.intents().await?;
        let now = now_ms();
        for (agent_id, assignment) in planner::plan(&desired, &candidates, &current) {
            if state.store.put_intent(&agent_id, &assignment, now).await? {
                tracing::info!(%agent_id, generation = assignment.generation, workloads = assignment.workloads.len(), "new intent");
                state.sessions.notify_intent(&agent_id);
            } else {
                // Another replica planned first; look again on the next pass.
                self.poke();
            }
        }
        self.settle_operations(state, ops).await
    }

    async fn settle_operations(&self, state: &AppState, ops: Vec<OperationRecord>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ctx = Context::load(state).await?;
        let now = now_ms();
        for op in ops {
            let (outcome, message) = match state.store.get_deployment(&op.deployment_id).await? {
                None if op.kind == "delete" => {
                    // Done once no agent reports the workload any more (an agent that still does
                    // has not applied the intent without it).
                    let reporting: Vec<String> = state
                        .store
                        .observed_for(&op.deployment_id)
                        .await?
                        .into_iter()
                        .filter(|(_, (_, rs))| !rs.is_empty())
                        .map(|(agent, _)| agent)
                        .collect();
                    if reporting.is_empty() {
                        (Some("succeeded"), "all replicas removed".to_string())
                    } else if now - op.created_at > DELETE_DEADLINE_MS {
                        (
                            Some("failed"),
                            format!("progress deadline exceeded: still running on {}", reporting.join(", ")),
                        )
                    } else {
                        (None, String::new())
                    }
                }
                None => (Some("failed"), "the deployment was deleted".to_string()),
                Some(record) => {
                    let deadline_ms = match Parsed::from_record(record.clone()) {
                        Ok(p) => p.config.progress_deadline_seconds as i64 * 1000,
                        Err(_) => 300_000,
                    };
                    let d = ctx.derive(state, record).await?;
                    let done = match op.kind.as_str() {
                        "stop" => d.status == DeploymentStatus::Stopped,
                        _ => d.status == DeploymentStatus::Running,
                    };
                    if done {
                        (Some("succeeded"), format!("{} of {} replicas ready", d.ready, d.desired))
                    } else if now - op.created_at > deadline_ms {
                        let why =
                            if d.reasons.is_empty() { d.status.as_str().to_string() } else { d.reasons.join("; ") };
                        (Some("failed"), format!("progress deadline exceeded: {why}"))
                    } else {
                        (None, String::new())
                    }
                }
            };
            if let Some(status) = outcome
                && state.store.finish_operation(&op.id, status, &message, now).await?
            {
                tracing::info!(operation = %op.id, kind = %op.kind, deployment = %op.deployment_id, status, %message, "operation finished");
            }
        }
        Ok(())
    }
}

/// Agents and intents, loaded once per pass or request.
pub struct Context {
    agents: BTreeMap<String, AgentRecord>,
    intents: BTreeMap<String, ferry_protocol::Assignment>,
}

impl Context {
    pub async fn load(state: &AppState) -> Result<Self, StoreError> {
        let agents = state.store.all_agents().await?.into_iter().map(|a| (a.id.clone(), a)).collect();
        Ok(Self { agents, intents: state.store.intents().await? })
    }

    /// The deployment's derived status.
    pub async fn derive(&self, state: &AppState, record: DeploymentRecord) -> Result<Derived, StoreError> {
        let parsed = Parsed::from_record(record)?;
        let mut observed = state.store.observed_for(&parsed.record.id).await?;
        let timeout = state.config.heartbeat_timeout().as_millis() as i64;
        let now = now_ms();
        let mut slices = Vec::new();
        for (agent_id, intent) in &self.intents {
            let workload = intent.workloads.iter().find(|w| w.id == parsed.record.id);
            let share = workload.map(|w| w.spec.replicas);
            let seen = observed.remove(agent_id);
            if share.is_none() && seen.is_none() {
                continue;
            }
            let connected = self
                .agents
                .get(agent_id)
                .is_some_and(|a| a.status(now, timeout) == crate::store::AgentStatus::Connected);
            slices.push(AgentSlice {
                agent_id: agent_id.clone(),
                connected,
                desired: share.unwrap_or(0),
                intent_generation: intent.generation,
                planned: planned(&parsed, workload),
                observed: seen,
            });
        }
        let desired = if parsed.stopped() { 0 } else { parsed.config.replicas };
        Ok(derive(parsed.stopped(), desired, &slices))
    }
}

/// Whether the intent's copy of a workload matches the deployment's current desired state (all
/// but the per-agent replica share).
fn planned(parsed: &Parsed, workload: Option<&ferry_protocol::Workload>) -> bool {
    match workload {
        None => parsed.stopped(),
        Some(_) if parsed.stopped() => false,
        Some(w) => {
            let mut want = parsed.config.to_process_spec();
            want.replicas = w.spec.replicas;
            w.version == parsed.record.active_version
                && w.restart_nonce == parsed.record.restart_nonce as u64
                && w.spec == want
        }
    }
}

/// The background loop.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let r = state.reconciler.clone();
    loop {
        if let Err(e) = r.run_once(&state).await {
            tracing::warn!(error = %e, "reconcile pass failed");
        }
        tokio::select! {
            _ = r.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
