//! The blocking side: a repository to read from (a local one opened in place, or the bare
//! cache of a remote one, fetched into on demand).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::remote::Direction;

use crate::url::Location;
use crate::{GitError, GitRef, Limits, RepoUrl};

/// Where fetched refs are kept in a cache (never `refs/heads`, so nothing looks checked out).
const CACHE_NS: &str = "refs/ferry";
/// How long connecting to an HTTP(S) server may take.
const HTTP_CONNECT_TIMEOUT_MS: u64 = 10_000;

pub(crate) struct Source {
    repo: gix::Repository,
    url: String,
    remote: bool,
}

impl Source {
    pub(crate) fn new(url: &RepoUrl, cache_dir: &Path) -> Result<Self, GitError> {
        let open = gix::open::Options::isolated();
        match url.location() {
            Location::Local(path) => {
                let repo = gix::open_opts(path, open).map_err(|e| GitError::Unreachable {
                    url: url.to_string(),
                    reason: format!("no Git repository at {}: {}", path.display(), chain(&e)),
                })?;
                Ok(Self { repo, url: url.to_string(), remote: false })
            }
            Location::Remote => {
                let dir = cache_dir.join(format!("{}.git", url.key()));
                if !dir.join("HEAD").is_file() {
                    // A cache whose creation was interrupted is created again.
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).map_err(|e| internal("removing a broken cache", e))?;
                    }
                    std::fs::create_dir_all(cache_dir).map_err(|e| internal("creating the Git cache", e))?;
                    let tmp = cache_dir.join(format!(".tmp-{}-{}", url.key(), unique()));
                    gix::init_bare(&tmp).map_err(|e| internal("creating a cache repository", e))?;
                    std::fs::rename(&tmp, &dir).map_err(|e| internal("creating a cache repository", e))?;
                }
                let open = open.config_overrides([format!("gitoxide.http.connectTimeout={HTTP_CONNECT_TIMEOUT_MS}")]);
                let repo = gix::open_opts(&dir, open).map_err(|e| internal("opening the Git cache", e))?;
                Ok(Self { repo, url: url.to_string(), remote: true })
            }
        }
    }

    pub(crate) fn resolve(&self, r: &GitRef, interrupt: &AtomicBool) -> Result<String, GitError> {
        let not_found = || GitError::RefNotFound { what: r.what(), name: r.name().to_string(), url: self.url.clone() };
        let local_name = match r {
            GitRef::Commit(c) => return self.ensure_commit(c, interrupt).map(|id| id.to_string()),
            GitRef::Branch(_) | GitRef::Tag(_) if !self.remote => r.full_name(),
            GitRef::Branch(b) => {
                let spec = format!("+{}:{CACHE_NS}/heads/{b}", r.full_name());
                if !self.fetch(&[spec], interrupt)? {
                    return Err(not_found());
                }
                format!("{CACHE_NS}/heads/{b}")
            }
            GitRef::Tag(t) => {
                let spec = format!("+{}:{CACHE_NS}/tags/{t}", r.full_name());
                if !self.fetch(&[spec], interrupt)? {
                    return Err(not_found());
                }
                format!("{CACHE_NS}/tags/{t}")
            }
        };
        let mut reference = self
            .repo
            .try_find_reference(local_name.as_str())
            .map_err(|e| internal("reading a reference", e))?
            .ok_or_else(not_found)?;
        let commit = reference.peel_to_commit().map_err(|e| GitError::RefNotFound {
            what: r.what(),
            name: format!("{} (it does not name a commit: {})", r.name(), chain(&e)),
            url: self.url.clone(),
        })?;
        Ok(commit.id.to_string())
    }

    /// The commit, fetched first if it is not here (a remote's branches and tags are fetched:
    /// a commit is found only if one of them reaches it).
    fn ensure_commit(&self, commit: &str, interrupt: &AtomicBool) -> Result<ObjectId, GitError> {
        let id = ObjectId::from_hex(commit.as_bytes()).map_err(|e| GitError::BadRef(e.to_string()))?;
        let not_found = || GitError::RefNotFound { what: "commit", name: commit.to_string(), url: self.url.clone() };
        if !self.repo.has_object(id) {
            if !self.remote {
                return Err(not_found());
            }
            let specs = [format!("+refs/heads/*:{CACHE_NS}/heads/*"), format!("+refs/tags/*:{CACHE_NS}/tags/*")];
            self.fetch(&specs, interrupt)?;
            if !self.repo.has_object(id) {
                return Err(not_found());
            }
        }
        let header = self.repo.find_header(id).map_err(|e| internal("reading an object", e))?;
        if header.kind() != gix::object::Kind::Commit {
            return Err(GitError::RefNotFound {
                what: "commit",
                name: format!("{commit} (it is a {}, not a commit)", header.kind()),
                url: self.url.clone(),
            });
        }
        Ok(id)
    }

    /// Fetches `specs` from the remote into the cache; `false` if none of them matched a ref
    /// the remote has.
    fn fetch(&self, specs: &[String], interrupt: &AtomicBool) -> Result<bool, GitError> {
        let unreachable = |e: gix::Error| GitError::Unreachable { url: self.url.clone(), reason: chain(&e) };
        let remote = self
            .repo
            .remote_at(self.url.as_str())
            .map_err(unreachable)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(specs.iter().map(String::as_str), Direction::Fetch)
            .map_err(|e| internal("building a refspec", e))?;
        let connection = remote.connect(Direction::Fetch).map_err(unreachable)?;
        let prepare = connection.prepare_fetch(gix::progress::Discard, Default::default()).map_err(unreachable)?;
        let matched = prepare
            .ref_map()
            .mappings
            .iter()
            .any(|m| matches!(m.spec_index, gix::protocol::fetch::refmap::SpecIndex::ExplicitInRemote(_)));
        if !matched {
            return Ok(false);
        }
        prepare.receive(gix::progress::Discard, interrupt).map_err(unreachable)?;
        Ok(true)
    }

    pub(crate) fn read_file(
        &self,
        commit: &str,
        path: &str,
        max: u64,
        interrupt: &AtomicBool,
    ) -> Result<Vec<u8>, GitError> {
        let id = self.ensure_commit(commit, interrupt)?;
        let tree = self.tree_of(id)?;
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| internal("reading a tree", e))?
            .ok_or_else(|| GitError::FileNotFound { path: path.to_string(), commit: commit.to_string() })?;
        if !entry.mode().is_blob() {
            return Err(GitError::NotAFile { path: path.to_string(), commit: commit.to_string() });
        }
        let header = self.repo.find_header(entry.object_id()).map_err(|e| internal("reading an object", e))?;
        if header.size() > max {
            return Err(GitError::FileTooLarge { path: path.to_string(), size: header.size(), max });
        }
        let mut blob = self.repo.find_blob(entry.object_id()).map_err(|e| internal("reading a file", e))?;
        Ok(blob.take_data())
    }

    pub(crate) fn checkout(
        &self,
        commit: &str,
        dest: &Path,
        limits: Limits,
        interrupt: &AtomicBool,
    ) -> Result<(), GitError> {
        let id = self.ensure_commit(commit, interrupt)?;
        let tree = self.tree_of(id)?.id;
        crate::checkout::write(&self.repo, commit, tree, dest, limits, interrupt)
    }

    fn tree_of(&self, commit: ObjectId) -> Result<gix::Tree<'_>, GitError> {
        let commit = self.repo.find_commit(commit).map_err(|e| internal("reading a commit", e))?;
        commit.tree().map_err(|e| internal("reading a commit's tree", e))
    }
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> GitError {
    GitError::Internal(format!("{what}: {e}"))
}

/// An error and its causes, on one line.
pub(crate) fn chain(e: &gix::Error) -> String {
    let mut out = String::new();
    for (i, err) in e.iter_errors().enumerate() {
        let s = err.to_string();
        if i > 0 {
            if out.contains(&s) {
                continue;
            }
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// A name no other process or thread uses at the same time.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
