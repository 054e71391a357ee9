//! Workload log lines: idempotent ingest, bounded retention, and the reads behind
//! `GET /v1/logs/…` and the Server-Sent-Event stream.
//!
//! Invariants:
//! * **Exactly once in effect.** `(source, seq)` is unique and every insert is
//!   `ON CONFLICT (source, seq) DO NOTHING`, so an agent resending a batch it got no ack for stores
//!   nothing twice.
//! * **Ids of one deployment become visible in id order**, so a reader resuming "after id N" (SSE
//!   `Last-Event-ID`) can never skip a row that commits late. SQLite has one writer at a time and
//!   `AUTOINCREMENT` ids, so this holds by construction. On PostgreSQL a `BIGSERIAL` id is drawn
//!   when the row is inserted but only becomes visible at commit, so two concurrent transactions
//!   could commit out of order; every ingest transaction therefore first takes a
//!   transaction-scoped advisory lock keyed on the deployment, which it releases only once its
//!   commit is visible. Different deployments whose keys collide merely serialize.
//! * **Retention** keeps at least the newest `retention_lines` rows of each deployment and at most
//!   about 10% more per writer: every store handle counts the lines it inserted per deployment
//!   (in a small fixed table of hashed counters, so memory stays bounded whatever the number of
//!   deployments) and, once a tenth of the retention has accumulated, deletes everything older
//!   than the newest `retention_lines` rows, inside the same ingest transaction. The cost of the
//!   prune (an index walk over `retention_lines` entries plus the delete) is thus amortized over
//!   a tenth of the retention. Caveat: a line that was pruned and is then resent is stored again;
//!   that needs more than `retention_lines` newer lines of the deployment to arrive while the
//!   agent waits for its ack.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_protocol::{LogLine, LogStream};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Result, Store, StoreError};

/// Rows per `INSERT` statement (a power of two). Statements are prepared once per connection
/// and cached, so only six shapes are ever used: full chunks, then the remainder in power-of-two
/// pieces. Small statements are also what SQLite executes fastest: measured on 500-line batches,
/// 32-row statements ingest several times faster than one 500-row statement.
const INSERT_CHUNK: usize = 32;
/// Number of hashed per-deployment prune counters kept by a store handle.
const PRUNE_BUCKETS: usize = 64;
/// First key of the two-key PostgreSQL advisory locks taken on log ingest ("LOGS"); the second is
/// the hash of the deployment id. The two-key space never overlaps the migrator's one-key lock.
const PG_LOG_LOCK_CLASS: i32 = 0x4C_4F_47_53;

/// One stored log line, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Grows with every stored line; the SSE event id.
    pub id: i64,
    pub agent_id: String,
    pub replica: i64,
    pub ts_ms: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

/// Lines inserted per (hashed) deployment since the last prune, per store handle.
pub(super) struct PruneCounters([AtomicU64; PRUNE_BUCKETS]);

impl Default for PruneCounters {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl PruneCounters {
    /// Adds `inserted` lines for `deployment_id`; true (and the counter restarts) when a prune is due.
    fn add(&self, deployment_id: &str, inserted: u64, retention_lines: i64) -> bool {
        let mut h = std::hash::DefaultHasher::new();
        deployment_id.hash(&mut h);
        let bucket = &self.0[(h.finish() % PRUNE_BUCKETS as u64) as usize];
        let threshold = (retention_lines / 10).max(1) as u64;
        if bucket.fetch_add(inserted, Ordering::Relaxed) + inserted >= threshold {
            bucket.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn stream_name(s: LogStream) -> &'static str {
    match s {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}

fn log_from_row(row: &AnyRow) -> Result<LogRow> {
    Ok(LogRow {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        replica: row.try_get("replica")?,
        ts_ms: row.try_get("ts_ms")?,
        stream: row.try_get("stream")?,
        line: row.try_get("line")?,
    })
}

/// PostgreSQL refuses NUL in `TEXT`; a stray one must not make a batch unstorable forever.
fn storable(line: &str) -> Cow<'_, str> {
    if line.contains('\0') { line.replace('\0', "\u{FFFD}").into() } else { line.into() }
}

fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    super::chunk_sizes(n, INSERT_CHUNK)
}

/// `INSERT … VALUES (…), … ON CONFLICT DO NOTHING` for `rows` rows.
fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO log_lines (deployment_id, agent_id, replica, source, seq, ts_ms, stream, line) VALUES {} ON CONFLICT (source, seq) DO NOTHING",
        super::placeholders(rows, 8)
    )
}

const LOG_COLUMNS: &str = "id, agent_id, replica, ts_ms, stream, line";

