//! `ferry-bench`: prints the figures recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p ferry-tests -p ferry-server
//! RUST_LOG=off ./target/release/ferry-bench basics [--runs N]
//! RUST_LOG=off ./target/release/ferry-bench writes [--count N] [--concurrency C] [--database-url URL]
//! RUST_LOG=off ./target/release/ferry-bench scale [--agents N] [--idle-seconds S] [--database-url URL]
//! ```
//!
//! * `basics`: codec, enrollment/first session, log ingest/SSE and deploy latency against an
//!   in-process control plane (see `basics.rs`).
//! * `writes`: POST latency while 10,000 deployments accumulate, and list latency at 100 vs at
//!   10,000 stored (see `writes.rs`).
//! * `scale`: N simulated agents, each with its own QUIC connection and certificate, against a
//!   `ferry-server` child process: enrollment time, idle CPU/RSS, fan-out (see `scale.rs`).
//!
//! Without a subcommand it prints the help and exits 2; bad arguments exit 2 with the usage.

mod basics;
mod scale;
mod server;
mod stats;
mod writes;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-bench",
    about = "Ferry's benchmarks: prints the figures recorded in BENCHMARKS.md",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Codec, enrollment and first session, log ingest/SSE and deploy latency (in-process
    /// control plane and agent).
    Basics(basics::Args),
    /// Creating deployments stays flat: POST latency per bucket of existing deployments, list
    /// latency at 100 vs --count stored (ferry-server child process, one simulated agent).
    Writes(writes::Args),
    /// N simulated agents (own QUIC connection and certificate each) against a ferry-server
    /// child process: enroll + connect time, idle CPU/RSS, fan-out of one deployment.
    Scale(scale::Args),
}

/// Resolves on SIGINT or SIGTERM, so that a mode can stop its server (and drop its PostgreSQL
/// schema) before exiting instead of leaving the child process behind.
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    anyhow::anyhow!("interrupted by {name}")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_certs::tls::provider();
    let result = match cli.command {
        Command::Basics(args) => {
            basics::run(args).await;
            Ok(())
        }
        Command::Writes(args) => writes::run(args).await,
        Command::Scale(args) => scale::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
