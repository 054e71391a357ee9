//! Environments in full: their configuration (type, description, promotion chain, variables,
//! limits), deleting them, and what their deployments hold against their limits.
//!
//! Lock order (PostgreSQL; SQLite's `BEGIN IMMEDIATE` serializes writers anyway): an
//! environment's row, then its deployments' rows in id order, then its usage row, always last.
//! * A deployment create reads its environment's row `FOR SHARE`, so a delete of the environment
//!   (which counts its deployments under the row's `FOR UPDATE`) either waits and finds it, or
//!   the create finds the environment gone.
//! * A change of a deployment locks the deployment's row and, only if what it holds changes,
//!   its environment's usage row ([`Store::allocate`]); a change of the environment's variables
//!   (like one of its secrets) locks the environment's row and then its deployments. Neither
//!   waits for the other while holding what the other needs.
//! * A change of the promotion chain locks every environment's row (in id order) so that two
//!   concurrent changes cannot close a cycle between them.

use std::collections::BTreeMap;

use sqlx::Row;

use super::deployments::{DEPLOYMENT_COLUMNS, deployment_from_row, environment_from_row};
use super::{Audit, Backend, DeploymentRecord, EnvironmentRecord, OperationRecord, Result, Store, StoreError};
use crate::resources::{self, Allocation, Exceeded, Limits, Usage};

/// What a configuration change of an environment sets (`None`: keep).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentChange {
    pub kind: Option<String>,
    pub description: Option<String>,
    /// `Some(None)`: the end of a chain.
    pub promotes_to: Option<Option<String>>,
    pub variables: Option<BTreeMap<String, String>>,
    pub limits: Option<Limits>,
}

impl EnvironmentChange {
    /// The environment with this change applied (`updated_at` aside).
    pub fn applied_to(&self, env: &EnvironmentRecord) -> EnvironmentRecord {
        let mut next = env.clone();
        if let Some(k) = &self.kind {
            next.kind.clone_from(k);
        }
        if let Some(d) = &self.description {
            next.description.clone_from(d);
        }
        if let Some(p) = &self.promotes_to {
            next.promotes_to.clone_from(p);
        }
        if let Some(v) = &self.variables {
            next.variables.clone_from(v);
        }
        if let Some(l) = self.limits {
            next.limits = l;
        }
        next
    }
}

/// What [`Store::configure_environment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentConfigured {
    /// The environment as it is now, and the deployments that got a new revision (with their
    /// operations).
    Done {
        environment: Box<EnvironmentRecord>,
        rolled_out: Vec<(DeploymentRecord, OperationRecord)>,
    },
    NotFound,
}

/// What [`Store::delete_environment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentDelete {
    Deleted,
    NotFound,
    /// Live deployments are still in it.
    HasDeployments(i64),
    /// These environments promote to it.
    Referenced(Vec<String>),
}

/// What a deployment record holds (its stored configuration must parse).
pub(super) fn allocation_of(d: &DeploymentRecord) -> Result<Allocation> {
    Allocation::of_spec(&d.spec, d.desired_state).map_err(|e| StoreError::Corrupt {
        table: "deployments",
        column: "spec",
        message: e.to_string(),
    })
}

fn usage_from(row: (i64, i64, i64)) -> Usage {
    Usage { pods: row.0, cpu_millis: row.1, memory_bytes: row.2 }
}

