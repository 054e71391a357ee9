//! Writing a commit's tree to a directory, and the checks on paths inside a repository.
//!
//! Every entry name is checked before anything is written (no `..`, `.`, `/`, NUL, and no
//! `.git` in any case), files are created with `create_new` (never through an existing path or
//! link), symbolic links are written as links (never followed), submodules become empty
//! directories, and the total size and number of entries are bounded. The tree is written to a
//! temporary sibling of the destination and renamed into place at the end.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;
use gix::object::tree::EntryKind;

use crate::repo::{internal, unique};
use crate::{GitError, Limits};

/// The longest path inside a repository accepted.
const MAX_PATH_LEN: usize = 4096;

/// A relative path inside a repository (`deploy/ferry.json`), returned as given.
pub(crate) fn validate_path(path: &str) -> Result<String, GitError> {
    let bad = |reason: &str| GitError::BadPath { path: path.to_string(), reason: reason.to_string() };
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(bad("give a path of 1 to 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("the path is relative to the repository's root"));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("the path contains a control character"));
    }
    for component in path.split('/') {
        check_name(component.as_bytes()).map_err(|r| bad(&r))?;
    }
    Ok(path.to_string())
}

/// One file or directory name of a tree: not empty, `.`, `..` or `.git` (any case), and
/// without `/` or NUL.
fn check_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err("empty, '.' and '..' components are not allowed".into());
    }
    if name.eq_ignore_ascii_case(b".git") {
        return Err("'.git' components are not allowed".into());
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err("a name contains '/' or NUL".into());
    }
    Ok(())
}

struct Budget {
    limits: Limits,
    files: u64,
    bytes: u64,
}

pub(crate) fn write(
    repo: &gix::Repository,
    commit: &str,
    tree: ObjectId,
    dest: &Path,
    limits: Limits,
    interrupt: &AtomicBool,
) -> Result<(), GitError> {
    let fail = |reason: String| GitError::Checkout { commit: commit.to_string(), reason };
    let parent = dest.parent().ok_or_else(|| fail("the destination has no parent directory".into()))?;
    fs::create_dir_all(parent).map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(".tmp-{commit}-{}", unique()));
    fs::create_dir(&tmp).map_err(|e| fail(format!("creating {}: {e}", tmp.display())))?;
    let mut budget = Budget { limits, files: 0, bytes: 0 };
    let written = write_tree(repo, tree, &tmp, "", &mut budget, interrupt).map_err(fail);
    let placed = written.and_then(|()| match fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another checkout of the same commit finished first: it is the same tree.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(fail(format!("moving the checkout to {}: {e}", dest.display()))),
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    placed
}

fn write_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    dir: &Path,
    prefix: &str,
    budget: &mut Budget,
    interrupt: &AtomicBool,
) -> Result<(), String> {
    let tree = repo.find_tree(tree).map_err(|e| internal("reading a tree", e).to_string())?;
    let decoded = tree.decode().map_err(|e| internal("decoding a tree", e).to_string())?;
    for entry in &decoded.entries {
        if interrupt.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        let name_bytes: &[u8] = entry.filename;
        let shown = format!("{prefix}{}", String::from_utf8_lossy(name_bytes));
        check_name(name_bytes).map_err(|r| format!("unsafe entry {shown:?}: {r}"))?;
        let name = std::str::from_utf8(name_bytes).map_err(|_| format!("entry {shown:?} is not valid UTF-8"))?;
        budget.files += 1;
        if budget.files > budget.limits.max_checkout_files {
            return Err(format!("more than {} files and directories", budget.limits.max_checkout_files));
        }
        let path = dir.join(name);
        let id = entry.oid.to_owned();
        match entry.mode.kind() {
            EntryKind::Tree => {
                fs::create_dir(&path).map_err(|e| format!("creating {shown}: {e}"))?;
                write_tree(repo, id, &path, &format!("{shown}/"), budget, interrupt)?;
            }
            EntryKind::Commit => {
                // A submodule: not fetched; an empty directory stands in for it.
                fs::create_dir(&path).map_err(|e| format!("creating {shown}: {e}"))?;
            }
            kind @ (EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link) => {
                let size = repo.find_header(id).map_err(|e| format!("reading {shown}: {e}"))?.size();
                budget.bytes += size;
                if budget.bytes > budget.limits.max_checkout_bytes {
                    return Err(format!("more than {} bytes", budget.limits.max_checkout_bytes));
                }
                let data = repo.find_blob(id).map_err(|e| format!("reading {shown}: {e}"))?.take_data();
                if kind == EntryKind::Link {
                    let target = std::str::from_utf8(&data)
                        .map_err(|_| format!("the link target of {shown:?} is not valid UTF-8"))?;
                    if target.contains('\0') {
                        return Err(format!("the link target of {shown:?} contains NUL"));
                    }
                    symlink(target, &path).map_err(|e| format!("creating link {shown}: {e}"))?;
                } else {
                    let mode = if kind == EntryKind::BlobExecutable { 0o755 } else { 0o644 };
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&path)
                        .map_err(|e| format!("creating {shown}: {e}"))?;
                    file.write_all(&data).map_err(|e| format!("writing {shown}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_a_repository() {
        for ok in ["ferry.json", "deploy/ferry.yaml", "a/b/c.toml", ".ferry/app.json", "dir with space/x"] {
            assert_eq!(validate_path(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "./x",
            "a//b",
            "a/",
            ".git/config",
            "a/.GIT/x",
            "a\nb",
            &"a".repeat(MAX_PATH_LEN + 1),
        ] {
            assert!(matches!(validate_path(bad), Err(GitError::BadPath { .. })), "{bad:?}");
        }
    }
}
