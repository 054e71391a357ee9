//! The built binaries, started the way the README tells a user to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_tests::binaries::{Proc, bin_path};

const WAIT: Duration = Duration::from_secs(20);

fn field<'a>(line: &'a str, after: &str) -> &'a str {
    let rest = &line[line.find(after).unwrap_or_else(|| panic!("{after:?} in {line:?}")) + after.len()..];
    rest.split_whitespace().next().unwrap()
}

/// A `ferry-server` with its data in `data`: the process, the API's base URL, the QUIC address
/// agents dial and the admin token.
fn start_server(data: &Path) -> (Proc, String, String, String) {
    let mut cmd = Command::new(bin_path("ferry-server"));
    cmd.args(["--http-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0", "--heartbeat-interval", "1s"])
        .arg("--data-dir")
        .arg(data);
    let server = Proc::spawn(cmd);
    let line = server.wait_line("API on http://", WAIT);
    let api = format!("http://{}", field(&line, "API on http://"));
    let quic = field(&line, "agents dial ").to_string();
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    (server, api, quic, admin)
}

/// A new bootstrap token (the API's JSON answer).
fn create_token(http: &reqwest::blocking::Client, api: &str, admin: &str) -> serde_json::Value {
    http.post(format!("{api}/v1/agents/tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "labels": { "site": "lab" } }))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn server_and_agent_binaries_enroll_connect_and_stop_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, quic, admin) = start_server(&dir.path().join("data"));

    let http = reqwest::blocking::Client::new();
    let token = create_token(&http, &api, &admin);
    assert!(
        token["agentCommand"].as_str().unwrap().starts_with(&format!("ferry-agent --server {quic} --token ferry1."))
    );

    let mut cmd = Command::new(bin_path("ferry-agent"));
    cmd.args([
        "--server",
        &quic,
        "--token",
        token["token"].as_str().unwrap(),
        "--name",
        "bin-agent",
        "--label",
        "os=linux",
    ])
    .arg("--state-dir")
    .arg(dir.path().join("agent"));
    let mut agent = Proc::spawn(cmd);

    let deadline = std::time::Instant::now() + WAIT;
    let listed = loop {
        let list: serde_json::Value =
            http.get(format!("{api}/v1/agents?status=connected")).bearer_auth(&admin).send().unwrap().json().unwrap();
        if list["pagination"]["totalCount"] == 1 {
            break list["data"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "agent never connected; agent output:\n{}", agent.dump());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed["name"], "bin-agent");
    assert_eq!(listed["labels"], serde_json::json!({ "os": "linux", "site": "lab" }));

    assert_eq!(agent.terminate(WAIT), Some(0), "agent output:\n{}", agent.dump());
    assert_eq!(server.terminate(WAIT), Some(0), "server output:\n{}", server.dump());
}

#[test]
fn invalid_configuration_exits_non_zero_with_one_line() {
    for (bin, args) in [
        ("ferry-server", vec!["--http-addr", "not-an-address"]),
        ("ferry-server", vec!["--agent-cert-lifetime", "forever"]),
        ("ferry-agent", vec!["--server", "127.0.0.1:7701", "--label", "no-equals-sign"]),
        ("ferry-agent", vec!["--server", "no-port-here"]),
    ] {
        let out = Command::new(bin_path(bin)).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{bin} {args:?}: {stderr}");
    }
}

#[test]
fn an_agent_whose_token_pins_another_ca_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, api, quic, admin) = start_server(&dir.path().join("data"));
    let http = reqwest::blocking::Client::new();
    let token = create_token(&http, &api, &admin);
    // This server's token, another CA's fingerprint: the server cannot prove it is the one the
    // token was made for, and never will.
    let token = token["token"].as_str().unwrap();
    let (rest, _pin) = token.rsplit_once('.').unwrap();
    let other = ferry_certs::Ca::generate("impostor").unwrap().fingerprint();
    let mut cmd = Command::new(bin_path("ferry-agent"));
    cmd.args(["--server", &quic, "--token", &format!("{rest}.{other}")])
        .arg("--state-dir")
        .arg(dir.path().join("agent"));
    let mut agent = Proc::spawn(cmd);

    // Exit code 78 (EX_CONFIG), so systemd's RestartPreventExitStatus=78 stops restarting it.
    assert_eq!(agent.wait(WAIT), Some(78), "agent output:\n{}", agent.dump());
    let last = agent.dump().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("ferry-agent: ") && last.contains("does not hold the CA the token pins"), "{last}");
    assert_eq!(server.terminate(WAIT), Some(0), "server output:\n{}", server.dump());
}
