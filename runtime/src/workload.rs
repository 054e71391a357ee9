//! [`Workload`]: what a [`crate::Runtime`] is asked to run — one revision of one deployment.

use ferry_protocol::{WorkloadIntent, WorkloadSpec};

/// One workload: one revision of one deployment, as the agent hands it to a runtime.
///
/// Built from the protocol's [`WorkloadIntent`] (see the `From` impl); the runtime does not
/// depend on the wire's assignment messages. `spec` says what to run by runtime kind
/// ([`WorkloadSpec::kind`]); the agent hands a runtime only the workloads of its
/// [`crate::Runtime::kind`].
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `<deployment id>@<revision>` (just the deployment id for workloads that came from a
    /// protocol-1 control plane). Names the workload in the status, its pidfiles, its log lines
    /// and each replica's `FERRY_WORKLOAD_ID`.
    pub id: String,
    /// The deployment this workload is a revision of. When one `apply` removes a workload and
    /// adds another of the same deployment, the runtime hands over from one to the other replica
    /// by replica (see [`crate::Runtime::apply`]).
    pub deployment_id: String,
    /// Bumped when a user asks for a restart without changing the spec.
    pub restart_nonce: u64,
    pub spec: WorkloadSpec,
}

impl Workload {
    /// Replicas to run.
    pub fn replicas(&self) -> u32 {
        self.spec.replicas()
    }
}

impl From<WorkloadIntent> for Workload {
    fn from(w: WorkloadIntent) -> Self {
        Self { id: w.id, deployment_id: w.deployment_id, restart_nonce: w.restart_nonce, spec: w.spec }
    }
}

impl From<&WorkloadIntent> for Workload {
    fn from(w: &WorkloadIntent) -> Self {
        Self {
            id: w.id.clone(),
            deployment_id: w.deployment_id.clone(),
            restart_nonce: w.restart_nonce,
            spec: w.spec.clone(),
        }
    }
}
