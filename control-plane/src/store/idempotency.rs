//! Idempotency keys: which request a caller's `Idempotency-Key` was first used for, and the
//! answer to replay (the HTTP side is `crate::api::idempotency`).
//!
//! A key is claimed by one conditional `INSERT … ON CONFLICT DO UPDATE … WHERE` that succeeds
//! only when no live row holds it: absent, a `done` row past its expiry, or an `in_flight` row
//! whose lease ran out (its server died mid-request). Exactly one of any number of concurrent
//! claimants wins, on either backend and across replicas. Each claim carries a random `owner`;
//! storing the answer and releasing the claim are compare-and-sets on it, so a claimant whose
//! lease was taken over can no longer touch the row.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError};

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The first request is running (or its server died; see `lease_until`).
    InFlight,
    /// The first request was answered; the answer is stored.
    Done,
}

impl IdempotencyState {
    fn as_str(self) -> &'static str {
        match self {
            IdempotencyState::InFlight => "in_flight",
            IdempotencyState::Done => "done",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "in_flight" => Ok(IdempotencyState::InFlight),
            "done" => Ok(IdempotencyState::Done),
            other => Err(StoreError::Corrupt {
                table: "idempotency_keys",
                column: "state",
                message: format!("unknown state {other:?}"),
            }),
        }
    }
}

/// A claim on a key, made by the request that wants to run.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The caller's identity (`Principal::identity`): keys are per caller.
    pub identity: String,
    pub key: String,
    /// SHA-256 (hex) of what the request is: method, path, query and body.
    pub fingerprint: String,
    /// `POST /v1/…`, for messages.
    pub request: String,
    /// Random, per claim: only its holder may store the answer or release it.
    pub owner: String,
    pub request_id: String,
    /// How long the claim may stay in flight before another request may take it over.
    pub lease_ms: i64,
    /// How long the key (and its answer) is kept.
    pub ttl_ms: i64,
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub identity: String,
    pub key: String,
    pub fingerprint: String,
    pub request: String,
    pub owner: String,
    pub state: IdempotencyState,
    /// The answer, once `Done`: its status, the headers kept, and its body (`None`: not kept).
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// The first request's id.
    pub request_id: String,
    pub created_at: i64,
    pub lease_until: i64,
    pub expires_at: i64,
}

impl IdempotencyRecord {
    /// Whether a new claim would take this row over at `now` (the same condition as the
    /// claim's `WHERE`): an answer past its expiry, or a claim whose lease ran out.
    pub fn is_claimable(&self, now: i64) -> bool {
        match self.state {
            IdempotencyState::Done => self.expires_at <= now,
            IdempotencyState::InFlight => self.lease_until <= now,
        }
    }
}

/// The answer to keep for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// `None`: the answer is not kept (a repeat learns its status only).
    pub body: Option<Vec<u8>>,
}

const COLUMNS: &str = "identity, idem_key, fingerprint, request, owner, state, status, headers, body, request_id, \
                       created_at, lease_until, expires_at";

fn record(row: &AnyRow) -> Result<IdempotencyRecord> {
    let headers: Option<String> = row.try_get("headers")?;
    let headers = match headers {
        None => Vec::new(),
        Some(h) => serde_json::from_str(&h).map_err(|e| StoreError::Corrupt {
            table: "idempotency_keys",
            column: "headers",
            message: e.to_string(),
        })?,
    };
    let status: Option<i64> = row.try_get("status")?;
    Ok(IdempotencyRecord {
        identity: row.try_get("identity")?,
        key: row.try_get("idem_key")?,
        fingerprint: row.try_get("fingerprint")?,
        request: row.try_get("request")?,
        owner: row.try_get("owner")?,
        state: IdempotencyState::parse(&row.try_get::<String, _>("state")?)?,
        status: status.and_then(|s| u16::try_from(s).ok()),
        headers,
        body: row.try_get("body")?,
        request_id: row.try_get("request_id")?,
        created_at: row.try_get("created_at")?,
        lease_until: row.try_get("lease_until")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl Store {
    /// Claims `c.key` for `c.identity` at `now`: `true` if this request now holds it (it was
    /// free, or its row was claimable, see [`IdempotencyRecord::is_claimable`]) and must run;
    /// `false` if someone else holds it (read it with [`Store::idempotency_key`]).
    pub async fn claim_idempotency_key(&self, c: &IdempotencyClaim, now: i64) -> Result<bool> {
        let done = IdempotencyState::Done.as_str();
        let in_flight = IdempotencyState::InFlight.as_str();
        let sql = format!(
            "INSERT INTO idempotency_keys ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, '{in_flight}', NULL, NULL, NULL, $6, $7, $8, $9) \
             ON CONFLICT (identity, idem_key) DO UPDATE SET fingerprint = excluded.fingerprint, \
               request = excluded.request, owner = excluded.owner, state = excluded.state, status = NULL, \
               headers = NULL, body = NULL, request_id = excluded.request_id, created_at = excluded.created_at, \
               lease_until = excluded.lease_until, expires_at = excluded.expires_at \
             WHERE (idempotency_keys.state = '{done}' AND idempotency_keys.expires_at <= $7) \
                OR (idempotency_keys.state = '{in_flight}' AND idempotency_keys.lease_until <= $7)"
        );
        let res = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&c.identity)
            .bind(&c.key)
            .bind(&c.fingerprint)
            .bind(&c.request)
            .bind(&c.owner)
            .bind(&c.request_id)
            .bind(now)
            .bind(now.saturating_add(c.lease_ms))
            .bind(now.saturating_add(c.ttl_ms))
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// The key `key` of `identity`, if stored (whatever its state or expiry).
    pub async fn idempotency_key(&self, identity: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM idempotency_keys WHERE identity = $1 AND idem_key = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(identity).bind(key).fetch_optional(&self.pool).await?;
        row.as_ref().map(record).transpose()
    }

    /// Stores the answer of the request holding the claim `owner`: `false` (nothing written) if
    /// the claim is no longer its own (taken over after its lease ran out).
    pub async fn complete_idempotency_key(
        &self,
        identity: &str,
        key: &str,
        owner: &str,
        response: &StoredResponse,
    ) -> Result<bool> {
        let headers = serde_json::to_string(&response.headers).expect("string pairs serialize");
        let res = sqlx::query(
            "UPDATE idempotency_keys SET state = 'done', status = $4, headers = $5, body = $6 \
             WHERE identity = $1 AND idem_key = $2 AND owner = $3 AND state = 'in_flight'",
        )
        .bind(identity)
        .bind(key)
        .bind(owner)
        .bind(i64::from(response.status))
        .bind(headers)
        .bind(response.body.clone())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Gives up the claim `owner` (its request failed in a way a retry may not: 5xx, 429): the
    /// next request with the key runs. `false` if the claim was no longer its own.
    pub async fn release_idempotency_key(&self, identity: &str, key: &str, owner: &str) -> Result<bool> {
        let res = sqlx::query(
            "DELETE FROM idempotency_keys WHERE identity = $1 AND idem_key = $2 AND owner = $3 AND state = 'in_flight'",
        )
        .bind(identity)
        .bind(key)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Deletes at most `batch` keys that are past their expiry at `now` (in-flight ones only
    /// once their lease ran out too), oldest first; returns how many. One indexed statement.
    pub async fn sweep_idempotency_keys(&self, now: i64, batch: i64) -> Result<u64> {
        let res = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (identity, idem_key) IN (\
               SELECT identity, idem_key FROM idempotency_keys \
               WHERE expires_at <= $1 AND (state = 'done' OR lease_until <= $1) \
               ORDER BY expires_at LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }
}
