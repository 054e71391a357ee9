//! [`Runtime`]: what the agent needs from whatever runs its workloads.

use async_trait::async_trait;
use ferry_protocol::WorkloadStatus;
use tokio::sync::watch;

use crate::Workload;

/// Runs an agent's workloads and observes them. [`crate::ProcessRuntime`] is one
/// implementation (local process groups); another one (say, Kubernetes) plugs in beside it.
///
/// Object-safe: the agent holds an `Arc<dyn Runtime>`. Captured output is not part of the
/// trait: an implementation takes its log channel (of [`crate::SourcedLine`]s) when it is
/// created, the way [`crate::ProcessRuntime::new`] does.
///
/// Every implementation keeps these semantics:
///
/// * [`Runtime::apply`] is **level-triggered and idempotent**: it makes what runs equal the
///   given list. Applying the same list again changes nothing; a workload whose spec (ignoring
///   `replicas`) or `restart_nonce` changed is replaced; a workload no longer listed is stopped
///   and removed from the status; a changed replica count removes the highest indices or adds
///   the missing ones without touching the others. When an `apply` removes workloads of a
///   deployment and adds others of the same deployment (a new revision), the new ones replace
///   the old ones one replica at a time, never all at once. If two workloads share an id, the
///   last one wins. It never fails: problems (a spawn that fails, a cluster that is unreachable) show in
///   the replicas' status, and the implementation keeps converging on its own.
/// * The agent hands a runtime only workloads whose [`ferry_protocol::WorkloadSpec::kind`] is
///   its [`Runtime::kind`].
/// * [`Runtime::status`] lists every applied workload (ordered by id) with its replicas
///   (ordered by index), and [`Runtime::changes`] changes whenever any of that does.
/// * After [`Runtime::shutdown`], `apply` does nothing.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// The runtime's name, e.g. `"process"`. The agent announces it to the control plane as the
    /// capability `runtime:<kind>` (see [`Runtime::capability`]).
    fn kind(&self) -> &'static str;

    /// The capability the agent advertises in `Hello`: `runtime:<kind>`.
    fn capability(&self) -> String {
        format!("runtime:{}", self.kind())
    }

    /// Makes the running set equal `workloads` (see the trait docs). Returns once the stops it
    /// needed are done; starts need not be awaited.
    async fn apply(&self, workloads: &[Workload]);

    /// Observed state of every applied workload.
    fn status(&self) -> Vec<WorkloadStatus>;

    /// A counter that changes whenever anything [`Runtime::status`] returns changes.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Log lines lost because the log channel stayed full.
    fn dropped_log_lines(&self) -> u64;

    /// Stops every workload gracefully and returns once they all have stopped. Later
    /// [`Runtime::apply`] calls are ignored.
    async fn shutdown(&self);
}
