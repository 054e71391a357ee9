//! Desired state (environments, deployments), operations, per-agent intent and observed state.

use std::collections::BTreeMap;

use ferry_protocol::{Assignment, ReplicaStatus, Status, Workload};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub locked: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A deployment's desired state. `spec` and `target` are JSON documents validated by
/// [`crate::model`] before they are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub active_version: String,
    pub spec: String,
    pub target: String,
    /// `running` or `stopped`.
    pub desired_state: String,
    pub restart_nonce: i64,
    /// Bumped by every change; the ETag.
    pub resource_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_deployed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: String,
    pub kind: String,
    pub deployment_id: String,
    /// `in_progress`, `succeeded` or `failed`.
    pub status: String,
    pub message: String,
    pub request_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub struct DeploymentFilter<'a> {
    pub environment: Option<&'a str>,
    pub name: Option<&'a str>,
}

const DEPLOYMENT_COLUMNS: &str = "id, name, environment, active_version, spec, target, desired_state, \
     restart_nonce, resource_version, created_at, updated_at, last_deployed_at";

fn deployment_from_row(r: &AnyRow) -> Result<DeploymentRecord> {
    Ok(DeploymentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        environment: r.try_get("environment")?,
        active_version: r.try_get("active_version")?,
        spec: r.try_get("spec")?,
        target: r.try_get("target")?,
        desired_state: r.try_get("desired_state")?,
        restart_nonce: r.try_get("restart_nonce")?,
        resource_version: r.try_get("resource_version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_deployed_at: r.try_get("last_deployed_at")?,
    })
}

