//! Intent (per-agent, per-workload rows with generations), observed state and the stored status
//! summary: the tables the reconciler and the agent sessions work on.
//!
//! Invariants:
//! * an agent's generation only grows; every intent row records the agent generation at which
//!   it last changed, so "what changed since generation g" is the rows with a larger one;
//! * one reconcile of one deployment writes, in one transaction, only the rows of that
//!   deployment that change, and bumps the generation of exactly the agents they belong to (a
//!   write costs what changed, not what exists);
//! * removed workloads stay as tombstones until the agent acknowledged a generation past them;
//!   `agent_intents.floor` records the newest generation whose tombstones may be gone, and an
//!   agent holding an older one gets a full resync;
//! * observed rows change only when a workload's replicas change; the generation an agent acts
//!   on is `agents.observed_generation`.

use std::collections::BTreeMap;

use ferry_protocol::ReplicaStatus;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, DeploymentRecord, Result, Store, StoreError, chunk_sizes, placeholders};

/// One intent row: `replicas` of one revision of a deployment on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRow {
    pub agent_id: String,
    pub workload_id: String,
    pub deployment_id: String,
    pub revision: u64,
    pub replicas: u32,
    pub restart_nonce: u64,
    /// The agent's generation at which this row last changed.
    pub generation: u64,
    /// A tombstone: the agent must stop running this workload.
    pub removed: bool,
}

/// What a row must become (the planner's output for one deployment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub agent_id: String,
    pub workload_id: String,
    pub revision: u64,
    pub replicas: u32,
    pub restart_nonce: u64,
    pub removed: bool,
}

/// An agent's intent head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntentHead {
    pub generation: u64,
    /// Tombstones at or below this generation may be gone: a delta needs a newer base.
    pub floor: u64,
}

/// An intent row of a deployment together with what its agent last said.
#[derive(Debug, Clone)]
pub struct PlacedRow {
    pub row: IntentRow,
    pub agent_observed_generation: u64,
    pub agent_session: Option<String>,
    pub agent_last_heartbeat: Option<i64>,
    pub agent_revoked: bool,
}

/// An observed row: what an agent last reported for one workload.
#[derive(Debug, Clone)]
pub struct ObservedRow {
    pub agent_id: String,
    pub workload_id: String,
    pub agent_observed_generation: u64,
    pub replicas: Vec<ReplicaStatus>,
}

/// The stored, derived status of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSummary {
    pub status: String,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub reasons: Vec<String>,
    /// Since when the status has been `running` without interruption.
    pub running_since: Option<i64>,
}

/// What changed in one agent's status report.
#[derive(Debug, Clone)]
pub struct ObservedReport {
    pub agent_id: String,
    pub generation: u64,
    /// `(workload id, deployment id, replicas)` of the workloads whose replicas changed.
    pub changed: Vec<(String, String, Vec<ReplicaStatus>)>,
    /// Workloads it no longer reports.
    pub gone: Vec<String>,
}

/// One observed row to write: deployment id, generation, replicas.
type ObservedWrite<'a> = (&'a str, u64, &'a Vec<ReplicaStatus>);

/// Whether a session still owns its agent, as found by a liveness flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Owned,
    Superseded,
    Revoked,
    Unknown,
}

const ROW_COLUMNS: &str =
    "agent_id, workload_id, deployment_id, revision, replicas, restart_nonce, generation, removed";

fn row_from(r: &AnyRow) -> Result<IntentRow> {
    Ok(IntentRow {
        agent_id: r.try_get("agent_id")?,
        workload_id: r.try_get("workload_id")?,
        deployment_id: r.try_get("deployment_id")?,
        revision: r.try_get::<i64, _>("revision")? as u64,
        replicas: r.try_get::<i64, _>("replicas")? as u32,
        restart_nonce: r.try_get::<i64, _>("restart_nonce")? as u64,
        generation: r.try_get::<i64, _>("generation")? as u64,
        removed: r.try_get::<i64, _>("removed")? != 0,
    })
}

fn replicas_from(s: &str) -> Result<Vec<ReplicaStatus>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        table: "agent_observed",
        column: "replicas",
        message: e.to_string(),
    })
}

/// Rows per multi-row statement. Chunks are powers of two so only a few statement shapes are
/// prepared and cached.
const CHUNK: usize = 128;

