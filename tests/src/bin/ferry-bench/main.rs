//! `ferry-bench`: prints the figures recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p ferry-tests
//! RUST_LOG=off ./target/release/ferry-bench basics [--runs N]
//! ```
//!
//! * `basics`: codec, enrollment/first session, log ingest/SSE and deploy latency against an
//!   in-process control plane (see `basics.rs`).
//!
//! Without a subcommand it prints the help and exits 2; bad arguments exit 2 with the usage.

mod basics;
mod stats;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_certs::tls::provider();
    match cli.command {
        Command::Basics(args) => basics::run(args).await,
    }
    ExitCode::SUCCESS
}
