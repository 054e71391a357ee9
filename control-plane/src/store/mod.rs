//! Durable state of the control plane, on SQLite (embedded default) or PostgreSQL (scale-out).
//!
//! One implementation serves both backends through sqlx's `Any` driver. That works because the
//! schema sticks to a common dialect: `TEXT` and `BIGINT` columns only, timestamps as Unix
//! milliseconds, JSON documents as `TEXT`, `$n` placeholders (SQLite accepts them too). The same
//! conformance suite (`tests/store.rs`) runs against both backends.
//!
//! Invariants:
//! * every mutation that a user asked for writes its audit record in the same transaction;
//!   audit records are never changed or deleted (the schema's triggers refuse it), and their
//!   secret-looking fields are masked before they are stored (`audit.rs`);
//! * a bootstrap token is consumed by a single conditional `UPDATE`, so two concurrent
//!   enrollments with one token cannot both succeed, on either backend;
//! * session ownership is a `session_id` compare-and-set: a stale session can neither refresh nor
//!   clear the row of the session that replaced it;
//! * log lines are stored once per `(source, seq)`, and the ids of one deployment's lines
//!   become visible in id order, so an SSE cursor never skips a line (see `logs.rs`);
//! * secret values are stored sealed only (`secrets.rs`; sealing is `crate::secrets`'s), and a
//!   change of them stores the new revisions it rolls out in the same transaction;
//! * webhook deliveries are queued in the transaction of the change their event reports, and an
//!   attempt is claimed by one replica at a time (`webhooks.rs`).
//! * an idempotency key is claimed by one conditional `INSERT`, so one request wins it on any
//!   number of replicas, and only the claim's holder can store its answer (`idempotency.rs`).

mod agents;
mod approvals;
mod audit;
mod deployments;
mod environments;
mod idempotency;
mod intent;
mod logs;
mod migrate;
mod principals;
mod secrets;
mod versions;
mod webhooks;
mod workspaces;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe};

pub use agents::{
    AgentFilter, AgentRecord, AgentStatus, BootstrapTokenRecord, EnrollRefusal, NewAgent, NewBootstrapToken,
};
pub use approvals::{ApprovalFilter, ApprovalGrant, ApprovalRecord, ApprovalVisibility, Claim, Transition};
pub use audit::{
    Audit, AuditFilter, AuditRecord, EVENTS_KEPT, EVENTS_PRUNE_EVERY, EventRecord, Page, RevisionRecord, TimelineItem,
    object_type_of,
};
pub use deployments::{
    CreateRefusal, DeploymentFilter, DeploymentRecord, EnvironmentLock, EnvironmentRecord, OperationRecord, Visibility,
    Write,
};
pub use environments::{EnvironmentChange, EnvironmentConfigured, EnvironmentDelete};
pub use idempotency::{IdempotencyClaim, IdempotencyRecord, IdempotencyState, StoredResponse};
pub use intent::{IntentHead, IntentRow, ObservedReport, ObservedRow, Ownership, PlacedRow, RowChange, StatusSummary};
pub use logs::LogRow;
pub use principals::{ApiKeyRecord, Credential, UserRecord};
pub use secrets::{SecretRecord, SecretScope, SecretWrite, SecretsWritten};
pub use versions::{
    HISTORY_LOOKBACK, VersionCreate, VersionMark, VersionReads, VersionRecord, VersionsRead, VersionsWrite,
};
pub use webhooks::{
    AttemptOutcome, ClaimedDelivery, DeliveryRecord, OperationCallback, SealedElsewhere, WebhookRecord,
};
pub use workspaces::{
    AiZoneChange, AiZoneRecord, DEFAULT_WORKSPACE, ProjectDelete, ProjectRecord, Renamed, Visible, WorkspaceDelete,
    WorkspaceRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("database schema version {found} is newer than this build knows ({known}); upgrade ferry-server")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("corrupt stored document in {table}.{column}: {message}")]
    Corrupt { table: &'static str, column: &'static str, message: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A pending change was claimed by someone else first (applied, rejected or expired).
    #[error("pending change {0} is no longer open")]
    NotPending(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Options beyond the URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// PostgreSQL only: create (if needed) and use this schema instead of `public`. Tests use a
    /// schema per run to isolate themselves.
    pub pg_schema: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    log_prune: Arc<logs::PruneCounters>,
    /// Notified after a commit that queued webhook deliveries (`webhooks.rs`).
    webhook_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish()
    }
}

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let schema = options.pg_schema.clone();
        if let Some(s) = &schema
            && !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::UnsupportedUrl(format!("schema name {s:?}")));
        }
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time; a small pool avoids needless lock contention.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                let schema = schema.clone();
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            sqlx::raw_sql(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                            )
                            .execute(&mut *conn)
                            .await?;
                        }
                        Backend::Postgres => {
                            if let Some(s) = schema {
                                sqlx::raw_sql(AssertSqlSafe(format!(
                                    "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s};"
                                )))
                                .execute(&mut *conn)
                                .await?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Self { pool, backend, log_prune: Arc::default(), webhook_wake: Arc::default() };
        store.migrate().await?;
        Ok(store)
    }

    /// A file-backed SQLite store at `path` (created if missing).
    pub async fn sqlite_file(path: &std::path::Path) -> Result<Self> {
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display()), StoreOptions::default()).await
    }

    /// Applies pending migrations. Idempotent, and safe for replicas starting together.
    pub async fn migrate(&self) -> Result<()> {
        migrate::run(self).await
    }

    /// Drops a PostgreSQL schema created through [`StoreOptions::pg_schema`] (test clean-up).
    pub async fn drop_pg_schema(&self, schema: &str) -> Result<()> {
        if self.backend != Backend::Postgres
            || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(StoreError::UnsupportedUrl(format!("schema name {schema:?}")));
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later cannot wait
    /// for the lock in WAL mode and fails with "database is locked" under concurrent writers.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Cheap liveness probe for `/v1/health`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- admin credentials --------------------------------------------------------------

    pub async fn admin_token_count(&self) -> Result<i64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens").fetch_one(&self.pool).await?;
        Ok(n)
    }

    pub async fn insert_admin_token(&self, id: &str, token_hash: &str, now_ms: i64) -> Result<()> {
        sqlx::query("INSERT INTO admin_tokens (id, token_hash, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(token_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the admin token with this hash, if any.
    pub async fn admin_token_by_hash(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM admin_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?)
    }
}

/// Statement sizes for `n` rows in chunks of at most `max` (a power of two): full chunks, then
/// the remainder's binary digits, so only a few statement shapes are ever prepared and cached.
pub(crate) fn chunk_sizes(n: usize, max: usize) -> impl Iterator<Item = usize> {
    debug_assert!(max.is_power_of_two());
    let rem = n % max;
    std::iter::repeat_n(max, n / max)
        .chain((0..max.trailing_zeros()).rev().map(|bit| 1 << bit).filter(move |size| rem & size != 0))
}

/// `($1,…,$cols),($cols+1,…)…` for `rows` rows of `cols` parameters.
pub(crate) fn placeholders(rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", r * cols + c + 1));
        }
        sql.push(')');
    }
    sql
}

pub(crate) fn labels_to_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("string map serializes")
}

pub(crate) fn labels_from_json(table: &'static str, column: &'static str, s: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt { table, column, message: e.to_string() })
}
