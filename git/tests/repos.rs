//! ferry-git against real repositories made with gix in temporary directories: local ones
//! opened in place, and the same served over `git://` by `git daemon` on loopback (the test's
//! server only; the library never runs `git`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_git::fixture::{File, Fixture};
use ferry_git::{Git, GitError, GitRef, Limits, Policy, RepoUrl};

const LOCAL: Policy = Policy { allow_file: true };

fn git(cache: &Path) -> Git {
    Git::new(cache, Limits { timeout: Duration::from_secs(20), ..Limits::default() })
}

fn branch(b: &str) -> GitRef {
    GitRef::Branch(b.into())
}

/// A repository with `main` (two commits), `dev`, a lightweight and an annotated tag.
struct Repo {
    fixture: Fixture,
    first: String,
    second: String,
    dev: String,
}

fn repo(dir: &Path) -> Repo {
    let fixture = Fixture::init(dir);
    let first = fixture.commit("main", &[("ferry.json", "{\"v\": 1}"), ("app/serve.sh", "echo one")], "one");
    let second = fixture.commit_files(
        "main",
        &[
            File::Regular("ferry.json", b"{\"v\": 2}"),
            File::Executable("app/serve.sh", b"#!/bin/sh\necho two\n"),
            File::Symlink("app/link", "serve.sh"),
            File::Regular("deep/a/b/c.txt", b"deep"),
        ],
        "two",
    );
    let dev = fixture.commit("dev", &[("ferry.json", "{\"v\": \"dev\"}")], "dev");
    fixture.tag("v1", &first);
    fixture.annotated_tag("v2", &second, "release two");
    Repo { fixture, first, second, dev }
}

async fn resolves_refs_reads_files_and_checks_out(g: &Git, url: &RepoUrl, r: &Repo, work: &Path) {
    assert_eq!(g.resolve(url, &branch("main")).await.unwrap(), r.second);
    assert_eq!(g.resolve(url, &branch("dev")).await.unwrap(), r.dev);
    assert_eq!(g.resolve(url, &GitRef::Tag("v1".into())).await.unwrap(), r.first);
    assert_eq!(g.resolve(url, &GitRef::Tag("v2".into())).await.unwrap(), r.second, "annotated tags peel to commits");
    assert_eq!(g.resolve(url, &GitRef::Commit(r.first.to_uppercase())).await.unwrap(), r.first);

    let missing = g.resolve(url, &branch("nope")).await.unwrap_err();
    assert!(matches!(&missing, GitError::RefNotFound { what: "branch", name, .. } if name == "nope"), "{missing:?}");
    let missing = g.resolve(url, &GitRef::Tag("v9".into())).await.unwrap_err();
    assert!(matches!(missing, GitError::RefNotFound { what: "tag", .. }), "{missing:?}");
    let missing = g.resolve(url, &GitRef::Commit("0".repeat(40))).await.unwrap_err();
    assert!(matches!(missing, GitError::RefNotFound { what: "commit", .. }), "{missing:?}");
    assert!(matches!(g.resolve(url, &branch("a..b")).await, Err(GitError::BadRef(_))));

    // Files at a commit, not at a branch.
    assert_eq!(g.read_file(url, &r.first, "ferry.json").await.unwrap(), b"{\"v\": 1}");
    assert_eq!(g.read_file(url, &r.second, "ferry.json").await.unwrap(), b"{\"v\": 2}");
    assert_eq!(g.read_file(url, &r.second, "deep/a/b/c.txt").await.unwrap(), b"deep");
    let e = g.read_file(url, &r.first, "deep/a/b/c.txt").await.unwrap_err();
    assert!(matches!(e, GitError::FileNotFound { .. }), "{e:?}");
    let e = g.read_file(url, &r.second, "app").await.unwrap_err();
    assert!(matches!(e, GitError::NotAFile { .. }), "{e:?}");
    let e = g.read_file(url, &r.second, "../etc/passwd").await.unwrap_err();
    assert!(matches!(e, GitError::BadPath { .. }), "{e:?}");
    let small = Git::new(work.join("small-cache"), Limits { max_file_bytes: 4, ..g.limits() });
    let e = small.read_file(url, &r.second, "ferry.json").await.unwrap_err();
    assert!(matches!(e, GitError::FileTooLarge { size: 8, max: 4, .. }), "{e:?}");

    // A checkout: contents, modes, links; reused when present.
    let dest = work.join("checkouts").join(&r.second);
    g.checkout(url, &r.second, &dest).await.unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("app/serve.sh")).unwrap(), "#!/bin/sh\necho two\n");
    let mode = std::fs::metadata(dest.join("app/serve.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let mode = std::fs::metadata(dest.join("ferry.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(std::fs::read_link(dest.join("app/link")).unwrap(), Path::new("serve.sh"));
    assert_eq!(std::fs::read_to_string(dest.join("deep/a/b/c.txt")).unwrap(), "deep");
    assert!(!dest.join(".git").exists());
    std::fs::write(dest.join("marker"), "kept").unwrap();
    g.checkout(url, &r.second, &dest).await.unwrap();
    assert!(dest.join("marker").exists(), "an existing checkout is reused, not rewritten");

    // Bounded: a checkout over the limit leaves nothing behind.
    let tiny = Git::new(work.join("tiny-cache"), Limits { max_checkout_files: 3, ..g.limits() });
    let dest = work.join("checkouts").join("too-big");
    let e = tiny.checkout(url, &r.second, &dest).await.unwrap_err();
    assert!(matches!(&e, GitError::Checkout { reason, .. } if reason.contains("more than 3")), "{e:?}");
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(work.join("checkouts")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "no temporary directory is left: {left:?}");
}

#[tokio::test]
async fn local_repositories_are_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo(&dir.path().join("repo"));
    let g = git(&dir.path().join("cache"));
    for url in [r.fixture.url(), r.fixture.path().display().to_string()] {
        let url = RepoUrl::parse(&url, LOCAL).unwrap();
        let work = tempfile::tempdir().unwrap();
        resolves_refs_reads_files_and_checks_out(&g, &url, &r, work.path()).await;
    }
    assert!(!dir.path().join("cache").exists(), "local repositories are never copied into the cache");

    // A new commit moves the branch; what was resolved before stays readable.
    let third = r.fixture.commit("main", &[("ferry.json", "{\"v\": 3}")], "three");
    let url = RepoUrl::parse(&r.fixture.url(), LOCAL).unwrap();
    assert_eq!(g.resolve(&url, &branch("main")).await.unwrap(), third);
    assert_eq!(g.read_file(&url, &r.second, "ferry.json").await.unwrap(), b"{\"v\": 2}");

    // Not a repository.
    let url = RepoUrl::parse(&format!("file://{}", dir.path().join("none").display()), LOCAL).unwrap();
    let e = g.resolve(&url, &branch("main")).await.unwrap_err();
    assert!(matches!(&e, GitError::Unreachable { reason, .. } if reason.contains("no Git repository")), "{e:?}");
}

