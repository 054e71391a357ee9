//! `ferry-server`: the composition root. `ferry-server [flags]` runs the control plane;
//! `ferry-server dev [flags]` runs it together with a local agent in the same process.
//! This crate is the only place that links both `ferry-control-plane` and `ferry-agent`; the two
//! libraries never depend on each other.

mod dev;

use clap::{Parser, Subcommand};
use ferry_control_plane::config::{Args, ServerConfig};

#[derive(Debug, Parser)]
#[command(name = "ferry-server", version, about = "Ferry control plane", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Control plane on embedded SQLite plus a local agent, for trying Ferry on one machine
    /// (data in .ferry-dev unless --data-dir says otherwise).
    Dev(Args),
}

fn config(mut args: Args, dev: bool) -> ServerConfig {
    if dev && args.data_dir.is_none() {
        args.data_dir = Some(".ferry-dev".into());
    }
    match ServerConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-server: {e}");
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (config, dev) = match cli.command {
        Some(Command::Dev(args)) => (config(args, true), true),
        None => (config(cli.args, false), false),
    };
    ferry_control_plane::init_tracing(config.json_logs);
    let started = std::time::Instant::now();
    let running = match ferry_control_plane::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-server: {e}");
            std::process::exit(1);
        }
    };
    if dev {
        dev::run(running, started).await;
    } else {
        eprintln!(
            "ferry-server: API on http://{} · agents dial {} · admin token in {}",
            running.http_addr,
            running.state.advertise_addr,
            running.admin_token_path.display()
        );
        running.run_until_signalled().await;
    }
}
