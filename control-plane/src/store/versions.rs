//! A deployment's versions: immutable, named templates (`deployment_versions`). They are written
//! only under the deployment row's write lock (like every change of the deployment), so naming,
//! deploying and rolling back serialize with every other change of it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::approvals::Claim;
use super::deployments::{DEPLOYMENT_COLUMNS, deployment_from_row};
use super::{Audit, DeploymentRecord, OperationRecord, Result, Store, StoreError, Write};
use crate::domain::VersionStatus;

/// How many of a deployment's most recent deploys a rollback looks back at.
pub const HISTORY_LOOKBACK: i64 = 100;

/// One version of a deployment. Everything but its status (and the record of its last deploy)
/// is immutable once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub deployment_id: String,
    pub version: String,
    /// The template as JSON: the configuration without the replica count and the fields Ferry
    /// sets ([`crate::model::OUTSIDE_VERSIONS`]).
    pub configuration: String,
    pub description: String,
    /// Where the template came from (a Git pin: repository, ref, commit, path), as JSON.
    pub source: Option<String>,
    pub created_at: i64,
    /// The audit name of whoever created it.
    pub created_by: String,
    /// The audit record of its creation (set by the store when it writes one).
    pub audit_id: Option<String>,
    pub status: VersionStatus,
    pub status_reason: String,
    pub status_changed_at: Option<i64>,
    /// Creation order within the deployment, from 1 (set by the store).
    pub seq: i64,
    /// Order of its last deploy within the deployment; `None`: never deployed.
    pub deployed_seq: Option<i64>,
    pub deployed_at: Option<i64>,
    pub deployed_by: Option<String>,
    /// The operation of its last deploy.
    pub deploy_operation_id: Option<String>,
}

impl VersionRecord {
    /// A new, never deployed version (the store numbers it).
    pub fn new(deployment_id: &str, version: &str, configuration: String, created_by: String, now: i64) -> Self {
        Self {
            deployment_id: deployment_id.into(),
            version: version.into(),
            configuration,
            description: String::new(),
            source: None,
            created_at: now,
            created_by,
            audit_id: None,
            status: VersionStatus::Available,
            status_reason: String::new(),
            status_changed_at: None,
            seq: 0,
            deployed_seq: None,
            deployed_at: None,
            deployed_by: None,
            deploy_operation_id: None,
        }
    }
}

/// What a change reads of the deployment's versions under its row lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionReads<'a> {
    /// This version, by name.
    pub named: Option<&'a str>,
    /// The deployment's active version.
    pub active: bool,
    /// Its most recent deploys (up to [`HISTORY_LOOKBACK`]), last deployed first.
    pub history: bool,
    /// A free generated name (`v<N>`, N = the number of versions + 1, bumped until free).
    pub auto_name: bool,
}

/// What was read, under the lock.
#[derive(Debug, Clone, Default)]
pub struct VersionsRead {
    pub named: Option<VersionRecord>,
    pub active: Option<VersionRecord>,
    pub history: Vec<VersionRecord>,
    pub auto_name: Option<String>,
}

/// What a change writes of the deployment's versions, in its transaction.
#[derive(Debug, Clone, Default)]
pub struct VersionsWrite {
    /// A new version, created by this change (its audit record is the change's).
    pub create: Option<VersionRecord>,
    /// The change deploys the deployment's (new) active version: record it as its last deploy
    /// (order, time, who, operation).
    pub deployed: bool,
    /// A version whose status changes (a rollback away from it).
    pub mark: Option<VersionMark>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMark {
    pub version: String,
    pub status: VersionStatus,
    pub reason: String,
}

/// The outcome of [`Store::create_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionCreate {
    Created(VersionRecord),
    /// A version of that name exists already (nothing was written): the caller compares.
    Existing(VersionRecord),
}

const VERSION_COLUMNS: &str = "deployment_id, version, configuration, description, source, created_at, created_by, \
     audit_id, status, status_reason, status_changed_at, seq, deployed_seq, deployed_at, deployed_by, \
     deploy_operation_id";

