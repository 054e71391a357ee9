//! Desired state (environments, deployments), operations, per-agent intent and observed state.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::approvals::Claim;
use super::{Audit, Result, StatusSummary, Store, StoreError};
use crate::authz::{EnvScope, Role};
use crate::change_windows::{ChangeWindows, ChangeWindowsDoc};
use crate::domain::{DesiredState, OperationKind, OperationStatus};
use crate::resources::{Exceeded, Limits};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    /// Roles one of which a caller must hold to change what runs here (the seed's
    /// `environmentRestrictions.requiredRoles`).
    pub required_roles: Vec<Role>,
    /// Changes of what runs here wait for a second person's approval.
    pub approval_required: bool,
    pub lock: Option<EnvironmentLock>,
    /// When changes of what runs here may happen; `None`: at all times.
    pub change_windows: Option<ChangeWindows>,
    /// The next environment in the promotion chain, by name (`None`: the end of a chain).
    pub promotes_to: Option<String>,
    /// Merged under the env of every deployment here (pinned into their revisions).
    pub variables: BTreeMap<String, String>,
    pub limits: Limits,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Who locked an environment, why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentLock {
    pub by: String,
    pub reason: String,
    pub at: i64,
}

impl EnvironmentRecord {
    /// The environment as authorization sees it.
    pub fn scope(&self) -> EnvScope<'_> {
        EnvScope { name: &self.name, kind: &self.kind, required_roles: &self.required_roles }
    }
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
    pub desired_state: DesiredState,
    pub restart_nonce: i64,
    /// The current revision of the template (`spec` + `active_version`); a new one is stored
    /// whenever either changes, and revisions are immutable.
    pub revision: i64,
    /// Bumped by every change; the ETag.
    pub resource_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_deployed_at: i64,
    /// The workspace (by name) whose role bindings reach it; never changes.
    pub workspace: String,
    /// A project of that workspace, by id; never changes.
    pub project_id: Option<String>,
    /// The AI zone it runs in, by id; never changes.
    pub ai_zone_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: String,
    pub kind: OperationKind,
    pub deployment_id: String,
    pub status: OperationStatus,
    pub message: String,
    pub request_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// The pending change this operation carries out, if it waited for approval or a window.
    pub approval_id: Option<String>,
    /// When the change started to apply (`None` while it waits); progress deadlines count from
    /// here.
    pub started_at: Option<i64>,
    /// The callback its request asked for (`Ferry-Callback-Url`): stored with the operation when
    /// it is written, told when it completes. Not read back (`None` in records from the store).
    pub callback: Option<super::OperationCallback>,
}

impl OperationRecord {
    /// When the change started to apply (operations stored before schema 6 started when created).
    pub fn started(&self) -> i64 {
        self.started_at.unwrap_or(self.created_at)
    }
}

/// A page of the deployment listing: filters are applied in SQL, the status filter against the
/// stored status summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeploymentFilter<'a> {
    pub environment: Option<&'a str>,
    pub workspace: Option<&'a str>,
    pub project_id: Option<&'a str>,
    pub ai_zone_id: Option<&'a str>,
    /// Only what the caller may read; `None`: everything.
    pub visible: Option<&'a Visibility>,
    pub name: Option<&'a str>,
    pub status: Option<&'a str>,
    /// 1-based; `offset = (page - 1) * page_size` must fit (the caller checks).
    pub page: i64,
    pub page_size: i64,
}

/// Which deployments a caller may read, as (workspace, environment) pairs SQL can apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visibility {
    /// Environments whose deployments are readable in every workspace (unscoped bindings).
    pub everywhere: Vec<String>,
    /// Per workspace, the further environments readable there (bindings scoped to it).
    pub workspaces: Vec<(String, Vec<String>)>,
}

/// Why a deployment was not created (re-checked inside the write transaction, under locks on
/// the rows it names, so a concurrent delete of its workspace or project cannot slip between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRefusal {
    /// A live deployment of that name exists in the workspace and environment.
    NameTaken,
    WorkspaceMissing,
    /// The project does not exist or belongs to another workspace.
    ProjectMissing,
    /// The AI zone does not exist or is dedicated to another workspace.
    ZoneMissing,
    /// The environment does not exist (any more).
    EnvironmentMissing,
    /// It would pass one of its environment's limits.
    LimitExceeded(Exceeded),
}

