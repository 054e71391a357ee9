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

/// Free loopback ports for HTTP (TCP) and QUIC (UDP), so that a restarted server comes back
/// where its agent dials.
fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (tcp, udp)
}

/// `ferry-server` on fixed ports, logging at debug level.
fn server_at(data: &Path, http: u16, quic: u16) -> Proc {
    let mut cmd = Command::new(bin_path("ferry-server"));
    cmd.args(["--http-addr", &format!("127.0.0.1:{http}"), "--quic-addr", &format!("127.0.0.1:{quic}")])
        .args(["--heartbeat-interval", "1s", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "debug,quinn=info,rustls=info")
        .env_remove("FERRY_MASTER_KEY");
    Proc::spawn(cmd)
}

/// Waits until `file` holds `want`.
fn wait_for_file(file: &Path, want: &str, procs: &[&Proc]) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_to_string(file).ok().as_deref() != Some(want) {
        let output: Vec<String> = procs.iter().map(|p| p.dump()).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "{} never held {want:?}; output:\n{}",
            file.display(),
            output.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn secrets_survive_a_master_key_rotation_and_no_process_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    let (data, state, work) = (dir.path().join("data"), dir.path().join("agent"), dir.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    let (http_port, quic_port) = free_ports();
    let mut server = server_at(&data, http_port, quic_port);
    server.wait_line("API on http://", WAIT);
    let api = format!("http://127.0.0.1:{http_port}");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        let res = http.request(method, format!("{api}{path}")).bearer_auth(&admin).json(&body).send().unwrap();
        let status = res.status();
        let text = res.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        text
    };
    let token = create_token(&http, &api, &admin);
    let mut cmd = Command::new(bin_path("ferry-agent"));
    cmd.args(["--server", &format!("127.0.0.1:{quic_port}"), "--token", token["token"].as_str().unwrap()])
        .args(["--max-backoff", "500ms", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "debug,quinn=info,rustls=info");
    let mut agent = Proc::spawn(cmd);

    let tag = ferry_control_plane::ids::random_hex(6);
    let [shared, first, second] = ["shared", "first", "second"].map(|v| format!("s3cret-{v}-{tag}"));
    call(
        reqwest::Method::PUT,
        "/v1/environments/development/secrets",
        serde_json::json!({ "secrets": { "SHARED": shared } }),
    );
    let created = call(
        reqwest::Method::POST,
        "/v1/deployments",
        serde_json::json!({
            "deploymentName": "writer",
            "environment": "development",
            "configuration": {
                "replicas": 1,
                "command": "sh",
                "args": ["-c", "printf '%s|%s' \"$MY_SECRET\" \"$SHARED\" > out.tmp && mv out.tmp out; exec sleep 3600"],
                "workingDir": work.to_str().unwrap(),
                "stopGracePeriodSeconds": 1
            }
        }),
    );
    let id =
        serde_json::from_str::<serde_json::Value>(&created).unwrap()["deployment"]["id"].as_str().unwrap().to_string();
    let secrets = format!("/v1/deployments/{id}/secrets");
    call(reqwest::Method::PUT, &secrets, serde_json::json!({ "secrets": { "MY_SECRET": first } }));
    wait_for_file(&work.join("out"), &format!("{first}|{shared}"), &[&server, &agent]);

    // Rotate with the server stopped (the agent keeps its workload running meanwhile).
    assert_eq!(server.terminate(WAIT), Some(0), "server output:\n{}", server.dump());
    let (_, new_key) = ferry_control_plane::secrets::MasterKey::generate();
    let new_key_file = dir.path().join("new.key");
    std::fs::write(&new_key_file, format!("{new_key}\n")).unwrap();
    let rotated = Command::new(bin_path("ferry-server"))
        .args(["rotate-master-key", "--data-dir"])
        .arg(&data)
        .arg("--new-key-file")
        .arg(&new_key_file)
        .env_remove("FERRY_MASTER_KEY")
        .output()
        .unwrap();
    let rotated_err = String::from_utf8_lossy(&rotated.stderr).into_owned();
    assert_eq!(rotated.status.code(), Some(0), "{rotated_err}");
    assert!(rotated_err.contains("re-encrypted 2 secrets"), "{rotated_err}");

    // The old key no longer opens them: the server refuses to start with it.
    let mut refused = server_at(&data, http_port, quic_port);
    assert_eq!(refused.wait(WAIT), Some(1), "{}", refused.dump());
    assert!(refused.dump().contains("were sealed with master key"), "{}", refused.dump());

    // With the new key it starts, the secrets are as they were, and a change reaches the
    // workload (opened with the new key, inside the agent's session).
    std::fs::copy(&new_key_file, data.join("master.key")).unwrap();
    let mut server = server_at(&data, http_port, quic_port);
    server.wait_line("API on http://", WAIT);
    let listed: serde_json::Value =
        serde_json::from_str(&call(reqwest::Method::GET, &secrets, serde_json::Value::Null)).unwrap();
    assert_eq!(listed["secrets"]["MY_SECRET"]["version"], 1, "{listed}");
    call(reqwest::Method::PUT, &secrets, serde_json::json!({ "secrets": { "MY_SECRET": second } }));
    wait_for_file(&work.join("out"), &format!("{second}|{shared}"), &[&server, &agent]);

    assert_eq!(agent.terminate(WAIT), Some(0), "agent output:\n{}", agent.dump());
    assert_eq!(server.terminate(WAIT), Some(0), "server output:\n{}", server.dump());
    let logs = [server.dump(), refused.dump(), agent.dump(), rotated_err];
    assert!(logs[2].contains("intent accepted") && logs[0].contains("request"), "the output is captured");
    for value in [&shared, &first, &second] {
        assert!(logs.iter().all(|l| !l.contains(value.as_str())), "{value} was logged");
        for d in [&data, &state] {
            let found = ferry_tests::files_containing(d, value);
            assert!(found.is_empty(), "{value} in {found:?}");
        }
    }
}
