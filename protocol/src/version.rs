//! Protocol-version negotiation, the ALPN identifier and the QUIC close codes.

/// The ALPN protocol both ends must agree on during the TLS handshake.
pub const ALPN: &[u8] = b"ferry/1";

/// The newest protocol version this build speaks. Version 2 added intent deltas
/// ([`crate::IntentUpdate`]); see [`crate::messages`].
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Picks the newest version both sides support, given the peer's inclusive range.
/// Returns `None` when the ranges do not overlap (or the peer's range is empty).
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    if peer_min > peer_max {
        return None;
    }
    let v = peer_max.min(PROTOCOL_VERSION);
    (v >= peer_min.max(PROTOCOL_VERSION_MIN)).then_some(v)
}

/// Application close codes carried by a QUIC `CONNECTION_CLOSE`, so that an agent knows *why*
/// the control plane ended its session and whether retrying makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown (the control plane is stopping, or the agent is).
    Normal = 0,
    /// The agent's identity was revoked; reconnecting will not help.
    Revoked = 0x10,
    /// The certificate names an agent the control plane does not know.
    UnknownAgent = 0x11,
    /// A frame could not be decoded, or a message came at the wrong time.
    ProtocolError = 0x12,
    /// A frame's declared length exceeded the maximum.
    FrameTooLarge = 0x13,
    /// No common protocol version.
    UnsupportedVersion = 0x14,
    /// Enrollment was refused (token unknown, used or expired, or the CSR was invalid).
    EnrollmentRejected = 0x15,
    /// The agent stopped sending heartbeats.
    HeartbeatTimeout = 0x16,
    /// The client certificate the session was opened with has expired and was not renewed.
    CertificateExpired = 0x17,
    /// A newer session of the same agent replaced this one.
    Superseded = 0x18,
    /// The peer broke an invariant we cannot recover from.
    InternalError = 0x1f,
}

impl CloseCode {
    pub fn from_u64(v: u64) -> Option<Self> {
        use CloseCode::*;
        Some(match v {
            0 => Normal,
            0x10 => Revoked,
            0x11 => UnknownAgent,
            0x12 => ProtocolError,
            0x13 => FrameTooLarge,
            0x14 => UnsupportedVersion,
            0x15 => EnrollmentRejected,
            0x16 => HeartbeatTimeout,
            0x17 => CertificateExpired,
            0x18 => Superseded,
            0x1f => InternalError,
            _ => return None,
        })
    }

    /// Whether an agent should stop trying after being closed with this code: retrying with the
    /// same identity cannot succeed.
    pub fn is_terminal(self) -> bool {
        matches!(self, CloseCode::Revoked | CloseCode::UnknownAgent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_table() {
        // (peer_min, peer_max, expected)
        let cases = [
            (1, 1, Some(1)),
            (1, 5, Some(PROTOCOL_VERSION)),
            (0, 1, Some(1)),
            (2, 2, Some(2)),
            (3, 9, None),
            (0, 0, None),
            (3, 1, None),
        ];
        for (min, max, want) in cases {
            assert_eq!(negotiate(min, max), want, "peer range {min}..={max}");
        }
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [
            CloseCode::Normal,
            CloseCode::Revoked,
            CloseCode::UnknownAgent,
            CloseCode::ProtocolError,
            CloseCode::FrameTooLarge,
            CloseCode::UnsupportedVersion,
            CloseCode::EnrollmentRejected,
            CloseCode::HeartbeatTimeout,
            CloseCode::CertificateExpired,
            CloseCode::Superseded,
            CloseCode::InternalError,
        ] {
            assert_eq!(CloseCode::from_u64(code as u64), Some(code));
        }
        assert_eq!(CloseCode::from_u64(0x99), None);
        assert!(CloseCode::Revoked.is_terminal());
        assert!(!CloseCode::HeartbeatTimeout.is_terminal());
    }
}
