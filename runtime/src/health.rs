//! Health checking of one running process, Kubernetes-style: the startup probe runs first and
//! gates the others; liveness failures kill the process; readiness only flips `ready`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{HealthCheck, ProcessSpec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::probe::{self, ProbeTarget};

/// Period used when a check says 0 (Kubernetes' default).
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// Timeout used when a check says 0 (Kubernetes' default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the health checker tells the replica's supervisor.
#[derive(Debug)]
pub(crate) enum HealthEvent {
    /// The process should receive traffic.
    Ready,
    /// The readiness probe reached its failure threshold.
    NotReady(String),
    /// The startup or liveness probe reached its failure threshold: stop the process.
    Kill(String),
}

/// Starts checking; the task ends after a `Kill`, and must be aborted when the process exits.
pub(crate) fn spawn(
    spec: Arc<ProcessSpec>,
    target: Arc<ProbeTarget>,
    events: mpsc::Sender<HealthEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move { check(&spec, &target, &events).await })
}

async fn check(spec: &ProcessSpec, target: &ProbeTarget, events: &mpsc::Sender<HealthEvent>) {
    if let Some(startup) = &spec.startup
        && let Err(reason) = until_verdict(startup, target).await
    {
        let _ = events.send(HealthEvent::Kill(format!("startup probe failed: {reason}"))).await;
        return;
    }
    let liveness = async {
        match &spec.liveness {
            Some(check) => {
                let reason = liveness(check, target).await;
                let _ = events.send(HealthEvent::Kill(format!("liveness probe failed: {reason}"))).await;
            }
            None => std::future::pending().await,
        }
    };
    let readiness = async {
        match &spec.readiness {
            Some(check) => readiness(check, target, events).await,
            None => {
                let _ = events.send(HealthEvent::Ready).await;
                std::future::pending().await
            }
        }
    };
    tokio::select! {
        () = liveness => {}
        () = readiness => {}
    }
}

/// Timing and thresholds of a check, with zeros replaced by sane values.
struct Schedule {
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Schedule {
    fn of(check: &HealthCheck) -> Self {
        let ms = |v: u32, default: Duration| if v == 0 { default } else { Duration::from_millis(u64::from(v)) };
        Self {
            initial_delay: Duration::from_millis(u64::from(check.initial_delay_ms)),
            period: ms(check.period_ms, DEFAULT_PERIOD),
            timeout: ms(check.timeout_ms, DEFAULT_TIMEOUT),
            success_threshold: check.success_threshold.max(1),
            failure_threshold: check.failure_threshold.max(1),
        }
    }
}

/// Consecutive successes / failures of a check.
#[derive(Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

/// Verdict after one probe: `Some(true)` once the success threshold is reached, `Some(false)`
/// once the failure threshold is reached, `None` while undecided.
impl Streak {
    fn record(&mut self, ok: bool, schedule: &Schedule) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= schedule.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= schedule.failure_threshold).then_some(false)
        }
    }
}

/// Probes every `period` (measured from the start of one probe to the next) after the initial
/// delay, yielding the streak's verdict and the probe's error after each probe.
struct Prober<'a> {
    check: &'a HealthCheck,
    target: &'a ProbeTarget,
    schedule: Schedule,
    streak: Streak,
    next: Instant,
}

impl<'a> Prober<'a> {
    fn new(check: &'a HealthCheck, target: &'a ProbeTarget) -> Self {
        let schedule = Schedule::of(check);
        let next = Instant::now() + schedule.initial_delay;
        Self { check, target, schedule, streak: Streak::default(), next }
    }

    async fn next(&mut self) -> (Option<bool>, Option<String>) {
        sleep_until(self.next).await;
        let started = Instant::now();
        let result = probe::run(&self.check.probe, self.target, self.schedule.timeout).await;
        self.next = started + self.schedule.period;
        let verdict = self.streak.record(result.is_ok(), &self.schedule);
        (verdict, result.err().map(|err| err.to_string()))
    }
}

/// Runs the startup probe until it passes (`Ok`) or fails for good (`Err(last error)`).
async fn until_verdict(check: &HealthCheck, target: &ProbeTarget) -> Result<(), String> {
    let mut prober = Prober::new(check, target);
    loop {
        match prober.next().await {
            (Some(true), _) => return Ok(()),
            (Some(false), error) => return Err(error.unwrap_or_default()),
            (None, _) => {}
        }
    }
}

/// Runs the liveness probe until it fails for good; returns the last error.
async fn liveness(check: &HealthCheck, target: &ProbeTarget) -> String {
    let mut prober = Prober::new(check, target);
    loop {
        if let (Some(false), error) = prober.next().await {
            return error.unwrap_or_default();
        }
    }
}

/// Runs the readiness probe until the supervisor goes away, reporting each change of readiness.
async fn readiness(check: &HealthCheck, target: &ProbeTarget, events: &mpsc::Sender<HealthEvent>) {
    let mut prober = Prober::new(check, target);
    let mut ready: Option<bool> = None;
    loop {
        let (verdict, error) = prober.next().await;
        let Some(verdict) = verdict else { continue };
        if ready == Some(verdict) {
            continue;
        }
        ready = Some(verdict);
        let event = if verdict {
            HealthEvent::Ready
        } else {
            HealthEvent::NotReady(format!("readiness probe failing: {}", error.unwrap_or_default()))
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::Probe;

    fn check(success_threshold: u32, failure_threshold: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 1 },
            initial_delay_ms: 0,
            period_ms: 0,
            timeout_ms: 0,
            success_threshold,
            failure_threshold,
        }
    }

    #[test]
    fn streak_thresholds() {
        let schedule = Schedule::of(&check(2, 3));
        assert_eq!(schedule.period, DEFAULT_PERIOD);
        assert_eq!(schedule.timeout, DEFAULT_TIMEOUT);
        let mut streak = Streak::default();
        assert_eq!(streak.record(true, &schedule), None);
        assert_eq!(streak.record(true, &schedule), Some(true));
        assert_eq!(streak.record(false, &schedule), None);
        assert_eq!(streak.record(false, &schedule), None);
        assert_eq!(streak.record(true, &schedule), None, "a success resets the failure streak");
        for _ in 0..2 {
            assert_eq!(streak.record(false, &schedule), None);
        }
        assert_eq!(streak.record(false, &schedule), Some(false));
        let zero = Schedule::of(&check(0, 0));
        assert_eq!(Streak::default().record(false, &zero), Some(false), "0 thresholds mean 1");
    }
}
