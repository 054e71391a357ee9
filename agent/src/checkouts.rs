//! Checkouts of Git sources (`WorkloadSpec::ProcessFromGit`): the agent checks out exactly the
//! commit it was told (never a branch) into `<state-dir>/checkouts/<key(url)>/<commit>` —
//! atomically (a temporary directory renamed into place; `ferry-git`), reused while present —
//! then hands the runtime a plain process workload whose working directory is in it. It
//! fetches and runs nothing else.
//!
//! A checkout runs on a task of its own; meanwhile the workload is reported `Pending`. When it
//! fails (repository unreachable from this host, commit gone, too large), the workload is
//! reported `Failed` with the reason and the checkout is retried with exponential backoff (1 s
//! doubling to 5 min). Each finished attempt bumps [`Checkouts::changes`], on which the agent
//! routes its intent again. Checkouts no intent names any more are removed after each apply.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_git::{Git, Limits, Policy, RepoUrl};
use ferry_protocol::{GitCheckout, Phase};
use tokio::sync::watch;
use tokio::time::Instant;

/// Deadline of one checkout (fetch included).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(600);
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What a workload's checkout is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Checked out: the workload's working directory.
    Ready(PathBuf),
    /// Not (yet): report the workload so.
    Waiting { phase: Phase, reason: String },
}

#[derive(Debug)]
enum Attempt {
    Running { failures: u32 },
    Failed { reason: String, failures: u32, retry_at: Instant },
}

pub(crate) struct Checkouts {
    root: PathBuf,
    git: Git,
    attempts: Mutex<HashMap<(String, String), Attempt>>,
    changed: watch::Sender<u64>,
}

impl Checkouts {
    pub(crate) fn new(state_dir: &Path) -> Arc<Self> {
        let git = Git::new(state_dir.join("git-cache"), Limits { timeout: CHECKOUT_TIMEOUT, ..Limits::default() });
        Arc::new(Self {
            root: state_dir.join("checkouts"),
            git,
            attempts: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        })
    }

    /// Bumped whenever a checkout attempt ended, or a failed one is due again.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn dir(&self, src: &GitCheckout) -> PathBuf {
        self.root.join(ferry_git::key_of(&src.url)).join(&src.commit)
    }

    /// The workload's working directory if its commit is checked out; else starts (or, once
    /// due, retries) the checkout and says how to report the workload meanwhile.
    pub(crate) fn prepare(self: &Arc<Self>, src: &GitCheckout) -> Prepared {
        let short = &src.commit[..src.commit.len().min(12)];
        if !valid(src) {
            return Prepared::Waiting {
                phase: Phase::Failed,
                reason: format!("invalid Git source {} at {short} (commit or directory)", src.url),
            };
        }
        let dir = self.dir(src);
        if dir.is_dir() {
            return Prepared::Ready(if src.dir.is_empty() { dir.clone() } else { dir.join(&src.dir) });
        }
        let key = (src.url.clone(), src.commit.clone());
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let checking =
            Prepared::Waiting { phase: Phase::Pending, reason: format!("checking out {} at {short}", src.url) };
        match attempts.get(&key) {
            Some(Attempt::Running { .. }) => checking,
            Some(Attempt::Failed { reason, retry_at, .. }) if *retry_at > Instant::now() => {
                let secs = retry_at.saturating_duration_since(Instant::now()).as_secs().max(1);
                Prepared::Waiting {
                    phase: Phase::Failed,
                    reason: format!("cannot check out {} at {short}: {reason} (retrying in {secs}s)", src.url),
                }
            }
            previous => {
                let failures = match previous {
                    Some(Attempt::Failed { failures, .. }) => *failures,
                    _ => 0,
                };
                attempts.insert(key, Attempt::Running { failures });
                drop(attempts);
                self.start(src.clone(), dir);
                checking
            }
        }
    }

    fn start(self: &Arc<Self>, src: GitCheckout, dest: PathBuf) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // The control plane decided which URLs are acceptable (file:// included, where it
            // allows them); the agent checks only that the URL is well-formed.
            let result = match RepoUrl::parse(&src.url, Policy { allow_file: true }) {
                Ok(url) => this.git.checkout(&url, &src.commit, &dest).await,
                Err(e) => Err(e),
            };
            let key = (src.url.clone(), src.commit.clone());
            let retry = {
                let mut attempts = this.attempts.lock().unwrap_or_else(PoisonError::into_inner);
                let failures = match attempts.get(&key) {
                    Some(Attempt::Running { failures } | Attempt::Failed { failures, .. }) => *failures,
                    None => 0,
                };
                match result {
                    Ok(()) => {
                        tracing::info!(url = %src.url, commit = %src.commit, "checked out");
                        attempts.remove(&key);
                        None
                    }
                    Err(e) => {
                        let failures = failures + 1;
                        let delay = crate::backoff::ceiling(RETRY_BASE, RETRY_MAX, failures - 1);
                        tracing::warn!(url = %src.url, commit = %src.commit, error = %e, retry_in = ?delay,
                            "checkout failed");
                        let retry_at = Instant::now() + delay;
                        attempts.insert(key, Attempt::Failed { reason: e.to_string(), failures, retry_at });
                        Some(delay)
                    }
                }
            };
            this.changed.send_modify(|n| *n += 1);
            if let Some(delay) = retry {
                tokio::time::sleep(delay).await;
                this.changed.send_modify(|n| *n += 1);
            }
        });
    }

    /// Removes the checkouts (and forgets the attempts) of sources not in `keep`. Directories
    /// being written (`.tmp-*`) are left alone.
    pub(crate) fn retain(&self, keep: &HashSet<(String, String)>) {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep.contains(k));
        let wanted: HashSet<PathBuf> =
            keep.iter().map(|(url, commit)| self.root.join(ferry_git::key_of(url)).join(commit)).collect();
        let Ok(repos) = std::fs::read_dir(&self.root) else { return };
        for repo in repos.flatten() {
            let Ok(commits) = std::fs::read_dir(repo.path()) else { continue };
            let mut left = 0;
            for commit in commits.flatten() {
                let path = commit.path();
                if commit.file_name().to_string_lossy().starts_with(".tmp-") || wanted.contains(&path) {
                    left += 1;
                    continue;
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed a checkout no workload uses"),
                    Err(e) => {
                        left += 1;
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an old checkout");
                    }
                }
            }
            if left == 0 {
                let _ = std::fs::remove_dir(repo.path());
            }
        }
    }
}

