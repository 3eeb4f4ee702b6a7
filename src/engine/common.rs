//! State and routes every engine kind shares: model identity and state, `/health`
//! (readiness plus the model thread's liveness, see `liveness`), `/v1/models`, `/metrics`,
//! the request-metrics middleware and the router assembly with envelope fallbacks and the
//! body limit.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::types::models::{ModelCard, ModelList};
use crate::api::{self, ApiError};
use crate::config::ModelKind;
use crate::metrics::{reason, Metrics};

use super::liveness::{ModelWatch, Pulse};

/// Lifecycle of the model inside an engine, without its runtime (for reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelStatus {
    Loading,
    Ready,
    Failed(String),
}

impl ModelStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelStatus::Loading => "loading",
            ModelStatus::Ready => "ready",
            ModelStatus::Failed(_) => "failed",
        }
    }
}

/// The one state of an engine's model. The runtime (`R`: the kind's tokenizer, queue and
/// limits) exists exactly while the model is ready, so a handler that holds one needs no
/// second check, and readiness, failure and the runtime can never disagree.
pub enum ModelState<R> {
    Loading,
    Ready(Arc<R>),
    Failed(String),
}

impl<R> ModelState<R> {
    fn status(&self) -> ModelStatus {
        match self {
            ModelState::Loading => ModelStatus::Loading,
            ModelState::Ready(_) => ModelStatus::Ready,
            ModelState::Failed(why) => ModelStatus::Failed(why.clone()),
        }
    }
}

/// Facts about the loaded model shown in `/v1/models`.
#[derive(Debug, Clone, Default)]
pub struct CardFacts {
    pub max_model_len: Option<usize>,
    pub rerank_mode: Option<String>,
    pub dtype: Option<String>,
}

/// What every engine handler can reach: identity, the model's state and metrics.
pub struct EngineCommon<R> {
    pub id: Arc<str>,
    pub kind: ModelKind,
    pub aliases: Arc<[String]>,
    /// The entry's display `name`, accepted as `model` like the id (the seed's commands use it).
    pub name: Option<Arc<str>>,
    pub metrics: Metrics,
    /// The model thread's heartbeat and test fault hooks.
    pub watch: ModelWatch,
    state: Arc<RwLock<(ModelState<R>, CardFacts)>>,
}

impl<R> Clone for EngineCommon<R> {
    fn clone(&self) -> Self {
        EngineCommon {
            id: self.id.clone(),
            kind: self.kind,
            aliases: self.aliases.clone(),
            name: self.name.clone(),
            metrics: self.metrics.clone(),
            watch: self.watch.clone(),
            state: self.state.clone(),
        }
    }
}