impl Store {
    /// A read transaction that sees one snapshot (SQLite transactions always do; PostgreSQL
    /// needs `REPEATABLE READ`).
    async fn snapshot_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?,
        })
    }

    /// The intent rows of a deployment joined with their agents' liveness and the generation
    /// each agent last reported acting on (status derivation's input).
    pub async fn placed_rows_of(&self, deployment_id: &str) -> Result<Vec<PlacedRow>> {
        let rows = sqlx::query(
            "SELECT i.agent_id, i.workload_id, i.deployment_id, i.revision, i.replicas, i.restart_nonce, \
             i.generation, i.removed, a.observed_generation, a.session_id, a.last_heartbeat, a.revoked_at \
             FROM intent_workloads i JOIN agents a ON a.id = i.agent_id WHERE i.deployment_id = $1 \
             ORDER BY i.agent_id, i.workload_id",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PlacedRow {
                    row: row_from(r)?,
                    agent_observed_generation: r.try_get::<i64, _>("observed_generation")? as u64,
                    agent_session: r.try_get("session_id")?,
                    agent_last_heartbeat: r.try_get("last_heartbeat")?,
                    agent_revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                })
            })
            .collect()
    }

    /// Makes a deployment's intent rows what `plan` says, atomically: `plan` gets the
    /// deployment (with whether it was deleted) and its rows as they are inside the write
    /// transaction, which holds the deployment row's lock — so reconciles of one deployment, on
    /// this replica or another, serialize, and none plans from desired state older than what it
    /// writes over — and returns the rows that must change. Each affected agent's generation
    /// grows by one and the changed rows carry it. Returns the affected agents with their new
    /// generation (nothing if the deployment does not exist).
    pub async fn reconcile_intent<F>(&self, deployment_id: &str, now_ms: i64, plan: F) -> Result<Vec<(String, u64)>>
    where
        F: FnOnce(&DeploymentRecord, bool, &[IntentRow]) -> Vec<RowChange>,
    {
        let mut tx = self.write_tx().await?;
        // On SQLite the write transaction already excludes every other writer.
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT {}, deleted_at FROM deployments WHERE id = $1{lock}",
            super::deployments::DEPLOYMENT_COLUMNS
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(deployment_id).fetch_optional(&mut *tx).await?
        else {
            tx.rollback().await?;
            return Ok(Vec::new());
        };
        let deployment = super::deployments::deployment_from_row(&row)?;
        let deleted = row.try_get::<Option<i64>, _>("deleted_at")?.is_some();
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM intent_workloads WHERE deployment_id = $1 ORDER BY agent_id, workload_id"
        );
        let current: Vec<IntentRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(row_from)
            .collect::<Result<_>>()?;
        let changes = plan(&deployment, deleted, &current);
        if changes.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut agents: Vec<&str> = changes.iter().map(|c| c.agent_id.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        let generations = bump_generations(&mut tx, &agents, now_ms).await?;
        let mut offset = 0;
        for size in chunk_sizes(changes.len(), CHUNK) {
            let chunk = &changes[offset..offset + size];
            offset += size;
            let sql = format!(
                "INSERT INTO intent_workloads ({ROW_COLUMNS}) VALUES {} ON CONFLICT (agent_id, workload_id) DO UPDATE SET \
                 deployment_id = excluded.deployment_id, revision = excluded.revision, replicas = excluded.replicas, \
                 restart_nonce = excluded.restart_nonce, generation = excluded.generation, removed = excluded.removed",
                placeholders(size, 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for c in chunk {
                q = q
                    .bind(c.agent_id.clone())
                    .bind(c.workload_id.clone())
                    .bind(deployment_id.to_string())
                    .bind(c.revision as i64)
                    .bind(c.replicas as i64)
                    .bind(c.restart_nonce as i64)
                    .bind(generations[&c.agent_id] as i64)
                    .bind(i64::from(c.removed));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(generations.into_iter().collect())
    }

    /// An agent's intent head (zero if it never had any).
    pub async fn intent_head(&self, agent_id: &str) -> Result<IntentHead> {
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT generation, floor FROM agent_intents WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(g, f)| IntentHead { generation: g as u64, floor: f as u64 }).unwrap_or_default())
    }

    /// The agent's intent as of one snapshot: its head and either every live row (`since:
    /// None`) or the rows (tombstones included) that changed after generation `since`.
    pub async fn intent_snapshot(&self, agent_id: &str, since: Option<u64>) -> Result<(IntentHead, Vec<IntentRow>)> {
        let mut tx = self.snapshot_tx().await?;
        let head: Option<(i64, i64)> =
            sqlx::query_as("SELECT generation, floor FROM agent_intents WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await?;
        let head = head.map(|(g, f)| IntentHead { generation: g as u64, floor: f as u64 }).unwrap_or_default();
        let rows = match since {
            None => {
                let sql = format!(
                    "SELECT {ROW_COLUMNS} FROM intent_workloads WHERE agent_id = $1 AND removed = 0 ORDER BY workload_id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(agent_id).fetch_all(&mut *tx).await?
            }
            Some(base) => {
                let sql = format!(
                    "SELECT {ROW_COLUMNS} FROM intent_workloads WHERE agent_id = $1 AND generation > $2 \
                     ORDER BY workload_id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(agent_id).bind(base as i64).fetch_all(&mut *tx).await?
            }
        };
        tx.commit().await?;
        Ok((head, rows.iter().map(row_from).collect::<Result<_>>()?))
    }

    /// The agent acknowledged `generation`: record it, and drop the tombstones it no longer
    /// needs (raising the floor below which a delta is impossible).
    pub async fn record_ack(&self, agent_id: &str, generation: u64, error: Option<&str>) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE agents SET acked_generation = CASE WHEN acked_generation < $1 THEN $1 ELSE acked_generation END, \
             ack_error = $2 WHERE id = $3",
        )
        .bind(generation as i64)
        .bind(error)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?;
        if error.is_none() {
            let gone =
                sqlx::query("DELETE FROM intent_workloads WHERE agent_id = $1 AND removed = 1 AND generation <= $2")
                    .bind(agent_id)
                    .bind(generation as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if gone > 0 {
                sqlx::query("UPDATE agent_intents SET floor = $1 WHERE agent_id = $2 AND floor < $1")
                    .bind(generation as i64)
                    .bind(agent_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes the agent's generation exceed `seen`, the last generation the agent says it holds
    /// (the store can be behind it after a restore from backup or a failover; the agent would
    /// otherwise refuse every assignment as stale). The rows are kept; the caller sends a full
    /// resync. An equal generation is not "ahead". Returns the new head if it was lifted.
    pub async fn lift_generation(&self, agent_id: &str, seen: u64, now_ms: i64) -> Result<Option<IntentHead>> {
        if seen == 0 {
            return Ok(None);
        }
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO agent_intents (agent_id, generation, workloads, updated_at, floor) VALUES ($1, 0, '[]', $2, 0) \
             ON CONFLICT (agent_id) DO NOTHING",
        )
        .bind(agent_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE agent_intents SET generation = $1 + 1, floor = $1 + 1, updated_at = $2 \
             WHERE agent_id = $3 AND generation < $1",
        )
        .bind(seen as i64)
        .bind(now_ms)
        .bind(agent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((n == 1).then_some(IntentHead { generation: seen + 1, floor: seen + 1 }))
    }

    /// Deployments with a live or removed row on this agent.
    pub async fn deployments_on_agent(&self, agent_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT deployment_id FROM intent_workloads WHERE agent_id = $1")
            .bind(agent_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deployments whose rows on this agent changed in generations `(after, upto]`.
    pub async fn deployments_changed_on_agent(&self, agent_id: &str, after: u64, upto: u64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT deployment_id FROM intent_workloads WHERE agent_id = $1 AND generation > $2 \
             AND generation <= $3",
        )
        .bind(agent_id)
        .bind(after as i64)
        .bind(upto as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    // ---- observed -----------------------------------------------------------------------

    /// Records what changed in an agent's report: workloads whose replicas changed (with their
    /// deployment), workloads it no longer reports, and the generation it acts on.
    pub async fn record_observed(
        &self,
        agent_id: &str,
        generation: u64,
        changed: &[(String, String, Vec<ReplicaStatus>)],
        gone: &[String],
        now_ms: i64,
    ) -> Result<()> {
        let report = ObservedReport {
            agent_id: agent_id.to_string(),
            generation,
            changed: changed.to_vec(),
            gone: gone.to_vec(),
        };
        self.record_observed_batch(std::slice::from_ref(&report), now_ms).await
    }

    /// Records many agents' reports in one transaction (in order: a later report of one agent
    /// wins). Multi-row statements throughout, so a thousand reports cost a few statements.
    pub async fn record_observed_batch(&self, reports: &[ObservedReport], now_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // The last word of the batch on each (agent, workload): a later report that removed a
        // workload must not be undone by an earlier one that changed it, nor the other way round.
        let mut last: BTreeMap<(&str, &str), Option<ObservedWrite<'_>>> = BTreeMap::new();
        for r in reports {
            for w in &r.gone {
                last.insert((r.agent_id.as_str(), w.as_str()), None);
            }
            for (w, d, replicas) in &r.changed {
                last.insert((r.agent_id.as_str(), w.as_str()), Some((d.as_str(), r.generation, replicas)));
            }
        }
        let mut gone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut rows = Vec::new();
        for ((agent, workload), action) in last {
            match action {
                None => gone.entry(agent).or_default().push(workload),
                Some(row) => rows.push(((agent, workload), row)),
            }
        }
        for (agent, workloads) in &gone {
            let mut offset = 0;
            for size in chunk_sizes(workloads.len(), CHUNK) {
                let chunk = &workloads[offset..offset + size];
                offset += size;
                let sql = format!(
                    "DELETE FROM agent_observed WHERE agent_id = $1 AND workload_id IN ({})",
                    (2..size + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(agent.to_string());
                for w in chunk {
                    q = q.bind(w.to_string());
                }
                q.execute(&mut *tx).await?;
            }
        }
        let mut offset = 0;
        for size in chunk_sizes(rows.len(), CHUNK) {
            let chunk = &rows[offset..offset + size];
            offset += size;
            let sql = format!(
                "INSERT INTO agent_observed (agent_id, workload_id, deployment_id, generation, replicas, reported_at) \
                 VALUES {} ON CONFLICT (agent_id, workload_id) DO UPDATE SET deployment_id = excluded.deployment_id, \
                 generation = excluded.generation, replicas = excluded.replicas, reported_at = excluded.reported_at",
                placeholders(size, 6)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((agent, workload), (deployment, generation, replicas)) in chunk {
                q = q
                    .bind(agent.to_string())
                    .bind(workload.to_string())
                    .bind(deployment.to_string())
                    .bind(*generation as i64)
                    .bind(serde_json::to_string(replicas).expect("replicas serialize"))
                    .bind(now_ms);
            }
            q.execute(&mut *tx).await?;
        }
        // The generation each agent acts on (the last report of each agent wins). An agent with
        // no workloads still tells us which generation it acts on.
        let mut generations: BTreeMap<&str, u64> = BTreeMap::new();
        for r in reports {
            generations.insert(r.agent_id.as_str(), r.generation);
        }
        let generations: Vec<_> = generations.into_iter().collect();
        let mut offset = 0;
        for size in chunk_sizes(generations.len(), CHUNK) {
            let chunk = &generations[offset..offset + size];
            offset += size;
            let values = (0..size)
                .map(|i| format!("SELECT ${} AS id, ${} AS g", 2 * i + 1, 2 * i + 2))
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let sql = format!(
                "UPDATE agents SET observed_generation = v.g, acked_generation = CASE WHEN agents.acked_generation < v.g \
                 THEN v.g ELSE agents.acked_generation END FROM ({values}) AS v WHERE agents.id = v.id"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (agent, generation) in chunk {
                q = q.bind(agent.to_string()).bind(*generation as i64);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Everything the agent reported last, as workload id → (deployment id, replicas): a new
    /// session starts from it, so a workload that stopped while the agent was away is seen gone.
    pub async fn observed_of_agent(&self, agent_id: &str) -> Result<BTreeMap<String, (String, Vec<ReplicaStatus>)>> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT workload_id, deployment_id, replicas FROM agent_observed WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(|(w, d, r)| Ok((w, (d, replicas_from(&r)?)))).collect()
    }

    /// What agents last reported for the deployment's workloads.
    pub async fn observed_of(&self, deployment_id: &str) -> Result<Vec<ObservedRow>> {
        let rows = sqlx::query(
            "SELECT o.agent_id, o.workload_id, o.replicas, a.observed_generation FROM agent_observed o \
             JOIN agents a ON a.id = o.agent_id WHERE o.deployment_id = $1 ORDER BY o.agent_id, o.workload_id",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ObservedRow {
                    agent_id: r.try_get("agent_id")?,
                    workload_id: r.try_get("workload_id")?,
                    agent_observed_generation: r.try_get::<i64, _>("observed_generation")? as u64,
                    replicas: replicas_from(&r.try_get::<String, _>("replicas")?)?,
                })
            })
            .collect()
    }

    // ---- status summary ---------------------------------------------------------------------

    /// Stores the derived status if it differs from the stored one. Returns whether it changed.
    /// When the `status` itself changes, the transition is appended to the deployment's events in
    /// the same transaction (one insert; see [`super::EVENTS_KEPT`] for the bound). On PostgreSQL
    /// the deployment row is locked first, so replicas storing one deployment's status at the
    /// same time serialize and each transition is recorded once, numbered in order. A transition
    /// also queues its `deployment.status` webhook event in the transaction.
    pub async fn put_status_summary(&self, deployment_id: &str, s: &StatusSummary, now_ms: i64) -> Result<bool> {
        if self.status_summary(deployment_id).await?.as_ref() == Some(s) {
            return Ok(false);
        }
        let mut tx = self.write_tx().await?;
        // What events say of the deployment: read with the lock PostgreSQL takes anyway.
        let mut named: Option<(String, String, String)> = None;
        if self.backend == Backend::Postgres {
            named = sqlx::query_as("SELECT name, environment, workspace FROM deployments WHERE id = $1 FOR UPDATE")
                .bind(deployment_id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let row = sqlx::query(
            "SELECT status, desired, current_count, ready, reasons, running_since, event_seq FROM deployment_status \
             WHERE deployment_id = $1",
        )
        .bind(deployment_id)
        .fetch_optional(&mut *tx)
        .await?;
        let previous = row.as_ref().map(|r| Ok::<_, StoreError>((summary_from(r)?, r.try_get::<i64, _>("event_seq")?)));
        let (previous, last_event) = match previous.transpose()? {
            Some((p, seq)) => (Some(p), seq),
            None => (None, 0),
        };
        if previous.as_ref() == Some(s) {
            return Ok(false);
        }
        let transition = previous.as_ref().is_none_or(|p| p.status != s.status);
        let event_seq = last_event + i64::from(transition);
        sqlx::query(
            "INSERT INTO deployment_status (deployment_id, status, desired, current_count, ready, reasons, \
             running_since, updated_at, event_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (deployment_id) DO UPDATE \
             SET status = excluded.status, desired = excluded.desired, current_count = excluded.current_count, \
             ready = excluded.ready, reasons = excluded.reasons, running_since = excluded.running_since, \
             updated_at = excluded.updated_at, event_seq = excluded.event_seq",
        )
        .bind(deployment_id)
        .bind(&s.status)
        .bind(s.desired as i64)
        .bind(s.current as i64)
        .bind(s.ready as i64)
        .bind(serde_json::to_string(&s.reasons).expect("strings serialize"))
        .bind(s.running_since)
        .bind(now_ms)
        .bind(event_seq)
        .execute(&mut *tx)
        .await?;
        if transition {
            let event = super::EventRecord {
                deployment_id: deployment_id.to_string(),
                seq: event_seq,
                at: now_ms,
                from: previous.map(|p| p.status),
                to: s.status.clone(),
                reasons: s.reasons.clone(),
                message: format!("{} of {} replicas ready", s.ready, s.desired),
            };
            Self::append_event(&mut tx, &event).await?;
            if self.backend == Backend::Sqlite {
                named = sqlx::query_as("SELECT name, environment, workspace FROM deployments WHERE id = $1")
                    .bind(deployment_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            }
            let deployment = crate::webhooks::deployment_ref(
                deployment_id,
                named.as_ref().map(|(n, e, w)| (n.as_str(), e.as_str(), w.as_str())),
            );
            let queued = Self::queue_event(&mut tx, &crate::webhooks::status_event(deployment, &event)).await?;
            tx.commit().await?;
            self.wake_webhooks(queued);
            return Ok(true);
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn status_summary(&self, deployment_id: &str) -> Result<Option<StatusSummary>> {
        let row = sqlx::query(
            "SELECT status, desired, current_count, ready, reasons, running_since FROM deployment_status \
             WHERE deployment_id = $1",
        )
        .bind(deployment_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(summary_from).transpose()
    }

    // ---- liveness -----------------------------------------------------------------------------

    /// Writes one heartbeat time for many sessions at once and tells which of them still own
    /// their agent, with each agent's intent generation (so a session notices intent written by
    /// another replica). Sessions that lost ownership are not refreshed.
    pub async fn flush_liveness(
        &self,
        sessions: &[(String, String)],
        now_ms: i64,
    ) -> Result<Vec<(String, Ownership, u64)>> {
        let mut out = Vec::with_capacity(sessions.len());
        let mut offset = 0;
        for size in chunk_sizes(sessions.len(), CHUNK) {
            let chunk = &sessions[offset..offset + size];
            offset += size;
            let list = (1..=size).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT a.id, a.session_id, a.revoked_at, COALESCE(i.generation, 0) AS generation FROM agents a \
                 LEFT JOIN agent_intents i ON i.agent_id = a.id WHERE a.id IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (agent, _) in chunk {
                q = q.bind(agent.clone());
            }
            let mut found: BTreeMap<String, (Option<String>, bool, u64)> = BTreeMap::new();
            for r in q.fetch_all(&self.pool).await? {
                let id: String = r.try_get("id")?;
                let session: Option<String> = r.try_get("session_id")?;
                let revoked = r.try_get::<Option<i64>, _>("revoked_at")?.is_some();
                let generation = r.try_get::<i64, _>("generation")? as u64;
                found.insert(id, (session, revoked, generation));
            }
            let mut owned = Vec::new();
            for (agent, session) in chunk {
                let (ownership, generation) = match found.get(agent) {
                    None => (Ownership::Unknown, 0),
                    Some((_, true, g)) => (Ownership::Revoked, *g),
                    Some((Some(s), false, g)) if s == session => (Ownership::Owned, *g),
                    Some((_, false, g)) => (Ownership::Superseded, *g),
                };
                if ownership == Ownership::Owned {
                    owned.push(agent.clone());
                }
                out.push((agent.clone(), ownership, generation));
            }
            for size in chunk_sizes(owned.len(), CHUNK) {
                let ids: Vec<String> = owned.drain(..size).collect();
                let list = (2..size + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "UPDATE agents SET last_heartbeat = $1 WHERE id IN ({list}) AND revoked_at IS NULL \
                     AND session_id IS NOT NULL"
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms);
                for id in ids {
                    q = q.bind(id);
                }
                q.execute(&self.pool).await?;
            }
        }
        Ok(out)
    }
}

fn summary_from(r: &AnyRow) -> Result<StatusSummary> {
    Ok(StatusSummary {
        status: r.try_get("status")?,
        desired: r.try_get::<i64, _>("desired")? as u32,
        current: r.try_get::<i64, _>("current_count")? as u32,
        ready: r.try_get::<i64, _>("ready")? as u32,
        reasons: serde_json::from_str(&r.try_get::<String, _>("reasons")?).map_err(|e| StoreError::Corrupt {
            table: "deployment_status",
            column: "reasons",
            message: e.to_string(),
        })?,
        running_since: r.try_get("running_since")?,
    })
}

pub(super) fn summary_from_row(r: &AnyRow) -> Result<Option<StatusSummary>> {
    let status: Option<String> = r.try_get("status")?;
    if status.is_none() {
        return Ok(None);
    }
    summary_from(r).map(Some)
}

/// Bumps the generation of each agent by one (creating its head at 1), returning the new ones.
async fn bump_generations(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    agents: &[&str],
    now_ms: i64,
) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    for size in chunk_sizes(agents.len(), CHUNK) {
        let chunk = &agents[offset..offset + size];
        offset += size;
        let sql = format!(
            "INSERT INTO agent_intents (agent_id, generation, workloads, updated_at, floor) VALUES {} \
             ON CONFLICT (agent_id) DO UPDATE SET generation = agent_intents.generation + 1, \
             updated_at = excluded.updated_at RETURNING agent_id, generation",
            (0..size).map(|r| format!("(${}, 1, '[]', ${}, 0)", 2 * r + 1, 2 * r + 2)).collect::<Vec<_>>().join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q.bind(a.to_string()).bind(now_ms);
        }
        for r in q.fetch_all(&mut **tx).await? {
            let agent: String = r.try_get("agent_id")?;
            let generation: i64 = r.try_get("generation")?;
            out.insert(agent, generation as u64);
        }
    }
    Ok(out)
}
