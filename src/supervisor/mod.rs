//! `trident serve`: the supervisor and the gateway in one process.
//!
//! Start-up: load `models.json` (paths checked) → refuse taken engine ports → check the GPU
//! plan → build the routing table → bind the gateway's listeners pinned to each model's
//! `port` (`model_ports`; the engines then listen on private ports, `ports`) → start one
//! `engine_task` per local replica (smallest models first; models sharing a GPU one after
//! another) and an `upstream_task` per remote → serve the gateway. Shutdown (the `shutdown` future, SIGTERM in production): draining
//! (`/ready` 503, new requests 503), in-flight requests get `drain_timeout_secs`, then the
//! gateway stops and every engine gets SIGTERM and, after a grace period, SIGKILL. While
//! serving, the supervisor (`control`) runs the operator's commands one at a time: reload
//! the models file (`trident reload`, SIGHUP) and rolling restarts (`trident restart`).

pub mod backoff;
pub mod control;
pub mod engine_task;
pub mod gpu;
pub mod ports;
pub mod preflight;
pub mod spawn;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckOptions, ConfigError, ModelsFile, Problem, Settings};
use crate::engine::access::ENGINE_TOKEN_ENV;
use crate::gateway::{self, GatewayState, SystemFacts};
use crate::routing::{Backends, Routes};
pub use backoff::RestartPolicy;
use control::Supervisor;
use ports::PortPlan;
use spawn::EngineCommand;

/// Errors that stop `trident serve` before or while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the engines:\n{}", list(.0))]
    Preflight(Vec<Problem>),
    #[error("the GPU plan cannot be met:\n{}", list(.0))]
    GpuPlan(Vec<Problem>),
    #[error("{role:?} role cannot serve this models file:\n{}", list(problems))]
    Role { role: Role, problems: Vec<Problem> },
    #[error("gateway port {port} on {host} cannot be used: {source}")]
    GatewayPort {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error(
        "refusing to serve on {0} without an API key: anyone who reaches that address could use \
         the models. Set a key (TRIDENT_API_KEYS=key1,key2, --api-key KEY, or a file of keys \
         with TRIDENT_API_KEY_FILE), listen on loopback only (--host 127.0.0.1), or pass \
         --allow-unauthenticated (TRIDENT_ALLOW_UNAUTHENTICATED=true) to serve without keys"
    )]
    Unauthenticated(String),
    #[error("metrics port {port} on {host} cannot be used: {source}")]
    MetricsPort {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("cannot find the trident executable: {0}")]
    Exe(std::io::Error),
    #[error("gateway server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("set both tls_cert_file and tls_key_file (or neither)")]
    TlsHalf,
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How engine ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnginePorts {
    /// From the entry's `port` (+ replica index; + `engine_port_offset` with `model_ports`).
    #[default]
    Config,
    /// Free ports picked at start (tests).
    Ephemeral,
}

/// What `trident serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub models_file: PathBuf,
    pub settings: Settings,
    /// Passed on to engines.
    pub settings_file: Option<PathBuf>,
    pub log_format: Option<String>,
    /// The `trident` executable (default: this one).
    pub exe: Option<PathBuf>,
    /// Engine subcommand words (`["engine"]`).
    pub engine_subcommand: Vec<String>,
    pub engine_env: Vec<(String, String)>,
    pub engine_ports: EnginePorts,
    pub restart: RestartPolicy,
    /// SIGTERM → SIGKILL grace for engines.
    pub engine_stop_grace: Duration,
    pub role: Role,
    /// SIGHUP applies the edited models file (`trident serve` sets it; in-process tests not).
    pub reload_on_sighup: bool,
}

/// What one `trident serve` does in a multi-host setup (docs/ARCHITECTURE.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// Engines and the gateway in one process tree (one machine).
    #[default]
    All,
    /// A front gateway only: every model is an `upstream` (engine hosts or other servers).
    Gateway,
    /// An engine host: local engines only, served by this gateway on an internal address
    /// to a front gateway (with a key; TLS with `tls_cert_file`/`tls_key_file`).
    Engines,
}

impl Role {
    /// Entries this role cannot serve, one problem each.
    pub fn check(self, file: &ModelsFile) -> Vec<Problem> {
        file.models
            .iter()
            .filter_map(|(id, e)| {
                let why = match (self, e.upstream.is_some()) {
                    (Role::Gateway, false) => {
                        "is a local model, but --role gateway runs no engines (give it an \"upstream\")"
                    }
                    (Role::Engines, true) => {
                        "is an upstream, but --role engines serves local models only (front it from the gateway host)"
                    }
                    _ => return None,
                };
                Some(Problem {
                    path: format!("models.{id}"),
                    message: why.into(),
                })
            })
            .collect()
    }
}

