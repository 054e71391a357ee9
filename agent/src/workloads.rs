//! The agent's workloads: the runtime (an `Arc<dyn Runtime>`; today always the process
//! runtime), fed the latest intent by a dedicated task, observed for status reports, and its
//! output collected for shipping.
//!
//! The runtime lives as long as [`crate::run`]: sessions come and go around it, so losing the
//! control plane never touches a workload, and re-applying the same intent after a reconnect is
//! a no-op. [`Workloads::shutdown`] stops everything when the agent exits.
//!
//! Workloads are routed by [`WorkloadSpec::kind`] to the runtime of that kind. A workload of a
//! kind no runtime here runs is not dropped silently: it is reported with every replica `Failed`
//! and a reason saying so (the control plane places workloads only on agents that advertise
//! their kind, so this only happens if it and the agent disagree).
//!
//! A workload of a Git source (`WorkloadSpec::ProcessFromGit`) first needs its commit checked
//! out ([`crate::checkouts`]): until then it is reported `Pending` (or `Failed` with the reason
//! while the checkout fails and is retried); once checked out it goes to the runtime as a plain
//! process workload whose working directory is in the checkout. The intent is routed again
//! whenever a checkout attempt ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::{GitCheckout, Phase, ReplicaStatus, Status, WorkloadSpec, WorkloadStatus};
use ferry_runtime::{ProcessRuntime, Runtime, Workload};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::AgentState;
use crate::checkouts::{Checkouts, Prepared};
use crate::config::AgentConfig;
use crate::intent::Intent;
use crate::logs::{self, Limits, LogCounts, LogHub};
use crate::net::now_ms;
use crate::task::AbortOnDrop;

/// Capacity of the runtime's log channel; the collector drains it continuously.
const LOG_CHANNEL: usize = 4096;
/// How often the log figures are refreshed (the runtime's dropped count changes silently).
const LOG_COUNTS_REFRESH: Duration = Duration::from_secs(1);

/// The runtime and the tasks around it.
pub(crate) struct Workloads {
    runtime: Arc<dyn Runtime>,
    /// Routes intents (checking Git sources out) and hands them to the applier.
    assigner: Arc<Assigner>,
    observed: watch::Receiver<Status>,
    hub: Arc<LogHub>,
    publisher: Arc<Publisher>,
    // Aborted if the agent is dropped without `shutdown`: the runtime is then dropped too, which
    // stops every replica in the background.
    applier: AbortOnDrop<()>,
    collector: AbortOnDrop<()>,
    observer: AbortOnDrop<()>,
    /// Routes the intent again when a checkout attempt ends.
    rerouter: AbortOnDrop<()>,
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
            unrunnable: Mutex::new(Vec::new()),
        });
        let (desired, desired_rx) = watch::channel(None);
        let checkouts = Checkouts::new(&config.state_dir);
        let mut checkout_changes = checkouts.changes();
        let assigner = Arc::new(Assigner { kind: runtime.kind(), checkouts, latest: Mutex::new(None), desired });
        let applier = AbortOnDrop(tokio::spawn(apply_latest(
            Arc::clone(&runtime),
            desired_rx,
            Arc::clone(&publisher),
            Arc::downgrade(&assigner),
        )));
        let rerouting = Arc::clone(&assigner);
        let rerouter = AbortOnDrop(tokio::spawn(async move {
            while checkout_changes.changed().await.is_ok() {
                checkout_changes.borrow_and_update();
                rerouting.reroute();
            }
        }));
        let collector = AbortOnDrop(tokio::spawn(logs::collect(Arc::clone(&hub), log_rx)));
        let observer = AbortOnDrop(tokio::spawn(observe(Arc::clone(&publisher))));
        tracing::info!(
            run_dir = %runtime_config.run_dir.display(),
            ports = ?runtime_config.port_range,
            boot_id = hub.boot_id(),
            kind = runtime.kind(),
            "runtime ready"
        );
        Self { runtime, assigner, observed, hub, publisher, applier, collector, observer, rerouter }
    }

    /// Hands `intent` to the applier and returns at once; a newer one handed over before the
    /// applier got to this one replaces it.
    pub(crate) fn assign(&self, intent: &Intent) {
        self.assigner.assign(Arc::new(intent.clone()));
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
        let Self { runtime, assigner, observed: _, hub: _, publisher, mut applier, collector, observer, mut rerouter } =
            self;
        // The applier ends once the last holder of the assigner (and so of its sender) is gone.
        rerouter.0.abort();
        let _ = (&mut rerouter.0).await;
        drop(assigner);
        tracing::info!("stopping the workloads");
        runtime.shutdown().await;
        if let Err(e) = (&mut applier.0).await {
            tracing::error!(error = %e, "the intent applier failed");
        }
        for mut task in [collector, observer] {
            task.0.abort();
            let _ = (&mut task.0).await;
        }
        publisher.workloads();
        tracing::info!("workloads stopped");
    }
}

