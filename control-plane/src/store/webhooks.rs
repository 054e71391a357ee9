//! Webhooks, per-request callbacks and the delivery outbox.
//!
//! Invariants:
//! * an event's deliveries are inserted in the transaction of the change it reports, by one
//!   `INSERT … SELECT` over the subscriptions of its type (and `*`) — plus the operation's
//!   callback for `operation.completed` — so a crash can neither lose an event nor invent one,
//!   and an event nobody subscribed to costs one index probe;
//! * a delivery attempt is claimed by one conditional `UPDATE` (PostgreSQL: over rows picked
//!   `FOR UPDATE SKIP LOCKED`) that counts the attempt, names the claimer and moves
//!   `next_attempt_at` to the end of a lease: two replicas never send one attempt at once, and an
//!   attempt whose replica died is sent again when its lease ends (at least once);
//! * an attempt's outcome is recorded only by its claimer, for that attempt (`claimed_by` and
//!   `attempts` are the fence), so a late answer never overwrites a newer attempt;
//! * signing secrets are stored sealed only (`crate::webhooks` seals and opens them).

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, Backend, OperationRecord, Result, Store, StoreError};
use crate::domain::DeliveryStatus;
use crate::secrets::Sealed;
use crate::webhooks::Event;

/// A stored webhook. Its secret is sealed for the webhook's id ([`crate::webhooks::secret_aad`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// `["*"]` or event names, as accepted.
    pub events: Vec<String>,
    pub description: String,
    pub secret: Sealed,
    pub created_by: String,
    pub created_at: i64,
}

/// The callback a request asked for, stored with its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationCallback {
    /// What the secret is sealed for.
    pub id: String,
    pub url: String,
    pub secret: Option<Sealed>,
}

/// One delivery: an event for one receiver, and where its attempts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: String,
    /// `None`: a per-request callback (of `operation_id`).
    pub webhook_id: Option<String>,
    pub operation_id: Option<String>,
    pub event_id: String,
    pub event_type: String,
    /// The exact body sent (JSON).
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts started.
    pub attempts: i64,
    /// When the next attempt is due (pending), the end of the current attempt's lease, or when it
    /// finished.
    pub next_attempt_at: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
}

/// A claimed attempt and where it goes: the URL and the sealed secret with what it is sealed for
/// (`("webhook", id)` or `("callback", id)`). No URL: the webhook was deleted meanwhile.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRecord,
    pub url: Option<String>,
    pub secret: Option<(Sealed, &'static str, String)>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Failed; try again at `at` (Unix ms).
    Retry { status: Option<u16>, error: String, at: i64 },
    /// Failed for the last time.
    Failed { status: Option<u16>, error: String },
}

/// A sealed value outside the `secrets` table, for master-key rotation: which table
/// (`"webhook"`, `"callback"`), the id it is sealed for, and the value.
#[derive(Debug, Clone)]
pub struct SealedElsewhere {
    pub kind: &'static str,
    pub id: String,
    pub sealed: Sealed,
}

const DELIVERY_COLUMNS: &str = "id, webhook_id, operation_id, event_id, event_type, payload, status, attempts, \
     next_attempt_at, last_status, last_error, created_at, updated_at, delivered_at";

fn corrupt(table: &'static str, column: &'static str, message: String) -> StoreError {
    StoreError::Corrupt { table, column, message }
}

