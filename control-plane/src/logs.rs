//! Live log fan-out: wakes Server-Sent-Event streams when new lines for a deployment are stored.
//! (Placeholder; filled in with the log pipeline.)

/// Cheap to clone; shared by the telemetry ingest and the SSE handlers.
#[derive(Clone, Default)]
pub struct LogHub {}