impl ServeOptions {
    pub fn new(models_file: PathBuf, settings: Settings) -> Self {
        ServeOptions {
            models_file,
            settings,
            settings_file: None,
            log_format: None,
            exe: None,
            engine_subcommand: vec!["engine".into()],
            engine_env: Vec::new(),
            engine_ports: EnginePorts::Config,
            restart: RestartPolicy::default(),
            engine_stop_grace: Duration::from_secs(10),
            role: Role::All,
            reload_on_sighup: false,
        }
    }
}

/// Binds the gateway's listener; a taken port is an error naming it.
pub async fn bind_gateway(host: &str, port: u16) -> Result<TcpListener, ServeError> {
    TcpListener::bind((host, port))
        .await
        .map_err(|source| ServeError::GatewayPort {
            host: host.to_string(),
            port,
            source,
        })
}

/// True for addresses only this machine reaches (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Secure default: no API key is only allowed on loopback, or when the operator said so.
pub fn check_exposure(settings: &Settings) -> Result<(), ServeError> {
    if settings.api_keys.is_empty()
        && !settings.allow_unauthenticated
        && !is_loopback(&settings.host)
    {
        return Err(ServeError::Unauthenticated(settings.host.clone()));
    }
    Ok(())
}

/// Everything checked and built before the first engine starts.
struct Plan {
    file: ModelsFile,
    routes: Arc<Routes>,
    facts: SystemFacts,
    /// The gateway's pinned listeners to bind: port → model id.
    pinned: BTreeMap<u16, String>,
}