fn webhook_from_row(r: &AnyRow) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        events: serde_json::from_str(&r.try_get::<String, _>("events")?)
            .map_err(|e| corrupt("webhooks", "events", e.to_string()))?,
        description: r.try_get("description")?,
        secret: Sealed {
            ciphertext: r.try_get("secret_ciphertext")?,
            nonce: r.try_get("secret_nonce")?,
            key_id: r.try_get("secret_key_id")?,
        },
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRecord> {
    let status: String = r.try_get("status")?;
    Ok(DeliveryRecord {
        id: r.try_get("id")?,
        webhook_id: r.try_get("webhook_id")?,
        operation_id: r.try_get("operation_id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        payload: r.try_get("payload")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| corrupt("webhook_deliveries", "status", format!("unknown value {status:?}")))?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_status: r.try_get("last_status")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

fn sealed_from(r: &AnyRow, prefix: &str) -> Result<Option<Sealed>> {
    let ciphertext: Option<String> = r.try_get(format!("{prefix}ciphertext").as_str())?;
    let nonce: Option<String> = r.try_get(format!("{prefix}nonce").as_str())?;
    let key_id: Option<String> = r.try_get(format!("{prefix}key_id").as_str())?;
    Ok(match (ciphertext, nonce, key_id) {
        (Some(ciphertext), Some(nonce), Some(key_id)) => Some(Sealed { ciphertext, nonce, key_id }),
        _ => None,
    })
}

impl Store {
    /// Wakes this replica's delivery worker when `queued` deliveries were committed.
    pub(super) fn wake_webhooks(&self, queued: u64) {
        if queued > 0 {
            self.webhook_wake.notify_one();
        }
    }

    /// Notified after a commit that queued deliveries (on this replica; other replicas' rows are
    /// found by polling).
    pub fn webhook_wakeup(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.webhook_wake.clone()
    }

    // ---- queuing (inside the transactions of the changes events report) --------------------

    /// Queues `event` for every webhook subscribed to its type (or `*`), on `conn`. Returns how
    /// many deliveries were queued.
    pub(super) async fn queue_event(conn: &mut sqlx::AnyConnection, event: &Event) -> Result<u64> {
        // Delivery ids: one random prefix per event, plus the webhook's id (unique per event).
        let prefix = format!("{}-", crate::ids::random_id("dlv"));
        let n = sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, operation_id, event_id, event_type, payload, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1 || s.webhook_id, s.webhook_id, NULL, $2, $3, $4, 'pending', 0, $5, $5, $5 \
             FROM webhook_subscriptions s WHERE s.event_type IN ($3, '*')",
        )
        .bind(prefix)
        .bind(&event.id)
        .bind(event.kind.as_str())
        .bind(event.payload())
        .bind(event.created_at)
        .execute(conn)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Queues `operation.completed` for a finished operation: to the subscribed webhooks and to
    /// the operation's callback, if its request gave one. `deployment` is what the event says of
    /// the deployment ([`crate::webhooks::deployment_ref`]).
    pub(super) async fn queue_operation_completed(
        conn: &mut sqlx::AnyConnection,
        op: &OperationRecord,
        deployment: Value,
    ) -> Result<u64> {
        let event = crate::webhooks::operation_event(op, deployment, op.updated_at);
        let mut queued = Self::queue_event(&mut *conn, &event).await?;
        queued += sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, operation_id, event_id, event_type, payload, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, NULL, c.operation_id, $2, $3, $4, 'pending', 0, $5, $5, $5 \
             FROM operation_callbacks c WHERE c.operation_id = $6",
        )
        .bind(crate::ids::random_id("dlv"))
        .bind(&event.id)
        .bind(event.kind.as_str())
        .bind(event.payload())
        .bind(event.created_at)
        .bind(&op.id)
        .execute(conn)
        .await?
        .rows_affected();
        Ok(queued)
    }

    /// What events say of a deployment (id, name, environment, workspace; the id alone if it
    /// does not exist).
    pub(super) async fn deployment_ref(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Value> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT name, environment, workspace FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
                .await?;
        Ok(crate::webhooks::deployment_ref(id, row.as_ref().map(|(n, e, w)| (n.as_str(), e.as_str(), w.as_str()))))
    }

    /// Stores a request's callback with its operation (once; the operation of a pending change
    /// keeps the callback of the request that asked for it).
    pub(super) async fn insert_callback(
        conn: &mut sqlx::AnyConnection,
        operation_id: &str,
        c: &OperationCallback,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operation_callbacks (operation_id, callback_id, url, secret_ciphertext, secret_nonce, \
             secret_key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (operation_id) DO NOTHING",
        )
        .bind(operation_id)
        .bind(&c.id)
        .bind(&c.url)
        .bind(c.secret.as_ref().map(|s| s.ciphertext.clone()))
        .bind(c.secret.as_ref().map(|s| s.nonce.clone()))
        .bind(c.secret.as_ref().map(|s| s.key_id.clone()))
        .bind(now_ms)
        .execute(conn)
        .await?;
        Ok(())
    }

    // ---- webhooks ---------------------------------------------------------------------------

    /// Stores a webhook, its subscriptions and the audit record.
    pub async fn create_webhook(&self, w: &WebhookRecord, audit: &Audit) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, description, secret_ciphertext, secret_nonce, secret_key_id, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&w.id)
        .bind(&w.url)
        .bind(serde_json::to_string(&w.events).expect("strings serialize"))
        .bind(&w.description)
        .bind(&w.secret.ciphertext)
        .bind(&w.secret.nonce)
        .bind(&w.secret.key_id)
        .bind(&w.created_by)
        .bind(w.created_at)
        .execute(&mut *tx)
        .await?;
        for event in &w.events {
            sqlx::query("INSERT INTO webhook_subscriptions (event_type, webhook_id) VALUES ($1, $2)")
                .bind(event)
                .bind(&w.id)
                .execute(&mut *tx)
                .await?;
        }
        Self::write_audit(&mut tx, audit, w.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// A page of webhooks, oldest first, and how many there are.
    pub async fn list_webhooks(&self, page: i64, page_size: i64) -> Result<(Vec<WebhookRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(&self.pool).await?;
        let rows = sqlx::query("SELECT * FROM webhooks ORDER BY created_at, id LIMIT $1 OFFSET $2")
            .bind(page_size)
            .bind((page - 1).max(0) * page_size)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(webhook_from_row).collect::<Result<_>>()?, total))
    }

    /// Deletes a webhook with its subscriptions and deliveries (pending ones are never sent);
    /// `false` if there is no such webhook.
    pub async fn delete_webhook(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM webhook_subscriptions WHERE webhook_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1").bind(id).execute(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A page of a webhook's deliveries, newest first, and how many it has.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        page: i64,
        page_size: i64,
    ) -> Result<(Vec<DeliveryRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(page_size)
            .bind((page - 1).max(0) * page_size)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(delivery_from_row).collect::<Result<_>>()?, total))
    }

    pub async fn get_delivery(&self, id: &str) -> Result<Option<DeliveryRecord>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Queues a new delivery (id `new_id`) of the event that delivery `id` of this webhook
    /// carried, with the audit record. `None` if the webhook has no such delivery.
    pub async fn redeliver(
        &self,
        webhook_id: &str,
        id: &str,
        new_id: &str,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<DeliveryRecord>> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "INSERT INTO webhook_deliveries (id, webhook_id, operation_id, event_id, event_type, payload, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, webhook_id, operation_id, event_id, event_type, payload, 'pending', 0, $2, $2, $2 \
             FROM webhook_deliveries WHERE id = $3 AND webhook_id = $4 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(new_id)
            .bind(now_ms)
            .bind(id)
            .bind(webhook_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let delivery = delivery_from_row(&row)?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        self.wake_webhooks(1);
        Ok(Some(delivery))
    }

    // ---- the worker -------------------------------------------------------------------------

    /// Claims up to `limit` due attempts for `claimer`, each leased until `lease_until` (see the
    /// module's invariants), with where each goes.
    pub async fn claim_deliveries(
        &self,
        claimer: &str,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        // An index probe first: an idle worker polls without taking SQLite's write lock.
        let due: Option<String> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let skip = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE webhook_deliveries SET claimed_by = $1, attempts = attempts + 1, next_attempt_at = $2, \
             updated_at = $3 WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' \
             AND next_attempt_at <= $3 ORDER BY next_attempt_at LIMIT $4{skip}) \
             AND status = 'pending' AND next_attempt_at <= $3 RETURNING {DELIVERY_COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(claimer)
            .bind(lease_until)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let claimed = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>>>()?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let list = (1..=claimed.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT d.id, w.url AS w_url, w.secret_ciphertext AS w_ciphertext, w.secret_nonce AS w_nonce, \
             w.secret_key_id AS w_key_id, c.callback_id, c.url AS c_url, c.secret_ciphertext AS c_ciphertext, \
             c.secret_nonce AS c_nonce, c.secret_key_id AS c_key_id FROM webhook_deliveries d \
             LEFT JOIN webhooks w ON w.id = d.webhook_id \
             LEFT JOIN operation_callbacks c ON d.webhook_id IS NULL AND c.operation_id = d.operation_id \
             WHERE d.id IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in &claimed {
            q = q.bind(d.id.clone());
        }
        let mut targets = std::collections::HashMap::new();
        for r in q.fetch_all(&mut *tx).await? {
            let id: String = r.try_get("id")?;
            let target = match r.try_get::<Option<String>, _>("w_url")? {
                Some(url) => (Some(url), sealed_from(&r, "w_")?.map(|s| (s, "webhook", String::new()))),
                None => {
                    let callback: Option<String> = r.try_get("callback_id")?;
                    let secret = sealed_from(&r, "c_")?.map(|s| (s, "callback", callback.unwrap_or_default()));
                    (r.try_get("c_url")?, secret)
                }
            };
            targets.insert(id, target);
        }
        tx.commit().await?;
        Ok(claimed
            .into_iter()
            .map(|delivery| {
                let (url, mut secret) = targets.remove(&delivery.id).unwrap_or((None, None));
                // A webhook's secret is sealed for the webhook's id.
                if let (Some((_, "webhook", sealed_for)), Some(w)) = (&mut secret, &delivery.webhook_id) {
                    *sealed_for = w.clone();
                }
                ClaimedDelivery { delivery, url, secret }
            })
            .collect())
    }

    /// Records how attempt number `attempt` of delivery `id` ended, if `claimer` still holds it.
    /// Returns whether it did.
    pub async fn record_attempt(
        &self,
        id: &str,
        claimer: &str,
        attempt: i64,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<bool> {
        let (status, next, last_status, error, delivered_at) = match outcome {
            AttemptOutcome::Delivered { status } => {
                (DeliveryStatus::Delivered, now_ms, Some(*status), None, Some(now_ms))
            }
            AttemptOutcome::Retry { status, error, at } => (DeliveryStatus::Pending, *at, *status, Some(error), None),
            AttemptOutcome::Failed { status, error } => (DeliveryStatus::Failed, now_ms, *status, Some(error), None),
        };
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, next_attempt_at = $2, last_status = $3, last_error = $4, \
             updated_at = $5, delivered_at = $6, claimed_by = NULL \
             WHERE id = $7 AND claimed_by = $8 AND attempts = $9 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(next)
        .bind(last_status.map(i64::from))
        .bind(error.cloned())
        .bind(now_ms)
        .bind(delivered_at)
        .bind(id)
        .bind(claimer)
        .bind(attempt)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives back the attempts `claimer` holds and did not finish (it is stopping): due now
    /// again, not counted.
    pub async fn release_deliveries(&self, claimer: &str, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET claimed_by = NULL, attempts = attempts - 1, next_attempt_at = $2 \
             WHERE status = 'pending' AND claimed_by = $1 AND next_attempt_at > $2",
        )
        .bind(claimer)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Deletes up to `limit` deliveries that finished before `before`; returns how many.
    pub async fn sweep_deliveries(&self, before: i64, limit: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE status IN ('delivered', 'failed') AND next_attempt_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    // ---- master-key rotation ----------------------------------------------------------------

    /// Every sealed webhook and callback secret (in `tx`, locked on PostgreSQL).
    pub(super) async fn sealed_elsewhere(conn: &mut sqlx::AnyConnection, pg: bool) -> Result<Vec<SealedElsewhere>> {
        let lock = if pg { " FOR UPDATE" } else { "" };
        let mut out = Vec::new();
        let sql = format!("SELECT id, secret_ciphertext, secret_nonce, secret_key_id FROM webhooks ORDER BY id{lock}");
        for r in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await? {
            let sealed = sealed_from(&r, "secret_")?.ok_or_else(|| corrupt("webhooks", "secret", "missing".into()))?;
            out.push(SealedElsewhere { kind: "webhook", id: r.try_get("id")?, sealed });
        }
        let sql = format!(
            "SELECT callback_id, secret_ciphertext, secret_nonce, secret_key_id FROM operation_callbacks \
             WHERE secret_key_id IS NOT NULL ORDER BY callback_id{lock}"
        );
        for r in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await? {
            if let Some(sealed) = sealed_from(&r, "secret_")? {
                out.push(SealedElsewhere { kind: "callback", id: r.try_get("callback_id")?, sealed });
            }
        }
        Ok(out)
    }

    /// Replaces one sealed webhook or callback secret (rotation).
    pub(super) async fn reseal_elsewhere(
        conn: &mut sqlx::AnyConnection,
        s: &SealedElsewhere,
        new: &Sealed,
    ) -> Result<()> {
        let sql = match s.kind {
            "webhook" => {
                "UPDATE webhooks SET secret_ciphertext = $1, secret_nonce = $2, secret_key_id = $3 WHERE id = $4"
            }
            _ => {
                "UPDATE operation_callbacks SET secret_ciphertext = $1, secret_nonce = $2, secret_key_id = $3 \
                 WHERE callback_id = $4"
            }
        };
        sqlx::query(sql).bind(&new.ciphertext).bind(&new.nonce).bind(&new.key_id).bind(&s.id).execute(conn).await?;
        Ok(())
    }
}
