//! Startup, liveness and readiness checks with HTTP, TCP and exec probes.

mod common;

use common::{Harness, Process, check, http_server, sh};
use ferry_protocol::{Phase, Probe};

fn exec(args: &[&str]) -> Probe {
    Probe::Exec { command: args.iter().map(|a| (*a).to_owned()).collect() }
}

#[tokio::test]
async fn failing_readiness_degrades_without_restarting() {
    let h = Harness::new("readiness");
    let mut w = sh("idle", "exec sleep 1000");
    w.process().readiness = Some(check(Probe::Http { path: "/healthz".to_owned(), port: 0 }));
    h.rt.apply(&[w]).await;
    let degraded = h.wait_for("idle", 0, "degraded", |r| r.phase == Phase::Degraded).await;
    assert!(!degraded.ready);
    let reason = degraded.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("readiness probe failing: cannot connect"), "{reason}");
    // Readiness never restarts: a few more failing periods later it is the same process.
    h.wait_for("idle", 0, "still degraded after more probes", |r| {
        r.since_ms + 400 < common::now_ms() && r.phase == Phase::Degraded
    })
    .await;
    let later = h.replica("idle", 0).expect("listed");
    assert_eq!((later.pid, later.restarts), (degraded.pid, 0));
    h.rt.shutdown().await;
}

#[tokio::test]
async fn failing_liveness_and_startup_probes_restart_the_process() {
    let h = Harness::new("liveness");
    let mut live = sh("live", "exec sleep 1000");
    live.process().stop_grace_ms = 200;
    live.process().liveness = Some(check(Probe::Tcp { port: 0 }));
    let mut startup = sh("startup", "exec sleep 1000");
    startup.process().stop_grace_ms = 200;
    startup.process().startup = Some(check(exec(&["false"])));
    // Never reached: the startup probe gates it.
    startup.process().readiness = Some(check(exec(&["true"])));
    h.rt.apply(&[live, startup]).await;

    let first = h.wait_for("live", 0, "spawned", |r| r.pid.is_some()).await.pid;
    let restarted = h.wait_for("live", 0, "restarted", |r| r.restarts >= 1).await;
    let reason = restarted.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("liveness probe failed: cannot connect to 127.0.0.1:"), "{reason}");
    assert_ne!(restarted.pid, first);

    let s = h.wait_for("startup", 0, "restarted", |r| r.restarts >= 1).await;
    let reason = s.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("startup probe failed: exited with code 1"), "{reason}");
    assert!(!s.ready, "readiness must not run before startup passes");
    h.rt.shutdown().await;
}

#[tokio::test]
async fn exec_probes_see_the_replica_environment_and_time_out() {
    let h = Harness::new("exec");
    let mut ok = sh("exec-ok", "exec sleep 1000");
    ok.process().readiness =
        Some(check(exec(&["sh", "-c", "test \"$PORT\" -gt 0 && test \"$FERRY_WORKLOAD_ID\" = exec-ok"])));
    let mut failing = sh("exec-fail", "exec sleep 1000");
    failing.process().readiness = Some(check(exec(&["false"])));
    let mut slow = sh("exec-slow", "exec sleep 1000");
    let mut slow_check = check(exec(&["sleep", "5"]));
    slow_check.timeout_ms = 150;
    slow.process().readiness = Some(slow_check);
    h.rt.apply(&[ok, failing, slow]).await;

    h.wait_running("exec-ok", 0).await;
    let f = h.wait_for("exec-fail", 0, "degraded", |r| r.phase == Phase::Degraded).await;
    assert_eq!(f.reason.as_deref(), Some("readiness probe failing: exited with code 1"));
    let s = h.wait_for("exec-slow", 0, "degraded", |r| r.phase == Phase::Degraded).await;
    assert_eq!(s.reason.as_deref(), Some("readiness probe failing: timed out after 150 ms"));
    // Timed-out probes are killed, not left sleeping: after many timed-out probes, at most the
    // one in flight exists.
    h.wait_for("exec-slow", 0, "degraded for a while", |r| r.since_ms + 600 < common::now_ms()).await;
    assert!(probe_sleepers() <= 1, "timed-out probes left behind: {}", probe_sleepers());
    h.rt.shutdown().await;
    common::eventually("no probe left after shutdown", || (probe_sleepers() == 0).then_some(())).await;
}

/// Live `sleep 5` processes (only the slow exec probe runs that).
fn probe_sleepers() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x005\x00") && common::alive(pid)
        })
        .count()
}

#[tokio::test]
async fn tcp_readiness_passes_and_readiness_recovers() {
    let h = Harness::new("tcp");
    let mut server = http_server("tcp");
    server.process().readiness = Some(check(Probe::Tcp { port: 0 }));
    let dir = common::temp_dir("flip");
    let mut flip = sh("flip", "sleep 0.6; touch ready; exec sleep 1000");
    flip.process().working_dir = Some(dir.display().to_string());
    let mut flip_check = check(exec(&["test", "-f", "ready"]));
    flip_check.failure_threshold = 1;
    flip_check.success_threshold = 2;
    flip.process().readiness = Some(flip_check);
    h.rt.apply(&[server, flip]).await;

    h.wait_running("tcp", 0).await;
    let degraded = h.wait_for("flip", 0, "degraded first", |r| r.phase == Phase::Degraded).await;
    let recovered = h.wait_running("flip", 0).await;
    assert_eq!(recovered.pid, degraded.pid);
    assert_eq!(recovered.reason, None, "a recovered replica that never exited has no reason");
    h.rt.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
