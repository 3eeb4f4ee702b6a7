//! `trident mock-engine` (hidden): a fault-injecting stand-in for an engine, for the
//! gateway and supervisor tests and the proxy benchmark.
//!
//! It speaks the engine paths (`/health`, `/v1/models`, `/metrics`, chat and completions
//! with and without streaming, embeddings, rerank/score, tokenize) with fixed answers, and
//! misbehaves on request: latency, an error status, hanging, a crash after N streamed
//! tokens, a crash at start, a slow or failed load. Behaviour comes from `--behaviour` or
//! the `MOCK_ENGINE_BEHAVIOUR` JSON map (`{"model": "spec", "model/1": "spec"}`), so a
//! supervisor can start differently behaving replicas. Every answer carries
//! `x-mock-replica`; `GET /mock/stats` counts the work requests it received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::ApiError;
use crate::config::ModelKind;

/// How the mock misbehaves (`key=value` pairs separated by commas).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Delay before answering a work request.
    pub latency_ms: u64,
    /// Answer work requests with this error status (envelope).
    pub status: Option<u16>,
    /// Never answer work requests.
    pub hang: bool,
    /// Exit the process (or, in-process, break the stream) after this many SSE tokens.
    pub crash_after_tokens: Option<usize>,
    /// Tokens per generation (default 5).
    pub tokens: usize,
    /// Delay between streamed tokens.
    pub token_delay_ms: u64,
    /// Exit with status 3 right after start (crash-loop tests).
    pub exit_on_start: bool,
    /// `/health` says `loading` for this long after start.
    pub load_ms: u64,
    /// `/health` reports a failed load.
    pub fail_load: bool,
    /// At start, write 256 KiB of lines that are not UTF-8 to stderr (more than a pipe
    /// holds), then `mock: after the garbage`.
    pub garbage_log: bool,
    /// After start, allocate and touch this many MiB, 16 MiB at a time (a model too big
    /// for its memory limit: under a cgroup limit the kernel's OOM killer ends it).
    pub alloc_mb: u64,
}

impl Behaviour {
    /// Parses `latency_ms=50,tokens=8,hang`.
    pub fn parse(spec: &str) -> Result<Behaviour, String> {
        let mut b = Behaviour {
            tokens: 5,
            ..Default::default()
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: expected a number, got {v:?}"))
            };
            match k {
                "latency_ms" => b.latency_ms = num()?,
                "status" => b.status = Some(num()? as u16),
                "hang" => b.hang = true,
                "crash_after_tokens" => b.crash_after_tokens = Some(num()? as usize),
                "tokens" => b.tokens = num()? as usize,
                "token_delay_ms" => b.token_delay_ms = num()?,
                "exit_on_start" => b.exit_on_start = true,
                "load_ms" => b.load_ms = num()?,
                "fail_load" => b.fail_load = true,
                "alloc_mb" => b.alloc_mb = num()?,
                "garbage_log" => b.garbage_log = true,
                other => return Err(format!("unknown mock behaviour {other:?}")),
            }
        }
        Ok(b)
    }

    /// The behaviour for `model`/`replica` from a `MOCK_ENGINE_BEHAVIOUR` JSON map.
    pub fn from_map(json: &str, model: &str, replica: usize) -> Result<Behaviour, String> {
        let map: std::collections::HashMap<String, String> =
            serde_json::from_str(json).map_err(|e| format!("MOCK_ENGINE_BEHAVIOUR: {e}"))?;
        let spec = map
            .get(&format!("{model}/{replica}"))
            .or_else(|| map.get(model))
            .map(String::as_str)
            .unwrap_or("");
        Behaviour::parse(spec)
    }
}

/// One mock engine.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub model: String,
    pub kind: ModelKind,
    pub replica: usize,
    pub behaviour: Behaviour,
    /// Crash by exiting the process (child-process form) rather than breaking the stream.
    pub exit_process: bool,
}

struct Mock {
    cfg: MockConfig,
    started: Instant,
    requests: AtomicU64,
}

type S = State<Arc<Mock>>;

/// The mock's router.
pub fn router(cfg: MockConfig) -> Router {
    let state = Arc::new(Mock {
        cfg,
        started: Instant::now(),
        requests: AtomicU64::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/mock/stats", get(stats))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(chat))
        .route("/v1/embeddings", post(work))
        .route("/v1/rerank", post(work))
        .route("/v2/rerank", post(work))
        .route("/rerank", post(work))
        .route("/v1/score", post(work))
        .route("/v1/embed", post(work))
        .route("/v2/embed", post(work))
        .route("/embed", post(work))
        .route("/embed_all", post(work))
        .route("/info", get(info))
        .route("/tokenize", post(work))
        .route("/detokenize", post(work))
        .fallback(crate::api::not_found)
        .with_state(state)
}

async fn health(State(m): S) -> Response {
    let b = &m.cfg.behaviour;
    if b.fail_load {
        let body = serde_json::json!({"status": "failed", "error": "mock: simulated load failure"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if m.started.elapsed() < Duration::from_millis(b.load_ms) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "loading"})),
        )
            .into_response();
    }
    Json(serde_json::json!({"status": "ready"})).into_response()
}

