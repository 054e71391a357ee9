//! Reconciliation (idempotence, replacement, scaling, removal), stopping, shutdown and the
//! cleanup of a previous run's leftovers.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::Duration;

use common::{Harness, Process, alive, eventually, group_members, sh, start_time};
use ferry_protocol::Phase;
use ferry_runtime::{ProcessRuntime, RuntimeConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A replica whose shell leader has a grandchild that ignores SIGTERM.
fn with_grandchild(id: &str) -> ferry_runtime::Workload {
    sh(id, "(trap '' TERM; exec sleep 1000) & wait")
}

/// Waits until replica `index` runs and its grandchild exists; returns all its group's pids.
async fn family(h: &Harness, id: &str, index: u32) -> (u32, Vec<u32>) {
    let pid = h.wait_running(id, index).await.pid.expect("pid");
    let members = eventually("grandchild spawned", || {
        let members = group_members(pid);
        (members.len() >= 2).then_some(members)
    })
    .await;
    (pid, members)
}

fn pidfiles(h: &Harness) -> usize {
    std::fs::read_dir(&h.run_dir)
        .map_or(0, |d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "pid")).count())
}

#[tokio::test]
async fn apply_is_idempotent_and_replaces_scales_and_removes() {
    let h = Harness::new("reconcile");
    let mut w = with_grandchild("app");
    w.process().replicas = 2;
    h.rt.apply(std::slice::from_ref(&w)).await;
    let (pid0, _) = family(&h, "app", 0).await;
    let (pid1, family1) = family(&h, "app", 1).await;
    eventually("one pidfile per replica", || (pidfiles(&h) == 2).then_some(())).await;

    let mut changes = h.rt.changes();
    changes.mark_unchanged();
    h.rt.apply(std::slice::from_ref(&w)).await;
    let same: Vec<_> = h.replicas("app").iter().map(|r| r.pid).collect();
    assert_eq!(same, vec![Some(pid0), Some(pid1)], "re-applying changes nothing");
    assert!(!changes.has_changed().expect("open"), "re-applying reports no change");

    w.restart_nonce = 1;
    h.rt.apply(std::slice::from_ref(&w)).await;
    assert!(changes.has_changed().expect("open"));
    assert!(family1.iter().all(|&p| !alive(p)), "old replica 1 and its grandchild are gone");
    let (new0, _) = family(&h, "app", 0).await;
    let (new1, new_family1) = family(&h, "app", 1).await;
    assert!(new0 != pid0 && new1 != pid1, "a new nonce replaces every replica");
    assert_eq!(h.replica("app", 0).expect("r0").restarts, 0, "a replacement is not a restart");

    w.process().replicas = 1;
    h.rt.apply(std::slice::from_ref(&w)).await;
    assert!(new_family1.iter().all(|&p| !alive(p)), "scaled-down replica and grandchild gone");
    let left: Vec<_> = h.replicas("app").iter().map(|r| (r.index, r.pid)).collect();
    assert_eq!(left, vec![(0, Some(new0))], "replica 0 untouched by scaling");

    w.process().replicas = 3;
    h.rt.apply(std::slice::from_ref(&w)).await;
    h.wait_running("app", 2).await;
    assert_eq!(h.replica("app", 0).expect("r0").pid, Some(new0), "scaling up leaves replica 0 alone");

    let everyone: Vec<u32> = h.replicas("app").iter().filter_map(|r| r.pid).flat_map(group_members).collect();
    assert!(everyone.len() >= 5, "{everyone:?}");
    h.rt.apply(&[]).await;
    assert!(h.rt.status().iter().all(|w| w.id != "app"), "removed from the status");
    let survivors: Vec<u32> = everyone.into_iter().filter(|&p| alive(p)).collect();
    assert!(survivors.is_empty(), "orphans left: {survivors:?}");
    assert_eq!(pidfiles(&h), 0, "pidfiles removed with their processes");
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_the_grace_period() {
    let h = Harness::new("grace");
    let mut stubborn = sh("stubborn", "trap '' TERM; sleep 1000");
    stubborn.process().stop_grace_ms = 500;
    let polite = sh("polite", "exec sleep 1000");
    h.rt.apply(&[stubborn, polite.clone()]).await;
    let (stubborn_pid, members) = family(&h, "stubborn", 0).await;
    let polite_pid = h.wait_running("polite", 0).await.pid.expect("pid");

    let started = Instant::now();
    h.rt.apply(&[polite]).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(480), "killed before the grace period ended: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(members.iter().all(|&p| !alive(p)), "stubborn group gone");
    assert!(!alive(stubborn_pid));

    let started = Instant::now();
    h.rt.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(1500), "a polite process stops at once");
    assert!(!alive(polite_pid));
}