fn plan(opts: &ServeOptions, token: &str) -> Result<Plan, ServeError> {
    let file = ModelsFile::load(&opts.models_file, CheckOptions { check_paths: true })?;
    let problems = opts.role.check(&file);
    if !problems.is_empty() {
        return Err(ServeError::Role {
            role: opts.role,
            problems,
        });
    }
    let scheme = PortPlan::new(&opts.settings);
    let pinned = scheme.listeners(&file).map_err(ServeError::Preflight)?;
    let mut ports: HashMap<(String, usize), u16> = HashMap::new();
    match opts.engine_ports {
        EnginePorts::Config => {
            let taken = preflight::taken_ports(&file, "127.0.0.1", &scheme);
            if !taken.is_empty() {
                return Err(ServeError::Preflight(taken));
            }
        }
        EnginePorts::Ephemeral => {
            for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
                for r in 0..e.replicas.max(1) {
                    let p = preflight::free_port().map_err(|e| {
                        ServeError::Preflight(vec![Problem {
                            path: format!("models.{id}.port"),
                            message: format!("no free port: {e}"),
                        }])
                    })?;
                    ports.insert((id.clone(), r), p);
                }
            }
        }
    }
    let detected = gpu::detect();
    let mut problems = gpu::check_plan(&file, &detected);
    problems.extend(gpu::check_splits(&file));
    if !problems.is_empty() {
        return Err(ServeError::GpuPlan(problems));
    }
    let port_for = |id: &str, r: usize| -> u16 {
        ports.get(&(id.to_string(), r)).copied().unwrap_or_else(|| {
            file.models
                .get(id)
                .and_then(|e| scheme.engine_port(e, r))
                .unwrap_or(0)
        })
    };
    let mut backends = Backends::new(&file, "127.0.0.1", &port_for);
    backends.engine_token = Backends::token_header(token);
    let routes = Arc::new(Routes::new(backends));
    let (gpus, gpu_note) = match detected {
        Ok(g) => (g, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    Ok(Plan {
        file,
        routes,
        facts: SystemFacts { gpus, gpu_note },
        pinned,
    })
}

/// Binds every pinned listener on `host`, or names every port that cannot be bound.
pub(crate) async fn bind_pinned(
    host: &str,
    wanted: &BTreeMap<u16, String>,
) -> Result<Vec<(u16, String, TcpListener)>, Vec<Problem>> {
    let mut bound = Vec::new();
    let mut problems = Vec::new();
    for (port, id) in wanted {
        match gateway::pinned::bind(host, *port, id).await {
            Ok(l) => bound.push((*port, id.clone(), l)),
            Err(message) => problems.push(Problem {
                path: format!("models.{id}.port"),
                message,
            }),
        }
    }
    if problems.is_empty() {
        Ok(bound)
    } else {
        Err(problems)
    }
}

/// Runs the supervisor and the gateway on `listener` until `shutdown` completes, then
/// drains and stops every engine.
pub async fn run(
    opts: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let started = Instant::now();
    check_exposure(&opts.settings)?;
    // Engines answer only requests carrying this boot's token (`engine::access`).
    let token = std::env::var(ENGINE_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(crate::engine::access::generate);
    let plan = plan(&opts, &token)?;
    // TLS files are checked before any engine starts.
    let s = &opts.settings;
    gateway::set_upstream_tls(crate::tls::client_config(s.upstream_ca_file.as_deref())?);
    match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => {
            crate::tls::server_config(cert, key)?;
        }
        (None, None) => {}
        _ => return Err(ServeError::TlsHalf),
    }
    // The model ports are the gateway's before any engine starts: a taken one stops here.
    let pinned = bind_pinned(&opts.settings.host, &plan.pinned)
        .await
        .map_err(ServeError::Preflight)?;
    let metrics_listener = match opts.settings.metrics_port {
        0 => None,
        port => {
            let host = opts.settings.host.clone();
            let l = TcpListener::bind((host.as_str(), port))
                .await
                .map_err(|source| ServeError::MetricsPort { host, port, source })?;
            tracing::info!(addr = %l.local_addr().map_err(ServeError::Serve)?, "metrics listener (no key)");
            Some(l)
        }
    };
    let exe = match &opts.exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(ServeError::Exe)?,
    };
    let (control, mut commands) = gateway::admin::Control::channel();
    let state = GatewayState::with_control(
        plan.routes.clone(),
        opts.settings.clone(),
        plan.facts,
        Some(control.clone()),
    );
    let cmd = Arc::new(EngineCommand {
        exe,
        subcommand: opts.engine_subcommand.clone(),
        models_file: opts.models_file.clone(),
        settings_file: opts.settings_file.clone(),
        log_format: opts.log_format.clone(),
        env: opts
            .engine_env
            .iter()
            .cloned()
            .chain([(ENGINE_TOKEN_ENV.to_string(), token)])
            .collect(),
    });
    for (port, id, listener) in pinned {
        tracing::info!(port, model = %id, "gateway listening on the model's port");
        state.pinned.open(port, &id, listener);
    }
    let reload_on_sighup = opts.reload_on_sighup;
    let mut supervisor = Supervisor::new(opts.clone(), state.clone(), cmd);
    supervisor.start_all(&plan.file);
    if reload_on_sighup {
        tokio::spawn(reload_on_hangup(control));
    }
    tokio::spawn(log_when_ready(state.clone(), started));
    let gateway_stop = CancellationToken::new();
    if let Some(listener) = metrics_listener {
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(gateway::metrics_merge::metrics),
            )
            .fallback(crate::api::not_found)
            .with_state(state.clone());
        let stop = gateway_stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "metrics listener stopped");
            }
        });
    }
    let server = tokio::spawn(gateway::serve(
        listener,
        state.clone(),
        gateway_stop.clone().cancelled_owned(),
    ));
    let mut server = server;
    tokio::pin!(shutdown);
    // Operator commands run one at a time; shutdown (or the gateway ending) interrupts one.
    let served = loop {
        tokio::select! {
            _ = &mut shutdown => break None,
            r = &mut server => break Some(r),
            Some(command) = commands.recv() => {
                tokio::select! {
                    _ = &mut shutdown => break None,
                    r = &mut server => break Some(r),
                    _ = supervisor.handle(command) => {}
                }
            }
        }
    };
    if served.is_none() {
        let drain = Duration::from_secs(opts.settings.drain_timeout_secs);
        tracing::info!(
            in_flight = state.inflight.count(),
            drain_secs = drain.as_secs(),
            "draining"
        );
        state.start_draining();
        if !state.inflight.wait_idle(drain).await {
            tracing::warn!(
                in_flight = state.inflight.count(),
                "drain timeout; closing the remaining requests"
            );
        }
        gateway_stop.cancel();
    }
    let result = match served {
        Some(r) => r,
        None => server.await,
    };
    tracing::info!("stopping engines");
    supervisor.shutdown().await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Serve(e)),
        Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
    }
}

/// SIGHUP → reload, as many times as it comes; the outcome is logged.
async fn reload_on_hangup(control: gateway::admin::Control) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `trident reload`");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the models file");
        // The supervisor logs the report or the refusal.
        let _ = control.call(gateway::admin::Command::Reload).await;
    }
}

