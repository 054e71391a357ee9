//! Limits on the request itself (body size, URI length), sent over raw TCP where an HTTP client
//! would not send such requests: every refusal is in the error format, with a request id.

use ferry_tests::ControlPlane;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default `--max-body-bytes`.
const MAX_BODY: usize = 1024 * 1024;

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}\n{:?}", self.head, self.body))
    }

    fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.head);
        let body = self.json();
        let e = &body["error"];
        assert_eq!(e["code"], code, "{body}");
        let id = e["requestId"].as_str().unwrap_or_default();
        assert!(!id.is_empty(), "{body}");
        assert!(self.head.to_ascii_lowercase().contains(&format!("x-request-id: {id}")), "{}", self.head);
        body
    }
}

/// Reads one response: the head, then exactly `Content-Length` bytes (the server may keep the
/// connection open afterwards, so this never waits for the end of the stream).
async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).await.expect("read response");
        assert!(n > 0, "connection closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).await.expect("read body");
        assert!(n > 0, "connection closed in the body");
        buf.extend_from_slice(&tmp[..n]);
    }
    RawResponse { status, head, body: buf[head_end..head_end + len].to_vec() }
}

async fn connect(cp: &ControlPlane) -> TcpStream {
    TcpStream::connect(cp.base_url.trim_start_matches("http://")).await.unwrap()
}

fn head(cp: &ControlPlane, method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nhost: ferry\r\nauthorization: Bearer {}\r\n{extra}\r\n", cp.admin_token)
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_anything_runs() {
    let cp = ControlPlane::spawn().await;
    // Endpoints that take no body, and one that does: each refused on the declared length alone.
    for (method, path) in [("GET", "/v1/agents"), ("POST", "/v1/deployments/deploy-x/start"), ("GET", "/v1/health")] {
        let mut s = connect(&cp).await;
        let req = head(&cp, method, path, &format!("content-length: {}\r\n", MAX_BODY + 1));
        s.write_all(req.as_bytes()).await.unwrap();
        let body = read_response(&mut s).await.assert_error(413, "VALIDATION_003");
        assert_eq!(body["error"]["details"]["maxBytes"], MAX_BODY, "{body}");
    }
    // Unauthenticated: the size is still the first thing checked.
    let mut s = connect(&cp).await;
    let req = format!("POST /v1/agents/tokens HTTP/1.1\r\nhost: ferry\r\ncontent-length: {}\r\n\r\n", MAX_BODY + 1);
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await.assert_error(413, "VALIDATION_003");
    // At the limit is fine (the endpoint then ignores or parses it).
    let mut s = connect(&cp).await;
    s.write_all(head(&cp, "GET", "/v1/agents", &format!("content-length: {MAX_BODY}\r\n")).as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; MAX_BODY]).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
}

/// A chunked body of `total` bytes in 64 KiB chunks, without the final chunk when it goes over.
fn chunked(total: usize, finish: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(64 * 1024);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b' ', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    if finish {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_even_where_no_body_is_read() {
    let cp = ControlPlane::spawn().await;
    for (method, path) in [("GET", "/v1/agents"), ("POST", "/v1/agents/tokens"), ("GET", "/v1/health")] {
        let mut s = connect(&cp).await;
        let req = head(&cp, method, path, "transfer-encoding: chunked\r\ncontent-type: application/json\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&chunked(MAX_BODY + 1, false)).await.unwrap();
        read_response(&mut s).await.assert_error(413, "VALIDATION_003");
    }
    // Nothing was created by the refused POST.
    let (_, tokens) = cp.api(reqwest::Method::GET, "/v1/agents/tokens", None).await;
    assert_eq!(tokens["pagination"]["totalCount"], 0, "{tokens}");

    // A chunked body within the limit reaches the handler intact.
    let mut s = connect(&cp).await;
    let json = br#"{"description": "sent in chunks"}"#;
    let req =
        head(&cp, "POST", "/v1/agents/tokens", "transfer-encoding: chunked\r\ncontent-type: application/json\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(format!("{:x}\r\n", json.len()).as_bytes()).await.unwrap();
    s.write_all(json).await.unwrap();
    s.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    let res = read_response(&mut s).await;
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.json()["description"], "sent in chunks");
    // Within the limit, a body the endpoint ignores is fine too.
    let mut s = connect(&cp).await;
    s.write_all(head(&cp, "GET", "/v1/agents", "transfer-encoding: chunked\r\n").as_bytes()).await.unwrap();
    s.write_all(&chunked(1000, true)).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
}

#[tokio::test]
async fn a_client_that_sends_its_whole_body_first_still_reads_the_413() {
    let cp = ControlPlane::spawn().await;
    // Far more than socket buffers hold: without draining, the server would close the
    // connection under the client's writes and the client would see a reset, not the answer.
    let len = 32 * 1024 * 1024;
    let mut s = connect(&cp).await;
    let req =
        head(&cp, "POST", "/v1/agents/tokens", &format!("content-length: {len}\r\ncontent-type: application/json\r\n"));
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; len]).await.expect("the server reads what it refuses");
    read_response(&mut s).await.assert_error(413, "VALIDATION_003");
}

#[tokio::test]
async fn long_uris_get_414_in_the_error_format() {
    let cp = ControlPlane::spawn().await;
    let long = "a".repeat(9 * 1024);
    for path in [format!("/v1/agents/{long}"), format!("/v1/agents?name={long}"), format!("/v1/health?x={long}")] {
        let mut s = connect(&cp).await;
        s.write_all(head(&cp, "GET", &path, "").as_bytes()).await.unwrap();
        let body = read_response(&mut s).await.assert_error(414, "VALIDATION_005");
        assert_eq!(body["error"]["details"]["maxBytes"], 8192, "{body}");
    }
    // Unauthenticated too, and before the body limit.
    let mut s = connect(&cp).await;
    let req = format!("POST /v1/{long} HTTP/1.1\r\nhost: ferry\r\ncontent-length: 99999999\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await.assert_error(414, "VALIDATION_005");
    // Up to the limit, the request is routed as usual.
    let path = format!("/v1/agents/{}", "a".repeat(8192 - "/v1/agents/".len()));
    let mut s = connect(&cp).await;
    s.write_all(head(&cp, "GET", &path, "").as_bytes()).await.unwrap();
    read_response(&mut s).await.assert_error(404, "AGENT_001");
}

/// Documented in docs/errors.md: what hyper refuses while parsing never reaches Ferry, and is
/// answered with a bare status. If this starts failing, hyper changed: update the docs.
#[tokio::test]
async fn what_hyper_cannot_parse_gets_its_bare_answer() {
    let cp = ControlPlane::spawn().await;
    let huge = format!("GET /{} HTTP/1.1\r\nhost: ferry\r\n\r\n", "a".repeat(65_535));
    for (req, status) in [("this is not http\r\n\r\n".to_string(), 400), (huge, 414)] {
        let mut s = connect(&cp).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let res = read_response(&mut s).await;
        assert_eq!(res.status, status, "{}", res.head);
        assert!(res.body.is_empty(), "{}", res.head);
    }
}
