//! `/v1/logs`: a deployment's stored log lines, as pages (`GET /v1/logs/deployments/{id}`) or as
//! a live Server-Sent-Event stream (`GET /v1/logs/stream/{id}`). Both need `logs:read` where the
//! deployment runs (its environment and workspace); a deployment in a workspace the caller's
//! bindings do not reach is a 404, as on every deployment endpoint.
//!
//! Both are keyed by the line's id, which grows with every stored line and is the SSE event id.
//! The store guarantees that the ids of one deployment become visible in id order, so "every
//! line with an id above N" is a gap-free cursor: a client that reconnects with `Last-Event-ID`
//! gets exactly the lines it missed, in order, and no line twice.

use std::convert::Infallible;
use std::ops::RangeInclusive;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{ApiError, ApiPath, ApiQuery, ApiResult, ErrorCode};
use crate::AppState;
use crate::context::RequestContext;
use crate::deployments::Deployments;
use crate::ids::rfc3339;
use crate::logs::Subscription;
use crate::store::{LogRow, StoreError};

pub const DEFAULT_LIMIT: i64 = 500;
pub const MAX_LIMIT: i64 = 5_000;
/// Lines an SSE stream starts with when it resumes from nothing.
pub const DEFAULT_TAIL: i64 = 100;
/// SSE streams re-query at least this often, for lines stored by other control-plane replicas.
const POLL: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Rows per store query while an SSE stream catches up.
const PAGE: i64 = 500;
/// A client that reads nothing for this long loses its stream.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    since: Option<String>,
    limit: Option<String>,
    stream: Option<String>,
    after: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    after: Option<String>,
    tail: Option<String>,
    stream: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogView {
    id: i64,
    timestamp: String,
    stream: String,
    replica: i64,
    agent_id: String,
    line: String,
}

impl From<LogRow> for LogView {
    fn from(r: LogRow) -> Self {
        Self {
            id: r.id,
            timestamp: rfc3339(r.ts_ms),
            stream: r.stream,
            replica: r.replica,
            agent_id: r.agent_id,
            line: r.line,
        }
    }
}

/// `GET /v1/logs/deployments/{id}`: lines oldest first; page on with `after=<nextAfter>`.
#[utoipa::path(
    get,
    path = "/v1/logs/deployments/{id}",
    operation_id = "listLogs",
    tag = "logs",
    summary = "A deployment's log lines",
    params(("id" = String, Path, description = "The deployment's id"), ListParams),
    responses(
        (status = 200, description = "Log lines, oldest first", body = super::schemas::LogPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let since = q.since.as_deref().map(parse_since).transpose()?;
    let limit = q.limit.as_deref().map(|s| int("limit", s, 1..=MAX_LIMIT)).transpose()?.unwrap_or(DEFAULT_LIMIT);
    let stream = parse_stream(q.stream.as_deref())?;
    let after = q.after.as_deref().map(|s| int("after", s, 0..=i64::MAX)).transpose()?;
    Deployments::new(&state).authorize_logs(&ctx, &id).await?;
    let rows = state.store.query_logs(&id, after, since, stream, limit).await?;
    let next_after = rows.last().map(|r| r.id);
    let data: Vec<LogView> = rows.into_iter().map(LogView::from).collect();
    Ok(Json(json!({ "data": data, "nextAfter": next_after })))
}

/// Where an SSE stream starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Every line with a greater id.
    After(i64),
    /// The newest N lines, then everything new.
    Tail(i64),
}

/// `GET /v1/logs/stream/{id}`: Server-Sent Events, one `log` event per line.
#[utoipa::path(
    get,
    path = "/v1/logs/stream/{id}",
    operation_id = "streamLogs",
    tag = "logs",
    summary = "Follow a deployment's logs (Server-Sent Events, one `log` event per line)",
    params(("id" = String, Path, description = "The deployment's id"), StreamParams, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "`text/event-stream`: `log` events whose data is a LogView", content_type = "text/event-stream", body = String),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StreamParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let stream = parse_stream(q.stream.as_deref())?;
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str().map(str::trim)) {
        None | Some(Ok("")) => None,
        Some(Ok(s)) => Some(int("Last-Event-ID", s, 0..=i64::MAX)?),
        Some(Err(_)) => return Err(ApiError::validation("Last-Event-ID", "Last-Event-ID must be an event id")),
    };
    let after = q.after.as_deref().map(|s| int("after", s, 0..=i64::MAX)).transpose()?;
    let tail = q.tail.as_deref().map(|s| int("tail", s, 0..=MAX_LIMIT)).transpose()?.unwrap_or(DEFAULT_TAIL);
    // The header is where a reconnecting client says how far it got: it wins over the URL.
    let start = last_event_id.or(after).map_or(Start::Tail(tail), Start::After);
    Deployments::new(&state).authorize_logs(&ctx, &id).await?;
    // Subscribe before the first query, so nothing stored meanwhile goes unnoticed.
    let sub = state.logs.subscribe(&id).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "too many open log streams; retry later")
    })?;
    let (tx, rx) = mpsc::channel(64);
    let shutdown = state.shutdown.clone();
    let pump = Pump { state, deployment_id: id, stream, sub, tx, shutdown };
    tokio::spawn(pump.run(start));
    let mut res = Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    // Ask reverse proxies (nginx) not to buffer the stream.
    res.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// Feeds one SSE response: store → events, until the client goes away or the server stops.