fn environment_from_row(r: &AnyRow) -> Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("type")?,
        description: r.try_get("description")?,
        locked: r.try_get::<i64, _>("locked")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn operation_from_row(r: &AnyRow) -> Result<OperationRecord> {
    Ok(OperationRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        deployment_id: r.try_get("deployment_id")?,
        status: r.try_get("status")?,
        message: r.try_get("message")?,
        request_id: r.try_get("request_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

fn corrupt(column: &'static str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt { table: "agent_intents", column, message: e.to_string() }
}

/// The outcome of a conditional write on a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<T> {
    Done(T),
    NotFound,
    /// `If-Match` named another resource version.
    Conflict {
        current: i64,
    },
}

impl Store {
    // ---- environments -------------------------------------------------------------------

    /// Creates `development`, `staging` and `production` unless they exist (idempotent).
    pub async fn seed_environments(&self, now_ms: i64) -> Result<()> {
        // Distinct creation times keep the promotion order in listings.
        for (i, (name, description)) in [
            ("development", "Development environment"),
            ("staging", "Staging environment"),
            ("production", "Production environment"),
        ]
        .into_iter()
        .enumerate()
        {
            sqlx::query(
                "INSERT INTO environments (id, name, type, description, locked, created_at, updated_at) \
                 VALUES ($1, $2, $2, $3, 0, $4, $4) ON CONFLICT (name) DO NOTHING",
            )
            .bind(format!("env-{name}"))
            .bind(name)
            .bind(description)
            .bind(now_ms + i as i64)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn list_environments(&self) -> Result<Vec<EnvironmentRecord>> {
        let rows = sqlx::query("SELECT * FROM environments ORDER BY created_at, name").fetch_all(&self.pool).await?;
        rows.iter().map(environment_from_row).collect()
    }

    /// By id or by name.
    pub async fn get_environment(&self, key: &str) -> Result<Option<EnvironmentRecord>> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = $1 OR name = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(environment_from_row).transpose()
    }

    /// Inserts an environment; `false` if the name is taken.
    pub async fn create_environment(&self, env: &EnvironmentRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "INSERT INTO environments (id, name, type, description, locked, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&env.id)
        .bind(&env.name)
        .bind(&env.kind)
        .bind(&env.description)
        .bind(i64::from(env.locked))
        .bind(env.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::write_audit(&mut tx, audit, env.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- deployments ------------------------------------------------------------------

    /// Inserts a deployment and its first operation. `false` if the environment already has a
    /// live deployment of that name.
    pub async fn create_deployment(&self, d: &DeploymentRecord, op: &OperationRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT id FROM deployments WHERE environment = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(&d.environment)
        .bind(&d.name)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            return Ok(false);
        }
        let sql = format!(
            "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&d.id)
            .bind(&d.name)
            .bind(&d.environment)
            .bind(&d.active_version)
            .bind(&d.spec)
            .bind(&d.target)
            .bind(&d.desired_state)
            .bind(d.restart_nonce)
            .bind(d.resource_version)
            .bind(d.created_at)
            .bind(d.updated_at)
            .bind(d.last_deployed_at)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            // The partial unique index caught a concurrent create of the same name.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        Self::insert_operation(&mut tx, op).await?;
        Self::write_audit(&mut tx, audit, d.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Every live deployment (the planner's input).
    pub async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let sql =
            format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE deleted_at IS NULL ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(deployment_from_row).collect()
    }

    pub async fn list_deployments(&self, f: DeploymentFilter<'_>) -> Result<Vec<DeploymentRecord>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE deleted_at IS NULL \
             AND ($1 = '' OR environment = $1) AND ($2 = '' OR name = $2) ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.environment.unwrap_or(""))
            .bind(f.name.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Replaces a deployment's desired state (compare-and-set on `resource_version` when
    /// `if_match` is given) and records the operation, atomically.
    pub async fn update_deployment(
        &self,
        d: &DeploymentRecord,
        if_match: Option<i64>,
        op: &OperationRecord,
        audit: &Audit,
    ) -> Result<Write<DeploymentRecord>> {
        let mut tx = self.write_tx().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT resource_version FROM deployments WHERE id = $1 AND deleted_at IS NULL")
                .bind(&d.id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = current else { return Ok(Write::NotFound) };
        if if_match.is_some_and(|v| v != current) {
            return Ok(Write::Conflict { current });
        }
        let n = sqlx::query(
            "UPDATE deployments SET active_version = $1, spec = $2, target = $3, desired_state = $4, \
             restart_nonce = $5, resource_version = resource_version + 1, updated_at = $6, last_deployed_at = $7 \
             WHERE id = $8 AND resource_version = $9 AND deleted_at IS NULL",
        )
        .bind(&d.active_version)
        .bind(&d.spec)
        .bind(&d.target)
        .bind(&d.desired_state)
        .bind(d.restart_nonce)
        .bind(d.updated_at)
        .bind(d.last_deployed_at)
        .bind(&d.id)
        .bind(current)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(Write::Conflict { current });
        }
        Self::insert_operation(&mut tx, op).await?;
        Self::write_audit(&mut tx, audit, d.updated_at).await?;
        tx.commit().await?;
        Ok(match self.get_deployment(&d.id).await? {
            Some(d) => Write::Done(d),
            None => Write::NotFound,
        })
    }

    /// Soft-deletes (the planner drops it; the row stays for audit) and records the operation.
    pub async fn delete_deployment(&self, id: &str, op: &OperationRecord, audit: &Audit, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE deployments SET deleted_at = $1, resource_version = resource_version + 1 \
             WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::insert_operation(&mut tx, op).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- operations ---------------------------------------------------------------------

    /// Records a new desired-state change's operation; in the same transaction, the deployment's
    /// earlier open operations end as superseded (so concurrent changes cannot supersede the one
    /// that is actually in force).
    async fn insert_operation(conn: &mut sqlx::AnyConnection, op: &OperationRecord) -> Result<()> {
        sqlx::query(
            "UPDATE operations SET status = 'failed', message = 'superseded by a newer change', updated_at = $1, \
             finished_at = $1 WHERE deployment_id = $2 AND status = 'in_progress'",
        )
        .bind(op.created_at)
        .bind(&op.deployment_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO operations (id, kind, deployment_id, status, message, request_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&op.id)
        .bind(&op.kind)
        .bind(&op.deployment_id)
        .bind(&op.status)
        .bind(&op.message)
        .bind(&op.request_id)
        .bind(op.created_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        let row = sqlx::query("SELECT * FROM operations WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    pub async fn open_operations(&self) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query("SELECT * FROM operations WHERE status = 'in_progress' ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(operation_from_row).collect()
    }

    /// Ends an operation unless it already ended (first writer wins across replicas).
    pub async fn finish_operation(&self, id: &str, status: &str, message: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE operations SET status = $1, message = $2, updated_at = $3, finished_at = $3 \
             WHERE id = $4 AND status = 'in_progress'",
        )
        .bind(status)
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // ---- intent -------------------------------------------------------------------------

    pub async fn intents(&self) -> Result<BTreeMap<String, Assignment>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT agent_id, generation, workloads FROM agent_intents").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(agent, generation, workloads)| {
                let workloads: Vec<Workload> = serde_json::from_str(&workloads).map_err(|e| corrupt("workloads", e))?;
                Ok((agent, Assignment { generation: generation as u64, workloads }))
            })
            .collect()
    }

    pub async fn intent(&self, agent_id: &str) -> Result<Option<Assignment>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT generation, workloads FROM agent_intents WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(g, w)| {
            Ok(Assignment {
                generation: g as u64,
                workloads: serde_json::from_str(&w).map_err(|e| corrupt("workloads", e))?,
            })
        })
        .transpose()
    }

    /// Writes a new intent if the stored generation is still `new.generation - 1` (or absent
    /// for generation 1): a compare-and-set, so two planners can never hand out one generation
    /// twice. Returns whether it was written.
    pub async fn put_intent(&self, agent_id: &str, new: &Assignment, now_ms: i64) -> Result<bool> {
        let workloads = serde_json::to_string(&new.workloads).expect("workloads serialize");
        let generation = new.generation as i64;
        let n = if generation == 1 {
            sqlx::query(
                "INSERT INTO agent_intents (agent_id, generation, workloads, updated_at) VALUES ($1, 1, $2, $3) \
                 ON CONFLICT (agent_id) DO NOTHING",
            )
            .bind(agent_id)
            .bind(&workloads)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(
                "UPDATE agent_intents SET generation = $1, workloads = $2, updated_at = $3 \
                 WHERE agent_id = $4 AND generation = $5",
            )
            .bind(generation)
            .bind(&workloads)
            .bind(now_ms)
            .bind(agent_id)
            .bind(generation - 1)
            .execute(&self.pool)
            .await?
        };
        Ok(n.rows_affected() == 1)
    }

    /// Makes the agent's intent generation exceed `seen`, the last generation the agent says it
    /// applied (the store can be behind it after a restore from backup or a database failover;
    /// the agent would otherwise refuse every assignment as stale). The workloads are kept; the
    /// planner corrects them on its next pass. Returns whether anything changed.
    pub async fn lift_generation(&self, agent_id: &str, seen: u64, now_ms: i64) -> Result<bool> {
        let seen = seen as i64;
        let n = sqlx::query(
            "UPDATE agent_intents SET generation = $1 + 1, updated_at = $2 WHERE agent_id = $3 AND generation <= $1",
        )
        .bind(seen)
        .bind(now_ms)
        .bind(agent_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 || seen == 0 {
            return Ok(n == 1);
        }
        let n = sqlx::query(
            "INSERT INTO agent_intents (agent_id, generation, workloads, updated_at) VALUES ($1, $2 + 1, '[]', $3) \
             ON CONFLICT (agent_id) DO NOTHING",
        )
        .bind(agent_id)
        .bind(seen)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // ---- observed -----------------------------------------------------------------------

    /// Records an agent's report: replaces everything it reported before (a workload it no
    /// longer mentions is no longer running there).
    pub async fn record_status(&self, agent_id: &str, status: &Status, now_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM agent_observed WHERE agent_id = $1").bind(agent_id).execute(&mut *tx).await?;
        for w in &status.workloads {
            sqlx::query(
                "INSERT INTO agent_observed (agent_id, workload_id, generation, replicas, reported_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(agent_id)
            .bind(&w.id)
            .bind(status.generation as i64)
            .bind(serde_json::to_string(&w.replicas).expect("replicas serialize"))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        // An agent with no workloads still tells us which generation it acts on.
        sqlx::query("UPDATE agents SET acked_generation = $1 WHERE id = $2 AND acked_generation < $1")
            .bind(status.generation as i64)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_ack(&self, agent_id: &str, generation: u64, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE agents SET acked_generation = CASE WHEN acked_generation < $1 THEN $1 ELSE acked_generation END, \
             ack_error = $2 WHERE id = $3",
        )
        .bind(generation as i64)
        .bind(error)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What each agent last reported for `workload_id`: agent → (generation, replicas).
    pub async fn observed_for(&self, workload_id: &str) -> Result<BTreeMap<String, (u64, Vec<ReplicaStatus>)>> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT agent_id, generation, replicas FROM agent_observed WHERE workload_id = $1")
                .bind(workload_id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(a, g, r)| {
                let replicas = serde_json::from_str(&r).map_err(|e| StoreError::Corrupt {
                    table: "agent_observed",
                    column: "replicas",
                    message: e.to_string(),
                })?;
                Ok((a, (g as u64, replicas)))
            })
            .collect()
    }

    /// Each agent's acknowledged generation (agents that never acked are absent).
    pub async fn acked_generations(&self) -> Result<BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, acked_generation FROM agents WHERE acked_generation > 0")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(a, g)| (a, g as u64)).collect())
    }
}
