//! The telemetry stream of one session: batches out, acknowledgements back.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{AgentMessage, ServerMessage};
use quinn::{Connection, RecvStream, VarInt};
use tokio::task::JoinError;
use tokio::time::Instant;

use super::{LogHub, Next};
use crate::net::NET_TIMEOUT;
use crate::session::message_name;
use crate::task::AbortOnDrop;

/// First wait before reopening a failed telemetry stream on a live connection; doubles.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A stream that lasted this long resets the reopening delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A batch the control plane does not take (flow control) within this long abandons the stream.
/// Telemetry never holds up the control stream, so this can be generous.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Ships logs over `conn` until it closes (or the task is aborted with its session). A failed
/// stream on a live connection is reopened after a growing delay.
pub(crate) async fn ship(conn: Connection, hub: Arc<LogHub>) {
    let mut delay = RETRY_MIN;
    loop {
        let started = Instant::now();
        let why = match stream(&conn, &hub).await {
            End::Superseded => return,
            End::Failed(why) => why,
        };
        if conn.close_reason().is_some() {
            tracing::debug!(reason = %why, "telemetry stream ended with the connection");
            return;
        }
        if started.elapsed() >= HEALTHY_AFTER {
            delay = RETRY_MIN;
        }
        tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "telemetry stream failed; reopening");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

enum End {
    /// Another stream took over the buffer.
    Superseded,
    Failed(String),
}

/// One telemetry stream: resends everything unacknowledged, then keeps sending new batches.
async fn stream(conn: &Connection, hub: &Arc<LogHub>) -> End {
    let (epoch, pending) = {
        let mut buffer = hub.lock();
        (buffer.begin_stream(), buffer.len())
    };
    let (mut send, recv) = match tokio::time::timeout(NET_TIMEOUT, conn.open_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return End::Failed(format!("cannot open the telemetry stream: {e}")),
        Err(_) => return End::Failed(format!("opening the telemetry stream timed out after {NET_TIMEOUT:?}")),
    };
    tracing::debug!(unacknowledged = pending, "telemetry stream opened");
    // `read_frame` is not cancel-safe: a task owns the receive side.
    let mut reader = AbortOnDrop(tokio::spawn(read_acks(recv, Arc::clone(hub))));
    let end = loop {
        let next = hub.lock().next(epoch, Instant::now());
        let batch = match next {
            Next::Batch(batch) => batch,
            Next::Superseded => break End::Superseded,
            Next::At(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = hub.ready.notified() => {}
                    r = &mut reader.0 => break reader_end(r),
                }
                continue;
            }
            Next::Idle => {
                tokio::select! {
                    () = hub.ready.notified() => {}
                    r = &mut reader.0 => break reader_end(r),
                }
                continue;
            }
        };
        tracing::trace!(source = %batch.source, first_seq = batch.first_seq, lines = batch.lines.len(), "sending logs");
        let msg = AgentMessage::LogBatch(batch);
        tokio::select! {
            r = ferry_transport::write_frame_timeout(&mut send, &msg, WRITE_TIMEOUT) => {
                if let Err(e) = r {
                    break End::Failed(format!("send LogBatch: {e}"));
                }
            }
            r = &mut reader.0 => break reader_end(r),
        }
    };
    // Whatever was cut short is resent on the next stream; tell the peer to discard this one.
    let _ = send.reset(VarInt::from_u32(0));
    end
}

fn reader_end(r: Result<String, JoinError>) -> End {
    End::Failed(r.unwrap_or_else(|e| format!("telemetry reader failed: {e}")))
}

/// Applies the acknowledgements read from `recv`; returns why the stream ended.
async fn read_acks(mut recv: RecvStream, hub: Arc<LogHub>) -> String {
    loop {
        match ferry_transport::read_frame::<ServerMessage>(&mut recv).await {
            Ok(Some(ServerMessage::TelemetryAck(ack))) => {
                let released = hub.ack(&ack.source, ack.last_seq);
                tracing::trace!(source = %ack.source, last_seq = ack.last_seq, released, "logs acknowledged");
            }
            Ok(Some(ServerMessage::Error(e))) => {
                tracing::warn!(code = ?e.code, message = %e.message, "control plane reported a telemetry error");
            }
            Ok(Some(other)) => {
                tracing::warn!(kind = message_name(&other), "ignoring an unexpected message on the telemetry stream");
            }
            Ok(None) => return "the control plane finished the telemetry stream".into(),
            Err(e) => return format!("telemetry stream: {e}"),
        }
    }
}
