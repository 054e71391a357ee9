//! The intent the agent holds (a generation and its workloads by id) and the pure decision of
//! what to do with an update: apply it, acknowledge it as stale, or ask for the whole intent.
//!
//! Generations only grow, so an update is applied only when it is newer than the held one;
//! anything else (a replay after reconnecting, a reordered push) is answered `Stale { current }`
//! and leaves the held intent alone. A protocol-2 delta (`base: Some(g)`) applies on top of
//! generation `g` exactly; held anything else, the agent answers `NeedFull { held }` and waits
//! for the whole intent.
//!
//! Workload ids depend on the protocol the intent came with ([`Naming`]): protocol 1 names a
//! workload by its deployment id, protocol 2 by `<deployment>@<revision>`. An intent named the
//! other way than the session speaks (the state file of an agent upgraded from protocol 1, or a
//! session with a control plane that speaks the other version) is never a base for a delta, and
//! a whole update at the same generation replaces it (it is the same intent, renamed).
//!
//! Secrets are never written to disk, so an intent loaded from the state file holds the
//! workloads that carry secrets without them ([`Intent::withheld`]). Such an intent is never a
//! delta's base either, and a whole update at the same generation replaces it: the agent asks
//! for it right after Welcome.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::{AckOutcome, Assignment, IntentUpdate, WorkloadIntent, WorkloadSpec};
use serde::{Deserialize, Serialize};

/// How an intent's workloads are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Naming {
    /// Protocol 1: one workload per deployment, named by the deployment id.
    Deployment,
    /// Protocol 2: one workload per revision, named `<deployment>@<revision>`.
    Revision,
}

impl Naming {
    /// The naming of a protocol version's intents.
    pub fn of_protocol(version: u16) -> Self {
        if version >= 2 { Naming::Revision } else { Naming::Deployment }
    }
}

/// The intent the agent holds: the complete workload list at `generation`.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// 0 when the agent never received one.
    pub generation: u64,
    pub naming: Naming,
    pub workloads: BTreeMap<String, WorkloadIntent>,
    /// Workloads held without their secrets (an intent loaded from the state file, which never
    /// stores secret values): they must not run until the control plane sends them again.
    pub withheld: BTreeSet<String>,
}

impl Default for Intent {
    fn default() -> Self {
        Self { generation: 0, naming: Naming::Revision, workloads: BTreeMap::new(), withheld: BTreeSet::new() }
    }
}

impl Intent {
    /// A protocol-1 assignment as an intent: each workload keeps its id (the deployment id), its
    /// revision is unknown (0).
    pub fn from_assignment(a: Assignment) -> Self {
        let workloads = a
            .workloads
            .into_iter()
            .map(|w| {
                let intent = WorkloadIntent {
                    id: w.id.clone(),
                    deployment_id: w.id.clone(),
                    revision: 0,
                    name: w.name,
                    version: w.version,
                    restart_nonce: w.restart_nonce,
                    spec: WorkloadSpec::Process(w.spec),
                };
                (w.id, intent)
            })
            .collect();
        Self { generation: a.generation, naming: Naming::Deployment, workloads, withheld: BTreeSet::new() }
    }

    /// This intent with a protocol-2 update applied (to be called once [`decide`] said
    /// [`Decision::Apply`]): a whole update replaces everything; a delta removes, then upserts.
    /// Removing an id not held is not an error (it may have come and gone since the base).
    pub fn updated(&self, u: IntentUpdate) -> Intent {
        let (mut workloads, mut withheld) = match u.base {
            Some(_) => (self.workloads.clone(), self.withheld.clone()),
            None => (BTreeMap::new(), BTreeSet::new()),
        };
        for id in &u.removals {
            workloads.remove(id);
            withheld.remove(id);
        }
        for w in u.upserts {
            withheld.remove(&w.id);
            workloads.insert(w.id.clone(), w);
        }
        Intent { generation: u.generation, naming: Naming::Revision, workloads, withheld }
    }

    /// The agent needs the whole intent to hold one named for `naming` (it holds a non-empty
    /// intent named the other way).
    pub fn needs_renaming(&self, naming: Naming) -> bool {
        self.generation > 0 && self.naming != naming
    }

    /// The agent cannot build on what it holds and needs the whole intent: it is named for the
    /// other protocol, or some of its workloads lack their secrets.
    pub fn needs_whole(&self, naming: Naming) -> bool {
        self.needs_renaming(naming) || !self.withheld.is_empty()
    }

