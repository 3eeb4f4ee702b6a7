//! Forwarding of API requests to a replica of the requested model.
//!
//! Flow: check the content type and find `model` in the buffered body → resolve it (id or
//! alias, or the only model of the route's kind; on a pinned listener the port's model, which
//! `model` may name but not contradict) → per-model admission → pick a replica →
//! send. A transport failure before any response status (refused, reset) is retried once
//! on another replica, within the retry budget and after a jittered pause; anything after
//! a status reached us is never retried. Local engines get the boot's engine token. No
//! status within the time limit (`relay::Limits`: the request timeout, or the first-byte
//! timeout of a stream) is a 504 `upstream_timeout`. The body then streams through
//! `relay` chunk by chunk; dropping the client's body drops the upstream request (the
//! engine sees the disconnect).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::uri::PathAndQuery;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;
use serde::Deserialize;

use super::limits::{self, InflightGuard, X_REQUEST_ID};
use super::pinned::Pin;
use super::relay::{self, Limits};
use super::GatewayState;
use crate::api::ApiError;
use crate::config::ModelKind;
use crate::engine::access::ENGINE_TOKEN_HEADER;
use crate::metrics::reason;
use crate::routing::balance::{others_healthy, pick, retry_pause};
use crate::routing::{Backends, ModelBackend, ModelState, Replica};

/// Which models a route serves: one kind, or any (`/tokenize`).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub path: &'static str,
    pub kind: Option<ModelKind>,
    pub method: RouteMethod,
}

/// How a proxied route names its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMethod {
    /// `POST` with a JSON body whose `model` field names it.
    Post,
    /// `GET` without a body (TEI's `/info`): `?model=` names it.
    Get,
}

/// The `model` query parameter of a GET route, if any.
fn query_model(uri: &axum::http::Uri) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Q {
        model: Option<String>,
    }
    axum::extract::Query::<Q>::try_from_uri(uri)
        .map(|q| q.0.model)
        .map_err(|_| ApiError::invalid_param("model", "the query string could not be read"))
}

/// The fields of a request body the gateway looks at; the rest is skipped unparsed.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().as_bytes();
            let starts = |p: &[u8]| m.len() >= p.len() && m[..p.len()].eq_ignore_ascii_case(p);
            let ends =
                |p: &[u8]| m.len() >= p.len() && m[m.len() - p.len()..].eq_ignore_ascii_case(p);
            m.eq_ignore_ascii_case(b"application/json")
                || (starts(b"application/") && ends(b"+json"))
        })
        .unwrap_or(false)
}

/// The `model` and `stream` of a request body, read before it is forwarded (the rest is
/// skipped unparsed); a body that is not a JSON object is a 400.
pub fn probe(body: &[u8]) -> Result<(Option<String>, bool), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::invalid("The request body must be a JSON object"));
    }
    let p: Probe = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request: {msg}"
        ))
    })?;
    let model = match p.model {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::invalid_param("model", "'model' must be a string")),
    };
    let stream = matches!(p.stream, Some(serde_json::Value::Bool(true)));
    Ok((model, stream))
}

/// The model a request on a pinned listener goes to: the port's, named or not; a name that
/// means another model (or nothing) is a 404 saying which model the port serves.
fn pinned_model(
    s: &GatewayState,
    table: &Backends,
    pin: &Pin,
    model: Option<&str>,
) -> Result<Arc<ModelBackend>, ApiError> {
    let Some(served) = table.find(&pin.model) else {
        s.reject("", reason::MODEL_NOT_FOUND);
        return Err(pin.gone());
    };
    match model.filter(|n| !n.is_empty()) {
        Some(name) if !table.find(name).is_some_and(|m| Arc::ptr_eq(m, served)) => {
            s.reject("", reason::MODEL_NOT_FOUND);
            Err(pin.other_model(name))
        }
        _ => Ok(served.clone()),
    }
}

