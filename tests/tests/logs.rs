//! The log pipeline end to end: telemetry streams on a live agent connection, acks, dedupe,
//! the REST listing and the Server-Sent-Event stream with `Last-Event-ID` resume.

use std::time::Duration;

use ferry_protocol::{
    AgentMessage, CloseCode, LogBatch, LogLine, LogStream, MetricBatch, MetricSample, ServerMessage, TelemetryAck,
};
use ferry_tests::{ControlPlane, raw};
use quinn::{RecvStream, SendStream};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A control plane whose sessions survive tests that do not heartbeat.
async fn control_plane() -> ControlPlane {
    ControlPlane::builder().heartbeat(Duration::from_secs(30)).spawn().await
}

/// An enrolled raw agent with a live session (its control stream kept open).
struct RawAgent {
    id: raw::Identity,
    c: raw::Conn,
    _control: (SendStream, RecvStream),
}

impl RawAgent {
    async fn connect(cp: &ControlPlane) -> Self {
        let token = cp.token(600, &[]).await;
        let id = raw::enroll(cp.quic_addr(), &token, &cp.ca().fingerprint()).await.unwrap();
        Self::reconnect(cp, id).await
    }

    async fn reconnect(cp: &ControlPlane, id: raw::Identity) -> Self {
        let (c, send, recv, _) = raw::session(cp.quic_addr(), &id).await.unwrap();
        Self { id, c, _control: (send, recv) }
    }

    async fn telemetry(&self) -> Telemetry {
        let (send, recv) = self.c.conn.open_bi().await.unwrap();
        Telemetry { send, recv }
    }
}

struct Telemetry {
    send: SendStream,
    recv: RecvStream,
}

impl Telemetry {
    async fn exchange(&mut self, msg: &AgentMessage) -> Option<ServerMessage> {
        ferry_transport::write_frame(&mut self.send, msg).await.ok()?;
        ferry_transport::read_frame_timeout::<ServerMessage>(&mut self.recv, TIMEOUT).await.ok()?
    }

    /// Sends a batch and returns the acknowledged last sequence number.
    async fn logs(&mut self, source: &str, first_seq: u64, lines: Vec<LogLine>) -> u64 {
        let msg = AgentMessage::LogBatch(LogBatch { source: source.into(), first_seq, lines });
        match self.exchange(&msg).await {
            Some(ServerMessage::TelemetryAck(TelemetryAck { source: s, last_seq })) if s == source => last_seq,
            other => panic!("expected an ack for {source}, got {other:?}"),
        }
    }
}

fn lines(tag: &str, n: usize, stream: LogStream) -> Vec<LogLine> {
    (0..n).map(|i| LogLine { ts_ms: 1_700_000_000_000 + i as u64, stream, line: format!("{tag} {i}") }).collect()
}