impl Store {
    /// Creates an environment's (empty) usage row unless it exists.
    pub(super) async fn insert_usage(conn: &mut sqlx::AnyConnection, environment: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO environment_usage (environment, pods, cpu_millis, memory_bytes) VALUES ($1, 0, 0, 0) \
             ON CONFLICT (environment) DO NOTHING",
        )
        .bind(environment)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// An environment's limits, read in a deployment write's transaction; with `share`, under a
    /// share lock on its row (a create: the environment cannot be deleted until it commits).
    /// `None`: no such environment.
    pub(super) async fn environment_limits(
        &self,
        conn: &mut sqlx::AnyConnection,
        environment: &str,
        share: bool,
    ) -> Result<Option<Limits>> {
        let lock = if share && self.backend == Backend::Postgres { " FOR SHARE" } else { "" };
        let sql = format!("SELECT limits FROM environments WHERE name = $1{lock}");
        let Some(doc): Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(environment).fetch_optional(conn).await?
        else {
            return Ok(None);
        };
        let limits = serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt {
            table: "environments",
            column: "limits",
            message: e.to_string(),
        })?;
        Ok(Some(limits))
    }

    /// Moves what a deployment holds in its environment from `before` to `after` (a create: from
    /// nothing; a delete: to nothing), in the deployment write's transaction, checking the
    /// environment's limits ([`resources::check`]): only growth past a limit is refused (and
    /// then the caller must not commit). Nothing is read or written when nothing changes; the
    /// usage row is locked last, so a concurrent write in the environment waits only for the
    /// commit. `limits`: already read by the caller (else read when something grows).
    pub(super) async fn allocate(
        &self,
        conn: &mut sqlx::AnyConnection,
        environment: &str,
        limits: Option<&Limits>,
        before: &Allocation,
        after: &Allocation,
    ) -> Result<std::result::Result<(), Exceeded>> {
        if before == after {
            return Ok(Ok(()));
        }
        let grows = after.replicas > before.replicas
            || after.pods > before.pods
            || after.cpu_millis > before.cpu_millis
            || after.memory_bytes > before.memory_bytes;
        let limits = match (limits, grows) {
            (Some(l), _) => *l,
            (None, true) => self.environment_limits(&mut *conn, environment, false).await?.unwrap_or_default(),
            (None, false) => Limits::default(),
        };
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT pods, cpu_millis, memory_bytes FROM environment_usage WHERE environment = $1{lock}");
        let mut row: Option<(i64, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(environment).fetch_optional(&mut *conn).await?;
        if row.is_none() {
            Self::insert_usage(&mut *conn, environment).await?;
            row = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(environment).fetch_optional(&mut *conn).await?;
        }
        let usage = usage_from(row.unwrap_or_default());
        let next = match resources::check(&limits, &usage, before, after) {
            Ok(next) => next,
            Err(e) => return Ok(Err(e)),
        };
        sqlx::query(
            "UPDATE environment_usage SET pods = $2, cpu_millis = $3, memory_bytes = $4 WHERE environment = $1",
        )
        .bind(environment)
        .bind(next.pods.max(0))
        .bind(next.cpu_millis.max(0))
        .bind(next.memory_bytes.max(0))
        .execute(conn)
        .await?;
        Ok(Ok(()))
    }

    /// What an environment's live deployments hold together.
    pub async fn environment_usage(&self, environment: &str) -> Result<Usage> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT pods, cpu_millis, memory_bytes FROM environment_usage WHERE environment = $1")
                .bind(environment)
                .fetch_optional(&self.pool)
                .await?;
        Ok(usage_from(row.unwrap_or_default()))
    }

    /// The environment's row (by id) locked for update, and its live deployments locked in id
    /// order: the order every writer of several deployments takes. `None`: no such environment.
    pub(super) async fn lock_environment_deployments(
        &self,
        conn: &mut sqlx::AnyConnection,
        environment_id: &str,
    ) -> Result<Option<(EnvironmentRecord, Vec<DeploymentRecord>)>> {
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT * FROM environments WHERE id = $1{lock}");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(environment_id).fetch_optional(&mut *conn).await?
        else {
            return Ok(None);
        };
        let env = environment_from_row(&row)?;
        let deployments = Self::lock_deployments_of(self.backend, conn, &env.name).await?;
        Ok(Some((env, deployments)))
    }

    async fn lock_deployments_of(
        backend: Backend,
        conn: &mut sqlx::AnyConnection,
        environment: &str,
    ) -> Result<Vec<DeploymentRecord>> {
        let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE environment = $1 AND deleted_at IS NULL ORDER BY id{lock}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(environment).fetch_all(conn).await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Stores a locked deployment's rolled-out desired state (a new revision of the same
    /// template with new pins: secrets, environment variables), its revision and operation, like
    /// any change of it. What it holds does not change, so its environment's usage does not.
    pub(super) async fn store_rollout(
        conn: &mut sqlx::AnyConnection,
        before: &DeploymentRecord,
        next: (DeploymentRecord, OperationRecord),
        audit_id: Option<&str>,
        queued: &mut u64,
    ) -> Result<(DeploymentRecord, OperationRecord)> {
        let (mut record, op) = next;
        if allocation_of(&record)? != allocation_of(before)? {
            return Err(StoreError::Invalid(format!("a rollout of {} would change what it holds", before.id)));
        }
        Self::update_deployment(&mut *conn, &record).await?;
        Self::insert_revision(&mut *conn, &record, audit_id).await?;
        *queued += Self::insert_operation(&mut *conn, &op).await?;
        record.resource_version = before.resource_version + 1;
        Ok((record, op))
    }

    /// Changes an environment's configuration in one transaction under its row's lock (every
    /// environment's, when the promotion chain changes, so two changes cannot close a cycle):
    ///
    /// 1. `check` sees the environment before and after the change and the promotion chain after
    ///    it (every environment's `(name, promotesTo)`), and returns the audit record or refuses
    ///    (nothing is written).
    /// 2. The environment is updated and the audit record written.
    /// 3. When the change sets variables, `rollout` sees every live deployment of the
    ///    environment (locked in id order) with the variables, and returns its new desired state
    ///    (a new revision pinning them) if it changes; that is stored like any change of it.
    pub async fn configure_environment<E>(
        &self,
        id: &str,
        change: &EnvironmentChange,
        check: impl FnOnce(
            &EnvironmentRecord,
            &EnvironmentRecord,
            &[(String, Option<String>)],
        ) -> std::result::Result<Audit, E>,
        mut rollout: impl FnMut(
            &DeploymentRecord,
            &BTreeMap<String, String>,
        ) -> std::result::Result<Option<(DeploymentRecord, OperationRecord)>, E>,
        now_ms: i64,
    ) -> Result<std::result::Result<EnvironmentConfigured, E>> {
        let mut tx = self.write_tx().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let mut chain: Vec<(String, Option<String>)> = Vec::new();
        if change.promotes_to.is_some() {
            let sql = format!("SELECT id, name, promotes_to FROM environments ORDER BY id{lock}");
            let rows: Vec<(String, String, Option<String>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
            chain = rows.into_iter().map(|(_, name, next)| (name, next)).collect();
        }
        let sql = format!("SELECT * FROM environments WHERE id = $1{lock}");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(Ok(EnvironmentConfigured::NotFound));
        };
        let before = environment_from_row(&row)?;
        let mut after = change.applied_to(&before);
        after.updated_at = now_ms;
        for (name, next) in &mut chain {
            if *name == after.name {
                next.clone_from(&after.promotes_to);
            }
        }
        let audit = match check(&before, &after, &chain) {
            Ok(audit) => audit,
            Err(e) => return Ok(Err(e)),
        };
        sqlx::query(
            "UPDATE environments SET type = $2, description = $3, promotes_to = $4, variables = $5, limits = $6, \
             updated_at = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(&after.kind)
        .bind(&after.description)
        .bind(after.promotes_to.clone())
        .bind(super::labels_to_json(&after.variables))
        .bind(serde_json::to_string(&after.limits).expect("limits serialize"))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let audit_id = Self::write_audit(&mut tx, &audit, now_ms).await?;
        let mut rolled_out = Vec::new();
        let mut queued = 0;
        if change.variables.is_some() {
            for d in Self::lock_deployments_of(self.backend, &mut tx, &after.name).await? {
                let next = match rollout(&d, &after.variables) {
                    Ok(Some(next)) => next,
                    Ok(None) => continue,
                    Err(e) => return Ok(Err(e)),
                };
                rolled_out.push(Self::store_rollout(&mut tx, &d, next, Some(&audit_id), &mut queued).await?);
            }
        }
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(Ok(EnvironmentConfigured::Done { environment: Box::new(after), rolled_out }))
    }

    /// Deletes an environment that holds no live deployment and that no other environment
    /// promotes to, with its secrets and its usage row. Counting and deleting happen under the
    /// environment row's lock, so a concurrent create in it (which reads the row `FOR SHARE`)
    /// either lands first and the delete is refused, or finds the environment gone.
    pub async fn delete_environment(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<EnvironmentDelete> {
        let mut tx = self.write_tx().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT name FROM environments WHERE id = $1{lock}");
        let Some(name): Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(EnvironmentDelete::NotFound);
        };
        let deployments: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE environment = $1 AND deleted_at IS NULL")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?;
        if deployments > 0 {
            return Ok(EnvironmentDelete::HasDeployments(deployments));
        }
        let referrers: Vec<String> =
            sqlx::query_scalar("SELECT name FROM environments WHERE promotes_to = $1 AND id <> $2 ORDER BY name")
                .bind(&name)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        if !referrers.is_empty() {
            return Ok(EnvironmentDelete::Referenced(referrers));
        }
        sqlx::query("DELETE FROM secrets WHERE scope = 'environment' AND scope_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM environment_usage WHERE environment = $1").bind(&name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM environments WHERE id = $1").bind(id).execute(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(EnvironmentDelete::Deleted)
    }

    /// An environment's live deployments (of those `visible`) counted by stored status (a
    /// deployment without a summary yet counts as `deploying`), in one grouped query.
    pub async fn environment_status_counts(
        &self,
        environment: &str,
        visible: Option<&super::Visibility>,
    ) -> Result<BTreeMap<String, i64>> {
        let filter = super::DeploymentFilter { environment: Some(environment), visible, ..Default::default() };
        let Some((from, binds)) = super::deployments::filter_sql(&filter) else { return Ok(BTreeMap::new()) };
        let condition = from.strip_prefix("FROM deployments d ").unwrap_or(&from);
        let sql = format!(
            "SELECT COALESCE(s.status, 'deploying') AS status, COUNT(*) AS n FROM deployments d \
             LEFT JOIN deployment_status s ON s.deployment_id = d.id {condition} \
             GROUP BY COALESCE(s.status, 'deploying')"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.to_string());
        }
        let mut out = BTreeMap::new();
        for row in q.fetch_all(&self.pool).await? {
            out.insert(row.try_get::<String, _>("status")?, row.try_get::<i64, _>("n")?);
        }
        Ok(out)
    }
}