async fn models(State(m): S) -> Json<serde_json::Value> {
    let rerank_mode = (m.cfg.kind == ModelKind::Rerank).then_some("cross-encoder");
    Json(serde_json::json!({"object": "list", "data": [{
        "id": m.cfg.model, "object": "model", "created": 0, "owned_by": "mock",
        "type": m.cfg.kind.as_str(), "state": "ready", "max_model_len": 512,
        "rerank_mode": rerank_mode}]}))
}

async fn metrics(State(m): S) -> String {
    format!(
        "# HELP trident_requests_total Requests answered\n# TYPE trident_requests_total counter\ntrident_requests_total{{model=\"{}\",kind=\"{}\",route=\"mock\",status=\"200\"}} {}\n",
        m.cfg.model,
        m.cfg.kind.as_str(),
        m.requests.load(Ordering::Relaxed)
    )
}

async fn stats(State(m): S) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({"requests": m.requests.load(Ordering::Relaxed), "replica": m.cfg.replica, "pid": std::process::id()}),
    )
}

/// Shared start of every work request: count, delay, fail or hang as configured.
async fn misbehave(m: &Mock) -> Result<(), Response> {
    m.requests.fetch_add(1, Ordering::Relaxed);
    let b = &m.cfg.behaviour;
    if b.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.latency_ms)).await;
    }
    if b.hang {
        std::future::pending::<()>().await;
    }
    if let Some(code) = b.status {
        let mut e = ApiError::internal("mock: injected failure");
        e.status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(e.into_response());
    }
    Ok(())
}

fn tag(m: &Mock, headers: &HeaderMap, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("x-mock-replica", m.cfg.replica.into());
    if let Ok(v) = header::HeaderValue::from_str(&m.cfg.model) {
        h.insert("x-mock-model", v);
    }
    if let Some(id) = headers.get("x-request-id") {
        h.insert("x-mock-request-id", id.clone());
    }
    let saw_auth = if headers.contains_key(header::AUTHORIZATION) {
        "yes"
    } else {
        "no"
    };
    h.insert(
        "x-mock-saw-auth",
        header::HeaderValue::from_static(saw_auth),
    );
    resp
}