/// An intent split by runtime: what the runtime runs, and the status of what none runs.
struct Routed {
    generation: u64,
    workloads: Vec<Workload>,
    unrunnable: Vec<WorkloadStatus>,
    /// The Git sources (url, commit) the intent names.
    sources: HashSet<(String, String)>,
}

/// Routes intents and hands them to the applier: the newest intent is kept, so that it can be
/// routed again when a checkout attempt ends.
struct Assigner {
    kind: &'static str,
    checkouts: Arc<Checkouts>,
    /// The newest intent. Held while routing, so an older intent's routing can never be sent
    /// after a newer one's.
    latest: Mutex<Option<Arc<Intent>>>,
    /// The newest routed intent for the applier (only the latest matters).
    desired: watch::Sender<Option<Arc<Routed>>>,
}

impl Assigner {
    fn assign(&self, intent: Arc<Intent>) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let routed = self.route(&intent);
        for w in &routed.unrunnable {
            if intent.withheld.contains(&w.id) {
                tracing::info!(workload = %w.id, "waiting for the control plane to send this workload's secrets");
            } else if intent.workloads.get(&w.id).is_some_and(|i| i.spec.git().is_some()) {
                tracing::info!(workload = %w.id, "waiting for this workload's checkout");
            } else {
                tracing::warn!(workload = %w.id, "no runtime here runs this workload's kind; reported as failed");
            }
        }
        *latest = Some(intent);
        self.desired.send_replace(Some(Arc::new(routed)));
    }

    /// Routes the newest intent again (a checkout attempt ended).
    fn reroute(&self) {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(intent) = latest.as_ref() {
            let routed = self.route(intent);
            self.desired.send_replace(Some(Arc::new(routed)));
        }
    }

    fn route(&self, intent: &Intent) -> Routed {
        let (workloads, unrunnable) = route(intent, self.kind, now_ms(), &|src| self.checkouts.prepare(src));
        Routed { generation: intent.generation, workloads, unrunnable, sources: sources(intent) }
    }

    /// Removes the checkouts neither `applied` nor the newest intent names.
    fn retain_checkouts(&self, applied: &Routed) {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keep = applied.sources.clone();
        if let Some(intent) = latest.as_ref() {
            keep.extend(sources(intent));
        }
        self.checkouts.retain(&keep);
    }
}

fn sources(intent: &Intent) -> HashSet<(String, String)> {
    intent.workloads.values().filter_map(|w| w.spec.git()).map(|g| (g.url.clone(), g.commit.clone())).collect()
}

