//! `ferry-agent`: parse and validate the configuration, then run until SIGINT/SIGTERM.
//!
//! Exit codes: 0 stopped on request, 2 invalid configuration, 78 (EX_CONFIG) terminal error
//! such as a revoked identity, a refused token or a server that cannot show the CA the token
//! pins (so systemd's `RestartPreventExitStatus=78` stops restarting), 1 anything else.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use clap::error::ErrorKind;
use ferry_agent::config::{Args, Settings, clap_error};
use ferry_agent::{AgentState, Exit};
use tokio::sync::watch;

const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => return usage_error(&clap_error(&e).to_string()),
    };
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => return usage_error(&e.to_string()),
    };
    ferry_agent::init_tracing(settings.json_logs);
    match run(settings) {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Fatal(reason)) => {
            eprintln!("ferry-agent: {reason}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("ferry-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(line: &str) -> ExitCode {
    eprintln!("ferry-agent: {line}");
    ExitCode::from(EXIT_USAGE)
}

fn run(settings: Settings) -> anyhow::Result<Exit> {
    let _ = ferry_certs::tls::provider();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = watch::channel(false);
        let signals = wait_for_signals().await.context("cannot install signal handlers")?;
        tokio::spawn(async move {
            let mut signals = signals;
            signals.next().await;
            tracing::info!("signal received: stopping (send another to exit at once)");
            let _ = stop.send(true);
            signals.next().await;
            std::process::exit(130);
        });
        let (state, _) = watch::channel(AgentState::default());
        Ok(ferry_agent::run(settings.agent, shutdown, state).await)
    })
}

/// SIGINT and SIGTERM as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

async fn wait_for_signals() -> std::io::Result<Signals> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }
    #[cfg(not(unix))]
    Ok(Signals {})
}

impl Signals {
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
