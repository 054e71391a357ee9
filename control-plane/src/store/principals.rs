//! Principals: users (argon2id password hashes), their login sessions and API keys, each with
//! role bindings. Tokens and keys are random and stored as SHA-256 hashes only.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, Result, Store, StoreError};
use crate::authz::RoleBinding;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<RoleBinding>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub key_hash: String,
    pub roles: Vec<RoleBinding>,
    pub owner: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What a presented credential turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<T> {
    Valid(T),
    Expired,
    Revoked,
    Unknown,
}

fn roles_from(r: &AnyRow, table: &'static str) -> Result<Vec<RoleBinding>> {
    let s: String = r.try_get("roles")?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt { table, column: "roles", message: e.to_string() })
}

fn roles_json(roles: &[RoleBinding]) -> String {
    serde_json::to_string(roles).expect("role bindings serialize")
}

fn user_from_row(r: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        roles: roles_from(r, "users")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn key_from_row(r: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        roles: roles_from(r, "api_keys")?,
        owner: r.try_get("owner")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Store {
    // ---- users ------------------------------------------------------------------------------

    /// Inserts a user; `false` if the username is taken.
    pub async fn create_user(&self, u: &UserRecord, audit: &Audit) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "INSERT INTO users (id, username, password_hash, roles, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(roles_json(&u.roles))
        .bind(&u.created_by)
        .bind(u.created_at)
        .bind(u.updated_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::write_audit(&mut tx, audit, u.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// By id or username.
    pub async fn get_user(&self, key: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1 OR username = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// One page of users by username, and the total.
    pub async fn list_users(&self, offset: i64, limit: i64) -> Result<(Vec<UserRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
        let rows = sqlx::query("SELECT * FROM users ORDER BY username LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok((rows.iter().map(user_from_row).collect::<Result<_>>()?, total))
    }

    /// Replaces a user's password hash and/or roles. A new password ends the user's sessions.
    pub async fn update_user(
        &self,
        id: &str,
        password_hash: Option<&str>,
        roles: Option<&[RoleBinding]>,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.write_tx().await?;
        if let Some(h) = password_hash {
            sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1").bind(id).bind(h).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM user_sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
        }
        if let Some(r) = roles {
            sqlx::query("UPDATE users SET roles = $2 WHERE id = $1")
                .bind(id)
                .bind(roles_json(r))
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query("UPDATE users SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM users WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(Some(user_from_row(&row)?))
    }

    /// Deletes a user, ends their sessions and revokes the API keys they created.
    pub async fn delete_user(&self, id: &str, owner_name: &str, audit: &Audit, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM user_sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE owner = $1 AND revoked_at IS NULL")
            .bind(owner_name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    // ---- sessions ---------------------------------------------------------------------------

    /// Stores a login session (the token's hash) with its audit record; expired sessions of
    /// the user are swept on the way.
    pub async fn create_session(
        &self,
        user_id: &str,
        token_hash: &str,
        expires_at: i64,
        audit: &Audit,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM user_sessions WHERE user_id = $1 AND expires_at <= $2")
            .bind(user_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO user_sessions (id, token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(crate::ids::random_id("sess"))
        .bind(token_hash)
        .bind(user_id)
        .bind(now_ms)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user of a session token (by hash); a session of a deleted user is unknown.
    pub async fn session_user(&self, token_hash: &str, now_ms: i64) -> Result<Credential<UserRecord>> {
        let row = sqlx::query(
            "SELECT u.*, s.expires_at AS session_expires FROM user_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(Credential::Unknown) };
        if row.try_get::<i64, _>("session_expires")? <= now_ms {
            return Ok(Credential::Expired);
        }
        Ok(Credential::Valid(user_from_row(&row)?))
    }

    /// Ends one session (logout).
    pub async fn end_user_session(&self, token_hash: &str, audit: &Audit, now_ms: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM user_sessions WHERE token_hash = $1").bind(token_hash).execute(&mut *tx).await?;
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- API keys ---------------------------------------------------------------------------

    pub async fn create_api_key(&self, k: &ApiKeyRecord, audit: &Audit) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, roles, owner, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(roles_json(&k.roles))
        .bind(&k.owner)
        .bind(k.created_at)
        .bind(k.expires_at)
        .execute(&mut *tx)
        .await?;
        Self::write_audit(&mut tx, audit, k.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn api_key_by_hash(&self, key_hash: &str, now_ms: i64) -> Result<Credential<ApiKeyRecord>> {
        let row =
            sqlx::query("SELECT * FROM api_keys WHERE key_hash = $1").bind(key_hash).fetch_optional(&self.pool).await?;
        let Some(key) = row.as_ref().map(key_from_row).transpose()? else { return Ok(Credential::Unknown) };
        Ok(if key.revoked_at.is_some() {
            Credential::Revoked
        } else if key.expires_at.is_some_and(|e| e <= now_ms) {
            Credential::Expired
        } else {
            Credential::Valid(key)
        })
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// One page of API keys (all, or one owner's), newest first, and the total.
    pub async fn list_api_keys(
        &self,
        owner: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ApiKeyRecord>, i64)> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE ($1 IS NULL OR owner = $1)")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE ($1 IS NULL OR owner = $1) ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(owner)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok((rows.iter().map(key_from_row).collect::<Result<_>>()?, total))
    }

    /// Revokes a key; `false` if unknown or already revoked.
    pub async fn revoke_api_key(&self, id: &str, audit: &Audit, now_ms: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        Self::write_audit(&mut tx, audit, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }
}
