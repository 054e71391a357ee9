//! `ferry-server`: the composition root. `ferry-server [flags]` runs the control plane;
//! `ferry-server dev [flags]` runs it together with a local agent in the same process;
//! `ferry-server rotate-master-key [flags] --new-key-file F` seals every stored secret again
//! under a new master key (servers stopped), after which the servers start with that key.
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
    /// Re-encrypts every stored secret under a new master key, in one transaction. Stop every
    /// ferry-server of the database first; then start them with the new key (replace
    /// <data-dir>/master.key with it, or give it as FERRY_MASTER_KEY / --master-key-file).
    RotateMasterKey(RotateArgs),
}

#[derive(Debug, clap::Args)]
struct RotateArgs {
    #[command(flatten)]
    args: Args,
    /// File holding the new master key (64 hexadecimal characters, e.g. from `openssl rand -hex
    /// 32`); or put the key itself in FERRY_NEW_MASTER_KEY.
    #[arg(long, env = "FERRY_NEW_MASTER_KEY_FILE")]
    new_key_file: Option<std::path::PathBuf>,
}

/// The environment variable that may hold the new key itself.
const NEW_KEY_ENV: &str = "FERRY_NEW_MASTER_KEY";

/// `ferry-server rotate-master-key`: exit 2 on bad arguments, 1 if the rotation failed (nothing
/// changed then), 0 once every secret is sealed under the new key.
async fn rotate(r: RotateArgs) -> i32 {
    use ferry_control_plane::secrets::{MasterKey, rotate_master_key};
    let config = config(r.args, false);
    let env_key = std::env::var(NEW_KEY_ENV).ok().filter(|k| !k.is_empty());
    let new = match (env_key, r.new_key_file) {
        (Some(_), Some(_)) => Err(format!("give one of {NEW_KEY_ENV} and --new-key-file, not both")),
        (Some(hex), None) => MasterKey::from_hex(&hex, NEW_KEY_ENV).map_err(|e| e.to_string()),
        (None, Some(path)) => MasterKey::read(&path).map_err(|e| e.to_string()),
        (None, None) => Err(format!("give the new key: --new-key-file FILE or {NEW_KEY_ENV}")),
    };
    let new = match new {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ferry-server: {e}");
            return 2;
        }
    };
    match rotate_master_key(&config, &new).await {
        Ok(done) => {
            eprintln!(
                "ferry-server: re-encrypted {} secrets from master key {} to {}; now start ferry-server with the new \
                 key (replace {} with it, or give it as FERRY_MASTER_KEY or --master-key-file)",
                done.resealed,
                done.from,
                done.to,
                config.data_dir.join("master.key").display(),
            );
            0
        }
        Err(e) => {
            eprintln!("ferry-server: {e}");
            1
        }
    }
}

fn config(mut args: Args, dev: bool) -> ServerConfig {
    if dev && args.data_dir.is_none() {
        args.data_dir = Some(".ferry-dev".into());
    }
    // A developer's own repositories are Git sources in dev mode.
    if dev {
        args.allow_file_sources = true;
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
        Some(Command::RotateMasterKey(r)) => {
            ferry_control_plane::init_tracing(false);
            std::process::exit(rotate(r).await);
        }
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
