//! Store conformance suite: every test runs against SQLite and against PostgreSQL.
//!
//! PostgreSQL comes from `DATABASE_URL` (CI sets it to the local server); each test uses a
//! schema of its own, dropped afterwards. Without `DATABASE_URL` the PostgreSQL variants print
//! why they skip and pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_control_plane::audit::mask::MASK;
use ferry_control_plane::domain::{AuditOutcome, DesiredState, OperationKind, OperationStatus};
use ferry_control_plane::ids::{now_ms, random_hex};
use ferry_control_plane::store::{
    AgentFilter, AgentStatus, ApiKeyRecord, Audit, AuditFilter, Credential, DeploymentFilter, EVENTS_KEPT,
    EVENTS_PRUNE_EVERY, EnrollRefusal, EnvironmentLock, IntentRow, LogRow, NewAgent, NewBootstrapToken, ObservedReport,
    Ownership, Page, RowChange, StatusSummary, Store, StoreOptions, TimelineItem, UserRecord,
};
use ferry_control_plane::store::{
    AiZoneChange, AiZoneRecord, CreateRefusal, DeploymentRecord, OperationRecord, ProjectDelete, ProjectRecord,
    Renamed, Visibility, WorkspaceDelete, WorkspaceRecord,
};
use ferry_control_plane::store::{EnvironmentRecord, SecretRecord, SecretScope, SecretWrite, SecretsWritten};
use ferry_control_plane::store::{IdempotencyClaim, IdempotencyState, StoredResponse};
use ferry_protocol::{LogLine, LogStream, Phase, ReplicaStatus};

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop.
    cleanup: Option<String>,
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
        Some(Db { store, _dir: None, cleanup: Some(schema) })
    }

    /// Drops the test's schema through its own connection: connecting to `public` would migrate
    /// it, which fails (and should not happen) when another build has migrated it further.
    async fn drop_schema(self) {
        if let Some(schema) = &self.cleanup {
            self.store.drop_pg_schema(schema).await.unwrap();
        }
        self.store.close().await;
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
    log_batches_are_stored_once_even_when_resent,
    log_queries_are_ordered_and_filtered,
    log_retention_keeps_the_newest_lines,
    concurrent_ingest_never_lets_a_cursor_skip_a_line,
    intent_rows_carry_generations_and_deltas,
    observed_rows_change_only_what_changed,
    status_summaries_filter_the_listing,
    liveness_is_flushed_in_batches,
    users_sessions_and_keys,
    environment_locks_are_exclusive,
    a_pending_change_is_applied_exactly_once,
    a_pending_create_is_applied_exactly_once,
    expiry_and_schedule_queries_and_transitions,
    approvals_are_listed_by_visibility,
    environment_policy_updates_are_audited,
    audit_records_are_filtered_paged_and_masked,
    audit_records_cannot_be_changed_or_deleted,
    status_events_are_appended_on_transitions_only,
    status_events_are_bounded_per_deployment,
    timelines_merge_audit_records_and_events,
    workspaces_projects_and_zones,
    deployments_are_created_only_where_what_they_name_exists,
    listing_shows_only_the_visible_workspace_environment_pairs,
    secrets_are_written_with_their_rollouts_in_one_transaction,
    concurrent_secret_writes_serialize,
    resealing_is_all_or_nothing,
    versions_are_created_once_and_named_in_order,
    versions_are_deployed_and_marked_with_their_deployment,
    promotions_and_git_versions_are_stored_as_they_are,
    a_failed_rollout_fails_the_version_it_deployed,
    allocations_follow_creates_scales_stops_and_deletes,
    concurrent_creates_cannot_both_pass_a_limit,
    environments_are_deleted_only_when_empty_and_unreferenced,
    environment_configuration_is_checked_and_rolled_out_in_one_transaction,
    status_counts_are_grouped_and_filtered,
    events_queue_deliveries_in_the_transaction_of_their_change,
    two_claimers_never_claim_the_same_attempt,
    an_idempotency_key_is_claimed_once_under_concurrency,
    idempotency_keys_expire_and_are_swept_in_batches,
    a_stale_in_flight_idempotency_claim_is_taken_over,
);

fn audit(action: &'static str, target: &str) -> Audit {
    Audit::new("admin:test", action, target, "req-1", serde_json::json!({}))
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
    let a = store.start_session("agent-s", "sess-1", "renamed", "0.2.0", &labels, &[], now).await.unwrap().unwrap();
    assert_eq!(a.name, "renamed");
    assert_eq!(a.version, "0.2.0");
    assert_eq!(a.status(now, 15_000), AgentStatus::Connected);
    assert!(store.heartbeat("agent-s", "sess-1", now + 1).await.unwrap());
    // A newer session takes over; the old one can neither heartbeat nor clear it.
    store.start_session("agent-s", "sess-2", "renamed", "0.2.0", &labels, &[], now + 2).await.unwrap().unwrap();
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
    assert!(store.start_session("agent-unknown", "s", "n", "v", &labels, &[], now).await.unwrap().is_none());
}

async fn revocation_is_idempotent_and_audited(store: &Store) {
    enrolled(store, "agent-r").await;
    let labels = BTreeMap::new();
    store.start_session("agent-r", "sess-1", "n", "v", &labels, &[], now_ms()).await.unwrap().unwrap();
    let t = now_ms() + 1_000;
    let first = store.revoke_agent("agent-r", &audit("agent.revoke", "agent-r"), t).await.unwrap().unwrap();
    assert_eq!(first.revoked_at, Some(t));
    assert_eq!(first.session_id, None);
    let again = store.revoke_agent("agent-r", &audit("agent.revoke", "agent-r"), t + 1_000).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(t), "the first revocation time is kept");
    assert!(!store.heartbeat("agent-r", "sess-1", now_ms()).await.unwrap());
    assert!(store.start_session("agent-r", "sess-2", "n", "v", &labels, &[], now_ms()).await.unwrap().is_none());
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
    store.start_session("agent-l1", "s1", "n", "v", &labels, &[], now).await.unwrap();
    store.start_session("agent-l2", "s2", "n", "v", &labels, &[], now - 60_000).await.unwrap();
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

// ---- log lines ------------------------------------------------------------------------------

fn lines(n: usize, stream: LogStream, ts_ms: u64, tag: &str) -> Vec<LogLine> {
    (0..n).map(|i| LogLine { ts_ms: ts_ms + i as u64, stream, line: format!("{tag} {i}") }).collect()
}

async fn all_logs(store: &Store, deployment: &str) -> Vec<LogRow> {
    store.query_logs(deployment, None, None, None, 100_000).await.unwrap()
}

async fn log_batches_are_stored_once_even_when_resent(store: &Store) {
    store.insert_test_deployment("dep-a").await.unwrap();
    let src = "dep-a/0/boot1";
    let batch = lines(3, LogStream::Stdout, 1_000, "a");
    assert_eq!(store.insert_log_batch("agent-1", "dep-a", 0, src, 1, &batch, 0).await.unwrap(), 3);
    // The ack was lost: the agent resends the same batch, then an overlapping one.
    assert_eq!(store.insert_log_batch("agent-1", "dep-a", 0, src, 1, &batch, 0).await.unwrap(), 3);
    let overlap = lines(4, LogStream::Stdout, 1_001, "b");
    assert_eq!(store.insert_log_batch("agent-1", "dep-a", 0, src, 2, &overlap, 0).await.unwrap(), 5);
    let got: Vec<String> = all_logs(store, "dep-a").await.into_iter().map(|r| r.line).collect();
    assert_eq!(got, ["a 0", "a 1", "a 2", "b 2", "b 3"], "seq 2 and 3 kept their first version");
    // Another boot of the same replica is another source: its seq 1 is new.
    store
        .insert_log_batch("agent-1", "dep-a", 0, "dep-a/0/boot2", 1, &lines(1, LogStream::Stdout, 9, "c"), 0)
        .await
        .unwrap();
    assert_eq!(all_logs(store, "dep-a").await.len(), 6);
    // Empty batches store nothing; a NUL (which PostgreSQL refuses in TEXT) is replaced.
    assert_eq!(store.insert_log_batch("agent-1", "dep-a", 0, src, 6, &[], 0).await.unwrap(), 5);
    let nul = vec![LogLine { ts_ms: 1, stream: LogStream::Stderr, line: "x\0y".into() }];
    store.insert_log_batch("agent-1", "dep-a", 0, src, 6, &nul, 0).await.unwrap();
    assert_eq!(all_logs(store, "dep-a").await.last().unwrap().line, "x\u{FFFD}y");
    assert!(store.insert_log_batch("agent-1", "dep-a", 0, src, 0, &nul, 0).await.is_err(), "seq 0");
    assert!(store.insert_log_batch("agent-1", "dep-a", 0, src, u64::MAX, &nul, 0).await.is_err());
}

async fn log_queries_are_ordered_and_filtered(store: &Store) {
    assert!(!store.deployment_exists("dep-q").await.unwrap());
    store.insert_test_deployment("dep-q").await.unwrap();
    store.insert_test_deployment("dep-other").await.unwrap();
    assert!(store.deployment_exists("dep-q").await.unwrap());
    assert_eq!(store.latest_log_id("dep-q").await.unwrap(), None);
    let out = lines(5, LogStream::Stdout, 10_000, "out");
    let err = lines(5, LogStream::Stderr, 20_000, "err");
    store.insert_log_batch("agent-1", "dep-q", 0, "dep-q/0/b", 1, &out, 0).await.unwrap();
    store.insert_log_batch("agent-2", "dep-other", 0, "dep-other/0/b", 1, &out, 0).await.unwrap();
    store.insert_log_batch("agent-2", "dep-q", 1, "dep-q/1/b", 1, &err, 0).await.unwrap();
    let all = all_logs(store, "dep-q").await;
    assert_eq!(all.len(), 10, "other deployments' lines are not included");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    assert_eq!((all[0].agent_id.as_str(), all[0].replica, all[0].ts_ms), ("agent-1", 0, 10_000));
    assert_eq!((all[9].agent_id.as_str(), all[9].replica, all[9].stream.as_str()), ("agent-2", 1, "stderr"));
    assert_eq!(store.latest_log_id("dep-q").await.unwrap(), Some(all[9].id));
    let q = |after, since, stream, limit| store.query_logs("dep-q", after, since, stream, limit);
    let texts = |rows: Vec<LogRow>| rows.into_iter().map(|r| r.line).collect::<Vec<_>>();
    assert_eq!(texts(q(None, None, None, 2).await.unwrap()), ["out 0", "out 1"]);
    assert_eq!(texts(q(Some(all[3].id), None, None, 3).await.unwrap()), ["out 4", "err 0", "err 1"]);
    assert_eq!(texts(q(None, None, Some("stderr"), 2).await.unwrap()), ["err 0", "err 1"]);
    assert_eq!(texts(q(None, Some(10_003), Some("stdout"), 100).await.unwrap()), ["out 3", "out 4"]);
    assert_eq!(texts(q(None, Some(20_004), None, 100).await.unwrap()), ["err 4"]);
    assert!(q(Some(all[9].id), None, None, 100).await.unwrap().is_empty());
    assert_eq!(texts(store.tail_logs("dep-q", None, 3).await.unwrap()), ["err 2", "err 3", "err 4"]);
    assert_eq!(texts(store.tail_logs("dep-q", Some("stdout"), 2).await.unwrap()), ["out 3", "out 4"]);
    assert_eq!(store.tail_logs("dep-q", None, 100).await.unwrap().len(), 10);
}

async fn log_retention_keeps_the_newest_lines(store: &Store) {
    store.insert_test_deployment("dep-r").await.unwrap();
    store.insert_test_deployment("dep-keep").await.unwrap();
    store
        .insert_log_batch("a", "dep-keep", 0, "dep-keep/0/b", 1, &lines(30, LogStream::Stdout, 0, "k"), 100)
        .await
        .unwrap();
    let retention = 100;
    let mut seq = 1;
    let mut max_seen = 0;
    for _ in 0..60 {
        let batch = lines(7, LogStream::Stdout, 0, "r");
        store.insert_log_batch("a", "dep-r", 0, "dep-r/0/b", seq, &batch, retention).await.unwrap();
        seq += 7;
        let n = all_logs(store, "dep-r").await.len();
        max_seen = max_seen.max(n);
        assert!(n <= (seq - 1) as usize);
    }
    let rows = all_logs(store, "dep-r").await;
    // At least the newest `retention` lines, at most ~10% (plus one batch) more.
    assert!(rows.len() >= retention as usize, "{}", rows.len());
    assert!(max_seen <= retention as usize + retention as usize / 10 + 7, "{max_seen}");
    let newest: Vec<i64> = rows.iter().rev().take(retention as usize).map(|r| r.id).collect();
    assert!(newest.windows(2).all(|w| w[0] > w[1]), "the newest lines survive, in order");
    assert_eq!(all_logs(store, "dep-keep").await.len(), 30, "other deployments are not pruned");
}

async fn concurrent_ingest_never_lets_a_cursor_skip_a_line(store: &Store) {
    store.insert_test_deployment("dep-c").await.unwrap();
    let (writers, batches, per_batch) = (6, 25, 8);
    let total = writers * batches * per_batch;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let source = format!("dep-c/{w}/boot");
            for b in 0..batches {
                let batch = lines(per_batch, LogStream::Stdout, 0, &format!("w{w}"));
                let first = (b * per_batch + 1) as u64;
                store.insert_log_batch("a", "dep-c", w as u32, &source, first, &batch, 0).await.unwrap();
            }
        }));
    }
    // A follower reading "after the last id it saw" while writers commit concurrently, until the
    // writers are done and it has caught up.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let writers_done = tasks.iter().all(|t| t.is_finished());
        let rows = store.query_logs("dep-c", seen.last().copied(), None, None, 50).await.unwrap();
        seen.extend(rows.iter().map(|r| r.id));
        if writers_done && rows.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "writers did not finish");
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored: Vec<i64> = all_logs(store, "dep-c").await.into_iter().map(|r| r.id).collect();
    assert_eq!(stored.len(), total);
    let seen_set: std::collections::HashSet<i64> = seen.iter().copied().collect();
    let skipped: Vec<i64> = stored.iter().filter(|id| !seen_set.contains(id)).copied().collect();
    assert!(
        skipped.is_empty(),
        "the follower skipped {} of {total} lines: {:?}…",
        skipped.len(),
        &skipped[..skipped.len().min(8)]
    );
    assert_eq!(seen, stored, "the follower saw every line once, in order");
}

fn change(agent: &str, replicas: u32, removed: bool) -> RowChange {
    RowChange {
        agent_id: agent.into(),
        workload_id: "dep-i@1".into(),
        revision: 1,
        replicas,
        restart_nonce: 0,
        removed,
    }
}

fn brief(rows: &[IntentRow]) -> Vec<(String, u32, u64, bool)> {
    rows.iter().map(|r| (r.agent_id.clone(), r.replicas, r.generation, r.removed)).collect()
}

async fn intent_rows_carry_generations_and_deltas(store: &Store) {
    for a in ["a1", "a2"] {
        enrolled(store, a).await;
    }
    store.insert_test_deployment("dep-i").await.unwrap();
    let now = now_ms();
    let first = store
        .reconcile_intent("dep-i", now, |_, _, rows| {
            assert!(rows.is_empty());
            vec![change("a1", 2, false), change("a2", 1, false)]
        })
        .await
        .unwrap();
    assert_eq!(first, [("a1".to_string(), 1), ("a2".to_string(), 1)]);
    // The planner sees the rows as they are inside the write transaction.
    let second = store
        .reconcile_intent("dep-i", now, |_, _, rows| {
            assert_eq!(brief(rows), [("a1".into(), 2, 1, false), ("a2".into(), 1, 1, false)]);
            vec![change("a1", 3, false)]
        })
        .await
        .unwrap();
    assert_eq!(second, [("a1".to_string(), 2)], "only the agent whose row changed moves on");
    assert!(store.reconcile_intent("dep-i", now, |_, _, _| vec![]).await.unwrap().is_empty());
    let (head, rows) = store.intent_snapshot("a1", None).await.unwrap();
    assert_eq!((head.generation, brief(&rows)), (2, vec![("a1".into(), 3, 2, false)]));
    assert!(store.intent_snapshot("a1", Some(2)).await.unwrap().1.is_empty());
    assert_eq!(store.intent_snapshot("a1", Some(1)).await.unwrap().1.len(), 1);
    assert_eq!(store.intent_head("a2").await.unwrap().generation, 1);
    // A removal is a tombstone until acknowledged: full snapshots leave it out, deltas carry it.
    store.reconcile_intent("dep-i", now, |_, _, _| vec![change("a2", 0, true)]).await.unwrap();
    assert!(store.intent_snapshot("a2", None).await.unwrap().1.is_empty());
    assert_eq!(brief(&store.intent_snapshot("a2", Some(1)).await.unwrap().1), [("a2".into(), 0, 2, true)]);
    assert_eq!(store.deployments_changed_on_agent("a2", 1, 2).await.unwrap(), ["dep-i"]);
    assert!(store.deployments_changed_on_agent("a2", 2, 9).await.unwrap().is_empty());
    store.record_ack("a2", 2, None).await.unwrap();
    let (head, rows) = store.intent_snapshot("a2", Some(1)).await.unwrap();
    assert!(rows.is_empty() && head.floor == 2, "tombstone gone, a delta from 1 is no longer possible");
    // Equal is not ahead; an agent ahead of the store lifts the generation past it.
    assert_eq!(store.lift_generation("a1", 2, now).await.unwrap(), None);
    let lifted = store.lift_generation("a1", 7, now).await.unwrap().unwrap();
    assert_eq!((lifted.generation, store.intent_head("a1").await.unwrap().generation), (8, 8));
    assert_eq!(store.lift_generation("fresh", 3, now).await.unwrap().map(|h| h.generation), Some(4));
    assert_eq!(store.deployments_on_agent("a1").await.unwrap(), ["dep-i"]);
    let placed = store.placed_rows_of("dep-i").await.unwrap();
    assert_eq!(placed.len(), 1, "a2's acknowledged tombstone is gone");
    assert!(placed.iter().all(|p| p.agent_session.is_none() && !p.agent_revoked));
}

