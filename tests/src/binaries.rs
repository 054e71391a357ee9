//! Launching the built `ferry-server` and `ferry-agent` binaries as a user would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path of a workspace binary next to the running test executable (`target/<profile>/`).
/// `cargo test --workspace` builds them because their packages have integration tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built; run `cargo build --workspace` first", path.display());
    path
}

/// A child process whose stderr is collected (and shown if the test fails).
pub struct Proc {
    pub child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn binary");
        let stderr = child.stderr.take().expect("stderr");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().expect("output lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        Self { child, output, lines }
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}; output:\n{}", self.dump()),
            }
        }
    }

    pub fn dump(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.wait(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                panic!("process did not exit within {timeout:?}; output:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