pub(super) const DEPLOYMENT_COLUMNS: &str = "id, name, environment, active_version, spec, target, desired_state, \
     restart_nonce, resource_version, created_at, updated_at, last_deployed_at, revision, workspace, project_id, \
     ai_zone_id";

pub(super) fn deployment_from_row(r: &AnyRow) -> Result<DeploymentRecord> {
    Ok(DeploymentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        environment: r.try_get("environment")?,
        active_version: r.try_get("active_version")?,
        spec: r.try_get("spec")?,
        target: r.try_get("target")?,
        desired_state: parse_named(r, "deployments", "desired_state", DesiredState::parse)?,
        restart_nonce: r.try_get("restart_nonce")?,
        resource_version: r.try_get("resource_version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_deployed_at: r.try_get("last_deployed_at")?,
        revision: r.try_get("revision")?,
        workspace: r.try_get("workspace")?,
        project_id: r.try_get("project_id")?,
        ai_zone_id: r.try_get("ai_zone_id")?,
    })
}

/// A column holding one of an enum's names.
fn parse_named<T>(r: &AnyRow, table: &'static str, column: &'static str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = r.try_get(column)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt { table, column, message: format!("unknown value {text:?}") })
}

pub(super) fn environment_from_row(r: &AnyRow) -> Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("type")?,
        description: r.try_get("description")?,
        required_roles: serde_json::from_str(&r.try_get::<String, _>("required_roles")?).map_err(|e| {
            StoreError::Corrupt { table: "environments", column: "required_roles", message: e.to_string() }
        })?,
        approval_required: r.try_get::<i64, _>("approval_required")? != 0,
        lock: match r.try_get::<Option<i64>, _>("locked_at")? {
            Some(at) if r.try_get::<i64, _>("locked")? != 0 => Some(EnvironmentLock {
                by: r.try_get::<Option<String>, _>("locked_by")?.unwrap_or_default(),
                reason: r.try_get::<Option<String>, _>("locked_reason")?.unwrap_or_default(),
                at,
            }),
            _ => None,
        },
        change_windows: match r.try_get::<Option<String>, _>("change_windows")? {
            None => None,
            Some(doc) => {
                let corrupt =
                    |message| StoreError::Corrupt { table: "environments", column: "change_windows", message };
                let doc: ChangeWindowsDoc = serde_json::from_str(&doc).map_err(|e| corrupt(e.to_string()))?;
                Some(doc.compile().map_err(|i| corrupt(format!("{}: {}", i.field, i.message)))?)
            }
        },
        promotes_to: r.try_get("promotes_to")?,
        variables: super::labels_from_json("environments", "variables", &r.try_get::<String, _>("variables")?)?,
        limits: serde_json::from_str(&r.try_get::<String, _>("limits")?).map_err(|e| StoreError::Corrupt {
            table: "environments",
            column: "limits",
            message: e.to_string(),
        })?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub(super) fn operation_from_row(r: &AnyRow) -> Result<OperationRecord> {
    Ok(OperationRecord {
        id: r.try_get("id")?,
        kind: parse_named(r, "operations", "kind", OperationKind::parse)?,
        deployment_id: r.try_get("deployment_id")?,
        status: parse_named(r, "operations", "status", OperationStatus::parse)?,
        message: r.try_get("message")?,
        request_id: r.try_get("request_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
        approval_id: r.try_get("approval_id")?,
        started_at: r.try_get("started_at")?,
        callback: None,
    })
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
    /// The change would pass one of the environment's limits; nothing was written.
    LimitExceeded(Exceeded),
}

/// `FROM … WHERE …` of a deployment listing and its parameters, in order; `None` when the
/// filter can match nothing (nothing is visible). Only the filters given appear in the SQL, so an
/// index serves each shape (a handful).
pub(super) fn filter_sql<'a>(f: &DeploymentFilter<'a>) -> Option<(String, Vec<&'a str>)> {
    let mut conds = vec!["d.deleted_at IS NULL".to_string()];
    let mut binds: Vec<&'a str> = Vec::new();
    for (column, value) in [
        ("d.environment", f.environment),
        ("d.workspace", f.workspace),
        ("d.project_id", f.project_id),
        ("d.ai_zone_id", f.ai_zone_id),
        ("d.name", f.name),
    ] {
        if let Some(v) = value {
            binds.push(v);
            conds.push(format!("{column} = ${}", binds.len()));
        }
    }
    if let Some(visible) = f.visible {
        // (environment IN everywhere) OR (workspace = w AND environment IN envs of w) OR …
        let list = |binds: &mut Vec<&'a str>, envs: &'a [String]| {
            let first = binds.len() + 1;
            binds.extend(envs.iter().map(String::as_str));
            (first..=binds.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        };
        let mut any = Vec::new();
        if !visible.everywhere.is_empty() {
            any.push(format!("d.environment IN ({})", list(&mut binds, &visible.everywhere)));
        }
        for (workspace, envs) in &visible.workspaces {
            if envs.is_empty() {
                continue;
            }
            binds.push(workspace);
            let w = binds.len();
            any.push(format!("(d.workspace = ${w} AND d.environment IN ({}))", list(&mut binds, envs)));
        }
        if any.is_empty() {
            return None;
        }
        conds.push(format!("({})", any.join(" OR ")));
    }
    // A deployment without a summary yet counts as `deploying`.
    let join = if let Some(status) = f.status {
        binds.push(status);
        conds.push(format!("COALESCE(s.status, 'deploying') = ${}", binds.len()));
        " LEFT JOIN deployment_status s ON s.deployment_id = d.id"
    } else {
        ""
    };
    Some((format!("FROM deployments d{join} WHERE {}", conds.join(" AND ")), binds))
}

impl Store {
    // ---- environments -------------------------------------------------------------------

    /// Creates `development`, `staging` and `production`, chained in that order for promotion,
    /// when there is no environment at all (a new database; one whose environments were all
    /// deleted). Environments deleted on purpose therefore stay deleted across restarts.
    pub async fn seed_environments(&self, now_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let any: Option<String> =
            sqlx::query_scalar("SELECT id FROM environments LIMIT 1").fetch_optional(&mut *tx).await?;
        if any.is_some() {
            return Ok(());
        }
        // Distinct creation times keep the promotion order in listings.
        for (i, (name, description, next)) in [
            ("development", "Development environment", Some("staging")),
            ("staging", "Staging environment", Some("production")),
            ("production", "Production environment", None),
        ]
        .into_iter()
        .enumerate()
        {
            let (required, approval) = crate::authz::default_restrictions(name);
            sqlx::query(
                "INSERT INTO environments (id, name, type, description, locked, required_roles, \
                 approval_required, promotes_to, created_at, updated_at) \
                 VALUES ($1, $2, $2, $3, 0, $4, $5, $6, $7, $7) ON CONFLICT (name) DO NOTHING",
            )
            .bind(format!("env-{name}"))
            .bind(name)
            .bind(description)
            .bind(serde_json::to_string(&required).expect("roles serialize"))
            .bind(i64::from(approval))
            .bind(next)
            .bind(now_ms + i as i64)
            .execute(&mut *tx)
            .await?;
            Self::insert_usage(&mut tx, name).await?;
        }
        tx.commit().await?;
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
            "INSERT INTO environments (id, name, type, description, locked, required_roles, approval_required, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&env.id)
        .bind(&env.name)
        .bind(&env.kind)
        .bind(&env.description)
        .bind(serde_json::to_string(&env.required_roles).expect("roles serialize"))
        .bind(i64::from(env.approval_required))
        .bind(env.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::insert_usage(&mut tx, &env.name).await?;
        Self::write_audit(&mut tx, audit, env.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Locks (`Some`) or unlocks (`None`) an environment, with its audit record. `Ok(None)`
    /// when no such environment; otherwise the environment as it was before. Locking an
    /// environment that is already locked writes nothing (the returned one shows its lock).
    pub async fn set_environment_lock(
        &self,
        id: &str,
        lock: Option<&EnvironmentLock>,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<EnvironmentRecord>> {
        let mut tx = self.write_tx().await?;
        let lock_row = if self.backend == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT * FROM environments WHERE id = $1{lock_row}");
        let Some(before) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let before = environment_from_row(&before)?;
        if lock.is_some() && before.lock.is_some() {
            // Already locked: nothing is written; the caller sees the holder in `before`.
            return Ok(Some(before));
        }
        sqlx::query(
            "UPDATE environments SET locked = $2, locked_by = $3, locked_reason = $4, locked_at = $5, \
             updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(i64::from(lock.is_some()))
        .bind(lock.map(|l| l.by.clone()))
        .bind(lock.map(|l| l.reason.clone()))
        .bind(lock.map(|l| l.at))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(Some(before))
    }

    /// Replaces an environment's restrictions (`requiredRoles`, `approvalRequired`) and/or its
    /// change windows (`Some(None)` removes them), under the row's write lock, with the audit
    /// record built from the environment as it was. `Ok(None)` when no such environment;
    /// otherwise the environment as it is now.
    pub async fn update_environment_policy(
        &self,
        id: &str,
        restrictions: Option<(&[Role], bool)>,
        windows: Option<Option<&ChangeWindowsDoc>>,
        audit: impl FnOnce(&EnvironmentRecord) -> Audit,
        now_ms: i64,
    ) -> Result<Option<EnvironmentRecord>> {
        let mut tx = self.write_tx().await?;
        let lock_row = if self.backend == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT * FROM environments WHERE id = $1{lock_row}");
        let Some(before) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let before = environment_from_row(&before)?;
        if let Some((roles, approval)) = restrictions {
            sqlx::query(
                "UPDATE environments SET required_roles = $2, approval_required = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(serde_json::to_string(roles).expect("roles serialize"))
            .bind(i64::from(approval))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(windows) = windows {
            sqlx::query("UPDATE environments SET change_windows = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(windows.map(|w| serde_json::to_string(w).expect("change windows serialize")))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        Self::write_audit(&mut tx, &audit(&before), now_ms).await?;
        let after = sqlx::query("SELECT * FROM environments WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        let after = environment_from_row(&after)?;
        tx.commit().await?;
        Ok(Some(after))
    }

    // ---- deployments ------------------------------------------------------------------

    /// Inserts a deployment and its first operation, unless its name is taken in its workspace
    /// and environment or what it names (workspace, project, AI zone) is missing. With a claim,
    /// only if the pending change it names is still open (else [`StoreError::NotPending`]),
    /// consuming it in the same transaction.
    pub async fn create_deployment(
        &self,
        d: &DeploymentRecord,
        op: &OperationRecord,
        audit: &Audit,
        claim: Option<&Claim>,
    ) -> Result<std::result::Result<(), CreateRefusal>> {
        let mut tx = self.write_tx().await?;
        let mut queued = 0;
        if let Some(c) = claim {
            queued += Self::claim_approval(&mut tx, c).await?;
        }
        // Under a share lock: the environment cannot be deleted until this commits.
        let Some(limits) = self.environment_limits(&mut tx, &d.environment, true).await? else {
            return Ok(Err(CreateRefusal::EnvironmentMissing));
        };
        let share = if self.backend == super::Backend::Postgres { " FOR SHARE" } else { "" };
        // `default` is never deleted: only another workspace can vanish under a create.
        if d.workspace != super::DEFAULT_WORKSPACE {
            let sql = format!("SELECT id FROM workspaces WHERE name = $1{share}");
            let ws: Option<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&d.workspace).fetch_optional(&mut *tx).await?;
            if ws.is_none() {
                return Ok(Err(CreateRefusal::WorkspaceMissing));
            }
        }
        if let Some(p) = &d.project_id {
            let sql = format!("SELECT id FROM projects WHERE id = $1 AND workspace = $2{share}");
            let found: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(p)
                .bind(&d.workspace)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Ok(Err(CreateRefusal::ProjectMissing));
            }
        }
        if let Some(z) = &d.ai_zone_id {
            let sql = format!("SELECT workspace FROM ai_zones WHERE id = $1{share}");
            let found: Option<Option<String>> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(z).fetch_optional(&mut *tx).await?;
            // Missing, or dedicated to another workspace.
            let usable = matches!(&found, Some(w) if w.as_ref().is_none_or(|w| *w == d.workspace));
            if !usable {
                return Ok(Err(CreateRefusal::ZoneMissing));
            }
        }
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT id FROM deployments WHERE workspace = $1 AND environment = $2 AND name = $3 AND deleted_at IS NULL",
        )
        .bind(&d.workspace)
        .bind(&d.environment)
        .bind(&d.name)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            return Ok(Err(CreateRefusal::NameTaken));
        }
        let sql = format!(
            "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&d.id)
            .bind(&d.name)
            .bind(&d.environment)
            .bind(&d.active_version)
            .bind(&d.spec)
            .bind(&d.target)
            .bind(d.desired_state.as_str())
            .bind(d.restart_nonce)
            .bind(d.resource_version)
            .bind(d.created_at)
            .bind(d.updated_at)
            .bind(d.last_deployed_at)
            .bind(d.revision)
            .bind(&d.workspace)
            .bind(d.project_id.clone())
            .bind(d.ai_zone_id.clone())
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            // The partial unique index caught a concurrent create of the same name.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(Err(CreateRefusal::NameTaken)),
            Err(e) => return Err(e.into()),
        }
        let audit_id = Self::write_audit(&mut tx, audit, d.created_at).await?;
        Self::insert_revision(&mut tx, d, Some(&audit_id)).await?;
        queued += Self::insert_operation(&mut tx, op).await?;
        // Its first version: the template it is created with, deployed by this operation.
        let template = crate::model::version_template(&d.spec)
            .map_err(|e| StoreError::Invalid(format!("deployment spec is not JSON: {e}")))?;
        let mut first =
            super::VersionRecord::new(&d.id, &d.active_version, template, audit.actor.clone(), d.created_at);
        first.seq = 1;
        first.audit_id = Some(audit_id);
        first.deployed_seq = Some(1);
        first.deployed_at = Some(d.created_at);
        first.deployed_by = Some(audit.actor.clone());
        first.deploy_operation_id = Some(op.id.clone());
        Self::insert_version_row(&mut tx, &mut first).await?;
        // Last: what it holds against its environment's limits (a refusal rolls everything back).
        let holds = super::environments::allocation_of(d)?;
        if let Err(e) = self.allocate(&mut tx, &d.environment, Some(&limits), &Default::default(), &holds).await? {
            return Ok(Err(CreateRefusal::LimitExceeded(e)));
        }
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(Ok(()))
    }

    pub async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 AND deleted_at IS NULL");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Every deployment, deleted ones included, as `(id, deleted)` with its parsed-later target
    /// document (the reconciler's index).
    pub async fn deployment_targets(&self) -> Result<Vec<(String, String, bool)>> {
        let rows: Vec<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT id, target, deleted_at FROM deployments ORDER BY created_at, id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, t, d)| (id, t, d.is_some())).collect())
    }

    /// A deployment whether or not it was deleted, with its deletion time.
    pub async fn get_deployment_any(&self, id: &str) -> Result<Option<(DeploymentRecord, Option<i64>)>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS}, deleted_at FROM deployments WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(|r| Ok((deployment_from_row(r)?, r.try_get("deleted_at")?))).transpose()
    }

    /// A page of live deployments matching the filter, each with its stored status summary,
    /// and the number of matches. The page's ids come from a covering index walk and only its
    /// rows are read, so the cost is one page (plus counting index entries), not the table.
    pub async fn list_deployments(
        &self,
        f: DeploymentFilter<'_>,
    ) -> Result<(Vec<(DeploymentRecord, Option<StatusSummary>)>, i64)> {
        let Some((filter, binds)) = filter_sql(&f) else { return Ok((Vec::new(), 0)) };
        let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {filter}")));
        for b in &binds {
            count = count.bind(b.to_string());
        }
        let total: i64 = count.fetch_one(&self.pool).await?;
        let columns: Vec<String> = DEPLOYMENT_COLUMNS.split(", ").map(|c| format!("d.{c}")).collect();
        let (limit, offset) = (binds.len() + 1, binds.len() + 2);
        let sql = format!(
            "SELECT {}, s.status, s.desired, s.current_count, s.ready, s.reasons, s.running_since \
             FROM (SELECT d.id {filter} ORDER BY d.created_at, d.id LIMIT ${limit} OFFSET ${offset}) p \
             JOIN deployments d ON d.id = p.id LEFT JOIN deployment_status s ON s.deployment_id = d.id \
             ORDER BY d.created_at, d.id",
            columns.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.to_string());
        }
        let rows = q.bind(f.page_size).bind((f.page - 1).max(0) * f.page_size).fetch_all(&self.pool).await?;
        let page = rows
            .iter()
            .map(|r| Ok((deployment_from_row(r)?, super::intent::summary_from_row(r)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((page, total))
    }

    /// The number of live deployments matching the filter (its page is ignored).
    pub async fn count_deployments_matching(&self, f: DeploymentFilter<'_>) -> Result<i64> {
        let Some((filter, binds)) = filter_sql(&f) else { return Ok(0) };
        let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {filter}")));
        for b in &binds {
            count = count.bind(b.to_string());
        }
        Ok(count.fetch_one(&self.pool).await?)
    }

    /// The template of one revision: `(version, spec)`. Revisions never change once written.
    pub async fn revision(&self, deployment_id: &str, revision: i64) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as("SELECT version, spec FROM deployment_revisions WHERE deployment_id = $1 AND revision = $2")
            .bind(deployment_id)
            .bind(revision)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every revision of these deployments as `(deployment id, revision, name, version, spec)`.
    pub async fn revisions_of(&self, deployment_ids: &[String]) -> Result<Vec<(String, i64, String, String, String)>> {
        let mut out = Vec::new();
        let mut offset = 0;
        for size in super::chunk_sizes(deployment_ids.len(), 64) {
            let chunk = &deployment_ids[offset..offset + size];
            offset += size;
            let list = (1..=size).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT r.deployment_id, r.revision, d.name, r.version, r.spec FROM deployment_revisions r \
                 JOIN deployments d ON d.id = r.deployment_id WHERE r.deployment_id IN ({list})"
            );
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone());
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    /// Stores the deployment's current revision unless it exists, linked to the audit record of
    /// the change that created it.
    pub(super) async fn insert_revision(
        conn: &mut sqlx::AnyConnection,
        d: &DeploymentRecord,
        audit_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployment_revisions (deployment_id, revision, version, spec, created_at, audit_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (deployment_id, revision) DO NOTHING",
        )
        .bind(&d.id)
        .bind(d.revision)
        .bind(&d.active_version)
        .bind(&d.spec)
        .bind(d.updated_at)
        .bind(audit_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Changes a deployment's desired state as one read-modify-write under the row's write
    /// lock: `change` sees the stored record and returns the new one with its operation and
    /// audit record, all stored in one transaction. Concurrent changes therefore serialize and
    /// none is lost, without a precondition; with `if_match`, a stale version is a conflict.
    /// `change` may refuse (its error is returned as is, and nothing is written).
    /// With a claim, the change is made only if the pending change it names is still open
    /// (else [`StoreError::NotPending`]), consuming it in the same transaction.
    pub async fn modify_deployment<E>(
        &self,
        id: &str,
        if_match: Option<i64>,
        claim: Option<&Claim>,
        change: impl FnOnce(&DeploymentRecord) -> std::result::Result<(DeploymentRecord, OperationRecord, Audit), E>,
    ) -> Result<std::result::Result<Write<DeploymentRecord>, E>> {
        let reads = super::VersionReads::default();
        self.modify_deployment_versioned(id, if_match, claim, reads, |current, _| {
            change(current).map(|(d, op, audit)| (d, op, audit, super::VersionsWrite::default()))
        })
        .await
    }

    /// Stores a (locked) deployment's new desired state and bumps its resource version.
    pub(super) async fn update_deployment(conn: &mut sqlx::AnyConnection, d: &DeploymentRecord) -> Result<()> {
        sqlx::query(
            "UPDATE deployments SET active_version = $1, spec = $2, target = $3, desired_state = $4, \
             restart_nonce = $5, resource_version = resource_version + 1, updated_at = $6, last_deployed_at = $7, \
             revision = $9 WHERE id = $8",
        )
        .bind(&d.active_version)
        .bind(&d.spec)
        .bind(&d.target)
        .bind(d.desired_state.as_str())
        .bind(d.restart_nonce)
        .bind(d.updated_at)
        .bind(d.last_deployed_at)
        .bind(&d.id)
        .bind(d.revision)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Soft-deletes (the planner drops it; the row stays for audit) and records the operation;
    /// a claim as for [`Self::create_deployment`].
    pub async fn delete_deployment(
        &self,
        id: &str,
        op: &OperationRecord,
        audit: &Audit,
        now_ms: i64,
        claim: Option<&Claim>,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let mut queued = 0;
        if let Some(c) = claim {
            queued += Self::claim_approval(&mut tx, c).await?;
        }
        let deleted: Option<(String, String, String)> = sqlx::query_as(
            "UPDATE deployments SET deleted_at = $1, resource_version = resource_version + 1 \
             WHERE id = $2 AND deleted_at IS NULL RETURNING environment, spec, desired_state",
        )
        .bind(now_ms)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((environment, spec, state)) = deleted else { return Ok(false) };
        queued += Self::insert_operation(&mut tx, op).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        // What it held goes back to its environment (a release never passes a limit).
        let state = DesiredState::parse(&state).unwrap_or(DesiredState::Running);
        let held = crate::resources::Allocation::of_spec(&spec, state).map_err(|e| StoreError::Corrupt {
            table: "deployments",
            column: "spec",
            message: e.to_string(),
        })?;
        let _released = self.allocate(&mut tx, &environment, None, &held, &Default::default()).await?;
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(true)
    }

    // ---- operations ---------------------------------------------------------------------

    /// Records a new desired-state change's operation; in the same transaction, the deployment's
    /// earlier open operations end as superseded (so concurrent changes cannot supersede the one
    /// that is actually in force). The operation of a pending change exists already (it waited):
    /// it is updated in place, keeping its id, creation time and request id. Each superseded
    /// operation's `operation.completed` is queued (webhooks); returns how many deliveries were.
    pub(super) async fn insert_operation(conn: &mut sqlx::AnyConnection, op: &OperationRecord) -> Result<u64> {
        let superseded = sqlx::query(
            "UPDATE operations SET status = 'failed', message = 'superseded by a newer change', updated_at = $1, \
             finished_at = $1 WHERE deployment_id = $2 AND status = 'in_progress' RETURNING *",
        )
        .bind(op.created_at)
        .bind(&op.deployment_id)
        .fetch_all(&mut *conn)
        .await?;
        let mut queued = 0;
        if !superseded.is_empty() {
            let deployment = Self::deployment_ref(&mut *conn, &op.deployment_id).await?;
            for row in &superseded {
                let done = operation_from_row(row)?;
                queued += Self::queue_operation_completed(&mut *conn, &done, deployment.clone()).await?;
            }
        }
        Self::upsert_operation(conn, op).await?;
        Ok(queued)
    }

    /// Inserts an operation, or updates the one with its id (status, message, times).
    pub(super) async fn upsert_operation(conn: &mut sqlx::AnyConnection, op: &OperationRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO operations (id, kind, deployment_id, status, message, request_id, created_at, updated_at, \
             approval_id, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, message = excluded.message, \
             updated_at = excluded.updated_at, started_at = excluded.started_at",
        )
        .bind(&op.id)
        .bind(op.kind.as_str())
        .bind(&op.deployment_id)
        .bind(op.status.as_str())
        .bind(&op.message)
        .bind(&op.request_id)
        .bind(op.created_at)
        .bind(op.updated_at)
        .bind(op.approval_id.clone())
        .bind(op.started_at)
        .execute(&mut *conn)
        .await?;
        if let Some(callback) = &op.callback {
            Self::insert_callback(conn, &op.id, callback, op.updated_at).await?;
        }
        Ok(())
    }

    pub async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        let row = sqlx::query("SELECT * FROM operations WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(operation_from_row).transpose()
    }

    /// The deployments that have an open operation (the reconciler watches them at start).
    pub async fn deployments_with_open_operations(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT deployment_id FROM operations WHERE status = 'in_progress'")
            .fetch_all(&self.pool)
            .await?)
    }

    /// A deployment's open operations, oldest first.
    pub async fn open_operations_of(&self, deployment_id: &str) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM operations WHERE deployment_id = $1 AND status = 'in_progress' ORDER BY created_at, id",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(operation_from_row).collect()
    }

    /// Ends an operation unless it already ended (first writer wins across replicas), and
    /// queues its `operation.completed` in the same transaction.
    pub async fn finish_operation(
        &self,
        id: &str,
        status: OperationStatus,
        message: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE operations SET status = $1, message = $2, updated_at = $3, finished_at = $3 \
             WHERE id = $4 AND status = 'in_progress' RETURNING *",
        )
        .bind(status.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let op = operation_from_row(&row)?;
        let deployment = Self::deployment_ref(&mut tx, &op.deployment_id).await?;
        let queued = Self::queue_operation_completed(&mut tx, &op, deployment).await?;
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(true)
    }
}
