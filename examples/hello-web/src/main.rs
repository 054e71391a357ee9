//! `hello-web`: the example service the README deploys with Ferry.
//!
//! Listens on `127.0.0.1:$PORT` (Ferry gives every replica its own port), answers `GET /` with a
//! greeting naming the replica, `GET /healthz` with `ok` (use it as a readiness or liveness
//! probe), and logs one line per request on stdout. `HELLO_FAIL_HEALTH=1` makes `/healthz`
//! answer 503, to see a failing readiness check. Standard library only.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let port: u16 = match std::env::var("PORT").ok().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("hello-web: set PORT to the port to listen on");
            std::process::exit(2);
        }
    };
    let replica = std::env::var("FERRY_REPLICA").unwrap_or_else(|_| "0".into());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello from Ferry".into());
    let fail_health = std::env::var("HELLO_FAIL_HEALTH").is_ok_and(|v| v == "1");
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello-web: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello-web replica {replica} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let (greeting, replica) = (greeting.clone(), replica.clone());
        std::thread::spawn(move || serve(stream, &greeting, &replica, fail_health));
    }
}

fn serve(mut stream: TcpStream, greeting: &str, replica: &str, fail_health: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = match path.as_str() {
        "/healthz" if fail_health => ("503 Service Unavailable", "unhealthy\n".to_string()),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/" => ("200 OK", format!("{greeting} (replica {replica})\n")),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    if path != "/healthz" {
        println!("GET {path} -> {}", &status[..3]);
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