/// The model a request goes to, from the one routing table it is resolved against.
fn resolve(
    s: &GatewayState,
    table: &Backends,
    spec: RouteSpec,
    model: Option<&str>,
    pin: Option<&Pin>,
) -> Result<Arc<ModelBackend>, ApiError> {
    let pinned;
    let m = match (pin, model) {
        (Some(pin), _) => {
            pinned = pinned_model(s, table, pin, model)?;
            &pinned
        }
        (None, Some(name)) if !name.is_empty() => table.find(name).ok_or_else(|| {
            s.reject("", reason::MODEL_NOT_FOUND);
            ApiError::model_not_found(name)
        })?,
        (None, _) => table.sole(spec.kind).ok_or_else(|| {
            let candidates: Vec<&str> = table
                .models
                .iter()
                .filter(|m| spec.kind.is_none_or(|k| m.kind == k))
                .map(|m| &*m.id)
                .take(8)
                .collect();
            let how = match spec.method {
                RouteMethod::Post => "name one in 'model'",
                RouteMethod::Get => "name one with ?model=",
            };
            ApiError::invalid_param(
                "model",
                format!(
                    "'model' is required: {} models serve {} ({}); {how}",
                    candidates.len(),
                    spec.path,
                    candidates.join(", ")
                ),
            )
        })?,
    };
    if let Some(kind) = spec.kind {
        if m.kind != kind {
            s.reject(&m.id, reason::INVALID);
            return Err(ApiError::invalid_param(
                "model",
                format!(
                    "The model '{}' is a {} model; {} serves {} models",
                    m.id,
                    m.kind.as_str(),
                    spec.path,
                    kind.as_str()
                ),
            )
            .with_code("model_not_supported"));
        }
    }
    Ok(m.clone())
}

/// Request headers passed on to the engine.
const FORWARDED: &[HeaderName] = &[header::CONTENT_TYPE, header::ACCEPT];

/// Response headers never passed back (hop-by-hop).
pub(super) fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-connection"
    )
}

