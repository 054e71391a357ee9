//! Telemetry streams: the bidirectional streams an agent opens after its control stream and the
//! Welcome. On each, the agent sends [`LogBatch`]es (and [`MetricBatch`]es); the server answers
//! every batch on the same stream with a [`TelemetryAck`] once the batch is durably stored.
//!
//! * Sources are `<workload id>/<replica>/<boot id>`; the workload id is `<deployment id>@<revision>`
//!   (protocol 2) or the bare deployment id (protocol 1). The
//!   agent's id comes from its certificate, never from the batch; the deployment id in the source
//!   only scopes where the lines go, and lines for a deployment that does not exist (or was
//!   deleted) are acknowledged and dropped, so the agent does not resend them forever.
//! * A malformed source, a batch of more than [`MAX_BATCH_LINES`] lines, a line longer than
//!   [`MAX_LINE_BYTES`], a sequence number of 0 or any other message closes the connection with
//!   [`CloseCode::ProtocolError`].
//! * If the store fails, the stream is reset with [`CloseCode::InternalError`] as the error code
//!   and nothing is acknowledged: the agent reopens a stream and resends (duplicates are dropped).
//! * At most [`MAX_STREAMS`] telemetry streams per connection are served at once; further ones
//!   are refused (reset) until one ends. (QUIC flow control is stricter today: the transport
//!   admits 4 concurrent bidirectional streams per connection, the control stream included.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{AgentMessage, CloseCode, LogBatch, MetricBatch, ServerMessage, TelemetryAck};
use ferry_transport::TransportError;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::AppState;

/// Concurrent telemetry streams served per connection.
pub const MAX_STREAMS: usize = 8;
/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 5_000;
/// Longest line, in bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines kept per deployment; older ones are pruned (see `store::logs`).
pub const RETENTION_LINES: i64 = 100_000;
/// How long writing one ack may take before the stream is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a "this deployment exists / does not" answer is trusted by one stream.
const KNOWN_TTL: Duration = Duration::from_secs(10);
/// Deployments remembered per stream.
const KNOWN_MAX: usize = 256;

/// A source, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Source<'a> {
    pub deployment_id: &'a str,
    pub replica: u32,
    pub boot_id: &'a str,
}

/// Deployment ids: 1-128 characters of `[A-Za-z0-9._-]`.
pub fn valid_deployment_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses `<deployment id>[@<revision>]/<replica>/<boot id>`: revision and replica in plain
/// decimal, boot id 1-64 characters of `[A-Za-z0-9_-]`.
pub fn parse_source(source: &str) -> Option<Source<'_>> {
    let mut parts = source.split('/');
    let (workload_id, replica, boot_id) = (parts.next()?, parts.next()?, parts.next()?);
    let deployment_id = match workload_id.split_once('@') {
        Some((d, rev)) if !rev.is_empty() && rev.len() <= 20 && rev.bytes().all(|b| b.is_ascii_digit()) => d,
        Some(_) => return None,
        None => workload_id,
    };
    if parts.next().is_some() || !valid_deployment_id(deployment_id) {
        return None;
    }
    let replica_ok = !replica.is_empty() && replica.len() <= 10 && replica.bytes().all(|b| b.is_ascii_digit());
    let boot_ok = !boot_id.is_empty()
        && boot_id.len() <= 64
        && boot_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !replica_ok || !boot_ok {
        return None;
    }
    Some(Source { deployment_id, replica: replica.parse().ok()?, boot_id })
}

/// Why a stream stopped.
enum Stop {
    /// The peer finished the stream, or the connection is gone: nothing to do.
    Done,
    /// The peer broke the protocol: close the whole connection.
    Protocol(CloseCode, String),
    /// We could not store or acknowledge: reset this stream only.
    Reset(String),
}

/// Serves the telemetry streams of one session until the connection closes or the control
/// plane stops. Spawned by the session right after it wrote the Welcome.
pub async fn serve(conn: Connection, agent_id: String, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_STREAMS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Ok((mut send, mut recv)) = accepted else { break };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%agent_id, "too many telemetry streams; refusing one");
            let _ = send.reset(VarInt::from_u32(CloseCode::ProtocolError as u32));
            let _ = recv.stop(VarInt::from_u32(CloseCode::ProtocolError as u32));
            continue;
        };
        let stream = TelemetryStream { conn: conn.clone(), agent_id: agent_id.clone(), state: state.clone() };
        tasks.spawn(async move {
            let _slot = slot;
            stream.run(send, recv).await;
        });
    }
    // The connection is closing (or the session will close it): streams end by themselves.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tracing::debug!(%agent_id, "telemetry streams still running; aborting them");
    }
}

