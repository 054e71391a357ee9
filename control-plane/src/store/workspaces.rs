//! Workspaces, projects and AI zones.
//!
//! Deployments and projects name their workspace by name (names never change); deployments name
//! projects and zones by id. The checks that keep those references true under concurrency live
//! in the write transactions: deleting a workspace or a project locks its row and counts what
//! still uses it, and creating a deployment or a project locks the rows it names (on
//! PostgreSQL `FOR SHARE`; SQLite serializes writers anyway), so a delete and a create that race
//! can never leave a deployment in a deleted workspace or project.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, Backend, Result, Store};

/// The workspace every deployment belongs to unless it names another; it exists from the first
/// start and cannot be deleted.
pub const DEFAULT_WORKSPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Who answers for it (free text; the creator's audit name unless given).
    pub owner: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiZoneRecord {
    pub id: String,
    pub name: String,
    /// `None`: shared by every workspace; else only that workspace's deployments may use it.
    pub workspace: Option<String>,
    pub description: String,
    pub provider: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an AI zone update changes (`None`: keep).
#[derive(Debug, Clone, Copy, Default)]
pub struct AiZoneChange<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub region: Option<&'a str>,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// Which workspace objects a listing may show: `None` every workspace, else these.
pub type Visible<'a> = Option<&'a [String]>;

/// Why a workspace was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceDelete {
    /// Deleted, with the ids of the AI zones dedicated to it (deleted along).
    Deleted {
        zones: Vec<String>,
    },
    NotFound,
    /// Live deployments or projects still belong to it.
    NotEmpty {
        deployments: i64,
        projects: i64,
    },
}

/// Why a project was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectDelete {
    Deleted,
    NotFound,
    /// Live deployments still name it.
    InUse {
        deployments: i64,
    },
}

/// The outcome of an update that may rename (projects, zones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renamed<T> {
    Done(T),
    NotFound,
    NameTaken,
}

