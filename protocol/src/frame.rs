//! Length-prefixed postcard frames.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of postcard. The
//! length is checked against a hard maximum *before* anything is allocated, so a peer announcing
//! a 4 GiB frame costs us four bytes of reading, not four gigabytes of memory.

use serde::{Serialize, de::DeserializeOwned};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;
/// Hard maximum payload length: 4 MiB. Log and metric batches are sized well below it.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame (header + payload).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut buf = postcard::to_extend(msg, std::mem::take(&mut buf)).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Reads a frame header and returns the payload length, refusing lengths over `max` or zero.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one payload (without header). Trailing bytes are an error: a frame is one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// An incremental decoder for byte streams that arrive in arbitrary chunks.
///
/// Memory use is bounded: the buffer never holds more than one header plus one maximum-size
/// payload, because an oversized header is rejected as soon as its four bytes are in.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max }
    }

    /// Appends bytes. Call [`FrameDecoder::decode`] until it returns `Ok(None)` afterwards.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are needed, or an error. After
    /// an error the stream is unusable (framing is lost) and should be closed.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("4 bytes");
        let len = payload_len(header, self.max)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[HEADER_LEN..HEADER_LEN + len])?;
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::messages::*;

    fn samples() -> (Vec<AgentMessage>, Vec<ServerMessage>) {
        let labels: BTreeMap<_, _> = [("zone".to_string(), "eu-1".to_string())].into();
        let spec = ProcessSpec {
            command: "/usr/bin/python3".into(),
            args: vec!["-m".into(), "http.server".into()],
            env: [("MODE".into(), "prod".into())].into(),
            working_dir: Some("/srv".into()),
            replicas: 2,
            restart_policy: RestartPolicy::OnFailure,
            liveness: Some(HealthCheck {
                probe: Probe::Http { path: "/healthz".into(), port: 0 },
                initial_delay_ms: 0,
                period_ms: 1000,
                timeout_ms: 500,
                success_threshold: 1,
                failure_threshold: 3,
            }),
            readiness: Some(HealthCheck {
                probe: Probe::Exec { command: vec!["true".into()] },
                initial_delay_ms: 10,
                period_ms: 100,
                timeout_ms: 50,
                success_threshold: 2,
                failure_threshold: 1,
            }),
            startup: Some(HealthCheck {
                probe: Probe::Tcp { port: 8080 },
                initial_delay_ms: 0,
                period_ms: 1,
                timeout_ms: 1,
                success_threshold: 1,
                failure_threshold: 30,
            }),
            stop_grace_ms: 5000,
        };
        let agent = vec![
            AgentMessage::Enroll(Enroll {
                token: "ferry1.x.y.z".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
                name: "host-a".into(),
                labels: labels.clone(),
                agent_version: "0.1.0".into(),
            }),
            AgentMessage::Hello(Hello {
                protocol_min: 1,
                protocol_max: 1,
                agent_id: "agent-1".into(),
                agent_version: "0.1.0".into(),
                name: "host-a".into(),
                labels: labels.clone(),
                capabilities: vec!["runtime:process".into()],
                last_generation: 42,
            }),
            AgentMessage::Ack(Ack { generation: 7, outcome: AckOutcome::Applied }),
            AgentMessage::Ack(Ack { generation: 6, outcome: AckOutcome::Stale { current: 7 } }),
            AgentMessage::Ack(Ack {
                generation: 8,
                outcome: AckOutcome::Rejected { reason: "no such runtime".into() },
            }),
            AgentMessage::Status(Status {
                generation: 7,
                workloads: vec![WorkloadStatus {
                    id: "dep-1".into(),
                    replicas: vec![ReplicaStatus {
                        index: 0,
                        phase: Phase::Running,
                        pid: Some(1234),
                        port: Some(40001),
                        ready: true,
                        restarts: 1,
                        reason: None,
                        since_ms: 1_700_000_000_000,
                    }],
                }],
            }),
            AgentMessage::Heartbeat(Heartbeat { seq: 3, sent_at_ms: 99 }),
            AgentMessage::RenewCertificate(RenewCertificate { csr_pem: "csr".into() }),
            AgentMessage::LogBatch(LogBatch {
                source: "dep-1/0".into(),
                first_seq: 10,
                lines: vec![
                    LogLine { ts_ms: 1, stream: LogStream::Stdout, line: "hello".into() },
                    LogLine { ts_ms: 2, stream: LogStream::Stderr, line: "ünïcødé".into() },
                ],
            }),
            AgentMessage::MetricBatch(MetricBatch {
                source: "host".into(),
                first_seq: 0,
                samples: vec![MetricSample { ts_ms: 5, name: "cpu".into(), labels: labels.clone(), value: 0.25 }],
            }),
            AgentMessage::Error(WireError { code: ErrorCode::Internal, message: "x".into() }),
        ];
        let server = vec![
            ServerMessage::Enrolled(Enrolled {
                agent_id: "agent-1".into(),
                certificate_pem: "cert".into(),
                ca_pem: "ca".into(),
            }),
            ServerMessage::Welcome(Welcome {
                protocol_version: 1,
                agent_id: "agent-1".into(),
                heartbeat_interval_ms: 5000,
                server_time_ms: 1,
            }),
            ServerMessage::Assignment(Assignment {
                generation: 9,
                workloads: vec![Workload {
                    id: "dep-1".into(),
                    name: "web".into(),
                    version: "v1".into(),
                    spec,
                    restart_nonce: 2,
                }],
            }),
            ServerMessage::Assignment(Assignment { generation: 10, workloads: vec![] }),
            ServerMessage::HeartbeatAck(HeartbeatAck { seq: 3, server_time_ms: 100 }),
            ServerMessage::CertificateRenewed(CertificateRenewed { certificate_pem: "c".into(), not_after_ms: 77 }),
            ServerMessage::TelemetryAck(TelemetryAck { source: "s".into(), last_seq: 11 }),
            ServerMessage::Error(WireError { code: ErrorCode::TokenUsed, message: "used".into() }),
            ServerMessage::Intent(IntentUpdate {
                generation: 12,
                base: Some(10),
                upserts: vec![WorkloadIntent {
                    id: WorkloadIntent::id_for("dep-1", 3),
                    deployment_id: "dep-1".into(),
                    revision: 3,
                    name: "web".into(),
                    version: "v2".into(),
                    restart_nonce: 0,
                    spec: WorkloadSpec::Process(spec_for_intent()),
                }],
                removals: vec!["dep-1@2".into()],
            }),
            ServerMessage::Intent(IntentUpdate { generation: 13, base: None, upserts: vec![], removals: vec![] }),
            ServerMessage::Intent(IntentUpdate {
                generation: 14,
                base: None,
                upserts: vec![WorkloadIntent {
                    id: WorkloadIntent::id_for("dep-2", 1),
                    deployment_id: "dep-2".into(),
                    revision: 1,
                    name: "api".into(),
                    version: "v1".into(),
                    restart_nonce: 0,
                    spec: WorkloadSpec::ProcessWithSecrets {
                        spec: spec_for_intent(),
                        secrets: SecretMaterial { env: [("TOKEN".to_string(), SecretValue::new("t0k"))].into() },
                    },
                }],
                removals: vec![],
            }),
            ServerMessage::Intent(IntentUpdate {
                generation: 15,
                base: Some(14),
                upserts: vec![WorkloadIntent {
                    id: WorkloadIntent::id_for("dep-3", 2),
                    deployment_id: "dep-3".into(),
                    revision: 2,
                    name: "site".into(),
                    version: "git-0123456789ab".into(),
                    restart_nonce: 1,
                    spec: WorkloadSpec::ProcessFromGit {
                        spec: spec_for_intent(),
                        secrets: SecretMaterial::default(),
                        source: GitCheckout {
                            url: "https://example.com/site.git".into(),
                            commit: "0123456789abcdef0123456789abcdef01234567".into(),
                            dir: "deploy".into(),
                        },
                    },
                }],
                removals: vec![],
            }),
        ];
        let mut agent = agent;
        agent.push(AgentMessage::Ack(Ack { generation: 12, outcome: AckOutcome::NeedFull { held: 9 } }));
        agent.push(AgentMessage::StatusDelta(StatusDelta {
            generation: 12,
            changed: vec![WorkloadStatus { id: "dep-1@3".into(), replicas: vec![] }],
            removed: vec!["dep-1@2".into()],
        }));
        (agent, server)
    }

    fn spec_for_intent() -> ProcessSpec {
        ProcessSpec {
            command: "web".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            replicas: 1,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 1000,
        }
    }

    #[test]
    fn status_deltas_carry_only_what_changed() {
        let w = |id: &str, pid: u32| WorkloadStatus {
            id: id.into(),
            replicas: vec![ReplicaStatus {
                index: 0,
                phase: Phase::Running,
                pid: Some(pid),
                port: None,
                ready: true,
                restarts: 0,
                reason: None,
                since_ms: 0,
            }],
        };
        let before = Status { generation: 3, workloads: vec![w("a", 1), w("b", 2), w("c", 3)] };
        let after = Status { generation: 3, workloads: vec![w("a", 1), w("b", 9), w("d", 4)] };
        let d = StatusDelta::between(&before, &after).unwrap();
        assert_eq!(d.changed, [w("b", 9), w("d", 4)]);
        assert_eq!(d.removed, ["c"]);
        assert_eq!(StatusDelta::between(&after, &after), None);
        let moved = Status { generation: 4, ..after.clone() };
        assert_eq!(StatusDelta::between(&after, &moved).map(|d| (d.generation, d.changed.len())), Some((4, 0)));
    }

    /// Protocol-1 frames must stay byte-for-byte what protocol-1 agents expect: new variants
    /// are appended, never inserted.
    #[test]
    fn protocol_1_encodings_are_frozen() {
        let assignment = ServerMessage::Assignment(Assignment {
            generation: 5,
            workloads: vec![Workload {
                id: "d".into(),
                name: "n".into(),
                version: "v".into(),
                spec: spec_for_intent(),
                restart_nonce: 1,
            }],
        });
        let ack = AgentMessage::Ack(Ack { generation: 3, outcome: AckOutcome::Rejected { reason: "r".into() } });
        let hex = |m: &[u8]| m.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&encode_frame(&assignment).unwrap()),
            "000000180205010164016e0176037765620000000100000000e80701"
        );
        assert_eq!(hex(&encode_frame(&ack).unwrap()), "000000050203020172");
    }

    /// Protocol-2 intents keep their encoding too: `Process` stays variant 0 of `WorkloadSpec`
    /// and `ProcessWithSecrets`, appended later, is variant 1 (`ProcessFromGit` variant 2).
    #[test]
    fn protocol_2_workload_encodings_are_frozen() {
        let intent = |spec| {
            ServerMessage::Intent(IntentUpdate {
                generation: 2,
                base: Some(1),
                upserts: vec![WorkloadIntent {
                    id: "d@1".into(),
                    deployment_id: "d".into(),
                    revision: 1,
                    name: "n".into(),
                    version: "v".into(),
                    restart_nonce: 0,
                    spec,
                }],
                removals: vec![],
            })
        };
        let hex = |m: &[u8]| m.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let plain = intent(WorkloadSpec::Process(spec_for_intent()));
        assert_eq!(
            hex(&encode_frame(&plain).unwrap()),
            "00000021070201010103644031016401016e01760000037765620000000100000000e80700"
        );
        let secret = SecretMaterial { env: [("K".to_string(), SecretValue::new("s"))].into() };
        let with_secrets = intent(WorkloadSpec::ProcessWithSecrets { spec: spec_for_intent(), secrets: secret });
        assert_eq!(
            hex(&encode_frame(&with_secrets).unwrap()),
            "00000026070201010103644031016401016e01760001037765620000000100000000e80701014b017300"
        );
        // Secret values never show in debug output (log lines), names do.
        let debug = format!("{with_secrets:?}");
        assert!(debug.contains("\"K\"") && !debug.contains("\"s\""), "{debug}");
        // `ProcessFromGit`, appended after it, is variant 2: the spec, the secrets, then the source.
        let source = GitCheckout { url: "u".into(), commit: "c".into(), dir: "d".into() };
        let from_git = intent(WorkloadSpec::ProcessFromGit {
            spec: spec_for_intent(),
            secrets: SecretMaterial::default(),
            source,
        });
        assert_eq!(
            hex(&encode_frame(&from_git).unwrap()),
            "00000028070201010103644031016401016e01760002037765620000000100000000e8070001750163016400"
        );
    }

    #[test]
    fn every_message_round_trips() {
        let (agent, server) = samples();
        for msg in agent {
            let frame = encode_frame(&msg).unwrap();
            let mut d = FrameDecoder::default();
            d.push(&frame);
            assert_eq!(d.decode::<AgentMessage>().unwrap(), Some(msg));
            assert_eq!(d.buffered(), 0);
        }
        for msg in server {
            let frame = encode_frame(&msg).unwrap();
            let mut d = FrameDecoder::default();
            d.push(&frame);
            assert_eq!(d.decode::<ServerMessage>().unwrap(), Some(msg));
        }
    }

    #[test]
    fn byte_at_a_time_and_back_to_back_frames() {
        let (agent, _) = samples();
        let stream: Vec<u8> = agent.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.decode::<AgentMessage>().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, agent);
    }

    #[test]
    fn oversized_header_is_refused_before_the_payload_arrives() {
        let mut d = FrameDecoder::new(1024);
        d.push(&(1025u32).to_be_bytes());
        assert_eq!(d.decode::<AgentMessage>(), Err(FrameError::TooLarge { len: 1025, max: 1024 }));
        let mut d = FrameDecoder::default();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.decode::<AgentMessage>(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn empty_and_trailing_bytes_are_errors() {
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.decode::<AgentMessage>(), Err(FrameError::Empty));

        let mut frame = encode_frame(&AgentMessage::Heartbeat(Heartbeat { seq: 1, sent_at_ms: 2 })).unwrap();
        frame.push(0);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let mut d = FrameDecoder::default();
        d.push(&frame);
        assert!(matches!(d.decode::<AgentMessage>(), Err(FrameError::Decode(_))));
    }

    #[test]
    fn unknown_variant_is_a_decode_error() {
        // Variant index 200 does not exist in AgentMessage.
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 2, 0xc8, 0x01]);
        assert!(matches!(d.decode::<AgentMessage>(), Err(FrameError::Decode(_))));
    }

    /// Feeds pseudo-random bytes, truncated valid frames and mutated valid frames to the decoder.
    /// Every outcome must be a message, "need more" or an error: never a panic, and the buffer
    /// never grows past one maximum frame.
    #[test]
    fn random_truncated_and_mutated_input_never_panics() {
        let (agent, server) = samples();
        let mut valid: Vec<Vec<u8>> = agent.iter().map(|m| encode_frame(m).unwrap()).collect();
        valid.extend(server.iter().map(|m| encode_frame(m).unwrap()));

        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let max = 64 * 1024;
        for round in 0..20_000u32 {
            let mut input = match round % 3 {
                0 => (0..(next() % 256)).map(|_| next() as u8).collect::<Vec<u8>>(),
                1 => {
                    let f = &valid[next() as usize % valid.len()];
                    f[..next() as usize % f.len()].to_vec()
                }
                _ => {
                    let mut f = valid[next() as usize % valid.len()].clone();
                    for _ in 0..=(next() % 4) {
                        let i = next() as usize % f.len();
                        f[i] = next() as u8;
                    }
                    f
                }
            };
            if round % 7 == 0 {
                input.extend((0..(next() % 64)).map(|_| next() as u8));
            }
            let mut d = FrameDecoder::new(max);
            d.push(&input);
            for _ in 0..16 {
                let r = if round % 2 == 0 {
                    d.decode::<AgentMessage>().map(|m| m.is_some())
                } else {
                    d.decode::<ServerMessage>().map(|m| m.is_some())
                };
                match r {
                    Ok(true) => continue,
                    Ok(false) | Err(_) => break,
                }
            }
            assert!(d.buffered() <= max + HEADER_LEN + 256 + 64);
        }
    }
}
