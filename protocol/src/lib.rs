//! Ferry's wire protocol: the messages the control plane and its agents exchange, and the frame
//! codec that carries them.
//!
//! This crate holds wire types only. It has no async runtime, no networking and no domain logic,
//! so that both ends (and fuzzers, benchmarks, other transports such as a WebSocket fallback) can
//! share it. See `ARCHITECTURE.md` for the invariants.
//!
//! * [`messages`] — `AgentMessage` (agent → control plane) and `ServerMessage` (control plane →
//!   agent), plus the payloads they carry.
//! * [`frame`] — length-prefixed postcard frames with a hard maximum size, and an incremental
//!   decoder that never allocates more than that maximum whatever bytes it is fed.
//! * [`version`] — protocol-version negotiation, ALPN and connection close codes.

pub mod frame;
pub mod limits;
pub mod messages;
pub mod units;
pub mod version;

pub use frame::{FrameDecoder, FrameError, MAX_FRAME_LEN, decode_body, encode_frame};
pub use messages::*;
pub use version::{ALPN, CloseCode, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, negotiate};
