//! Old stored rows keep working: a database written by the previous schema (version 3: one JSON
//! list of protocol-1 workloads per agent, observed rows named by deployment id, no revisions)
//! is upgraded in place and everything in it still loads, on SQLite and on PostgreSQL.

use ferry_control_plane::domain::AuditOutcome;
use ferry_control_plane::ids::random_hex;
use ferry_control_plane::store::{DeploymentFilter, Page, Store, StoreOptions};
use sqlx::{AnyConnection, Connection};

const V1: &str = include_str!("../migrations/0001_agents.sql");
const V2: &str = include_str!("../migrations/0002_deployments.sql");
const V3_SQLITE: &str = include_str!("../migrations/0003_logs.sqlite.sql");
const V3_PG: &str = include_str!("../migrations/0003_logs.postgres.sql");

/// What a schema-3 control plane wrote for one agent running one deployment.
const OLD_ROWS: &str = r#"
CREATE TABLE ferry_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL);
INSERT INTO ferry_migrations VALUES (1, 'agents', 1), (2, 'deployments', 1), (3, 'logs', 1);
INSERT INTO agents (id, name, labels, token_labels, version, enrolled_at, cert_serial, cert_not_after,
    acked_generation) VALUES ('agent-old', 'host', '{"zone":"eu"}', '{}', '0.1.0', 1, '01', 99, 7);
INSERT INTO environments (id, name, type, description, locked, created_at, updated_at)
    VALUES ('env-development', 'development', 'development', 'Development environment', 0, 1, 1);
INSERT INTO deployments (id, name, environment, active_version, spec, target, desired_state, restart_nonce,
    resource_version, created_at, updated_at, last_deployed_at) VALUES ('deploy-old', 'web', 'development', 'v3',
    '{"replicas":2,"command":"/bin/sleep","args":["3600"]}', '{"selector":{}}', 'running', 1, 4, 1, 2, 2);
INSERT INTO agent_intents (agent_id, generation, workloads, updated_at) VALUES ('agent-old', 7,
    '[{"id":"deploy-old","name":"web","version":"v3","restart_nonce":1,"spec":{"command":"/bin/sleep","args":["3600"],"env":{},"working_dir":null,"replicas":2,"restart_policy":"Always","liveness":null,"readiness":null,"startup":null,"stop_grace_ms":10000}}]',
    2);
INSERT INTO audit_log (id, at, actor, action, target, request_id, details) VALUES
    ('aud-old', 1, 'admin:old', 'deployment.create', 'deploy-old', 'req-old', '{"name":"web"}');
INSERT INTO agent_observed (agent_id, workload_id, generation, replicas, reported_at) VALUES ('agent-old',
    'deploy-old', 7, '[{"index":0,"phase":"Running","pid":10,"port":20000,"ready":true,"restarts":0,"reason":null,"since_ms":1}]', 3);
"#;

async fn write_schema_3(conn: &mut AnyConnection, v3: &'static str) {
    for sql in [V1, V2, v3, OLD_ROWS] {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }
}

async fn old_rows_still_load(store: &Store) {
    let d = store.get_deployment("deploy-old").await.unwrap().unwrap();
    assert_eq!((d.revision, d.resource_version, d.active_version.as_str()), (1, 4, "v3"));
    assert_eq!((d.workspace.as_str(), d.project_id.as_deref(), d.ai_zone_id.as_deref()), ("default", None, None));
    let (version, spec) = store.revision("deploy-old", 1).await.unwrap().unwrap();
    assert_eq!(version, "v3");
    assert!(spec.contains("/bin/sleep"));
    let (head, rows) = store.intent_snapshot("agent-old", None).await.unwrap();
    assert_eq!(head.generation, 7, "the agent's generation carries on");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.workload_id.as_str(), r.deployment_id.as_str(), r.revision, r.replicas, r.restart_nonce, r.generation),
        ("deploy-old@1", "deploy-old", 1, 2, 1, 7)
    );
    let observed = store.observed_of("deploy-old").await.unwrap();
    assert_eq!(observed.len(), 1);
    assert_eq!((observed[0].workload_id.as_str(), observed[0].agent_observed_generation), ("deploy-old@1", 7));
    let agent = store.get_agent("agent-old").await.unwrap().unwrap();
    assert_eq!(agent.capabilities, ["runtime:process"], "agents from before capabilities run processes");
    let (page, total) =
        store.list_deployments(DeploymentFilter { page: 1, page_size: 10, ..Default::default() }).await.unwrap();
    assert_eq!((page.len(), total), (1, 1));
    // Audit records keep what they said, gain an object type and outcome, and name the revision
    // they created.
    let (history, _) = store.deployment_history("deploy-old", Page::newest_first(1, 10)).await.unwrap();
    let a = history[0].audit.as_ref().expect("revision 1 is linked to its creation");
    assert_eq!(
        (a.id.as_str(), a.actor.as_str(), a.object_type.as_str(), a.outcome, a.request_id.as_str()),
        ("aud-old", "admin:old", "deployment", AuditOutcome::Success, "req-old")
    );
    assert_eq!(a.details, serde_json::json!({ "name": "web" }));
    // Schema 10 gives every (deployment, version label) a version, from its newest revision.
    let v = store.get_version("deploy-old", "v3").await.unwrap().expect("the active version is a version");
    let config: serde_json::Value = serde_json::from_str(&v.configuration).unwrap();
    assert_eq!(config, serde_json::json!({ "command": "/bin/sleep", "args": ["3600"] }), "no replica count");
    assert_eq!(
        (v.created_by.as_str(), v.audit_id.as_deref(), v.seq, v.deployed_seq),
        ("admin:old", Some("aud-old"), 1, Some(1))
    );
    assert_eq!(store.list_versions("deploy-old", 1, 10).await.unwrap().1, 1);
    // The environment's running totals count what its deployments held before they existed.
    let usage = store.environment_usage("development").await.unwrap();
    assert_eq!((usage.pods, usage.cpu_millis, usage.memory_bytes), (2, 0, 0));
    let env = store.get_environment("development").await.unwrap().unwrap();
    assert_eq!(env.promotes_to, None, "no staging to promote to in this database");
    // And a second start changes nothing.
    store.migrate().await.unwrap();
    assert_eq!(store.intent_snapshot("agent-old", None).await.unwrap().1.len(), 1);
}

#[tokio::test]
async fn sqlite_schema_3_upgrades_in_place() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = AnyConnection::connect(&url).await.unwrap();
    write_schema_3(&mut conn, V3_SQLITE).await;
    conn.close().await.unwrap();
    let store = Store::sqlite_file(&path).await.unwrap();
    old_rows_still_load(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_schema_3_upgrades_in_place() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("skipping PostgreSQL variant: DATABASE_URL is not set");
        return;
    };
    sqlx::any::install_default_drivers();
    let schema = format!("ferry_test_{}", random_hex(6));
    let mut conn = AnyConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}; SET search_path TO {schema};")))
        .execute(&mut conn)
        .await
        .unwrap();
    write_schema_3(&mut conn, V3_PG).await;
    let store = Store::connect(&url, StoreOptions { pg_schema: Some(schema.clone()) }).await.unwrap();
    old_rows_still_load(&store).await;
    store.drop_pg_schema(&schema).await.unwrap();
    store.close().await;
    conn.close().await.unwrap();
}
