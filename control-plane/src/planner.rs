//! The planner: desired deployments + known agents → per-agent intent.
//!
//! Pure code, no I/O. Given the same inputs it always produces the same placement, so running it
//! again (after a restart, on another replica, every few seconds) is harmless: an agent's
//! generation is bumped only when its workload list actually changes.
//!
//! Placement: a deployment targets agents by id or by label selector. Its replicas are spread
//! over the matching, non-revoked agents in id order — agent k of m gets `r / m` replicas, plus
//! one if `k < r % m` — so adding a replica never moves the existing ones. Agents that are merely
//! disconnected keep their share (level-triggered: they converge when they come back, and the
//! deployment reports itself degraded meanwhile instead of silently moving work).

use std::collections::BTreeMap;

use ferry_protocol::{Assignment, ProcessSpec, Workload};

/// A deployment as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub id: String,
    pub name: String,
    pub version: String,
    pub spec: ProcessSpec,
    /// Total replicas wanted across agents; 0 when the deployment is stopped.
    pub replicas: u32,
    pub target: Target,
    pub restart_nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// These agents, by id.
    Agents(Vec<String>),
    /// Every agent whose labels include all of these.
    Selector(BTreeMap<String, String>),
}

/// An agent as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub revoked: bool,
}

impl Target {
    pub fn matches(&self, agent: &Candidate) -> bool {
        !agent.revoked
            && match self {
                Target::Agents(ids) => ids.iter().any(|id| id == &agent.id),
                Target::Selector(sel) => sel.iter().all(|(k, v)| agent.labels.get(k) == Some(v)),
            }
    }
}

