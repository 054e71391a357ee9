//! The observed state of every replica, plus the change counter behind
//! [`crate::ProcessRuntime::changes`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::{Phase, ReplicaStatus, WorkloadStatus};
use tokio::sync::watch;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type Replicas = BTreeMap<u32, ReplicaStatus>;

/// Status of all workloads, keyed by workload id then replica index.
pub(crate) struct StatusBoard {
    workloads: Mutex<BTreeMap<String, Replicas>>,
    changes: watch::Sender<u64>,
}

impl StatusBoard {
    pub(crate) fn new() -> Self {
        Self { workloads: Mutex::new(BTreeMap::new()), changes: watch::Sender::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Replicas>> {
        // The map stays consistent even if a holder panicked: every update is a plain assignment.
        self.workloads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Makes `id` appear in the status even while it has no replica (scaled to zero).
    pub(crate) fn add_workload(&self, id: &str) {
        let added = self.lock().insert(id.to_owned(), Replicas::new()).is_none();
        if added {
            self.bump();
        }
    }

    pub(crate) fn remove_workload(&self, id: &str) {
        let removed = self.lock().remove(id).is_some();
        if removed {
            self.bump();
        }
    }

    /// (Re)creates replica `index` of `id` as `Pending`.
    pub(crate) fn insert_pending(&self, id: &str, index: u32) {
        let status = ReplicaStatus {
            index,
            phase: Phase::Pending,
            pid: None,
            port: None,
            ready: false,
            restarts: 0,
            reason: None,
            since_ms: now_ms(),
        };
        self.lock().entry(id.to_owned()).or_default().insert(index, status);
        self.bump();
    }

    pub(crate) fn remove_replica(&self, id: &str, index: u32) {
        let removed = self.lock().get_mut(id).and_then(|replicas| replicas.remove(&index)).is_some();
        if removed {
            self.bump();
        }
    }

    /// Applies `change` to one replica; stamps `since_ms` when the phase changed and notifies
    /// watchers when anything changed. A replica that is no longer on the board is ignored.
    pub(crate) fn update(&self, id: &str, index: u32, change: impl FnOnce(&mut ReplicaStatus)) {
        let changed = {
            let mut workloads = self.lock();
            let Some(status) = workloads.get_mut(id).and_then(|replicas| replicas.get_mut(&index)) else {
                return;
            };
            let before = status.clone();
            change(status);
            if status.phase != before.phase {
                status.since_ms = now_ms();
            }
            *status != before
        };
        if changed {
            self.bump();
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<WorkloadStatus> {
        self.lock()
            .iter()
            .map(|(id, replicas)| WorkloadStatus { id: id.clone(), replicas: replicas.values().cloned().collect() })
            .collect()
    }
}

/// One replica's entry on the board.
#[derive(Clone)]
pub(crate) struct Slot {
    board: Arc<StatusBoard>,
    workload_id: String,
    index: u32,
}

impl Slot {
    pub(crate) fn new(board: Arc<StatusBoard>, workload_id: String, index: u32) -> Self {
        Self { board, workload_id, index }
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut ReplicaStatus)) {
        self.board.update(&self.workload_id, self.index, change);
    }

    /// Sets phase, readiness and reason together (the common transition).
    pub(crate) fn set(&self, phase: Phase, ready: bool, reason: Option<String>) {
        self.update(|s| {
            s.phase = phase;
            s.ready = ready;
            s.reason = reason;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_bump_only_on_change_and_stamp_phase_changes() {
        let board = StatusBoard::new();
        let rx = board.subscribe();
        board.add_workload("w");
        board.insert_pending("w", 1);
        board.insert_pending("w", 0);
        let seen = *rx.borrow();
        board.update("w", 0, |s| s.ready = false);
        assert_eq!(*rx.borrow(), seen, "no-op update must not notify");
        board.update("w", 0, |s| {
            s.phase = Phase::Running;
            s.since_ms = 0;
        });
        assert!(*rx.borrow() > seen);
        let snap = board.snapshot();
        assert_eq!(snap[0].replicas.iter().map(|r| r.index).collect::<Vec<_>>(), vec![0, 1]);
        assert!(snap[0].replicas[0].since_ms > 0, "phase change stamps since_ms");
        board.update("nope", 0, |s| s.ready = true);
        board.remove_replica("w", 1);
        assert_eq!(board.snapshot()[0].replicas.len(), 1);
        board.remove_workload("w");
        assert!(board.snapshot().is_empty());
    }
}