/// Records the request's metrics and releases the replica slot when the response ends.
pub(super) struct Finish {
    pub(super) s: GatewayState,
    pub(super) model: Arc<ModelBackend>,
    route: &'static str,
    pub(super) status: StatusCode,
    started: Instant,
    replica: Option<Arc<Replica>>,
    _inflight: InflightGuard,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(r) = &self.replica {
            r.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        let kind = self.model.kind.as_str();
        self.s
            .metrics
            .requests
            .with_label_values(&[&self.model.id, kind, self.route, self.status.as_str()])
            .inc();
        self.s
            .metrics
            .request_duration
            .with_label_values(&[&self.model.id, kind, self.route])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Handles one API request on a proxied route.
pub async fn forward(s: GatewayState, spec: RouteSpec, req: Request) -> Response {
    let started = Instant::now();
    let inflight = match limits::admit(&s) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    let pin = parts.extensions.get::<Pin>();
    let (body, model_name, stream) = match spec.method {
        RouteMethod::Get => match query_model(&parts.uri) {
            Ok(m) => (Bytes::new(), m, false),
            Err(e) => return e.into_response(),
        },
        RouteMethod::Post => {
            let body = match limits::read_body(&s, body).await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            if !is_json(&parts.headers) {
                return ApiError::unsupported_media_type().into_response();
            }
            match probe(&body) {
                Ok((m, stream)) => (body, m, stream),
                Err(e) => return e.into_response(),
            }
        }
    };
    // The table is loaded once: the model and the engine token come from the same one
    // (the guard is not held across the awaits below).
    let (model, engine_token) = {
        let table = s.routes.load();
        match resolve(&s, &table, spec, model_name.as_deref(), pin) {
            Ok(m) => (m, table.engine_token.clone()),
            Err(e) => return e.into_response(),
        }
    };
    let permit = match &model.limiter {
        Some(l) => match l.acquire().await {
            Ok(p) => Some(p),
            Err(e) => {
                s.reject(&model.id, reason::QUEUE_FULL);
                return e.into_response();
            }
        },
        None => None,
    };
    let named = model_name.as_deref().is_some_and(|n| !n.is_empty());
    let body = match upstream_body(&model, spec, body, named) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut finish = Finish {
        s: s.clone(),
        model: model.clone(),
        route: spec.path,
        status: StatusCode::OK,
        started,
        replica: None,
        _inflight: inflight,
        _permit: permit,
    };
    let path_and_query = match parts.uri.path_and_query() {
        Some(p) => p.clone(),
        None => PathAndQuery::from_static(spec.path),
    };
    let limits = Limits::of(&s.settings, stream);
    // At most two attempts: the first, and one retry on another replica.
    let mut tried = Tried::default();
    // One clock read per attempt: for the pick, the budget, the upstream's latency and the
    // pool (a clock read showed in the profile; a few are taken per request elsewhere).
    let mut now = Instant::now();
    s.retry_budget.deposit(now);
    loop {
        let Some(replica) = pick(&model, s.settings.balance, tried.get(), now) else {
            let err = no_backend(&model, !tried.get().is_empty());
            s.reject(&model.id, reason::UNAVAILABLE);
            finish.status = err.status;
            return err.into_response();
        };
        tried.push(replica.index);
        replica.outstanding.fetch_add(1, Ordering::AcqRel);
        finish.replica = Some(replica.clone());
        let Ok(uri) = replica.uri_for(&path_and_query) else {
            finish.status = StatusCode::BAD_GATEWAY;
            return ApiError::bad_gateway("The model's engine address is invalid").into_response();
        };
        let mut upstream_req = axum::http::Request::new(Full::new(body.clone()));
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        let headers = upstream_req.headers_mut();
        // Room for what is set here plus `host`, so the map never grows.
        headers.reserve(FORWARDED.len() + 4);
        for name in FORWARDED.iter().chain(std::iter::once(&X_REQUEST_ID)) {
            if let Some(v) = parts.headers.get(name) {
                headers.insert(name, v.clone());
            }
        }
        if let (false, Some(token)) = (replica.remote, &engine_token) {
            headers.insert(ENGINE_TOKEN_HEADER, token.clone());
        }
        if let (true, Some(auth)) = (replica.remote, &model.upstream_auth) {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        let sent = now;
        // One timer for the whole exchange: it bounds the wait for the response here, then
        // moves into the relayed body for the first frame (and a stream's idle gaps).
        let mut timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            sent + limits.first,
        )));
        let call = super::upstream::send(upstream_req, sent);
        let result = tokio::select! {
            biased;
            r = call => r,
            () = timer.as_mut() => {
                tracing::warn!(model = %model.id, replica = replica.index, secs = limits.first.as_secs_f64(), "upstream sent no response in time");
                finish.status = StatusCode::GATEWAY_TIMEOUT;
                return limits.timeout_error().into_response();
            }
        };
        match result {
            // A remote host that is draining or has lost its model answers 503: it did not
            // take the work, so another replica may (once, within the retry budget).
            Ok(resp)
                if resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    && replica.remote
                    && tried.get().len() == 1
                    && pick(&model, s.settings.balance, tried.get(), Instant::now()).is_some()
                    && s.retry_budget.withdraw(Instant::now()) =>
            {
                tracing::warn!(model = %model.id, replica = replica.index, "remote replica answered 503; retrying on another");
                replica.outstanding.fetch_sub(1, Ordering::AcqRel);
                finish.replica = None;
                s.metrics.retries.with_label_values(&[&model.id]).inc();
                now = Instant::now();
                continue;
            }
            Ok(resp) => {
                replica.record_success(sent.elapsed());
                return relay::respond(resp, finish, limits, timer);
            }
            Err(e) => {
                // No status came back: the engine did not take the work.
                now = Instant::now();
                tracing::warn!(model = %model.id, replica = replica.index, error = %e, "upstream transport failure");
                if replica.record_failure(now, others_healthy(&model, replica.index, now)) {
                    s.metrics.ejections.with_label_values(&[&model.id]).inc();
                    tracing::warn!(model = %model.id, replica = replica.index, "replica ejected");
                }
                replica.outstanding.fetch_sub(1, Ordering::AcqRel);
                finish.replica = None;
                let another = pick(&model, s.settings.balance, tried.get(), now).is_some();
                if tried.get().len() == 1 && another && s.retry_budget.withdraw(now) {
                    s.metrics.retries.with_label_values(&[&model.id]).inc();
                    tokio::time::sleep(retry_pause()).await;
                    now = Instant::now();
                    continue;
                }
                finish.status = StatusCode::BAD_GATEWAY;
                return ApiError::bad_gateway("The model's engine could not be reached")
                    .into_response();
            }
        }
    }
}

/// The replicas a request has been sent to: at most two (one retry), kept without
/// allocating.
#[derive(Default)]
struct Tried {
    indices: [usize; 2],
    len: usize,
}

