//! The audit trail, a deployment's status events, its revision history and its timeline.
//!
//! Audit records are written in the transaction of the change they describe ([`Store::write_audit`])
//! or, for refused requests and failed logins, on their own ([`Store::record_audit`]). They are
//! immutable: nothing here updates or deletes one, and the schema's triggers refuse `UPDATE` and
//! `DELETE` (and `TRUNCATE` on PostgreSQL) on `audit_log`. Secret-looking fields of `details` and
//! `changes` are masked before they are stored ([`crate::audit::mask`]), whoever built the record.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, chunk_sizes};
use crate::domain::AuditOutcome;

/// A deployment keeps its newest this many status events …
pub const EVENTS_KEPT: i64 = 1_000;
/// … pruned once every this many transitions (so at most `EVENTS_KEPT + EVENTS_PRUNE_EVERY - 1`
/// rows per deployment exist, and a transition costs one insert, plus one indexed delete every
/// hundredth time).
pub const EVENTS_PRUNE_EVERY: i64 = 100;

/// Who did what, to which object, from where, and how it ended. Written with every user-initiated
/// mutation in the mutation's transaction, and with every refused (403) request.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub actor: String,
    /// What was done or attempted: a service's action name (`deployment.scale`), or for a refused
    /// request the method and route template (`POST /v1/deployments/{id}/scale`).
    pub action: String,
    /// The kind of object: `deployment`, `environment`, `agent`, `token`, `user`, `apikey`, …
    pub object_type: String,
    /// The object's id (empty when there is none, e.g. a refused listing).
    pub target: String,
    pub request_id: String,
    /// The client's address.
    pub source: Option<String>,
    pub outcome: AuditOutcome,
    /// `{"before": …, "after": …}` of what changed ([`crate::audit::mask::changes`]).
    pub changes: Option<Value>,
    pub details: Value,
}

impl Audit {
    /// A successful action; the object type is the action's prefix (`deployment.scale` →
    /// `deployment`) unless set with [`Audit::with_object_type`].
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        request_id: impl Into<String>,
        details: Value,
    ) -> Self {
        let action = action.into();
        Self {
            actor: actor.into(),
            object_type: object_type_of(&action).to_string(),
            action,
            target: target.into(),
            request_id: request_id.into(),
            source: None,
            outcome: AuditOutcome::Success,
            changes: None,
            details,
        }
    }

    pub fn with_changes(mut self, changes: Value) -> Self {
        self.changes = Some(changes);
        self
    }

    pub fn with_outcome(mut self, outcome: AuditOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn with_object_type(mut self, object_type: impl Into<String>) -> Self {
        self.object_type = object_type.into();
        self
    }

    pub fn with_source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }
}

/// `deployment.scale` → `deployment`.
pub fn object_type_of(action: &str) -> &str {
    action.split('.').next().unwrap_or(action)
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub target: String,
    pub request_id: String,
    pub source: Option<String>,
    pub outcome: AuditOutcome,
    pub changes: Option<Value>,
    pub details: Value,
}

/// Filters of the audit listing (each one given narrows it; the time range is inclusive).
#[derive(Debug, Clone, Copy)]
pub struct AuditFilter<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    pub target: Option<&'a str>,
    pub object_type: Option<&'a str>,
    pub outcome: Option<AuditOutcome>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub page: Page,
}

/// A page of a time-ordered list: 1-based `page` (the caller checks that the offset fits),
/// newest first unless `oldest_first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: i64,
    pub page_size: i64,
    pub oldest_first: bool,
}

impl Page {
    pub fn newest_first(page: i64, page_size: i64) -> Self {
        Self { page, page_size, oldest_first: false }
    }

    fn offset(&self) -> i64 {
        (self.page - 1).max(0) * self.page_size
    }

    fn dir(&self) -> &'static str {
        if self.oldest_first { "ASC" } else { "DESC" }
    }
}

