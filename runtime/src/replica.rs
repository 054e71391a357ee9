//! One supervisor task per replica: spawn, watch, health-check, restart with backoff, stop.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ferry_protocol::{Phase, ProcessSpec, RestartPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::SourcedLine;
use crate::error::{RuntimeError, io_message};
use crate::expand::expand;
use crate::health::{self, HealthEvent};
use crate::logs::LogSink;
use crate::pidfile;
use crate::ports::{PortLease, PortPool};
use crate::probe::ProbeTarget;
use crate::process::{self, Running};
use crate::status::{Slot, StatusBoard};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A replica that stayed ready this long before exiting restarts without accumulated backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// PATH given to children when the agent itself has none and the spec sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every supervisor shares.
pub(crate) struct Shared {
    pub(crate) board: Arc<StatusBoard>,
    pub(crate) ports: Arc<PortPool>,
    pub(crate) run_dir: PathBuf,
    pub(crate) log_tx: mpsc::Sender<SourcedLine>,
    pub(crate) dropped_lines: Arc<AtomicU64>,
}

/// The runtime's handle on a supervisor. Dropping it also stops the replica (the supervisor sees
/// the stop channel close), just without waiting.
pub(crate) struct ReplicaHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReplicaHandle {
    /// Puts replica `index` of `workload_id` on the board as `Pending` and starts supervising it.
    pub(crate) fn start(shared: &Arc<Shared>, workload_id: &str, index: u32, spec: Arc<ProcessSpec>) -> Self {
        shared.board.insert_pending(workload_id, index);
        let (stop, stop_rx) = watch::channel(false);
        let replica = Replica {
            shared: Arc::clone(shared),
            slot: Slot::new(Arc::clone(&shared.board), workload_id.to_owned(), index),
            workload_id: workload_id.to_owned(),
            index,
            spec,
            stop: stop_rx,
        };
        Self { stop, task: tokio::spawn(replica.supervise()) }
    }

    /// Asks the supervisor to stop its process (SIGTERM, then SIGKILL after the grace period).
    pub(crate) fn signal_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for the supervisor to finish (after [`Self::signal_stop`]).
    pub(crate) async fn join(self) {
        let Self { stop: _stop, task } = self;
        if let Err(err) = task.await {
            tracing::error!(error = %err, "replica supervisor failed");
        }
    }

    pub(crate) async fn stop(self) {
        self.signal_stop();
        self.join().await;
    }
}

/// How one run of the process ended.
enum Outcome {
    /// Stopped on request.
    Stopped,
    Exited {
        failed: bool,
        reason: String,
        /// How long it had been continuously ready when it exited.
        healthy_for: Duration,
    },
}

struct Replica {
    shared: Arc<Shared>,
    slot: Slot,
    workload_id: String,
    index: u32,
    spec: Arc<ProcessSpec>,
    stop: watch::Receiver<bool>,
}

