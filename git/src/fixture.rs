//! Real Git repositories for tests, written with gix itself: init, commit files to a branch,
//! tag. (Used by this crate's tests, the control plane's and the end-to-end suites.)

use std::path::{Path, PathBuf};

use gix::object::tree::EntryKind;
use gix::refs::transaction::PreviousValue;

/// A file of a commit.
#[derive(Debug, Clone, Copy)]
pub enum File<'a> {
    Regular(&'a str, &'a [u8]),
    Executable(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A non-bare repository in a directory the caller owns.
pub struct Fixture {
    path: PathBuf,
    repo: gix::Repository,
}

impl Fixture {
    /// `git init` at `path` (created if missing).
    pub fn init(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).expect("create the repository directory");
        let repo = gix::init(&path).expect("init a repository");
        Self { path, repo }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `file://<path>`.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Commits regular files (the commit's whole tree) on `branch`, on top of its tip if it
    /// has one; returns the commit id.
    pub fn commit(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let files: Vec<File<'_>> = files.iter().map(|(p, c)| File::Regular(p, c.as_bytes())).collect();
        self.commit_files(branch, &files, message)
    }

    /// Commits `files` (the commit's whole tree) on `branch`; returns the commit id.
    pub fn commit_files(&self, branch: &str, files: &[File<'_>], message: &str) -> String {
        let mut editor = self.repo.edit_tree(gix::ObjectId::empty_tree(gix::hash::Kind::Sha1)).expect("tree editor");
        for f in files {
            let (path, kind, id) = match *f {
                File::Regular(p, c) => (p, EntryKind::Blob, self.repo.write_blob(c).expect("blob").detach()),
                File::Executable(p, c) => {
                    (p, EntryKind::BlobExecutable, self.repo.write_blob(c).expect("blob").detach())
                }
                File::Symlink(p, t) => (p, EntryKind::Link, self.repo.write_blob(t.as_bytes()).expect("blob").detach()),
            };
            editor.upsert(path, kind, id).expect("add a file to the tree");
        }
        let tree = editor.write().expect("write the tree").detach();
        let reference = format!("refs/heads/{branch}");
        let parent = self
            .repo
            .try_find_reference(reference.as_str())
            .expect("read the branch")
            .map(|mut r| r.peel_to_id().expect("peel the branch").detach());
        let signature = gix::actor::Signature {
            name: "Ferry Tests".into(),
            email: "tests@ferry.invalid".into(),
            time: gix::date::Time::now_utc(),
        };
        let mut time = gix::date::parse::TimeBuf::default();
        let sig = signature.to_ref(&mut time);
        self.repo.commit_as(sig, sig, reference.as_str(), message, tree, parent).expect("commit").detach().to_string()
    }

    /// A lightweight tag.
    pub fn tag(&self, name: &str, commit: &str) {
        let id = gix::ObjectId::from_hex(commit.as_bytes()).expect("a commit id");
        self.repo.tag_reference(name, id, PreviousValue::Any).expect("tag");
    }

    /// An annotated tag (a tag object).
    pub fn annotated_tag(&self, name: &str, commit: &str, message: &str) {
        let id = gix::ObjectId::from_hex(commit.as_bytes()).expect("a commit id");
        self.repo.tag(name, id, gix::object::Kind::Commit, None, message, PreviousValue::Any).expect("annotated tag");
    }
}
