//! State and routes every engine kind shares: model identity and status, `/health`
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

/// Lifecycle of the model inside an engine.
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

/// Facts about the loaded model shown in `/v1/models`.
#[derive(Debug, Clone, Default)]
pub struct CardFacts {
    pub max_model_len: Option<usize>,
    pub rerank_mode: Option<String>,
    pub dtype: Option<String>,
}

/// What every engine handler can reach: identity, status and metrics.
#[derive(Clone)]
pub struct EngineCommon {
    pub id: Arc<str>,
    pub kind: ModelKind,
    pub aliases: Arc<[String]>,
    /// The entry's display `name`, accepted as `model` like the id (the seed's commands use it).
    pub name: Option<Arc<str>>,
    pub metrics: Metrics,
    /// The model thread's heartbeat and test fault hooks.
    pub watch: ModelWatch,
    status: Arc<RwLock<(ModelStatus, CardFacts)>>,
}

impl EngineCommon {
    pub fn new(id: &str, kind: ModelKind, aliases: Vec<String>, metrics: Metrics) -> Self {
        EngineCommon {
            id: id.into(),
            kind,
            aliases: aliases.into(),
            name: None,
            metrics,
            watch: ModelWatch::default(),
            status: Arc::new(RwLock::new((ModelStatus::Loading, CardFacts::default()))),
        }
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

    pub fn status(&self) -> ModelStatus {
        self.status
            .read()
            .map(|s| s.0.clone())
            .unwrap_or(ModelStatus::Failed("status lock poisoned".into()))
    }

    pub fn set_status(&self, status: ModelStatus, facts: Option<CardFacts>) {
        let ready = i64::from(status == ModelStatus::Ready);
        if ready == 1 {
            // The model thread takes over from here; loading time is not a stall.
            self.watch.liveness.beat();
        }
        if let Ok(mut s) = self.status.write() {
            s.0 = status;
            if let Some(f) = facts {
                s.1 = f;
            }
        }
        self.metrics
            .ready
            .with_label_values(&[&self.id, self.kind.as_str()])
            .set(ready);
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
        let (status, facts) = self
            .status
            .read()
            .map(|s| s.clone())
            .unwrap_or((ModelStatus::Failed(String::new()), CardFacts::default()));
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
async fn health(State(c): State<EngineCommon>) -> Response {
    let body = match c.health() {
        Health::Ready => return Json(serde_json::json!({"status": "ready"})).into_response(),
        Health::Loading => serde_json::json!({"status": "loading"}),
        Health::Hung(why) => serde_json::json!({"status": "hung", "error": why}),
        Health::Failed(why) => serde_json::json!({"status": "failed", "error": why}),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn models(State(c): State<EngineCommon>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![c.card()],
    })
}

async fn metrics(State(c): State<EngineCommon>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics.render(),
    )
        .into_response()
}

/// Records `trident_requests_total` and `trident_request_duration_seconds` by route template.
async fn record_requests(State(c): State<EngineCommon>, req: Request, next: Next) -> Response {
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
pub fn finish_router(kind_routes: Router, common: EngineCommon, max_body_bytes: usize) -> Router {
    let shared = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .with_state(common.clone());
    kind_routes
        .merge(shared)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn_with_state(common, record_requests))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            api::BodyLimit(max_body_bytes),
            api::envelope_errors,
        ))
}