struct Pump {
    state: AppState,
    deployment_id: String,
    stream: Option<&'static str>,
    sub: Subscription,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    shutdown: watch::Receiver<bool>,
}

impl Pump {
    async fn run(mut self, start: Start) {
        let mut cursor = loop {
            match self.start(start).await {
                Ok(Some(cursor)) => break cursor,
                Ok(None) => return,
                Err(e) => tracing::warn!(deployment_id = %self.deployment_id, error = %e, "log stream: store error"),
            }
            if !self.wait(false).await {
                return;
            }
        };
        loop {
            self.sub.mark_seen();
            let rows = self.state.store.query_logs(&self.deployment_id, Some(cursor), None, self.stream, PAGE).await;
            let caught_up = match rows {
                Ok(rows) => {
                    let caught_up = (rows.len() as i64) < PAGE;
                    for row in rows {
                        cursor = row.id;
                        if !self.send(row).await {
                            return;
                        }
                    }
                    caught_up
                }
                Err(e) => {
                    tracing::warn!(deployment_id = %self.deployment_id, error = %e, "log stream: store error");
                    true
                }
            };
            if caught_up && !self.wait(true).await {
                return;
            }
        }
    }

    /// Sends the initial lines; returns the cursor to follow from (`None`: the client left).
    async fn start(&mut self, start: Start) -> Result<Option<i64>, StoreError> {
        let n = match start {
            Start::After(after) => return Ok(Some(after)),
            Start::Tail(0) => return Ok(Some(self.state.store.latest_log_id(&self.deployment_id).await?.unwrap_or(0))),
            Start::Tail(n) => n,
        };
        let rows = self.state.store.tail_logs(&self.deployment_id, self.stream, n).await?;
        let mut cursor = 0;
        for row in rows {
            cursor = row.id;
            if !self.send(row).await {
                return Ok(None);
            }
        }
        Ok(Some(cursor))
    }

    /// Waits for new lines (when `notified`), the poll interval, or the end. False: stop.
    async fn wait(&mut self, notified: bool) -> bool {
        tokio::select! {
            _ = self.sub.changed(), if notified => true,
            _ = tokio::time::sleep(POLL) => true,
            _ = self.shutdown.wait_for(|s| *s) => false,
            _ = self.tx.closed() => false,
        }
    }

    /// False when the client is gone, stopped reading, or the server is stopping.
    async fn send(&mut self, row: LogRow) -> bool {
        let id = row.id;
        let data = serde_json::to_string(&LogView::from(row)).expect("log view serializes");
        let event = Event::default().id(id.to_string()).event("log").data(data);
        tokio::select! {
            sent = tokio::time::timeout(SEND_TIMEOUT, self.tx.send(Ok(event))) => matches!(sent, Ok(Ok(()))),
            _ = self.shutdown.wait_for(|s| *s) => false,
        }
    }
}

fn int(field: &str, s: &str, range: RangeInclusive<i64>) -> ApiResult<i64> {
    s.parse::<i64>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
        ApiError::validation(
            field,
            format!("{field} must be an integer between {} and {}, got {s:?}", range.start(), range.end()),
        )
    })
}

fn parse_stream(s: Option<&str>) -> ApiResult<Option<&'static str>> {
    match s {
        None => Ok(None),
        Some("stdout") => Ok(Some("stdout")),
        Some("stderr") => Ok(Some("stderr")),
        Some(other) => Err(ApiError::validation("stream", format!("stream must be stdout or stderr, got {other:?}"))),
    }
}

/// `since`: an RFC 3339 time, or Unix milliseconds.
fn parse_since(s: &str) -> ApiResult<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| ApiError::validation("since", format!("since {s:?} is out of range")));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::validation("since", format!("since must be an RFC 3339 time or Unix milliseconds, got {s:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        assert_eq!(parse_since("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14T23:13:20.5+01:00").unwrap(), 1_700_000_000_500);
        for bad in ["", "-1", "yesterday", "2023-11-14", "99999999999999999999"] {
            let e = parse_since(bad).unwrap_err();
            assert_eq!((e.code, e.details["field"].as_str()), (ErrorCode::InvalidValue, Some("since")), "{bad:?}");
        }
        assert_eq!(int("limit", "5000", 1..=MAX_LIMIT).unwrap(), 5000);
        for bad in ["0", "5001", "x", "1.5", ""] {
            assert!(int("limit", bad, 1..=MAX_LIMIT).is_err(), "{bad:?}");
        }
        assert_eq!(parse_stream(Some("stderr")).unwrap(), Some("stderr"));
        assert!(parse_stream(Some("STDOUT")).is_err());
    }
}
