//! Secrets of deployments and environments, as sealed by `crate::secrets` (this module only
//! stores ciphertexts; it never sees a clear value), and the revisions a change of them rolls
//! out, written in the same transaction.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::deployments::{DEPLOYMENT_COLUMNS, deployment_from_row, environment_from_row};
use super::{Audit, Backend, DeploymentRecord, EnvironmentRecord, OperationRecord, Result, Store, StoreError};

/// What a secret belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretScope {
    /// One deployment (`scope_id` is its id).
    Deployment,
    /// Every deployment of an environment (`scope_id` is the environment's id).
    Environment,
}

impl SecretScope {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretScope::Deployment => "deployment",
            SecretScope::Environment => "environment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deployment" => Some(SecretScope::Deployment),
            "environment" => Some(SecretScope::Environment),
            _ => None,
        }
    }
}

/// One stored secret: its value sealed (hex ciphertext and nonce, the sealing key's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub scope: SecretScope,
    pub scope_id: String,
    pub name: String,
    pub ciphertext: String,
    pub nonce: String,
    pub key_id: String,
    /// 1 when created, +1 at every change of the value.
    pub version: i64,
    pub created_at: i64,
    /// When the value last changed (`lastRotated`).
    pub updated_at: i64,
}

/// A change to one scope's secrets: rows to insert or replace, names to delete, and the audit
/// record of the change (a user's change always has one).
#[derive(Debug, Clone)]
pub struct SecretWrite {
    pub upserts: Vec<SecretRecord>,
    pub deletes: Vec<String>,
    pub audit: Option<Audit>,
}

/// What [`Store::write_secrets`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretsWritten {
    /// The scope's secrets as they are now, and the deployments that got a new revision (with
    /// their operations).
    Done { secrets: Vec<SecretRecord>, rolled_out: Vec<(DeploymentRecord, OperationRecord)> },
    /// No such live deployment, or no such environment.
    NotFound,
}

const SECRET_COLUMNS: &str = "scope, scope_id, name, ciphertext, nonce, key_id, version, created_at, updated_at";