fn version_from_row(r: &AnyRow) -> Result<VersionRecord> {
    let status: String = r.try_get("status")?;
    Ok(VersionRecord {
        deployment_id: r.try_get("deployment_id")?,
        version: r.try_get("version")?,
        configuration: r.try_get("configuration")?,
        description: r.try_get("description")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        audit_id: r.try_get("audit_id")?,
        status: VersionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            table: "deployment_versions",
            column: "status",
            message: format!("unknown value {status:?}"),
        })?,
        status_reason: r.try_get("status_reason")?,
        status_changed_at: r.try_get("status_changed_at")?,
        seq: r.try_get("seq")?,
        deployed_seq: r.try_get("deployed_seq")?,
        deployed_at: r.try_get("deployed_at")?,
        deployed_by: r.try_get("deployed_by")?,
        deploy_operation_id: r.try_get("deploy_operation_id")?,
    })
}

async fn one_version(
    conn: &mut sqlx::AnyConnection,
    deployment_id: &str,
    version: &str,
) -> Result<Option<VersionRecord>> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM deployment_versions WHERE deployment_id = $1 AND version = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(deployment_id).bind(version).fetch_optional(conn).await?;
    row.as_ref().map(version_from_row).transpose()
}

async fn deploy_history(conn: &mut sqlx::AnyConnection, deployment_id: &str) -> Result<Vec<VersionRecord>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM deployment_versions WHERE deployment_id = $1 AND deployed_seq IS NOT NULL \
         ORDER BY deployed_seq DESC LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(deployment_id).bind(HISTORY_LOOKBACK).fetch_all(conn).await?;
    rows.iter().map(version_from_row).collect()
}

/// `v<N>` with N = the number of versions + 1, bumped until no version has that name.
async fn auto_name(conn: &mut sqlx::AnyConnection, deployment_id: &str) -> Result<String> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployment_versions WHERE deployment_id = $1")
        .bind(deployment_id)
        .fetch_one(&mut *conn)
        .await?;
    let mut n = count + 1;
    loop {
        let name = format!("v{n}");
        let taken: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM deployment_versions WHERE deployment_id = $1 AND version = $2")
                .bind(deployment_id)
                .bind(&name)
                .fetch_optional(&mut *conn)
                .await?;
        if taken.is_none() {
            return Ok(name);
        }
        n += 1;
    }
}