#[tokio::test]
async fn shutdown_stops_everything_without_orphans() {
    let h = Harness::new("shutdown");
    let mut a = with_grandchild("a");
    a.process().replicas = 2;
    let b = with_grandchild("b");
    h.rt.apply(&[a.clone(), b]).await;
    let mut pids = Vec::new();
    for (id, index) in [("a", 0), ("a", 1), ("b", 0)] {
        pids.extend(family(&h, id, index).await.1);
    }
    h.rt.shutdown().await;
    let survivors: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(survivors.is_empty(), "orphans left: {survivors:?}");
    let phases: Vec<(Phase, Option<u32>)> =
        h.rt.status().iter().flat_map(|w| w.replicas.iter().map(|r| (r.phase, r.pid))).collect();
    assert_eq!(phases, vec![(Phase::Stopped, None); 3]);

    h.rt.apply(&[a]).await;
    assert!(h.rt.status().iter().flat_map(|w| &w.replicas).all(|r| r.phase == Phase::Stopped), "apply after shutdown");
}

#[tokio::test]
async fn a_new_runtime_kills_the_previous_runs_leftovers_only() {
    let dir = common::temp_dir("leftovers");
    let spawn = || std::process::Command::new("sleep").arg("1000").process_group(0).spawn().expect("spawn sleep");
    let mut ours = spawn();
    let mut stranger = spawn();
    let ours_pid = ours.id();
    let stranger_pid = stranger.id();
    std::fs::write(dir.join("app.0.pid"), format!("{ours_pid} {}\n", start_time(ours_pid))).expect("pidfile");
    // Same pid, different start time: a reused pid that must be left alone.
    std::fs::write(dir.join("web.0.pid"), format!("{stranger_pid} {}\n", start_time(stranger_pid) + 1))
        .expect("pidfile");

    let (tx, _rx) = mpsc::channel(8);
    let rt = ProcessRuntime::new(RuntimeConfig { port_range: 11000..11010, run_dir: dir.clone() }, tx);
    let status = eventually("recorded group killed", || ours.try_wait().expect("try_wait")).await;
    assert_eq!(status.signal(), Some(9));
    assert!(stranger.try_wait().expect("try_wait").is_none(), "a process whose start time differs survives");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0, "stale pidfiles removed");
    assert!(rt.status().is_empty(), "nothing is started before apply");

    stranger.kill().expect("kill");
    stranger.wait().expect("reap");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn dropping_the_runtime_stops_its_replicas() {
    let h = Harness::new("drop");
    h.rt.apply(&[with_grandchild("dropped")]).await;
    let (_, members) = family(&h, "dropped", 0).await;
    drop(h);
    eventually("replica stopped after the runtime was dropped", || members.iter().all(|&p| !alive(p)).then_some(()))
        .await;
}

