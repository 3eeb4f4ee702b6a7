//! The gateway on :8000: one OpenAI-compatible surface in front of every engine.
//!
//! Layers, outermost first: request id and envelope for framework rejections (one layer) →
//! CORS (only when origins are configured) → API key → routes; proxied routes then admit
//! (draining, in-flight tracking) and read the body within its limits themselves. API
//! routes are proxied by `proxy` to a replica chosen by `routing::balance` from the current
//! routing table (`routing::Routes`, which the supervisor keeps up to date and replaces on
//! reload); `status` and `metrics_merge` answer the gateway's own endpoints, `admin` the
//! operator's reload and rolling restart. [`serve`] runs the router on per-core workers with a
//! hyper-util connection builder that cuts slow header senders off; with `model_ports` the
//! listeners pinned to one model each (`pinned`) feed the same workers and router.

pub mod admin;
pub mod auth;
pub mod limits;
pub mod metrics_merge;
pub mod pinned;
pub mod proxy;
pub mod relay;
pub mod status;
pub mod upstream;

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware;
use axum::routing::{get, on, post, MethodFilter};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::api;
use crate::config::{ModelKind, Settings};
use crate::metrics::Metrics;
use crate::routing::balance::RetryBudget;
use crate::routing::Routes;
use auth::ApiKeys;
use limits::Inflight;
use pinned::{Pin, PinnedListeners};
use proxy::{RouteMethod, RouteSpec};
pub use status::{GpuFacts, SystemFacts};

/// Everything the gateway's handlers share.
pub struct Shared {
    /// The routing table (`routing::Routes::load` for the current one).
    pub routes: Arc<Routes>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Probes, scrapes and other control traffic.
    pub client: reqwest::Client,
    pub keys: ApiKeys,
    pub inflight: Arc<Inflight>,
    /// Client connections open across every worker (for `max_connections` and `/metrics`).
    pub connections: Arc<AtomicUsize>,
    pub retry_budget: RetryBudget,
    pub facts: SystemFacts,
    /// The supervisor's control channel (reload, rolling restart); none without one.
    pub control: Option<admin::Control>,
    /// The listeners pinned to one model (`model_ports`; the supervisor opens them).
    pub pinned: Arc<PinnedListeners>,
}

/// TLS of upstream connections, set once before serving (`upstream_ca_file`).
static UPSTREAM_TLS: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();

/// Sets the TLS configuration every upstream client uses (the first call wins).
pub fn set_upstream_tls(cfg: rustls::ClientConfig) {
    let _ = UPSTREAM_TLS.set(cfg);
}

/// The upstream TLS configuration: as set, else the system's roots.
pub(crate) fn upstream_tls() -> rustls::ClientConfig {
    UPSTREAM_TLS.get().cloned().unwrap_or_else(|| {
        crate::tls::client_config(None).expect("TLS without a CA file builds. This is a bug.")
    })
}

/// Cheaply cloned handle on [`Shared`].
#[derive(Clone)]
pub struct GatewayState(Arc<Shared>);

impl Deref for GatewayState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl GatewayState {
    pub fn new(routes: Arc<Routes>, settings: Settings, facts: SystemFacts) -> Self {
        GatewayState::with_control(routes, settings, facts, None)
    }

    /// A state whose admin routes reach the supervisor through `control`.
    pub fn with_control(
        routes: Arc<Routes>,
        settings: Settings,
        facts: SystemFacts,
        control: Option<admin::Control>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(upstream_tls())
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .build()
            .expect("the HTTP client builds with static options. This is a bug.");
        GatewayState(Arc::new(Shared {
            routes,
            keys: ApiKeys::new(&settings.api_keys),
            settings,
            metrics: Metrics::new(),
            client,
            inflight: Arc::new(Inflight::default()),
            connections: Arc::new(AtomicUsize::new(0)),
            retry_budget: RetryBudget::default(),
            facts,
            control,
            pinned: Arc::new(PinnedListeners::default()),
        }))
    }

    /// Counts a rejected request (`model` empty when unknown: unknown names never become labels).
    pub fn reject(&self, model: &str, why: &str) {
        let kind = self
            .routes
            .load()
            .find(model)
            .map(|m| m.kind.as_str())
            .unwrap_or("gateway");
        self.metrics
            .rejected
            .with_label_values(&[model, kind, why])
            .inc();
    }

    /// Enters draining: `/ready` says so and new requests get 503.
    pub fn start_draining(&self) {
        self.inflight.start_draining();
    }
}