fn texts(data: &Value) -> Vec<String> {
    data.as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap().to_string()).collect()
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    if let Some(field) = field {
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn batches_are_acknowledged_stored_once_and_listed() {
    let cp = control_plane().await;
    cp.running_store().insert_test_deployment("dep-web").await.unwrap();
    let agent = RawAgent::connect(&cp).await;
    let mut t = agent.telemetry().await;
    let src = "dep-web/0/00ff00ff00ff00ff";
    assert_eq!(t.logs(src, 1, lines("a", 3, LogStream::Stdout)).await, 3);
    // Resending (the agent missed the ack) and overlapping store nothing twice.
    assert_eq!(t.logs(src, 1, lines("a", 3, LogStream::Stdout)).await, 3);
    assert_eq!(t.logs(src, 2, lines("b", 4, LogStream::Stdout)).await, 5);
    // A second stream, another replica, stderr.
    let mut t2 = agent.telemetry().await;
    assert_eq!(t2.logs("dep-web/1/00ff00ff00ff00ff", 1, lines("err", 2, LogStream::Stderr)).await, 2);
    // Lines of a deployment that does not exist are acknowledged and dropped.
    assert_eq!(t.logs("dep-ghost/0/b", 7, lines("g", 2, LogStream::Stdout)).await, 8);
    // Metrics are acknowledged (not stored yet).
    let sample = MetricSample { ts_ms: 1, name: "cpu".into(), labels: Default::default(), value: 0.5 };
    let metrics = AgentMessage::MetricBatch(MetricBatch { source: src.into(), first_seq: 4, samples: vec![sample] });
    assert!(matches!(t.exchange(&metrics).await, Some(ServerMessage::TelemetryAck(a)) if a.last_seq == 4));

    let (status, body) = cp.api(Method::GET, "/v1/logs/deployments/dep-web", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(texts(&body["data"]), ["a 0", "a 1", "a 2", "b 2", "b 3", "err 0", "err 1"]);
    let first = &body["data"][0];
    assert_eq!(first["agentId"], agent.id.agent_id.as_str());
    assert_eq!((first["replica"].as_i64(), first["stream"].as_str()), (Some(0), Some("stdout")));
    assert_eq!(first["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(body["nextAfter"], body["data"][6]["id"]);

    // Filters and paging.
    let cp = &cp;
    let get = |q: &str| {
        let path = format!("/v1/logs/deployments/dep-web?{q}");
        async move { cp.api(Method::GET, &path, None).await }
    };
    let (_, body) = get("stream=stderr").await;
    assert_eq!(texts(&body["data"]), ["err 0", "err 1"]);
    let (_, page1) = get("limit=2").await;
    assert_eq!(texts(&page1["data"]), ["a 0", "a 1"]);
    let (_, page2) = get(&format!("limit=2&after={}", page1["nextAfter"])).await;
    assert_eq!(texts(&page2["data"]), ["a 2", "b 2"]);
    let (_, body) = get("since=2023-11-14T22:13:20.003Z&stream=stdout").await;
    assert_eq!(texts(&body["data"]), ["b 3"]);
    let (_, body) = get("since=1700000000001").await;
    assert_eq!(texts(&body["data"]), ["a 1", "a 2", "b 2", "b 3", "err 1"]);
    let (_, body) = get(&format!("after={}", body["nextAfter"])).await;
    assert_eq!((texts(&body["data"]).len(), &body["nextAfter"]), (0, &Value::Null));
    let (status, _) = cp.api(Method::GET, "/v1/logs/deployments/dep-ghost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_the_seed_error_format() {
    let cp = control_plane().await;
    cp.running_store().insert_test_deployment("dep-x").await.unwrap();
    for path in ["/v1/logs/deployments/dep-none", "/v1/logs/stream/dep-none"] {
        let (status, body) = cp.api(Method::GET, path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "DEPLOY_006", None);
        assert_eq!(body["error"]["details"]["deploymentId"], "dep-none");
        let (status, body) = cp.request(Method::GET, path, None, None).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001", None);
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("limit=ten", "limit"),
        ("stream=stdin", "stream"),
        ("since=yesterday", "since"),
        ("since=-5", "since"),
        ("after=-1", "after"),
    ] {
        let (status, body) = cp.api(Method::GET, &format!("/v1/logs/deployments/dep-x?{query}"), None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_001", Some(field));
    }
    for (query, field) in [("tail=5001", "tail"), ("tail=-1", "tail"), ("after=x", "after"), ("stream=both", "stream")]
    {
        let (status, body) = cp.api(Method::GET, &format!("/v1/logs/stream/dep-x?{query}"), None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_001", Some(field));
    }
    let (status, body) = cp.api(Method::GET, "/v1/logs/deployments/dep-x?follow=1", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_001", None);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/logs/stream/dep-x", cp.base_url))
        .bearer_auth(&cp.admin_token)
        .header("Last-Event-ID", "latest")
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_error(status, &res.json().await.unwrap(), StatusCode::BAD_REQUEST, "VALIDATION_001", Some("Last-Event-ID"));
}

/// A minimal Server-Sent-Events reader.
struct Events {
    res: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(cp: &ControlPlane, query: &str, last_event_id: Option<i64>) -> Self {
        let mut req = reqwest::Client::new()
            .get(format!("{}/v1/logs/stream/dep-sse{query}", cp.base_url))
            .bearer_auth(&cp.admin_token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = tokio::time::timeout(TIMEOUT, req.send()).await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Self { res, buf: String::new() }
    }

    /// The next `log` event as (id, data), or `None` if nothing arrives within `wait` or the stream ends.
    async fn next(&mut self, wait: Duration) -> Option<(i64, Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.strip_prefix(' ').unwrap_or(v))
                };
                if let (Some(id), Some(data)) = (field("id:"), field("data:")) {
                    assert_eq!(field("event:"), Some("log"), "{block}");
                    let data: Value = serde_json::from_str(data).unwrap();
                    let id: i64 = id.parse().unwrap();
                    assert_eq!(data["id"], id, "the event id is the line id");
                    return Some((id, data));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk()).await.ok()?.unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn take(&mut self, n: usize) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (id, data) = self.next(TIMEOUT).await.unwrap_or_else(|| panic!("event {} of {n}", out.len() + 1));
            out.push((id, data["line"].as_str().unwrap().to_string()));
        }
        out
    }

    /// Asserts that nothing more arrives for a while (longer than the 1 s re-query interval).
    async fn assert_quiet(&mut self) {
        if let Some(extra) = self.next(Duration::from_millis(1_500)).await {
            panic!("unexpected extra event {extra:?}");
        }
    }
}

fn line_texts(events: &[(i64, String)]) -> Vec<&str> {
    events.iter().map(|e| e.1.as_str()).collect()
}

#[tokio::test]
async fn sse_follows_live_and_resumes_without_gaps_or_duplicates() {
    let cp = control_plane().await;
    cp.running_store().insert_test_deployment("dep-sse").await.unwrap();
    let agent = RawAgent::connect(&cp).await;
    let mut t = agent.telemetry().await;
    let src = "dep-sse/0/boot";
    t.logs(src, 1, lines("old", 5, LogStream::Stdout)).await;

    // Without a cursor: the newest lines (all 5 here, the default tail is 100), then live ones.
    let mut events = Events::open(&cp, "", None).await;
    let first = events.take(5).await;
    assert_eq!(line_texts(&first), ["old 0", "old 1", "old 2", "old 3", "old 4"]);
    t.logs(src, 6, lines("live", 3, LogStream::Stdout)).await;
    let live = events.take(3).await;
    assert_eq!(line_texts(&live), ["live 0", "live 1", "live 2"]);
    assert!(first.iter().chain(&live).collect::<Vec<_>>().windows(2).all(|w| w[0].0 < w[1].0));
    events.assert_quiet().await;
    let last_seen = live[2].0;

    // Disconnect; lines keep coming (some on stderr, some resent); reconnect with Last-Event-ID.
    drop(events);
    t.logs(src, 9, lines("missed", 2, LogStream::Stdout)).await;
    t.logs(src, 6, lines("live", 3, LogStream::Stdout)).await;
    t.logs("dep-sse/1/boot", 1, lines("missed-err", 2, LogStream::Stderr)).await;
    let mut events = Events::open(&cp, "?tail=1", Some(last_seen)).await;
    let resumed = events.take(4).await;
    assert_eq!(line_texts(&resumed), ["missed 0", "missed 1", "missed-err 0", "missed-err 1"]);
    assert!(resumed[0].0 > last_seen);
    events.assert_quiet().await;
    t.logs(src, 11, lines("after", 1, LogStream::Stdout)).await;
    assert_eq!(line_texts(&events.take(1).await), ["after 0"]);
    drop(events);

    // `after=` in the URL works like the header; `stream=` filters; `tail=` picks the start.
    let mut events = Events::open(&cp, &format!("?after={last_seen}&stream=stderr"), None).await;
    assert_eq!(line_texts(&events.take(2).await), ["missed-err 0", "missed-err 1"]);
    events.assert_quiet().await;
    let mut events = Events::open(&cp, "?tail=2", None).await;
    assert_eq!(line_texts(&events.take(2).await), ["missed-err 1", "after 0"]);
    let mut events = Events::open(&cp, "?tail=0", None).await;
    events.assert_quiet().await;
    t.logs(src, 12, lines("new", 1, LogStream::Stdout)).await;
    assert_eq!(line_texts(&events.take(1).await), ["new 0"]);
    // Lines stored by another control-plane replica wake nobody here: the periodic re-query
    // picks them up.
    let other = lines("elsewhere", 1, LogStream::Stdout);
    cp.running_store().insert_log_batch("agent-x", "dep-sse", 0, "dep-sse/0/other", 1, &other, 0).await.unwrap();
    assert_eq!(line_texts(&events.take(1).await), ["elsewhere 0"]);
}

#[tokio::test]
async fn sse_streams_end_when_the_control_plane_stops() {
    let mut cp = control_plane().await;
    cp.running_store().insert_test_deployment("dep-sse").await.unwrap();
    let mut events = Events::open(&cp, "", None).await;
    tokio::time::timeout(TIMEOUT, cp.stop()).await.expect("shutdown is not held up by an open SSE stream");
    let end = tokio::time::timeout(TIMEOUT, events.res.chunk()).await.expect("the stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn protocol_violations_close_only_the_offending_connection() {
    let cp = control_plane().await;
    cp.running_store().insert_test_deployment("dep-p").await.unwrap();
    let good = RawAgent::connect(&cp).await;
    let mut good_t = good.telemetry().await;
    assert_eq!(good_t.logs("dep-p/0/good", 1, lines("g", 1, LogStream::Stdout)).await, 1);
    let bad = RawAgent::connect(&cp).await;
    let bad_id = bad.id.clone();

    let big_line = vec![LogLine { ts_ms: 1, stream: LogStream::Stdout, line: "x".repeat(16 * 1024 + 1) }];
    let cases: Vec<(&str, &str, u64, Vec<LogLine>)> = vec![
        ("malformed source", "dep-p/zero/boot", 1, lines("b", 1, LogStream::Stdout)),
        ("source without boot id", "dep-p/0", 1, lines("b", 1, LogStream::Stdout)),
        ("oversized batch", "dep-p/0/bad", 1, lines("b", 5_001, LogStream::Stdout)),
        ("oversized line", "dep-p/0/bad", 1, big_line),
        ("sequence 0", "dep-p/0/bad", 0, lines("b", 1, LogStream::Stdout)),
    ];
    let mut bad = bad;
    for (what, source, first_seq, batch) in cases {
        let mut t = bad.telemetry().await;
        let msg = AgentMessage::LogBatch(LogBatch { source: source.into(), first_seq, lines: batch });
        assert_eq!(t.exchange(&msg).await, None, "{what}: no ack");
        assert_eq!(raw::closed_with(&bad.c.conn).await, Some(CloseCode::ProtocolError), "{what}");
        // The well-behaved agent's stream is unaffected.
        assert_eq!(good_t.logs("dep-p/0/good", 2, lines("ok", 1, LogStream::Stdout)).await, 2, "{what}");
        bad = RawAgent::reconnect(&cp, bad_id.clone()).await;
    }
    // Control messages belong on the control stream: one on a telemetry stream is refused.
    let mut t = bad.telemetry().await;
    assert_eq!(t.exchange(&AgentMessage::Heartbeat(ferry_protocol::Heartbeat { seq: 1, sent_at_ms: 0 })).await, None);
    assert_eq!(raw::closed_with(&bad.c.conn).await, Some(CloseCode::ProtocolError));
    let (status, body) = cp.api(Method::GET, "/v1/logs/deployments/dep-p", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(texts(&body["data"]), ["g 0", "ok 0"], "nothing of the refused batches was stored");
}
