//! Store conformance suite: every test runs against SQLite and against PostgreSQL.
//!
//! PostgreSQL comes from `DATABASE_URL` (CI sets it to the local server); each test uses a
//! schema of its own, dropped afterwards. Without `DATABASE_URL` the PostgreSQL variants print
//! why they skip and pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_control_plane::ids::{now_ms, random_hex};
use ferry_control_plane::store::{
    AgentFilter, AgentStatus, Audit, EnrollRefusal, NewAgent, NewBootstrapToken, Store, StoreOptions,
};

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    cleanup: Option<(String, String)>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::sqlite_file(&dir.path().join("ferry.db")).await.unwrap();
        Db { store, _dir: Some(dir), cleanup: None }
    }

    async fn postgres() -> Option<Db> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!("skipping PostgreSQL variant: DATABASE_URL is not set");
            return None;
        };
        let schema = format!("ferry_test_{}", random_hex(6));
        let store = Store::connect(&url, StoreOptions { pg_schema: Some(schema.clone()) }).await.unwrap();
        Some(Db { store, _dir: None, cleanup: Some((url, schema)) })
    }

    async fn drop_schema(self) {
        self.store.close().await;
        if let Some((url, schema)) = self.cleanup {
            let plain = Store::connect(&url, StoreOptions::default()).await.unwrap();
            plain.drop_pg_schema(&schema).await.unwrap();
            plain.close().await;
        }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let db = super::Db::sqlite().await; super::$name(&db.store).await; db.drop_schema().await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { if let Some(db) = super::Db::postgres().await { super::$name(&db.store).await; db.drop_schema().await; } })*
        }
    };
}

conformance!(
    migrations_are_idempotent,
    a_token_enrolls_exactly_one_agent_even_under_concurrency,
    refusals_say_why,
    sessions_are_owned_by_compare_and_set,
    revocation_is_idempotent_and_audited,
    listing_filters_and_paginates,
    admin_tokens_are_found_by_hash,
);

fn audit(action: &'static str, target: &str) -> Audit {
    Audit {
        actor: "admin:test".into(),
        action,
        target: target.into(),
        request_id: "req-1".into(),
        details: serde_json::json!({}),
    }
}

async fn new_token(store: &Store, ttl_ms: i64, labels: &[(&str, &str)]) -> (String, String) {
    let id = random_hex(8);
    let secret_hash = random_hex(32);
    let now = now_ms();
    let t = NewBootstrapToken {
        id: id.clone(),
        secret_hash: secret_hash.clone(),
        description: "test".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        created_at: now,
        expires_at: now + ttl_ms,
    };
    store.create_bootstrap_token(&t, &audit("token.create", &id)).await.unwrap();
    (id, secret_hash)
}

fn agent(id: &str) -> NewAgent {
    NewAgent {
        id: id.into(),
        name: format!("{id}-host"),
        labels: BTreeMap::from([("zone".into(), "declared".into()), ("os".into(), "linux".into())]),
        version: "0.1.0".into(),
        cert_serial: "01".into(),
        cert_not_after: now_ms() + 60_000,
    }
}

async fn enrolled(store: &Store, id: &str) {
    let (tid, hash) = new_token(store, 60_000, &[]).await;
    store.enroll(&tid, &hash, &agent(id), now_ms()).await.unwrap().unwrap();
}