fn up(index: u32) -> ReplicaStatus {
    ReplicaStatus {
        index,
        phase: Phase::Running,
        pid: Some(10),
        port: Some(20_000),
        ready: true,
        restarts: 0,
        reason: None,
        since_ms: 0,
    }
}

async fn observed_rows_change_only_what_changed(store: &Store) {
    enrolled(store, "a1").await;
    let now = now_ms();
    let w = |id: &str, n: u32| (format!("{id}@1"), id.to_string(), (0..n).map(up).collect::<Vec<_>>());
    store.record_observed("a1", 3, &[w("dep-o", 2), w("dep-p", 1)], &[], now).await.unwrap();
    let o = store.observed_of("dep-o").await.unwrap();
    assert_eq!((o.len(), o[0].agent_observed_generation, o[0].replicas.len()), (1, 3, 2));
    assert_eq!(store.observed_of_agent("a1").await.unwrap().len(), 2);
    // The next report: dep-p gone, generation moved on, dep-o untouched but still current.
    store.record_observed("a1", 4, &[], &["dep-p@1".to_string()], now).await.unwrap();
    assert!(store.observed_of("dep-p").await.unwrap().is_empty());
    let o = store.observed_of("dep-o").await.unwrap();
    assert_eq!((o[0].agent_observed_generation, o[0].replicas.len()), (4, 2));
    // In one batch the last report about a workload wins, whether it changed or removed it.
    let report = |generation, changed: Vec<(String, String, Vec<ReplicaStatus>)>, gone: Vec<String>| ObservedReport {
        agent_id: "a1".into(),
        generation,
        changed,
        gone,
    };
    let stopping = report(5, vec![w("dep-o", 1)], vec![]);
    let removed = report(6, vec![], vec!["dep-o@1".into()]);
    store.record_observed_batch(&[stopping.clone(), removed.clone()], now).await.unwrap();
    assert!(store.observed_of("dep-o").await.unwrap().is_empty(), "a later removal is not undone");
    store.record_observed_batch(&[removed, report(7, vec![w("dep-o", 3)], vec![])], now).await.unwrap();
    let o = store.observed_of("dep-o").await.unwrap();
    assert_eq!((o[0].agent_observed_generation, o[0].replicas.len()), (7, 3), "a later change is kept");
}

async fn status_summaries_filter_the_listing(store: &Store) {
    for i in 0..5 {
        store.insert_test_deployment(&format!("dep-s{i}")).await.unwrap();
    }
    let summary = |status: &str| StatusSummary {
        status: status.into(),
        desired: 2,
        current: 2,
        ready: 2,
        reasons: vec!["why".into()],
        running_since: Some(5),
    };
    assert!(store.put_status_summary("dep-s0", &summary("running"), 1).await.unwrap());
    assert!(!store.put_status_summary("dep-s0", &summary("running"), 2).await.unwrap(), "unchanged: no write");
    store.put_status_summary("dep-s1", &summary("failed"), 1).await.unwrap();
    store.put_status_summary("dep-s2", &summary("running"), 1).await.unwrap();
    assert_eq!(store.status_summary("dep-s0").await.unwrap(), Some(summary("running")));
    let f = |status: Option<&'static str>, page, page_size| DeploymentFilter {
        status,
        page,
        page_size,
        ..Default::default()
    };
    let ids = |rows: Vec<(ferry_control_plane::store::DeploymentRecord, Option<StatusSummary>)>| {
        rows.into_iter().map(|(d, _)| d.id).collect::<Vec<_>>()
    };
    let (rows, total) = store.list_deployments(f(Some("running"), 1, 10)).await.unwrap();
    assert_eq!((ids(rows), total), (vec!["dep-s0".to_string(), "dep-s2".to_string()], 2));
    let (rows, total) = store.list_deployments(f(Some("deploying"), 1, 10)).await.unwrap();
    assert_eq!((rows.len(), total), (2, 2), "no summary yet counts as deploying");
    let (rows, total) = store.list_deployments(f(None, 2, 2)).await.unwrap();
    assert_eq!((ids(rows), total), (vec!["dep-s2".to_string(), "dep-s3".to_string()], 5));
    let (rows, _) = store.list_deployments(f(None, 1, 1)).await.unwrap();
    assert_eq!(rows[0].1.as_ref().map(|s| s.reasons.clone()), Some(vec!["why".to_string()]));
    let by = |environment, name, status| DeploymentFilter {
        environment,
        name,
        status,
        page: 1,
        page_size: 10,
        ..Default::default()
    };
    assert_eq!(store.list_deployments(by(Some("development"), None, None)).await.unwrap().1, 5);
    assert_eq!(store.list_deployments(by(Some("nope"), None, None)).await.unwrap().1, 0);
    let (rows, total) = store.list_deployments(by(Some("development"), Some("dep-s3"), None)).await.unwrap();
    assert_eq!((ids(rows), total), (vec!["dep-s3".to_string()], 1));
    let (rows, total) = store.list_deployments(by(Some("development"), Some("dep-s1"), Some("failed"))).await.unwrap();
    assert_eq!((ids(rows), total), (vec!["dep-s1".to_string()], 1));
    assert_eq!(store.list_deployments(by(None, Some("dep-s1"), Some("running"))).await.unwrap().1, 0);
}

async fn liveness_is_flushed_in_batches(store: &Store) {
    for a in ["l1", "l2", "l3"] {
        enrolled(store, a).await;
        store.start_session(a, &format!("s-{a}"), "n", "v", &BTreeMap::new(), &[], 1).await.unwrap().unwrap();
    }
    store.revoke_agent("l3", &audit("agent.revoke", "l3"), now_ms()).await.unwrap();
    let pairs: Vec<(String, String)> =
        [("l1", "s-l1"), ("l2", "s-old"), ("l3", "s-l3"), ("ghost", "s-x")].map(|(a, s)| (a.into(), s.into())).into();
    let found = store.flush_liveness(&pairs, 1_000).await.unwrap();
    let got: Vec<(String, Ownership)> = found.into_iter().map(|(a, o, _)| (a, o)).collect();
    assert_eq!(
        got,
        [
            ("l1".to_string(), Ownership::Owned),
            ("l2".to_string(), Ownership::Superseded),
            ("l3".to_string(), Ownership::Revoked),
            ("ghost".to_string(), Ownership::Unknown),
        ]
    );
    assert_eq!(store.get_agent("l1").await.unwrap().unwrap().last_heartbeat, Some(1_000));
    assert_eq!(store.get_agent("l2").await.unwrap().unwrap().last_heartbeat, Some(1), "not refreshed");
}

async fn users_sessions_and_keys(store: &Store) {
    use ferry_control_plane::authz::{Role, RoleBinding};
    let now = now_ms();
    let user = UserRecord {
        id: "user-1".into(),
        username: "alice".into(),
        password_hash: "$argon2id$x".into(),
        roles: vec![
            RoleBinding::global(Role::Developer),
            RoleBinding { role: Role::Viewer, workspace: Some("w".into()) },
        ],
        created_by: "admin:a".into(),
        created_at: now,
        updated_at: now,
    };
    assert!(store.create_user(&user, &audit("user.create", "user-1")).await.unwrap());
    let twin = UserRecord { id: "user-2".into(), ..user.clone() };
    assert!(!store.create_user(&twin, &audit("user.create", "user-2")).await.unwrap(), "usernames are unique");
    assert_eq!(store.get_user("alice").await.unwrap().unwrap(), user);
    assert_eq!(store.get_user("user-1").await.unwrap().unwrap(), user);

    store.create_session("user-1", "sess-hash", now + 60_000, &audit("auth.login", "user-1"), now).await.unwrap();
    store.create_session("user-1", "old-hash", now - 1, &audit("auth.login", "user-1"), now - 10).await.unwrap();
    assert!(matches!(store.session_user("sess-hash", now).await.unwrap(), Credential::Valid(u) if u.id == "user-1"));
    assert_eq!(store.session_user("old-hash", now).await.unwrap(), Credential::Expired);
    assert_eq!(store.session_user("nope", now).await.unwrap(), Credential::Unknown);

    let key = ApiKeyRecord {
        id: "key-1".into(),
        name: "ci".into(),
        key_hash: "key-hash".into(),
        roles: vec![RoleBinding::global(Role::Developer)],
        owner: "user:alice".into(),
        created_at: now,
        expires_at: Some(now + 60_000),
        revoked_at: None,
    };
    store.create_api_key(&key, &audit("apikey.create", "key-1")).await.unwrap();
    assert_eq!(store.api_key_by_hash("key-hash", now).await.unwrap(), Credential::Valid(key.clone()));
    assert_eq!(store.api_key_by_hash("key-hash", now + 60_000).await.unwrap(), Credential::Expired);
    assert_eq!(store.list_api_keys(Some("user:alice"), 0, 10).await.unwrap().1, 1);
    assert_eq!(store.list_api_keys(Some("user:bob"), 0, 10).await.unwrap().1, 0);
    assert_eq!(store.list_api_keys(None, 0, 10).await.unwrap().1, 1);

    // A new password ends sessions; deleting the user revokes the keys it created.
    let updated = store.update_user("user-1", Some("$argon2id$y"), None, &audit("user.update", "user-1"), now).await;
    assert_eq!(updated.unwrap().unwrap().password_hash, "$argon2id$y");
    assert_eq!(store.session_user("sess-hash", now).await.unwrap(), Credential::Unknown);
    assert!(store.delete_user("user-1", "user:alice", &audit("user.delete", "user-1"), now).await.unwrap());
    assert_eq!(store.api_key_by_hash("key-hash", now).await.unwrap(), Credential::Revoked);
    assert!(!store.revoke_api_key("key-1", &audit("apikey.revoke", "key-1"), now).await.unwrap());
    assert!(store.get_user("alice").await.unwrap().is_none());
    // (Recorded with equal timestamps here, so compared as a set.)
    let mut actions: Vec<String> = store.audit_for("user-1").await.unwrap().into_iter().map(|a| a.0).collect();
    actions.sort();
    assert_eq!(actions, ["auth.login", "auth.login", "user.create", "user.delete", "user.update"]);
}

async fn environment_locks_are_exclusive(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    let prod = store.get_environment("production").await.unwrap().unwrap();
    assert!(prod.approval_required, "the seed's restrictions apply to production");
    assert_eq!(prod.required_roles.len(), 2);
    let lock = EnvironmentLock { by: "user:alice".into(), reason: "incident 42".into(), at: now_ms() };
    let before =
        store.set_environment_lock(&prod.id, Some(&lock), &audit("environment.lock", &prod.id), now_ms()).await;
    assert!(before.unwrap().unwrap().lock.is_none());
    assert_eq!(store.get_environment("production").await.unwrap().unwrap().lock, Some(lock.clone()));
    // A second lock writes nothing and shows the holder.
    let other = EnvironmentLock { by: "user:bob".into(), ..lock.clone() };
    let before =
        store.set_environment_lock(&prod.id, Some(&other), &audit("environment.lock", &prod.id), now_ms()).await;
    assert_eq!(before.unwrap().unwrap().lock, Some(lock.clone()));
    assert_eq!(store.get_environment("production").await.unwrap().unwrap().lock, Some(lock));
    store.set_environment_lock(&prod.id, None, &audit("environment.unlock", &prod.id), now_ms()).await.unwrap();
    assert!(store.get_environment("production").await.unwrap().unwrap().lock.is_none());
    assert!(store.set_environment_lock("env-nope", None, &audit("x", "y"), now_ms()).await.unwrap().is_none());
    assert_eq!(store.audit_for(&prod.id).await.unwrap().len(), 2, "the refused second lock wrote no record");
}

// ---- pending changes ----------------------------------------------------------------------

use ferry_control_plane::authz::{Role, RoleBinding};
use ferry_control_plane::domain::ApprovalStatus;
use ferry_control_plane::store::{
    ApprovalFilter, ApprovalGrant, ApprovalRecord, ApprovalVisibility, Claim, StoreError, Transition, Write,
};

fn deployment_record(id: &str, environment: &str) -> DeploymentRecord {
    let now = now_ms();
    DeploymentRecord {
        id: id.into(),
        name: id.into(),
        environment: environment.into(),
        active_version: "v1".into(),
        spec: r#"{"replicas":1,"command":"true"}"#.into(),
        target: r#"{"selector":{}}"#.into(),
        desired_state: DesiredState::Running,
        restart_nonce: 0,
        revision: 1,
        resource_version: 1,
        created_at: now,
        updated_at: now,
        last_deployed_at: now,
        workspace: "default".into(),
        project_id: None,
        ai_zone_id: None,
    }
}

fn op_record(
    id: &str,
    kind: OperationKind,
    deployment: &str,
    status: OperationStatus,
    approval: Option<&str>,
) -> OperationRecord {
    let now = now_ms();
    OperationRecord {
        id: id.into(),
        kind,
        deployment_id: deployment.into(),
        status,
        message: String::new(),
        request_id: "req-1".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        approval_id: approval.map(str::to_string),
        started_at: None,
        callback: None,
    }
}

fn approval_record(
    id: &str,
    deployment: &str,
    action: OperationKind,
    status: ApprovalStatus,
    expires_at: i64,
) -> ApprovalRecord {
    let now = now_ms();
    ApprovalRecord {
        id: id.into(),
        environment: "production".into(),
        workspace: "default".into(),
        deployment_id: deployment.into(),
        deployment_name: deployment.into(),
        action,
        permission: "deployment:scale".into(),
        request: r#"{"action":"change","change":{"scale":3}}"#.into(),
        requester: "user:rm1".into(),
        requester_id: "user-1".into(),
        requester_identity: "user:rm1".into(),
        requester_roles: vec![RoleBinding::global(Role::ReleaseManager)],
        request_id: "req-1".into(),
        operation_id: format!("op-{id}"),
        status,
        approval_required: true,
        wait_for_window: false,
        message: "awaiting approval".into(),
        decided_by: None,
        decision_comment: None,
        decided_at: None,
        created_at: now,
        updated_at: now,
        expires_at,
    }
}

/// Stores a pending change with its waiting operation.
async fn pending(
    store: &Store,
    id: &str,
    deployment: &str,
    action: OperationKind,
    status: ApprovalStatus,
    expires_at: i64,
) -> ApprovalRecord {
    let a = approval_record(id, deployment, action, status, expires_at);
    let op_status = if status == ApprovalStatus::Pending {
        OperationStatus::AwaitingApproval
    } else {
        OperationStatus::AwaitingWindow
    };
    let op = op_record(&a.operation_id, action, deployment, op_status, Some(id));
    store.create_approval(&a, &op, &audit("approval.request", id)).await.unwrap();
    a
}

fn claim(approval: &str, by: &str) -> Claim {
    Claim {
        approval_id: approval.into(),
        from: ApprovalStatus::Pending,
        decision: Some((by.into(), Some("ok".into()))),
        audit: Some(audit("approval.approve", approval)),
        now: now_ms(),
    }
}

async fn a_pending_change_is_applied_exactly_once(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    store.seed_default_workspace(now_ms()).await.unwrap();
    let d = deployment_record("dep-p1", "production");
    let first = op_record("op-first", OperationKind::Create, "dep-p1", OperationStatus::InProgress, None);
    assert_eq!(store.create_deployment(&d, &first, &audit("deployment.create", "dep-p1"), None).await.unwrap(), Ok(()));
    let a = pending(store, "apr-1", "dep-p1", OperationKind::Scale, ApprovalStatus::Pending, now_ms() + 60_000).await;
    let waiting = store.get_operation(&a.operation_id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.approval_id.as_deref(), waiting.started_at),
        (OperationStatus::AwaitingApproval, Some("apr-1"), None)
    );

    // Eight approvers at once: exactly one change is written.
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, op) = (store.clone(), waiting.clone());
        tasks.push(tokio::spawn(async move {
            let c = claim("apr-1", &format!("user:approver{i}"));
            store
                .modify_deployment("dep-p1", None, Some(&c), |current| {
                    let mut next = current.clone();
                    next.spec = r#"{"replicas":3,"command":"true"}"#.into();
                    let now = now_ms();
                    let op = OperationRecord {
                        status: OperationStatus::InProgress,
                        started_at: Some(now),
                        updated_at: now,
                        ..op
                    };
                    Ok::<_, std::convert::Infallible>((next, op, audit("deployment.scale", "dep-p1")))
                })
                .await
        }));
    }
    let (mut applied, mut lost) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ok(Write::Done(_))) => applied += 1,
            Err(StoreError::NotPending(id)) => {
                assert_eq!(id, "apr-1");
                lost += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((applied, lost), (1, 7));
    assert_eq!(store.get_deployment("dep-p1").await.unwrap().unwrap().resource_version, 2, "applied once");
    let a = store.get_approval("apr-1").await.unwrap().unwrap();
    assert_eq!(a.status, ApprovalStatus::Applied);
    assert!(a.decided_by.as_deref().is_some_and(|b| b.starts_with("user:approver")) && a.decided_at.is_some());
    // The waiting operation went on under its id; the deployment's earlier one was superseded.
    let op = store.get_operation(&a.operation_id).await.unwrap().unwrap();
    assert_eq!((op.status, op.created_at), (OperationStatus::InProgress, waiting.created_at));
    assert!(op.started_at.is_some());
    assert_eq!(store.get_operation("op-first").await.unwrap().unwrap().status, OperationStatus::Failed);
    // Nothing else can happen to it any more.
    let t = Transition {
        id: "apr-1",
        from: ApprovalStatus::Pending,
        to: ApprovalStatus::Rejected,
        message: "no",
        decision: Some(("user:x", Some("no"))),
        operation: (OperationStatus::Failed, "no"),
        audit: None,
        now: now_ms(),
    };
    assert!(!store.transition_approval(&t).await.unwrap());
    assert_eq!(store.get_operation(&a.operation_id).await.unwrap().unwrap().status, OperationStatus::InProgress);
    // The losers wrote nothing: one approval record, one change record.
    let actions: Vec<String> = store.audit_for("apr-1").await.unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(actions, ["approval.request", "approval.approve"]);
    let changes = store.audit_for("dep-p1").await.unwrap().into_iter().filter(|r| r.0 == "deployment.scale").count();
    assert_eq!(changes, 1);
}

