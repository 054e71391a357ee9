//! The agent's workloads: the runtime (an `Arc<dyn Runtime>`; today always the process
//! runtime), fed the latest assignment by a dedicated task, observed for status reports, and its
//! output collected for shipping.
//!
//! The runtime lives as long as [`crate::run`]: sessions come and go around it, so losing the
//! control plane never touches a workload, and re-applying the same assignment after a
//! reconnect is a no-op. [`Workloads::shutdown`] stops everything when the agent exits.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{Assignment, Status};
use ferry_runtime::{ProcessRuntime, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::AgentState;
use crate::config::AgentConfig;
use crate::logs::{self, Limits, LogCounts, LogHub};
use crate::task::AbortOnDrop;

/// Capacity of the runtime's log channel; the collector drains it continuously.
const LOG_CHANNEL: usize = 4096;
/// How often the log figures are refreshed (the runtime's dropped count changes silently).
const LOG_COUNTS_REFRESH: Duration = Duration::from_secs(1);

/// The runtime and the tasks around it.
pub(crate) struct Workloads {
    runtime: Arc<dyn Runtime>,
    /// The newest assignment for the applier (only the latest matters).
    desired: watch::Sender<Option<Arc<Assignment>>>,
    observed: watch::Receiver<Status>,
    hub: Arc<LogHub>,
    publisher: Arc<Publisher>,
    // Aborted if the agent is dropped without `shutdown`: the runtime is then dropped too, which
    // stops every replica in the background.
    applier: AbortOnDrop<()>,
    collector: AbortOnDrop<()>,
    observer: AbortOnDrop<()>,
}

impl Workloads {
    /// Creates the runtime (killing whatever a crashed previous run left behind, see
    /// `ferry_runtime`) and starts the applier, log collector and observer tasks.
    pub(crate) fn start(config: &AgentConfig, state: &watch::Sender<AgentState>) -> Self {
        let runtime_config = config.runtime_config();
        let (log_tx, log_rx) = mpsc::channel(LOG_CHANNEL);
        let runtime: Arc<dyn Runtime> = Arc::new(ProcessRuntime::new(runtime_config.clone(), log_tx));
        let hub = Arc::new(LogHub::new(Limits::DEFAULT));
        let (observed_tx, observed) = watch::channel(Status { generation: 0, workloads: Vec::new() });
        let publisher = Arc::new(Publisher {
            runtime: Arc::clone(&runtime),
            hub: Arc::clone(&hub),
            state: state.clone(),
            observed: observed_tx,
        });
        let (desired, desired_rx) = watch::channel(None);
        let applier = AbortOnDrop(tokio::spawn(apply_latest(Arc::clone(&runtime), desired_rx, Arc::clone(&publisher))));
        let collector = AbortOnDrop(tokio::spawn(logs::collect(Arc::clone(&hub), log_rx)));
        let observer = AbortOnDrop(tokio::spawn(observe(Arc::clone(&publisher))));
        tracing::info!(
            run_dir = %runtime_config.run_dir.display(),
            ports = ?runtime_config.port_range,
            boot_id = hub.boot_id(),
            kind = runtime.kind(),
            "runtime ready"
        );
        Self { runtime, desired, observed, hub, publisher, applier, collector, observer }
    }

    /// Hands `assignment` to the applier and returns at once; a newer one handed over before
    /// the applier got to this one replaces it.
    pub(crate) fn assign(&self, assignment: Assignment) {
        self.desired.send_replace(Some(Arc::new(assignment)));
    }

    /// The observed state (generation applied by the runtime, workloads' status), updated on
    /// every change.
    pub(crate) fn observed(&self) -> watch::Receiver<Status> {
        self.observed.clone()
    }

    /// The capability naming the runtime, announced in `Hello` (`runtime:process`).
    pub(crate) fn capability(&self) -> String {
        self.runtime.capability()
    }

    pub(crate) fn logs(&self) -> Arc<LogHub> {
        Arc::clone(&self.hub)
    }

    /// Stops every workload (SIGTERM, then SIGKILL after each one's grace period) and waits
    /// for them; an apply in progress finishes first.
    pub(crate) async fn shutdown(self) {
        let Self { runtime, desired, observed: _, hub: _, publisher, mut applier, collector, observer } = self;
        drop(desired);
        tracing::info!("stopping the workloads");
        runtime.shutdown().await;
        if let Err(e) = (&mut applier.0).await {
            tracing::error!(error = %e, "the assignment applier failed");
        }
        for mut task in [collector, observer] {
            task.0.abort();
            let _ = (&mut task.0).await;
        }
        publisher.workloads();
        tracing::info!("workloads stopped");
    }
}

/// Publishes what the runtime observes to the session (as a [`Status`]) and to [`AgentState`].
struct Publisher {
    runtime: Arc<dyn Runtime>,
    hub: Arc<LogHub>,
    state: watch::Sender<AgentState>,
    observed: watch::Sender<Status>,
}

impl Publisher {
    fn workloads(&self) {
        let now = self.runtime.status();
        self.observed.send_if_modified(|s| replace_if_changed(&mut s.workloads, &now));
        self.state.send_if_modified(|st| replace_if_changed(&mut st.workloads, &now));
        self.log_counts();
    }

    /// The runtime finished applying `generation`: publish it together with a fresh snapshot in
    /// one update, so a report can never pair the new generation with pre-apply workloads.
    fn applied(&self, generation: u64) {
        let now = self.runtime.status();
        self.observed.send_if_modified(|s| {
            let g = replace_if_changed(&mut s.generation, &generation);
            replace_if_changed(&mut s.workloads, &now) || g
        });
        self.state.send_if_modified(|st| replace_if_changed(&mut st.workloads, &now));
        self.log_counts();
    }

    /// The log figures: lines waiting for an ack, and lines lost before shipping (dropped by
    /// the runtime because its channel was full, or by the full buffer).
    fn log_counts(&self) {
        let LogCounts { unacked, dropped } = *self.hub.counts().borrow();
        let dropped = self.runtime.dropped_log_lines() + dropped;
        self.state.send_if_modified(|st| {
            let changed = replace_if_changed(&mut st.dropped_log_lines, &dropped);
            replace_if_changed(&mut st.unacked_log_lines, &unacked) || changed
        });
    }
}

fn replace_if_changed<T: PartialEq + Clone>(slot: &mut T, new: &T) -> bool {
    if slot == new {
        return false;
    }
    *slot = new.clone();
    true
}

/// Applies the newest assignment, one at a time, until the sender goes away.
async fn apply_latest(
    runtime: Arc<dyn Runtime>,
    mut desired: watch::Receiver<Option<Arc<Assignment>>>,
    publisher: Arc<Publisher>,
) {
    while desired.changed().await.is_ok() {
        let Some(assignment) = desired.borrow_and_update().clone() else { continue };
        let started = Instant::now();
        let workloads: Vec<ferry_runtime::Workload> = assignment
            .workloads
            .iter()
            .map(|w| ferry_runtime::Workload {
                id: w.id.clone(),
                deployment_id: w.id.clone(),
                restart_nonce: w.restart_nonce,
                spec: ferry_protocol::WorkloadSpec::Process(w.spec.clone()),
            })
            .collect();
        runtime.apply(&workloads).await;
        tracing::info!(
            generation = assignment.generation,
            workloads = assignment.workloads.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "assignment handed to the runtime"
        );
        publisher.applied(assignment.generation);
    }
}

/// Republishes on every runtime or log buffer change, and the log figures periodically.
async fn observe(publisher: Arc<Publisher>) {
    let mut changes = publisher.runtime.changes();
    let mut counts = publisher.hub.counts();
    let mut refresh = tokio::time::interval(LOG_COUNTS_REFRESH);
    refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
    publisher.workloads();
    loop {
        tokio::select! {
            Ok(()) = changes.changed() => {
                changes.borrow_and_update();
                publisher.workloads();
            }
            Ok(()) = counts.changed() => {
                counts.borrow_and_update();
                publisher.log_counts();
            }
            _ = refresh.tick() => publisher.log_counts(),
        }
    }
}
