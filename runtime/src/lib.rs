//! Ferry's runtimes: the [`Runtime`] trait — what the agent needs from whatever runs its
//! workloads (apply a list level-triggered, observe status and changes, count dropped log lines,
//! shut down, name its kind) — and [`ProcessRuntime`], the implementation that runs each assigned
//! [`Workload`] (one revision of one deployment, id `<deployment>@<revision>`) of kind
//! `process` as `replicas` local processes and reports what it observes. The agent holds an `Arc<dyn Runtime>` and advertises `runtime:<kind>` to the control
//! plane (`runtime:process` here), so another implementation (Kubernetes) can sit beside this one.
//!
//! The rest of these docs describe the process runtime.
//!
//! # API
//!
//! The inherent methods below are also its [`Runtime`] implementation ([`Runtime::kind`] is
//! [`PROCESS_RUNTIME_KIND`], `"process"`).
//!
//! * [`ProcessRuntime::new`] — creates the runtime (killing leftovers of a previous agent run,
//!   see below); captured output goes to the given channel as [`SourcedLine`]s.
//! * [`ProcessRuntime::apply`] — level-triggered: makes the running set equal the given list.
//!   Applying the same list again changes nothing. A workload whose spec or `restart_nonce`
//!   changed is replaced one replica at a time (stop old `i`, start new `i`; the new replica's
//!   readiness is not awaited before moving on); a workload no longer listed is stopped and
//!   removed from the status; a changed `replicas` count removes the highest indices first or
//!   adds the missing ones without touching the others. A new revision of a deployment (a
//!   workload added while another of the same `deployment_id` is removed) takes over the same
//!   way, replica by replica: stop old replica `i`, start new replica `i` — during the handover
//!   the status lists both ids, the old one with fewer replicas, the new one with more. `apply`
//!   returns once the stops it needed are done; starts are not awaited.
//! * [`ProcessRuntime::status`] / [`ProcessRuntime::changes`] — observed state, and a counter
//!   that changes whenever any replica's observed state does.
//! * [`ProcessRuntime::shutdown`] — stops everything and waits for it.
//! * [`ProcessRuntime::dropped_log_lines`] — lines lost to a full log channel.
//!
//! # Processes
//!
//! Each replica is `command args…` in its own process group, stdin `/dev/null`, in
//! `working_dir` if set. Its environment is exactly: `PATH` (the agent's, unless the spec sets
//! one), the spec's `env`, then the workload's secrets (`WorkloadSpec::ProcessWithSecrets`, which
//! override `env` entries of the same name), then `PORT`, `FERRY_WORKLOAD_ID` and `FERRY_REPLICA`
//! (which neither can override). A changed secret value replaces the replicas like a changed
//! spec. Nothing else of the agent's environment leaks into workloads. Each replica
//! gets a port from [`RuntimeConfig::port_range`] that passed a bind test on 127.0.0.1 and that
//! no other live replica holds; it keeps it across restarts.
//!
//! `command` and `args` may refer to that final environment with Kubernetes' `$(NAME)` syntax,
//! expanded before the process is spawned (no shell is involved, and each argument stays one
//! argument): `$(NAME)` becomes NAME's value, so `python3 -m http.server $(PORT)` listens on the
//! replica's port; a reference to a name that is not defined (or with no closing `)`) stays as
//! written, so a shell's `$(command)` in `sh -c` scripts keeps working; `$$` becomes `$`, so
//! `$$(NAME)` is the literal `$(NAME)` (and a shell's `$$` must be written `$$$$`). Any other `$`
//! is left alone. `env` values and exec probes' commands are not expanded.
//!
//! stdout and stderr are read line by line (`\n`, trailing `\r` stripped, lossy UTF-8, at most
//! 16 KiB per line; the excess is dropped) and sent to the log channel stamped with the time of
//! reading. When the channel is full a reader waits up to 50 ms, then drops the line and counts
//! it in [`ProcessRuntime::dropped_log_lines`]; it does not wait again until a line goes
//! through, so a stalled consumer neither blocks the supervisor nor throttles the workload.
//!
//! # Restarts
//!
//! `Always` restarts on any exit, `OnFailure` on a non-zero code, a signal, a failed startup or
//! liveness probe, or a failed spawn; `Never` leaves the replica `Failed` (failure) or `Stopped`
//! (exit code 0). Restarts wait 100 ms, doubling up to 10 s; the delay resets when the replica
//! had been ready for 10 s before it exited. `restarts` counts restarts actually performed.
//!
//! # Phases and reasons
//!
//! * `Pending` — created, no process yet (also while no port is free; the reason says so).
//! * `Starting` — spawned; startup probe or first readiness verdict pending.
//! * `Running` — ready (readiness passed, or there is no readiness probe).
//! * `Degraded` — running, but the readiness probe reached its failure threshold (also while a
//!   replica whose liveness probe failed is being stopped).
//! * `Failed` — exited and will not be restarted, **or** waiting in restart backoff after an
//!   exit; in the latter case the reason ends with `; restarting in N ms`.
//! * `Stopped` — stopped on request, or exited with code 0 under `Never`.
//!
//! `reason` explains `Failed`, `Degraded` and `Stopped`-by-exit ("exited with code 3", "killed
//! by signal 9", "spawn failed: No such file or directory", "liveness probe failed: …",
//! "readiness probe failing: …"); while `Starting` or `Running` it keeps the reason of the last
//! exit, if any, so a restarted replica still says why it restarted. `since_ms` is when the phase
//! last changed (ms since the Unix epoch).
//!
//! # Health checks
//!
//! Kubernetes semantics: the startup probe runs first and until it passes nothing else runs;
//! `failure_threshold` consecutive startup or liveness failures stop the process (gracefully,
//! like any stop) and count as a failure for the restart policy; readiness sets `ready` after
//! `success_threshold` consecutive successes and clears it after `failure_threshold` consecutive
//! failures, never restarting anything. Each check waits `initial_delay_ms`, then probes every
//! `period_ms` (0 means 10 s) with a `timeout_ms` limit (0 means 1 s); thresholds of 0 mean 1.
//! HTTP probes send a GET to 127.0.0.1 and pass on 200–399; TCP probes pass when a connection
//! opens; exec probes pass when the command (run with the replica's environment and working
//! directory, in its own process group, killed on timeout) exits 0. Port 0 means the replica's
//! `PORT`.
//!
//! # Stopping
//!
//! SIGTERM to the process group, SIGKILL to the group after `stop_grace_ms`, and the leader is
//! always reaped. After the leader exits — however it exits — anything left in its group is
//! SIGKILLed, and the runtime waits (up to 2 s) until no live member remains, so stopping leaves
//! no orphans behind unless they moved to another process group. Grandchildren re-parented to
//! PID 1 may linger as zombies if PID 1 does not reap; they are dead. Dropping the runtime
//! without [`ProcessRuntime::shutdown`] stops every replica in the background, and if the tokio
//! runtime goes away first the process groups are SIGKILLed.
//!
//! # Agent restarts
//!
//! A crashed agent must not leave unsupervised workloads behind, and a restarted one cannot
//! adopt them (it has no pipes to their output and cannot reap them). So for every live replica
//! the runtime keeps a pidfile in [`RuntimeConfig::run_dir`], `<escaped id>.<replica>.pid`,
//! containing `<pgid> <start time>` where the start time is field 22 of `/proc/<pgid>/stat`.
//! [`ProcessRuntime::new`] SIGKILLs each recorded group whose leader still has the recorded
//! start time (a reused PID has another, so a stranger is never killed) or whose leader is gone
//! (its surviving members keep the group id from being reused), then deletes the pidfiles; the
//! next [`ProcessRuntime::apply`] starts everything afresh. A crash between a spawn and its
//! pidfile write can still leak that one process.

mod api;
mod error;
mod expand;
mod health;
mod logs;
mod pidfile;
mod ports;
mod probe;
mod process;
mod replica;
mod runtime;
mod status;
mod workload;

use std::ops::Range;
use std::path::PathBuf;

pub use api::Runtime;
pub use runtime::{PROCESS_RUNTIME_KIND, ProcessRuntime};
pub use workload::Workload;

/// How a [`ProcessRuntime`] runs its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Ports handed to replicas as `PORT` (default `20000..30000`).
    pub port_range: Range<u16>,
    /// Where pidfiles live (default `/var/run/ferry/runtime`). One runtime per directory.
    pub run_dir: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { port_range: 20000..30000, run_dir: PathBuf::from("/var/run/ferry/runtime") }
    }
}

/// A captured output line and the replica it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedLine {
    pub workload_id: String,
    pub replica: u32,
    pub line: ferry_protocol::LogLine,
}