/// The API routes and the model kinds they serve.
pub const API_ROUTES: &[RouteSpec] = &[
    RouteSpec {
        path: "/v1/chat/completions",
        kind: Some(ModelKind::Chat),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v1/completions",
        kind: Some(ModelKind::Chat),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v1/embeddings",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v1/rerank",
        kind: Some(ModelKind::Rerank),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v2/rerank",
        kind: Some(ModelKind::Rerank),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/rerank",
        kind: Some(ModelKind::Rerank),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v1/score",
        kind: Some(ModelKind::Rerank),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v1/embed",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/v2/embed",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/embed",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/embed_all",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/info",
        kind: Some(ModelKind::Embedding),
        method: RouteMethod::Get,
    },
    RouteSpec {
        path: "/tokenize",
        kind: None,
        method: RouteMethod::Post,
    },
    RouteSpec {
        path: "/detokenize",
        kind: None,
        method: RouteMethod::Post,
    },
];

/// Builds the gateway's router.
pub fn router(state: GatewayState) -> Router {
    let mut proxied = Router::new();
    for spec in API_ROUTES {
        let spec = *spec;
        let method = match spec.method {
            RouteMethod::Post => MethodFilter::POST,
            RouteMethod::Get => MethodFilter::GET,
        };
        proxied = proxied.route(
            spec.path,
            on(
                method,
                move |axum::extract::State(s): axum::extract::State<GatewayState>, req: Request| {
                    proxy::forward(s, spec, req)
                },
            ),
        );
    }
    let mut app = Router::new()
        .route("/health", get(status::health))
        .route("/ready", get(status::ready))
        .route("/v1/models", get(status::models))
        .route("/v1/models/{*model}", get(status::model))
        .route("/system/info", get(status::system_info))
        .route("/metrics", get(metrics_merge::metrics))
        .route("/admin/reload", post(admin::reload))
        .route("/admin/restart/{*model}", post(admin::restart))
        .merge(proxied)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed);
    // Keys are fixed for the state's life: without any, the layer would pass everything
    // and only cost a boxed future per request.
    if !state.keys.is_open() {
        app = app.layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    }
    if let Some(cors) = cors(&state.settings) {
        app = app.layer(cors);
    }
    app.layer(limits::Front(api::BodyLimit(state.settings.max_body_bytes)))
        .with_state(state)
}

fn cors(settings: &Settings) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if settings.cors_origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .max_age(Duration::from_secs(600));
    if settings.cors_origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(Any));
    }
    let origins: Vec<HeaderValue> = settings
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(layer.allow_origin(AllowOrigin::list(origins)))
}

/// Time open connections get to finish once `serve`'s shutdown fired.
const CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// The number of gateway workers for a `gateway_threads` setting (0: one per core).
pub fn worker_count(setting: usize) -> usize {
    match setting {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Serves the gateway on `listener` until `shutdown` completes, then stops accepting and
/// gives open connections [`CONNECTION_GRACE`] to finish. Draining (503 for new requests,
/// waiting for in-flight ones) is the caller's job before `shutdown` fires.
///
/// Connections are served by `gateway_threads` workers, each a single-threaded event loop,
/// like the worker processes of a classic proxy: a connection, its requests and their
/// upstream connections stay on one thread, which saves the cross-thread wake-ups of a
/// work-stealing pool on every request. The accept loop hands each new connection to the
/// worker with the fewest open ones.
pub async fn serve(
    listener: TcpListener,
    state: GatewayState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits::from(&state.settings);
    let tls = match (&state.settings.tls_cert_file, &state.settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            crate::tls::server_config(cert, key).map_err(std::io::Error::other)?,
        ))),
        _ => None,
    };
    let count = worker_count(state.settings.gateway_threads);
    let total = state.connections.clone();
    let max_connections = state.settings.max_connections;
    let refused = state.metrics.gateway_refused_connections.clone();
    let pinned = state.pinned.clone();
    let mut pinned_rx = pinned.take_incoming();
    let app = router(state);
    let mut workers = Vec::with_capacity(count);
    let mut finished = Vec::with_capacity(count);
    for i in 0..count {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = Worker {
            tx,
            open: Arc::new(AtomicUsize::new(0)),
        };
        let counts = [worker.open.clone(), total.clone()];
        let (app, tls) = (app.clone(), tls.clone());
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                rt.block_on(serve_worker(rx, app, limits, tls, counts));
                let _ = done.send(());
            })?;
        workers.push(worker);
        finished.push(finished_rx);
    }
    tokio::pin!(shutdown);
    let mut result = Ok(());
    loop {
        let (socket, pin) = tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, _peer)) => (socket, None),
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((socket, pin)) = next_pinned(&mut pinned_rx) => (socket, Some(pin)),
            _ = &mut shutdown => break,
        };
        if max_connections > 0 && total.load(Ordering::Relaxed) >= max_connections {
            refused.inc();
            tokio::spawn(refuse(socket, max_connections));
            continue;
        }
        let _ = socket.set_nodelay(true);
        let Ok(socket) = socket.into_std() else {
            continue;
        };
        total.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = hand_over(&mut workers, (socket, pin)) {
            result = Err(e);
            break;
        }
    }
    drop(listener);
    pinned.close_all();
    drop(workers);
    for rx in finished {
        if rx.await.is_err() {
            result = Err(std::io::Error::other("a gateway worker panicked"));
        }
    }
    result
}