async fn a_pending_create_is_applied_exactly_once(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    store.seed_default_workspace(now_ms()).await.unwrap();
    let a = pending(store, "apr-c", "dep-new", OperationKind::Create, ApprovalStatus::Pending, now_ms() + 60_000).await;
    let waiting = store.get_operation(&a.operation_id).await.unwrap().unwrap();
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (store, op) = (store.clone(), waiting.clone());
        tasks.push(tokio::spawn(async move {
            let d = deployment_record("dep-new", "production");
            let op = OperationRecord { status: OperationStatus::InProgress, started_at: Some(now_ms()), ..op };
            let c = claim("apr-c", &format!("user:approver{i}"));
            store.create_deployment(&d, &op, &audit("deployment.create", "dep-new"), Some(&c)).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| matches!(r, Ok(Ok(())))).count(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|r| matches!(r, Err(StoreError::NotPending(_)))).count(), 3, "{results:?}");
    assert_eq!(store.get_approval("apr-c").await.unwrap().unwrap().status, ApprovalStatus::Applied);
    assert_eq!(store.get_operation(&a.operation_id).await.unwrap().unwrap().status, OperationStatus::InProgress);
    // A failed write (here: the name is taken) leaves the pending change open.
    let b =
        pending(&store, "apr-d", "dep-other", OperationKind::Create, ApprovalStatus::Pending, now_ms() + 60_000).await;
    let mut taken = deployment_record("dep-other", "production");
    taken.name = "dep-new".into();
    let op = store.get_operation(&b.operation_id).await.unwrap().unwrap();
    let written = store
        .create_deployment(&taken, &op, &audit("deployment.create", "dep-other"), Some(&claim("apr-d", "user:a")))
        .await;
    assert_eq!(written.unwrap(), Err(CreateRefusal::NameTaken));
    assert_eq!(store.get_approval("apr-d").await.unwrap().unwrap().status, ApprovalStatus::Pending, "rolled back");
}

async fn expiry_and_schedule_queries_and_transitions(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    pending(store, "apr-old", "d1", OperationKind::Scale, ApprovalStatus::Pending, now - 1).await;
    pending(store, "apr-late", "d2", OperationKind::Scale, ApprovalStatus::Scheduled, now - 1).await;
    pending(store, "apr-young", "d3", OperationKind::Scale, ApprovalStatus::Pending, now + 60_000).await;
    pending(store, "apr-sched", "d4", OperationKind::Scale, ApprovalStatus::Scheduled, now + 60_000).await;
    let ids = |v: Vec<ApprovalRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let mut due = ids(store.expired_approvals(now, 10).await.unwrap());
    due.sort();
    assert_eq!(due, ["apr-late", "apr-old"]);
    assert_eq!(store.expired_approvals(now, 1).await.unwrap().len(), 1, "bounded batches");
    let mut scheduled = ids(store.scheduled_approvals(10).await.unwrap());
    scheduled.sort();
    assert_eq!(scheduled, ["apr-late", "apr-sched"]);

    let expire = |id: &'static str, from| Transition {
        id,
        from,
        to: ApprovalStatus::Expired,
        message: "expired",
        decision: None,
        operation: (OperationStatus::Failed, "expired while waiting"),
        audit: None,
        now: now_ms(),
    };
    assert!(store.transition_approval(&expire("apr-old", ApprovalStatus::Pending)).await.unwrap());
    assert!(!store.transition_approval(&expire("apr-old", ApprovalStatus::Pending)).await.unwrap(), "once");
    assert!(!store.transition_approval(&expire("apr-late", ApprovalStatus::Pending)).await.unwrap(), "wrong from");
    assert!(store.transition_approval(&expire("apr-late", ApprovalStatus::Scheduled)).await.unwrap());
    assert_eq!(ids(store.expired_approvals(now, 10).await.unwrap()), Vec::<String>::new());
    let op = store.get_operation("op-apr-old").await.unwrap().unwrap();
    assert_eq!((op.status, op.message.as_str()), (OperationStatus::Failed, "expired while waiting"));
    assert!(op.finished_at.is_some());
    // Approved but waiting for the window: the decision is kept, the operation waits on.
    let schedule = Transition {
        id: "apr-young",
        from: ApprovalStatus::Pending,
        to: ApprovalStatus::Scheduled,
        message: "approved; waits",
        decision: Some(("user:admin2", None)),
        operation: (OperationStatus::AwaitingWindow, "approved; waits"),
        audit: Some(&audit("approval.approve", "apr-young")),
        now: now_ms(),
    };
    assert!(store.transition_approval(&schedule).await.unwrap());
    let a = store.get_approval("apr-young").await.unwrap().unwrap();
    assert_eq!((a.status, a.decided_by.as_deref()), (ApprovalStatus::Scheduled, Some("user:admin2")));
    let op = store.get_operation("op-apr-young").await.unwrap().unwrap();
    assert_eq!((op.status, op.finished_at), (OperationStatus::AwaitingWindow, None));
    // Applying a scheduled change keeps its decision.
    let c = Claim {
        approval_id: "apr-young".into(),
        from: ApprovalStatus::Scheduled,
        decision: None,
        audit: None,
        now: now_ms(),
    };
    let d = deployment_record("d3", "production");
    let op = OperationRecord { status: OperationStatus::InProgress, ..op };
    assert_eq!(store.create_deployment(&d, &op, &audit("deployment.create", "d3"), Some(&c)).await.unwrap(), Ok(()));
    let a = store.get_approval("apr-young").await.unwrap().unwrap();
    assert_eq!((a.status, a.decided_by.as_deref()), (ApprovalStatus::Applied, Some("user:admin2")));
}

async fn approvals_are_listed_by_visibility(store: &Store) {
    let far = now_ms() + 60_000;
    let mut a = approval_record("apr-a", "d1", OperationKind::Scale, ApprovalStatus::Pending, far);
    a.environment = "staging".into();
    let op = op_record(&a.operation_id, a.action, "d1", OperationStatus::AwaitingWindow, Some("apr-a"));
    store.create_approval(&a, &op, &audit("approval.request", "apr-a")).await.unwrap();
    let mut b = approval_record("apr-b", "d2", OperationKind::Delete, ApprovalStatus::Pending, far);
    b.permission = "deployment:delete".into();
    b.requester_identity = "user:other".into();
    let op = op_record(&b.operation_id, b.action, "d2", OperationStatus::AwaitingApproval, Some("apr-b"));
    store.create_approval(&b, &op, &audit("approval.request", "apr-b")).await.unwrap();
    pending(store, "apr-c", "d3", OperationKind::Scale, ApprovalStatus::Applied, far).await;

    let list = |status, visible| async move {
        let (rows, total) =
            store.list_approvals(ApprovalFilter { status, visible, page: 1, page_size: 10 }).await.unwrap();
        (rows.into_iter().map(|a| a.id).collect::<Vec<_>>(), total)
    };
    assert_eq!(list(Some(ApprovalStatus::Pending), None).await, (vec!["apr-a".into(), "apr-b".into()], 2));
    assert_eq!(list(None, None).await.1, 3);
    // Own requests, and grants: (workspace or any, environment, permission or any).
    let mine = ApprovalVisibility { identity: "user:rm1".into(), ..Default::default() };
    assert_eq!(list(Some(ApprovalStatus::Pending), Some(&mine)).await, (vec!["apr-a".into()], 1));
    let grant = |workspace: Option<&str>, permission: Option<&str>| ApprovalVisibility {
        identity: "user:nobody".into(),
        grants: vec![ApprovalGrant {
            workspace: workspace.map(str::to_string),
            environment: "production".into(),
            permission: permission.map(str::to_string),
        }],
    };
    let (env, delete, create) =
        (grant(None, None), grant(None, Some("deployment:delete")), grant(None, Some("deployment:create")));
    assert_eq!(list(None, Some(&env)).await.1, 2);
    assert_eq!(list(Some(ApprovalStatus::Pending), Some(&delete)).await, (vec!["apr-b".into()], 1));
    assert_eq!(list(Some(ApprovalStatus::Pending), Some(&create)).await.1, 0);
    let (ours, theirs) = (grant(Some("default"), None), grant(Some("team-b"), None));
    assert_eq!(list(None, Some(&ours)).await.1, 2);
    assert_eq!(list(None, Some(&theirs)).await.1, 0, "another workspace's changes are not listed");
    let (rows, total) =
        store.list_approvals(ApprovalFilter { status: None, visible: None, page: 2, page_size: 2 }).await.unwrap();
    assert_eq!((rows.len(), total), (1, 3));
}

