//! The gateway's own endpoints: `/health` (liveness), `/ready` (per-model readiness),
//! `GET /v1/models` (every served model with its state) and `/system/info` (engines, GPUs,
//! versions). `/metrics` lives in `metrics_merge`. On a pinned listener (`pinned`) `/ready`
//! and `/v1/models` speak of the port's model only.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::pinned::Pin;
use super::GatewayState;
use crate::api::types::models::{ModelCard, ModelList};
use crate::routing::{ModelBackend, ModelState};

/// `GET /health`: the gateway process answers. No auth, nothing secret.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize)]
struct ReadyModel {
    state: ModelState,
    kind: &'static str,
    replicas_ready: usize,
    replicas: usize,
}

/// `GET /ready`: 200 `ready` once every model serves (ready, or degraded with at least one
/// replica up); 503 `not_ready` before, 503 `draining` after SIGTERM. Public, so it gives
/// states only: why an engine failed (paths, log lines) is in `/system/info`, behind the key.
/// On a pinned listener only the port's model counts (a load balancer in front of one
/// model's port takes it out when that model cannot serve).
pub async fn ready(State(s): State<GatewayState>, pin: Option<Extension<Pin>>) -> Response {
    let mut models = BTreeMap::new();
    let table = s.routes.load();
    // A port whose model a reload removed serves nothing: not ready.
    let mut all = pin
        .as_ref()
        .is_none_or(|p| table.models.iter().any(|m| m.id == p.model));
    for m in table
        .models
        .iter()
        .filter(|m| pin.as_ref().is_none_or(|p| m.id == p.model))
    {
        let state = m.state();
        all &= matches!(state, ModelState::Ready | ModelState::Degraded);
        models.insert(
            m.id.to_string(),
            ReadyModel {
                state,
                kind: m.kind.as_str(),
                replicas_ready: m.replicas_ready(),
                replicas: m.replicas.len(),
            },
        );
    }
    let status = if s.inflight.is_draining() {
        "draining"
    } else if all {
        "ready"
    } else {
        "not_ready"
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({"status": status, "models": models})),
    )
        .into_response()
}

fn card(m: &ModelBackend) -> ModelCard {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut c = m.engine_card().unwrap_or_else(|| ModelCard {
        id: m.id.to_string(),
        object: "model".into(),
        created,
        owned_by: "trident".into(),
        kind: m.kind.as_str().into(),
        state: String::new(),
        max_model_len: m.entry.max_model_len,
        rerank_mode: None,
        aliases: Vec::new(),
        replicas: None,
        dtype: None,
    });
    // The gateway's view wins over what one engine said about itself.
    c.id = m.id.to_string();
    c.kind = m.kind.as_str().into();
    c.state = m.state().as_str().into();
    c.aliases = m.entry.aliases.clone();
    c.replicas = Some(m.replicas.len());
    if m.entry.upstream.is_some() {
        c.owned_by = "upstream".into();
    }
    c
}

/// `GET /v1/models`: every configured model, whatever its state (on a pinned listener the
/// port's model only).
pub async fn models(State(s): State<GatewayState>, pin: Option<Extension<Pin>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: s
            .routes
            .load()
            .models
            .iter()
            .filter(|m| pin.as_ref().is_none_or(|p| m.id == p.model))
            .map(|m| card(m))
            .collect(),
    })
}

/// `GET /v1/models/{model}`: one model's card, by id, alias or name (OpenAI's retrieve).
pub async fn model(
    State(s): State<GatewayState>,
    pin: Option<Extension<Pin>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<ModelCard>, crate::api::ApiError> {
    match s.routes.load().find(&name) {
        Some(m) if pin.as_ref().is_none_or(|p| m.id == p.model) => Ok(Json(card(m))),
        Some(_) => {
            s.reject("", crate::metrics::reason::MODEL_NOT_FOUND);
            Err(pin
                .map(|p| p.other_model(&name))
                .unwrap_or_else(|| crate::api::ApiError::model_not_found(&name)))
        }
        None => {
            s.reject("", crate::metrics::reason::MODEL_NOT_FOUND);
            Err(crate::api::ApiError::model_not_found(&name))
        }
    }
}

/// A GPU as reported by NVML.
#[derive(Debug, Clone, Serialize)]
pub struct GpuFacts {
    pub index: usize,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

/// Facts fixed at start-up for `/system/info`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemFacts {
    pub gpus: Vec<GpuFacts>,
    /// Why no GPU is listed (no NVML, built without CUDA), if so.
    pub gpu_note: Option<String>,
}

#[derive(Serialize)]
struct EngineInfo {
    model: String,
    kind: &'static str,
    replica: usize,
    state: crate::routing::ReplicaState,
    pid: Option<u32>,
    port: Option<u16>,
    url: Option<String>,
    device: String,
    restarts: u32,
    last_error: Option<String>,
    log_tail: Vec<String>,
}

/// `GET /system/info`.
pub async fn system_info(State(s): State<GatewayState>) -> Json<serde_json::Value> {
    let table = s.routes.load();
    let engines: Vec<EngineInfo> = table
        .models
        .iter()
        .flat_map(|m| {
            m.replicas.iter().map(move |r| {
                let life = r.life();
                EngineInfo {
                    model: m.id.to_string(),
                    kind: m.kind.as_str(),
                    replica: r.index,
                    state: life.state,
                    pid: life.pid,
                    port: r.port,
                    // A remote URL is configuration, shown as given; local ones are loopback.
                    url: r.remote.then(|| r.base_url.clone()),
                    device: r.device.clone(),
                    restarts: life.restarts,
                    last_error: life.last_error,
                    log_tail: r.log_tail(10),
                }
            })
        })
        .collect();
    Json(serde_json::json!({
        "gateway": {
            "pid": std::process::id(),
            "draining": s.inflight.is_draining(),
            "in_flight": s.inflight.count(),
            "balance": s.settings.balance,
        },
        "engines": engines,
        "gpus": s.facts.gpus,
        "gpu_note": s.facts.gpu_note,
        "versions": {
            "trident": env!("CARGO_PKG_VERSION"),
            "candle": "0.11",
        },
    }))
}
