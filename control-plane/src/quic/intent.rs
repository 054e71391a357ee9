//! Intent rows → the wire: protocol-2 [`IntentUpdate`]s (whole, or the changes since a
//! generation the agent holds) and protocol-1 whole [`Assignment`]s. This is the edge where
//! stored revisions (the validated configuration document) become wire specs, and the only
//! place secret values are opened: a revision that pins secrets gets them here, for an agent
//! that can receive them, inside its session (they are never cached, stored or logged in clear).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_protocol::{
    Assignment, GitCheckout, IntentUpdate, ProcessSpec, SecretMaterial, Workload, WorkloadIntent, WorkloadSpec,
};

use crate::model::Configuration;
use crate::secrets::MasterKey;
use crate::store::{IntentHead, IntentRow, SecretRecord, Store, StoreError};

/// Entries kept before the cache starts over (revisions are immutable, so any entry is valid
/// forever; the bound only caps memory).
const CACHE_MAX: usize = 100_000;

/// A revision's template: what every agent running it gets, but for its replica share.
#[derive(Debug)]
struct Template {
    name: String,
    version: String,
    spec: ProcessSpec,
    /// Whether the revision pins secrets (their values are fetched when it is sent).
    secrets: bool,
    /// The commit to run in, for a revision of a Git source.
    source: Option<GitCheckout>,
}

/// Revisions never change once written, so they are cached by `(deployment, revision)`.
#[derive(Default)]
pub struct Templates {
    cache: Mutex<HashMap<(String, u64), Arc<Template>>>,
}

impl Templates {
    async fn load(
        &self,
        store: &Store,
        rows: &[IntentRow],
    ) -> Result<HashMap<(String, u64), Arc<Template>>, StoreError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().expect("templates lock");
            for r in rows.iter().filter(|r| !r.removed) {
                let key = (r.deployment_id.clone(), r.revision);
                match cache.get(&key) {
                    Some(t) => {
                        found.insert(key, t.clone());
                    }
                    None => missing.push(r.deployment_id.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        let loaded = store.revisions_of(&missing).await?;
        let mut cache = self.cache.lock().expect("templates lock");
        if cache.len() + loaded.len() > CACHE_MAX {
            cache.clear();
        }
        for (deployment, revision, name, version, spec) in loaded {
            let config: Configuration = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                table: "deployment_revisions",
                column: "spec",
                message: e.to_string(),
            })?;
            let secrets = !config.secrets.is_empty();
            let source = config.checkout();
            let t = Arc::new(Template { name, version, spec: config.to_process_spec(), secrets, source });
            cache.insert((deployment, revision as u64), t);
        }
        for r in rows.iter().filter(|r| !r.removed) {
            let key = (r.deployment_id.clone(), r.revision);
            if let Some(t) = cache.get(&key) {
                found.insert(key, t.clone());
            }
        }
        Ok(found)
    }

