use clap::Parser;
use ferry_control_plane::config::{Args, ServerConfig};

#[tokio::main]
async fn main() {
    let config = match ServerConfig::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-server: {e}");
            std::process::exit(2);
        }
    };
    ferry_control_plane::init_tracing(config.json_logs);
    match ferry_control_plane::start(config).await {
        Ok(running) => {
            eprintln!(
                "ferry-server: API on http://{} · agents dial {} · admin token in {}",
                running.http_addr,
                running.state.advertise_addr,
                running.admin_token_path.display()
            );
            running.run_until_signalled().await;
        }
        Err(e) => {
            eprintln!("ferry-server: {e}");
            std::process::exit(1);
        }
    }
}
