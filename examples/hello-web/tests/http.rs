//! The example service answers on $PORT: greeting, health, and a switch to fail health.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = get(port, path) {
            return r;
        }
        assert!(Instant::now() < deadline, "hello-web never answered on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serves_greeting_and_health() {
    let port = free_port();
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_hello-web"))
            .env("PORT", port.to_string())
            .env("FERRY_REPLICA", "3")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    let body = wait_get(port, "/");
    assert!(body.contains("hello from Ferry (replica 3)"), "{body}");
    assert!(wait_get(port, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn health_can_be_made_to_fail_and_port_is_required() {
    let port = free_port();
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_hello-web"))
            .env("PORT", port.to_string())
            .env("HELLO_FAIL_HEALTH", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_get(port, "/healthz").starts_with("HTTP/1.1 503"));
    let out = Command::new(env!("CARGO_BIN_EXE_hello-web")).env_remove("PORT").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