    /// A protocol-2 update at `head` from `rows` (all live rows when `base` is `None`, else
    /// the rows changed since `base`, tombstones included). With `secrets` (the agent can
    /// receive them), a workload whose revision pins secrets carries their current values. With
    /// `git` (the agent advertised `git:v1`), a revision of a Git source is sent as
    /// `ProcessFromGit`; without, it is sent with no replicas (see below).
    pub async fn update(
        &self,
        store: &Store,
        secrets: Option<&MasterKey>,
        git: bool,
        head: IntentHead,
        base: Option<u64>,
        rows: &[IntentRow],
    ) -> Result<IntentUpdate, StoreError> {
        let templates = self.load(store, rows).await?;
        let materials = match secrets {
            Some(key) => materials(store, key, rows, &templates).await?,
            None => HashMap::new(),
        };
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for r in rows {
            if r.removed {
                removals.push(r.workload_id.clone());
                continue;
            }
            let Some(t) = templates.get(&(r.deployment_id.clone(), r.revision)) else {
                // Never send an intent without one of its rows: the agent would hold the
                // generation without it and nothing would ever correct that.
                return Err(StoreError::Corrupt {
                    table: "deployment_revisions",
                    column: "revision",
                    message: format!("intent names {}@{}, which is not stored", r.deployment_id, r.revision),
                });
            };
            let mut spec = t.spec.clone();
            spec.replicas = r.replicas;
            let spec = match (&t.source, materials.get(&r.deployment_id)) {
                (Some(source), secrets) if git => WorkloadSpec::ProcessFromGit {
                    spec,
                    secrets: secrets.cloned().unwrap_or_default(),
                    source: source.clone(),
                },
                (Some(_), _) => {
                    // The planner places Git-sourced workloads only on agents that can check
                    // commits out; this one was placed before it said otherwise. Without its
                    // checkout the command must not run at all: no replicas here.
                    tracing::warn!(workload = %r.workload_id, "not running a Git-sourced workload on an agent \
                        without git:v1; it will be placed elsewhere");
                    WorkloadSpec::Process(ProcessSpec { replicas: 0, ..spec })
                }
                (None, Some(secrets)) => WorkloadSpec::ProcessWithSecrets { spec, secrets: secrets.clone() },
                (None, None) => {
                    if t.secrets {
                        // The planner places such workloads only on agents that can receive
                        // secrets; this one was placed before it said otherwise.
                        tracing::warn!(workload = %r.workload_id, "sending a workload without its secrets to an agent \
                            that cannot receive them; it will be placed elsewhere");
                    }
                    WorkloadSpec::Process(spec)
                }
            };
            upserts.push(WorkloadIntent {
                id: r.workload_id.clone(),
                deployment_id: r.deployment_id.clone(),
                revision: r.revision,
                name: t.name.clone(),
                version: t.version.clone(),
                restart_nonce: r.restart_nonce,
                spec,
            });
        }
        Ok(IntentUpdate { generation: head.generation, base, upserts, removals })
    }

    /// A protocol-1 assignment: every live row, one workload per deployment named by the
    /// deployment id (protocol-1 agents run one revision of a deployment).
    pub async fn assignment(
        &self,
        store: &Store,
        head: IntentHead,
        rows: &[IntentRow],
    ) -> Result<Assignment, StoreError> {
        let update = self.update(store, None, false, head, None, rows).await?;
        let mut workloads: Vec<Workload> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for w in update.upserts {
            if !seen.insert(w.deployment_id.clone()) {
                continue;
            }
            // Secrets go only to agents that advertise them, which speak protocol 2.
            let spec = w.spec.process().clone();
            workloads.push(Workload {
                id: w.deployment_id,
                name: w.name,
                version: w.version,
                spec,
                restart_nonce: w.restart_nonce,
            });
        }
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Assignment { generation: head.generation, workloads })
    }
}

/// The secret material of every deployment whose live rows' revision pins secrets: its
/// environment's and its own secrets as they are now, opened with `key`. One query per update.
async fn materials(
    store: &Store,
    key: &MasterKey,
    rows: &[IntentRow],
    templates: &HashMap<(String, u64), Arc<Template>>,
) -> Result<HashMap<String, SecretMaterial>, StoreError> {
    let mut ids: Vec<String> = rows
        .iter()
        .filter(|r| !r.removed && templates.get(&(r.deployment_id.clone(), r.revision)).is_some_and(|t| t.secrets))
        .map(|r| r.deployment_id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let mut by_deployment: HashMap<String, Vec<SecretRecord>> = ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for (deployment, secret) in store.secrets_of_deployments(&ids).await? {
        by_deployment.entry(deployment).or_default().push(secret);
    }
    let mut out = HashMap::with_capacity(by_deployment.len());
    for (deployment, secrets) in by_deployment {
        let refs: Vec<&SecretRecord> = secrets.iter().collect();
        let material = crate::secrets::material(key, &refs).map_err(|e| StoreError::Corrupt {
            table: "secrets",
            column: "ciphertext",
            message: format!("a secret of deployment {deployment}: {e}"),
        })?;
        out.insert(deployment, material);
    }
    Ok(out)
}
