//! `ferry-server dev` as the README uses it: one command, a control plane with a local agent,
//! the example service deployed to it, and a clean stop that leaves no workload behind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// Stops dev mode as Ctrl-C would, so its agent stops the workloads (a SIGKILL would orphan
/// them); SIGKILL only if it does not exit within `WAIT`.
impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + WAIT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &std::path::Path) -> (Dev, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-server"))
        .args(["dev", "--http-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let dev = Dev { child, lines };
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut api = None;
    while api.is_none() || !seen.iter().any(|l: &String| l.contains("local agent")) {
        let line = dev
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("dev mode not ready; output:\n{}", seen.join("\n")));
        if let Some(rest) = line.trim().strip_prefix("API") {
            api = Some(rest.trim().to_string());
        }
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("ready in")), "{seen:?}");
    (dev, api.unwrap())
}

fn hello_web() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("hello-web");
    assert!(path.exists(), "{} not built", path.display());
    path
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn dev_mode_runs_a_local_agent_and_deploys_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let (mut dev, api) = start(&data);
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let http = reqwest::blocking::Client::new();
    let get =
        |path: &str| -> Value { http.get(format!("{api}{path}")).bearer_auth(&token).send().unwrap().json().unwrap() };

    let agents = get("/v1/agents?status=connected");
    assert_eq!(agents["pagination"]["totalCount"], 1, "{agents}");
    let agent_id = agents["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(agents["data"][0]["labels"]["ferry.dev/agent"], "local");

    let res: Value = http
        .post(format!("{api}/v1/deployments"))
        .bearer_auth(&token)
        .json(&json!({
            "deploymentName": "hello",
            "environment": "development",
            "target": { "selector": { "ferry.dev/agent": "local" } },
            "configuration": {
                "replicas": 2,
                "command": hello_web().to_str().unwrap(),
                "healthChecks": { "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1 } }
            }
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = res["deployment"]["id"].as_str().unwrap().to_string();
    let status = eventually("2 healthy replicas", || {
        let v = get(&format!("/v1/deployments/{id}/status"));
        (v["status"] == "running").then_some(v)
    });
    let pids: Vec<u64> = status["replicas"].as_array().unwrap().iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    let port = status["replicas"][0]["port"].as_u64().unwrap();
    let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/")).unwrap().text().unwrap();
    assert!(body.starts_with("hello from Ferry"), "{body}");

    // Ctrl-C equivalent: the agent stops its workloads, then the control plane exits cleanly.
    let _ = Command::new("kill").args(["-TERM", &dev.child.id().to_string()]).status();
    let code = eventually("dev mode exits", || dev.child.try_wait().unwrap()).code();
    assert_eq!(code, Some(0));
    for pid in pids {
        assert!(!alive(pid), "workload {pid} outlived ferry-server dev");
    }
    drop(dev);

    // Starting again reuses the same agent identity and brings the deployment back.
    let (dev, api) = start(&data);
    let get =
        |path: &str| -> Value { http.get(format!("{api}{path}")).bearer_auth(&token).send().unwrap().json().unwrap() };
    let agents = get("/v1/agents");
    assert_eq!(agents["pagination"]["totalCount"], 1);
    assert_eq!(agents["data"][0]["id"], json!(agent_id));
    let again = eventually("deployment running again", || {
        let st = get(&format!("/v1/deployments/{id}/status"));
        (st["status"] == "running").then_some(st)
    });
    let pids: Vec<u64> = again["replicas"].as_array().unwrap().iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    drop(dev);
    for pid in pids {
        assert!(!alive(pid), "workload {pid} outlived the second ferry-server dev");
    }
}
