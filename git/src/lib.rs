//! Ferry's one place for Git (used by the control plane and the agent alike), on `gix` (pure
//! Rust; no `git` binary is ever run):
//!
//! * [`Git::resolve`] — a branch, tag or commit of a repository → the commit it names now;
//! * [`Git::read_file`] — one file at a commit (size-bounded);
//! * [`Git::checkout`] — a commit's tree written to a directory (atomically: a temporary
//!   directory renamed into place; an existing one is reused), bounded in files and bytes.
//!
//! Repositories reached over the network (`https://`, `http://`, `git://`) are fetched into a
//! bare cache per URL (`<cache>/<key>.git`), fetching only the ref asked for (or, for a commit
//! not cached yet, the branches and tags), so a second look at a cached commit costs no network
//! at all. Local repositories (`file://` or a path; only if [`Policy::allow_file`]) are opened in
//! place, read-only. Every operation runs on a blocking thread under a deadline
//! ([`Limits::timeout`]); a fetch past it is interrupted, and one cache is written by one
//! operation at a time.

mod checkout;
pub mod fixture;
mod repo;
mod url;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use url::{MAX_URL_LEN, Policy, RepoUrl, key_of};

/// What a caller asks for in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    /// A full commit id (40 hex digits).
    Commit(String),
}

impl GitRef {
    /// Checks the name (a valid Git ref name, or 40 hex digits for a commit).
    pub fn validate(&self) -> Result<(), GitError> {
        match self {
            GitRef::Branch(name) | GitRef::Tag(name) => {
                if name.is_empty() || name.len() > 255 || name.starts_with("refs/") {
                    return Err(GitError::BadRef(format!(
                        "invalid {} name {name:?} (give the short name, e.g. \"main\")",
                        self.what()
                    )));
                }
                gix::refs::FullName::try_from(self.full_name())
                    .map_err(|e| GitError::BadRef(format!("invalid {} name {name:?}: {e}", self.what())))?;
                Ok(())
            }
            GitRef::Commit(id) => {
                if id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err(GitError::BadRef(format!("a commit is its full id, 40 hexadecimal digits (got {id:?})")))
                }
            }
        }
    }

    /// `refs/heads/<branch>`, `refs/tags/<tag>`, or the commit id (lowercase).
    pub fn full_name(&self) -> String {
        match self {
            GitRef::Branch(b) => format!("refs/heads/{b}"),
            GitRef::Tag(t) => format!("refs/tags/{t}"),
            GitRef::Commit(c) => c.to_ascii_lowercase(),
        }
    }

    /// `branch`, `tag` or `commit`.
    pub fn what(&self) -> &'static str {
        match self {
            GitRef::Branch(_) => "branch",
            GitRef::Tag(_) => "tag",
            GitRef::Commit(_) => "commit",
        }
    }

    /// The name or id as given.
    pub fn name(&self) -> &str {
        match self {
            GitRef::Branch(n) | GitRef::Tag(n) | GitRef::Commit(n) => n,
        }
    }
}

/// Why a Git operation failed, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The URL is malformed.
    #[error("invalid repository URL: {0}")]
    BadUrl(String),
    /// The URL is well-formed but refused by policy (local without permission, credentials, ssh).
    #[error("{0}")]
    Refused(String),
    /// The repository could not be reached or read.
    #[error("repository {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The operation took longer than its deadline.
    #[error("repository {url} did not answer within {}s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    /// The ref name or commit id is malformed.
    #[error("{0}")]
    BadRef(String),
    /// The branch, tag or commit does not exist in the repository.
    #[error("{what} {name:?} not found in {url}")]
    RefNotFound { what: &'static str, name: String, url: String },
    /// The path is not a relative path inside the repository.
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    /// No file at this path at this commit.
    #[error("{path} not found at commit {commit}")]
    FileNotFound { path: String, commit: String },
    /// The path names a directory, link or submodule.
    #[error("{path} at commit {commit} is not a regular file")]
    NotAFile { path: String, commit: String },
    /// The file is larger than [`Limits::max_file_bytes`].
    #[error("{path} is {size} bytes, more than the {max} allowed")]
    FileTooLarge { path: String, size: u64, max: u64 },
    /// The checkout exceeds [`Limits::max_checkout_bytes`] or [`Limits::max_checkout_files`], or
    /// its tree has an entry that cannot be written safely.
    #[error("cannot check out commit {commit}: {reason}")]
    Checkout { commit: String, reason: String },
    /// Anything else (a local I/O error, a corrupt cache).
    #[error("{0}")]
    Internal(String),
}

/// Bounds on every operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one operation (fetch included).
    pub timeout: Duration,
    /// Largest file [`Git::read_file`] reads.
    pub max_file_bytes: u64,
    /// Largest checkout, summing file sizes.
    pub max_checkout_bytes: u64,
    /// Most files and directories in a checkout.
    pub max_checkout_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_file_bytes: 1024 * 1024,
            max_checkout_bytes: 1024 * 1024 * 1024,
            max_checkout_files: 100_000,
        }
    }
}

