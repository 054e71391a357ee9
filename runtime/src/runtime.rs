//! [`ProcessRuntime`]: reconciles the desired workloads with the supervised replicas; the
//! [`Runtime`] implementation the agent uses.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use ferry_protocol::{ProcessSpec, Workload, WorkloadStatus};
use tokio::sync::{Mutex, mpsc, watch};

use crate::ports::PortPool;
use crate::replica::{ReplicaHandle, Shared};
use crate::status::StatusBoard;
use crate::{Runtime, RuntimeConfig, SourcedLine, pidfile};

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

        let gone: Vec<String> =
            state.workloads.keys().filter(|id| !desired.contains_key(id.as_str())).cloned().collect();
        let removed: Vec<(String, Entry)> =
            gone.into_iter().filter_map(|id| state.workloads.remove(&id).map(|entry| (id, entry))).collect();
        stop_all(removed.iter().flat_map(|(_, entry)| entry.replicas.values()));
        for (id, entry) in removed {
            join_all(entry.replicas.into_values()).await;
            self.shared.board.remove_workload(&id);
            tracing::info!(%id, "workload removed");
        }

        for (id, workload) in desired {
            match state.workloads.get_mut(id) {
                Some(entry) => self.reconcile(entry, workload).await,
                None => {
                    let entry = self.create(workload);
                    state.workloads.insert(id.to_owned(), entry);
                }
            }
        }
    }

    fn create(&self, workload: &Workload) -> Entry {
        tracing::info!(id = %workload.id, replicas = workload.spec.replicas, "starting workload");
        self.shared.board.add_workload(&workload.id);
        let spec = Arc::new(workload.spec.clone());
        let replicas = (0..workload.spec.replicas)
            .map(|i| (i, ReplicaHandle::start(&self.shared, &workload.id, i, Arc::clone(&spec))))
            .collect();
        Entry { workload: workload.clone(), spec, replicas }
    }

    async fn reconcile(&self, entry: &mut Entry, workload: &Workload) {
        let id = &workload.id;
        let wanted = workload.spec.replicas;
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
            let spec = Arc::new(workload.spec.clone());
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

/// Whether two versions of a workload run the same processes (replica count aside).
fn same_template(old: &Workload, new: &Workload) -> bool {
    let strip = |spec: &ProcessSpec| ProcessSpec { replicas: 0, ..spec.clone() };
    old.restart_nonce == new.restart_nonce && strip(&old.spec) == strip(&new.spec)
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
        let workload = Workload {
            id: "w".to_owned(),
            name: "w".to_owned(),
            version: "1".to_owned(),
            spec: ProcessSpec {
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
            },
            restart_nonce: 0,
        };
        let mut scaled = workload.clone();
        scaled.spec.replicas = 5;
        scaled.version = "2".to_owned();
        assert!(same_template(&workload, &scaled));
        let mut restarted = workload.clone();
        restarted.restart_nonce = 1;
        assert!(!same_template(&workload, &restarted));
        let mut changed = workload.clone();
        changed.spec.args.push("x".to_owned());
        assert!(!same_template(&workload, &changed));
    }
}