    /// This intent as it may be written to disk: every workload's secret material removed,
    /// and those workloads listed in `withheld`.
    pub fn without_secrets(&self) -> Intent {
        let mut withheld = self.withheld.clone();
        let workloads = self
            .workloads
            .iter()
            .map(|(id, w)| {
                let mut w = w.clone();
                match &mut w.spec {
                    WorkloadSpec::ProcessWithSecrets { secrets, .. } => {
                        *secrets = Default::default();
                        withheld.insert(id.clone());
                    }
                    WorkloadSpec::ProcessFromGit { secrets, .. } if !secrets.env.is_empty() => {
                        *secrets = Default::default();
                        withheld.insert(id.clone());
                    }
                    _ => {}
                }
                (id.clone(), w)
            })
            .collect();
        Intent { generation: self.generation, naming: self.naming, workloads, withheld }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Persist the new intent and acknowledge it as applied.
    Apply,
    /// Keep the current intent; acknowledge with the generation in force.
    Stale { current: u64 },
    /// A delta on a base the agent does not hold: ask for the whole intent.
    NeedFull { held: u64 },
}

/// What to do with an update of generation `incoming`, a delta on `base` or whole (`None`),
/// named `naming`, given the `held` intent.
pub fn decide(held: &Intent, incoming: u64, base: Option<u64>, naming: Naming) -> Decision {
    let current = held.generation;
    let incomplete = held.needs_whole(naming);
    let newer = incoming > current || (incoming == current && base.is_none() && incomplete);
    if !newer {
        return Decision::Stale { current };
    }
    match base {
        Some(base) if incomplete || base != current => Decision::NeedFull { held: current },
        _ => Decision::Apply,
    }
}

impl Decision {
    /// The acknowledgement sent once the decision has been carried out.
    pub fn outcome(self) -> AckOutcome {
        match self {
            Decision::Apply => AckOutcome::Applied,
            Decision::Stale { current } => AckOutcome::Stale { current },
            Decision::NeedFull { held } => AckOutcome::NeedFull { held },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ferry_protocol::{ProcessSpec, RestartPolicy, Workload};

    use super::*;

    pub(crate) fn spec(replicas: u32) -> ProcessSpec {
        ProcessSpec {
            command: "/bin/true".into(),
            args: vec![],
            env: [("SECRET".to_string(), "x".to_string())].into(),
            working_dir: None,
            replicas,
            restart_policy: RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 1000,
        }
    }

    pub(crate) fn workload(deployment: &str, revision: u64, replicas: u32) -> WorkloadIntent {
        WorkloadIntent {
            id: WorkloadIntent::id_for(deployment, revision),
            deployment_id: deployment.into(),
            revision,
            name: "web".into(),
            version: format!("v{revision}"),
            restart_nonce: 0,
            spec: WorkloadSpec::Process(spec(replicas)),
        }
    }

    fn held(generation: u64, naming: Naming) -> Intent {
        Intent { generation, naming, workloads: BTreeMap::new(), withheld: BTreeSet::new() }
    }

    pub(crate) fn with_secret(deployment: &str, revision: u64, value: &str) -> WorkloadIntent {
        let mut w = workload(deployment, revision, 1);
        let WorkloadSpec::Process(spec) = w.spec else { unreachable!() };
        let secrets = ferry_protocol::SecretMaterial {
            env: [("TOKEN".to_string(), ferry_protocol::SecretValue::new(value))].into(),
        };
        w.spec = WorkloadSpec::ProcessWithSecrets { spec, secrets };
        w
    }

    #[test]
    fn an_intent_without_its_secrets_is_replaced_whole() {
        let full = Intent {
            generation: 5,
            naming: Naming::Revision,
            workloads: [workload("a", 1, 1), with_secret("b", 2, "s3cret")].map(|w| (w.id.clone(), w)).into(),
            withheld: BTreeSet::new(),
        };
        assert!(!full.needs_whole(Naming::Revision));
        let stored = full.without_secrets();
        assert_eq!(stored.withheld, BTreeSet::from(["b@2".to_string()]));
        assert_eq!(stored.workloads["a@1"], full.workloads["a@1"]);
        assert_eq!(stored.workloads["b@2"].spec.secrets(), Some(&Default::default()));
        assert!(!format!("{:?}", stored.workloads).contains("s3cret"));
        // Held without its secrets: never a delta's base; the same generation, whole, applies.
        assert!(stored.needs_whole(Naming::Revision));
        assert_eq!(decide(&stored, 6, Some(5), Naming::Revision), Decision::NeedFull { held: 5 });
        assert_eq!(decide(&stored, 5, None, Naming::Revision), Decision::Apply);
        assert_eq!(decide(&stored, 4, None, Naming::Revision), Decision::Stale { current: 5 });
        let whole = IntentUpdate {
            generation: 5,
            base: None,
            upserts: full.workloads.values().cloned().collect(),
            removals: vec![],
        };
        let back = stored.updated(whole);
        assert_eq!(back, full);
        assert!(!back.needs_whole(Naming::Revision));
    }

    #[test]
    fn decision_table() {
        use Naming::{Deployment as P1, Revision as P2};
        // (held generation, held naming, incoming, base, incoming naming, expected)
        let cases = [
            (0, P2, 0, None, P2, Decision::Stale { current: 0 }),
            (0, P2, 1, None, P2, Decision::Apply),
            (4, P2, 5, None, P2, Decision::Apply),
            (4, P2, 100, None, P2, Decision::Apply),
            (5, P2, 5, None, P2, Decision::Stale { current: 5 }),
            (5, P2, 4, None, P2, Decision::Stale { current: 5 }),
            (5, P2, 0, None, P2, Decision::Stale { current: 5 }),
            (u64::MAX, P2, u64::MAX, None, P2, Decision::Stale { current: u64::MAX }),
            (u64::MAX - 1, P2, u64::MAX, None, P2, Decision::Apply),
            // Deltas: on exactly the held generation, or the whole intent is needed.
            (4, P2, 5, Some(4), P2, Decision::Apply),
            (4, P2, 9, Some(4), P2, Decision::Apply),
            (4, P2, 9, Some(3), P2, Decision::NeedFull { held: 4 }),
            (4, P2, 9, Some(6), P2, Decision::NeedFull { held: 4 }),
            (0, P2, 9, Some(6), P2, Decision::NeedFull { held: 0 }),
            // Not newer: stale, whatever the base.
            (9, P2, 9, Some(4), P2, Decision::Stale { current: 9 }),
            (9, P2, 5, Some(9), P2, Decision::Stale { current: 9 }),
            // Protocol 1 assignments are always whole.
            (4, P1, 5, None, P1, Decision::Apply),
            (5, P1, 5, None, P1, Decision::Stale { current: 5 }),
            // An intent named for the other protocol: never a delta's base; the same generation,
            // whole, replaces it (it is the same intent, renamed).
            (5, P1, 6, Some(5), P2, Decision::NeedFull { held: 5 }),
            (5, P1, 5, None, P2, Decision::Apply),
            (5, P1, 4, None, P2, Decision::Stale { current: 5 }),
            (5, P1, 5, Some(5), P2, Decision::Stale { current: 5 }),
            (5, P2, 5, None, P1, Decision::Apply),
            (0, P1, 0, None, P2, Decision::Stale { current: 0 }),
        ];
        for (g, naming, incoming, base, theirs, want) in cases {
            assert_eq!(
                decide(&held(g, naming), incoming, base, theirs),
                want,
                "held {g} {naming:?}, incoming {incoming} on {base:?} {theirs:?}"
            );
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(Decision::Apply.outcome(), AckOutcome::Applied);
        assert_eq!(Decision::Stale { current: 3 }.outcome(), AckOutcome::Stale { current: 3 });
        assert_eq!(Decision::NeedFull { held: 3 }.outcome(), AckOutcome::NeedFull { held: 3 });
    }

    #[test]
    fn updates_replace_or_patch() {
        let whole = IntentUpdate {
            generation: 3,
            base: None,
            upserts: vec![workload("a", 1, 2), workload("b", 1, 1)],
            removals: vec![],
        };
        let held = Intent::from_assignment(Assignment { generation: 2, workloads: vec![] }).updated(whole);
        assert_eq!((held.generation, held.naming), (3, Naming::Revision));
        assert_eq!(held.workloads.keys().collect::<Vec<_>>(), ["a@1", "b@1"]);

        // A new revision of a, b scaled, an unknown id removed: harmless.
        let delta = IntentUpdate {
            generation: 4,
            base: Some(3),
            upserts: vec![workload("a", 2, 2), workload("b", 1, 5)],
            removals: vec!["a@1".into(), "gone@7".into()],
        };
        let next = held.updated(delta);
        assert_eq!(next.generation, 4);
        assert_eq!(next.workloads.keys().collect::<Vec<_>>(), ["a@2", "b@1"]);
        assert_eq!(next.workloads["b@1"].spec.replicas(), 5);

        // A whole update drops what it does not list.
        let whole = IntentUpdate { generation: 5, base: None, upserts: vec![workload("c", 1, 1)], removals: vec![] };
        assert_eq!(next.updated(whole).workloads.keys().collect::<Vec<_>>(), ["c@1"]);
    }

    #[test]
    fn protocol_1_assignments_keep_their_ids() {
        let a = Assignment {
            generation: 7,
            workloads: vec![Workload {
                id: "dep-1".into(),
                name: "web".into(),
                version: "v1".into(),
                spec: spec(2),
                restart_nonce: 3,
            }],
        };
        let intent = Intent::from_assignment(a);
        assert_eq!((intent.generation, intent.naming), (7, Naming::Deployment));
        let w = &intent.workloads["dep-1"];
        assert_eq!((w.deployment_id.as_str(), w.revision, w.restart_nonce), ("dep-1", 0, 3));
        assert_eq!(w.spec, WorkloadSpec::Process(spec(2)));
        assert!(intent.needs_renaming(Naming::Revision) && !intent.needs_renaming(Naming::Deployment));
        assert!(!Intent::default().needs_renaming(Naming::Deployment), "nothing held, nothing to rename");
    }
}