/// Logs once when every model serves (the cold-start figure); gives up when one failed.
async fn log_when_ready(state: GatewayState, started: Instant) {
    use crate::routing::ModelState;
    loop {
        let table = state.routes.load();
        let models = &table.models;
        if models.iter().all(|m| m.replicas_ready() > 0) {
            tracing::info!(secs = started.elapsed().as_secs_f64(), "all models ready");
            return;
        }
        if models.iter().any(|m| m.state() == ModelState::Failed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `trident serve` flags (the settings layer supplies the rest).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The models file.
    #[arg(long, default_value = "config/models.json", env = "TRIDENT_MODELS")]
    pub config: PathBuf,
    /// Gateway port (overrides settings; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Gateway bind address (overrides settings).
    #[arg(long)]
    pub host: Option<String>,
    /// Accepted API key (repeatable; replaces TRIDENT_API_KEYS and settings keys).
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// Serve on a non-loopback address without API keys (refused otherwise).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// `all` (one machine), `gateway` (a front gateway whose models are all upstreams) or
    /// `engines` (an engine host serving its local models to a front gateway).
    #[arg(long, value_enum, default_value_t = Role::All, env = "TRIDENT_ROLE")]
    pub role: Role,
    /// Write the gateway's bound address to this file once listening.
    #[arg(long, hide = true)]
    pub addr_file: Option<PathBuf>,
    /// Engine subcommand (tests: mock-engine).
    #[arg(long, hide = true, default_value = "engine")]
    pub engine_subcommand: String,
    /// Let the OS pick engine ports instead of the configured ones.
    #[arg(long, hide = true)]
    pub ephemeral_engine_ports: bool,
    /// First restart delay in milliseconds (default 1000; doubles to 60x).
    #[arg(long, hide = true)]
    pub restart_backoff_ms: Option<u64>,
    /// Engine SIGTERM → SIGKILL grace in milliseconds.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub engine_stop_grace_ms: u64,
}

/// Runs `trident serve` until SIGTERM/Ctrl-C.
pub async fn run_cli(
    args: &ServeArgs,
    settings: Settings,
    settings_file: Option<PathBuf>,
    log_format: Option<String>,
) -> Result<(), ServeError> {
    check_exposure(&settings)?;
    if let Some(path) = &settings.generated_key_file {
        // Never the key itself: only where it is.
        tracing::warn!(file = %path.display(), "no API key was configured: generated one; read it with `./deploy.sh key` (or the file)");
    }
    let listener = bind_gateway(&settings.host, settings.port).await?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(%addr, "gateway listening");
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(ServeError::Serve)?;
    }
    let mut opts = ServeOptions::new(args.config.clone(), settings);
    opts.settings_file = settings_file;
    opts.log_format = log_format;
    opts.engine_subcommand = vec![args.engine_subcommand.clone()];
    if args.ephemeral_engine_ports {
        opts.engine_ports = EnginePorts::Ephemeral;
    }
    if let Some(ms) = args.restart_backoff_ms {
        opts.restart = RestartPolicy::with_initial(Duration::from_millis(ms.max(1)));
    }
    opts.engine_stop_grace = Duration::from_millis(args.engine_stop_grace_ms);
    opts.role = args.role;
    opts.reload_on_sighup = true;
    run(opts, listener, crate::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_refuse_the_models_they_cannot_serve() {
        let file: ModelsFile = serde_json::from_str(
            r#"{"models": {"local": {"type": "embedding", "path": "/x", "port": 9000},
                           "remote": {"type": "chat", "upstream": ["http://a:8000", "https://b:8000"]}}}"#,
        )
        .unwrap();
        assert!(Role::All.check(&file).is_empty());
        let gateway = Role::Gateway.check(&file);
        assert_eq!(gateway.len(), 1);
        assert_eq!(gateway[0].path, "models.local");
        let engines = Role::Engines.check(&file);
        assert_eq!(engines.len(), 1);
        assert_eq!(engines[0].path, "models.remote");
    }

    #[test]
    fn loopback_addresses_and_the_exposure_rule() {
        for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "10.0.0.5", "example.org"] {
            assert!(!is_loopback(h), "{h}");
        }
        let mut s = Settings::default();
        assert!(matches!(
            check_exposure(&s),
            Err(ServeError::Unauthenticated(_))
        ));
        s.allow_unauthenticated = true;
        assert!(check_exposure(&s).is_ok());
        s.allow_unauthenticated = false;
        s.api_keys = vec![crate::config::Secret::new("k")];
        assert!(check_exposure(&s).is_ok());
        s.api_keys.clear();
        s.host = "127.0.0.1".into();
        assert!(check_exposure(&s).is_ok());
    }
}