/// A status transition of a deployment, as the reconciler stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub deployment_id: String,
    /// Per deployment, from 1, in order.
    pub seq: i64,
    pub at: i64,
    /// `None` for the deployment's first status.
    pub from: Option<String>,
    pub to: String,
    pub reasons: Vec<String>,
    pub message: String,
}

/// One revision of a deployment's template, with the audit record of the change that created it
/// (who, when, under which request; missing for revisions older than the audit link).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionRecord {
    pub revision: i64,
    pub version: String,
    pub spec: String,
    pub created_at: i64,
    pub audit: Option<AuditRecord>,
}

/// One entry of a deployment's timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum TimelineItem {
    Audit(AuditRecord),
    Event(EventRecord),
}

impl TimelineItem {
    pub fn at(&self) -> i64 {
        match self {
            TimelineItem::Audit(a) => a.at,
            TimelineItem::Event(e) => e.at,
        }
    }
}

const AUDIT_COLUMNS: &str = "id, at, actor, action, object_type, target, request_id, source, outcome, changes, details";

fn corrupt(column: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt { table: "audit_log", column, message: message.to_string() }
}

fn audit_from_row(r: &AnyRow) -> Result<AuditRecord> {
    let outcome: String = r.try_get("outcome")?;
    let changes: Option<String> = r.try_get("changes")?;
    let details: String = r.try_get("details")?;
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        object_type: r.try_get("object_type")?,
        target: r.try_get("target")?,
        request_id: r.try_get("request_id")?,
        source: r.try_get("source")?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt("outcome", format!("unknown {outcome:?}")))?,
        changes: changes.map(|c| serde_json::from_str(&c)).transpose().map_err(|e| corrupt("changes", e))?,
        details: serde_json::from_str(&details).map_err(|e| corrupt("details", e))?,
    })
}

fn event_from_row(r: &AnyRow) -> Result<EventRecord> {
    let reasons: String = r.try_get("reasons")?;
    Ok(EventRecord {
        deployment_id: r.try_get("deployment_id")?,
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        from: r.try_get("from_status")?,
        to: r.try_get("to_status")?,
        reasons: serde_json::from_str(&reasons).map_err(|e| StoreError::Corrupt {
            table: "deployment_events",
            column: "reasons",
            message: e.to_string(),
        })?,
        message: r.try_get("message")?,
    })
}

/// A bound value of a dynamically built query.
enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

impl Store {
    // ---- writing ----------------------------------------------------------------------------