impl Replica {
    async fn supervise(mut self) {
        let mut backoff = BACKOFF_START;
        let Some(mut lease) = self.lease_port().await else {
            self.slot.set(Phase::Stopped, false, None);
            return;
        };
        let mut target = self.target(lease.port());
        let mut last_exit: Option<String> = None;
        loop {
            let (failed, reason, healthy_for) = match self.run_once(&target, last_exit.clone()).await {
                Outcome::Stopped => break,
                Outcome::Exited { failed, reason, healthy_for } => (failed, reason, healthy_for),
            };
            let restart = match self.spec.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Never => false,
            };
            if !restart {
                let phase = if failed { Phase::Failed } else { Phase::Stopped };
                self.slot.update(|s| {
                    s.phase = phase;
                    s.pid = None;
                    s.ready = false;
                    s.reason = Some(reason);
                });
                self.stopped().await;
                break;
            }
            if healthy_for >= BACKOFF_RESET_AFTER {
                backoff = BACKOFF_START;
            }
            let delay = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.slot.update(|s| {
                s.phase = Phase::Failed;
                s.pid = None;
                s.ready = false;
                s.reason = Some(format!("{reason}; restarting in {} ms", delay.as_millis()));
            });
            last_exit = Some(reason);
            if self.sleep_or_stop(delay).await {
                break;
            }
            self.slot.update(|s| s.restarts = s.restarts.saturating_add(1));
            // A replica keeps its port across restarts, unless something else took it meanwhile
            // (then it would crash-loop on bind forever): lease another one.
            if failed && !crate::ports::bindable(lease.port()) {
                let Some(fresh) = self.lease_port().await else { break };
                tracing::info!(workload = %self.workload_id, replica = self.index, old = lease.port(),
                    new = fresh.port(), "port taken by another process; moving the replica");
                lease = fresh;
                target = self.target(lease.port());
            }
        }
        drop(lease);
        self.slot.update(|s| {
            s.phase = Phase::Stopped;
            s.pid = None;
            s.ready = false;
            s.reason = None;
        });
    }

    /// What probes need to reach this replica on `port` (and records the port in its status).
    fn target(&self, port: u16) -> Arc<ProbeTarget> {
        self.slot.update(|s| s.port = Some(port));
        Arc::new(ProbeTarget { port, env: Arc::new(self.environment(port)), cwd: self.spec.working_dir.clone() })
    }

    /// Leases a port, retrying with backoff while the range is exhausted. `None` if stopped first.
    async fn lease_port(&mut self) -> Option<PortLease> {
        let mut delay = BACKOFF_START;
        loop {
            match self.shared.ports.lease() {
                Ok(lease) => return Some(lease),
                Err(err) => self.slot.set(Phase::Pending, false, Some(err.to_string())),
            }
            if self.sleep_or_stop(delay).await {
                return None;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Sleeps for `delay`; returns true (early) if asked to stop.
    async fn sleep_or_stop(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = sleep(delay) => false,
            () = self.stopped() => true,
        }
    }

    /// Completes once a stop is requested or the runtime dropped its handle.
    async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }

    /// The child's complete environment: PATH (the agent's unless the spec sets one), the spec's
    /// variables, then PORT / FERRY_WORKLOAD_ID / FERRY_REPLICA, which the spec cannot override.
    fn environment(&self, port: u16) -> Vec<(OsString, OsString)> {
        let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
        env.insert("PATH".into(), std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()));
        env.extend(self.spec.env.iter().map(|(k, v)| (k.into(), v.into())));
        env.insert("PORT".into(), port.to_string().into());
        env.insert("FERRY_WORKLOAD_ID".into(), self.workload_id.clone().into());
        env.insert("FERRY_REPLICA".into(), self.index.to_string().into());
        env.into_iter().collect()
    }

    /// Runs the process once, from spawn to exit (or stop).
    async fn run_once(&mut self, target: &Arc<ProbeTarget>, last_exit: Option<String>) -> Outcome {
        self.slot.set(Phase::Starting, false, last_exit.clone());
        // `$(NAME)` in the command line refers to the replica's final environment.
        let program = expand(&self.spec.command, &target.env);
        let args: Vec<OsString> = self.spec.args.iter().map(|arg| expand(arg, &target.env)).collect();
        let cmd = process::command(program, &args, &target.env, self.spec.working_dir.as_deref());
        let sink = LogSink {
            tx: self.shared.log_tx.clone(),
            dropped: Arc::clone(&self.shared.dropped_lines),
            workload_id: Arc::from(self.workload_id.as_str()),
            replica: self.index,
        };
        let mut child = match Running::spawn(cmd, &sink) {
            Ok(child) => child,
            Err(err) => {
                let reason = format!("spawn failed: {}", io_message(&err));
                return Outcome::Exited { failed: true, reason, healthy_for: Duration::ZERO };
            }
        };
        let pid = child.pid();
        let _pidfile = pidfile::write(&self.shared.run_dir, &self.workload_id, self.index, pid)
            .inspect_err(|err| match err {
                // Exited already: there is nothing left to record.
                RuntimeError::Vanished(_) => tracing::debug!(pid, "replica exited before its pidfile was written"),
                _ => tracing::warn!(pid, error = %err, "cannot record the replica's pidfile"),
            })
            .ok();
        self.slot.update(|s| s.pid = Some(pid));
        tracing::debug!(workload = %self.workload_id, replica = self.index, pid, "replica started");

        let (events_tx, mut events) = mpsc::channel(8);
        let checker = health::spawn(Arc::clone(&self.spec), Arc::clone(target), events_tx);
        let grace = Duration::from_millis(u64::from(self.spec.stop_grace_ms));
        let mut ready_since: Option<Instant> = None;
        let (probe_failure, status): (Option<String>, io::Result<ExitStatus>) = loop {
            tokio::select! {
                status = child.wait() => break (None, status),
                Some(event) = events.recv() => match event {
                    HealthEvent::Ready => {
                        ready_since.get_or_insert_with(Instant::now);
                        self.slot.set(Phase::Running, true, last_exit.clone());
                    }
                    HealthEvent::NotReady(reason) => {
                        ready_since = None;
                        self.slot.set(Phase::Degraded, false, Some(reason));
                    }
                    HealthEvent::Kill(reason) => {
                        tracing::info!(workload = %self.workload_id, replica = self.index, %reason, "stopping replica");
                        self.slot.update(|s| {
                            if s.phase == Phase::Running {
                                s.phase = Phase::Degraded;
                            }
                            s.ready = false;
                            s.reason = Some(reason.clone());
                        });
                        break (Some(reason), child.terminate(grace).await);
                    }
                },
                () = self.stopped() => {
                    checker.abort();
                    if let Err(err) = child.terminate(grace).await {
                        tracing::warn!(pid, error = %err, "stopping the replica failed");
                    }
                    child.finish().await;
                    return Outcome::Stopped;
                }
            }
        };
        checker.abort();
        child.finish().await;
        let healthy_for = ready_since.map_or(Duration::ZERO, |since| since.elapsed());
        let (failed, reason) = match (probe_failure, status) {
            (Some(reason), _) => (true, reason),
            (None, Ok(status)) => (!status.success(), process::describe_exit(&status)),
            (None, Err(err)) => (true, format!("wait failed: {}", io_message(&err))),
        };
        tracing::debug!(workload = %self.workload_id, replica = self.index, pid, %reason, "replica exited");
        Outcome::Exited { failed, reason, healthy_for }
    }
}