fn workspace_from_row(r: &AnyRow) -> Result<WorkspaceRecord> {
    Ok(WorkspaceRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        owner: r.try_get("owner")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn project_from_row(r: &AnyRow) -> Result<ProjectRecord> {
    Ok(ProjectRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        workspace: r.try_get("workspace")?,
        description: r.try_get("description")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn zone_from_row(r: &AnyRow) -> Result<AiZoneRecord> {
    Ok(AiZoneRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        workspace: r.try_get("workspace")?,
        description: r.try_get("description")?,
        provider: r.try_get("provider")?,
        region: r.try_get("region")?,
        labels: super::labels_from_json("ai_zones", "labels", &r.try_get::<String, _>("labels")?)?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// `$first, …` for `n` parameters.
fn params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// A query's parameters in bind order (all text).
fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &[String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = q.bind(b.clone());
    }
    q
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// ` FOR UPDATE` / ` FOR SHARE` on PostgreSQL; nothing on SQLite (its writers are serialized).
    fn row_lock(&self, share: bool) -> &'static str {
        match (self.backend, share) {
            (Backend::Postgres, true) => " FOR SHARE",
            (Backend::Postgres, false) => " FOR UPDATE",
            (Backend::Sqlite, _) => "",
        }
    }

    // ---- workspaces -----------------------------------------------------------------------

    /// Creates the `default` workspace unless it exists (idempotent).
    pub async fn seed_default_workspace(&self, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO workspaces (id, name, description, owner, created_at, updated_at) \
             VALUES ('ws-default', $1, 'The workspace of deployments that name no other', 'system', $2, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(DEFAULT_WORKSPACE)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// By id or by name (an id wins over another workspace's equal name).
    pub async fn get_workspace(&self, key: &str) -> Result<Option<WorkspaceRecord>> {
        let row = sqlx::query(
            "SELECT * FROM workspaces WHERE id = $1 OR name = $1 ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    /// One page of `table`'s rows matching `filter` (` WHERE …` over `binds`, or empty), in
    /// `order`, and the number of matches.
    async fn filtered_page<T>(
        &self,
        table: &str,
        filter: &str,
        binds: &[String],
        order: &str,
        (offset, limit): (i64, i64),
        from_row: fn(&AnyRow) -> Result<T>,
    ) -> Result<(Vec<T>, i64)> {
        let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}{filter}")));
        for b in binds {
            count = count.bind(b.clone());
        }
        let total: i64 = count.fetch_one(&self.pool).await?;
        let n = binds.len();
        let sql = format!("SELECT * FROM {table}{filter} ORDER BY {order} LIMIT ${} OFFSET ${}", n + 1, n + 2);
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(from_row).collect::<Result<_>>()?, total))
    }

    /// A page of workspaces (of `visible` ones), by name, and the number of them.
    pub async fn list_workspaces(
        &self,
        visible: Visible<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<WorkspaceRecord>, i64)> {
        let (filter, binds) = match visible {
            None => (String::new(), Vec::new()),
            Some([]) => return Ok((Vec::new(), 0)),
            Some(names) => (format!(" WHERE name IN ({})", params(1, names.len())), names.to_vec()),
        };
        self.filtered_page("workspaces", &filter, &binds, "name", (offset, limit), workspace_from_row).await
    }

    /// Inserts a workspace; `false` if the name is taken.
    pub async fn create_workspace(&self, w: &WorkspaceRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "INSERT INTO workspaces (id, name, description, owner, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(&w.description)
        .bind(&w.owner)
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::write_audit(&mut tx, audit, w.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Changes a workspace's description and owner (its name never changes). `None`: no such
    /// workspace.
    pub async fn update_workspace(
        &self,
        id: &str,
        description: Option<&str>,
        owner: Option<&str>,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<WorkspaceRecord>> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE workspaces SET description = COALESCE($2, description), owner = COALESCE($3, owner), \
             updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(description.map(str::to_string))
        .bind(owner.map(str::to_string))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM workspaces WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(Some(workspace_from_row(&row)?))
    }

    /// Deletes an empty workspace (no live deployments, no projects), with the AI zones
    /// dedicated to it. Counting and deleting happen under the workspace row's lock, so a
    /// concurrent create in it either lands first (and the delete is refused) or finds it gone.
    pub async fn delete_workspace(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<WorkspaceDelete> {
        let mut tx = self.write_tx().await?;
        let sql = format!("SELECT name FROM workspaces WHERE id = $1{}", self.row_lock(false));
        let Some(name): Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(WorkspaceDelete::NotFound);
        };
        let deployments: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE workspace = $1 AND deleted_at IS NULL")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?;
        let projects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE workspace = $1")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
        if deployments > 0 || projects > 0 {
            return Ok(WorkspaceDelete::NotEmpty { deployments, projects });
        }
        let zones: Vec<String> = sqlx::query_scalar("SELECT id FROM ai_zones WHERE workspace = $1 ORDER BY id")
            .bind(&name)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ai_zones WHERE workspace = $1").bind(&name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM workspaces WHERE id = $1").bind(id).execute(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(WorkspaceDelete::Deleted { zones })
    }

    // ---- projects -------------------------------------------------------------------------

    pub async fn get_project(&self, id: &str) -> Result<Option<ProjectRecord>> {
        let row = sqlx::query("SELECT * FROM projects WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(project_from_row).transpose()
    }

    /// A project of `workspace` by id or by name.
    pub async fn find_project(&self, workspace: &str, key: &str) -> Result<Option<ProjectRecord>> {
        let row = sqlx::query(
            "SELECT * FROM projects WHERE workspace = $1 AND (id = $2 OR name = $2) \
             ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(workspace)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    /// A page of projects (of `workspace` if given, of `visible` workspaces), by workspace and
    /// name, and the number of them.
    pub async fn list_projects(
        &self,
        workspace: Option<&str>,
        visible: Visible<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ProjectRecord>, i64)> {
        let mut conds = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(w) = workspace {
            binds.push(w.to_string());
            conds.push(format!("workspace = ${}", binds.len()));
        }
        if let Some(names) = visible {
            if names.is_empty() {
                return Ok((Vec::new(), 0));
            }
            conds.push(format!("workspace IN ({})", params(binds.len() + 1, names.len())));
            binds.extend(names.iter().cloned());
        }
        let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        self.filtered_page("projects", &filter, &binds, "workspace, name", (offset, limit), project_from_row).await
    }

    /// Inserts a project. `Ok(Err(false))`: its workspace does not exist (any more);
    /// `Ok(Err(true))`: the name is taken in the workspace.
    pub async fn create_project(&self, p: &ProjectRecord, audit: &Audit) -> Result<Result<(), bool>> {
        let mut tx = self.write_tx().await?;
        let sql = format!("SELECT id FROM workspaces WHERE name = $1{}", self.row_lock(true));
        let ws: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&p.workspace).fetch_optional(&mut *tx).await?;
        if ws.is_none() {
            return Ok(Err(false));
        }
        let inserted = sqlx::query(
            "INSERT INTO projects (id, name, workspace, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace, name) DO NOTHING",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.workspace)
        .bind(&p.description)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(Err(true));
        }
        Self::write_audit(&mut tx, audit, p.created_at).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Renames a project and/or changes its description (its workspace never changes).
    pub async fn update_project(
        &self,
        id: &str,
        name: Option<&str>,
        description: Option<&str>,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Renamed<ProjectRecord>> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE projects SET name = COALESCE($2, name), description = COALESCE($3, description), \
             updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(name.map(str::to_string))
        .bind(description.map(str::to_string))
        .bind(now_ms)
        .execute(&mut *tx)
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 0 => return Ok(Renamed::NotFound),
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(Renamed::NameTaken),
            Err(e) => return Err(e.into()),
        }
        let row = sqlx::query("SELECT * FROM projects WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(Renamed::Done(project_from_row(&row)?))
    }

    /// Deletes a project no live deployment names (checked under the project row's lock).
    pub async fn delete_project(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<ProjectDelete> {
        let mut tx = self.write_tx().await?;
        let sql = format!("SELECT id FROM projects WHERE id = $1{}", self.row_lock(false));
        let found: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Ok(ProjectDelete::NotFound);
        }
        let deployments: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE project_id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if deployments > 0 {
            return Ok(ProjectDelete::InUse { deployments });
        }
        sqlx::query("DELETE FROM projects WHERE id = $1").bind(id).execute(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(ProjectDelete::Deleted)
    }

    // ---- AI zones -------------------------------------------------------------------------

    /// By id or by name.
    pub async fn get_ai_zone(&self, key: &str) -> Result<Option<AiZoneRecord>> {
        let row = sqlx::query(
            "SELECT * FROM ai_zones WHERE id = $1 OR name = $1 ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(zone_from_row).transpose()
    }

    /// A page of AI zones by name: shared ones if `shared`, and those dedicated to `visible`
    /// workspaces (`None`: all of them).
    pub async fn list_ai_zones(
        &self,
        shared: bool,
        visible: Visible<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<AiZoneRecord>, i64)> {
        let mut ors = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if shared {
            ors.push("workspace IS NULL".to_string());
        }
        match visible {
            None => ors.push("workspace IS NOT NULL".to_string()),
            Some([]) => {}
            Some(names) => {
                ors.push(format!("workspace IN ({})", params(1, names.len())));
                binds.extend(names.iter().cloned());
            }
        }
        if ors.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let filter = format!(" WHERE {}", ors.join(" OR "));
        self.filtered_page("ai_zones", &filter, &binds, "name", (offset, limit), zone_from_row).await
    }

    /// Inserts an AI zone. `Ok(Err(false))`: the workspace it is dedicated to does not exist
    /// (any more); `Ok(Err(true))`: the name is taken.
    pub async fn create_ai_zone(&self, z: &AiZoneRecord, audit: &Audit) -> Result<Result<(), bool>> {
        let mut tx = self.write_tx().await?;
        if let Some(w) = &z.workspace {
            let sql = format!("SELECT id FROM workspaces WHERE name = $1{}", self.row_lock(true));
            let ws: Option<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(w).fetch_optional(&mut *tx).await?;
            if ws.is_none() {
                return Ok(Err(false));
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO ai_zones (id, name, workspace, description, provider, region, labels, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&z.id)
        .bind(&z.name)
        .bind(z.workspace.clone())
        .bind(&z.description)
        .bind(&z.provider)
        .bind(&z.region)
        .bind(super::labels_to_json(&z.labels))
        .bind(z.created_at)
        .bind(z.updated_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(Err(true));
        }
        Self::write_audit(&mut tx, audit, z.created_at).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Changes what is given of a zone's name, description, provider, region and labels (its
    /// workspace never changes).
    pub async fn update_ai_zone(
        &self,
        id: &str,
        change: &AiZoneChange<'_>,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Renamed<AiZoneRecord>> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query(
            "UPDATE ai_zones SET name = COALESCE($2, name), description = COALESCE($3, description), \
             provider = COALESCE($4, provider), region = COALESCE($5, region), labels = COALESCE($6, labels), \
             updated_at = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(change.name.map(str::to_string))
        .bind(change.description.map(str::to_string))
        .bind(change.provider.map(str::to_string))
        .bind(change.region.map(str::to_string))
        .bind(change.labels.map(super::labels_to_json))
        .bind(now_ms)
        .execute(&mut *tx)
        .await;
        match updated {
            Ok(r) if r.rows_affected() == 0 => return Ok(Renamed::NotFound),
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(Renamed::NameTaken),
            Err(e) => return Err(e.into()),
        }
        let row = sqlx::query("SELECT * FROM ai_zones WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(Renamed::Done(zone_from_row(&row)?))
    }
}