    /// Writes an audit record on `conn` (inside the caller's transaction); returns its id.
    pub(super) async fn write_audit(conn: &mut sqlx::AnyConnection, audit: &Audit, now_ms: i64) -> Result<String> {
        let id = crate::ids::random_id("aud");
        let mut details = audit.details.clone();
        crate::audit::mask::mask(&mut details);
        let changes = audit.changes.clone().map(|mut c| {
            crate::audit::mask::mask(&mut c);
            c.to_string()
        });
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, object_type, target, request_id, source, outcome, \
             changes, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&id)
        .bind(now_ms)
        .bind(&audit.actor)
        .bind(&audit.action)
        .bind(&audit.object_type)
        .bind(&audit.target)
        .bind(&audit.request_id)
        .bind(audit.source.clone())
        .bind(audit.outcome.as_str())
        .bind(changes)
        .bind(details.to_string())
        .execute(conn)
        .await?;
        Ok(id)
    }

    /// Records an audit entry on its own, for what changes nothing else: a refused (403) request,
    /// a failed login. Returns its id.
    pub async fn record_audit(&self, audit: &Audit) -> Result<String> {
        let mut conn = self.pool.acquire().await?;
        Self::write_audit(&mut conn, audit, crate::ids::now_ms()).await
    }

    /// Appends a deployment's status transition (number `seq`) on `conn`, and every
    /// [`EVENTS_PRUNE_EVERY`]th time drops all but its newest [`EVENTS_KEPT`].
    pub(super) async fn append_event(conn: &mut sqlx::AnyConnection, e: &EventRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployment_events (deployment_id, seq, at, from_status, to_status, reasons, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.deployment_id)
        .bind(e.seq)
        .bind(e.at)
        .bind(e.from.clone())
        .bind(&e.to)
        .bind(serde_json::to_string(&e.reasons).expect("strings serialize"))
        .bind(&e.message)
        .execute(&mut *conn)
        .await?;
        if e.seq % EVENTS_PRUNE_EVERY == 0 {
            sqlx::query("DELETE FROM deployment_events WHERE deployment_id = $1 AND seq <= $2")
                .bind(&e.deployment_id)
                .bind(e.seq - EVENTS_KEPT)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Runs one statement as written, outside any transaction; returns the rows it affected.
    /// Tests use it to check what the schema itself refuses; nothing else should.
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &'static str) -> Result<u64> {
        Ok(sqlx::raw_sql(sql).execute(&self.pool).await?.rows_affected())
    }

    // ---- reading ----------------------------------------------------------------------------

    /// Audit records about `target` as `(action, actor, request id)`, oldest first.
    pub async fn audit_for(&self, target: &str) -> Result<Vec<(String, String, String)>> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT action, actor, request_id FROM audit_log WHERE target = $1 ORDER BY at, seq")
                .bind(target)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows)
    }

    /// A page of audit records matching the filter, and how many match. Only the filters given
    /// appear in the SQL; actor, action and object each have an index ending in `(at, seq)`, so a
    /// page costs an index walk.
    pub async fn list_audit(&self, f: &AuditFilter<'_>) -> Result<(Vec<AuditRecord>, i64)> {
        let mut conds: Vec<String> = Vec::new();
        let mut binds: Vec<Bind<'_>> = Vec::new();
        for (column, value) in [
            ("actor", f.actor),
            ("action", f.action),
            ("target", f.target),
            ("object_type", f.object_type),
            ("outcome", f.outcome.map(AuditOutcome::as_str)),
        ] {
            if let Some(v) = value {
                binds.push(Bind::Text(v));
                conds.push(format!("{column} = ${}", binds.len()));
            }
        }
        for (op, value) in [(">=", f.from_ms), ("<=", f.to_ms)] {
            if let Some(v) = value {
                binds.push(Bind::Int(v));
                conds.push(format!("at {op} ${}", binds.len()));
            }
        }
        let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM audit_log{filter}")));
        for b in &binds {
            count = match b {
                Bind::Text(s) => count.bind(s.to_string()),
                Bind::Int(i) => count.bind(*i),
            };
        }
        let total: i64 = count.fetch_one(&self.pool).await?;
        let dir = f.page.dir();
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log{filter} ORDER BY at {dir}, seq {dir} LIMIT ${} OFFSET ${}",
            binds.len() + 1,
            binds.len() + 2
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = match b {
                Bind::Text(s) => q.bind(s.to_string()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        let rows = q.bind(f.page.page_size).bind(f.page.offset()).fetch_all(&self.pool).await?;
        Ok((rows.iter().map(audit_from_row).collect::<Result<_>>()?, total))
    }

    /// Audit records by id (at most a page's worth), keyed by id.
    async fn audit_by_ids(&self, ids: &[String]) -> Result<HashMap<String, AuditRecord>> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut offset = 0;
        for size in chunk_sizes(ids.len(), 64) {
            let chunk = &ids[offset..offset + size];
            offset += size;
            let list = (1..=size).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let mut q =
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id IN ({list})")));
            for id in chunk {
                q = q.bind(id.clone());
            }
            for r in q.fetch_all(&self.pool).await? {
                let a = audit_from_row(&r)?;
                out.insert(a.id.clone(), a);
            }
        }
        Ok(out)
    }

    /// A page of a deployment's status events, and how many it has.
    pub async fn deployment_events(&self, deployment_id: &str, page: Page) -> Result<(Vec<EventRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployment_events WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT deployment_id, seq, at, from_status, to_status, reasons, message FROM deployment_events \
             WHERE deployment_id = $1 ORDER BY seq {} LIMIT $2 OFFSET $3",
            page.dir()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(page.page_size)
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(event_from_row).collect::<Result<_>>()?, total))
    }

    /// A page of a deployment's revisions (by revision number), each with the audit record of the
    /// change that created it, and how many revisions it has.
    pub async fn deployment_history(&self, deployment_id: &str, page: Page) -> Result<(Vec<RevisionRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployment_revisions WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT revision, version, spec, created_at, audit_id FROM deployment_revisions \
             WHERE deployment_id = $1 ORDER BY revision {} LIMIT $2 OFFSET $3",
            page.dir()
        );
        let rows: Vec<(i64, String, String, i64, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(page.page_size)
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<String> = rows.iter().filter_map(|r| r.4.clone()).collect();
        let mut audits = self.audit_by_ids(&ids).await?;
        let page = rows
            .into_iter()
            .map(|(revision, version, spec, created_at, audit_id)| RevisionRecord {
                revision,
                version,
                spec,
                created_at,
                audit: audit_id.and_then(|id| audits.remove(&id)),
            })
            .collect();
        Ok((page, total))
    }

    /// A page of a deployment's timeline: its audit records and status events merged in time order
    /// (at the same millisecond a change comes before the transition it causes), and how many
    /// entries there are.
    pub async fn deployment_timeline(&self, deployment_id: &str, page: Page) -> Result<(Vec<TimelineItem>, i64)> {
        let (audits, events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM audit_log WHERE target = $1), \
             (SELECT COUNT(*) FROM deployment_events WHERE deployment_id = $1)",
        )
        .bind(deployment_id)
        .fetch_one(&self.pool)
        .await?;
        let dir = page.dir();
        let sql = format!(
            "SELECT kind, item_ref, at, tie FROM (\
               SELECT 'audit' AS kind, id AS item_ref, at, seq AS tie FROM audit_log WHERE target = $1 \
               UNION ALL \
               SELECT 'event' AS kind, CAST(seq AS TEXT) AS item_ref, at, seq AS tie FROM deployment_events \
               WHERE deployment_id = $1\
             ) t ORDER BY at {dir}, kind {dir}, tie {dir} LIMIT $2 OFFSET $3"
        );
        let keys: Vec<(String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(page.page_size)
            .bind(page.offset())
            .fetch_all(&self.pool)
            .await?;
        let audit_ids: Vec<String> = keys.iter().filter(|k| k.0 == "audit").map(|k| k.1.clone()).collect();
        let mut audit = self.audit_by_ids(&audit_ids).await?;
        let seqs: Vec<i64> = keys.iter().filter(|k| k.0 == "event").filter_map(|k| k.1.parse().ok()).collect();
        let mut event = self.events_by_seq(deployment_id, &seqs).await?;
        let items = keys
            .into_iter()
            .filter_map(|(kind, key, _, _)| match kind.as_str() {
                "audit" => audit.remove(&key).map(TimelineItem::Audit),
                _ => key.parse().ok().and_then(|seq: i64| event.remove(&seq)).map(TimelineItem::Event),
            })
            .collect();
        Ok((items, audits + events))
    }

    async fn events_by_seq(&self, deployment_id: &str, seqs: &[i64]) -> Result<HashMap<i64, EventRecord>> {
        let mut out = HashMap::with_capacity(seqs.len());
        let mut offset = 0;
        for size in chunk_sizes(seqs.len(), 64) {
            let chunk = &seqs[offset..offset + size];
            offset += size;
            let list = (2..size + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT deployment_id, seq, at, from_status, to_status, reasons, message FROM deployment_events \
                 WHERE deployment_id = $1 AND seq IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(deployment_id);
            for s in chunk {
                q = q.bind(*s);
            }
            for r in q.fetch_all(&self.pool).await? {
                let e = event_from_row(&r)?;
                out.insert(e.seq, e);
            }
        }
        Ok(out)
    }
}