impl Store {
    /// A page of a deployment's versions, newest first, and how many it has.
    pub async fn list_versions(
        &self,
        deployment_id: &str,
        page: i64,
        page_size: i64,
    ) -> Result<(Vec<VersionRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployment_versions WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM deployment_versions WHERE deployment_id = $1 \
             ORDER BY seq DESC LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(page_size)
            .bind((page - 1).max(0) * page_size)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(version_from_row).collect::<Result<_>>()?, total))
    }

    pub async fn get_version(&self, deployment_id: &str, version: &str) -> Result<Option<VersionRecord>> {
        let mut conn = self.pool.acquire().await?;
        one_version(&mut conn, deployment_id, version).await
    }

    /// The deployment's most recent deploys (up to [`HISTORY_LOOKBACK`]), last deployed first.
    pub async fn deploy_history(&self, deployment_id: &str) -> Result<Vec<VersionRecord>> {
        let mut conn = self.pool.acquire().await?;
        deploy_history(&mut conn, deployment_id).await
    }

    /// Stores a new version of a live deployment, under its row lock: named `name`, or a
    /// generated name. `make` builds it (and its audit record) once the name is known. A
    /// version of that name that exists already is returned as it is and nothing is written.
    pub async fn create_version(
        &self,
        deployment_id: &str,
        if_match: Option<i64>,
        name: Option<&str>,
        make: impl FnOnce(&DeploymentRecord, &str) -> (VersionRecord, Audit),
    ) -> Result<Write<VersionCreate>> {
        let mut tx = self.write_tx().await?;
        let Some(current) = self.lock_deployment(&mut tx, deployment_id).await? else {
            return Ok(Write::NotFound);
        };
        if if_match.is_some_and(|v| v != current.resource_version) {
            return Ok(Write::Conflict { current: current.resource_version });
        }
        let name = match name {
            Some(n) => {
                if let Some(existing) = one_version(&mut tx, deployment_id, n).await? {
                    return Ok(Write::Done(VersionCreate::Existing(existing)));
                }
                n.to_string()
            }
            None => auto_name(&mut tx, deployment_id).await?,
        };
        let (version, audit) = make(&current, &name);
        let stored = Self::insert_version(&mut tx, version, &audit).await?;
        tx.commit().await?;
        Ok(Write::Done(VersionCreate::Created(stored)))
    }

    /// Writes the audit record of a new version, then the version (numbered), naming it.
    async fn insert_version(
        conn: &mut sqlx::AnyConnection,
        mut v: VersionRecord,
        audit: &Audit,
    ) -> Result<VersionRecord> {
        v.audit_id = Some(Self::write_audit(&mut *conn, audit, v.created_at).await?);
        Self::insert_version_row(conn, &mut v).await?;
        Ok(v)
    }

    /// Inserts a version (its `seq` assigned here unless given: a deployment's first is 1).
    pub(super) async fn insert_version_row(conn: &mut sqlx::AnyConnection, v: &mut VersionRecord) -> Result<()> {
        if v.seq == 0 {
            v.seq = sqlx::query_scalar(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_versions WHERE deployment_id = $1",
            )
            .bind(&v.deployment_id)
            .fetch_one(&mut *conn)
            .await?;
        }
        let sql = format!(
            "INSERT INTO deployment_versions ({VERSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&v.deployment_id)
            .bind(&v.version)
            .bind(&v.configuration)
            .bind(&v.description)
            .bind(v.source.clone())
            .bind(v.created_at)
            .bind(&v.created_by)
            .bind(v.audit_id.clone())
            .bind(v.status.as_str())
            .bind(&v.status_reason)
            .bind(v.status_changed_at)
            .bind(v.seq)
            .bind(v.deployed_seq)
            .bind(v.deployed_at)
            .bind(v.deployed_by.clone())
            .bind(v.deploy_operation_id.clone())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Records that `version` was deployed now by `who` under `operation_id` (its last deploy).
    pub(super) async fn mark_deployed(
        conn: &mut sqlx::AnyConnection,
        deployment_id: &str,
        version: &str,
        who: &str,
        operation_id: &str,
        now: i64,
    ) -> Result<()> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(deployed_seq), 0) + 1 FROM deployment_versions WHERE deployment_id = $1",
        )
        .bind(deployment_id)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE deployment_versions SET deployed_seq = $3, deployed_at = $4, deployed_by = $5, \
             deploy_operation_id = $6 WHERE deployment_id = $1 AND version = $2",
        )
        .bind(deployment_id)
        .bind(version)
        .bind(seq)
        .bind(now)
        .bind(who)
        .bind(operation_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The live deployment, locked for this write transaction (`FOR UPDATE` on PostgreSQL; a
    /// SQLite write transaction holds the database).
    pub(super) async fn lock_deployment(
        &self,
        conn: &mut sqlx::AnyConnection,
        id: &str,
    ) -> Result<Option<DeploymentRecord>> {
        let lock = if self.backend == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 AND deleted_at IS NULL{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(conn).await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Changes a deployment like [`Store::modify_deployment`], reading (`reads`) and writing
    /// (`VersionsWrite`) its versions in the same transaction, under its row lock: a version
    /// created, deployed or marked here is exactly what the deployment's new state says.
    pub async fn modify_deployment_versioned<E>(
        &self,
        id: &str,
        if_match: Option<i64>,
        claim: Option<&Claim>,
        reads: VersionReads<'_>,
        change: impl FnOnce(
            &DeploymentRecord,
            VersionsRead,
        ) -> std::result::Result<(DeploymentRecord, OperationRecord, Audit, VersionsWrite), E>,
    ) -> Result<std::result::Result<Write<DeploymentRecord>, E>> {
        let mut tx = self.write_tx().await?;
        let mut queued = 0;
        if let Some(c) = claim {
            queued += Self::claim_approval(&mut tx, c).await?;
        }
        let Some(current) = self.lock_deployment(&mut tx, id).await? else {
            return Ok(Ok(Write::NotFound));
        };
        if if_match.is_some_and(|v| v != current.resource_version) {
            return Ok(Ok(Write::Conflict { current: current.resource_version }));
        }
        let mut seen = VersionsRead::default();
        if let Some(name) = reads.named {
            seen.named = one_version(&mut tx, id, name).await?;
        }
        if reads.active {
            seen.active = one_version(&mut tx, id, &current.active_version).await?;
        }
        if reads.history {
            seen.history = deploy_history(&mut tx, id).await?;
        }
        if reads.auto_name {
            seen.auto_name = Some(auto_name(&mut tx, id).await?);
        }
        let (d, op, audit, versions) = match change(&current, seen) {
            Ok(next) => next,
            Err(e) => return Ok(Err(e)),
        };
        Self::update_deployment(&mut tx, &d).await?;
        let audit_id = Self::write_audit(&mut tx, &audit, d.updated_at).await?;
        if let Some(mut v) = versions.create {
            v.audit_id = Some(audit_id.clone());
            Self::insert_version_row(&mut tx, &mut v).await?;
        }
        Self::insert_revision(&mut tx, &d, Some(&audit_id)).await?;
        queued += Self::insert_operation(&mut tx, &op).await?;
        if versions.deployed {
            Self::mark_deployed(&mut tx, id, &d.active_version, &audit.actor, &op.id, d.updated_at).await?;
        }
        if let Some(m) = versions.mark {
            sqlx::query(
                "UPDATE deployment_versions SET status = $3, status_reason = $4, status_changed_at = $5 \
                 WHERE deployment_id = $1 AND version = $2",
            )
            .bind(id)
            .bind(&m.version)
            .bind(m.status.as_str())
            .bind(&m.reason)
            .bind(d.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        // Last: what it holds, if that changes, against its environment's limits.
        let (before, after) = (super::environments::allocation_of(&current)?, super::environments::allocation_of(&d)?);
        if let Err(e) = self.allocate(&mut tx, &current.environment, None, &before, &after).await? {
            return Ok(Ok(Write::LimitExceeded(e)));
        }
        tx.commit().await?;
        self.wake_webhooks(queued);
        let mut updated = d;
        updated.resource_version = current.resource_version + 1;
        Ok(Ok(Write::Done(updated)))
    }

    /// Fails an operation at its progress deadline (unless it already ended) and, in the same
    /// transaction, marks the version it deployed `failed` with the same reason (if that version
    /// is still `available`), so rollbacks skip it. `true` if the operation was still open.
    pub async fn fail_rollout(&self, operation_id: &str, message: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE operations SET status = 'failed', message = $1, updated_at = $2, finished_at = $2 \
             WHERE id = $3 AND status = 'in_progress' RETURNING *",
        )
        .bind(message)
        .bind(now_ms)
        .bind(operation_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let op = super::deployments::operation_from_row(&row)?;
        sqlx::query(
            "UPDATE deployment_versions SET status = 'failed', status_reason = $1, status_changed_at = $2 \
             WHERE deployment_id = $3 AND deploy_operation_id = $4 AND status = 'available'",
        )
        .bind(message)
        .bind(now_ms)
        .bind(&op.deployment_id)
        .bind(operation_id)
        .execute(&mut *tx)
        .await?;
        let deployment = Self::deployment_ref(&mut tx, &op.deployment_id).await?;
        let queued = Self::queue_operation_completed(&mut tx, &op, deployment).await?;
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(true)
    }
}
