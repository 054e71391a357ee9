//! `ferry-bench`: prints the figures recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p ferry-tests --bin ferry-bench -- [--runs N]
//! ```
//!
//! * frame codec throughput (encode and decode, messages/s and MiB/s) for a status report and a
//!   100-line log batch;
//! * enrollment (token → CSR → signed certificate over QUIC) and first mTLS session
//!   (handshake + Hello/Welcome) latency against an in-process control plane on loopback,
//!   as p50/p90/p99/max over N runs.

use std::time::{Duration, Instant};

use ferry_protocol::*;
use ferry_tests::{ControlPlane, raw};

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

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} n={:<4} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        samples.len(),
        ms(p(0.50)),
        ms(p(0.90)),
        ms(p(0.99)),
        ms(*samples.last().expect("samples"))
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    ferry_certs::tls::provider();

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
}
