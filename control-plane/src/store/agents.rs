//! Bootstrap tokens, enrollment and the agent registry.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, Result, Store, labels_from_json, labels_to_json};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBootstrapToken {
    pub id: String,
    pub secret_hash: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapTokenRecord {
    pub id: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by: Option<String>,
}

/// Why an enrollment was refused. Unknown and wrong-secret are deliberately the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefusal {
    Unknown,
    Used,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub cert_serial: String,
    pub cert_not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    /// Effective labels: what the agent declares, overridden by what its token imposed.
    pub labels: BTreeMap<String, String>,
    pub token_labels: BTreeMap<String, String>,
    /// What the agent said it can run in its last `Hello` (`runtime:process`, …).
    pub capabilities: Vec<String>,
    pub version: String,
    pub enrolled_at: i64,
    pub cert_serial: String,
    pub cert_not_after: i64,
    pub session_id: Option<String>,
    pub session_started_at: Option<i64>,
    pub last_heartbeat: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Connected,
    Disconnected,
    Revoked,
}

impl AgentStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connected" => Some(Self::Connected),
            "disconnected" => Some(Self::Disconnected),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl AgentRecord {
    /// Derived, never stored: a session counts as connected only while its heartbeats are fresh,
    /// so a crashed control-plane replica cannot leave agents "connected" forever.
    pub fn status(&self, now_ms: i64, heartbeat_timeout_ms: i64) -> AgentStatus {
        if self.revoked_at.is_some() {
            AgentStatus::Revoked
        } else if self.session_id.is_some() && self.last_heartbeat.is_some_and(|hb| hb > now_ms - heartbeat_timeout_ms)
        {
            AgentStatus::Connected
        } else {
            AgentStatus::Disconnected
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AgentFilter {
    pub status: Option<AgentStatus>,
    pub now_ms: i64,
    pub heartbeat_timeout_ms: i64,
    pub page: i64,
    pub page_size: i64,
}

const AGENT_COLUMNS: &str = "id, name, labels, token_labels, version, enrolled_at, cert_serial, \
     cert_not_after, session_id, session_started_at, last_heartbeat, revoked_at, capabilities";

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord> {
    Ok(AgentRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: labels_from_json("agents", "labels", &row.try_get::<String, _>("labels")?)?,
        token_labels: labels_from_json("agents", "token_labels", &row.try_get::<String, _>("token_labels")?)?,
        capabilities: serde_json::from_str(&row.try_get::<String, _>("capabilities")?).map_err(|e| {
            super::StoreError::Corrupt { table: "agents", column: "capabilities", message: e.to_string() }
        })?,
        version: row.try_get("version")?,
        enrolled_at: row.try_get("enrolled_at")?,
        cert_serial: row.try_get("cert_serial")?,
        cert_not_after: row.try_get("cert_not_after")?,
        session_id: row.try_get("session_id")?,
        session_started_at: row.try_get("session_started_at")?,
        last_heartbeat: row.try_get("last_heartbeat")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<BootstrapTokenRecord> {
    Ok(BootstrapTokenRecord {
        id: row.try_get("id")?,
        description: row.try_get("description")?,
        labels: labels_from_json("bootstrap_tokens", "labels", &row.try_get::<String, _>("labels")?)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        used_by: row.try_get("used_by")?,
    })
}

/// Labels the agent declares, with the token's labels taking precedence.
pub(crate) fn merge_labels(
    declared: &BTreeMap<String, String>,
    imposed: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = declared.clone();
    out.extend(imposed.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

impl Store {
    // ---- bootstrap tokens ---------------------------------------------------------------

    pub async fn create_bootstrap_token(&self, t: &NewBootstrapToken, audit: &Audit) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO bootstrap_tokens (id, secret_hash, description, labels, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.description)
        .bind(labels_to_json(&t.labels))
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
        Self::write_audit(&mut tx, audit, t.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_bootstrap_tokens(&self) -> Result<Vec<BootstrapTokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, description, labels, created_at, expires_at, used_at, used_by \
             FROM bootstrap_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Deletes a token that has not been used. Returns false if there is no such unused token.
    pub async fn delete_bootstrap_token(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n =
            sqlx::query("DELETE FROM bootstrap_tokens WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Consumes the token and registers the agent, atomically. The conditional `UPDATE` is the
    /// first statement so that on SQLite the transaction takes the write lock at once.
    pub async fn enroll(
        &self,
        token_id: &str,
        secret_hash: &str,
        agent: &NewAgent,
        now_ms: i64,
    ) -> Result<Result<AgentRecord, EnrollRefusal>> {
        let mut tx = self.write_tx().await?;
        let consumed = sqlx::query(
            "UPDATE bootstrap_tokens SET used_at = $1, used_by = $2 \
             WHERE id = $3 AND secret_hash = $4 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now_ms)
        .bind(&agent.id)
        .bind(token_id)
        .bind(secret_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 {
            tx.rollback().await?;
            let row: Option<(String, Option<i64>, i64)> =
                sqlx::query_as("SELECT secret_hash, used_at, expires_at FROM bootstrap_tokens WHERE id = $1")
                    .bind(token_id)
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(Err(match row {
                Some((hash, _, _)) if hash != secret_hash => EnrollRefusal::Unknown,
                Some((_, Some(_), _)) => EnrollRefusal::Used,
                Some(_) => EnrollRefusal::Expired,
                None => EnrollRefusal::Unknown,
            }));
        }
        let token_labels: String = sqlx::query_scalar("SELECT labels FROM bootstrap_tokens WHERE id = $1")
            .bind(token_id)
            .fetch_one(&mut *tx)
            .await?;
        let token_labels = labels_from_json("bootstrap_tokens", "labels", &token_labels)?;
        let labels = merge_labels(&agent.labels, &token_labels);
        sqlx::query(
            "INSERT INTO agents (id, name, labels, token_labels, version, enrolled_at, cert_serial, cert_not_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&agent.id)
        .bind(&agent.name)
        .bind(labels_to_json(&labels))
        .bind(labels_to_json(&token_labels))
        .bind(&agent.version)
        .bind(now_ms)
        .bind(&agent.cert_serial)
        .bind(agent.cert_not_after)
        .execute(&mut *tx)
        .await?;
        let audit = Audit::new(
            format!("bootstrap-token:{token_id}"),
            "agent.enroll",
            agent.id.clone(),
            "",
            serde_json::json!({ "name": agent.name, "certSerial": agent.cert_serial }),
        );
        Self::write_audit(&mut tx, &audit, now_ms).await?;
        tx.commit().await?;
        Ok(Ok(self.get_agent(&agent.id).await?.expect("agent inserted in this transaction")))
    }

    // ---- agents ---------------------------------------------------------------------------

    pub async fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// Every agent, revoked ones included (the planner's and status derivation's input).
    pub async fn all_agents(&self) -> Result<Vec<AgentRecord>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// A page of agents (ordered by enrollment) and the total matching the filter.
    pub async fn list_agents(&self, f: AgentFilter) -> Result<(Vec<AgentRecord>, i64)> {
        // $1 is the heartbeat cutoff in every variant, so the binds never change shape.
        const FRESH: &str = "(session_id IS NOT NULL AND last_heartbeat > $1)";
        let cond = match f.status {
            None => "($1 = $1)".to_string(),
            Some(AgentStatus::Revoked) => "(revoked_at IS NOT NULL AND $1 = $1)".to_string(),
            Some(AgentStatus::Connected) => format!("(revoked_at IS NULL AND {FRESH})"),
            Some(AgentStatus::Disconnected) => format!("(revoked_at IS NULL AND NOT {FRESH})"),
        };
        let cutoff = f.now_ms - f.heartbeat_timeout_ms;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM agents WHERE {cond}")))
            .bind(cutoff)
            .fetch_one(&self.pool)
            .await?;
        let sql =
            format!("SELECT {AGENT_COLUMNS} FROM agents WHERE {cond} ORDER BY enrolled_at, id LIMIT $2 OFFSET $3");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cutoff)
            .bind(f.page_size)
            .bind((f.page - 1).max(0) * f.page_size)
            .fetch_all(&self.pool)
            .await?;
        let agents = rows.iter().map(agent_from_row).collect::<Result<Vec<_>>>()?;
        Ok((agents, total))
    }

    /// Claims the agent's session for `session_id` (replacing any older one) and refreshes what
    /// the agent declared. Returns `None` if the agent is unknown or revoked.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_session(
        &self,
        id: &str,
        session_id: &str,
        name: &str,
        version: &str,
        declared_labels: &BTreeMap<String, String>,
        capabilities: &[String],
        now_ms: i64,
    ) -> Result<Option<AgentRecord>> {
        let Some(agent) = self.get_agent(id).await? else {
            return Ok(None);
        };
        let labels = merge_labels(declared_labels, &agent.token_labels);
        let n = sqlx::query(
            "UPDATE agents SET session_id = $1, session_started_at = $2, last_heartbeat = $2, \
             name = $3, version = $4, labels = $5, capabilities = $7 WHERE id = $6 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(now_ms)
        .bind(name)
        .bind(version)
        .bind(labels_to_json(&labels))
        .bind(id)
        .bind(serde_json::to_string(capabilities).expect("strings serialize"))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        self.get_agent(id).await
    }

    /// Records a heartbeat. False when this session no longer owns the agent (revoked, or
    /// superseded by a newer session).
    pub async fn heartbeat(&self, id: &str, session_id: &str, now_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE agents SET last_heartbeat = $1 WHERE id = $2 AND session_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .bind(session_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Releases the session, unless a newer one already replaced it.
    pub async fn end_session(&self, id: &str, session_id: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET session_id = NULL WHERE id = $1 AND session_id = $2")
            .bind(id)
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn update_certificate(&self, id: &str, serial: &str, not_after_ms: i64) -> Result<()> {
        sqlx::query("UPDATE agents SET cert_serial = $1, cert_not_after = $2 WHERE id = $3")
            .bind(serial)
            .bind(not_after_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes the agent (idempotent: the first revocation time is kept). `None` if unknown.
    pub async fn revoke_agent(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<Option<AgentRecord>> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE agents SET revoked_at = COALESCE(revoked_at, $1), session_id = NULL WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        self.get_agent(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AgentRecord {
        AgentRecord {
            id: "a".into(),
            name: "n".into(),
            labels: BTreeMap::new(),
            token_labels: BTreeMap::new(),
            capabilities: vec![],
            version: "v".into(),
            enrolled_at: 0,
            cert_serial: "s".into(),
            cert_not_after: 0,
            session_id: None,
            session_started_at: None,
            last_heartbeat: None,
            revoked_at: None,
        }
    }

    #[test]
    fn status_is_derived_from_session_heartbeat_and_revocation() {
        let now = 100_000;
        let timeout = 15_000;
        let cases = [
            (None, None, None, AgentStatus::Disconnected),
            (Some("s"), Some(now - 1_000), None, AgentStatus::Connected),
            (Some("s"), Some(now - 15_000), None, AgentStatus::Disconnected),
            (None, Some(now), None, AgentStatus::Disconnected),
            (Some("s"), Some(now), Some(now), AgentStatus::Revoked),
        ];
        for (session, hb, revoked, want) in cases {
            let mut r = rec();
            r.session_id = session.map(str::to_string);
            r.last_heartbeat = hb;
            r.revoked_at = revoked;
            assert_eq!(r.status(now, timeout), want, "{session:?} {hb:?} {revoked:?}");
        }
    }

    #[test]
    fn token_labels_override_declared_ones() {
        let declared = BTreeMap::from([("zone".into(), "a".into()), ("role".into(), "web".into())]);
        let imposed = BTreeMap::from([("zone".into(), "b".into())]);
        let merged = merge_labels(&declared, &imposed);
        assert_eq!(merged["zone"], "b");
        assert_eq!(merged["role"], "web");
    }
}