fn secret_from_row(r: &AnyRow) -> Result<SecretRecord> {
    let scope: String = r.try_get("scope")?;
    Ok(SecretRecord {
        scope: SecretScope::parse(&scope).ok_or_else(|| StoreError::Corrupt {
            table: "secrets",
            column: "scope",
            message: format!("unknown value {scope:?}"),
        })?,
        scope_id: r.try_get("scope_id")?,
        name: r.try_get("name")?,
        ciphertext: r.try_get("ciphertext")?,
        nonce: r.try_get("nonce")?,
        key_id: r.try_get("key_id")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// One scope's secrets, by name.
    pub async fn list_secrets(&self, scope: SecretScope, scope_id: &str) -> Result<Vec<SecretRecord>> {
        let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE scope = $1 AND scope_id = $2 ORDER BY name");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(scope.as_str()).bind(scope_id).fetch_all(&self.pool).await?;
        rows.iter().map(secret_from_row).collect()
    }

    /// The secrets that apply to each of these (live) deployments: their environment's and
    /// their own, as `(deployment id, secret)`.
    pub async fn secrets_of_deployments(&self, deployment_ids: &[String]) -> Result<Vec<(String, SecretRecord)>> {
        let columns: Vec<String> = SECRET_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
        let columns = columns.join(", ");
        let mut out = Vec::new();
        let mut offset = 0;
        for size in super::chunk_sizes(deployment_ids.len(), 64) {
            let chunk = &deployment_ids[offset..offset + size];
            offset += size;
            let list = (1..=size).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT d.id AS deployment_id, {columns} FROM deployments d JOIN environments e ON e.name = d.environment \
                 JOIN secrets s ON s.scope = 'environment' AND s.scope_id = e.id WHERE d.id IN ({list}) \
                 UNION ALL \
                 SELECT d.id AS deployment_id, {columns} FROM deployments d \
                 JOIN secrets s ON s.scope = 'deployment' AND s.scope_id = d.id WHERE d.id IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push((row.try_get("deployment_id")?, secret_from_row(&row)?));
            }
        }
        Ok(out)
    }

    /// The ids of the master keys that sealed the stored secrets.
    pub async fn secret_key_ids(&self) -> Result<Vec<String>> {
        // Webhook and callback signing secrets are sealed under the same key.
        Ok(sqlx::query_scalar(
            "SELECT key_id FROM secrets UNION SELECT secret_key_id FROM webhooks \
             UNION SELECT secret_key_id FROM operation_callbacks WHERE secret_key_id IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Changes one scope's secrets and rolls them out, in one transaction under the write locks
    /// of the scope's deployments (and of the environment, for an environment's secrets), so
    /// concurrent changes serialize and none is lost:
    ///
    /// 1. `change` sees the scope's current secrets and returns what to write (or refuses, and
    ///    nothing is written; `None`: no secret changes, but the deployments are still looked
    ///    at, so a deployment whose revision does not reflect the secrets there are is fixed).
    /// 2. For every live deployment the scope covers, `rollout` sees the deployment, its
    ///    environment (for its variables; `None` if it is gone), the environment's secrets and
    ///    its own (as written) and returns the deployment's new desired state and operation, if
    ///    it changes; that state (a new revision) is stored like any change of the deployment.
    /// 3. The change's audit record is written.
    pub async fn write_secrets<E>(
        &self,
        scope: SecretScope,
        scope_id: &str,
        change: impl FnOnce(&[SecretRecord]) -> std::result::Result<Option<SecretWrite>, E>,
        mut rollout: impl FnMut(
            &DeploymentRecord,
            Option<&EnvironmentRecord>,
            &[SecretRecord],
            &[SecretRecord],
        ) -> std::result::Result<Option<(DeploymentRecord, OperationRecord)>, E>,
    ) -> Result<std::result::Result<SecretsWritten, E>> {
        let mut tx = self.write_tx().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        // The deployments the scope covers, locked in id order (as every writer locks them).
        let (environment, deployments) = match scope {
            SecretScope::Deployment => {
                let sql =
                    format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 AND deleted_at IS NULL{lock}");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(scope_id).fetch_optional(&mut *tx).await?;
                let Some(d) = row.as_ref().map(deployment_from_row).transpose()? else {
                    return Ok(Ok(SecretsWritten::NotFound));
                };
                let env = sqlx::query("SELECT * FROM environments WHERE name = $1")
                    .bind(&d.environment)
                    .fetch_optional(&mut *tx)
                    .await?;
                (env.as_ref().map(environment_from_row).transpose()?, vec![d])
            }
            SecretScope::Environment => match self.lock_environment_deployments(&mut tx, scope_id).await? {
                Some((env, deployments)) => (Some(env), deployments),
                None => return Ok(Ok(SecretsWritten::NotFound)),
            },
        };
        let environment_id = environment.as_ref().map(|e| e.id.clone());
        let current = Self::secrets_in(&mut tx, scope, scope_id).await?;
        let write = match change(&current) {
            Ok(write) => write.unwrap_or_else(|| SecretWrite { upserts: Vec::new(), deletes: Vec::new(), audit: None }),
            Err(e) => return Ok(Err(e)),
        };
        for name in &write.deletes {
            sqlx::query("DELETE FROM secrets WHERE scope = $1 AND scope_id = $2 AND name = $3")
                .bind(scope.as_str())
                .bind(scope_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        for s in &write.upserts {
            if (s.scope, s.scope_id.as_str()) != (scope, scope_id) {
                return Err(StoreError::Invalid(format!("secret {} is not of the scope being written", s.name)));
            }
            sqlx::query(
                "INSERT INTO secrets (scope, scope_id, name, ciphertext, nonce, key_id, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (scope, scope_id, name) DO UPDATE SET \
                 ciphertext = excluded.ciphertext, nonce = excluded.nonce, key_id = excluded.key_id, \
                 version = excluded.version, updated_at = excluded.updated_at",
            )
            .bind(s.scope.as_str())
            .bind(&s.scope_id)
            .bind(&s.name)
            .bind(&s.ciphertext)
            .bind(&s.nonce)
            .bind(&s.key_id)
            .bind(s.version)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        let environment_secrets = match &environment_id {
            Some(id) => Self::secrets_in(&mut tx, SecretScope::Environment, id).await?,
            None => Vec::new(),
        };
        // The audit record first: the revisions a secret change makes name it.
        let audit_id = match &write.audit {
            Some(audit) => Some(Self::write_audit(&mut tx, audit, crate::ids::now_ms()).await?),
            None => None,
        };
        let mut rolled_out = Vec::new();
        let mut queued = 0;
        for d in &deployments {
            let own = Self::secrets_in(&mut tx, SecretScope::Deployment, &d.id).await?;
            let next = match rollout(d, environment.as_ref(), &environment_secrets, &own) {
                Ok(Some(next)) => next,
                Ok(None) => continue,
                Err(e) => return Ok(Err(e)),
            };
            rolled_out.push(Self::store_rollout(&mut tx, d, next, audit_id.as_deref(), &mut queued).await?);
        }
        let secrets = Self::secrets_in(&mut tx, scope, scope_id).await?;
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(Ok(SecretsWritten::Done { secrets, rolled_out }))
    }

    async fn secrets_in(
        conn: &mut sqlx::AnyConnection,
        scope: SecretScope,
        scope_id: &str,
    ) -> Result<Vec<SecretRecord>> {
        let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE scope = $1 AND scope_id = $2 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(scope.as_str()).bind(scope_id).fetch_all(conn).await?;
        rows.iter().map(secret_from_row).collect()
    }

    /// Seals every stored secret again (master-key rotation), in one transaction: `reseal`
    /// returns a secret's new `(ciphertext, nonce, key id)` or refuses, and then nothing
    /// changes. Versions and `lastRotated` stay: the values do not change. The signing secrets
    /// of webhooks and callbacks go through `reseal_other` in the same transaction. Returns how
    /// many values were resealed.
    pub async fn reseal_secrets<E>(
        &self,
        mut reseal: impl FnMut(&SecretRecord) -> std::result::Result<(String, String, String), E>,
        mut reseal_other: impl FnMut(&super::SealedElsewhere) -> std::result::Result<crate::secrets::Sealed, E>,
        audit: &Audit,
    ) -> Result<std::result::Result<usize, E>> {
        let mut tx = self.write_tx().await?;
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets ORDER BY scope, scope_id, name{lock}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        let all = rows.iter().map(secret_from_row).collect::<Result<Vec<_>>>()?;
        for s in &all {
            let (ciphertext, nonce, key_id) = match reseal(s) {
                Ok(sealed) => sealed,
                Err(e) => return Ok(Err(e)),
            };
            sqlx::query(
                "UPDATE secrets SET ciphertext = $1, nonce = $2, key_id = $3 \
                 WHERE scope = $4 AND scope_id = $5 AND name = $6",
            )
            .bind(ciphertext)
            .bind(nonce)
            .bind(key_id)
            .bind(s.scope.as_str())
            .bind(&s.scope_id)
            .bind(&s.name)
            .execute(&mut *tx)
            .await?;
        }
        let others = Self::sealed_elsewhere(&mut tx, self.backend == Backend::Postgres).await?;
        for s in &others {
            let sealed = match reseal_other(s) {
                Ok(sealed) => sealed,
                Err(e) => return Ok(Err(e)),
            };
            Self::reseal_elsewhere(&mut tx, s, &sealed).await?;
        }
        Self::write_audit(&mut tx, audit, crate::ids::now_ms()).await?;
        tx.commit().await?;
        Ok(Ok(all.len() + others.len()))
    }
}
