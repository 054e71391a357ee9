//! [`ProcessRuntime`]: reconciles the desired workloads with the supervised replicas; the
//! [`Runtime`] implementation the agent uses.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ferry_protocol::{ProcessSpec, WorkloadSpec, WorkloadStatus};
use tokio::sync::{Mutex, mpsc, watch};

use crate::ports::PortPool;
use crate::replica::{ReplicaHandle, Shared};
use crate::status::StatusBoard;
use crate::{Runtime, RuntimeConfig, SourcedLine, Workload, pidfile};

/// Supervises workloads' replicas as local process groups. See the crate docs.
pub struct ProcessRuntime {
    shared: Arc<Shared>,
    /// Serialises `apply` and `shutdown`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    workloads: BTreeMap<String, Entry>,
    shut_down: bool,
}

/// One applied workload and its replicas' supervisors.
struct Entry {
    workload: Workload,
    spec: Arc<ProcessSpec>,
    replicas: BTreeMap<u32, ReplicaHandle>,
}

impl ProcessRuntime {
    /// Creates the runtime, first killing the process groups a previous run recorded in
    /// `config.run_dir` (see the crate docs). `log_tx` receives every captured line tagged with
    /// its source. Nothing runs until [`Self::apply`].
    pub fn new(config: RuntimeConfig, log_tx: mpsc::Sender<SourcedLine>) -> Self {
        if let Err(err) = fs::create_dir_all(&config.run_dir) {
            tracing::warn!(dir = %config.run_dir.display(), error = %err, "cannot create the run directory");
        }
        let killed = pidfile::kill_leftovers(&config.run_dir);
        if killed > 0 {
            tracing::info!(killed, "killed process groups left by a previous run");
        }
        let shared = Shared {
            board: Arc::new(StatusBoard::new()),
            ports: PortPool::new(config.port_range),
            run_dir: config.run_dir,
            log_tx,
            dropped_lines: Arc::new(AtomicU64::new(0)),
        };
        Self { shared: Arc::new(shared), state: Mutex::new(State::default()) }
    }

    /// Level-triggered: makes the running set equal `workloads`, returning once every stop it
    /// needed has completed (new processes are started, not awaited).
    ///
    /// Idempotent: applying the same list again changes nothing. A workload whose spec (ignoring
    /// `replicas`) or `restart_nonce` changed is replaced replica by replica (stop old `i`, start
    /// new `i`); a workload no longer listed is stopped and removed; a changed replica count
    /// stops the highest indices first or starts the missing ones, leaving the others alone.
    /// When workloads of a deployment are removed and new workloads of the same deployment are
    /// added (a new revision), the new ones take over replica by replica the same way: stop old
    /// replica `i`, start new replica `i`, so the deployment never loses more than one replica
    /// at once; old replicas left over once every new one started are stopped together.
    /// If two workloads share an id, the last one wins. Does nothing after [`Self::shutdown`].
    pub async fn apply(&self, workloads: &[Workload]) {
        let mut state = self.state.lock().await;
        if state.shut_down {
            tracing::warn!("apply after shutdown ignored");
            return;
        }
        let mut desired: BTreeMap<&str, &Workload> = BTreeMap::new();
        for workload in workloads {
            if desired.insert(&workload.id, workload).is_some() {
                tracing::warn!(id = %workload.id, "workload listed twice; the last one wins");
            }
        }
        // New workloads, by deployment: each group takes over from the removed workloads of its
        // deployment, if any.
        let mut added: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
        for workload in desired.values().filter(|w| !state.workloads.contains_key(&w.id)) {
            added.entry(&workload.deployment_id).or_default().push(workload);
        }

        let gone: Vec<String> =
            state.workloads.keys().filter(|id| !desired.contains_key(id.as_str())).cloned().collect();
        let mut removed: Vec<(String, Entry)> = Vec::new();
        let mut handed_over: BTreeMap<String, Vec<(String, Entry)>> = BTreeMap::new();
        for id in gone {
            let Some(entry) = state.workloads.remove(&id) else { continue };
            if added.contains_key(entry.workload.deployment_id.as_str()) {
                handed_over.entry(entry.workload.deployment_id.clone()).or_default().push((id, entry));
            } else {
                removed.push((id, entry));
            }
        }
        stop_all(removed.iter().flat_map(|(_, entry)| entry.replicas.values()));
        for (id, entry) in removed {
            join_all(entry.replicas.into_values()).await;
            self.shared.board.remove_workload(&id);
            tracing::info!(%id, "workload removed");
        }

        for (id, workload) in &desired {
            if let Some(entry) = state.workloads.get_mut(*id) {
                self.reconcile(entry, workload).await;
            }
        }

        for (deployment, new) in added {
            let old = handed_over.remove(deployment).unwrap_or_default();
            for (id, entry) in self.hand_over(old, &new).await {
                state.workloads.insert(id, entry);
            }
        }
    }