async fn environment_policy_updates_are_audited(store: &Store) {
    use ferry_control_plane::change_windows::ChangeWindowsDoc;
    store.seed_environments(now_ms()).await.unwrap();
    let staging = store.get_environment("staging").await.unwrap().unwrap();
    assert!(staging.change_windows.is_none() && !staging.approval_required);
    let roles = [Role::ReleaseManager];
    let after = store
        .update_environment_policy(
            &staging.id,
            Some((&roles, true)),
            None,
            |before| {
                assert_eq!(before.required_roles, [Role::DevopsEngineer, Role::ReleaseManager]);
                audit("environment.restrictions", &before.id)
            },
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((after.required_roles.as_slice(), after.approval_required), (&roles[..], true));
    let doc: ChangeWindowsDoc = serde_json::from_str(
        r#"{"timezone":"Europe/Paris","windows":[{"days":["mon"],"start":"09:00","end":"17:00"}]}"#,
    )
    .unwrap();
    let after = store
        .update_environment_policy(
            &staging.id,
            None,
            Some(Some(&doc)),
            |e| audit("environment.change_windows", &e.id),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.change_windows.as_ref().map(|w| w.doc()), Some(&doc));
    assert!(after.approval_required, "untouched");
    let read = store.get_environment("staging").await.unwrap().unwrap();
    assert_eq!(read, after);
    let cleared = store
        .update_environment_policy(
            &staging.id,
            None,
            Some(None),
            |e| audit("environment.change_windows", &e.id),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(cleared.change_windows.is_none());
    assert!(
        store
            .update_environment_policy("env-nope", None, None, |e| audit("x", &e.id), now_ms())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.audit_for(&staging.id).await.unwrap().len(), 3);
}

fn all_audit(page: i64, page_size: i64) -> AuditFilter<'static> {
    AuditFilter {
        actor: None,
        action: None,
        target: None,
        object_type: None,
        outcome: None,
        from_ms: None,
        to_ms: None,
        page: Page::newest_first(page, page_size),
    }
}

async fn audit_records_are_filtered_paged_and_masked(store: &Store) {
    // Three revocations at chosen times (the store writes the time it is given).
    for (i, t) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let id = format!("agent-a{i}");
        enrolled(store, &id).await;
        let a = Audit::new(format!("user:u{i}"), "agent.revoke", &id, format!("req-{i}"), serde_json::json!({}))
            .with_source(Some("10.0.0.9".into()));
        store.revoke_agent(&id, &a, t).await.unwrap().unwrap();
    }
    // A refused request, recorded on its own, with secrets in its documents.
    let denied = Audit::new(
        "user:u2",
        "POST /v1/deployments/{id}/scale",
        "deploy-x",
        "req-d",
        serde_json::json!({ "password": "hunter2", "idempotencyKey": "k-1" }),
    )
    .with_object_type("deployment")
    .with_outcome(AuditOutcome::Denied)
    .with_changes(serde_json::json!({
        "before": { "configuration": { "env": { "TOKEN": "plain" }, "secrets": { "DB": "s3cret" } } },
        "after": null,
    }));
    let id = store.record_audit(&denied).await.unwrap();

    // Newest first: three token creations, three enrollments and the denial (now), then the
    // three revocations (1970).
    let (all, total) = store.list_audit(&all_audit(1, 100)).await.unwrap();
    assert_eq!(total, 10);
    assert!(all.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    assert_eq!(
        all[7..].iter().map(|a| (a.at, a.request_id.as_str())).collect::<Vec<_>>(),
        [(3_000, "req-3"), (2_000, "req-2"), (1_000, "req-1")]
    );
    let d = all.iter().find(|a| a.id == id).unwrap();
    assert_eq!(
        (d.actor.as_str(), d.action.as_str(), d.object_type.as_str(), d.target.as_str(), d.outcome),
        ("user:u2", "POST /v1/deployments/{id}/scale", "deployment", "deploy-x", AuditOutcome::Denied)
    );
    assert_eq!(d.details, serde_json::json!({ "password": MASK, "idempotencyKey": "k-1" }), "masked when stored");
    assert_eq!(
        d.changes,
        Some(serde_json::json!({
            "before": { "configuration": { "env": { "TOKEN": "plain" }, "secrets": { "DB": MASK } } },
            "after": null,
        }))
    );
    let revoke = all.iter().find(|a| a.at == 1_000).unwrap();
    assert_eq!(
        (revoke.object_type.as_str(), revoke.outcome, revoke.source.as_deref(), revoke.changes.as_ref()),
        ("agent", AuditOutcome::Success, Some("10.0.0.9"), None)
    );

    // Filters narrow; each given one applies.
    let count = |f: AuditFilter<'static>| async move { store.list_audit(&f).await.unwrap() };
    let (r, n) = count(AuditFilter { actor: Some("user:u2"), ..all_audit(1, 10) }).await;
    assert_eq!((n, r.iter().map(|a| a.request_id.as_str()).collect::<Vec<_>>()), (2, vec!["req-d", "req-2"]));
    let (_, n) = count(AuditFilter { action: Some("agent.revoke"), ..all_audit(1, 10) }).await;
    assert_eq!(n, 3);
    let (_, n) = count(AuditFilter { action: Some("agent.enroll"), ..all_audit(1, 10) }).await;
    assert_eq!(n, 3);
    let (r, n) = count(AuditFilter { target: Some("agent-a3"), ..all_audit(1, 10) }).await;
    assert_eq!((n, r[0].action.as_str(), r[1].action.as_str()), (2, "agent.enroll", "agent.revoke"));
    let (_, n) = count(AuditFilter { object_type: Some("deployment"), ..all_audit(1, 10) }).await;
    assert_eq!(n, 1);
    let (_, n) = count(AuditFilter { outcome: Some(AuditOutcome::Denied), ..all_audit(1, 10) }).await;
    assert_eq!(n, 1);
    let (_, n) = count(AuditFilter { outcome: Some(AuditOutcome::Failed), ..all_audit(1, 10) }).await;
    assert_eq!(n, 0);
    let (r, n) = count(AuditFilter { from_ms: Some(1_500), to_ms: Some(3_000), ..all_audit(1, 10) }).await;
    assert_eq!((n, r.iter().map(|a| a.at).collect::<Vec<_>>()), (2, vec![3_000, 2_000]), "inclusive range");
    let (_, n) = count(AuditFilter { to_ms: Some(2_000), actor: Some("user:u2"), ..all_audit(1, 10) }).await;
    assert_eq!(n, 1, "filters combine");

    // Pages, both orders.
    let (p, n) = count(AuditFilter { action: Some("agent.revoke"), ..all_audit(2, 2) }).await;
    assert_eq!((n, p.iter().map(|a| a.at).collect::<Vec<_>>()), (3, vec![1_000]));
    let oldest = Page { page: 1, page_size: 2, oldest_first: true };
    let (p, _) = count(AuditFilter { action: Some("agent.revoke"), page: oldest, ..all_audit(1, 1) }).await;
    assert_eq!(p.iter().map(|a| a.at).collect::<Vec<_>>(), [1_000, 2_000]);
    let (p, n) = count(all_audit(100, 10)).await;
    assert_eq!((p.len(), n), (0, 10), "past the end");
}

async fn audit_records_cannot_be_changed_or_deleted(store: &Store) {
    enrolled(store, "agent-i").await;
    store.revoke_agent("agent-i", &audit("agent.revoke", "agent-i"), now_ms()).await.unwrap();
    let before = store.list_audit(&all_audit(1, 10)).await.unwrap();
    assert_eq!(before.1, 3, "token creation, enrollment, revocation");
    for sql in [
        "UPDATE audit_log SET actor = 'someone else'",
        "UPDATE audit_log SET details = '{}' WHERE action = 'agent.revoke'",
        "DELETE FROM audit_log WHERE action = 'agent.revoke'",
        "DELETE FROM audit_log",
    ] {
        let e = store.execute_raw(sql).await.expect_err(sql);
        assert!(e.to_string().contains("audit records are immutable"), "{sql}: {e}");
    }
    if store.backend() == ferry_control_plane::store::Backend::Postgres {
        let e = store.execute_raw("TRUNCATE audit_log").await.expect_err("TRUNCATE");
        assert!(e.to_string().contains("audit records are immutable"), "{e}");
    }
    assert_eq!(store.list_audit(&all_audit(1, 10)).await.unwrap(), before, "nothing changed");
    // Inserting still works, and so does every other table.
    store.record_audit(&audit("agent.revoke", "agent-i")).await.unwrap();
    assert_eq!(store.list_audit(&all_audit(1, 10)).await.unwrap().1, 4);
    assert_eq!(store.execute_raw("UPDATE agents SET name = 'renamed' WHERE id = 'agent-i'").await.unwrap(), 1);
}

fn summary(status: &str, ready: u32) -> StatusSummary {
    StatusSummary {
        status: status.into(),
        desired: 2,
        current: 2,
        ready,
        reasons: if status == "running" { vec![] } else { vec![format!("{status} because")] },
        running_since: None,
    }
}

async fn status_events_are_appended_on_transitions_only(store: &Store) {
    store.insert_test_deployment("dep-e").await.unwrap();
    store.insert_test_deployment("dep-other").await.unwrap();
    let page = Page::newest_first(1, 50);
    assert_eq!(store.deployment_events("dep-e", page).await.unwrap().1, 0);
    let steps = [
        (summary("deploying", 0), true, true),
        (summary("deploying", 1), true, false), // same status, other counts: the summary changes, no event
        (summary("deploying", 1), false, false), // unchanged: nothing written
        (summary("running", 2), true, true),
        (summary("degraded", 1), true, true),
        (summary("running", 2), true, true),
    ];
    for (i, (s, changed, _)) in steps.iter().enumerate() {
        assert_eq!(store.put_status_summary("dep-e", s, 100 + i as i64).await.unwrap(), *changed, "step {i}");
    }
    store.put_status_summary("dep-other", &summary("failed", 0), 5).await.unwrap();
    let (events, total) = store.deployment_events("dep-e", Page { oldest_first: true, ..page }).await.unwrap();
    assert_eq!(total, steps.iter().filter(|s| s.2).count() as i64);
    let seen: Vec<(i64, i64, Option<&str>, &str)> =
        events.iter().map(|e| (e.seq, e.at, e.from.as_deref(), e.to.as_str())).collect();
    assert_eq!(
        seen,
        [
            (1, 100, None, "deploying"),
            (2, 103, Some("deploying"), "running"),
            (3, 104, Some("running"), "degraded"),
            (4, 105, Some("degraded"), "running"),
        ]
    );
    assert_eq!(events[2].reasons, ["degraded because"]);
    assert_eq!(events[2].message, "1 of 2 replicas ready");
    let (newest, _) = store.deployment_events("dep-e", Page::newest_first(1, 1)).await.unwrap();
    assert_eq!(newest[0].seq, 4, "newest first by default");
    let (other, n) = store.deployment_events("dep-other", page).await.unwrap();
    assert_eq!((n, other[0].to.as_str()), (1, "failed"), "per deployment");
    assert_eq!(store.status_summary("dep-e").await.unwrap(), Some(summary("running", 2)));
}

async fn status_events_are_bounded_per_deployment(store: &Store) {
    store.insert_test_deployment("dep-b").await.unwrap();
    let transitions = EVENTS_KEPT + EVENTS_PRUNE_EVERY + 10;
    for i in 0..transitions {
        let s = if i % 2 == 0 { summary("running", 2) } else { summary("degraded", 1) };
        assert!(store.put_status_summary("dep-b", &s, i).await.unwrap());
    }
    let (events, total) = store.deployment_events("dep-b", Page::newest_first(1, 1)).await.unwrap();
    assert!(
        (EVENTS_KEPT..EVENTS_KEPT + EVENTS_PRUNE_EVERY).contains(&total),
        "{total} events kept after {transitions} transitions"
    );
    assert_eq!(events[0].seq, transitions, "the newest is kept");
    let (oldest, _) =
        store.deployment_events("dep-b", Page { page: 1, page_size: 1, oldest_first: true }).await.unwrap();
    assert_eq!(oldest[0].seq, transitions - total + 1, "the oldest are dropped, with no gap");
}

async fn timelines_merge_audit_records_and_events(store: &Store) {
    store.insert_test_deployment("dep-t").await.unwrap();
    enrolled(store, "agent-t").await;
    // Audit records at 10 and 30 (through revocations, whose time the store is given), events
    // at 10, 20 and 40; at the same millisecond the change comes first.
    let revoke = |req: &'static str| Audit::new("admin:test", "deployment.scale", "dep-t", req, serde_json::json!({}));
    store.put_status_summary("dep-t", &summary("deploying", 0), 10).await.unwrap();
    store.revoke_agent("agent-t", &revoke("req-a"), 10).await.unwrap();
    store.put_status_summary("dep-t", &summary("running", 2), 20).await.unwrap();
    store.revoke_agent("agent-t", &revoke("req-b"), 30).await.unwrap();
    store.put_status_summary("dep-t", &summary("degraded", 1), 40).await.unwrap();
    let show = |items: Vec<TimelineItem>| {
        items
            .into_iter()
            .map(|i| match i {
                TimelineItem::Audit(a) => format!("{}:{}", a.at, a.request_id),
                TimelineItem::Event(e) => format!("{}:{}", e.at, e.to),
            })
            .collect::<Vec<_>>()
    };
    let asc = Page { page: 1, page_size: 10, oldest_first: true };
    let (items, total) = store.deployment_timeline("dep-t", asc).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(show(items), ["10:req-a", "10:deploying", "20:running", "30:req-b", "40:degraded"]);
    let (items, _) = store.deployment_timeline("dep-t", Page::newest_first(1, 2)).await.unwrap();
    assert_eq!(show(items), ["40:degraded", "30:req-b"]);
    let (items, total) = store.deployment_timeline("dep-t", Page::newest_first(2, 2)).await.unwrap();
    assert_eq!((show(items), total), (vec!["20:running".to_string(), "10:deploying".to_string()], 5));
    let (items, total) = store.deployment_timeline("dep-none", asc).await.unwrap();
    assert_eq!((items.len(), total), (0, 0));
}

// ---- workspaces, projects, AI zones ---------------------------------------------------------

fn workspace(name: &str) -> WorkspaceRecord {
    WorkspaceRecord {
        id: format!("ws-{name}"),
        name: name.into(),
        description: format!("{name} team"),
        owner: "admin:test".into(),
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

fn project(id: &str, name: &str, workspace: &str) -> ProjectRecord {
    ProjectRecord {
        id: id.into(),
        name: name.into(),
        workspace: workspace.into(),
        description: String::new(),
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

fn zone(id: &str, name: &str, workspace: Option<&str>) -> AiZoneRecord {
    AiZoneRecord {
        id: id.into(),
        name: name.into(),
        workspace: workspace.map(str::to_string),
        description: String::new(),
        provider: "aws".into(),
        region: "us-east-1".into(),
        labels: BTreeMap::from([("accelerator".into(), "nvidia-a100".into())]),
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

/// A deployment record as the service would build it (created `at`, for a stable order).
fn deployment(id: &str, workspace: &str, environment: &str, at: i64) -> DeploymentRecord {
    DeploymentRecord {
        id: id.into(),
        name: id.into(),
        environment: environment.into(),
        active_version: "v1".into(),
        spec: r#"{"replicas":0,"command":"true"}"#.into(),
        target: r#"{"selector":{}}"#.into(),
        desired_state: DesiredState::Running,
        restart_nonce: 0,
        revision: 1,
        resource_version: 1,
        created_at: at,
        updated_at: at,
        last_deployed_at: at,
        workspace: workspace.into(),
        project_id: None,
        ai_zone_id: None,
    }
}

fn create_op(deployment: &str) -> OperationRecord {
    OperationRecord {
        id: format!("op-{deployment}"),
        kind: OperationKind::Create,
        deployment_id: deployment.into(),
        status: OperationStatus::InProgress,
        message: String::new(),
        request_id: "req-1".into(),
        created_at: now_ms(),
        updated_at: now_ms(),
        finished_at: None,
        approval_id: None,
        started_at: None,
        callback: None,
    }
}

async fn create(store: &Store, d: &DeploymentRecord) -> Result<(), CreateRefusal> {
    store.create_deployment(d, &create_op(&d.id), &audit("deployment.create", &d.id), None).await.unwrap()
}

async fn workspaces_projects_and_zones(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    store.seed_default_workspace(now + 1).await.unwrap();
    let default = store.get_workspace("default").await.unwrap().unwrap();
    assert_eq!((default.id.as_str(), default.created_at), ("ws-default", now), "seeding is idempotent");

    for name in ["team-a", "team-b", "team-c"] {
        assert!(store.create_workspace(&workspace(name), &audit("workspace.create", name)).await.unwrap());
    }
    let twin = WorkspaceRecord { id: "ws-other".into(), ..workspace("team-a") };
    assert!(!store.create_workspace(&twin, &audit("workspace.create", "x")).await.unwrap(), "names are unique");
    assert_eq!(store.get_workspace("ws-team-a").await.unwrap().unwrap().name, "team-a", "by id");
    assert_eq!(store.get_workspace("team-a").await.unwrap().unwrap().id, "ws-team-a", "by name");
    assert!(store.get_workspace("team-z").await.unwrap().is_none());
    let names = |rows: Vec<WorkspaceRecord>| rows.into_iter().map(|w| w.name).collect::<Vec<_>>();
    let (rows, total) = store.list_workspaces(None, 0, 2).await.unwrap();
    assert_eq!((names(rows), total), (vec!["default".to_string(), "team-a".to_string()], 4));
    let visible = ["team-b".to_string(), "team-c".to_string(), "team-gone".to_string()];
    let (rows, total) = store.list_workspaces(Some(&visible), 1, 10).await.unwrap();
    assert_eq!((names(rows), total), (vec!["team-c".to_string()], 2), "filtered and paged in SQL");
    assert_eq!(store.list_workspaces(Some(&[]), 0, 10).await.unwrap().1, 0);
    let update = audit("workspace.update", "ws-team-a");
    let w = store.update_workspace("ws-team-a", Some("A-Team"), None, &update, now + 5).await.unwrap().unwrap();
    assert_eq!((w.description.as_str(), w.owner.as_str(), w.updated_at), ("A-Team", "admin:test", now + 5));
    assert!(store.update_workspace("ws-nope", None, None, &audit("x", "y"), now).await.unwrap().is_none());

    // Projects: unique per workspace, only in existing workspaces.
    let p1 = project("proj-1", "api", "team-a");
    assert_eq!(store.create_project(&p1, &audit("project.create", "proj-1")).await.unwrap(), Ok(()));
    assert_eq!(
        store.create_project(&project("proj-2", "api", "team-b"), &audit("project.create", "p")).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.create_project(&project("proj-3", "api", "team-a"), &audit("project.create", "p")).await.unwrap(),
        Err(true)
    );
    assert_eq!(
        store.create_project(&project("proj-4", "x", "team-z"), &audit("project.create", "p")).await.unwrap(),
        Err(false)
    );
    assert_eq!(store.find_project("team-a", "api").await.unwrap().unwrap().id, "proj-1");
    assert_eq!(store.find_project("team-a", "proj-1").await.unwrap().unwrap().id, "proj-1");
    assert!(store.find_project("team-a", "proj-2").await.unwrap().is_none(), "another workspace's project");
    assert_eq!(store.list_projects(None, None, 0, 10).await.unwrap().1, 2);
    assert_eq!(store.list_projects(Some("team-a"), None, 0, 10).await.unwrap().1, 1);
    let only_b = ["team-b".to_string()];
    let (rows, total) = store.list_projects(None, Some(&only_b), 0, 10).await.unwrap();
    assert_eq!((rows[0].id.as_str(), total), ("proj-2", 1));
    assert_eq!(store.list_projects(Some("team-a"), Some(&only_b), 0, 10).await.unwrap().1, 0);
    assert!(matches!(
        store.update_project("proj-1", Some("web"), Some("the web"), &audit("project.update", "proj-1"), now).await.unwrap(),
        Renamed::Done(p) if p.name == "web" && p.description == "the web" && p.workspace == "team-a"
    ));
    store.create_project(&project("proj-5", "api", "team-a"), &audit("project.create", "p")).await.unwrap().unwrap();
    assert_eq!(
        store.update_project("proj-5", Some("web"), None, &audit("project.update", "proj-5"), now).await.unwrap(),
        Renamed::NameTaken
    );
    assert_eq!(store.update_project("proj-x", None, None, &audit("x", "y"), now).await.unwrap(), Renamed::NotFound);

    // AI zones: shared or dedicated to an existing workspace; names unique.
    assert_eq!(
        store.create_ai_zone(&zone("aiz-1", "gpu-shared", None), &audit("aizone.create", "z")).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.create_ai_zone(&zone("aiz-2", "gpu-a", Some("team-a")), &audit("aizone.create", "z")).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.create_ai_zone(&zone("aiz-3", "gpu-c", Some("team-c")), &audit("aizone.create", "z")).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        store.create_ai_zone(&zone("aiz-4", "gpu-a", None), &audit("aizone.create", "z")).await.unwrap(),
        Err(true)
    );
    assert_eq!(
        store.create_ai_zone(&zone("aiz-5", "gpu-z", Some("team-z")), &audit("aizone.create", "z")).await.unwrap(),
        Err(false)
    );
    let z = store.get_ai_zone("gpu-a").await.unwrap().unwrap();
    assert_eq!(
        z,
        AiZoneRecord { created_at: z.created_at, updated_at: z.updated_at, ..zone("aiz-2", "gpu-a", Some("team-a")) }
    );
    let zone_ids = |rows: Vec<AiZoneRecord>| rows.into_iter().map(|z| z.id).collect::<Vec<_>>();
    assert_eq!(zone_ids(store.list_ai_zones(true, None, 0, 10).await.unwrap().0), ["aiz-2", "aiz-3", "aiz-1"]);
    assert_eq!(zone_ids(store.list_ai_zones(true, Some(&only_b), 0, 10).await.unwrap().0), ["aiz-1"]);
    let only_a = ["team-a".to_string()];
    assert_eq!(zone_ids(store.list_ai_zones(false, Some(&only_a), 0, 10).await.unwrap().0), ["aiz-2"]);
    assert_eq!(store.list_ai_zones(false, Some(&[]), 0, 10).await.unwrap().1, 0);
    let labels = BTreeMap::from([("accelerator".to_string(), "tpu-v5".to_string())]);
    let change = AiZoneChange { region: Some("eu-west-1"), labels: Some(&labels), ..Default::default() };
    let Renamed::Done(z) = store.update_ai_zone("aiz-2", &change, &audit("aizone.update", "aiz-2"), now).await.unwrap()
    else {
        panic!("updated")
    };
    assert_eq!(
        (z.name.as_str(), z.region.as_str(), z.provider.as_str(), &z.labels),
        ("gpu-a", "eu-west-1", "aws", &labels)
    );
    let rename = AiZoneChange { name: Some("gpu-shared"), ..Default::default() };
    assert_eq!(
        store.update_ai_zone("aiz-2", &rename, &audit("aizone.update", "aiz-2"), now).await.unwrap(),
        Renamed::NameTaken
    );
    assert_eq!(store.update_ai_zone("aiz-x", &rename, &audit("x", "y"), now).await.unwrap(), Renamed::NotFound);

    // A workspace with projects or live deployments stays; an empty one goes with its zones.
    assert_eq!(
        store.delete_workspace("ws-team-a", &audit("workspace.delete", "ws-team-a"), now).await.unwrap(),
        WorkspaceDelete::NotEmpty { deployments: 0, projects: 2 }
    );
    let mut d = deployment("dep-w1", "team-a", "development", now);
    d.project_id = Some("proj-1".into());
    create(store, &d).await.unwrap();
    assert_eq!(
        store.delete_project("proj-1", &audit("project.delete", "proj-1"), now).await.unwrap(),
        ProjectDelete::InUse { deployments: 1 }
    );
    assert_eq!(
        store.delete_project("proj-5", &audit("project.delete", "proj-5"), now).await.unwrap(),
        ProjectDelete::Deleted
    );
    assert_eq!(
        store.delete_project("proj-5", &audit("project.delete", "proj-5"), now).await.unwrap(),
        ProjectDelete::NotFound
    );
    store
        .delete_deployment("dep-w1", &create_op("dep-w1-del"), &audit("deployment.delete", "dep-w1"), now, None)
        .await
        .unwrap();
    assert_eq!(
        store.delete_project("proj-1", &audit("project.delete", "proj-1"), now).await.unwrap(),
        ProjectDelete::Deleted
    );
    assert_eq!(
        store.delete_workspace("ws-team-a", &audit("workspace.delete", "ws-team-a"), now).await.unwrap(),
        WorkspaceDelete::Deleted { zones: vec!["aiz-2".into()] },
        "a deleted deployment does not hold its workspace"
    );
    assert!(store.get_workspace("team-a").await.unwrap().is_none());
    assert!(store.get_ai_zone("aiz-2").await.unwrap().is_none(), "its dedicated zone went with it");
    assert!(store.get_ai_zone("aiz-1").await.unwrap().is_some(), "shared zones stay");
    assert_eq!(store.delete_workspace("ws-team-a", &audit("x", "y"), now).await.unwrap(), WorkspaceDelete::NotFound);
    // Every accepted change wrote its audit record; refusals wrote none.
    let mut actions: Vec<String> = store.audit_for("ws-team-a").await.unwrap().into_iter().map(|a| a.0).collect();
    actions.sort();
    assert_eq!(actions, ["workspace.delete", "workspace.update"], "the refused delete wrote no record");
    assert_eq!(store.audit_for("proj-5").await.unwrap().len(), 1, "only the delete that happened");
}

async fn deployments_are_created_only_where_what_they_name_exists(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    for name in ["team-a", "team-b"] {
        store.create_workspace(&workspace(name), &audit("workspace.create", name)).await.unwrap();
    }
    store.create_project(&project("proj-a", "api", "team-a"), &audit("project.create", "p")).await.unwrap().unwrap();
    store.create_ai_zone(&zone("aiz-b", "gpu-b", Some("team-b")), &audit("aizone.create", "z")).await.unwrap().unwrap();
    store.create_ai_zone(&zone("aiz-s", "gpu-s", None), &audit("aizone.create", "z")).await.unwrap().unwrap();

    let mut d = deployment("dep-1", "team-z", "development", now);
    assert_eq!(create(store, &d).await, Err(CreateRefusal::WorkspaceMissing));
    d.workspace = "team-b".into();
    d.project_id = Some("proj-a".into());
    assert_eq!(create(store, &d).await, Err(CreateRefusal::ProjectMissing), "another workspace's project");
    d.workspace = "team-a".into();
    d.ai_zone_id = Some("aiz-b".into());
    assert_eq!(create(store, &d).await, Err(CreateRefusal::ZoneMissing), "a zone dedicated to another workspace");
    d.ai_zone_id = Some("aiz-nope".into());
    assert_eq!(create(store, &d).await, Err(CreateRefusal::ZoneMissing));
    d.ai_zone_id = Some("aiz-s".into());
    assert_eq!(create(store, &d).await, Ok(()));
    let stored = store.get_deployment("dep-1").await.unwrap().unwrap();
    assert_eq!(stored, d);
    // Names are unique per (workspace, environment), not across workspaces.
    let twin = DeploymentRecord { id: "dep-2".into(), ..d.clone() };
    assert_eq!(create(store, &twin).await, Err(CreateRefusal::NameTaken));
    let other = DeploymentRecord { id: "dep-3".into(), workspace: "team-b".into(), project_id: None, ..d.clone() };
    assert_eq!(create(store, &other).await, Ok(()));
    let mut dedicated = deployment("dep-4", "team-b", "development", now);
    dedicated.ai_zone_id = Some("aiz-b".into());
    assert_eq!(create(store, &dedicated).await, Ok(()));
    // Refused creates stored nothing, not even their audit record or operation.
    for id in ["dep-2"] {
        assert!(store.get_deployment_any(id).await.unwrap().is_none());
        assert!(store.get_operation(&format!("op-{id}")).await.unwrap().is_none());
    }
    assert_eq!(store.audit_for("dep-1").await.unwrap().len(), 1);
}

async fn listing_shows_only_the_visible_workspace_environment_pairs(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    for name in ["team-a", "team-b"] {
        store.create_workspace(&workspace(name), &audit("workspace.create", name)).await.unwrap();
    }
    store.create_project(&project("proj-a", "api", "team-a"), &audit("project.create", "p")).await.unwrap().unwrap();
    store.create_ai_zone(&zone("aiz-s", "gpu-s", None), &audit("aizone.create", "z")).await.unwrap().unwrap();
    let rows = [
        ("a-dev-1", "team-a", "development"),
        ("a-dev-2", "team-a", "development"),
        ("a-prod", "team-a", "production"),
        ("b-dev", "team-b", "development"),
        ("b-stage", "team-b", "staging"),
        ("d-dev", "default", "development"),
        ("d-prod", "default", "production"),
    ];
    for (i, (id, ws, env)) in rows.iter().enumerate() {
        let mut d = deployment(id, ws, env, now + i as i64);
        if *id == "a-dev-2" {
            d.project_id = Some("proj-a".into());
            d.ai_zone_id = Some("aiz-s".into());
        }
        create(store, &d).await.unwrap();
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let list = |visible: Option<Visibility>, page: i64, page_size: i64| async move {
        let f = DeploymentFilter { visible: visible.as_ref(), page, page_size, ..Default::default() };
        let (rows, total) = store.list_deployments(f).await.unwrap();
        let count = store.count_deployments_matching(f).await.unwrap();
        assert_eq!(count, total, "count and listing agree");
        (rows.into_iter().map(|(d, _)| d.id).collect::<Vec<_>>(), total)
    };
    assert_eq!(list(None, 1, 100).await.1, 7);
    // Scoped to team-a, reading development and production there.
    let a = Visibility { everywhere: vec![], workspaces: vec![("team-a".into(), s(&["development", "production"]))] };
    assert_eq!(list(Some(a.clone()), 1, 100).await, (s(&["a-dev-1", "a-dev-2", "a-prod"]), 3));
    // Pages are cut in SQL, so the total is the caller's, not the table's.
    assert_eq!(list(Some(a), 2, 2).await, (s(&["a-prod"]), 3));
    // Scoped to team-b, development only: its staging deployment stays out.
    let b = Visibility { everywhere: vec![], workspaces: vec![("team-b".into(), s(&["development"]))] };
    assert_eq!(list(Some(b), 1, 100).await, (s(&["b-dev"]), 1));
    // Unscoped development reader plus team-b production/staging.
    let mixed = Visibility {
        everywhere: s(&["development"]),
        workspaces: vec![("team-b".into(), s(&["staging"])), ("team-a".into(), vec![])],
    };
    assert_eq!(list(Some(mixed), 1, 100).await, (s(&["a-dev-1", "a-dev-2", "b-dev", "b-stage", "d-dev"]), 5));
    assert_eq!(list(Some(Visibility::default()), 1, 100).await, (vec![], 0), "nothing visible");
    // Filters by workspace, project and zone, combined with visibility.
    let by = |workspace, project_id, ai_zone_id| DeploymentFilter {
        workspace,
        project_id,
        ai_zone_id,
        page: 1,
        page_size: 100,
        ..Default::default()
    };
    assert_eq!(store.list_deployments(by(Some("team-a"), None, None)).await.unwrap().1, 3);
    assert_eq!(store.list_deployments(by(Some("default"), None, None)).await.unwrap().1, 2);
    assert_eq!(store.list_deployments(by(None, Some("proj-a"), None)).await.unwrap().1, 1);
    assert_eq!(store.list_deployments(by(None, None, Some("aiz-s"))).await.unwrap().1, 1);
    let b_only = Visibility { everywhere: vec![], workspaces: vec![("team-b".into(), s(&["development"]))] };
    let hidden = DeploymentFilter { visible: Some(&b_only), ..by(None, None, Some("aiz-s")) };
    assert_eq!(store.list_deployments(hidden).await.unwrap().1, 0, "a zone's deployments are filtered too");
}

// ---- secrets ----------------------------------------------------------------------------------

async fn secret_env(store: &Store, name: &str) -> String {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    let env = EnvironmentRecord {
        id: format!("env-{name}"),
        name: name.into(),
        kind: name.into(),
        description: String::new(),
        required_roles: Vec::new(),
        approval_required: false,
        lock: None,
        change_windows: None,
        promotes_to: None,
        variables: BTreeMap::new(),
        limits: Default::default(),
        created_at: now,
        updated_at: now,
    };
    assert!(store.create_environment(&env, &audit("environment.create", &env.id)).await.unwrap());
    env.id
}

async fn secret_deployment(store: &Store, id: &str, environment: &str) -> DeploymentRecord {
    let now = now_ms();
    let d = DeploymentRecord {
        id: id.into(),
        name: id.into(),
        environment: environment.into(),
        active_version: "v1".into(),
        spec: r#"{"replicas":1,"command":"true"}"#.into(),
        target: r#"{"selector":{}}"#.into(),
        desired_state: DesiredState::Running,
        restart_nonce: 0,
        revision: 1,
        resource_version: 1,
        created_at: now,
        updated_at: now,
        last_deployed_at: now,
        workspace: "default".into(),
        project_id: None,
        ai_zone_id: None,
    };
    assert!(store.create_deployment(&d, &secret_op(id), &audit("deployment.create", id), None).await.unwrap().is_ok());
    d
}

fn secret_op(deployment: &str) -> OperationRecord {
    let now = now_ms();
    OperationRecord {
        id: format!("op-{}", random_hex(6)),
        kind: OperationKind::Update,
        deployment_id: deployment.into(),
        status: OperationStatus::InProgress,
        message: String::new(),
        request_id: "req-1".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        approval_id: None,
        started_at: None,
        callback: None,
    }
}

fn secret(scope: SecretScope, scope_id: &str, name: &str, version: i64) -> SecretRecord {
    SecretRecord {
        scope,
        scope_id: scope_id.into(),
        name: name.into(),
        ciphertext: format!("c-{name}-{version}"),
        nonce: "n".into(),
        key_id: "k1".into(),
        version,
        created_at: 1,
        updated_at: 2,
    }
}

fn secret_names(secrets: &[SecretRecord]) -> Vec<(String, i64)> {
    secrets.iter().map(|s| (s.name.clone(), s.version)).collect()
}

/// What a rollout closure saw: (deployment, environment's secrets, its own).
type Seen = Vec<(String, Vec<(String, i64)>, Vec<(String, i64)>)>;

/// What a rollout closure returns.
type Rollout = Result<Option<(DeploymentRecord, OperationRecord)>, String>;

/// A new revision (with an operation) for every deployment the write covers.
fn bump(
    seen: &mut Seen,
) -> impl FnMut(&DeploymentRecord, Option<&EnvironmentRecord>, &[SecretRecord], &[SecretRecord]) -> Rollout + '_ {
    |d, _, env, own| {
        seen.push((d.id.clone(), secret_names(env), secret_names(own)));
        let mut next = d.clone();
        next.revision += 1;
        next.spec = format!(r#"{{"replicas":1,"command":"true","args":["{}"]}}"#, next.revision);
        Ok(Some((next, secret_op(&d.id))))
    }
}

fn write(upserts: Vec<SecretRecord>, deletes: &[&str], target: &str) -> SecretWrite {
    SecretWrite {
        upserts,
        deletes: deletes.iter().map(|d| d.to_string()).collect(),
        audit: Some(audit("deployment.secrets.update", target)),
    }
}

async fn secrets_are_written_with_their_rollouts_in_one_transaction(store: &Store) {
    let env = secret_env(store, "sec").await;
    let other = secret_env(store, "other").await;
    secret_deployment(store, "d1", "sec").await;
    secret_deployment(store, "d2", "sec").await;
    secret_deployment(store, "d3", "other").await;
    let dep = SecretScope::Deployment;
    let envs = SecretScope::Environment;

    // A deployment's secret: stored, and that deployment alone gets a new revision.
    let mut seen = Seen::new();
    let out = store
        .write_secrets(
            dep,
            "d1",
            |current| {
                assert!(current.is_empty());
                Ok(Some(write(vec![secret(dep, "d1", "A", 1)], &[], "d1")))
            },
            bump(&mut seen),
        )
        .await
        .unwrap()
        .unwrap();
    let SecretsWritten::Done { secrets, rolled_out } = out else { panic!("{out:?}") };
    assert_eq!(secret_names(&secrets), [("A".to_string(), 1)]);
    assert_eq!(seen, [("d1".to_string(), vec![], vec![("A".to_string(), 1)])]);
    assert_eq!(rolled_out.len(), 1);
    let (d1, op1) = &rolled_out[0];
    assert_eq!((d1.revision, d1.resource_version), (2, 2));
    let stored = store.get_deployment("d1").await.unwrap().unwrap();
    assert_eq!((stored.revision, stored.resource_version, stored.spec.as_str()), (2, 2, d1.spec.as_str()));
    assert_eq!(store.revision("d1", 2).await.unwrap().map(|(_, spec)| spec), Some(d1.spec.clone()));
    let open: Vec<String> = store.open_operations_of("d1").await.unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(open, [op1.id.as_str()], "the rollout's operation supersedes the older ones");
    let actions: Vec<String> = store.audit_for("d1").await.unwrap().into_iter().map(|(a, _, _)| a).collect();
    assert_eq!(actions.last().map(String::as_str), Some("deployment.secrets.update"));

    // An environment's secret: every live deployment of that environment sees it, over its own.
    let mut seen = Seen::new();
    let out = store
        .write_secrets(envs, &env, |_| Ok(Some(write(vec![secret(envs, &env, "B", 1)], &[], &env))), bump(&mut seen))
        .await
        .unwrap()
        .unwrap();
    let SecretsWritten::Done { rolled_out, .. } = out else { panic!("{out:?}") };
    let b = vec![("B".to_string(), 1)];
    assert_eq!(
        seen,
        [("d1".to_string(), b.clone(), vec![("A".to_string(), 1)]), ("d2".to_string(), b.clone(), vec![])],
        "d3 is in another environment"
    );
    assert_eq!(rolled_out.iter().map(|(d, _)| (d.id.as_str(), d.revision)).collect::<Vec<_>>(), [("d1", 3), ("d2", 2)]);
    assert_eq!(store.get_deployment("d3").await.unwrap().unwrap().revision, 1);

    // What applies to each deployment, for its agents.
    let mut applied: Vec<(String, String, String)> = store
        .secrets_of_deployments(&["d1".into(), "d2".into(), "d3".into(), "nope".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|(d, s)| (d, s.scope.as_str().to_string(), s.name))
        .collect();
    applied.sort();
    let row = |d: &str, scope: &str, n: &str| (d.to_string(), scope.to_string(), n.to_string());
    assert_eq!(applied, [row("d1", "deployment", "A"), row("d1", "environment", "B"), row("d2", "environment", "B")]);
    assert!(store.list_secrets(envs, &other).await.unwrap().is_empty());

    // A refused change, or a refused rollout, writes nothing at all.
    let refused = store
        .write_secrets(dep, "d1", |_| Err::<Option<SecretWrite>, _>("no".to_string()), bump(&mut Seen::new()))
        .await
        .unwrap();
    assert_eq!(refused, Err("no".to_string()));
    let refused = store
        .write_secrets(
            dep,
            "d1",
            |_| Ok(Some(write(vec![secret(dep, "d1", "A", 2), secret(dep, "d1", "C", 1)], &[], "d1"))),
            |_, _, _, _| Err("rollout refused".to_string()),
        )
        .await
        .unwrap();
    assert_eq!(refused, Err("rollout refused".to_string()));
    assert_eq!(secret_names(&store.list_secrets(dep, "d1").await.unwrap()), [("A".to_string(), 1)]);
    assert_eq!(store.get_deployment("d1").await.unwrap().unwrap().revision, 3);

    // An update and a delete; a rollout may decline (nothing changes for that deployment).
    let mut seen = Seen::new();
    let mut declined =
        |d: &DeploymentRecord, _: Option<&EnvironmentRecord>, env: &[SecretRecord], own: &[SecretRecord]| {
            seen.push((d.id.clone(), secret_names(env), secret_names(own)));
            Ok::<_, String>(None)
        };
    let out = store
        .write_secrets(
            dep,
            "d1",
            |current| {
                assert_eq!(secret_names(current), [("A".to_string(), 1)]);
                Ok(Some(write(vec![secret(dep, "d1", "C", 1)], &["A"], "d1")))
            },
            &mut declined,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, SecretsWritten::Done { secrets: vec![secret(dep, "d1", "C", 1)], rolled_out: vec![] });
    assert_eq!(seen, [("d1".to_string(), b.clone(), vec![("C".to_string(), 1)])]);
    assert_eq!(store.get_deployment("d1").await.unwrap().unwrap().revision, 3);

    // No change at all: nothing stored, no audit, but the deployments are still looked at.
    let before = store.audit_for("d1").await.unwrap().len();
    let mut looked = 0;
    let out = store
        .write_secrets(
            dep,
            "d1",
            |_| Ok::<_, String>(None),
            |_, _, _, _| {
                looked += 1;
                Ok(None)
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(out, SecretsWritten::Done { ref rolled_out, .. } if rolled_out.is_empty()));
    assert_eq!((looked, store.audit_for("d1").await.unwrap().len()), (1, before));

    // Unknown or deleted scopes.
    let none = |_: &[SecretRecord]| Ok::<_, String>(None);
    let skip = |_: &DeploymentRecord, _: Option<&EnvironmentRecord>, _: &[SecretRecord], _: &[SecretRecord]| {
        Ok::<_, String>(None)
    };
    assert_eq!(store.write_secrets(dep, "nope", none, skip).await.unwrap(), Ok(SecretsWritten::NotFound));
    assert_eq!(store.write_secrets(envs, "env-nope", none, skip).await.unwrap(), Ok(SecretsWritten::NotFound));
    assert!(
        store
            .delete_deployment("d2", &secret_op("d2"), &audit("deployment.delete", "d2"), now_ms(), None)
            .await
            .unwrap()
    );
    assert_eq!(store.write_secrets(dep, "d2", none, skip).await.unwrap(), Ok(SecretsWritten::NotFound));
    let mut seen = Seen::new();
    store.write_secrets(envs, &env, |_| Ok(None), bump(&mut seen)).await.unwrap().unwrap();
    assert_eq!(seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["d1"], "a deleted deployment is skipped");
    assert_eq!(store.secret_key_ids().await.unwrap(), ["k1"]);
}

async fn concurrent_secret_writes_serialize(store: &Store) {
    secret_env(store, "conc").await;
    secret_deployment(store, "dc", "conc").await;
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Read-modify-write of the version: a lost update would repeat a version.
            store
                .write_secrets(
                    SecretScope::Deployment,
                    "dc",
                    |current| {
                        let next = current.first().map_or(1, |s| s.version + 1);
                        Ok(Some(write(vec![secret(SecretScope::Deployment, "dc", "V", next)], &[], "dc")))
                    },
                    |d, _, _, _| {
                        let mut next = d.clone();
                        next.revision += 1;
                        Ok::<_, String>(Some((next, secret_op("dc"))))
                    },
                )
                .await
                .unwrap()
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let now = store.list_secrets(SecretScope::Deployment, "dc").await.unwrap();
    assert_eq!(secret_names(&now), [("V".to_string(), 8)]);
    assert_eq!(store.get_deployment("dc").await.unwrap().unwrap().revision, 9);
}

async fn resealing_is_all_or_nothing(store: &Store) {
    secret_env(store, "rs").await;
    secret_deployment(store, "dr", "rs").await;
    let rows = vec![secret(SecretScope::Deployment, "dr", "A", 3), secret(SecretScope::Deployment, "dr", "B", 1)];
    store
        .write_secrets(
            SecretScope::Deployment,
            "dr",
            |_| Ok(Some(write(rows, &[], "dr"))),
            |_, _, _, _| Ok::<_, String>(None),
        )
        .await
        .unwrap()
        .unwrap();
    // A webhook's signing secret is sealed under the same key and resealed with the secrets.
    let hook = webhook("wh-rs", &["*"]);
    store.create_webhook(&hook, &audit("webhook.create", "wh-rs")).await.unwrap();
    let mut n = 0;
    let failed = store
        .reseal_secrets(
            |_| {
                n += 1;
                if n == 2 { Err("cannot") } else { Ok(("x".into(), "y".into(), "k2".into())) }
            },
            |_| Err("no others"),
            &audit("secrets.reseal", "master-key"),
        )
        .await
        .unwrap();
    assert_eq!(failed, Err("cannot"));
    assert_eq!(store.secret_key_ids().await.unwrap(), ["k1"], "nothing changed");
    let done = store
        .reseal_secrets(
            |s| Ok::<_, ()>((format!("new-{}", s.name), "n2".into(), "k2".into())),
            |s| Ok(Sealed { ciphertext: format!("new-{}", s.id), nonce: "n2".into(), key_id: "k2".into() }),
            &audit("secrets.reseal", "master-key"),
        )
        .await
        .unwrap();
    assert_eq!(done, Ok(3));
    assert_eq!(store.secret_key_ids().await.unwrap(), ["k2"]);
    assert_eq!(store.get_webhook("wh-rs").await.unwrap().unwrap().secret.ciphertext, "new-wh-rs");
    let after = store.list_secrets(SecretScope::Deployment, "dr").await.unwrap();
    assert_eq!(secret_names(&after), [("A".to_string(), 3), ("B".to_string(), 1)], "versions stay");
    assert_eq!(after[0].ciphertext, "new-A");
    assert_eq!(after[0].updated_at, 2, "lastRotated stays: the value did not change");
}

// ---- versions ---------------------------------------------------------------------------

use ferry_control_plane::domain::VersionStatus;
use ferry_control_plane::store::{VersionCreate, VersionMark, VersionReads, VersionRecord, VersionsWrite};

/// `create_version`'s builder: the template `{"command": cmd}` by admin:test.
fn make_version(deployment: &str, cmd: &str) -> impl FnOnce(&DeploymentRecord, &str) -> (VersionRecord, Audit) + use<> {
    let (deployment, cmd) = (deployment.to_string(), cmd.to_string());
    move |_, name| {
        let config = serde_json::json!({ "command": cmd }).to_string();
        (
            VersionRecord::new(&deployment, name, config, "admin:test".into(), now_ms()),
            audit("deployment.version.create", &deployment),
        )
    }
}

async fn created(store: &Store, deployment: &str, name: Option<&str>) -> VersionRecord {
    match store.create_version(deployment, None, name, make_version(deployment, "true")).await.unwrap() {
        Write::Done(VersionCreate::Created(v)) => v,
        other => panic!("{other:?}"),
    }
}

async fn versions_are_created_once_and_named_in_order(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    let d = deployment("dv", "default", "development", 1);
    create(store, &d).await.unwrap();
    // Creating a deployment creates its first version, deployed by the create's operation.
    let first = store.get_version("dv", "v1").await.unwrap().unwrap();
    assert_eq!((first.seq, first.deployed_seq, first.status), (1, Some(1), VersionStatus::Available));
    assert_eq!((first.created_by.as_str(), first.deploy_operation_id.as_deref()), ("admin:test", Some("op-dv")));
    assert!(first.audit_id.is_some());
    assert_eq!(first.configuration, r#"{"command":"true"}"#, "replicas are not part of a version");

    let v2 = created(store, "dv", Some("v2")).await;
    assert_eq!((v2.seq, v2.deployed_seq), (2, None));
    let audit_id = v2.audit_id.clone().expect("its creation is audited");
    let (trail, _) = store.list_audit(&all_audit(1, 50)).await.unwrap();
    assert!(trail.iter().any(|a| a.id == audit_id && a.action == "deployment.version.create"));
    // The same name again: the stored version, nothing written.
    let again = store.create_version("dv", None, Some("v2"), make_version("dv", "other")).await.unwrap();
    assert_eq!(again, Write::Done(VersionCreate::Existing(v2.clone())));
    // Generated names: v<count + 1>, bumped past names taken.
    assert_eq!(created(store, "dv", None).await.version, "v3");
    created(store, "dv", Some("v5")).await;
    assert_eq!(created(store, "dv", None).await.version, "v6", "v5 is taken");
    // Preconditions and missing deployments.
    let stale = store.create_version("dv", Some(99), None, make_version("dv", "x")).await.unwrap();
    assert_eq!(stale, Write::Conflict { current: 1 });
    let gone = store.create_version("nope", None, None, make_version("nope", "x")).await.unwrap();
    assert_eq!(gone, Write::NotFound);
    // Newest first, paged.
    let (page, total) = store.list_versions("dv", 1, 2).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(page.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["v6", "v5"]);
    let (page, _) = store.list_versions("dv", 3, 2).await.unwrap();
    assert_eq!(page.iter().map(|v| v.version.as_str()).collect::<Vec<_>>(), ["v1"]);

    // Concurrent creates serialize under the deployment's lock: distinct names and numbers.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { created(&store, "dv", None).await })
        })
        .collect();
    let mut names = std::collections::BTreeSet::new();
    let mut seqs = std::collections::BTreeSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        names.insert(v.version);
        seqs.insert(v.seq);
    }
    assert_eq!((names.len(), seqs.len()), (8, 8));
    assert_eq!(store.list_versions("dv", 1, 50).await.unwrap().1, 13);
}

/// Deploys `to` (created in the same write when `create`), optionally marking a version.
async fn deploy(store: &Store, id: &str, to: &str, create: bool, mark: Option<VersionMark>) -> DeploymentRecord {
    let op = OperationRecord { id: format!("op-{id}-{to}"), kind: OperationKind::Deploy, ..create_op(id) };
    let reads = VersionReads { named: Some(to), history: true, ..Default::default() };
    let written = store
        .modify_deployment_versioned(id, None, None, reads, |current, seen| {
            assert_eq!(seen.named.is_some(), !create, "{seen:?}");
            let mut d = current.clone();
            d.active_version = to.into();
            d.revision += 1;
            d.updated_at = now_ms();
            let new = create
                .then(|| VersionRecord::new(id, to, r#"{"command":"true"}"#.into(), "admin:test".into(), now_ms()));
            let versions = VersionsWrite { create: new, deployed: true, mark };
            Ok::<_, ()>((d, op, audit("deployment.version.deploy", id), versions))
        })
        .await
        .unwrap()
        .unwrap();
    match written {
        Write::Done(d) => d,
        other => panic!("{other:?}"),
    }
}

async fn versions_are_deployed_and_marked_with_their_deployment(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    let d = deployment("dd", "default", "development", 1);
    create(store, &d).await.unwrap();
    let after = deploy(store, "dd", "v2", true, None).await;
    assert_eq!((after.active_version.as_str(), after.revision, after.resource_version), ("v2", 2, 2));
    let v2 = store.get_version("dd", "v2").await.unwrap().unwrap();
    assert_eq!((v2.seq, v2.deployed_seq, v2.deploy_operation_id.as_deref()), (2, Some(2), Some("op-dd-v2")));
    assert_eq!(v2.deployed_by.as_deref(), Some("admin:test"));
    let (history, _) = store.deployment_history("dd", Page::newest_first(1, 1)).await.unwrap();
    assert_eq!(v2.audit_id, history[0].audit.as_ref().map(|a| a.id.clone()), "created by the deploy's record");
    assert_eq!(store.revision("dd", 2).await.unwrap().unwrap().0, "v2", "the revision carries the version");
    // Rolling back to v1 marks v2 and records v1's new deploy.
    let mark = VersionMark { version: "v2".into(), status: VersionStatus::RolledBack, reason: "bad".into() };
    deploy(store, "dd", "v1", false, Some(mark)).await;
    let v2 = store.get_version("dd", "v2").await.unwrap().unwrap();
    assert_eq!((v2.status, v2.status_reason.as_str()), (VersionStatus::RolledBack, "bad"));
    assert!(v2.status_changed_at.is_some());
    let history = store.deploy_history("dd").await.unwrap();
    let order: Vec<_> = history.iter().map(|v| (v.version.as_str(), v.deployed_seq)).collect();
    assert_eq!(order, [("v1", Some(3)), ("v2", Some(2))], "last deployed first");
    // The earlier operation was superseded by the later one in its transaction.
    let first = store.get_operation("op-dd-v2").await.unwrap().unwrap();
    assert_eq!((first.status, first.message.as_str()), (OperationStatus::Failed, "superseded by a newer change"));
    assert_eq!(
        store.get_version("dd", "v2").await.unwrap().unwrap().status,
        VersionStatus::RolledBack,
        "being superseded does not fail a version"
    );
    // A refused change writes nothing.
    let refused = store
        .modify_deployment_versioned("dd", None, None, VersionReads::default(), |_, _| {
            Err::<(DeploymentRecord, OperationRecord, Audit, VersionsWrite), _>("no")
        })
        .await
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(store.get_deployment("dd").await.unwrap().unwrap().resource_version, 3);
}

async fn a_failed_rollout_fails_the_version_it_deployed(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    let d = deployment("df", "default", "development", 1);
    create(store, &d).await.unwrap();
    deploy(store, "df", "v2", true, None).await;
    // Another deployment's operation fails: v2 is not concerned.
    let other = deployment("dg", "default", "development", 2);
    create(store, &other).await.unwrap();
    assert!(store.fail_rollout("op-dg", "progress deadline exceeded: failed", 5).await.unwrap());
    assert_eq!(store.get_version("df", "v2").await.unwrap().unwrap().status, VersionStatus::Available);
    assert_eq!(store.get_version("dg", "v1").await.unwrap().unwrap().status, VersionStatus::Failed);
    // v2's own operation: the operation and the version fail together, once.
    assert!(store.fail_rollout("op-df-v2", "progress deadline exceeded: 0 of 1 ready", 7).await.unwrap());
    let v2 = store.get_version("df", "v2").await.unwrap().unwrap();
    assert_eq!(
        (v2.status, v2.status_reason.as_str(), v2.status_changed_at),
        (VersionStatus::Failed, "progress deadline exceeded: 0 of 1 ready", Some(7))
    );
    let op = store.get_operation("op-df-v2").await.unwrap().unwrap();
    assert_eq!((op.status, op.finished_at), (OperationStatus::Failed, Some(7)));
    assert!(!store.fail_rollout("op-df-v2", "again", 9).await.unwrap(), "an ended operation stays as it ended");
    assert_eq!(
        store.get_version("df", "v2").await.unwrap().unwrap().status_reason,
        "progress deadline exceeded: 0 of 1 ready"
    );
    assert_eq!(store.get_version("df", "v1").await.unwrap().unwrap().status, VersionStatus::Available);
}

// ---- environments: limits, allocation, configuration, delete -----------------------------------

use ferry_control_plane::resources::{Limits, Usage};
use ferry_control_plane::store::{EnvironmentChange, EnvironmentConfigured, EnvironmentDelete};

/// A deployment of `replicas` replicas asking for 500m CPU and 1Gi each.
fn sized(id: &str, environment: &str, replicas: u32) -> DeploymentRecord {
    let mut d = deployment(id, "default", environment, now_ms());
    d.spec = format!(r#"{{"replicas":{replicas},"command":"true","cpu":"500m","memory":"1Gi"}}"#);
    d
}

async fn set_limits(store: &Store, env: &str, limits: Limits) {
    let change = EnvironmentChange { limits: Some(limits), ..Default::default() };
    let done = store
        .configure_environment(
            env,
            &change,
            |_, _, _| Ok::<_, String>(audit("environment.limits.update", env)),
            |_, _| Ok(None),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(done, EnvironmentConfigured::Done { .. }));
}

async fn usage(store: &Store, env: &str) -> (i64, i64, i64) {
    let u: Usage = store.environment_usage(env).await.unwrap();
    (u.pods, u.cpu_millis, u.memory_bytes)
}

/// Sets a deployment's spec and desired state through `modify_deployment`.
async fn reshape(store: &Store, id: &str, replicas: u32, state: DesiredState) -> Write<DeploymentRecord> {
    store
        .modify_deployment(id, None, None, |current| {
            let mut next = current.clone();
            next.spec = format!(r#"{{"replicas":{replicas},"command":"true","cpu":"500m","memory":"1Gi"}}"#);
            next.desired_state = state;
            Ok::<_, std::convert::Infallible>((next, secret_op(id), audit("deployment.scale", id)))
        })
        .await
        .unwrap()
        .unwrap()
}

const GI: i64 = 1 << 30;

async fn allocations_follow_creates_scales_stops_and_deletes(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    assert_eq!(usage(store, "development").await, (0, 0, 0));
    create(store, &sized("a", "development", 2)).await.unwrap();
    assert_eq!(usage(store, "development").await, (2, 1000, 2 * GI));
    create(store, &sized("b", "development", 1)).await.unwrap();
    create(store, &sized("s", "staging", 3)).await.unwrap();
    assert_eq!(usage(store, "development").await, (3, 1500, 3 * GI));
    assert_eq!(usage(store, "staging").await, (3, 1500, 3 * GI), "per environment");
    // Scale up and down, stop (holds nothing), start again.
    assert!(matches!(reshape(store, "a", 4, DesiredState::Running).await, Write::Done(_)));
    assert_eq!(usage(store, "development").await, (5, 2500, 5 * GI));
    assert!(matches!(reshape(store, "a", 4, DesiredState::Stopped).await, Write::Done(_)));
    assert_eq!(usage(store, "development").await, (1, 500, GI));
    assert!(matches!(reshape(store, "a", 2, DesiredState::Running).await, Write::Done(_)));
    assert_eq!(usage(store, "development").await, (3, 1500, 3 * GI));

    // Limits refuse growth only, naming the limit; what was refused changed nothing.
    set_limits(store, "env-development", Limits { pods: Some(4), cpu_millis: Some(1800), ..Default::default() }).await;
    let before = store.get_deployment("a").await.unwrap().unwrap();
    match reshape(store, "a", 4, DesiredState::Running).await {
        Write::LimitExceeded(e) => {
            assert_eq!((e.limit, e.max, e.allocated, e.requested, e.available), ("pods", 4, 3, 2, 1))
        }
        other => panic!("scale past the pods limit: {other:?}"),
    }
    assert_eq!(store.get_deployment("a").await.unwrap().unwrap(), before, "the deployment is unchanged");
    assert_eq!(usage(store, "development").await, (3, 1500, 3 * GI));
    assert!(store.open_operations_of("a").await.unwrap().iter().all(|o| o.kind != OperationKind::Scale));
    match create(store, &sized("c", "development", 1)).await {
        Err(CreateRefusal::LimitExceeded(e)) => assert_eq!((e.limit, e.available), ("cpu", 300)),
        other => panic!("a create past the cpu limit: {other:?}"),
    }
    assert!(store.get_deployment_any("c").await.unwrap().is_none(), "a refused create stores nothing");
    assert_eq!(store.audit_for("c").await.unwrap().len(), 0);
    // Lowering a limit below what is allocated is allowed; shrinking still passes.
    set_limits(store, "env-development", Limits { pods: Some(1), ..Default::default() }).await;
    assert!(matches!(reshape(store, "a", 1, DesiredState::Running).await, Write::Done(_)));
    assert_eq!(usage(store, "development").await, (2, 1000, 2 * GI));
    // Per deployment: replicas past the limit are refused even while stopped.
    set_limits(store, "env-development", Limits { replicas: Some(2), ..Default::default() }).await;
    assert!(
        matches!(reshape(store, "b", 3, DesiredState::Stopped).await, Write::LimitExceeded(e) if e.limit == "replicas")
    );
    // Deletes give back what they held.
    assert!(
        store.delete_deployment("a", &secret_op("a"), &audit("deployment.delete", "a"), now_ms(), None).await.unwrap()
    );
    assert_eq!(usage(store, "development").await, (1, 500, GI));
    assert!(
        store.delete_deployment("b", &secret_op("b"), &audit("deployment.delete", "b"), now_ms(), None).await.unwrap()
    );
    assert_eq!(usage(store, "development").await, (0, 0, 0));
    assert!(
        !store.delete_deployment("b", &secret_op("b"), &audit("deployment.delete", "b"), now_ms(), None).await.unwrap()
    );
    assert_eq!(usage(store, "development").await, (0, 0, 0), "a second delete gives back nothing");
}

async fn concurrent_creates_cannot_both_pass_a_limit(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    set_limits(store, "env-staging", Limits { pods: Some(5), ..Default::default() }).await;
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { create(&store, &sized(&format!("c{i}"), "staging", 2)).await }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => created += 1,
            Err(CreateRefusal::LimitExceeded(e)) => {
                assert_eq!(e.limit, "pods");
                refused += 1;
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!((created, refused), (2, 6), "5 pods hold two deployments of 2 replicas");
    assert_eq!(usage(&store, "staging").await, (4, 2000, 4 * GI));
    let filter = DeploymentFilter { environment: Some("staging"), page: 1, page_size: 50, ..Default::default() };
    assert_eq!(store.count_deployments_matching(filter).await.unwrap(), 2);
}

async fn environments_are_deleted_only_when_empty_and_unreferenced(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    let qa = secret_env(store, "qa").await;
    // The default chain.
    let chain: Vec<_> = store.list_environments().await.unwrap().into_iter().map(|e| (e.name, e.promotes_to)).collect();
    assert!(chain.contains(&("development".into(), Some("staging".into()))));
    assert!(chain.contains(&("staging".into(), Some("production".into()))));
    assert!(chain.contains(&("production".into(), None)));
    create(store, &sized("q1", "qa", 1)).await.unwrap();
    let del = |id: &'static str| async move {
        store.delete_environment(id, &audit("environment.delete", id), now_ms()).await.unwrap()
    };
    assert_eq!(del("env-qa").await, EnvironmentDelete::HasDeployments(1));
    assert!(
        store
            .delete_deployment("q1", &secret_op("q1"), &audit("deployment.delete", "q1"), now_ms(), None)
            .await
            .unwrap()
    );
    assert_eq!(del("env-production").await, EnvironmentDelete::Referenced(vec!["staging".into()]));
    assert_eq!(del("env-qa").await, EnvironmentDelete::Deleted);
    assert_eq!(del("env-qa").await, EnvironmentDelete::NotFound);
    assert!(store.get_environment(&qa).await.unwrap().is_none());
    assert_eq!(store.audit_for("env-qa").await.unwrap().len(), 2, "created and deleted");
    // A create in a deleted environment finds it gone.
    assert_eq!(create(store, &sized("q2", "qa", 1)).await, Err(CreateRefusal::EnvironmentMissing));
    // Seeding does not bring deleted environments back while others exist.
    store.seed_environments(now_ms()).await.unwrap();
    assert!(store.get_environment("qa").await.unwrap().is_none());

    // Concurrent creates and a delete: either the delete is refused, or every create is.
    let fresh = secret_env(store, "race").await;
    let store2 = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store2.clone();
        tasks.push(tokio::spawn(async move { create(&store, &sized(&format!("r{i}"), "race", 1)).await }));
    }
    let deleted = store.delete_environment(&fresh, &audit("environment.delete", &fresh), now_ms()).await.unwrap();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => created += 1,
            Err(CreateRefusal::EnvironmentMissing) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    let live = store
        .count_deployments_matching(DeploymentFilter { environment: Some("race"), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(live, created);
    match deleted {
        EnvironmentDelete::Deleted => assert_eq!(created, 0, "no deployment outlives its environment"),
        EnvironmentDelete::HasDeployments(n) => assert!(n >= 1 && created >= n),
        other => panic!("unexpected {other:?}"),
    }
}

async fn environment_configuration_is_checked_and_rolled_out_in_one_transaction(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    create(store, &sized("v1", "development", 1)).await.unwrap();
    create(store, &sized("v2", "development", 1)).await.unwrap();
    create(store, &sized("other", "staging", 1)).await.unwrap();
    let vars = BTreeMap::from([("LOG_LEVEL".to_string(), "debug".to_string())]);
    let change = EnvironmentChange {
        variables: Some(vars.clone()),
        promotes_to: Some(None),
        description: Some("dev".into()),
        ..Default::default()
    };
    // A refusal writes nothing.
    let refused = store
        .configure_environment("env-development", &change, |_, _, _| Err("no".to_string()), |_, _| Ok(None), now_ms())
        .await
        .unwrap();
    assert_eq!(refused, Err("no".to_string()));
    assert_eq!(store.get_environment("development").await.unwrap().unwrap().promotes_to.as_deref(), Some("staging"));
    // The check sees the chain as it would be; the rollout sees every live deployment there.
    let mut chains = Vec::new();
    let mut seen = Vec::new();
    let done = store
        .configure_environment(
            "env-development",
            &change,
            |before, after, chain| {
                chains.push(chain.to_vec());
                assert_eq!((before.promotes_to.as_deref(), after.promotes_to.as_deref()), (Some("staging"), None));
                Ok::<_, String>(audit("environment.config.update", "env-development"))
            },
            |d, v| {
                seen.push((d.id.clone(), v.clone()));
                let mut next = d.clone();
                next.revision += 1;
                next.spec = format!(
                    r#"{{"replicas":1,"command":"true","cpu":"500m","memory":"1Gi","environmentVariables":{}}}"#,
                    serde_json::to_string(v).unwrap()
                );
                Ok(Some((next, secret_op(&d.id))))
            },
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    let chain = &chains[0];
    assert!(
        chain.contains(&("development".into(), None)) && chain.contains(&("staging".into(), Some("production".into())))
    );
    assert_eq!(seen, vec![("v1".to_string(), vars.clone()), ("v2".to_string(), vars.clone())]);
    let EnvironmentConfigured::Done { environment, rolled_out } = done else { panic!("not found") };
    let environment = *environment;
    assert_eq!(
        (environment.variables, environment.promotes_to, environment.description.as_str()),
        (vars.clone(), None, "dev")
    );
    assert_eq!(rolled_out.len(), 2);
    for id in ["v1", "v2"] {
        let d = store.get_deployment(id).await.unwrap().unwrap();
        assert_eq!((d.revision, d.resource_version), (2, 2));
        assert!(store.revision(id, 2).await.unwrap().unwrap().1.contains("LOG_LEVEL"));
    }
    assert_eq!(store.get_deployment("other").await.unwrap().unwrap().revision, 1, "another environment's");
    assert_eq!(usage(store, "development").await, (2, 1000, 2 * GI), "a rollout holds what it held");
    let stored = store.get_environment("env-development").await.unwrap().unwrap();
    assert_eq!((stored.variables, stored.promotes_to), (vars, None));
    assert!(store.audit_for("env-development").await.unwrap().iter().any(|a| a.0 == "environment.config.update"));
    // Unknown environment.
    let none = store
        .configure_environment(
            "env-nope",
            &change,
            |_, _, _| Ok::<_, String>(audit("x.y", "z")),
            |_, _| Ok(None),
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(none, EnvironmentConfigured::NotFound);
}

async fn status_counts_are_grouped_and_filtered(store: &Store) {
    let now = now_ms();
    store.seed_default_workspace(now).await.unwrap();
    store.seed_environments(now).await.unwrap();
    store.create_workspace(&workspace("team-a"), &audit("workspace.create", "team-a")).await.unwrap();
    for (id, ws) in [("s1", "default"), ("s2", "default"), ("s3", "team-a"), ("s4", "default")] {
        create(store, &deployment(id, ws, "development", now)).await.unwrap();
    }
    create(store, &deployment("s5", "default", "staging", now)).await.unwrap();
    store.put_status_summary("s1", &summary("running", 1), now).await.unwrap();
    store.put_status_summary("s2", &summary("running", 1), now).await.unwrap();
    store.put_status_summary("s3", &summary("failed", 0), now).await.unwrap();
    // s4 has no summary yet: deploying.
    let all = store.environment_status_counts("development", None).await.unwrap();
    assert_eq!(all, BTreeMap::from([("deploying".into(), 1), ("failed".into(), 1), ("running".into(), 2)]));
    let team_a_only =
        Visibility { everywhere: vec![], workspaces: vec![("team-a".into(), vec!["development".into()])] };
    let some = store.environment_status_counts("development", Some(&team_a_only)).await.unwrap();
    assert_eq!(some, BTreeMap::from([("failed".into(), 1)]));
    assert!(store.environment_status_counts("development", Some(&Visibility::default())).await.unwrap().is_empty());
}

// ---- webhooks ---------------------------------------------------------------------------------

use ferry_control_plane::secrets::Sealed;
use ferry_control_plane::store::{AttemptOutcome, DeliveryRecord, OperationCallback, WebhookRecord};

fn webhook(id: &str, events: &[&str]) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: String::new(),
        secret: Sealed { ciphertext: "c".into(), nonce: "n".into(), key_id: "k1".into() },
        created_by: "admin:test".into(),
        created_at: now_ms(),
    }
}

async fn deliveries(store: &Store, webhook: &str) -> Vec<DeliveryRecord> {
    store.list_deliveries(webhook, 1, 200).await.unwrap().0
}

fn payload(d: &DeliveryRecord) -> serde_json::Value {
    serde_json::from_str(&d.payload).unwrap()
}

async fn events_queue_deliveries_in_the_transaction_of_their_change(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    store.seed_default_workspace(now_ms()).await.unwrap();
    for (id, events) in [
        ("wh-status", &["deployment.status"][..]),
        ("wh-all", &["*"][..]),
        ("wh-approvals", &["approval.requested", "approval.decided"][..]),
        ("wh-alerts", &["alert.fired"][..]),
    ] {
        store.create_webhook(&webhook(id, events), &audit("webhook.create", id)).await.unwrap();
    }
    let (hooks, total) = store.list_webhooks(1, 10).await.unwrap();
    assert_eq!((hooks.len(), total), (4, 4));
    assert_eq!(store.get_webhook("wh-all").await.unwrap().unwrap().events, ["*"]);

    // A create whose request named a callback: stored with the operation.
    let d = deployment_record("dep-w", "development");
    let callback = OperationCallback { id: "cb-1".into(), url: "http://127.0.0.1:9/cb".into(), secret: None };
    let op = OperationRecord { callback: Some(callback), ..create_op("dep-w") };
    store.create_deployment(&d, &op, &audit("deployment.create", "dep-w"), None).await.unwrap().unwrap();
    assert!(deliveries(store, "wh-all").await.is_empty(), "a create reports nothing by itself");

    // A status transition: one delivery per subscriber, in its transaction.
    assert!(store.put_status_summary("dep-w", &summary("deploying", 0), 10).await.unwrap());
    let status = deliveries(store, "wh-status").await;
    assert_eq!(status.len(), 1);
    assert_eq!(deliveries(store, "wh-all").await.len(), 1);
    assert!(deliveries(store, "wh-approvals").await.is_empty() && deliveries(store, "wh-alerts").await.is_empty());
    let p = payload(&status[0]);
    assert_eq!((p["type"].as_str(), status[0].event_type.as_str()), (Some("deployment.status"), "deployment.status"));
    assert_eq!(
        p["data"]["deployment"],
        serde_json::json!({ "id": "dep-w", "name": "dep-w", "environment": "development", "workspace": "default" })
    );
    assert_eq!((p["data"]["from"].clone(), p["data"]["to"].as_str()), (serde_json::Value::Null, Some("deploying")));
    assert_eq!(status[0].event_id, deliveries(store, "wh-all").await[0].event_id, "one event, two deliveries");
    assert_eq!((status[0].status.as_str(), status[0].attempts), ("pending", 0));
    // A change of the summary that is not a transition reports nothing.
    assert!(store.put_status_summary("dep-w", &summary("deploying", 1), 11).await.unwrap());
    assert_eq!(deliveries(store, "wh-status").await.len(), 1);
    assert!(store.put_status_summary("dep-w", &summary("running", 1), 12).await.unwrap());
    assert_eq!(deliveries(store, "wh-status").await.len(), 2);
    assert_eq!(payload(&deliveries(store, "wh-status").await[0])["data"]["from"], "deploying", "newest first");

    // An operation that completes: webhooks and the request's callback, once.
    assert!(store.finish_operation("op-dep-w", OperationStatus::Succeeded, "1 of 1 ready", 20).await.unwrap());
    assert!(!store.finish_operation("op-dep-w", OperationStatus::Failed, "again", 21).await.unwrap());
    let all = deliveries(store, "wh-all").await;
    assert_eq!(all.len(), 3);
    let done = payload(&all[0]);
    assert_eq!(done["type"], "operation.completed");
    assert_eq!(done["data"]["operation"]["id"], "op-dep-w");
    assert_eq!(done["data"]["operation"]["status"], "succeeded");
    assert_eq!(done["data"]["deployment"]["name"], "dep-w");
    let claimed = store.claim_deliveries("r1", now_ms(), now_ms() + 60_000, 100).await.unwrap();
    let cb: Vec<_> = claimed.iter().filter(|c| c.delivery.webhook_id.is_none()).collect();
    assert_eq!(cb.len(), 1, "the callback's delivery");
    assert_eq!(cb[0].url.as_deref(), Some("http://127.0.0.1:9/cb"));
    assert!(cb[0].secret.is_none(), "no secret given: not signed");
    assert_eq!(cb[0].delivery.operation_id.as_deref(), Some("op-dep-w"));
    assert_eq!(cb[0].delivery.event_id, all[0].event_id);
    let hook = claimed.iter().find(|c| c.delivery.webhook_id.as_deref() == Some("wh-all")).unwrap();
    assert_eq!(hook.url.as_deref(), Some("http://127.0.0.1:9/wh-all"));
    let (sealed, kind, sealed_for) = hook.secret.clone().unwrap();
    assert_eq!((sealed.key_id.as_str(), kind, sealed_for.as_str()), ("k1", "webhook", "wh-all"));

    // A newer change supersedes an open operation: it completes (failed) in that transaction.
    let open = OperationRecord { id: "op-scale-1".into(), kind: OperationKind::Scale, ..create_op("dep-w") };
    store
        .modify_deployment("dep-w", None, None, |c| Ok::<_, ()>((c.clone(), open, audit("deployment.scale", "dep-w"))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deliveries(store, "wh-all").await.len(), 3, "starting an operation reports nothing");
    let newer = OperationRecord { id: "op-scale-2".into(), kind: OperationKind::Scale, ..create_op("dep-w") };
    store
        .modify_deployment("dep-w", None, None, |c| Ok::<_, ()>((c.clone(), newer, audit("deployment.scale", "dep-w"))))
        .await
        .unwrap()
        .unwrap();
    let superseded = payload(&deliveries(store, "wh-all").await[0]);
    assert_eq!(superseded["data"]["operation"]["id"], "op-scale-1");
    assert_eq!(superseded["data"]["operation"]["status"], "failed");
    // A refused change writes nothing, so it reports nothing.
    let refused = store
        .modify_deployment("dep-w", None, None, |_| Err::<(DeploymentRecord, OperationRecord, Audit), _>("no"))
        .await
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(deliveries(store, "wh-all").await.len(), 4);

    // Approvals: requested, then decided (rejected) with its operation failing.
    let a = pending(store, "apr-w", "dep-w", OperationKind::Scale, ApprovalStatus::Pending, now_ms() + 60_000).await;
    let approvals = deliveries(store, "wh-approvals").await;
    assert_eq!(approvals.len(), 1);
    let requested = payload(&approvals[0]);
    assert_eq!(
        (requested["type"].as_str(), requested["data"]["approval"]["id"].as_str()),
        (Some("approval.requested"), Some("apr-w"))
    );
    let reject = Transition {
        id: "apr-w",
        from: ApprovalStatus::Pending,
        to: ApprovalStatus::Rejected,
        message: "no",
        decision: Some(("user:boss", Some("no"))),
        operation: (OperationStatus::Failed, "rejected"),
        audit: Some(&audit("approval.reject", "apr-w")),
        now: now_ms(),
    };
    assert!(store.transition_approval(&reject).await.unwrap());
    assert!(!store.transition_approval(&reject).await.unwrap(), "once");
    let approvals = deliveries(store, "wh-approvals").await;
    assert_eq!(approvals.len(), 2);
    let decided = payload(&approvals[0]);
    assert_eq!(
        (decided["type"].as_str(), decided["data"]["approval"]["status"].as_str()),
        (Some("approval.decided"), Some("rejected"))
    );
    let all = deliveries(store, "wh-all").await;
    let types: Vec<String> = all.iter().take(3).map(|d| d.event_type.clone()).collect();
    assert!(
        types.contains(&"operation.completed".to_string()) && types.contains(&"approval.decided".to_string()),
        "{types:?}"
    );
    let failed = all.iter().map(payload).find(|p| p["data"]["operation"]["id"] == a.operation_id.as_str()).unwrap();
    assert_eq!(failed["data"]["operation"]["status"], "failed");

    // Redelivery: a new delivery of the same event; another webhook's delivery is not found.
    let first = deliveries(store, "wh-status").await.pop().unwrap();
    let again = store
        .redeliver("wh-status", &first.id, "dlv-again", &audit("webhook.redeliver", "wh-status"), 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.id.as_str(), again.event_id.as_str(), again.payload.as_str()),
        ("dlv-again", first.event_id.as_str(), first.payload.as_str())
    );
    assert_eq!((again.attempts, again.status.as_str(), again.next_attempt_at), (0, "pending", 50));
    assert!(
        store
            .redeliver("wh-all", &first.id, "dlv-x", &audit("webhook.redeliver", "wh-all"), 50)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_delivery("dlv-x").await.unwrap().is_none());

    // Deleting a webhook deletes its subscriptions and log: nothing more is queued for it.
    assert!(store.delete_webhook("wh-status", &audit("webhook.delete", "wh-status"), 60).await.unwrap());
    assert!(!store.delete_webhook("wh-status", &audit("webhook.delete", "wh-status"), 60).await.unwrap());
    assert!(store.get_webhook("wh-status").await.unwrap().is_none());
    assert!(deliveries(store, "wh-status").await.is_empty());
    assert!(store.put_status_summary("dep-w", &summary("failed", 0), 70).await.unwrap());
    assert!(deliveries(store, "wh-status").await.is_empty());
    let to_failed =
        deliveries(store, "wh-all").await.iter().map(payload).filter(|p| p["data"]["to"] == "failed").count();
    assert_eq!(to_failed, 1, "still queued for the others");
}

async fn two_claimers_never_claim_the_same_attempt(store: &Store) {
    store.create_webhook(&webhook("wh-c", &["*"]), &audit("webhook.create", "wh-c")).await.unwrap();
    for i in 0..40 {
        // Deployments that do not exist are named by id alone.
        store.put_status_summary(&format!("dep-c{i}"), &summary("running", 1), 1).await.unwrap();
    }
    assert_eq!(deliveries(store, "wh-c").await.len(), 40);
    let now = now_ms();
    let claimers: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store.claim_deliveries(&format!("r{i}"), now, now + 60_000, 7).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| (c.delivery.id, c.delivery.attempts, i)));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let mut ids: Vec<&str> = claimed.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((claimed.len(), ids.len()), (40, 40), "every row claimed exactly once");
    assert!(claimed.iter().all(|(_, attempts, _)| *attempts == 1));
    // Leased: nothing is due until the lease ends.
    assert!(store.claim_deliveries("r9", now + 1, now + 60_000, 100).await.unwrap().is_empty());

    let (a, _, owner_a) = claimed[0].clone();
    let (b, _, owner_b) = claimed[1].clone();
    let (c, _, owner_c) = claimed[2].clone();
    // Only the claimer, for that attempt, records its outcome.
    let retry = AttemptOutcome::Retry { status: Some(500), error: "HTTP 500".into(), at: now };
    assert!(!store.record_attempt(&a, "someone-else", 1, &retry, now).await.unwrap());
    assert!(!store.record_attempt(&a, &format!("r{owner_a}"), 2, &retry, now).await.unwrap());
    assert!(store.record_attempt(&a, &format!("r{owner_a}"), 1, &retry, now).await.unwrap());
    assert!(!store.record_attempt(&a, &format!("r{owner_a}"), 1, &retry, now).await.unwrap(), "once");
    let delivered = AttemptOutcome::Delivered { status: 204 };
    assert!(store.record_attempt(&b, &format!("r{owner_b}"), 1, &delivered, now).await.unwrap());
    // The retried one is due again: its second attempt.
    let again = store.claim_deliveries("r5", now + 1, now + 60_000, 100).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].delivery.id.as_str(), again[0].delivery.attempts), (a.as_str(), 2));
    assert_eq!((again[0].delivery.last_status, again[0].delivery.last_error.as_deref()), (Some(500), Some("HTTP 500")));
    let failed = AttemptOutcome::Failed { status: None, error: "could not connect".into() };
    assert!(store.record_attempt(&a, "r5", 2, &failed, now + 2).await.unwrap());
    // A replica that stops gives its unfinished attempts back (due at once, not counted) …
    assert!(store.release_deliveries(&format!("r{owner_c}"), now + 3).await.unwrap() >= 1);
    let back = store.claim_deliveries("r6", now + 3, now + 60_000, 100).await.unwrap();
    assert!(back.iter().any(|d| d.delivery.id == c && d.delivery.attempts == 1), "released, not counted");
    // … and an attempt whose replica died is sent again once its lease ends.
    let expired = store.claim_deliveries("r7", now + 60_001, now + 120_000, 100).await.unwrap();
    assert_eq!(expired.len(), 38, "all but the two finished ones");
    assert!(expired.iter().all(|d| d.delivery.attempts == 2));

    let by_id = |id: &str| {
        let id = id.to_string();
        async move { store.get_delivery(&id).await.unwrap().unwrap() }
    };
    let (da, db) = (by_id(&a).await, by_id(&b).await);
    assert_eq!((da.status.as_str(), da.attempts, da.last_error.as_deref()), ("failed", 2, Some("could not connect")));
    assert_eq!((db.status.as_str(), db.last_status, db.delivered_at), ("delivered", Some(204), Some(now)));
    // Finished deliveries are swept once old enough; pending ones never.
    assert_eq!(store.sweep_deliveries(now + 1, 100).await.unwrap(), 1, "only b finished before now + 1");
    assert_eq!(store.sweep_deliveries(now + 10, 100).await.unwrap(), 1);
    assert_eq!(deliveries(store, "wh-c").await.len(), 38);
}

// ---- idempotency ------------------------------------------------------------------------------

fn idem_claim(
    identity: &str,
    key: &str,
    fingerprint: &str,
    owner: &str,
    lease_ms: i64,
    ttl_ms: i64,
) -> IdempotencyClaim {
    IdempotencyClaim {
        identity: identity.into(),
        key: key.into(),
        fingerprint: fingerprint.into(),
        request: "POST /v1/deployments".into(),
        owner: owner.into(),
        request_id: format!("req-{owner}"),
        lease_ms,
        ttl_ms,
    }
}

fn answer(body: Option<&[u8]>) -> StoredResponse {
    StoredResponse {
        status: 202,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("location".into(), "/v1/operations/op-1".into()),
        ],
        body: body.map(<[u8]>::to_vec),
    }
}

async fn an_idempotency_key_is_claimed_once_under_concurrency(store: &Store) {
    let now = now_ms();
    let store = Arc::new(store.clone());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let c = idem_claim("user:alice", "k-1", "fp-1", &format!("owner-{i}"), 60_000, 3_600_000);
            (i, store.claim_idempotency_key(&c, now).await.unwrap())
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let (i, claimed) = t.await.unwrap();
        if claimed {
            won.push(i);
        }
    }
    assert_eq!(won.len(), 1, "exactly one claimant wins a key: {won:?}");
    let owner = format!("owner-{}", won[0]);
    let held = store.idempotency_key("user:alice", "k-1").await.unwrap().unwrap();
    assert_eq!(
        (held.state, held.owner.as_str(), held.fingerprint.as_str()),
        (IdempotencyState::InFlight, owner.as_str(), "fp-1")
    );
    assert_eq!((held.status, held.body.as_deref()), (None, None));
    assert_eq!(held.request_id, format!("req-{owner}"));
    assert!(!held.is_claimable(now));

    // Another caller's key of the same name is another key.
    let bob = idem_claim("user:bob", "k-1", "fp-other", "bob", 60_000, 3_600_000);
    assert!(store.claim_idempotency_key(&bob, now).await.unwrap());

    // Only the holder stores the answer; the body is kept byte for byte (any bytes).
    let body: &[u8] = b"{\"id\":1}\n\xff\x00";
    assert!(!store.complete_idempotency_key("user:alice", "k-1", "someone-else", &answer(Some(body))).await.unwrap());
    assert!(!store.release_idempotency_key("user:alice", "k-1", "someone-else").await.unwrap());
    assert!(store.complete_idempotency_key("user:alice", "k-1", &owner, &answer(Some(body))).await.unwrap());
    let done = store.idempotency_key("user:alice", "k-1").await.unwrap().unwrap();
    assert_eq!(done.state, IdempotencyState::Done);
    assert_eq!((done.status, done.body.as_deref()), (Some(202), Some(body)));
    assert_eq!(done.headers, answer(None).headers);
    // A done key is neither completed again nor released, and cannot be claimed before it expires.
    assert!(!store.complete_idempotency_key("user:alice", "k-1", &owner, &answer(None)).await.unwrap());
    assert!(!store.release_idempotency_key("user:alice", "k-1", &owner).await.unwrap());
    let again = idem_claim("user:alice", "k-1", "fp-1", "late", 60_000, 3_600_000);
    assert!(!store.claim_idempotency_key(&again, now + 1).await.unwrap());
    assert_eq!(store.idempotency_key("user:alice", "k-1").await.unwrap().unwrap(), done, "unchanged");

    // An answer that is not kept: status only.
    assert!(
        store
            .complete_idempotency_key(
                "user:bob",
                "k-1",
                "bob",
                &StoredResponse { status: 201, headers: vec![], body: None }
            )
            .await
            .unwrap()
    );
    let b = store.idempotency_key("user:bob", "k-1").await.unwrap().unwrap();
    assert_eq!((b.state, b.status, b.body), (IdempotencyState::Done, Some(201), None));

    // A released claim frees the key for the next request.
    let c = idem_claim("user:alice", "k-2", "fp-2", "first", 60_000, 3_600_000);
    assert!(store.claim_idempotency_key(&c, now).await.unwrap());
    assert!(store.release_idempotency_key("user:alice", "k-2", "first").await.unwrap());
    assert!(store.idempotency_key("user:alice", "k-2").await.unwrap().is_none());
    let c = idem_claim("user:alice", "k-2", "fp-2", "second", 60_000, 3_600_000);
    assert!(store.claim_idempotency_key(&c, now).await.unwrap());
}

async fn idempotency_keys_expire_and_are_swept_in_batches(store: &Store) {
    let t0 = 1_000_000;
    // Five answered keys expiring at t0+100, +200, ..., +500.
    for i in 1..=5 {
        let c = idem_claim("user:alice", &format!("k-{i}"), "fp", &format!("o-{i}"), 10, i * 100);
        assert!(store.claim_idempotency_key(&c, t0).await.unwrap());
        assert!(
            store
                .complete_idempotency_key("user:alice", &format!("k-{i}"), &format!("o-{i}"), &answer(Some(b"{}")))
                .await
                .unwrap()
        );
    }
    // An in-flight key past its expiry but inside its lease is running: not swept.
    let running = idem_claim("user:alice", "running", "fp", "r", 500, 100);
    assert!(store.claim_idempotency_key(&running, t0).await.unwrap());

    // Expiry is exact at claim time, whether or not the sweep ran: k-1 is claimable at t0+100.
    let k1 = store.idempotency_key("user:alice", "k-1").await.unwrap().unwrap();
    assert!(!k1.is_claimable(t0 + 99) && k1.is_claimable(t0 + 100));
    let reuse = idem_claim("user:alice", "k-1", "another-fp", "new", 10, 1_000);
    assert!(!store.claim_idempotency_key(&reuse, t0 + 99).await.unwrap());
    assert!(store.claim_idempotency_key(&reuse, t0 + 100).await.unwrap(), "an expired key is free again");
    let k1 = store.idempotency_key("user:alice", "k-1").await.unwrap().unwrap();
    assert_eq!(
        (k1.state, k1.fingerprint.as_str(), k1.owner.as_str()),
        (IdempotencyState::InFlight, "another-fp", "new")
    );
    assert_eq!((k1.status, k1.body), (None, None), "the old answer is gone");
    assert_eq!(k1.expires_at, t0 + 100 + 1_000);

    // At t0+450: k-2, k-3, k-4 are expired; batches of two, oldest first.
    let left = |store: &Store| {
        let store = store.clone();
        async move {
            let mut keys = Vec::new();
            for k in ["k-1", "k-2", "k-3", "k-4", "k-5", "running"] {
                if store.idempotency_key("user:alice", k).await.unwrap().is_some() {
                    keys.push(k);
                }
            }
            keys
        }
    };
    assert_eq!(store.sweep_idempotency_keys(t0 + 450, 2).await.unwrap(), 2);
    assert_eq!(left(store).await, ["k-1", "k-4", "k-5", "running"]);
    assert_eq!(store.sweep_idempotency_keys(t0 + 450, 2).await.unwrap(), 1);
    assert_eq!(store.sweep_idempotency_keys(t0 + 450, 2).await.unwrap(), 0);
    assert_eq!(left(store).await, ["k-1", "k-5", "running"]);
    // Once its lease ran out too, the abandoned in-flight key goes.
    assert_eq!(store.sweep_idempotency_keys(t0 + 1_000, 100).await.unwrap(), 2);
    assert_eq!(left(store).await, ["k-1"], "k-1 was claimed again and lives until t0+1100");
}

async fn a_stale_in_flight_idempotency_claim_is_taken_over(store: &Store) {
    let t0 = 5_000_000;
    let first = idem_claim("user:alice", "k", "fp", "crashed", 1_000, 86_400_000);
    assert!(store.claim_idempotency_key(&first, t0).await.unwrap());
    let second = idem_claim("user:alice", "k", "fp", "retry", 1_000, 86_400_000);
    // Inside the lease the first claim holds, whatever the fingerprint.
    assert!(!store.claim_idempotency_key(&second, t0 + 999).await.unwrap());
    assert!(!store.idempotency_key("user:alice", "k").await.unwrap().unwrap().is_claimable(t0 + 999));
    // Its server died: once the lease ran out, a retry takes the key over.
    assert!(store.claim_idempotency_key(&second, t0 + 1_000).await.unwrap());
    let held = store.idempotency_key("user:alice", "k").await.unwrap().unwrap();
    assert_eq!((held.owner.as_str(), held.request_id.as_str()), ("retry", "req-retry"));
    assert_eq!(held.lease_until, t0 + 2_000);
    // The first holder, should it come back, can neither store its answer nor release the key.
    assert!(!store.complete_idempotency_key("user:alice", "k", "crashed", &answer(Some(b"old"))).await.unwrap());
    assert!(!store.release_idempotency_key("user:alice", "k", "crashed").await.unwrap());
    assert!(store.complete_idempotency_key("user:alice", "k", "retry", &answer(Some(b"new"))).await.unwrap());
    let done = store.idempotency_key("user:alice", "k").await.unwrap().unwrap();
    assert_eq!(done.body.as_deref(), Some(&b"new"[..]));
    // A done key is not taken over when its lease time passes: only its expiry frees it.
    let third = idem_claim("user:alice", "k", "fp", "third", 1_000, 86_400_000);
    assert!(!store.claim_idempotency_key(&third, t0 + 10_000).await.unwrap());
}

// ---- promotions -------------------------------------------------------------------------

/// What promotion and versions from Git rely on in the store: a version's Git pin (its
/// `source`) and template are stored as given; a `promote` operation, its audit record and a
/// pending promotion keep their kind; the same-named deployment of one workspace and
/// environment is found by the listing filter alone.
async fn promotions_and_git_versions_are_stored_as_they_are(store: &Store) {
    store.seed_environments(now_ms()).await.unwrap();
    store.seed_default_workspace(now_ms()).await.unwrap();
    assert!(store.create_workspace(&workspace("team-b"), &audit("workspace.create", "team-b")).await.unwrap());
    let mut target = deployment("web-stg", "default", "staging", 1);
    target.name = "web".into();
    create(store, &target).await.unwrap();
    for (id, ws, env) in [("web-dev", "default", "development"), ("web-b", "team-b", "staging")] {
        let mut d = deployment(id, ws, env, 2);
        d.name = "web".into();
        create(store, &d).await.unwrap();
    }
    let filter = DeploymentFilter {
        environment: Some("staging"),
        workspace: Some("default"),
        name: Some("web"),
        page: 1,
        page_size: 1,
        ..Default::default()
    };
    let (rows, total) = store.list_deployments(filter).await.unwrap();
    assert_eq!((rows[0].0.id.as_str(), total), ("web-stg", 1));

    // A version made from a commit keeps its pin, as JSON, beside its template.
    let pin = r#"{"type":"git","repoUrl":"file:///r","ref":"refs/heads/main","commit":"ab","path":"f.json"}"#;
    let template = format!(r#"{{"command":"true","source":{pin}}}"#);
    let written = store
        .create_version("web-stg", None, Some("git-ab"), |_, name| {
            let mut v = VersionRecord::new("web-stg", name, template.clone(), "admin:test".into(), now_ms());
            v.source = Some(pin.to_string());
            (v, audit("deployment.version.create", "web-stg"))
        })
        .await
        .unwrap();
    assert!(matches!(written, Write::Done(VersionCreate::Created(_))), "{written:?}");
    let v = store.get_version("web-stg", "git-ab").await.unwrap().unwrap();
    assert_eq!((v.source.as_deref(), v.configuration.as_str()), (Some(pin), template.as_str()));

    // A promotion into it: a `promote` operation creating and deploying the version, audited.
    let op = OperationRecord { id: "op-promote".into(), kind: OperationKind::Promote, ..create_op("web-stg") };
    let reads = VersionReads { named: Some("v7"), ..Default::default() };
    let written = store
        .modify_deployment_versioned("web-stg", None, None, reads, |current, seen| {
            assert!(seen.named.is_none());
            let mut d = current.clone();
            d.active_version = "v7".into();
            d.revision += 1;
            d.updated_at = now_ms();
            let v = VersionRecord::new("web-stg", "v7", template.clone(), "admin:test".into(), now_ms());
            let versions = VersionsWrite { create: Some(v), deployed: true, mark: None };
            Ok::<_, ()>((d, op, audit("deployment.promote", "web-stg"), versions))
        })
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(written, Write::Done(_)), "{written:?}");
    assert_eq!(store.get_operation("op-promote").await.unwrap().unwrap().kind, OperationKind::Promote);
    let v7 = store.get_version("web-stg", "v7").await.unwrap().unwrap();
    assert_eq!((v7.configuration.as_str(), v7.deploy_operation_id.as_deref()), (template.as_str(), Some("op-promote")));
    let actions: Vec<String> =
        store.audit_for("web-stg").await.unwrap().into_iter().map(|(action, _, _)| action).collect();
    assert_eq!(actions.last().map(String::as_str), Some("deployment.promote"), "{actions:?}");

    // A promotion waiting for approval keeps its action, and so its permission.
    let far = now_ms() + 3_600_000;
    pending(store, "apr-promote", "web-stg", OperationKind::Promote, ApprovalStatus::Pending, far).await;
    let a = store.get_approval("apr-promote").await.unwrap().unwrap();
    assert_eq!(a.action, OperationKind::Promote);
    let waiting = store.get_operation(&a.operation_id).await.unwrap().unwrap();
    assert_eq!((waiting.kind, waiting.status), (OperationKind::Promote, OperationStatus::AwaitingApproval));
}