/// The next connection of a pinned listener; never, when `serve` has none to take.
async fn next_pinned(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<pinned::Accepted>>,
) -> Option<pinned::Accepted> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A connection for a worker, with the model its listener is pinned to (if any).
type Handed = (std::net::TcpStream, Option<Pin>);

/// Answers a connection past `max_connections` with a 503 in the API's error envelope and
/// closes it, without reading the request (a second's grace for the write).
async fn refuse(mut socket: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let body = api::ApiError::unavailable(format!(
        "The gateway has {max} open connections (max_connections); retry shortly"
    ))
    .with_code("too_many_connections")
    .to_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Per-connection protocol limits from the settings.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
    h2_keepalive: Duration,
    h2_max_streams: u32,
}

impl From<&Settings> for ConnectionLimits {
    fn from(s: &Settings) -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(s.header_read_timeout_secs.max(1)),
            h2_keepalive: Duration::from_secs(s.http2_keepalive_secs.max(1)),
            h2_max_streams: s.http2_max_streams.max(1),
        }
    }
}

/// The accept loop's handle on a worker: its inbox and its count of open connections.
struct Worker {
    tx: tokio::sync::mpsc::UnboundedSender<Handed>,
    open: Arc<AtomicUsize>,
}

/// Gives `socket` to the worker with the fewest open connections. A worker that has
/// stopped (its inbox is closed) is dropped from the list and the next one is tried; an
/// error only when none is left.
fn hand_over(workers: &mut Vec<Worker>, mut socket: Handed) -> std::io::Result<()> {
    loop {
        let Some(i) = (0..workers.len()).min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
        else {
            return Err(std::io::Error::other("every gateway worker has stopped"));
        };
        let w = &workers[i];
        w.open.fetch_add(1, Ordering::Relaxed);
        match w.tx.send(socket) {
            Ok(()) => return Ok(()),
            Err(back) => {
                tracing::error!(worker = i, "a gateway worker has stopped");
                socket = back.0;
                workers.swap_remove(i);
            }
        }
    }
}

/// One worker: serves the connections it is handed until the accept loop stops, then gives
/// them [`CONNECTION_GRACE`] to finish.
async fn serve_worker(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<Handed>,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counts: [Arc<AtomicUsize>; 2],
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(limits.h2_keepalive)
        .max_concurrent_streams(limits.h2_max_streams);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let closed = move |counts: &[Arc<AtomicUsize>; 2]| {
        for c in counts {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    };
    while let Some((socket, pin)) = incoming.recv().await {
        let socket = match tokio::net::TcpStream::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                closed(&counts);
                tracing::warn!(error = %e, "could not take a connection");
                continue;
            }
        };
        // The peer address is only needed (and only attached) on admin requests.
        let peer = socket.peer_addr().ok();
        let svc = TowerToHyperService::new(app.clone().map_request(
            move |r: Request<hyper::body::Incoming>| {
                let mut r = r.map(axum::body::Body::new);
                if let (Some(p), true) = (peer, r.uri().path().starts_with("/admin/")) {
                    r.extensions_mut().insert(admin::Peer(p));
                }
                if let Some(pin) = &pin {
                    r.extensions_mut().insert(pin.clone());
                }
                r
            },
        ));
        let counts = counts.clone();
        let Some(tls) = &tls else {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(socket), svc);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
                closed(&counts);
            });
            continue;
        };
        // TLS: the handshake gets the header timeout, then the connection is served like
        // a plain one (and drained the same way at shutdown).
        let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(limits.header_timeout, tls.accept(socket)).await
            {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let _ = watcher.watch(conn.into_owned()).await;
            }
            closed(&counts);
        });
    }
    if tokio::time::timeout(CONNECTION_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> std::net::TcpStream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap()
    }

    #[test]
    fn connections_go_to_the_least_loaded_live_worker() {
        let mut inboxes = Vec::new();
        let mut workers: Vec<Worker> = (0..3)
            .map(|i| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                inboxes.push(rx);
                Worker {
                    tx,
                    open: Arc::new(AtomicUsize::new([2, 1, 0][i])),
                }
            })
            .collect();
        // Worker 2 has the fewest connections but has stopped: worker 1 gets the socket.
        inboxes.pop();
        hand_over(&mut workers, (socket(), None)).unwrap();
        assert_eq!(workers.len(), 2);
        assert!(inboxes[1].try_recv().is_ok());
        assert!(inboxes[0].try_recv().is_err());
        assert_eq!(workers[1].open.load(Ordering::Relaxed), 2);
        // With every worker gone, handing over is an error.
        inboxes.clear();
        assert!(hand_over(&mut workers, (socket(), None)).is_err());
        assert!(workers.is_empty());
    }
}