impl Tried {
    fn push(&mut self, index: usize) {
        // A third attempt never happens (retries need `len == 1`); keep the last two.
        if self.len == self.indices.len() {
            self.indices[0] = self.indices[1];
            self.len -= 1;
        }
        self.indices[self.len] = index;
        self.len += 1;
    }

    fn get(&self) -> &[usize] {
        &self.indices[..self.len]
    }
}

/// 503 explaining why no replica can take the request.
fn no_backend(model: &ModelBackend, after_failure: bool) -> ApiError {
    let why = match model.state() {
        ModelState::Failed => "has failed and is not being restarted",
        ModelState::Loading => "is still loading",
        ModelState::Restarting => "is being restarted",
        _ if after_failure => "has no other healthy engine",
        _ => "has no healthy engine",
    };
    ApiError::unavailable(format!("The model '{}' {why}", model.id))
}

/// The body sent upstream: for a remote server with a `name` the `model` field becomes that
/// name; a body without `model` (the gateway chose the model: a pinned port, or the only
/// model of its kind) gets the model's id, since the engines' request types require one;
/// otherwise, and on bodiless routes, unchanged.
fn upstream_body(
    model: &ModelBackend,
    spec: RouteSpec,
    body: Bytes,
    named: bool,
) -> Result<Bytes, ApiError> {
    if spec.method != RouteMethod::Post {
        return Ok(body);
    }
    let name = match (model.entry.upstream.is_some(), &model.entry.name) {
        (true, Some(name)) => name.as_str(),
        _ if !named => &*model.id,
        _ => return Ok(body),
    };
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("The request body must be a JSON object"))?;
    v.insert("model".into(), serde_json::Value::String(name.to_string()));
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| ApiError::internal("Could not encode the request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_upstreams_get_their_own_model_name() {
        let text = r#"{"models": {
          "big": {"type": "chat", "name": "Qwen/Qwen2.5-32B-Instruct", "upstream": "http://vllm:8000/v1"},
          "local": {"type": "chat", "name": "SmolLM2", "path": "/x", "port": 9000}}}"#;
        let file = crate::config::ModelsFile::parse(text, Default::default()).unwrap();
        let b = crate::routing::Backends::new(&file, "127.0.0.1", &|_, _| 9000);
        let body = Bytes::from_static(br#"{"model": "big", "messages": []}"#);
        let chat = RouteSpec {
            path: "/v1/chat/completions",
            kind: Some(ModelKind::Chat),
            method: RouteMethod::Post,
        };
        let out = upstream_body(b.find("big").unwrap(), chat, body.clone(), true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "Qwen/Qwen2.5-32B-Instruct");
        assert_eq!(v["messages"], serde_json::json!([]));
        assert_eq!(
            b.find("big").unwrap().replicas[0].base_url,
            "http://vllm:8000"
        );
        // Local engines get the body untouched, unless it names no model.
        assert_eq!(
            upstream_body(b.find("local").unwrap(), chat, body.clone(), true).unwrap(),
            body
        );
        let bare = Bytes::from_static(br#"{"input": "a"}"#);
        let out = upstream_body(b.find("local").unwrap(), chat, bare, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["input"].as_str()),
            (Some("local"), Some("a"))
        );
        // A GET route has no body to rewrite.
        let info = RouteSpec {
            method: RouteMethod::Get,
            ..chat
        };
        assert!(
            upstream_body(b.find("big").unwrap(), info, Bytes::new(), false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn get_routes_name_the_model_in_the_query() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        assert_eq!(query_model(&uri("/info")).unwrap(), None);
        assert_eq!(
            query_model(&uri("/info?model=bge%2Dm3&x=1"))
                .unwrap()
                .as_deref(),
            Some("bge-m3")
        );
    }

    #[test]
    fn probe_finds_model_and_stream_and_rejects_non_objects() {
        let (m, s) = probe(br#"{"input": ["a", "b"], "model": "e", "stream": true}"#).unwrap();
        assert_eq!((m.as_deref(), s), (Some("e"), true));
        assert_eq!(probe(b"{}").unwrap(), (None, false));
        assert_eq!(
            probe(b"[\"e\"]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let e = probe(br#"{"model": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = probe(br#"{"model": "#).unwrap_err();
        assert!(e.message.contains("could not parse"), "{}", e.message);
    }
}
