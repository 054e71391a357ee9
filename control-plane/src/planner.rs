//! The planner: one deployment's desired state + the known agents + its current intent rows →
//! the intent rows that must change.
//!
//! Pure code, no I/O, table-tested. Given the same inputs it always produces the same placement,
//! so running it again (after a restart, on another replica, on every agent report) is harmless:
//! rows change, and agents' generations grow, only when a placement actually changes.
//!
//! Placement: a deployment targets agents by id or by label selector, and only agents that can
//! run its kind (`runtime:<kind>` among their capabilities) qualify — and, for a deployment with
//! secrets, only agents that can receive them (`secrets:v1`), and for a Git source only agents
//! that check commits out (`git:v1`); an agent labelled with an
//! environment ([`ENVIRONMENT_LABEL`], best imposed by its bootstrap token) runs only that
//! environment's deployments, so no target in `development` can reach a production host. Its replicas are spread over
//! the qualifying, non-revoked agents in id order — agent k of m gets `r / m` replicas, plus one
//! if `k < r % m` — so adding a replica never moves the existing ones. Agents that are merely
//! disconnected keep their share (level-triggered: they converge when they come back, and the
//! deployment reports itself degraded meanwhile instead of silently moving work). A workload is
//! one revision of the deployment (`<id>@<revision>`): a new revision's rows replace the old
//! revision's, which become tombstones until the agents acknowledge them.

use std::collections::BTreeMap;

use ferry_protocol::WorkloadIntent;

use crate::store::{IntentRow, RowChange};

/// The label that binds an agent to one environment: it then runs only deployments of that
/// environment (whatever their target says). Agents without it run any environment's.
pub const ENVIRONMENT_LABEL: &str = "ferry.dev/environment";

/// A deployment as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub id: String,
    /// Its environment's name: agents bound to another environment never host it.
    pub environment: String,
    pub revision: u64,
    /// Total replicas wanted across agents; 0 when the deployment is stopped or deleted.
    pub replicas: u32,
    pub target: Target,
    /// The runtime kind its workloads need (`process`).
    pub kind: &'static str,
    pub restart_nonce: u64,
    /// Whether its revision has secrets: only agents advertising
    /// [`ferry_protocol::SECRETS_CAPABILITY`] can receive them.
    pub secrets: bool,
    /// Whether its revision runs in a checkout of a Git source: only agents advertising
    /// [`ferry_protocol::GIT_CAPABILITY`] can check it out.
    pub git: bool,
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
    pub capabilities: Vec<String>,
    pub revoked: bool,
}

impl Candidate {
    /// Whether the agent advertised `runtime:<kind>`.
    pub fn can_run(&self, kind: &str) -> bool {
        self.capabilities.iter().any(|c| c.strip_prefix("runtime:") == Some(kind))
    }

    /// Whether the agent can run what `d` needs: its kind, its secrets if it has any, and its
    /// environment if the agent is bound to one.
    pub fn can_host(&self, d: &Desired) -> bool {
        self.labels.get(ENVIRONMENT_LABEL).is_none_or(|e| *e == d.environment)
            && self.can_run(d.kind)
            && (!d.secrets || self.capabilities.iter().any(|c| c == ferry_protocol::SECRETS_CAPABILITY))
            && (!d.git || self.capabilities.iter().any(|c| c == ferry_protocol::GIT_CAPABILITY))
    }
}

impl Target {
    /// Whether the target names this agent (revocation and capabilities aside).
    pub fn names(&self, agent: &Candidate) -> bool {
        match self {
            Target::Agents(ids) => ids.iter().any(|id| id == &agent.id),
            Target::Selector(sel) => sel.iter().all(|(k, v)| agent.labels.get(k) == Some(v)),
        }
    }

    pub fn matches(&self, agent: &Candidate) -> bool {
        !agent.revoked && self.names(agent)
    }
}