async fn migrations_are_idempotent(store: &Store) {
    // Running the migrator again (as a second replica would) changes nothing.
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

async fn a_token_enrolls_exactly_one_agent_even_under_concurrency(store: &Store) {
    let (tid, hash) = new_token(store, 60_000, &[("zone", "imposed")]).await;
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, tid, hash) = (store.clone(), tid.clone(), hash.clone());
        tasks.push(tokio::spawn(async move {
            store.enroll(&tid, &hash, &agent(&format!("agent-{i}")), now_ms()).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(rec) => won.push(rec),
            Err(refusal) => assert_eq!(refusal, EnrollRefusal::Used),
        }
    }
    assert_eq!(won.len(), 1, "exactly one enrollment may consume a token");
    let rec = &won[0];
    assert_eq!(rec.labels["zone"], "imposed", "token labels override declared ones");
    assert_eq!(rec.labels["os"], "linux");
    let tokens = store.list_bootstrap_tokens().await.unwrap();
    assert_eq!(tokens[0].used_by.as_deref(), Some(rec.id.as_str()));
}

async fn refusals_say_why(store: &Store) {
    let (tid, hash) = new_token(store, 60_000, &[]).await;
    assert_eq!(store.enroll(&tid, "wrong", &agent("agent-a"), now_ms()).await.unwrap(), Err(EnrollRefusal::Unknown));
    assert_eq!(store.enroll("nope", &hash, &agent("agent-a"), now_ms()).await.unwrap(), Err(EnrollRefusal::Unknown));
    // Expired: enrolling "later" than the expiry.
    assert_eq!(
        store.enroll(&tid, &hash, &agent("agent-a"), now_ms() + 120_000).await.unwrap(),
        Err(EnrollRefusal::Expired)
    );
    store.enroll(&tid, &hash, &agent("agent-a"), now_ms()).await.unwrap().unwrap();
    assert_eq!(store.enroll(&tid, &hash, &agent("agent-b"), now_ms()).await.unwrap(), Err(EnrollRefusal::Used));
    assert!(store.get_agent("agent-b").await.unwrap().is_none(), "a refused enrollment stores no agent");
}

async fn sessions_are_owned_by_compare_and_set(store: &Store) {
    enrolled(store, "agent-s").await;
    let labels = BTreeMap::from([("zone".into(), "hello".into())]);
    let now = now_ms();
    let a = store.start_session("agent-s", "sess-1", "renamed", "0.2.0", &labels, now).await.unwrap().unwrap();
    assert_eq!(a.name, "renamed");
    assert_eq!(a.version, "0.2.0");
    assert_eq!(a.status(now, 15_000), AgentStatus::Connected);
    assert!(store.heartbeat("agent-s", "sess-1", now + 1).await.unwrap());
    // A newer session takes over; the old one can neither heartbeat nor clear it.
    store.start_session("agent-s", "sess-2", "renamed", "0.2.0", &labels, now + 2).await.unwrap().unwrap();
    assert!(!store.heartbeat("agent-s", "sess-1", now + 3).await.unwrap());
    store.end_session("agent-s", "sess-1").await.unwrap();
    let a = store.get_agent("agent-s").await.unwrap().unwrap();
    assert_eq!(a.session_id.as_deref(), Some("sess-2"));
    store.end_session("agent-s", "sess-2").await.unwrap();
    let a = store.get_agent("agent-s").await.unwrap().unwrap();
    assert_eq!(a.status(now_ms(), 15_000), AgentStatus::Disconnected);
    // Certificates are recorded.
    store.update_certificate("agent-s", "abcd", 42).await.unwrap();
    let a = store.get_agent("agent-s").await.unwrap().unwrap();
    assert_eq!((a.cert_serial.as_str(), a.cert_not_after), ("abcd", 42));
    assert!(store.start_session("agent-unknown", "s", "n", "v", &labels, now).await.unwrap().is_none());
}

async fn revocation_is_idempotent_and_audited(store: &Store) {
    enrolled(store, "agent-r").await;
    let labels = BTreeMap::new();
    store.start_session("agent-r", "sess-1", "n", "v", &labels, now_ms()).await.unwrap().unwrap();
    let t = now_ms() + 1_000;
    let first = store.revoke_agent("agent-r", &audit("agent.revoke", "agent-r"), t).await.unwrap().unwrap();
    assert_eq!(first.revoked_at, Some(t));
    assert_eq!(first.session_id, None);
    let again = store.revoke_agent("agent-r", &audit("agent.revoke", "agent-r"), t + 1_000).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(t), "the first revocation time is kept");
    assert!(!store.heartbeat("agent-r", "sess-1", now_ms()).await.unwrap());
    assert!(store.start_session("agent-r", "sess-2", "n", "v", &labels, now_ms()).await.unwrap().is_none());
    assert!(store.revoke_agent("agent-none", &audit("agent.revoke", "agent-none"), 1).await.unwrap().is_none());
    let actions: Vec<String> = store.audit_for("agent-r").await.unwrap().into_iter().map(|a| a.0).collect();
    assert_eq!(actions, ["agent.enroll", "agent.revoke", "agent.revoke"]);
    assert!(store.audit_for("agent-none").await.unwrap().is_empty(), "no audit for a no-op");
}

async fn listing_filters_and_paginates(store: &Store) {
    for i in 0..5 {
        enrolled(store, &format!("agent-l{i}")).await;
    }
    let now = now_ms();
    let labels = BTreeMap::new();
    store.start_session("agent-l1", "s1", "n", "v", &labels, now).await.unwrap();
    store.start_session("agent-l2", "s2", "n", "v", &labels, now - 60_000).await.unwrap();
    store.revoke_agent("agent-l3", &audit("agent.revoke", "agent-l3"), now).await.unwrap();
    let f =
        |status, page, page_size| AgentFilter { status, now_ms: now, heartbeat_timeout_ms: 15_000, page, page_size };
    let (all, total) = store.list_agents(f(None, 1, 2)).await.unwrap();
    assert_eq!((all.len(), total), (2, 5));
    let (last, _) = store.list_agents(f(None, 3, 2)).await.unwrap();
    assert_eq!(last.len(), 1);
    let ids = |v: Vec<ferry_control_plane::store::AgentRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let (c, n) = store.list_agents(f(Some(AgentStatus::Connected), 1, 10)).await.unwrap();
    assert_eq!((ids(c), n), (vec!["agent-l1".to_string()], 1));
    let (r, _) = store.list_agents(f(Some(AgentStatus::Revoked), 1, 10)).await.unwrap();
    assert_eq!(ids(r), ["agent-l3"]);
    let (d, n) = store.list_agents(f(Some(AgentStatus::Disconnected), 1, 10)).await.unwrap();
    assert_eq!(n, 3, "stale heartbeat (l2) counts as disconnected");
    assert_eq!(ids(d), ["agent-l0", "agent-l2", "agent-l4"]);
}

async fn admin_tokens_are_found_by_hash(store: &Store) {
    assert_eq!(store.admin_token_count().await.unwrap(), 0);
    store.insert_admin_token("admin-1", "hash-1", now_ms()).await.unwrap();
    assert_eq!(store.admin_token_count().await.unwrap(), 1);
    assert_eq!(store.admin_token_by_hash("hash-1").await.unwrap().as_deref(), Some("admin-1"));
    assert_eq!(store.admin_token_by_hash("hash-2").await.unwrap(), None);
}