/// Git access with a cache directory for fetched repositories.
#[derive(Clone)]
pub struct Git {
    inner: Arc<Inner>,
}

struct Inner {
    cache_dir: PathBuf,
    limits: Limits,
    /// One writer per cache (by URL key).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Git {
    /// Git access caching fetched repositories under `cache_dir` (created when first needed).
    pub fn new(cache_dir: impl Into<PathBuf>, limits: Limits) -> Self {
        install_crypto_provider();
        Self { inner: Arc::new(Inner { cache_dir: cache_dir.into(), limits, locks: Mutex::new(HashMap::new()) }) }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The commit `r` names in `url` now (for a commit: that it exists).
    pub async fn resolve(&self, url: &RepoUrl, r: &GitRef) -> Result<String, GitError> {
        r.validate()?;
        let r = r.clone();
        self.blocking(url, move |repo, interrupt| repo.resolve(&r, interrupt)).await
    }

    /// The content of the file at `path` at `commit` (at most [`Limits::max_file_bytes`]).
    pub async fn read_file(&self, url: &RepoUrl, commit: &str, path: &str) -> Result<Vec<u8>, GitError> {
        GitRef::Commit(commit.to_string()).validate()?;
        let path = checkout::validate_path(path)?;
        let commit = commit.to_ascii_lowercase();
        let max = self.inner.limits.max_file_bytes;
        self.blocking(url, move |repo, interrupt| repo.read_file(&commit, &path, max, interrupt)).await
    }

    /// Writes the tree of `commit` to `dest` (which must not be inside the repository). If
    /// `dest` exists it is taken as that checkout, done before. Otherwise the tree is written
    /// to a temporary sibling directory renamed to `dest` at the end, so `dest` is either
    /// complete or absent.
    pub async fn checkout(&self, url: &RepoUrl, commit: &str, dest: &Path) -> Result<(), GitError> {
        GitRef::Commit(commit.to_string()).validate()?;
        if dest.exists() {
            return Ok(());
        }
        let commit = commit.to_ascii_lowercase();
        let dest = dest.to_path_buf();
        let limits = self.inner.limits;
        self.blocking(url, move |repo, interrupt| repo.checkout(&commit, &dest, limits, interrupt)).await
    }

    /// Runs `op` on a blocking thread with the repository of `url`, under the deadline; a
    /// cache is used by one operation at a time (the lock is held until the thread is done,
    /// also when the caller gave up waiting).
    async fn blocking<T: Send + 'static>(
        &self,
        url: &RepoUrl,
        op: impl FnOnce(repo::Source, &AtomicBool) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, GitError> {
        let timeout = self.inner.limits.timeout;
        let interrupt = Arc::new(AtomicBool::new(false));
        let label = url.as_str().to_string();
        let url = url.clone();
        let cache_dir = self.inner.cache_dir.clone();
        let lock = if url.is_local() { None } else { Some(self.lock(&url.key())) };
        let flag = Arc::clone(&interrupt);
        let run = async move {
            let guard = match lock {
                Some(l) => Some(l.lock_owned().await),
                None => None,
            };
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                let source = repo::Source::new(&url, &cache_dir)?;
                op(source, &flag)
            })
            .await
            .map_err(|e| GitError::Internal(format!("git task failed: {e}")))?
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                interrupt.store(true, Ordering::SeqCst);
                Err(GitError::Timeout { url: label, timeout })
            }
        }
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(locks.entry(key.to_string()).or_default())
    }
}

/// rustls (used by the HTTPS transport) needs a process-wide crypto provider: Ferry's is ring.
/// Installing it again (or after another one) is harmless.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_validated() {
        for ok in [
            GitRef::Branch("main".into()),
            GitRef::Branch("feature/x-1".into()),
            GitRef::Tag("v1.2.3".into()),
            GitRef::Commit("0123456789abcdef0123456789ABCDEF01234567".into()),
        ] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        for bad in [
            GitRef::Branch("".into()),
            GitRef::Branch("refs/heads/main".into()),
            GitRef::Branch("a..b".into()),
            GitRef::Branch("a b".into()),
            GitRef::Branch("x~1".into()),
            GitRef::Tag("v1:2".into()),
            GitRef::Commit("abc123".into()),
            GitRef::Commit("g123456789abcdef0123456789abcdef01234567".into()),
        ] {
            assert!(matches!(bad.validate(), Err(GitError::BadRef(_))), "{bad:?}");
        }
        assert_eq!(GitRef::Branch("main".into()).full_name(), "refs/heads/main");
        assert_eq!(GitRef::Tag("v1".into()).full_name(), "refs/tags/v1");
        assert_eq!(GitRef::Commit("ABC".into()).full_name(), "abc");
    }
}