#[tokio::test]
async fn a_new_revision_takes_over_one_replica_at_a_time() {
    let h = Harness::new("handover");
    let dir = common::temp_dir("handover-events");
    let events = dir.join("events");
    // Each replica notes when its stop begins and ends (stopping takes a moment).
    let script = format!(
        "trap 'echo \"begin $FERRY_WORKLOAD_ID/$FERRY_REPLICA\" >> {e}; sleep 0.2; \
         echo \"end $FERRY_WORKLOAD_ID/$FERRY_REPLICA\" >> {e}; exit 0' TERM; sleep 1000 & wait",
        e = events.display()
    );
    let mut old = sh("web@1", &script);
    old.process().replicas = 3;
    let other = sh("api@1", "exec sleep 1000");
    h.rt.apply(&[old.clone(), other.clone()]).await;
    let mut old_pids = Vec::new();
    for index in 0..3 {
        old_pids.push(h.wait_running("web@1", index).await.pid.expect("pid"));
    }
    let other_pid = h.wait_running("api@1", 0).await.pid.expect("pid");

    let mut new = sh("web@2", &format!("{script} # v2"));
    new.process().replicas = 3;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut changes = h.rt.changes();
    let apply = async {
        h.rt.apply(&[new.clone(), other.clone()]).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    // Every state observed along the way keeps at least two of web's three replicas up.
    let observe = async {
        let mut fewest = usize::MAX;
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let up =
                h.rt.status()
                    .iter()
                    .filter(|w| w.id.starts_with("web@"))
                    .flat_map(|w| &w.replicas)
                    .filter(|r| r.phase != Phase::Stopped)
                    .count();
            fewest = fewest.min(up);
            if finished {
                return fewest;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
        }
    };
    let ((), fewest) = tokio::join!(apply, observe);
    assert!(fewest >= 2, "the deployment dropped to {fewest} replicas during the handover");

    // Old replicas were stopped strictly one after the other, in index order.
    let log = std::fs::read_to_string(&events).expect("events");
    let lines: Vec<&str> = log.lines().collect();
    let expected: Vec<String> = (0..3).flat_map(|i| [format!("begin web@1/{i}"), format!("end web@1/{i}")]).collect();
    assert_eq!(lines, expected, "old replicas stopped one at a time");
    assert!(old_pids.iter().all(|&p| !alive(p)), "old replicas gone");

    for index in 0..3 {
        let pid = h.wait_running("web@2", index).await.pid.expect("pid");
        assert!(!old_pids.contains(&pid));
    }
    let ids: Vec<String> = h.rt.status().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["api@1", "web@2"], "the old revision left the status");
    assert_eq!(h.replica("api@1", 0).expect("api").pid, Some(other_pid), "another deployment is untouched");
    eventually("one pidfile per replica", || (pidfiles(&h) == 4).then_some(())).await;

    // A smaller new revision: extra old replicas go once the new ones started.
    let mut smaller = sh("web@3", "exec sleep 1000");
    smaller.process().replicas = 1;
    h.rt.apply(&[smaller, other]).await;
    let ids: Vec<String> = h.rt.status().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["api@1", "web@3"]);
    h.wait_running("web@3", 0).await;
    assert_eq!(h.replicas("web@3").len(), 1);
    eventually("one pidfile per replica", || (pidfiles(&h) == 2).then_some(())).await;
    h.rt.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn secrets_are_environment_variables_and_a_new_value_replaces_the_replicas() {
    use ferry_protocol::{SecretMaterial, SecretValue, WorkloadSpec};
    let h = Harness::new("secrets");
    let out = common::temp_dir("secrets-out");
    let mut w =
        sh("app@1", "printf '%s|%s|%s' \"$TOKEN\" \"$PLAIN\" \"$PORT\" > out.tmp && mv out.tmp out; exec sleep 1000");
    w.process().working_dir = Some(out.to_str().unwrap().to_owned());
    w.process().env.insert("PLAIN".into(), "plain".into());
    w.process().env.insert("TOKEN".into(), "from-env".into());
    let with_secret = |w: &ferry_runtime::Workload, value: &str| {
        let mut w = w.clone();
        let WorkloadSpec::Process(spec) = w.spec else { unreachable!() };
        let mut env = std::collections::BTreeMap::new();
        env.insert("TOKEN".to_string(), SecretValue::new(value));
        env.insert("PORT".to_string(), SecretValue::new("1"));
        w.spec = WorkloadSpec::ProcessWithSecrets { spec, secrets: SecretMaterial { env } };
        w
    };
    let read = || std::fs::read_to_string(out.join("out")).ok();

    let first = with_secret(&w, "s3cret-1");
    h.rt.apply(std::slice::from_ref(&first)).await;
    let pid = h.wait_running("app@1", 0).await.pid.expect("pid");
    let seen = eventually("the replica wrote its environment", read).await;
    let port = h.replica("app@1", 0).expect("r0").port.expect("port");
    // The secret overrides the spec's variable of the same name, but not what Ferry sets.
    assert_eq!(seen, format!("s3cret-1|plain|{port}"));

    // Re-applying the same secret changes nothing; a new value replaces the replica.
    h.rt.apply(std::slice::from_ref(&first)).await;
    assert_eq!(h.replica("app@1", 0).expect("r0").pid, Some(pid));
    std::fs::remove_file(out.join("out")).expect("remove");
    h.rt.apply(&[with_secret(&w, "s3cret-2")]).await;
    let seen = eventually("the new replica wrote its environment", read).await;
    assert!(seen.starts_with("s3cret-2|plain|"), "{seen}");
    assert_ne!(h.wait_running("app@1", 0).await.pid, Some(pid));
    assert!(!alive(pid));
    h.rt.apply(&[]).await;
    let _ = std::fs::remove_dir_all(&out);
}
