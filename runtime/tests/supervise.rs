//! Spawning, restarting and log capture with real child processes.

mod common;

use std::time::Duration;

use common::{Harness, Process, http_get, http_server, sh, workload};
use ferry_protocol::{LogStream, Phase, Probe, RestartPolicy};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_replicas_get_distinct_ports_and_a_killed_one_is_restarted() {
    let h = Harness::new("http");
    let mut w = http_server("web");
    w.process().replicas = 2;
    w.process().readiness = Some(common::check(Probe::Http { path: "/".to_owned(), port: 0 }));
    h.rt.apply(std::slice::from_ref(&w)).await;

    let r0 = h.wait_running("web", 0).await;
    let r1 = h.wait_running("web", 1).await;
    let (p0, p1) = (r0.port.expect("port 0"), r1.port.expect("port 1"));
    assert_ne!(p0, p1);
    for (port, index) in [(p0, 0), (p1, 1)] {
        let response = http_get(port).await.expect("GET answered");
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        assert!(response.ends_with(&format!("ok {index}")), "{response}");
    }

    let old_pid = r0.pid.expect("pid");
    kill(Pid::from_raw(i32::try_from(old_pid).expect("pid fits")), Signal::SIGKILL).expect("kill -9");
    let restarted = h
        .wait_for("web", 0, "restarted and ready", |r| {
            r.restarts == 1 && r.ready && r.phase == Phase::Running && r.pid.is_some_and(|p| p != old_pid)
        })
        .await;
    assert_eq!(restarted.port, Some(p0), "the port survives restarts");
    assert_eq!(restarted.reason.as_deref(), Some("killed by signal 9"), "the last exit stays as the reason");
    let other = h.replica("web", 1).expect("replica 1");
    assert_eq!((other.pid, other.restarts, other.phase), (r1.pid, 0, Phase::Running), "replica 1 untouched");
    assert!(http_get(p0).await.is_some_and(|r| r.ends_with("ok 0")));
    h.rt.shutdown().await;
}

#[tokio::test]
async fn crash_loops_back_off_and_never_policy_keeps_the_verdict() {
    let h = Harness::new("crash");
    let crashing = sh("crash", "exit 3");
    let mut never_fail = sh("never-fail", "exit 3");
    never_fail.process().restart_policy = RestartPolicy::Never;
    let mut never_ok = sh("never-ok", "exit 0");
    never_ok.process().restart_policy = RestartPolicy::Never;
    let mut always = sh("always", "exit 0");
    always.process().restart_policy = RestartPolicy::Always;
    let started = Instant::now();
    h.rt.apply(&[crashing, never_fail, never_ok, always]).await;

    let failed = h.wait_for("never-fail", 0, "failed", |r| r.phase == Phase::Failed).await;
    assert_eq!(failed.reason.as_deref(), Some("exited with code 3"));
    assert_eq!((failed.restarts, failed.pid, failed.ready), (0, None, false));
    let stopped = h.wait_for("never-ok", 0, "stopped", |r| r.phase == Phase::Stopped).await;
    assert_eq!(stopped.reason.as_deref(), Some("exited with code 0"));

    let looping = h.wait_for("crash", 0, "three restarts", |r| r.restarts >= 3).await;
    // 100 + 200 + 400 ms of backoff at least; without backoff this would take a few ms.
    assert!(started.elapsed() >= Duration::from_millis(650), "restarted too fast: {:?}", started.elapsed());
    assert!(looping.restarts <= 5, "backoff should slow restarts down: {}", looping.restarts);
    let crash = h.wait_for("crash", 0, "in backoff", |r| r.phase == Phase::Failed).await;
    assert!(crash.reason.as_deref().is_some_and(|r| r.contains("code 3") && r.contains("restarting in")), "{crash:?}");
    h.wait_for("always", 0, "restarted after a clean exit", |r| r.restarts >= 2).await;

    let later = h.replica("never-fail", 0).expect("still listed");
    assert_eq!((later.phase, later.restarts), (Phase::Failed, 0), "Never does not restart");
    h.rt.shutdown().await;
}