struct TelemetryStream {
    conn: Connection,
    agent_id: String,
    state: AppState,
}

impl TelemetryStream {
    async fn run(&self, mut send: SendStream, mut recv: RecvStream) {
        let mut known = HashMap::new();
        match self.serve(&mut send, &mut recv, &mut known).await {
            Stop::Done => {
                let _ = send.finish();
            }
            Stop::Protocol(code, reason) => {
                tracing::info!(agent_id = %self.agent_id, ?code, %reason, "telemetry protocol violation");
                ferry_transport::close(&self.conn, code, &reason);
            }
            Stop::Reset(reason) => {
                tracing::warn!(agent_id = %self.agent_id, %reason, "telemetry stream reset");
                let _ = send.reset(VarInt::from_u32(CloseCode::InternalError as u32));
                let _ = recv.stop(VarInt::from_u32(CloseCode::InternalError as u32));
            }
        }
    }

    async fn serve(
        &self,
        send: &mut SendStream,
        recv: &mut RecvStream,
        known: &mut HashMap<String, (bool, Instant)>,
    ) -> Stop {
        loop {
            let msg = match ferry_transport::read_frame::<AgentMessage>(recv).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Stop::Done,
                Err(e) => return read_error(e),
            };
            let ack = match msg {
                AgentMessage::LogBatch(batch) => match self.logs(batch, known).await {
                    Ok(ack) => ack,
                    Err(stop) => return stop,
                },
                AgentMessage::MetricBatch(batch) => match metrics(batch) {
                    Ok(ack) => ack,
                    Err(stop) => return stop,
                },
                other => {
                    let reason = format!("unexpected message on a telemetry stream: {}", kind(&other));
                    return Stop::Protocol(CloseCode::ProtocolError, reason);
                }
            };
            let reply = ServerMessage::TelemetryAck(ack);
            if let Err(e) = ferry_transport::write_frame_timeout(send, &reply, WRITE_TIMEOUT).await {
                return match e {
                    TransportError::Timeout(_) => Stop::Reset(format!("agent did not read its acks: {e}")),
                    _ => Stop::Done,
                };
            }
        }
    }

    async fn logs(&self, b: LogBatch, known: &mut HashMap<String, (bool, Instant)>) -> Result<TelemetryAck, Stop> {
        let source =
            parse_source(&b.source).ok_or_else(|| protocol(format!("malformed log source {:?}", brief(&b.source))))?;
        if b.lines.len() > MAX_BATCH_LINES {
            return Err(protocol(format!("{} lines in one batch; at most {MAX_BATCH_LINES}", b.lines.len())));
        }
        if let Some(l) = b.lines.iter().find(|l| l.line.len() > MAX_LINE_BYTES) {
            return Err(protocol(format!("a log line of {} bytes; at most {MAX_LINE_BYTES}", l.line.len())));
        }
        check_seq(b.first_seq, b.lines.len())?;
        let last_seq = (b.first_seq + b.lines.len() as u64).saturating_sub(1);
        let ack = TelemetryAck { source: b.source.clone(), last_seq };
        if b.lines.is_empty() || !self.deployment_known(source.deployment_id, known).await? {
            return Ok(ack);
        }
        let stored = self
            .state
            .store
            .insert_log_batch(
                &self.agent_id,
                source.deployment_id,
                source.replica,
                &b.source,
                b.first_seq,
                &b.lines,
                RETENTION_LINES,
            )
            .await
            .map_err(|e| Stop::Reset(format!("could not store log lines: {e}")))?;
        self.state.logs.notify(source.deployment_id);
        Ok(TelemetryAck { last_seq: stored, ..ack })
    }

    /// Whether lines for `deployment_id` should be stored; answers are cached per stream.
    async fn deployment_known(
        &self,
        deployment_id: &str,
        known: &mut HashMap<String, (bool, Instant)>,
    ) -> Result<bool, Stop> {
        if let Some(&(exists, at)) = known.get(deployment_id)
            && at.elapsed() < KNOWN_TTL
        {
            return Ok(exists);
        }
        let exists = self
            .state
            .store
            .deployment_exists(deployment_id)
            .await
            .map_err(|e| Stop::Reset(format!("could not look up deployment: {e}")))?;
        if !exists {
            tracing::info!(agent_id = %self.agent_id, %deployment_id, "dropping log lines of an unknown deployment");
        }
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(deployment_id.to_string(), (exists, Instant::now()));
        Ok(exists)
    }
}