/// Agent id → its workloads (sorted by workload id), for every non-revoked agent (possibly empty).
pub fn place(deployments: &[Desired], agents: &[Candidate]) -> BTreeMap<String, Vec<Workload>> {
    let mut sorted: Vec<&Candidate> = agents.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out: BTreeMap<String, Vec<Workload>> =
        sorted.iter().filter(|a| !a.revoked).map(|a| (a.id.clone(), Vec::new())).collect();
    for d in deployments {
        let matching: Vec<&&Candidate> = sorted.iter().filter(|a| d.target.matches(a)).collect();
        let m = matching.len() as u32;
        if m == 0 {
            continue;
        }
        for (k, agent) in matching.iter().enumerate() {
            let share = d.replicas / m + u32::from((k as u32) < d.replicas % m);
            if share == 0 {
                continue;
            }
            let mut spec = d.spec.clone();
            spec.replicas = share;
            out.entry(agent.id.clone()).or_default().push(Workload {
                id: d.id.clone(),
                name: d.name.clone(),
                version: d.version.clone(),
                spec,
                restart_nonce: d.restart_nonce,
            });
        }
    }
    for workloads in out.values_mut() {
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

/// New assignments for the agents whose workload list differs from their current intent; each
/// gets the next generation. Agents absent from `current` start at generation 1. Agents that
/// are no longer eligible (revoked) but still hold work get an empty list, so that nothing keeps
/// counting their old share.
pub fn plan(
    deployments: &[Desired],
    agents: &[Candidate],
    current: &BTreeMap<String, Assignment>,
) -> Vec<(String, Assignment)> {
    let mut placed = place(deployments, agents);
    for (agent, assignment) in current {
        if !assignment.workloads.is_empty() {
            placed.entry(agent.clone()).or_default();
        }
    }
    placed
        .into_iter()
        .filter_map(|(agent, workloads)| {
            let now = current.get(&agent);
            let unchanged = match now {
                Some(a) => a.workloads == workloads,
                None => workloads.is_empty(),
            };
            if unchanged {
                return None;
            }
            let generation = now.map_or(0, |a| a.generation) + 1;
            Some((agent, Assignment { generation, workloads }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ferry_protocol::RestartPolicy;

    use super::*;

    fn spec() -> ProcessSpec {
        ProcessSpec {
            command: "web".into(),
            args: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            replicas: 0,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 1000,
        }
    }

    fn dep(id: &str, replicas: u32, target: Target) -> Desired {
        Desired {
            id: id.into(),
            name: id.into(),
            version: "v1".into(),
            spec: spec(),
            replicas,
            target,
            restart_nonce: 0,
        }
    }

    fn agent(id: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            revoked: false,
        }
    }

    fn sel(pairs: &[(&str, &str)]) -> Target {
        Target::Selector(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Replica counts per agent for deployment `id`.
    fn shares(placed: &BTreeMap<String, Vec<Workload>>, id: &str) -> Vec<(String, u32)> {
        placed
            .iter()
            .filter_map(|(a, ws)| ws.iter().find(|w| w.id == id).map(|w| (a.clone(), w.spec.replicas)))
            .collect()
    }

    #[test]
    fn placement_table() {
        let agents = [agent("a1", &[("zone", "eu")]), agent("a2", &[("zone", "eu")]), agent("a3", &[("zone", "us")])];
        let s = |v: &[(&str, u32)]| v.iter().map(|(a, n)| (a.to_string(), *n)).collect::<Vec<_>>();
        // (deployment, expected shares)
        let cases = [
            (dep("d", 2, Target::Agents(vec!["a3".into()])), s(&[("a3", 2)])),
            (dep("d", 3, sel(&[("zone", "eu")])), s(&[("a1", 2), ("a2", 1)])),
            (dep("d", 1, sel(&[("zone", "eu")])), s(&[("a1", 1)])),
            (dep("d", 4, sel(&[])), s(&[("a1", 2), ("a2", 1), ("a3", 1)])),
            (dep("d", 0, sel(&[])), s(&[])),
            (dep("d", 2, sel(&[("zone", "mars")])), s(&[])),
            (dep("d", 2, Target::Agents(vec!["nope".into()])), s(&[])),
        ];
        for (d, want) in cases {
            assert_eq!(shares(&place(std::slice::from_ref(&d), &agents), "d"), want, "{d:?}");
        }
    }

    #[test]
    fn revoked_agents_get_nothing_and_no_entry() {
        let mut a2 = agent("a2", &[]);
        a2.revoked = true;
        let placed = place(&[dep("d", 2, sel(&[]))], &[agent("a1", &[]), a2]);
        assert_eq!(shares(&placed, "d"), vec![("a1".to_string(), 2)]);
        assert!(!placed.contains_key("a2"));
    }

    #[test]
    fn plan_bumps_generations_only_on_change() {
        let agents = [agent("a1", &[]), agent("a2", &[])];
        let deps = [dep("d", 2, sel(&[]))];
        let first = plan(&deps, &agents, &BTreeMap::new());
        assert_eq!(first.iter().map(|(a, x)| (a.as_str(), x.generation)).collect::<Vec<_>>(), [("a1", 1), ("a2", 1)]);
        let current: BTreeMap<_, _> = first.into_iter().collect();
        // Same inputs: nothing to do (idempotent).
        assert!(plan(&deps, &agents, &current).is_empty());
        // Scale to 3: only a1's share changes.
        let next = plan(&[dep("d", 3, sel(&[]))], &agents, &current);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].0.as_str(), next[0].1.generation, next[0].1.workloads[0].spec.replicas), ("a1", 2, 2));
        // Stop: both agents get an empty list at the next generation.
        let stopped = plan(&[dep("d", 0, sel(&[]))], &agents, &current);
        assert!(stopped.iter().all(|(_, a)| a.workloads.is_empty() && a.generation == 2));
        // A new agent with nothing to run needs no assignment yet.
        assert!(plan(&[], &[agent("a9", &[])], &BTreeMap::new()).is_empty());
        // A restart request changes the nonce, hence the workload, hence the generation.
        let mut restarted = dep("d", 2, sel(&[]));
        restarted.restart_nonce = 1;
        assert_eq!(plan(&[restarted], &agents, &current).len(), 2);
    }

    #[test]
    fn a_revoked_agent_loses_its_intent() {
        let agents = [agent("a1", &[]), agent("a2", &[])];
        let current: BTreeMap<_, _> = plan(&[dep("d", 2, sel(&[]))], &agents, &BTreeMap::new()).into_iter().collect();
        let mut revoked = agents.clone();
        revoked[1].revoked = true;
        let next: BTreeMap<_, _> = plan(&[dep("d", 2, sel(&[]))], &revoked, &current).into_iter().collect();
        assert_eq!(next["a1"].workloads[0].spec.replicas, 2, "a1 takes over the share");
        assert!(next["a2"].workloads.is_empty() && next["a2"].generation == 2, "a2 is told to run nothing");
        let settled: BTreeMap<_, _> = current.into_iter().chain(next).collect();
        assert!(plan(&[dep("d", 2, sel(&[]))], &revoked, &settled).is_empty(), "and then nothing changes");
    }

    #[test]
    fn workloads_are_sorted_for_stable_comparison() {
        let deps = [dep("z", 1, sel(&[])), dep("b", 1, sel(&[]))];
        let placed = place(&deps, &[agent("a1", &[])]);
        let ids: Vec<&str> = placed["a1"].iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["b", "z"]);
    }
}
