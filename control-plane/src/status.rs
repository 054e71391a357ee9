//! Deployment status, derived from intent and observed state — never written by hand.
//!
//! Pure code. For each agent the deployment is placed on we know the intent generation, what the
//! agent last reported (and for which generation), and whether the agent is connected. A report
//! older than the intent says nothing about the current spec, so those replicas count as not
//! ready yet. The result is one of:
//!
//! | status | when |
//! |---|---|
//! | `running` | every desired replica is ready on an agent that applied the current intent |
//! | `deploying` | agents have not applied the current intent yet, or replicas are still starting without failures |
//! | `degraded` | some but not all replicas are ready (the seed's partial success) |
//! | `failed` | no replica is ready and replicas are failing |
//! | `unknown` | no replica is ready and the agents that should run them are disconnected |
//! | `pending` | no agent matches the target |
//! | `stopping` / `stopped` | the user stopped the deployment: replicas still alive / none left |

use ferry_protocol::{Phase, ReplicaStatus};
use serde::Serialize;

use crate::store::{ObservedRow, PlacedRow};

/// The parts of a deployment's desired state an intent row must reflect to count.
#[derive(Debug, Clone, Copy)]
pub struct DesiredTemplate {
    pub revision: u64,
    pub restart_nonce: u64,
    pub stopped: bool,
}

/// One slice per intent row (live or tombstone) and per reported workload without a row.
///
/// A row's report counts once the agent says it acts on the row's generation or a newer one;
/// an agent that does and reports nothing for the workload runs none of its replicas. An agent
/// is connected while it holds a session with fresh heartbeats and is not revoked.
pub fn slices(
    want: &DesiredTemplate,
    placed: &[PlacedRow],
    observed: &[ObservedRow],
    now_ms: i64,
    heartbeat_timeout_ms: i64,
) -> Vec<AgentSlice> {
    let mut out = Vec::with_capacity(placed.len());
    let find = |agent: &str, workload: &str| observed.iter().find(|o| o.agent_id == agent && o.workload_id == workload);
    for p in placed {
        let r = &p.row;
        let connected = !p.agent_revoked
            && p.agent_session.is_some()
            && p.agent_last_heartbeat.is_some_and(|hb| hb > now_ms - heartbeat_timeout_ms);
        let observed = match find(&r.agent_id, &r.workload_id) {
            Some(o) => Some((o.agent_observed_generation, o.replicas.clone())),
            None if p.agent_observed_generation >= r.generation => Some((p.agent_observed_generation, Vec::new())),
            None => None,
        };
        out.push(AgentSlice {
            agent_id: r.agent_id.clone(),
            connected,
            desired: if r.removed { 0 } else { r.replicas },
            intent_generation: r.generation,
            planned: r.removed
                || (!want.stopped && r.revision == want.revision && r.restart_nonce == want.restart_nonce),
            observed,
        });
    }
    // Reports about workloads without a row (an agent still running what it no longer holds
    // intent for): shown, never counted.
    for o in observed {
        if !placed.iter().any(|p| p.row.agent_id == o.agent_id && p.row.workload_id == o.workload_id) {
            out.push(AgentSlice {
                agent_id: o.agent_id.clone(),
                connected: true,
                desired: 0,
                intent_generation: 0,
                planned: true,
                observed: Some((o.agent_observed_generation, o.replicas.clone())),
            });
        }
    }
    out
}

/// What one agent contributes to a deployment.
#[derive(Debug, Clone)]
pub struct AgentSlice {
    pub agent_id: String,
    pub connected: bool,
    /// Replicas of this deployment in the agent's current intent (0 if none).
    pub desired: u32,
    pub intent_generation: u64,
    /// Whether this agent's intent already reflects the deployment's current desired state (the
    /// planner may not have run since the last change). If not, its reports say nothing yet.
    pub planned: bool,
    /// The agent's last report for this workload: generation acted on, and replicas.
    pub observed: Option<(u64, Vec<ReplicaStatus>)>,
}

pub use crate::domain::DeploymentStatus;

impl DeploymentStatus {
    /// The seed's `health.status`.
    pub fn health(self) -> &'static str {
        match self {
            Self::Running => "healthy",
            Self::Degraded | Self::Deploying => "degraded",
            Self::Failed => "unhealthy",
            Self::Unknown | Self::Pending | Self::Stopping | Self::Stopped => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub agent_id: String,
    pub index: u32,
    pub phase: &'static str,
    pub ready: bool,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub reason: Option<String>,
    /// False when the report predates the current intent or the agent is disconnected.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Derived {
    pub status: DeploymentStatus,
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub reasons: Vec<String>,
    pub replicas: Vec<ReplicaView>,
}

pub fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "pending",
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Degraded => "degraded",
        Phase::Failed => "failed",
        Phase::Stopped => "stopped",
    }
}

/// Whether a replica is, or may soon again be, a running process. `Failed` counts: it also
/// means "in restart backoff".
fn alive(p: Phase) -> bool {
    !matches!(p, Phase::Stopped | Phase::Pending)
}