/// Metrics are not stored yet: validated, acknowledged and dropped.
fn metrics(b: MetricBatch) -> Result<TelemetryAck, Stop> {
    parse_source(&b.source).ok_or_else(|| protocol(format!("malformed metric source {:?}", brief(&b.source))))?;
    if b.samples.len() > MAX_BATCH_LINES {
        return Err(protocol(format!("{} samples in one batch; at most {MAX_BATCH_LINES}", b.samples.len())));
    }
    check_seq(b.first_seq, b.samples.len())?;
    tracing::debug!(source = %b.source, samples = b.samples.len(), "metric batch acknowledged and dropped");
    Ok(TelemetryAck { last_seq: (b.first_seq + b.samples.len() as u64).saturating_sub(1), source: b.source })
}

/// Sequence numbers start at 1 and must fit the store's signed 64-bit column.
fn check_seq(first_seq: u64, n: usize) -> Result<(), Stop> {
    if first_seq == 0 || first_seq.saturating_add(n as u64) > i64::MAX as u64 {
        return Err(protocol(format!("sequence number {first_seq} out of range")));
    }
    Ok(())
}

/// At most 64 characters of an agent-supplied string, for log and close messages.
fn brief(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

fn protocol(reason: String) -> Stop {
    Stop::Protocol(CloseCode::ProtocolError, reason)
}

fn read_error(e: TransportError) -> Stop {
    match e {
        TransportError::Frame(ferry_protocol::FrameError::TooLarge { .. }) => {
            Stop::Protocol(CloseCode::FrameTooLarge, e.to_string())
        }
        TransportError::Frame(_) => Stop::Protocol(CloseCode::ProtocolError, e.to_string()),
        _ => Stop::Done,
    }
}

fn kind(m: &AgentMessage) -> &'static str {
    match m {
        AgentMessage::Enroll(_) => "Enroll",
        AgentMessage::Hello(_) => "Hello",
        AgentMessage::Ack(_) => "Ack",
        AgentMessage::Status(_) => "Status",
        AgentMessage::Heartbeat(_) => "Heartbeat",
        AgentMessage::RenewCertificate(_) => "RenewCertificate",
        AgentMessage::LogBatch(_) => "LogBatch",
        AgentMessage::MetricBatch(_) => "MetricBatch",
        AgentMessage::Error(_) => "Error",
        AgentMessage::StatusDelta(_) => "StatusDelta",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_parsed_strictly() {
        assert_eq!(
            parse_source("dep-1/0/00ff00ff00ff00ff"),
            Some(Source { deployment_id: "dep-1", replica: 0, boot_id: "00ff00ff00ff00ff" })
        );
        assert_eq!(parse_source("d.x_Y/4294967295/b").map(|s| s.replica), Some(u32::MAX));
        assert_eq!(parse_source("dep-1@12/3/b").map(|s| (s.deployment_id, s.replica)), Some(("dep-1", 3)));
        for bad in ["dep-1@/0/b", "dep-1@x/0/b", "@1/0/b", "dep@1@2/0/b"] {
            assert_eq!(parse_source(bad), None, "{bad}");
        }
        for bad in [
            "",
            "dep-1",
            "dep-1/0",
            "dep-1/0/",
            "/0/boot",
            "dep-1//boot",
            "dep-1/+1/boot",
            "dep-1/-1/boot",
            "dep-1/4294967296/boot",
            "dep-1/0/boot/extra",
            "a/b/0/boot",
            "dep 1/0/boot",
            "dep-1/0/bo.ot",
            "dep-1/0/b\0",
        ] {
            assert_eq!(parse_source(bad), None, "{bad:?}");
        }
        assert!(parse_source(&format!("{}/0/b", "d".repeat(129))).is_none());
        assert!(parse_source(&format!("d/0/{}", "b".repeat(65))).is_none());
        assert_eq!(brief(&"é".repeat(100)).chars().count(), 64);
        assert_eq!(brief("short"), "short");
    }

    #[test]
    fn sequence_numbers_start_at_one_and_fit_a_bigint() {
        assert!(check_seq(1, 5_000).is_ok());
        assert!(check_seq(0, 1).is_err());
        assert!(check_seq(i64::MAX as u64, 1).is_err());
        assert!(check_seq(i64::MAX as u64 - 10, 10).is_ok());
    }
}
