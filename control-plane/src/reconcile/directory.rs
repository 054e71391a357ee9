//! What placement needs, in memory: every agent's labels, capabilities and revocation, and every
//! deployment's target, so that reconciling one deployment does not read every agent and an
//! agent's change finds the deployments it may affect without reading every deployment.
//!
//! Updated at once by this replica's own changes (enrollment, sessions, revocation, writes) and
//! reloaded from the store periodically, which is how changes made by other replicas arrive.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::planner::{Candidate, Target};
use crate::store::{AgentRecord, Store, StoreError};

#[derive(Clone, Default)]
pub struct Directory {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Copy-on-write: a reconcile keeps the snapshot it started with.
    agents: Arc<BTreeMap<String, Candidate>>,
    /// Live deployments' targets (an unparsable target is absent: it matches nothing).
    targets: BTreeMap<String, Target>,
    /// Bumped by every local change; `touched` says when each key last changed locally, so a
    /// reload that read the store before a local change never undoes it.
    epoch: u64,
    touched: BTreeMap<String, u64>,
}

impl Inner {
    fn touch(&mut self, key: String) {
        self.epoch += 1;
        let e = self.epoch;
        self.touched.insert(key, e);
    }
}

pub fn candidate(a: &AgentRecord) -> Candidate {
    Candidate {
        id: a.id.clone(),
        labels: a.labels.clone(),
        capabilities: a.capabilities.clone(),
        revoked: a.revoked_at.is_some(),
    }
}

impl Directory {
    /// Reloads everything from the store.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let started = self.inner.read().expect("directory lock").epoch;
        let mut agents: BTreeMap<String, Candidate> =
            store.all_agents().await?.iter().map(|a| (a.id.clone(), candidate(a))).collect();
        let mut targets = BTreeMap::new();
        for (id, target, deleted) in store.deployment_targets().await? {
            if deleted {
                continue;
            }
            if let Ok(t) = serde_json::from_str::<crate::model::TargetJson>(&target).map(|t| t.validate())
                && let Ok(t) = t
            {
                targets.insert(id, t);
            }
        }
        let mut inner = self.inner.write().expect("directory lock");
        // Local changes made while the store was being read win, and agents are never deleted
        // from the store, so one missing from the snapshot is newer than it.
        for (id, a) in inner.agents.iter() {
            let newer = inner.touched.get(&format!("a/{id}")).is_some_and(|&e| e > started);
            if newer || !agents.contains_key(id) {
                agents.insert(id.clone(), a.clone());
            }
        }
        for (key, &e) in &inner.touched {
            if e > started
                && let Some(id) = key.strip_prefix("d/")
            {
                match inner.targets.get(id) {
                    Some(t) => targets.insert(id.to_string(), t.clone()),
                    None => targets.remove(id),
                };
            }
        }
        inner.agents = Arc::new(agents);
        inner.targets = targets;
        inner.touched.retain(|_, e| *e > started);
        Ok(())
    }

    pub fn agents(&self) -> Arc<BTreeMap<String, Candidate>> {
        self.inner.read().expect("directory lock").agents.clone()
    }

    /// Records an agent as it is now. Returns the live deployments whose placement may change
    /// because of it (their target names the agent, before or after the change), or nothing if
    /// nothing placement cares about changed.
    pub fn agent_changed(&self, now: Candidate) -> Vec<String> {
        let mut inner = self.inner.write().expect("directory lock");
        let before = inner.agents.get(&now.id).cloned();
        if before.as_ref() == Some(&now) {
            return Vec::new();
        }
        let affected = inner
            .targets
            .iter()
            .filter(|(_, t)| t.names(&now) || before.as_ref().is_some_and(|b| t.names(b)))
            .map(|(id, _)| id.clone())
            .collect();
        inner.touch(format!("a/{}", now.id));
        Arc::make_mut(&mut inner.agents).insert(now.id.clone(), now);
        affected
    }

    /// Records a deployment's target (`None`: deleted).
    pub fn deployment_changed(&self, id: &str, target: Option<Target>) {
        let mut inner = self.inner.write().expect("directory lock");
        inner.touch(format!("d/{id}"));
        match target {
            Some(t) => inner.targets.insert(id.to_string(), t),
            None => inner.targets.remove(id),
        };
    }

    /// Ids of live deployments, in id order.
    pub fn deployments(&self) -> Vec<String> {
        self.inner.read().expect("directory lock").targets.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, zone: &str) -> Candidate {
        Candidate {
            id: id.into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            capabilities: vec!["runtime:process".into()],
            revoked: false,
        }
    }

    #[test]
    fn an_agent_change_finds_the_deployments_it_may_move() {
        let d = Directory::default();
        d.deployment_changed("eu", Some(Target::Selector([("zone".to_string(), "eu".to_string())].into())));
        d.deployment_changed("us", Some(Target::Selector([("zone".to_string(), "us".to_string())].into())));
        d.deployment_changed("pinned", Some(Target::Agents(vec!["a2".into()])));
        assert_eq!(d.agent_changed(agent("a1", "eu")), ["eu"]);
        assert!(d.agent_changed(agent("a1", "eu")).is_empty(), "no change, nothing to do");
        // Moving zones affects both the old and the new zone's deployments.
        assert_eq!(d.agent_changed(agent("a1", "us")), ["eu", "us"]);
        let mut revoked = agent("a2", "mars");
        assert_eq!(d.agent_changed(revoked.clone()), ["pinned"]);
        revoked.revoked = true;
        assert_eq!(d.agent_changed(revoked), ["pinned"]);
        d.deployment_changed("pinned", None);
        assert_eq!(d.deployments(), ["eu", "us"]);
        assert_eq!(d.agents().len(), 2);
    }
}