/// Splits the intent's workloads into those of the runtime's `kind` and the status of the
/// others since `now_ms`: every replica `Pending` for a workload held without its secrets (it
/// starts once the control plane sent them), `Failed` with a reason for one of another kind. A
/// workload of a Git source runs once `prepare` says its checkout is ready (as a process
/// workload with its working directory there); meanwhile it is reported as `prepare` says.
fn route(
    intent: &Intent,
    kind: &str,
    now_ms: u64,
    prepare: &dyn Fn(&GitCheckout) -> Prepared,
) -> (Vec<Workload>, Vec<WorkloadStatus>) {
    let mut runnable = Vec::new();
    let mut unrunnable = Vec::new();
    for w in intent.workloads.values() {
        let withheld = intent.withheld.contains(&w.id);
        let prepared = match (&w.spec, withheld) {
            (WorkloadSpec::ProcessFromGit { source, .. }, false) if w.spec.kind() == kind => Some(prepare(source)),
            _ => None,
        };
        let waiting = match prepared {
            None if w.spec.kind() == kind && !withheld => {
                runnable.push(Workload::from(w));
                continue;
            }
            None => None,
            Some(Prepared::Ready(dir)) => {
                let mut workload = Workload::from(w);
                if let WorkloadSpec::ProcessFromGit { spec, secrets, .. } = workload.spec {
                    let spec = ferry_protocol::ProcessSpec { working_dir: Some(dir.display().to_string()), ..spec };
                    workload.spec = WorkloadSpec::ProcessWithSecrets { spec, secrets };
                }
                runnable.push(workload);
                continue;
            }
            Some(Prepared::Waiting { phase, reason }) => Some((phase, reason)),
        };
        let (phase, reason) = if let Some(waiting) = waiting {
            waiting
        } else if withheld {
            (Phase::Pending, "waiting for its secrets from the control plane (they are never stored on disk)".into())
        } else {
            (Phase::Failed, format!("this agent has no runtime for kind `{}` (it runs `{kind}`)", w.spec.kind()))
        };
        let replicas = (0..w.spec.replicas())
            .map(|index| ReplicaStatus {
                index,
                phase,
                pid: None,
                port: None,
                ready: false,
                restarts: 0,
                reason: Some(reason.clone()),
                since_ms: now_ms,
            })
            .collect();
        unrunnable.push(WorkloadStatus { id: w.id.clone(), replicas });
    }
    (runnable, unrunnable)
}

/// Publishes what the runtime observes to the session (as a [`Status`]) and to [`AgentState`].
struct Publisher {
    runtime: Arc<dyn Runtime>,
    hub: Arc<LogHub>,
    state: watch::Sender<AgentState>,
    observed: watch::Sender<Status>,
    /// The status of the applied workloads no runtime runs.
    unrunnable: Mutex<Vec<WorkloadStatus>>,
}

