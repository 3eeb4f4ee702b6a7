//! One engine process: `trident engine --config models.json --model <id>`.
//!
//! The engine binds its port first (so the supervisor sees it `loading`), loads the model
//! on a blocking thread, runs one warm-up forward pass, and only then reports `ready` on
//! `/health`. Kind-specific routes live in `embed`, `rerank` and `chat`; the shared routes,
//! fallbacks and metrics middleware in `common`. Models are reached only through
//! `backend::EncoderBackend` (encoders) and the chat module's scheduler.

pub mod access;
pub mod backend;
pub mod chat;
pub mod common;
pub mod embed;
pub mod encoder_queue;
pub mod inbox;
pub mod liveness;
mod loader;
pub mod rerank;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::{CheckOptions, ConfigError, ModelKind, ModelsFile, Settings};
use crate::metrics::Metrics;
use common::{CardFacts, EngineCommon};
use encoder_queue::{BatchLimits, EncoderQueue, QueueMetrics};

/// Errors that stop an engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("model {0:?} is not in the models file")]
    UnknownModel(String),
    #[error("model {0:?} has no port (set \"port\" in models.json or pass --port)")]
    NoPort(String),
    #[error("model {0:?} is served by an upstream, not a local engine")]
    Upstream(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// What `trident engine` was asked to run.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub models_file: PathBuf,
    pub model_id: String,
    /// Overrides the entry's port.
    pub port: Option<u16>,
    /// Replica index: the port is `port + replica` unless overridden.
    pub replica: usize,
    pub settings: Settings,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves the engine's model entry and port from the options.
pub fn resolve(
    opts: &EngineOptions,
) -> Result<(ModelsFile, crate::config::ModelEntry, u16), EngineError> {
    let file = ModelsFile::load(&opts.models_file, CheckOptions { check_paths: false })?;
    let entry = file
        .models
        .get(&opts.model_id)
        .cloned()
        .ok_or_else(|| EngineError::UnknownModel(opts.model_id.clone()))?;
    if entry.upstream.is_some() {
        return Err(EngineError::Upstream(opts.model_id.clone()));
    }
    let port = match opts.port {
        Some(p) => p,
        None => entry
            .port
            .and_then(|p| p.checked_add(opts.replica as u16))
            .ok_or_else(|| EngineError::NoPort(opts.model_id.clone()))?,
    };
    Ok((file, entry, port))
}

/// Runs one engine until `shutdown` completes.
pub async fn run(
    opts: EngineOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EngineError> {
    let (_file, entry, port) = resolve(&opts)?;
    let addr = format!("{}:{port}", opts.settings.host);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| EngineError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let app = build(&opts.model_id, &entry, &opts.settings, Metrics::new());
    let app = access::guard(app, access::EngineToken::from_env());
    tracing::info!(model = %opts.model_id, kind = entry.kind.as_str(), %addr, "engine listening");
    serve(listener, app, shutdown)
        .await
        .map_err(EngineError::Serve)
}

/// Builds the engine's router and starts loading its model in the background.
pub fn build(
    id: &str,
    entry: &crate::config::ModelEntry,
    settings: &Settings,
    metrics: Metrics,
) -> Router {
    let stall = crate::config::settings::secs(settings.model_stall_secs);
    match entry.kind {
        ModelKind::Embedding | ModelKind::Rerank => {
            let state = embed::EncoderState {
                common: engine_common(id, entry, &metrics, stall),
                options: Arc::new(embed::EmbedOptions::of(entry)),
            };
            start_encoder(entry.clone(), state.clone());
            let routes = if entry.kind == ModelKind::Rerank {
                rerank::routes(state.clone())
            } else {
                embed::routes(state.clone())
            };
            common::finish_router(routes, state.common, settings.max_body_bytes)
        }
        ModelKind::Chat => {
            let state = chat::ChatState::new(engine_common(id, entry, &metrics, stall));
            chat::start(entry.clone(), state.clone());
            common::finish_router(
                chat::routes(state.clone()),
                state.common,
                settings.max_body_bytes,
            )
        }
    }
}

/// The shared part of an engine of any kind, its model loading.
fn engine_common<R: Send + Sync + 'static>(
    id: &str,
    entry: &crate::config::ModelEntry,
    metrics: &Metrics,
    stall: std::time::Duration,
) -> EngineCommon<R> {
    let mut c = EngineCommon::new(id, entry.kind, entry.aliases.clone(), metrics.clone())
        .with_watch(liveness::ModelWatch::new(id, stall));
    c.name = entry.name.as_deref().map(Into::into);
    c
}

fn start_encoder(entry: crate::config::ModelEntry, state: embed::EncoderState) {
    std::thread::Builder::new()
        .name("encoder-load".into())
        .spawn(move || {
            let common = state.common.clone();
            let started = catch_unwind(AssertUnwindSafe(|| load_encoder(&entry, &state)));
            if let Err(p) = started {
                load_panicked(&common, p.as_ref());
            }
        })
        .expect("spawning the loader thread. This is a bug.");
}

/// Loads the encoder, runs the warm-up pass and starts the model thread and queue.
fn load_encoder(entry: &crate::config::ModelEntry, state: &embed::EncoderState) {
    let common = &state.common;
    common.watch.faults.on_load();
    let backend = match loader::load_encoder(entry) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "model failed to load");
            common.set_failed(e.to_string());
            return;
        }
    };
    let meta = backend.meta();
    // A real forward pass before declaring readiness.
    let warm = if meta.cross_encoder {
        backend
            .encode_pair("warm-up", "warm-up")
            .and_then(|pair| backend.score(&[&pair]).map(|_| ()))
    } else {
        backend
            .encode_text("warm-up", true)
            .and_then(|ids| backend.embed(&[&ids]).map(|_| ()))
    };
    if let Err(e) = warm {
        tracing::error!(error = %e, "warm-up forward pass failed");
        common.set_failed(format!("warm-up failed: {e}"));
        return;
    }
    let limits = BatchLimits {
        max_batch_tokens: state.options.max_batch_tokens,
        max_batch_size: embed::MAX_BATCH_SIZE,
    };
    let queue = EncoderQueue::start(
        backend.clone(),
        state.options.max_queue,
        limits,
        QueueMetrics {
            metrics: common.metrics.clone(),
            model: common.id.to_string(),
            kind: common.kind.as_str(),
        },
        common.watch.clone(),
    );
    let facts = CardFacts {
        max_model_len: Some(meta.max_len),
        rerank_mode: (common.kind == ModelKind::Rerank).then(|| {
            if meta.cross_encoder {
                "cross-encoder".to_string()
            } else {
                "bi-encoder (cosine)".to_string()
            }
        }),
        dtype: Some(meta.dtype.clone()),
    };
    common.set_ready(Arc::new(embed::EncoderRuntime { backend, queue }), facts);
    tracing::info!(model = %common.id, dtype = %meta.dtype, max_len = meta.max_len, "model ready");
}

/// A panic while loading is a load failure with the panic's message, not a hang.
pub(crate) fn load_panicked<R: Send + Sync + 'static>(
    common: &EngineCommon<R>,
    payload: &(dyn std::any::Any + Send),
) {
    let why = format!(
        "loading the model panicked: {}",
        liveness::panic_message(payload)
    );
    tracing::error!(error = %why, "model failed to load");
    common.set_failed(why);
}