async fn body_json(req: Request) -> serde_json::Value {
    let bytes = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

async fn work(State(m): S, req: Request) -> Response {
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();
    let body = body_json(req).await;
    if let Err(r) = misbehave(&m).await {
        return tag(&m, &headers, r);
    }
    let n = ["input", "inputs", "texts", "documents"]
        .iter()
        .filter_map(|k| body[*k].as_array().map(Vec::len))
        .max()
        .unwrap_or(1);
    let answer = match path.as_str() {
        "/v1/embeddings" => serde_json::json!({"object": "list", "model": m.cfg.model,
            "data": (0..n).map(|i| serde_json::json!({"object": "embedding", "index": i, "embedding": [0.6, 0.8]})).collect::<Vec<_>>(),
            "usage": {"prompt_tokens": n, "total_tokens": n}}),
        // TEI's bare arrays; the model's name rides in the answer's header (`x-mock-model`).
        "/embed" => serde_json::json!((0..n).map(|_| [0.6, 0.8]).collect::<Vec<_>>()),
        "/embed_all" => serde_json::json!((0..n).map(|_| [[0.6, 0.8]]).collect::<Vec<_>>()),
        "/v1/embed" | "/v2/embed" => serde_json::json!({"id": "mock", "model": m.cfg.model,
            "embeddings": {"float": (0..n).map(|_| [0.6, 0.8]).collect::<Vec<_>>()},
            "texts": body["texts"], "response_type": "embeddings_by_type",
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": n}}}),
        "/tokenize" => serde_json::json!({"count": 2, "max_model_len": 512, "tokens": [1, 2]}),
        "/detokenize" => serde_json::json!({"prompt": "mock"}),
        _ => serde_json::json!({"model": m.cfg.model,
            "results": (0..n).map(|i| serde_json::json!({"index": i, "relevance_score": 1.0 / (i as f64 + 1.0)})).collect::<Vec<_>>()}),
    };
    tag(&m, &headers, Json(answer).into_response())
}

/// TEI's `GET /info`, reduced to what the gateway tests look at.
async fn info(State(m): S, req: Request) -> Response {
    let headers = req.headers().clone();
    if let Err(r) = misbehave(&m).await {
        return tag(&m, &headers, r);
    }
    let answer = serde_json::json!({"model_id": m.cfg.model, "max_input_length": 512,
        "model_type": {"embedding": {"pooling": "mean"}}});
    tag(&m, &headers, Json(answer).into_response())
}

async fn chat(State(m): S, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = body_json(req).await;
    if let Err(r) = misbehave(&m).await {
        return tag(&m, &headers, r);
    }
    let b = m.cfg.behaviour.clone();
    if body["stream"] != serde_json::Value::Bool(true) {
        let text: Vec<String> = (0..b.tokens).map(|i| format!("t{i}")).collect();
        let answer = serde_json::json!({"id": "mock", "object": "chat.completion", "model": m.cfg.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text.join(" ")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": b.tokens, "total_tokens": b.tokens + 1}});
        return tag(&m, &headers, Json(answer).into_response());
    }
    let exit_process = m.cfg.exit_process;
    let model = m.cfg.model.clone();
    let stream = futures::stream::unfold(0usize, move |i| {
        let (b, model) = (b.clone(), model.clone());
        async move {
            if i == usize::MAX || i > b.tokens {
                return None;
            }
            if i > 0 && b.token_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(b.token_delay_ms)).await;
            }
            if b.crash_after_tokens == Some(i) {
                if exit_process {
                    // A hard crash: the connection drops mid-stream.
                    std::process::exit(3);
                }
                return Some((
                    Err(std::io::Error::other("mock: simulated crash")),
                    usize::MAX,
                ));
            }
            let event = if i == b.tokens {
                "data: [DONE]\n\n".to_string()
            } else {
                let chunk = serde_json::json!({"id": "mock", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            };
            Some((Ok::<Bytes, std::io::Error>(Bytes::from(event)), i + 1))
        }
    });
    let resp = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid. This is a bug.");
    tag(&m, &headers, resp)
}

/// Allocates `mb` MiB in 16 MiB pieces, writing every page so it is really resident, and
/// keeps it.
fn hog(mb: u64) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mb.div_ceil(16) {
        held.push(vec![1u8; 16 << 20]);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    eprintln!("mock engine: holding {} MiB", held.len() * 16);
    loop {
        std::thread::park();
    }
}

/// Runs the mock on `listener` (child-process form: crashes exit the process).
pub async fn run(
    cfg: MockConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if cfg.behaviour.exit_on_start {
        eprintln!("ERROR mock engine {}: simulated start-up crash", cfg.model);
        std::process::exit(3);
    }
    eprintln!(
        "mock engine {} replica {} listening on {}",
        cfg.model,
        cfg.replica,
        listener.local_addr()?
    );
    if cfg.behaviour.garbage_log {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let line = [0xffu8, 0xfe, b'x', 0xc3, b'\n'];
        for _ in 0..(256 * 1024 / line.len()) {
            err.write_all(&line)?;
        }
        writeln!(err, "mock: after the garbage")?;
    }
    if cfg.behaviour.alloc_mb > 0 {
        let mb = cfg.behaviour.alloc_mb;
        std::thread::spawn(move || hog(mb));
    }
    let app =
        crate::engine::access::guard(router(cfg), crate::engine::access::EngineToken::from_env());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_specs_parse_and_map_by_replica() {
        let b = Behaviour::parse("latency_ms=20, hang,tokens=3").unwrap();
        assert_eq!((b.latency_ms, b.hang, b.tokens), (20, true, 3));
        assert!(Behaviour::parse("explode").is_err());
        let map = r#"{"m": "latency_ms=5", "m/1": "status=500"}"#;
        assert_eq!(Behaviour::from_map(map, "m", 0).unwrap().latency_ms, 5);
        assert_eq!(Behaviour::from_map(map, "m", 1).unwrap().status, Some(500));
        assert_eq!(Behaviour::from_map(map, "x", 0).unwrap().tokens, 5);
    }
}

/// `trident mock-engine` flags: the engine's own, plus the behaviour.
#[derive(Debug, Clone, clap::Args)]
pub struct MockEngineArgs {
    /// The models file (gives the model's kind).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    #[arg(long, default_value = "mock")]
    pub model: String,
    /// Kind when there is no models file: chat, embedding or rerank.
    #[arg(long, default_value = "chat")]
    pub kind: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 0)]
    pub replica: usize,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Behaviour spec (overrides MOCK_ENGINE_BEHAVIOUR).
    #[arg(long)]
    pub behaviour: Option<String>,
}

/// Runs `trident mock-engine` until SIGTERM/Ctrl-C.
pub async fn run_cli(args: &MockEngineArgs) -> Result<(), String> {
    let kind = match &args.config {
        Some(path) => {
            let file = crate::config::ModelsFile::load(path, Default::default())
                .map_err(|e| e.to_string())?;
            file.models
                .get(&args.model)
                .map(|e| e.kind)
                .ok_or_else(|| format!("model {:?} is not in {}", args.model, path.display()))?
        }
        None => serde_json::from_value(serde_json::Value::String(args.kind.clone()))
            .map_err(|_| format!("unknown kind {:?}", args.kind))?,
    };
    let behaviour = match (&args.behaviour, std::env::var("MOCK_ENGINE_BEHAVIOUR")) {
        (Some(spec), _) => Behaviour::parse(spec)?,
        (None, Ok(map)) => Behaviour::from_map(&map, &args.model, args.replica)?,
        (None, Err(_)) => Behaviour::parse("")?,
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let cfg = MockConfig {
        model: args.model.clone(),
        kind,
        replica: args.replica,
        behaviour,
        exit_process: true,
    };
    run(cfg, listener, crate::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