/// Derives the status. `stopped` is the user's desired state; `desired_total` the replicas
/// asked for (what the slices add up to when every share is placed).
pub fn derive(stopped: bool, desired_total: u32, slices: &[AgentSlice]) -> Derived {
    let mut reasons = Vec::new();
    let mut replicas = Vec::new();
    let (mut ready, mut current, mut alive_any, mut failing, mut lagging, mut disconnected) =
        (0u32, 0u32, false, false, false, false);
    for s in slices {
        let synced = s.planned && s.observed.as_ref().is_some_and(|(g, _)| *g >= s.intent_generation);
        if !s.connected && s.desired > 0 {
            disconnected = true;
            reasons.push(format!("agent {} is disconnected", s.agent_id));
        } else if !synced && (s.desired > 0 || s.observed.is_some()) {
            lagging = true;
            reasons.push(format!("agent {} has not applied generation {} yet", s.agent_id, s.intent_generation));
        }
        // Only the agents the intent gives a share count towards readiness: a report about a
        // workload an agent was never assigned (or no longer is) cannot make it healthy.
        let trusted = synced && s.connected && s.desired > 0;
        for r in s.observed.iter().flat_map(|(_, rs)| rs) {
            alive_any |= alive(r.phase);
            if trusted {
                current += u32::from(alive(r.phase));
                ready += u32::from(r.ready && alive(r.phase));
                if matches!(r.phase, Phase::Failed | Phase::Degraded) || (!r.ready && r.restarts > 0) {
                    failing = true;
                    if let Some(why) = &r.reason {
                        reasons.push(format!("replica {} on {}: {why}", r.index, s.agent_id));
                    }
                }
            }
            replicas.push(ReplicaView {
                agent_id: s.agent_id.clone(),
                index: r.index,
                phase: phase_str(r.phase),
                ready: r.ready,
                restarts: r.restarts,
                pid: r.pid,
                port: r.port,
                reason: r.reason.clone(),
                current: trusted,
            });
        }
    }
    let status = if stopped {
        reasons.retain(|r| r.contains("disconnected"));
        if alive_any || lagging { DeploymentStatus::Stopping } else { DeploymentStatus::Stopped }
    } else if desired_total > 0 && slices.iter().all(|s| s.desired == 0) {
        reasons.push("no agent matches the target".into());
        DeploymentStatus::Pending
    } else if ready >= desired_total && !lagging && !disconnected {
        DeploymentStatus::Running
    } else if ready > 0 {
        DeploymentStatus::Degraded
    } else if failing {
        DeploymentStatus::Failed
    } else if disconnected && !lagging {
        DeploymentStatus::Unknown
    } else {
        DeploymentStatus::Deploying
    };
    if status == DeploymentStatus::Running {
        reasons.clear();
    }
    Derived { status, desired: if stopped { 0 } else { desired_total }, current, ready, reasons, replicas }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IntentRow;

    fn placed(agent: &str, workload: &str, revision: u64, replicas: u32, generation: u64, removed: bool) -> PlacedRow {
        PlacedRow {
            row: IntentRow {
                agent_id: agent.into(),
                workload_id: workload.into(),
                deployment_id: "d".into(),
                revision,
                replicas,
                restart_nonce: 0,
                generation,
                removed,
            },
            agent_observed_generation: 0,
            agent_session: Some("s".into()),
            agent_last_heartbeat: Some(1_000),
            agent_revoked: false,
        }
    }

    #[test]
    fn rows_become_slices() {
        let want = DesiredTemplate { revision: 2, restart_nonce: 0, stopped: false };
        let mut current = placed("a1", "d@2", 2, 2, 7, false);
        current.agent_observed_generation = 7;
        let mut old = placed("a1", "d@1", 1, 0, 7, true);
        old.agent_observed_generation = 7;
        let mut lagging = placed("a2", "d@2", 2, 1, 9, false);
        lagging.agent_observed_generation = 8;
        lagging.agent_last_heartbeat = Some(1);
        let up = replica(0, PRunning, true, 0, None);
        let observed = [
            ObservedRow {
                agent_id: "a1".into(),
                workload_id: "d@2".into(),
                agent_observed_generation: 7,
                replicas: vec![up.clone()],
            },
            ObservedRow {
                agent_id: "a3".into(),
                workload_id: "d@1".into(),
                agent_observed_generation: 4,
                replicas: vec![up],
            },
        ];
        let s = slices(&want, &[current, old, lagging], &observed, 1_500, 1_000);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].desired, s[0].planned, s[0].observed.as_ref().map(|o| o.1.len())), (2, true, Some(1)));
        assert_eq!((s[1].desired, s[1].planned, s[1].observed.as_ref().map(|o| o.1.len())), (0, true, Some(0)));
        assert!(s[2].observed.is_none() && !s[2].connected, "not applied yet, heartbeat stale");
        assert_eq!((s[3].agent_id.as_str(), s[3].desired), ("a3", 0));
        let d = derive(false, 3, &s);
        assert_eq!((d.status, d.ready), (Degraded, 1));
        // A row of an older revision does not count as planned for the current one.
        let stale = placed("a1", "d@1", 1, 2, 7, false);
        assert!(!slices(&want, &[stale], &[], 1_500, 1_000)[0].planned);
    }

    fn replica(index: u32, phase: Phase, ready: bool, restarts: u32, reason: Option<&str>) -> ReplicaStatus {
        ReplicaStatus {
            index,
            phase,
            pid: Some(100 + index),
            port: Some(20_000 + index as u16),
            ready,
            restarts,
            reason: reason.map(str::to_string),
            since_ms: 0,
        }
    }

    fn slice(connected: bool, desired: u32, intent: u64, observed: Option<(u64, Vec<ReplicaStatus>)>) -> AgentSlice {
        AgentSlice { agent_id: "a1".into(), connected, desired, intent_generation: intent, planned: true, observed }
    }

    use DeploymentStatus::*;
    use Phase::{Failed as PFailed, Running as PRunning, Starting as PStarting, Stopped as PStopped};

    #[test]
    fn status_table() {
        let up = |i| replica(i, PRunning, true, 0, None);
        let starting = |i| replica(i, PStarting, false, 0, None);
        let crashing = |i| replica(i, PFailed, false, 3, Some("exited with code 1; restarting in 800 ms"));
        let not_ready = |i| replica(i, phase_degraded(), false, 0, Some("readiness probe failing: HTTP 500"));
        // (stopped, desired, slices, expected)
        let cases: Vec<(bool, u32, Vec<AgentSlice>, DeploymentStatus)> = vec![
            (false, 2, vec![slice(true, 2, 3, Some((3, vec![up(0), up(1)])))], Running),
            (false, 2, vec![slice(true, 2, 3, Some((2, vec![up(0), up(1)])))], Deploying),
            (false, 2, vec![slice(true, 2, 3, None)], Deploying),
            (false, 2, vec![slice(true, 2, 3, Some((3, vec![starting(0), starting(1)])))], Deploying),
            (false, 2, vec![slice(true, 2, 3, Some((3, vec![up(0), crashing(1)])))], Degraded),
            (false, 2, vec![slice(true, 2, 3, Some((3, vec![crashing(0), crashing(1)])))], Failed),
            (false, 1, vec![slice(true, 1, 3, Some((3, vec![not_ready(0)])))], Failed),
            (false, 2, vec![slice(false, 2, 3, Some((3, vec![up(0), up(1)])))], Unknown),
            (false, 2, vec![slice(true, 0, 3, None)], Pending),
            (false, 2, vec![], Pending),
            (true, 2, vec![slice(true, 0, 4, Some((4, vec![])))], Stopped),
            (true, 2, vec![slice(true, 0, 4, Some((3, vec![up(0)])))], Stopping),
            (true, 2, vec![slice(true, 0, 4, Some((4, vec![replica(0, PStopped, false, 0, None)])))], Stopped),
            // A crash-looping replica in backoff is not "stopped" until the agent applied the stop.
            (true, 2, vec![slice(true, 0, 4, Some((3, vec![crashing(0)])))], Stopping),
            (true, 2, vec![slice(true, 0, 4, Some((3, vec![])))], Stopping),
            // An intent planned before the latest change: the old replicas do not count.
            (
                false,
                2,
                vec![AgentSlice { planned: false, ..slice(true, 2, 3, Some((3, vec![up(0), up(1)]))) }],
                Deploying,
            ),
            // A report from an agent without a share cannot make the deployment healthy.
            (false, 1, vec![slice(true, 0, 3, Some((3, vec![up(0)]))), slice(true, 1, 3, None)], Deploying),
        ];
        for (i, (stopped, desired, slices, want)) in cases.into_iter().enumerate() {
            let d = derive(stopped, desired, &slices);
            assert_eq!(d.status, want, "case {i}: {:?}", d.reasons);
        }
    }

    fn phase_degraded() -> Phase {
        Phase::Degraded
    }

    #[test]
    fn partial_success_across_agents_and_reasons() {
        let a = AgentSlice {
            agent_id: "a1".into(),
            connected: true,
            desired: 1,
            intent_generation: 1,
            planned: true,
            observed: Some((1, vec![replica(0, PRunning, true, 0, None)])),
        };
        let b = AgentSlice {
            agent_id: "a2".into(),
            connected: false,
            desired: 1,
            intent_generation: 1,
            planned: true,
            observed: Some((1, vec![replica(0, PRunning, true, 0, None)])),
        };
        let d = derive(false, 2, &[a, b]);
        assert_eq!((d.status, d.ready, d.current), (Degraded, 1, 1));
        assert_eq!(d.reasons, ["agent a2 is disconnected"]);
        assert_eq!(d.replicas.len(), 2);
        assert!(d.replicas[0].current && !d.replicas[1].current);
        let failing = derive(
            false,
            1,
            &[slice(true, 1, 1, Some((1, vec![replica(0, PFailed, false, 2, Some("exited with code 3"))])))],
        );
        assert_eq!(failing.reasons, ["replica 0 on a1: exited with code 3"]);
        assert_eq!(failing.status.health(), "unhealthy");
    }
}
