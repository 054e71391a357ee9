//! Ferry's control plane.
//!
//! Start-up ([`start`]) validates nothing itself — [`config`] already did — and wires the pieces:
//! the [`store`], Ferry's CA (`ferry-certs`), the REST [`api`] and the [`quic`] endpoint agents
//! dial. Both listeners share one shutdown signal. `main.rs` only parses flags and calls [`start`].

pub mod agents;
pub mod api;
pub mod approvals;
pub mod audit;
pub mod authz;
pub mod change_windows;
pub mod config;
pub mod context;
pub mod deployments;
pub mod domain;
pub mod environments;
pub mod ids;
pub mod logs;
pub mod model;
pub mod planner;
pub mod principals;
pub mod promotions;
pub mod quic;
pub mod reconcile;
pub mod resources;
pub mod secrets;
pub mod sources;
pub mod status;
pub mod store;
pub mod tokens;
pub mod versions;
pub mod webhooks;
pub mod workspaces;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_certs::Ca;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::ServerConfig;
use store::{Store, StoreOptions};

/// Lifetime of the control plane's own server certificate; it is re-issued at every start.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Cert(#[from] ferry_certs::CertError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Transport(#[from] ferry_transport::TransportError),
    #[error(transparent)]
    MasterKey(#[from] secrets::crypto::KeyError),
    #[error(
        "stored secrets were sealed with master key {stored}, but this server was given master key {current}: start it \
         with the key that sealed them (FERRY_MASTER_KEY or --master-key-file), or rotate (ferry-server rotate-master-key)"
    )]
    WrongMasterKey { stored: String, current: String },
}

/// What handlers and sessions share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ca: Arc<Ca>,
    pub config: Arc<ServerConfig>,
    pub sessions: quic::Sessions,
    pub logs: logs::LogHub,
    /// Turns true when the control plane stops; long-lived responses (SSE) end on it.
    pub shutdown: watch::Receiver<bool>,
    pub reconciler: reconcile::Reconciler,
    /// `host:port` agents should dial (the advertise address, or the bound QUIC address).
    pub advertise_addr: Arc<str>,
    pub login_limiter: principals::LoginLimiter,
    /// Seals and opens secret values (`secrets`).
    pub master_key: Arc<secrets::MasterKey>,
    /// Git access for Git sources (`sources`), caching fetched repositories in
    /// `<data-dir>/git-cache`.
    pub git: ferry_git::Git,
}

impl AppState {
    /// A state over a fresh SQLite store in `dir`, for unit tests of handlers and middleware.
    #[cfg(test)]
    pub(crate) async fn for_tests(dir: &std::path::Path) -> AppState {
        let store = Store::sqlite_file(&dir.join("ferry.db")).await.unwrap();
        let ca = Ca::load_or_create(dir, "test CA").unwrap();
        let (_tx, shutdown) = watch::channel(false);
        AppState {
            store,
            ca: Arc::new(ca),
            config: Arc::new(ServerConfig::for_tests(dir)),
            sessions: Default::default(),
            logs: Default::default(),
            shutdown,
            reconciler: Default::default(),
            advertise_addr: "127.0.0.1:1".into(),
            login_limiter: Default::default(),
            master_key: Arc::new(secrets::MasterKey::generate().0),
            git: ferry_git::Git::new(dir.join("git-cache"), Default::default()),
        }
    }
}