/// Replicas per agent (only agents with a share), `agents` in any order.
pub fn shares<'a>(d: &Desired, agents: impl IntoIterator<Item = &'a Candidate>) -> BTreeMap<String, u32> {
    let mut matching: Vec<&Candidate> = agents.into_iter().filter(|a| d.target.matches(a) && a.can_host(d)).collect();
    matching.sort_by(|a, b| a.id.cmp(&b.id));
    let m = matching.len() as u32;
    let mut out = BTreeMap::new();
    if m == 0 {
        return out;
    }
    for (k, agent) in matching.iter().enumerate() {
        let share = d.replicas / m + u32::from((k as u32) < d.replicas % m);
        if share > 0 {
            out.insert(agent.id.clone(), share);
        }
    }
    out
}

/// The rows of `d` that must change, given its current rows (live and tombstones): upserts for
/// new or different shares of the current revision, tombstones for live rows no longer wanted.
pub fn plan<'a>(d: &Desired, agents: impl IntoIterator<Item = &'a Candidate>, current: &[IntentRow]) -> Vec<RowChange> {
    let workload_id = WorkloadIntent::id_for(&d.id, d.revision);
    let wanted = shares(d, agents);
    let existing: BTreeMap<(&str, &str), &IntentRow> =
        current.iter().map(|r| ((r.agent_id.as_str(), r.workload_id.as_str()), r)).collect();
    let mut changes = Vec::new();
    for (agent, &replicas) in &wanted {
        let same = existing.get(&(agent.as_str(), workload_id.as_str())).is_some_and(|r| {
            !r.removed && r.replicas == replicas && r.restart_nonce == d.restart_nonce && r.revision == d.revision
        });
        if !same {
            changes.push(RowChange {
                agent_id: agent.clone(),
                workload_id: workload_id.clone(),
                revision: d.revision,
                replicas,
                restart_nonce: d.restart_nonce,
                removed: false,
            });
        }
    }
    for r in current {
        let keep = r.workload_id == workload_id && wanted.contains_key(&r.agent_id);
        if !r.removed && !keep {
            changes.push(RowChange {
                agent_id: r.agent_id.clone(),
                workload_id: r.workload_id.clone(),
                revision: r.revision,
                replicas: 0,
                restart_nonce: r.restart_nonce,
                removed: true,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(replicas: u32, target: Target) -> Desired {
        Desired {
            id: "d".into(),
            environment: "development".into(),
            revision: 1,
            replicas,
            target,
            kind: "process",
            restart_nonce: 0,
            secrets: false,
            git: false,
        }
    }

    fn agent(id: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            capabilities: vec!["runtime:process".into()],
            revoked: false,
        }
    }

    fn sel(pairs: &[(&str, &str)]) -> Target {
        Target::Selector(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Applies changes the way the store does (every changed row at generation `g`).
    fn apply(rows: &mut Vec<IntentRow>, changes: &[RowChange], g: u64) {
        for c in changes {
            rows.retain(|r| !(r.agent_id == c.agent_id && r.workload_id == c.workload_id));
            rows.push(IntentRow {
                agent_id: c.agent_id.clone(),
                workload_id: c.workload_id.clone(),
                deployment_id: "d".into(),
                revision: c.revision,
                replicas: c.replicas,
                restart_nonce: c.restart_nonce,
                generation: g,
                removed: c.removed,
            });
        }
        rows.sort_by(|a, b| (&a.agent_id, &a.workload_id).cmp(&(&b.agent_id, &b.workload_id)));
    }

    fn live(rows: &[IntentRow]) -> Vec<(String, String, u32)> {
        rows.iter().filter(|r| !r.removed).map(|r| (r.agent_id.clone(), r.workload_id.clone(), r.replicas)).collect()
    }

    #[test]
    fn placement_table() {
        let agents = [agent("a1", &[("zone", "eu")]), agent("a2", &[("zone", "eu")]), agent("a3", &[("zone", "us")])];
        let s = |v: &[(&str, u32)]| v.iter().map(|(a, n)| (a.to_string(), *n)).collect::<BTreeMap<_, _>>();
        // (deployment, expected shares)
        let cases = [
            (dep(2, Target::Agents(vec!["a3".into()])), s(&[("a3", 2)])),
            (dep(3, sel(&[("zone", "eu")])), s(&[("a1", 2), ("a2", 1)])),
            (dep(1, sel(&[("zone", "eu")])), s(&[("a1", 1)])),
            (dep(4, sel(&[])), s(&[("a1", 2), ("a2", 1), ("a3", 1)])),
            (dep(0, sel(&[])), s(&[])),
            (dep(2, sel(&[("zone", "mars")])), s(&[])),
            (dep(2, Target::Agents(vec!["nope".into()])), s(&[])),
        ];
        for (d, want) in cases {
            assert_eq!(shares(&d, &agents), want, "{d:?}");
        }
    }

    #[test]
    fn only_capable_and_unrevoked_agents_get_replicas() {
        let mut k8s_only = agent("a0", &[]);
        k8s_only.capabilities = vec!["runtime:kubernetes".into()];
        let mut revoked = agent("a2", &[]);
        revoked.revoked = true;
        let agents = [k8s_only, agent("a1", &[]), revoked];
        assert_eq!(shares(&dep(2, sel(&[])), &agents), BTreeMap::from([("a1".to_string(), 2)]));
        let none = [agent("b", &[])].map(|mut a| {
            a.capabilities.clear();
            a
        });
        assert!(shares(&dep(2, sel(&[])), &none).is_empty(), "an agent that advertises nothing runs nothing");
    }

    #[test]
    fn a_deployment_with_secrets_goes_only_to_agents_that_can_receive_them() {
        let mut capable = agent("a2", &[]);
        capable.capabilities.push(ferry_protocol::SECRETS_CAPABILITY.into());
        let agents = [agent("a1", &[]), capable];
        let mut with_secrets = dep(2, sel(&[]));
        with_secrets.secrets = true;
        assert_eq!(shares(&with_secrets, &agents), BTreeMap::from([("a2".to_string(), 2)]));
        assert_eq!(shares(&dep(2, sel(&[])), &agents).len(), 2, "without secrets, both qualify");
        assert!(shares(&with_secrets, &agents[..1]).is_empty(), "no capable agent: pending, never placed");
    }

    #[test]
    fn a_git_source_goes_only_to_agents_that_check_commits_out() {
        let mut capable = agent("a2", &[]);
        capable.capabilities.push(ferry_protocol::GIT_CAPABILITY.into());
        let agents = [agent("a1", &[]), capable];
        let mut from_git = dep(3, sel(&[]));
        from_git.git = true;
        assert_eq!(shares(&from_git, &agents), BTreeMap::from([("a2".to_string(), 3)]));
        assert!(shares(&from_git, &agents[..1]).is_empty(), "no capable agent: pending, never placed");
        // With secrets too, it needs both.
        from_git.secrets = true;
        assert!(shares(&from_git, &agents).is_empty());
    }

    #[test]
    fn plans_are_idempotent_and_touch_only_what_changed() {
        let agents = [agent("a1", &[]), agent("a2", &[])];
        let mut rows = Vec::new();
        let first = plan(&dep(2, sel(&[])), &agents, &rows);
        assert_eq!(first.len(), 2);
        apply(&mut rows, &first, 1);
        // Same inputs: nothing to do.
        assert!(plan(&dep(2, sel(&[])), &agents, &rows).is_empty());
        // Scale to 3: only a1's share changes.
        let scaled = plan(&dep(3, sel(&[])), &agents, &rows);
        assert_eq!(scaled.len(), 1);
        assert_eq!((scaled[0].agent_id.as_str(), scaled[0].replicas), ("a1", 2));
        apply(&mut rows, &scaled, 2);
        // Stop: both rows become tombstones; then nothing more changes.
        let stopped = plan(&dep(0, sel(&[])), &agents, &rows);
        assert!(stopped.iter().all(|c| c.removed) && stopped.len() == 2);
        apply(&mut rows, &stopped, 3);
        assert!(live(&rows).is_empty());
        assert!(plan(&dep(0, sel(&[])), &agents, &rows).is_empty(), "tombstones are not removed twice");
        // Start again: the tombstones come back to life.
        let started = plan(&dep(2, sel(&[])), &agents, &rows);
        apply(&mut rows, &started, 4);
        assert_eq!(live(&rows), [("a1".into(), "d@1".into(), 1), ("a2".into(), "d@1".into(), 1)]);
        // A restart request changes the nonce, hence both rows.
        let mut restarted = dep(2, sel(&[]));
        restarted.restart_nonce = 1;
        assert_eq!(plan(&restarted, &agents, &rows).len(), 2);
    }

    #[test]
    fn a_new_revision_replaces_the_old_one() {
        let agents = [agent("a1", &[])];
        let mut rows = Vec::new();
        let first = plan(&dep(2, sel(&[])), &agents, &rows);
        apply(&mut rows, &first, 1);
        let mut next = dep(2, sel(&[]));
        next.revision = 2;
        let changes = plan(&next, &agents, &rows);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().any(|c| c.workload_id == "d@2" && !c.removed && c.replicas == 2));
        assert!(changes.iter().any(|c| c.workload_id == "d@1" && c.removed));
        apply(&mut rows, &changes, 2);
        assert_eq!(live(&rows), [("a1".into(), "d@2".into(), 2)]);
    }

    #[test]
    fn a_revoked_agent_loses_its_rows_and_others_take_over() {
        let agents = [agent("a1", &[]), agent("a2", &[])];
        let mut rows = Vec::new();
        let first = plan(&dep(2, sel(&[])), &agents, &rows);
        apply(&mut rows, &first, 1);
        let mut revoked = agents.clone();
        revoked[1].revoked = true;
        let changes = plan(&dep(2, sel(&[])), &revoked, &rows);
        apply(&mut rows, &changes, 2);
        assert_eq!(live(&rows), [("a1".into(), "d@1".into(), 2)]);
        assert!(rows.iter().any(|r| r.agent_id == "a2" && r.removed), "a2 is told to run nothing");
        assert!(plan(&dep(2, sel(&[])), &revoked, &rows).is_empty(), "and then nothing changes");
    }

    #[test]
    fn no_agent_yet_then_one_enrolls() {
        let mut rows = Vec::new();
        assert!(plan(&dep(2, sel(&[("role", "web")])), &[], &rows).is_empty());
        let arrived = [agent("a9", &[("role", "web")])];
        let changes = plan(&dep(2, sel(&[("role", "web")])), &arrived, &rows);
        apply(&mut rows, &changes, 1);
        assert_eq!(live(&rows), [("a9".into(), "d@1".into(), 2)]);
    }

    #[test]
    fn agents_bound_to_an_environment_host_only_its_deployments() {
        let agent = |id: &str, env: Option<&str>| Candidate {
            id: id.into(),
            labels: env.map(|e| (ENVIRONMENT_LABEL.to_string(), e.to_string())).into_iter().collect(),
            capabilities: vec!["runtime:process".into()],
            revoked: false,
        };
        let agents = [agent("a-dev", Some("development")), agent("b-free", None), agent("c-prod", Some("production"))];
        // A development deployment that selects every agent (or names the production one).
        let everyone = dep(3, Target::Selector(BTreeMap::new()));
        assert_eq!(shares(&everyone, &agents), BTreeMap::from([("a-dev".into(), 2), ("b-free".into(), 1)]));
        let named = dep(1, Target::Agents(vec!["c-prod".into()]));
        assert!(shares(&named, &agents).is_empty(), "a production host is out of development's reach");
        let prod = Desired { environment: "production".into(), ..dep(2, Target::Selector(BTreeMap::new())) };
        assert_eq!(shares(&prod, &agents), BTreeMap::from([("b-free".into(), 1), ("c-prod".into(), 1)]));
    }
}