#[tokio::test]
async fn spawn_failures_are_reported() {
    let h = Harness::new("spawn");
    let mut missing = workload("missing", "/nonexistent/ferry-test-binary", &[]);
    missing.process().restart_policy = RestartPolicy::Never;
    let mut bad_dir = sh("bad-dir", "true");
    bad_dir.process().restart_policy = RestartPolicy::Never;
    bad_dir.process().working_dir = Some("/nonexistent/ferry-dir".to_owned());
    h.rt.apply(&[missing, bad_dir]).await;
    for id in ["missing", "bad-dir"] {
        let r = h.wait_for(id, 0, "failed", |r| r.phase == Phase::Failed).await;
        assert_eq!(r.reason.as_deref(), Some("spawn failed: No such file or directory"));
    }
    h.rt.shutdown().await;
}

#[tokio::test]
async fn output_lines_arrive_tagged_with_stream_and_replica() {
    let mut h = Harness::new("logs");
    let dir = common::temp_dir("logs-cwd");
    let mut w = sh(
        "logs",
        "echo \"out $FERRY_REPLICA port=$PORT id=$FERRY_WORKLOAD_ID foo=$FOO home=${HOME:-unset} cwd=$(pwd)\"; \
         printf 'err %s\\r\\n' \"$FERRY_REPLICA\" >&2; exec sleep 1000",
    );
    w.process().replicas = 2;
    w.process().env.insert("FOO".to_owned(), "bar".to_owned());
    w.process().env.insert("PORT".to_owned(), "1".to_owned());
    w.process().working_dir = Some(dir.display().to_string());
    h.rt.apply(&[w]).await;

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 4 {
        let line = tokio::time::timeout_at(deadline, h.logs.recv()).await.expect("4 lines in time").expect("open");
        lines.push(line);
    }
    for replica in 0..2u32 {
        let port = h.wait_running("logs", replica).await.port.expect("port");
        let out = lines.iter().find(|l| l.replica == replica && l.line.stream == LogStream::Stdout).expect("stdout");
        let expected = format!("out {replica} port={port} id=logs foo=bar home=unset cwd={}", dir.display());
        assert_eq!(out.line.line, expected);
        assert_eq!(out.workload_id, "logs");
        assert!(out.line.ts_ms > 0);
        let err = lines.iter().find(|l| l.replica == replica && l.line.stream == LogStream::Stderr).expect("stderr");
        assert_eq!(err.line.line, format!("err {replica}"));
    }
    assert_eq!(h.rt.dropped_log_lines(), 0);
    h.rt.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn command_and_args_expand_references_to_the_final_environment() {
    let mut h = Harness::new("expand");
    // `$1`… are the shell's; `$(NAME)` are Ferry's, expanded before anything runs (no shell).
    let mut w = workload(
        "expand",
        "$(SHELL_BIN)",
        &[
            "-c",
            "echo \"$1|$2|$3|$4|$5\"; exec sleep 1000",
            "sh",
            "$(FERRY_REPLICA)",
            "$$(PORT)",
            "$(NOPE)",
            "x$(GREETING)y",
            "$(PORT)",
        ],
    );
    w.process().env.insert("SHELL_BIN".to_owned(), "sh".to_owned());
    w.process().env.insert("GREETING".to_owned(), "hello world".to_owned());
    h.rt.apply(&[w]).await;

    let port = h.wait_running("expand", 0).await.port.expect("port");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = tokio::time::timeout_at(deadline, h.logs.recv()).await.expect("a line in time").expect("open");
    assert_eq!(line.line.line, format!("0|$(PORT)|$(NOPE)|xhello worldy|{port}"));
    h.rt.shutdown().await;
}

#[tokio::test]
async fn a_server_given_its_port_as_an_argument_passes_its_readiness_probe() {
    let h = Harness::new("expand-http");
    let dir = common::temp_dir("expand-http-cwd");
    // README's example: `python3 -m http.server $(PORT)`.
    let mut w = workload("web", common::python(), &["-m", "http.server", "$(PORT)", "--bind", "127.0.0.1"]);
    w.process().working_dir = Some(dir.display().to_string());
    w.process().readiness = Some(common::check(Probe::Http { path: "/".to_owned(), port: 0 }));
    h.rt.apply(&[w]).await;

    let port = h.wait_running("web", 0).await.port.expect("port");
    let response = http_get(port).await.expect("an answer on $PORT");
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
    h.rt.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
