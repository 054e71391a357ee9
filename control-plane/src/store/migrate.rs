//! A small forward-only migration runner shared by both backends.
//!
//! Migrations are embedded in the binary (nothing is read from disk at run time) and applied in
//! one transaction. On PostgreSQL a transaction-scoped advisory lock serializes replicas that
//! start at the same moment, so exactly one of them applies each migration.

use super::{Backend, Result, Store, StoreError};

/// `(version, name, SQLite SQL, PostgreSQL SQL)`; most migrations share one text.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (1, "agents", include_str!("../../migrations/0001_agents.sql"), include_str!("../../migrations/0001_agents.sql")),
    (
        2,
        "deployments",
        include_str!("../../migrations/0002_deployments.sql"),
        include_str!("../../migrations/0002_deployments.sql"),
    ),
    (
        3,
        "logs",
        include_str!("../../migrations/0003_logs.sqlite.sql"),
        include_str!("../../migrations/0003_logs.postgres.sql"),
    ),
    (
        4,
        "intent_rows",
        include_str!("../../migrations/0004_intent_rows.sql"),
        include_str!("../../migrations/0004_intent_rows.sql"),
    ),
    (
        5,
        "principals",
        include_str!("../../migrations/0005_principals.sql"),
        include_str!("../../migrations/0005_principals.sql"),
    ),
    (
        6,
        "approvals",
        include_str!("../../migrations/0006_approvals.sql"),
        include_str!("../../migrations/0006_approvals.sql"),
    ),
    (
        7,
        "workspaces",
        include_str!("../../migrations/0007_workspaces.sql"),
        include_str!("../../migrations/0007_workspaces.sql"),
    ),
    (
        8,
        "audit",
        include_str!("../../migrations/0008_audit.sqlite.sql"),
        include_str!("../../migrations/0008_audit.postgres.sql"),
    ),
    (
        9,
        "secrets",
        include_str!("../../migrations/0009_secrets.sql"),
        include_str!("../../migrations/0009_secrets.sql"),
    ),
    (
        10,
        "versions",
        include_str!("../../migrations/0010_versions.sql"),
        include_str!("../../migrations/0010_versions.sql"),
    ),
    (
        11,
        "environments",
        include_str!("../../migrations/0011_environments.sqlite.sql"),
        include_str!("../../migrations/0011_environments.postgres.sql"),
    ),
    (
        12,
        "idempotency",
        include_str!("../../migrations/0012_idempotency.sqlite.sql"),
        include_str!("../../migrations/0012_idempotency.postgres.sql"),
    ),
    (
        13,
        "webhooks",
        include_str!("../../migrations/0013_webhooks.sql"),
        include_str!("../../migrations/0013_webhooks.sql"),
    ),
];

/// Arbitrary constant identifying Ferry's migration lock.
const PG_LOCK_KEY: i64 = 0x46_65_72_72_79; // "Ferry" in ASCII

pub(super) async fn run(store: &Store) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ferry_migrations (\
           version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&store.pool)
    .await?;
    let mut tx = store.write_tx().await?;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)::TEXT").bind(PG_LOCK_KEY).execute(&mut *tx).await?;
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM ferry_migrations ORDER BY version").fetch_all(&mut *tx).await?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if let Some(&found) = applied.iter().max()
        && found > known
    {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (version, name, sqlite_sql, pg_sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let sql = if store.backend == Backend::Postgres { *pg_sql } else { *sqlite_sql };
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        if *version == 4 {
            split_intents(&mut tx).await?;
        }
        if *version == 10 {
            backfill_versions(&mut tx).await?;
        }
        sqlx::query("INSERT INTO ferry_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(*version)
            .bind(*name)
            .bind(crate::ids::now_ms())
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, name, "applied database migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Version 10's data step: one version per existing (deployment, version label), from the newest
/// revision with that label (its template, time and audit record); ordered by those revisions,
/// each counted as deployed then. Done in Rust so both backends store the same JSON.
async fn backfill_versions(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    /// deployment, version, spec, revision, created at, audit id, actor
    type Newest = (String, String, String, i64, i64, Option<String>, Option<String>);
    let rows: Vec<Newest> = sqlx::query_as(
        "SELECT r.deployment_id, r.version, r.spec, r.revision, r.created_at, r.audit_id, \
         (SELECT a.actor FROM audit_log a WHERE a.id = r.audit_id) \
         FROM deployment_revisions r WHERE r.revision = (SELECT MAX(n.revision) FROM deployment_revisions n \
         WHERE n.deployment_id = r.deployment_id AND n.version = r.version) \
         ORDER BY r.deployment_id, r.revision",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut seq = 0;
    let mut last: Option<String> = None;
    for (deployment, version, spec, revision, at, audit_id, actor) in rows {
        if last.as_deref() != Some(deployment.as_str()) {
            seq = 0;
            last = Some(deployment.clone());
        }
        seq += 1;
        let configuration = crate::model::version_template(&spec).map_err(|e| StoreError::Corrupt {
            table: "deployment_revisions",
            column: "spec",
            message: e.to_string(),
        })?;
        let actor = actor.unwrap_or_else(|| "system:migration".into());
        sqlx::query(
            "INSERT INTO deployment_versions (deployment_id, version, configuration, description, source, \
             created_at, created_by, audit_id, status, status_reason, seq, deployed_seq, deployed_at, deployed_by) \
             VALUES ($1, $2, $3, '', NULL, $4, $5, $6, 'available', '', $7, $8, $4, $5)",
        )
        .bind(&deployment)
        .bind(&version)
        .bind(configuration)
        .bind(at)
        .bind(actor)
        .bind(audit_id)
        .bind(seq)
        .bind(revision)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Version 4's data step: schema 2 kept each agent's intent as one JSON list of protocol-1
/// workloads (`agent_intents.workloads`); schema 4 keeps a row per (agent, workload). Every
/// existing deployment is at revision 1, so each listed workload becomes row `<id>@1` at the
/// agent's current generation, and agents keep running what they run.
async fn split_intents(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT agent_id, generation, workloads FROM agent_intents").fetch_all(&mut **tx).await?;
    for (agent, generation, workloads) in rows {
        let workloads: Vec<ferry_protocol::Workload> = serde_json::from_str(&workloads)
            .map_err(|e| StoreError::Corrupt { table: "agent_intents", column: "workloads", message: e.to_string() })?;
        for w in workloads {
            sqlx::query(
                "INSERT INTO intent_workloads (agent_id, workload_id, deployment_id, revision, replicas, \
                 restart_nonce, generation, removed) VALUES ($1, $2, $3, 1, $4, $5, $6, 0)",
            )
            .bind(&agent)
            .bind(ferry_protocol::WorkloadIntent::id_for(&w.id, 1))
            .bind(&w.id)
            .bind(w.spec.replicas as i64)
            .bind(w.restart_nonce as i64)
            .bind(generation)
            .execute(&mut **tx)
            .await?;
        }
    }
    sqlx::query("UPDATE agent_intents SET workloads = '[]'").execute(&mut **tx).await?;
    // Protocol-1 agents reported workloads by deployment id; rows now carry the workload id.
    sqlx::query("UPDATE agent_observed SET workload_id = workload_id || '@1'").execute(&mut **tx).await?;
    Ok(())
}