    /// Starts `new` (workloads of one deployment), taking over from `old` (removed workloads of
    /// the same deployment, possibly none) one replica at a time: stop the next old replica,
    /// start the next new one; old replicas left once every new one started are stopped
    /// together. Returns the new entries by id.
    async fn hand_over(&self, old: Vec<(String, Entry)>, new: &[&Workload]) -> Vec<(String, Entry)> {
        let board = &self.shared.board;
        if !old.is_empty() {
            let from: Vec<&str> = old.iter().map(|(id, _)| id.as_str()).collect();
            let to: Vec<&str> = new.iter().map(|w| w.id.as_str()).collect();
            tracing::info!(?from, ?to, "handing over to a new revision replica by replica");
        }
        let old_ids: Vec<String> = old.iter().map(|(id, _)| id.clone()).collect();
        let mut old_replicas: Vec<(String, u32, ReplicaHandle)> = old
            .into_iter()
            .flat_map(|(id, entry)| entry.replicas.into_iter().map(move |(i, h)| (id.clone(), i, h)))
            .collect();
        // Stop in the order the new replicas start: replica 0 of the first old workload first.
        old_replicas.sort_by_key(|(_, index, _)| *index);
        let mut old_replicas = old_replicas.into_iter();

        let mut entries: Vec<(String, Entry)> = Vec::with_capacity(new.len());
        for workload in new {
            let spec = Arc::new(process_spec(workload));
            tracing::info!(id = %workload.id, replicas = spec.replicas, "starting workload");
            board.add_workload(&workload.id);
            let entry = Entry { workload: (*workload).clone(), spec, replicas: BTreeMap::new() };
            entries.push((workload.id.clone(), entry));
        }
        for (id, entry) in &mut entries {
            for index in 0..entry.spec.replicas {
                if let Some((old_id, old_index, handle)) = old_replicas.next() {
                    handle.stop().await;
                    board.remove_replica(&old_id, old_index);
                }
                entry.replicas.insert(index, ReplicaHandle::start(&self.shared, id, index, Arc::clone(&entry.spec)));
            }
        }
        let rest: Vec<(String, u32, ReplicaHandle)> = old_replicas.collect();
        stop_all(rest.iter().map(|(_, _, handle)| handle));
        for (_, _, handle) in rest {
            handle.join().await;
        }
        for id in old_ids {
            board.remove_workload(&id);
            tracing::info!(%id, "workload removed");
        }
        entries
    }

    async fn reconcile(&self, entry: &mut Entry, workload: &Workload) {
        let id = &workload.id;
        let wanted = workload.replicas();
        // Scale down first, highest index first, so that removed replicas are not replaced.
        while let Some((&index, _)) = entry.replicas.last_key_value()
            && index >= wanted
        {
            if let Some(handle) = entry.replicas.remove(&index) {
                handle.stop().await;
            }
            self.shared.board.remove_replica(id, index);
            tracing::info!(%id, index, "replica removed");
        }
        if !same_template(&entry.workload, workload) {
            tracing::info!(%id, "workload changed; replacing its replicas");
            let spec = Arc::new(process_spec(workload));
            let indices: Vec<u32> = entry.replicas.keys().copied().collect();
            for index in indices {
                if let Some(old) = entry.replicas.remove(&index) {
                    old.stop().await;
                }
                entry.replicas.insert(index, ReplicaHandle::start(&self.shared, id, index, Arc::clone(&spec)));
            }
            entry.spec = spec;
        }
        for index in 0..wanted {
            if !entry.replicas.contains_key(&index) {
                let handle = ReplicaHandle::start(&self.shared, id, index, Arc::clone(&entry.spec));
                entry.replicas.insert(index, handle);
            }
        }
        entry.workload = workload.clone();
    }

    /// Observed state of every workload (ordered by id), replicas ordered by index.
    pub fn status(&self) -> Vec<WorkloadStatus> {
        self.shared.board.snapshot()
    }

    /// A counter that changes whenever any replica's observed state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.board.subscribe()
    }

    /// How many log lines were dropped because the log channel stayed full.
    pub fn dropped_log_lines(&self) -> u64 {
        self.shared.dropped_lines.load(Ordering::Relaxed)
    }

    /// Stops everything gracefully — SIGTERM to every process group at once, SIGKILL to each
    /// after its `stop_grace_ms` — and returns when all have exited. Later `apply`s are ignored;
    /// the status keeps the replicas, as `Stopped`.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        state.shut_down = true;
        let entries = std::mem::take(&mut state.workloads);
        stop_all(entries.values().flat_map(|entry| entry.replicas.values()));
        for entry in entries.into_values() {
            join_all(entry.replicas.into_values()).await;
        }
    }
}

