//! Observed state, in batches: sessions hand what changed in their agent's report to one writer,
//! which stores everything that arrived meanwhile in one transaction (a thousand agents reporting
//! at once — a fan-out — cost a few statements, not a thousand transactions) and then queues the
//! deployments concerned. One writer keeps each agent's reports in order.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::Handle;
use crate::AppState;
use crate::ids::now_ms;
use crate::store::ObservedReport;

/// Reports waiting for the writer before sessions wait for it (backpressure).
const QUEUE: usize = 8192;
/// Reports stored per transaction at most.
const BATCH: usize = 1024;

/// A report and what to queue once it is stored.
pub(crate) struct Pending {
    pub report: ObservedReport,
    /// Deployments whose workloads changed or disappeared.
    pub affected: Vec<String>,
    /// `(after, upto]`: the agent now acts on a newer generation; the deployments whose rows it
    /// covers are queued too.
    pub generation_moved: Option<(u64, u64)>,
    pub handle: Arc<Handle>,
}

#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Pending>,
    rx: Arc<Mutex<Option<mpsc::Receiver<Pending>>>>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self { tx, rx: Arc::new(Mutex::new(Some(rx))) }
    }

    /// Hands a report to the writer (waits while the writer is `QUEUE` reports behind).
    pub(crate) async fn send(&self, p: Pending) {
        if self.tx.send(p).await.is_err() {
            tracing::debug!("the observed-state writer has stopped");
        }
    }
}

/// The writer task; ends when `shutdown` turns true.
pub async fn write_observed(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = state.sessions.observed.rx.lock().expect("writer lock").take() else {
        tracing::error!("the observed-state writer was started twice");
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let reports: Vec<ObservedReport> = batch.iter().map(|p| p.report.clone()).collect();
        match state.store.record_observed_batch(&reports, now_ms()).await {
            Ok(()) => {
                let mut ids: Vec<String> = Vec::new();
                for p in &batch {
                    ids.extend(p.affected.iter().cloned());
                    if let Some((after, upto)) = p.generation_moved {
                        match state.store.deployments_changed_on_agent(&p.report.agent_id, after, upto).await {
                            Ok(more) => ids.extend(more),
                            Err(e) => {
                                tracing::warn!(agent_id = %p.report.agent_id, error = %e, "could not list changed deployments")
                            }
                        }
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                state.reconciler.enqueue_all(ids);
            }
            Err(e) => {
                tracing::warn!(error = %e, reports = batch.len(), "could not record status reports; their agents' next reports are written whole");
                for p in &batch {
                    p.handle.resync.store(true, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
    }
}