impl Publisher {
    /// The runtime's status and that of the workloads it cannot run, ordered by id.
    fn snapshot(&self) -> Vec<WorkloadStatus> {
        let mut all = self.runtime.status();
        let unrunnable = self.unrunnable.lock().unwrap_or_else(PoisonError::into_inner);
        if !unrunnable.is_empty() {
            all.extend(unrunnable.iter().cloned());
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        all
    }

    fn workloads(&self) {
        let now = self.snapshot();
        self.observed.send_if_modified(|s| replace_if_changed(&mut s.workloads, &now));
        self.state.send_if_modified(|st| replace_if_changed(&mut st.workloads, &now));
        self.log_counts();
    }

    /// The runtime finished applying `generation`: publish it together with a fresh snapshot in
    /// one update, so a report can never pair the new generation with pre-apply workloads.
    fn applied(&self, generation: u64, unrunnable: &[WorkloadStatus]) {
        *self.unrunnable.lock().unwrap_or_else(PoisonError::into_inner) = unrunnable.to_vec();
        let now = self.snapshot();
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

/// Applies the newest intent, one at a time, until the sender goes away.
async fn apply_latest(
    runtime: Arc<dyn Runtime>,
    mut desired: watch::Receiver<Option<Arc<Routed>>>,
    publisher: Arc<Publisher>,
    // Only a weak handle: the channel closes (and this loop ends) when `Workloads` drops it.
    assigner: std::sync::Weak<Assigner>,
) {
    while desired.changed().await.is_ok() {
        let Some(routed) = desired.borrow_and_update().clone() else { continue };
        let started = Instant::now();
        runtime.apply(&routed.workloads).await;
        tracing::info!(
            generation = routed.generation,
            workloads = routed.workloads.len(),
            unrunnable = routed.unrunnable.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "intent handed to the runtime"
        );
        publisher.applied(routed.generation, &routed.unrunnable);
        if let Some(assigner) = assigner.upgrade() {
            assigner.retain_checkouts(&routed);
        }
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

#[cfg(test)]
mod tests {
    use ferry_protocol::{WorkloadIntent, WorkloadSpec};

    use super::*;
    use crate::intent::tests::workload;

    fn no_git(_: &GitCheckout) -> Prepared {
        panic!("no Git source here")
    }

    #[test]
    fn git_workloads_run_in_their_checkout_once_it_is_ready() {
        let mut from_git = workload("g", 2, 2);
        let WorkloadSpec::Process(spec) = from_git.spec.clone() else { unreachable!() };
        let source = GitCheckout { url: "file:///r".into(), commit: "c".repeat(40), dir: "app".into() };
        let secrets =
            ferry_protocol::SecretMaterial { env: [("K".to_string(), ferry_protocol::SecretValue::new("v"))].into() };
        from_git.spec = WorkloadSpec::ProcessFromGit { spec, secrets: secrets.clone(), source: source.clone() };
        let intent = intent_of([workload("a", 1, 1), from_git]);

        let waiting = |_: &GitCheckout| Prepared::Waiting { phase: Phase::Failed, reason: "unreachable".into() };
        let (runnable, unrunnable) = route(&intent, "process", 5, &waiting);
        assert_eq!(runnable.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["a@1"]);
        assert_eq!(unrunnable[0].id, "g@2");
        assert_eq!(unrunnable[0].replicas.len(), 2);
        assert_eq!(unrunnable[0].replicas[0].phase, Phase::Failed);
        assert_eq!(unrunnable[0].replicas[0].reason.as_deref(), Some("unreachable"));

        let ready = |s: &GitCheckout| {
            assert_eq!(s, &source);
            Prepared::Ready("/state/checkouts/k/c/app".into())
        };
        let (runnable, unrunnable) = route(&intent, "process", 5, &ready);
        assert!(unrunnable.is_empty());
        let g = runnable.iter().find(|w| w.id == "g@2").unwrap();
        let WorkloadSpec::ProcessWithSecrets { spec, secrets: s } = &g.spec else { panic!("{:?}", g.spec) };
        assert_eq!(spec.working_dir.as_deref(), Some("/state/checkouts/k/c/app"));
        assert_eq!((spec.replicas, s), (2, &secrets));
    }

    fn intent_of(workloads: impl IntoIterator<Item = WorkloadIntent>) -> Intent {
        Intent {
            generation: 1,
            workloads: workloads.into_iter().map(|w| (w.id.clone(), w)).collect(),
            ..Intent::default()
        }
    }

    #[test]
    fn workloads_go_to_the_runtime_of_their_kind_and_others_are_reported_failed() {
        let intents = intent_of([workload("a", 1, 2), workload("b", 3, 1)]);
        let (runnable, unrunnable) = route(&intents, "process", 7, &no_git);
        assert!(unrunnable.is_empty());
        let ids: Vec<(&str, &str)> = runnable.iter().map(|w| (w.id.as_str(), w.deployment_id.as_str())).collect();
        assert_eq!(ids, [("a@1", "a"), ("b@3", "b")]);
        assert!(matches!(runnable[0].spec, WorkloadSpec::Process(ref p) if p.replicas == 2));

        // An agent whose runtime is of another kind cannot run them: reported, not dropped.
        let (runnable, unrunnable) = route(&intents, "kubernetes", 7, &no_git);
        assert!(runnable.is_empty());
        assert_eq!(unrunnable.len(), 2);
        assert_eq!(unrunnable[0].id, "a@1");
        assert_eq!(unrunnable[0].replicas.len(), 2);
        let r = &unrunnable[0].replicas[1];
        assert_eq!((r.index, r.phase, r.ready, r.since_ms), (1, Phase::Failed, false, 7));
        assert!(r.reason.as_deref().unwrap().contains("no runtime for kind `process`"), "{r:?}");
    }

    #[test]
    fn workloads_held_without_their_secrets_wait() {
        let secret = crate::intent::tests::with_secret("s", 2, "v");
        let held = intent_of([workload("a", 1, 1), secret]).without_secrets();
        let (runnable, waiting) = route(&held, "process", 9, &no_git);
        assert_eq!(runnable.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["a@1"]);
        assert_eq!(waiting.len(), 1);
        let r = &waiting[0].replicas[0];
        assert_eq!((waiting[0].id.as_str(), r.phase, r.since_ms), ("s@2", Phase::Pending, 9));
        assert!(r.reason.as_deref().unwrap().contains("secrets"), "{r:?}");
    }
}