impl Store {
    /// Stores a batch of consecutively numbered lines of `source` (the first is `first_seq`, at
    /// least 1), skipping those already stored, and prunes the deployment's oldest lines when
    /// due (see the module docs; `retention_lines <= 0` disables pruning). One transaction.
    ///
    /// Returns the sequence number of the batch's last line: every line up to it is now stored
    /// (or was already). For an empty batch that is `first_seq - 1`.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_log_batch(
        &self,
        agent_id: &str,
        deployment_id: &str,
        replica: u32,
        source: &str,
        first_seq: u64,
        lines: &[LogLine],
        retention_lines: i64,
    ) -> Result<u64> {
        if lines.is_empty() {
            return Ok(first_seq.saturating_sub(1));
        }
        let n = lines.len() as i64;
        let first = i64::try_from(first_seq)
            .ok()
            .filter(|&f| f >= 1 && f.checked_add(n).is_some())
            .ok_or_else(|| StoreError::Invalid(format!("log sequence number {first_seq} out of range")))?;
        let last_seq = (first + n - 1) as u64;
        let mut tx = self.write_tx().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))::TEXT")
                .bind(PG_LOG_LOCK_CLASS)
                .bind(deployment_id)
                .execute(&mut *tx)
                .await?;
        }
        let mut inserted = 0;
        let mut offset = 0;
        for size in chunk_sizes(lines.len()) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(size)));
            for (i, l) in lines[offset..offset + size].iter().enumerate() {
                q = q
                    .bind(deployment_id)
                    .bind(agent_id)
                    .bind(i64::from(replica))
                    .bind(source)
                    .bind(first + (offset + i) as i64)
                    .bind(i64::try_from(l.ts_ms).unwrap_or(i64::MAX))
                    .bind(stream_name(l.stream));
                q = match storable(&l.line) {
                    Cow::Borrowed(s) => q.bind(s),
                    Cow::Owned(s) => q.bind(s),
                };
            }
            inserted += q.execute(&mut *tx).await?.rows_affected();
            offset += size;
        }
        if retention_lines > 0 && self.log_prune.add(deployment_id, inserted, retention_lines) {
            let pruned = sqlx::query(
                "DELETE FROM log_lines WHERE deployment_id = $1 AND id <= \
                 (SELECT id FROM log_lines WHERE deployment_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
            .bind(deployment_id)
            .bind(retention_lines)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if pruned > 0 {
                tracing::debug!(%deployment_id, pruned, "pruned old log lines");
            }
        }
        tx.commit().await?;
        Ok(last_seq)
    }

    /// Lines of a deployment with `id > after_id`, `ts_ms >= since_ms` and the given stream
    /// (`stdout`/`stderr`; `None`: both), oldest first, at most `limit`.
    pub async fn query_logs(
        &self,
        deployment_id: &str,
        after_id: Option<i64>,
        since_ms: Option<i64>,
        stream: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LogRow>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM log_lines WHERE deployment_id = $1 AND id > $2 AND ts_ms >= $3 \
             AND ($4 = '' OR stream = $4) ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(after_id.unwrap_or(0))
            .bind(since_ms.unwrap_or(i64::MIN))
            .bind(stream.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(log_from_row).collect()
    }

    /// The newest `n` lines of a deployment (optionally of one stream), oldest first.
    pub async fn tail_logs(&self, deployment_id: &str, stream: Option<&str>, n: i64) -> Result<Vec<LogRow>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM log_lines WHERE deployment_id = $1 AND ($2 = '' OR stream = $2) \
             ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(deployment_id)
            .bind(stream.unwrap_or(""))
            .bind(n)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows.iter().map(log_from_row).collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// The id of the deployment's newest stored line, if any.
    pub async fn latest_log_id(&self, deployment_id: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MAX(id) FROM log_lines WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Whether a deployment with this id exists (and is not deleted).
    pub async fn deployment_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Inserts a minimal, stopped deployment (no replicas, so nothing gets placed) in the
    /// `development` environment of the `default` workspace, so the API authorizes reads of it
    /// as of any deployment there. Tests and benchmarks use it; nothing else should.
    #[doc(hidden)]
    pub async fn insert_test_deployment(&self, id: &str) -> Result<()> {
        let now = crate::ids::now_ms();
        sqlx::query(
            "INSERT INTO deployments (id, name, environment, active_version, spec, target, desired_state, \
             restart_nonce, resource_version, created_at, updated_at, last_deployed_at) \
             VALUES ($1, $1, 'development', 'v1', '{\"replicas\":0,\"command\":\"true\"}', '{\"selector\":{}}', \
             'stopped', 0, 1, $2, $2, $2)",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_split_into_a_few_statement_shapes() {
        for n in 0..=1_000 {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= INSERT_CHUNK));
            assert!(sizes.len() <= n / INSERT_CHUNK + 5);
        }
        assert_eq!(chunk_sizes(500).filter(|&s| s != INSERT_CHUNK).collect::<Vec<_>>(), [16, 4]);
        assert_eq!(insert_sql(2).matches('$').count(), 16);
        assert!(insert_sql(1).ends_with("($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (source, seq) DO NOTHING"));
    }
}