/// `git daemon` serving `base` on a loopback port, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // `git-daemon` itself (not `git daemon`, which would run it as a child that a kill of
        // the parent leaves behind).
        let exec_path = Command::new("git").arg("--exec-path").output().expect("git is installed for the tests").stdout;
        let exec_path = String::from_utf8(exec_path).unwrap();
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon (the test's server) starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn remote_repositories_are_fetched_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let r = repo(&dir.path().join("served/app"));
    let daemon = Daemon::start(&dir.path().join("served"));
    let url = RepoUrl::parse(&format!("git://127.0.0.1:{}/app", daemon.port), Policy::default()).unwrap();
    let cache = dir.path().join("cache");
    let g = git(&cache);
    let work = tempfile::tempdir().unwrap();
    resolves_refs_reads_files_and_checks_out(&g, &url, &r, work.path()).await;
    assert!(cache.join(format!("{}.git", url.key())).join("HEAD").is_file());

    // A new commit on main is seen by the next resolve.
    let third = r.fixture.commit("main", &[("ferry.json", "{\"v\": 3}")], "three");
    assert_eq!(g.resolve(&url, &branch("main")).await.unwrap(), third);

    // Cached commits need no network.
    drop(daemon);
    assert_eq!(g.read_file(&url, &third, "ferry.json").await.unwrap(), b"{\"v\": 3}");
    let dest = work.path().join("again");
    g.checkout(&url, &r.first, &dest).await.unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("app/serve.sh")).unwrap(), "echo one");
    // …but a branch is always asked of the remote.
    let e = g.resolve(&url, &branch("main")).await.unwrap_err();
    assert!(matches!(e, GitError::Unreachable { .. }), "{e:?}");
}

#[tokio::test]
async fn unreachable_and_silent_remotes_fail_in_time() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = RepoUrl::parse(&format!("git://127.0.0.1:{port}/app"), Policy::default()).unwrap();
    let e = git(dir.path()).resolve(&url, &branch("main")).await.unwrap_err();
    assert!(matches!(e, GitError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

    // Something accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = RepoUrl::parse(&format!("git://{}/app", silent.local_addr().unwrap()), Policy::default()).unwrap();
    let g = Git::new(dir.path(), Limits { timeout: Duration::from_millis(500), ..Limits::default() });
    let started = Instant::now();
    let e = g.resolve(&url, &branch("main")).await.unwrap_err();
    assert!(matches!(e, GitError::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(silent);
}