/// The commit is 40 hex digits and the directory stays inside the checkout.
fn valid(src: &GitCheckout) -> bool {
    src.commit.len() == 40
        && src.commit.bytes().all(|b| b.is_ascii_hexdigit())
        && !src.dir.starts_with('/')
        && src.dir.split('/').all(|c| c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_git::fixture::Fixture;

    async fn wait_change(rx: &mut watch::Receiver<u64>) {
        tokio::time::timeout(Duration::from_secs(20), rx.changed()).await.expect("a checkout attempt ends").unwrap();
    }

    #[tokio::test]
    async fn checks_out_exactly_the_commit_then_reuses_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Fixture::init(dir.path().join("repo"));
        let first = repo.commit("main", &[("app/run.sh", "echo one")], "one");
        let second = repo.commit("main", &[("app/run.sh", "echo two")], "two");
        let checkouts = Checkouts::new(&dir.path().join("state"));
        let mut changes = checkouts.changes();
        let src = GitCheckout { url: repo.url(), commit: first.clone(), dir: "app".into() };
        assert!(matches!(checkouts.prepare(&src), Prepared::Waiting { phase: Phase::Pending, .. }));
        wait_change(&mut changes).await;
        let Prepared::Ready(work) = checkouts.prepare(&src) else { panic!("checked out") };
        assert!(work.ends_with(format!("{first}/app")), "{work:?}");
        assert_eq!(std::fs::read_to_string(work.join("run.sh")).unwrap(), "echo one", "the pinned commit, not main");

        let other = GitCheckout { commit: second.clone(), ..src.clone() };
        checkouts.prepare(&other);
        wait_change(&mut changes).await;
        assert!(matches!(checkouts.prepare(&other), Prepared::Ready(_)));
        checkouts.retain(&HashSet::from([(other.url.clone(), other.commit.clone())]));
        assert!(!work.exists(), "a checkout no workload uses is removed");
        assert!(matches!(checkouts.prepare(&other), Prepared::Ready(_)));
    }

    #[tokio::test]
    async fn failures_are_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let checkouts = Checkouts::new(&dir.path().join("state"));
        let mut changes = checkouts.changes();
        let missing = dir.path().join("later");
        let src =
            GitCheckout { url: format!("file://{}", missing.display()), commit: "a".repeat(40), dir: String::new() };
        checkouts.prepare(&src);
        wait_change(&mut changes).await;
        let Prepared::Waiting { phase, reason } = checkouts.prepare(&src) else { panic!("not ready") };
        assert_eq!(phase, Phase::Failed);
        assert!(reason.contains("cannot check out") && reason.contains("retrying in"), "{reason}");

        // The repository appears; the retry (due after a second) checks the commit out.
        let repo = Fixture::init(&missing);
        let commit = repo.commit("main", &[("x", "y")], "x");
        let src = GitCheckout { commit, ..src };
        checkouts.prepare(&src);
        wait_change(&mut changes).await;
        assert!(matches!(checkouts.prepare(&src), Prepared::Ready(_)));

        let bad = GitCheckout { dir: "../etc".into(), ..src };
        assert!(matches!(checkouts.prepare(&bad), Prepared::Waiting { phase: Phase::Failed, .. }));
    }
}
