//! `ferry-bench basics`: the figures of BENCHMARKS.md's first sections, against an in-process
//! control plane:
//!
//! * frame codec throughput (encode and decode, messages/s and MiB/s) for a status report and a
//!   100-line log batch;
//! * enrollment (token → CSR → signed certificate over QUIC) and first mTLS session
//!   (handshake + Hello/Welcome) latency on loopback, as p50/p90/p99/max over N runs;
//! * SSE log throughput: a raw agent pushes 50,000 lines in batches of 500 over one telemetry
//!   stream (acks awaited in a pipeline) into the default SQLite store, once with nobody
//!   watching (ingest: first send → last ack) and once followed by an SSE client (first send →
//!   last event received);
//! * POST /v1/deployments → all replicas healthy, for a trivial process (p50/p99 over N runs, at
//!   most 100).

use std::time::{Duration, Instant};

use ferry_protocol::*;
use ferry_tests::{ControlPlane, raw};

use crate::stats::percentiles;

const LOG_LINES: u64 = 50_000;
const LOG_BATCH: u64 = 500;

fn status_message() -> AgentMessage {
    AgentMessage::Status(Status {
        generation: 42,
        workloads: (0..4)
            .map(|w| WorkloadStatus {
                id: format!("deploy-{w:03}"),
                replicas: (0..3)
                    .map(|i| ReplicaStatus {
                        index: i,
                        phase: Phase::Running,
                        pid: Some(40_000 + i),
                        port: Some(41_000 + i as u16),
                        ready: true,
                        restarts: 0,
                        reason: None,
                        since_ms: 1_763_900_000_000,
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn log_batch() -> AgentMessage {
    AgentMessage::LogBatch(LogBatch {
        source: "deploy-001/0".into(),
        first_seq: 1_000,
        lines: (0..100)
            .map(|i| LogLine {
                ts_ms: 1_763_900_000_000 + i,
                stream: LogStream::Stdout,
                line: format!("127.0.0.1 - - \"GET /api/v1/items/{i} HTTP/1.1\" 200 512 \"-\" \"curl/8.5\""),
            })
            .collect(),
    })
}

fn codec(name: &str, msg: &AgentMessage, iterations: u32) {
    let frame = encode_frame(msg).expect("encodes");
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(encode_frame(std::hint::black_box(msg)).expect("encodes"));
    }
    let enc = start.elapsed();
    let start = Instant::now();
    let mut decoder = FrameDecoder::default();
    for _ in 0..iterations {
        decoder.push(std::hint::black_box(&frame));
        std::hint::black_box(decoder.decode::<AgentMessage>().expect("decodes").expect("complete"));
    }
    let dec = start.elapsed();
    let mib = |d: Duration| frame.len() as f64 * iterations as f64 / d.as_secs_f64() / (1024.0 * 1024.0);
    let rate = |d: Duration| iterations as f64 / d.as_secs_f64();
    println!(
        "codec {name:<12} frame {:>6} B  encode {:>10.0} msg/s {:>8.1} MiB/s  decode {:>10.0} msg/s {:>8.1} MiB/s",
        frame.len(),
        rate(enc),
        mib(enc),
        rate(dec),
        mib(dec)
    );
}

/// Options of `ferry-bench basics`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Enrollment/session runs (deploy latency uses at most 100 per replica count).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
}

pub async fn run(args: Args) {
    let runs = args.runs as usize;
    codec("status", &status_message(), 200_000);
    codec("log-100", &log_batch(), 20_000);

    let cp = ControlPlane::spawn().await;
    let fp = cp.ca().fingerprint();
    let mut enroll = Vec::with_capacity(runs);
    let mut session = Vec::with_capacity(runs);
    let mut total = Vec::with_capacity(runs);
    for _ in 0..runs {
        let token = cp.token(600, &[]).await;
        let t0 = Instant::now();
        let id = raw::enroll(cp.quic_addr(), &token, &fp).await.expect("enrolls");
        let t1 = Instant::now();
        let (c, ..) = raw::session(cp.quic_addr(), &id).await.expect("session");
        let t2 = Instant::now();
        ferry_transport::close(&c.conn, CloseCode::Normal, "bench");
        enroll.push(t1 - t0);
        session.push(t2 - t1);
        total.push(t2 - t0);
    }
    percentiles("enrollment", enroll);
    percentiles("first mTLS session", session);
    percentiles("enrollment + first session", total);

    log_throughput().await;
    deploy_latency(runs.min(100)).await;
}

/// POST /v1/deployments → every replica running and ready, as seen through the API, for a
/// trivial process (`sleep`, no probes, 1 and 2 replicas) on an in-process agent that has been
/// quiet for 150 ms. The status is polled every 2 ms, so figures carry up to 2 ms of polling
/// granularity.
async fn deploy_latency(runs: usize) {
    let cp = ControlPlane::spawn().await;
    let agent = ferry_tests::Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    for replicas in [1u32, 2] {
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            let body = serde_json::json!({
                "deploymentName": format!("bench-{replicas}-{i}"),
                "environment": "development",
                "configuration": { "replicas": replicas, "command": "/bin/sleep", "args": ["3600"] }
            });
            let t0 = Instant::now();
            let (status, res) = cp.api(reqwest::Method::POST, "/v1/deployments", Some(body)).await;
            assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{res}");
            let id = res["deployment"]["id"].as_str().expect("id").to_string();
            loop {
                let (_, st) = cp.api(reqwest::Method::GET, &format!("/v1/deployments/{id}/status"), None).await;
                if st["status"] == "running" {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(20), "deployment never became healthy: {st}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(t0.elapsed());
            let (status, res) = cp.api(reqwest::Method::DELETE, &format!("/v1/deployments/{id}"), None).await;
            assert_eq!(status, reqwest::StatusCode::ACCEPTED);
            // Not measured: let the delete finish and the agent's status rate limit (one report
            // per 25 ms) lapse, so that every run measures a POST to a quiet agent.
            let op = res["operation"]["href"].as_str().expect("operation").to_string();
            while cp.api(reqwest::Method::GET, &op, None).await.1["status"] != "succeeded" {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        percentiles(&format!("POST → {replicas} replica(s) healthy"), samples);
    }
    drop(agent);
}

/// Pushes `LOG_LINES` lines for `deployment` over a new telemetry stream, writing batches
/// back to back while the acks are read; returns the time from first send to last ack.
async fn push_logs(conn: &quinn::Connection, deployment: &str) -> Duration {
    let (mut send, mut recv) = conn.open_bi().await.expect("telemetry stream");
    let source = format!("{deployment}/0/bench");
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for first in (1..=LOG_LINES).step_by(LOG_BATCH as usize) {
            let lines = (first..first + LOG_BATCH)
                .map(|i| LogLine {
                    ts_ms: 1_763_900_000_000 + i,
                    stream: LogStream::Stdout,
                    line: format!("127.0.0.1 - - \"GET /api/v1/items/{i} HTTP/1.1\" 200 512 \"-\" \"curl/8.5\""),
                })
                .collect();
            let msg = AgentMessage::LogBatch(LogBatch { source: source.clone(), first_seq: first, lines });
            ferry_transport::write_frame(&mut send, &msg).await.expect("batch sent");
        }
        send
    });
    loop {
        match ferry_transport::read_frame_timeout::<ServerMessage>(&mut recv, Duration::from_secs(20)).await {
            Ok(Some(ServerMessage::TelemetryAck(ack))) if ack.last_seq == LOG_LINES => break,
            Ok(Some(ServerMessage::TelemetryAck(_))) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    let _ = writer.await.expect("writer").finish();
    elapsed
}

/// Counts SSE `log` events until `LOG_LINES` arrived; returns when the last one did.
async fn follow(mut res: reqwest::Response) -> Instant {
    let (mut seen, mut partial) = (0u64, String::new());
    while seen < LOG_LINES {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.chunk())
            .await
            .expect("SSE events keep coming")
            .expect("SSE body")
            .expect("SSE stream open");
        partial.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        let complete = partial.rfind('\n').map_or(0, |i| i + 1);
        seen += partial[..complete].lines().filter(|l| l.starts_with("id:")).count() as u64;
        partial.drain(..complete);
    }
    Instant::now()
}

async fn log_throughput() {
    let cp = ControlPlane::builder().heartbeat(Duration::from_secs(30)).spawn().await;
    let token = cp.token(600, &[]).await;
    let id = raw::enroll(cp.quic_addr(), &token, &cp.ca().fingerprint()).await.expect("enrolls");
    let (c, _control_send, _control_recv, _) = raw::session(cp.quic_addr(), &id).await.expect("session");
    let rate = |d: Duration| LOG_LINES as f64 / d.as_secs_f64();

    cp.running_store().insert_test_deployment("bench-ingest").await.expect("deployment");
    let ingest = push_logs(&c.conn, "bench-ingest").await;
    println!(
        "log ingest (no watcher)      {LOG_LINES} lines in batches of {LOG_BATCH}: {:>7.0} ms  {:>9.0} lines/s",
        ingest.as_secs_f64() * 1000.0,
        rate(ingest)
    );

    cp.running_store().insert_test_deployment("bench-sse").await.expect("deployment");
    let res = reqwest::Client::new()
        .get(format!("{}/v1/logs/stream/bench-sse?tail=0", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .send()
        .await
        .expect("SSE stream");
    assert!(res.status().is_success(), "SSE: {}", res.status());
    let follower = tokio::spawn(follow(res));
    let start = Instant::now();
    let ingest = push_logs(&c.conn, "bench-sse").await;
    let last_event = follower.await.expect("follower");
    println!(
        "log ingest (SSE following)   {LOG_LINES} lines in batches of {LOG_BATCH}: {:>7.0} ms  {:>9.0} lines/s",
        ingest.as_secs_f64() * 1000.0,
        rate(ingest)
    );
    let e2e = last_event - start;
    println!(
        "SSE log throughput           first send → last event:          {:>7.0} ms  {:>9.0} lines/s",
        e2e.as_secs_f64() * 1000.0,
        rate(e2e)
    );
    ferry_transport::close(&c.conn, CloseCode::Normal, "bench");
}