/// A running control plane.
pub struct Running {
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub ca_fingerprint: String,
    pub admin_token_path: PathBuf,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, closes agent sessions with a "stopping" reason and waits for both
    /// listeners to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.store.close().await;
    }

    /// Runs until the process receives Ctrl-C or SIGTERM, then shuts down.
    pub async fn run_until_signalled(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Opens the store, loads (or creates) the CA and the admin credential, and starts both
/// listeners. Returns once they are bound.
pub async fn start(config: ServerConfig) -> Result<Running, Error> {
    ferry_certs::tls::provider();
    create_private_dir(&config.data_dir)?;
    let master_key = secrets::MasterKey::load(&config.master_key, &config.data_dir)?;
    let store = Store::connect(&config.database_url, StoreOptions::default()).await?;
    check_master_key(&store, &master_key).await?;
    if store.backend() == store::Backend::Postgres && config.master_key == config::MasterKeySource::DataDir {
        tracing::warn!(
            "secrets are sealed with the master key in this data directory; replicas sharing the database \
            must share the key: give each the same FERRY_MASTER_KEY or --master-key-file"
        );
    }
    let ca = Ca::load_or_create(&config.data_dir, "Ferry CA")?;
    let admin_token_path = config.data_dir.join("admin.token");
    ensure_admin_token(&store, &admin_token_path).await?;
    store.seed_environments(ids::now_ms()).await?;
    store.seed_default_workspace(ids::now_ms()).await?;

    let server = ca.issue_server(&config.sans, SERVER_CERT_LIFETIME)?;
    let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
    let tls = ferry_certs::tls::server_config(&chain, &server.key_pem, &[ca.cert_pem()], ferry_protocol::ALPN)?;
    let endpoint = ferry_transport::server_endpoint(config.quic_addr, tls).map_err(|e| match e {
        ferry_transport::TransportError::Io(source) => Error::Bind { addr: config.quic_addr, source },
        other => other.into(),
    })?;
    let quic_addr = endpoint.local_addr().map_err(|source| Error::Bind { addr: config.quic_addr, source })?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Bind { addr: config.http_addr, source })?;
    let http_addr = listener.local_addr().map_err(|source| Error::Bind { addr: config.http_addr, source })?;

    let advertise: Arc<str> = config.advertise_addr.clone().unwrap_or_else(|| quic_addr.to_string()).into();
    let (shutdown, rx) = watch::channel(false);
    let git = ferry_git::Git::new(
        config.data_dir.join("git-cache"),
        ferry_git::Limits { timeout: config.git_timeout, ..ferry_git::Limits::default() },
    );
    let state = AppState {
        git,
        store,
        ca: Arc::new(ca),
        config: Arc::new(config),
        sessions: quic::Sessions::default(),
        logs: logs::LogHub::default(),
        shutdown: rx.clone(),
        reconciler: reconcile::Reconciler::default(),
        advertise_addr: advertise,
        login_limiter: principals::LoginLimiter::default(),
        master_key: Arc::new(master_key),
    };
    // Placement must know every agent before the first reconcile, or it would move work away
    // from agents it has not loaded yet.
    state.reconciler.directory.reload(&state.store).await?;
    let quic_task = tokio::spawn(quic::serve(endpoint, state.clone(), rx.clone()));
    let reconcile_task = tokio::spawn(reconcile::run(state.clone(), rx.clone()));
    let liveness_task = tokio::spawn(quic::flush_liveness(state.clone(), rx.clone()));
    let observed_task = tokio::spawn(quic::write_observed(state.clone(), rx.clone()));
    let approvals_task = tokio::spawn(approvals::sweep(state.clone(), rx.clone()));
    let webhooks_task = tokio::spawn(webhooks::worker::run(state.clone(), rx.clone()));
    let idempotency_task = tokio::spawn(api::idempotency::sweep(state.clone(), rx.clone()));
    let app = api::router(state.clone());
    let mut http_rx = rx;
    let http_task = tokio::spawn(async move {
        // Connection info gives handlers the client's address (audit records' `source`).
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_rx.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, %quic_addr, ca_fingerprint = %state.ca.fingerprint(), "control plane started");
    Ok(Running {
        http_addr,
        quic_addr,
        ca_fingerprint: state.ca.fingerprint(),
        admin_token_path,
        state,
        shutdown,
        tasks: vec![
            quic_task,
            http_task,
            reconcile_task,
            liveness_task,
            observed_task,
            approvals_task,
            webhooks_task,
            idempotency_task,
        ],
    })
}

/// Refuses to start with a master key that did not seal the stored secrets: nothing could be
/// delivered, and new secrets would be sealed under two keys.
async fn check_master_key(store: &Store, key: &secrets::MasterKey) -> Result<(), Error> {
    let ids = store.secret_key_ids().await?;
    match ids.iter().find(|id| *id != key.id()) {
        Some(stored) => Err(Error::WrongMasterKey { stored: stored.clone(), current: key.id().to_string() }),
        None => Ok(()),
    }
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    let err = |source| Error::DataDir { path: path.display().to_string(), source };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// At first start, generates the admin bearer token: only its hash is stored; the plaintext is
/// written once to `admin.token` (mode 0600) for the operator to read.
async fn ensure_admin_token(store: &Store, path: &Path) -> Result<(), Error> {
    if store.admin_token_count().await? > 0 {
        if !path.exists() {
            tracing::warn!(path = %path.display(), "admin token file is missing; the stored token still works");
        }
        return Ok(());
    }
    let token = format!("ferry_admin_{}", ids::random_hex(32));
    ferry_certs::write_private(path, &format!("{token}\n"))?;
    store.insert_admin_token(&ids::random_id("admin"), &ids::hash_secret(&token), ids::now_ms()).await?;
    tracing::info!(path = %path.display(), "generated the admin token");
    Ok(())
}

/// Initializes logging: `RUST_LOG`-style filter (default `info`), text or JSON lines.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