impl<R: Send + Sync + 'static> EngineCommon<R> {
    /// A common part whose model is loading (published as not ready).
    pub fn new(id: &str, kind: ModelKind, aliases: Vec<String>, metrics: Metrics) -> Self {
        let common = EngineCommon {
            id: id.into(),
            kind,
            aliases: aliases.into(),
            name: None,
            metrics,
            watch: ModelWatch::default(),
            state: Arc::new(RwLock::new((ModelState::Loading, CardFacts::default()))),
        };
        common.publish(false);
        common
    }

    /// Replaces the model-thread watch (stall limit from the settings, faults from the
    /// environment).
    pub fn with_watch(mut self, watch: ModelWatch) -> Self {
        self.watch = watch;
        self
    }

    /// The model's state with the model thread's liveness folded in: a stopped thread is
    /// `Failed`, a stalled one [`Health::Hung`].
    pub fn health(&self) -> Health {
        match self.status() {
            ModelStatus::Ready => match self.watch.liveness.pulse() {
                Pulse::Alive => Health::Ready,
                Pulse::Hung(why) => Health::Hung(why),
                Pulse::Stopped(why) => Health::Failed(why),
            },
            ModelStatus::Loading => Health::Loading,
            ModelStatus::Failed(why) => Health::Failed(why),
        }
    }

    /// The state lock (plain data: a poisoned lock is recovered, as for the inboxes).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, (ModelState<R>, CardFacts)> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, state: ModelState<R>, facts: Option<CardFacts>) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.0 = state;
        if let Some(f) = facts {
            s.1 = f;
        }
    }

    pub fn status(&self) -> ModelStatus {
        self.read().0.status()
    }

    /// The model is loaded and warmed: handlers get `runtime` from now on.
    pub fn set_ready(&self, runtime: Arc<R>, facts: CardFacts) {
        // The model thread takes over from here; loading time is not a stall.
        self.watch.liveness.beat();
        self.write(ModelState::Ready(runtime), Some(facts));
        self.publish(true);
    }

    /// Loading failed (the message is the engine's `/health` error and its last word).
    pub fn set_failed(&self, why: impl Into<String>) {
        self.write(ModelState::Failed(why.into()), None);
        self.publish(false);
    }

    fn publish(&self, ready: bool) {
        self.metrics
            .ready
            .with_label_values(&[&self.id, self.kind.as_str()])
            .set(i64::from(ready));
    }

    /// The runtime, or 503 unless the model is ready and its thread alive.
    pub fn runtime(&self) -> Result<Arc<R>, ApiError> {
        self.ensure_ready()?;
        match &self.read().0 {
            ModelState::Ready(rt) => Ok(rt.clone()),
            _ => Err(ApiError::unavailable("The model is still loading")),
        }
    }

    /// Accepts the engine's own id or an alias; anything else is 404 `model_not_found`.
    /// An omitted model means this engine's model.
    pub fn check_model(&self, name: Option<&str>) -> Result<(), ApiError> {
        match name {
            None | Some("") => Ok(()),
            Some(n)
                if n == &*self.id
                    || self.aliases.iter().any(|a| a == n)
                    || self.name.as_deref() == Some(n) =>
            {
                Ok(())
            }
            Some(n) => {
                self.reject(reason::MODEL_NOT_FOUND);
                Err(ApiError::model_not_found(n))
            }
        }
    }

    /// Counts the request fields no handler reads.
    pub fn ignored(&self, other: &crate::api::types::OtherFields) {
        for field in other.keys() {
            tracing::debug!(field, "request field ignored");
            self.metrics.ignored_field(&self.id, field);
        }
    }

    /// Counts a rejected request.
    pub fn reject(&self, why: &str) {
        self.metrics
            .rejected
            .with_label_values(&[&self.id, self.kind.as_str(), why])
            .inc();
    }

    /// 503 unless the model is ready and its thread alive.
    pub fn ensure_ready(&self) -> Result<(), ApiError> {
        let why = match self.health() {
            Health::Ready => return Ok(()),
            Health::Loading => "The model is still loading",
            Health::Hung(_) => "The model is not responding; its engine is being restarted",
            Health::Failed(_) if self.status() == ModelStatus::Ready => {
                "The model's engine stopped; it is being restarted"
            }
            Health::Failed(_) => "The model failed to load",
        };
        self.reject(reason::UNAVAILABLE);
        Err(ApiError::unavailable(why))
    }

    fn card(&self) -> ModelCard {
        let (status, facts) = {
            let s = self.read();
            (s.0.status(), s.1.clone())
        };
        ModelCard {
            id: self.id.to_string(),
            object: "model".into(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            owned_by: "trident".into(),
            kind: self.kind.as_str().into(),
            state: status.as_str().into(),
            max_model_len: facts.max_model_len,
            rerank_mode: facts.rerank_mode,
            aliases: self.aliases.to_vec(),
            replicas: None,
            dtype: facts.dtype,
        }
    }
}

/// An engine's health as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Loading,
    Ready,
    /// Ready once, but the model thread is stuck in one unit of work.
    Hung(String),
    /// Loading failed, or the model thread stopped.
    Failed(String),
}

/// `GET /health`: 200 once the model answered its warm-up forward pass and while its model
/// thread beats; else 503 with `loading`, `hung` or `failed` (the supervisor probes this).
async fn health<R: Send + Sync + 'static>(State(c): State<EngineCommon<R>>) -> Response {
    let body = match c.health() {
        Health::Ready => return Json(serde_json::json!({"status": "ready"})).into_response(),
        Health::Loading => serde_json::json!({"status": "loading"}),
        Health::Hung(why) => serde_json::json!({"status": "hung", "error": why}),
        Health::Failed(why) => serde_json::json!({"status": "failed", "error": why}),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn models<R: Send + Sync + 'static>(State(c): State<EngineCommon<R>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![c.card()],
    })
}

async fn metrics<R>(State(c): State<EngineCommon<R>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics.render(),
    )
        .into_response()
}

/// Records `trident_requests_total` and `trident_request_duration_seconds` by route template.
async fn record_requests<R>(
    State(c): State<EngineCommon<R>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some(route) = route {
        if route != "/metrics" && route != "/health" {
            let kind = c.kind.as_str();
            c.metrics
                .requests
                .with_label_values(&[&c.id, kind, &route, resp.status().as_str()])
                .inc();
            c.metrics
                .request_duration
                .with_label_values(&[&c.id, kind, &route])
                .observe(started.elapsed().as_secs_f64());
        }
    }
    resp
}

/// Adds the shared routes, fallbacks, body limit and middleware to a kind's routes.
pub fn finish_router<R: Send + Sync + 'static>(
    kind_routes: Router,
    common: EngineCommon<R>,
    max_body_bytes: usize,
) -> Router {
    let shared = Router::new()
        .route("/health", get(health::<R>))
        .route("/v1/models", get(models::<R>))
        .route("/metrics", get(metrics::<R>))
        .with_state(common.clone());
    kind_routes
        .merge(shared)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn_with_state(common, record_requests::<R>))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            api::BodyLimit(max_body_bytes),
            api::envelope_errors,
        ))
}