/// The process runtime's kind, announced by the agent as the capability `runtime:process`.
pub const PROCESS_RUNTIME_KIND: &str = "process";

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        PROCESS_RUNTIME_KIND
    }

    async fn apply(&self, workloads: &[Workload]) {
        ProcessRuntime::apply(self, workloads).await;
    }

    fn status(&self) -> Vec<WorkloadStatus> {
        ProcessRuntime::status(self)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        ProcessRuntime::changes(self)
    }

    fn dropped_log_lines(&self) -> u64 {
        ProcessRuntime::dropped_log_lines(self)
    }

    async fn shutdown(&self) {
        ProcessRuntime::shutdown(self).await;
    }
}

/// The process spec a workload's replicas run: its spec, with its secrets (if any) set as
/// environment variables over the spec's own. The agent hands this runtime only workloads of
/// its kind ([`PROCESS_RUNTIME_KIND`]); a new [`WorkloadSpec`] variant has to be handled here.
fn process_spec(workload: &Workload) -> ProcessSpec {
    match &workload.spec {
        WorkloadSpec::Process(spec) => spec.clone(),
        // The agent checks a `ProcessFromGit` workload's commit out itself and hands this
        // runtime a `ProcessWithSecrets` whose `working_dir` is in the checkout (the runtime knows
        // nothing of Git); one reaching it anyway runs its spec as given.
        WorkloadSpec::ProcessWithSecrets { spec, secrets } | WorkloadSpec::ProcessFromGit { spec, secrets, .. } => {
            let mut spec = spec.clone();
            spec.env.extend(secrets.env.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())));
            spec
        }
    }
}

/// Whether two versions of a workload run the same processes (replica count aside); a changed
/// secret value counts as a change.
fn same_template(old: &Workload, new: &Workload) -> bool {
    let strip = |spec: ProcessSpec| ProcessSpec { replicas: 0, ..spec };
    old.restart_nonce == new.restart_nonce && strip(process_spec(old)) == strip(process_spec(new))
}

fn stop_all<'a>(handles: impl Iterator<Item = &'a ReplicaHandle>) {
    for handle in handles {
        handle.signal_stop();
    }
}

async fn join_all(handles: impl Iterator<Item = ReplicaHandle>) {
    for handle in handles {
        handle.join().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}

    #[tokio::test]
    async fn the_runtime_and_its_futures_can_be_shared_across_tasks() {
        let dir = std::env::temp_dir().join(format!("ferry-runtime-send-{}", std::process::id()));
        let (tx, _rx) = mpsc::channel(1);
        let rt = ProcessRuntime::new(RuntimeConfig { port_range: 1..2, run_dir: dir.clone() }, tx);
        assert_send_sync(&rt);
        assert_send(rt.apply(&[]));
        assert_send(rt.shutdown());
        rt.shutdown().await;
        let _ = fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn usable_as_a_trait_object() {
        let dir = std::env::temp_dir().join(format!("ferry-runtime-dyn-{}", std::process::id()));
        let (tx, _rx) = mpsc::channel(1);
        let rt: Arc<dyn Runtime> =
            Arc::new(ProcessRuntime::new(RuntimeConfig { port_range: 1..2, run_dir: dir.clone() }, tx));
        assert_eq!(rt.kind(), "process");
        assert_eq!(rt.capability(), "runtime:process");
        rt.apply(&[]).await;
        assert!(rt.status().is_empty());
        assert_eq!(rt.dropped_log_lines(), 0);
        rt.shutdown().await;
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn replica_count_alone_is_not_a_template_change() {
        let spec = ProcessSpec {
            command: "true".to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            replicas: 1,
            restart_policy: ferry_protocol::RestartPolicy::Always,
            liveness: None,
            readiness: None,
            startup: None,
            stop_grace_ms: 0,
        };
        let with = |f: &dyn Fn(&mut ProcessSpec), nonce: u64| {
            let mut spec = spec.clone();
            f(&mut spec);
            Workload {
                id: "w@1".to_owned(),
                deployment_id: "w".to_owned(),
                restart_nonce: nonce,
                spec: WorkloadSpec::Process(spec),
            }
        };
        let workload = with(&|_| {}, 0);
        assert!(same_template(&workload, &with(&|s| s.replicas = 5, 0)));
        assert!(!same_template(&workload, &with(&|_| {}, 1)), "a new restart nonce");
        assert!(!same_template(&workload, &with(&|s| s.args.push("x".to_owned()), 0)));
    }
}
