//! Forwarding of API requests to a replica of the requested model.
//!
//! Flow: check the content type and find `model` in the buffered body → resolve it (id or
//! alias, or the only model of the route's kind) → per-model admission → pick a replica →
//! send. A transport failure before any response status (refused, reset) is retried once
//! on another replica, within the retry budget and after a jittered pause; anything after
//! a status reached us is never retried. Bodies stream through chunk by chunk; dropping the
//! client's body drops the upstream request (the engine sees the disconnect); an upstream
//! failure mid-SSE ends the stream with a `data: {"error":…}` event.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::Full;
use serde::Deserialize;

use super::backends::{ModelBackend, ModelState, Replica};
use super::balance::{others_healthy, pick, retry_pause};
use super::limits::{self, InflightGuard, X_REQUEST_ID};
use super::GatewayState;
use crate::api::ApiError;
use crate::config::settings::secs;
use crate::config::ModelKind;
use crate::engine::access::ENGINE_TOKEN_HEADER;
use crate::metrics::reason;

/// Which models a route serves: one kind, or any (`/tokenize`).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub path: &'static str,
    pub kind: Option<ModelKind>,
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
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn probe(body: &[u8]) -> Result<(Option<String>, bool), ApiError> {
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

fn resolve<'a>(
    s: &'a GatewayState,
    spec: RouteSpec,
    model: Option<&str>,
) -> Result<&'a Arc<ModelBackend>, ApiError> {
    let m = match model {
        Some(name) if !name.is_empty() => s.backends.find(name).ok_or_else(|| {
            s.reject("", reason::MODEL_NOT_FOUND);
            ApiError::model_not_found(name)
        })?,
        _ => s.backends.sole(spec.kind).ok_or_else(|| {
            ApiError::invalid_param(
                "model",
                "'model' is required: more than one model serves this route",
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
    Ok(m)
}

/// Request headers passed on to the engine.
const FORWARDED: &[HeaderName] = &[header::CONTENT_TYPE, header::ACCEPT];

/// Response headers never passed back (hop-by-hop).
fn hop_by_hop(name: &HeaderName) -> bool {
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
struct Finish {
    s: GatewayState,
    model: Arc<ModelBackend>,
    route: &'static str,
    status: StatusCode,
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
    let body = match limits::read_body(&s, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if !is_json(&parts.headers) {
        return ApiError::unsupported_media_type().into_response();
    }
    let (model_name, stream) = match probe(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let model = match resolve(&s, spec, model_name.as_deref()) {
        Ok(m) => m.clone(),
        Err(e) => return e.into_response(),
    };
    let permit = match s.limiters.get(&*model.id) {
        Some(l) => match l.acquire().await {
            Ok(p) => Some(p),
            Err(e) => {
                s.reject(&model.id, reason::QUEUE_FULL);
                return e.into_response();
            }
        },
        None => None,
    };
    let body = match upstream_body(&model, body) {
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
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(spec.path);
    let mut tried: Vec<usize> = Vec::new();
    s.retry_budget.deposit(Instant::now());
    loop {
        let Some(replica) = pick(&model, s.settings.balance, &tried, Instant::now()) else {
            let err = no_backend(&model, !tried.is_empty());
            s.reject(&model.id, reason::UNAVAILABLE);
            finish.status = err.status;
            return err.into_response();
        };
        tried.push(replica.index);
        replica.outstanding.fetch_add(1, Ordering::AcqRel);
        finish.replica = Some(replica.clone());
        let mut rb = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(format!("{}{path_and_query}", replica.base_url));
        for name in FORWARDED.iter().chain(std::iter::once(&X_REQUEST_ID)) {
            if let Some(v) = parts.headers.get(name) {
                rb = rb.header(name, v);
            }
        }
        if let (false, Some(token)) = (replica.remote, &s.backends.engine_token) {
            rb = rb.header(ENGINE_TOKEN_HEADER, token);
        }
        let Ok(upstream_req) = rb.body(Full::new(body.clone())) else {
            finish.status = StatusCode::BAD_GATEWAY;
            return ApiError::bad_gateway("The model's engine address is invalid").into_response();
        };
        let sent = Instant::now();
        let limits = Limits::of(&s.settings, stream);
        let call = super::upstream().request(upstream_req);
        let result = match tokio::time::timeout(limits.first, call).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(model = %model.id, replica = replica.index, secs = limits.first.as_secs_f64(), "upstream sent no response in time");
                finish.status = StatusCode::GATEWAY_TIMEOUT;
                return limits.timeout_error().into_response();
            }
        };
        match result {
            Ok(resp) => {
                replica.record_success(sent.elapsed());
                return respond(resp, finish, limits, sent);
            }
            Err(e) => {
                // No status came back: the engine did not take the work.
                let now = Instant::now();
                tracing::warn!(model = %model.id, replica = replica.index, error = %e, "upstream transport failure");
                if replica.record_failure(now, others_healthy(&model, replica.index, now)) {
                    s.metrics.ejections.with_label_values(&[&model.id]).inc();
                    tracing::warn!(model = %model.id, replica = replica.index, "replica ejected");
                }
                replica.outstanding.fetch_sub(1, Ordering::AcqRel);
                finish.replica = None;
                let another = pick(&model, s.settings.balance, &tried, now).is_some();
                if tried.len() == 1 && another && s.retry_budget.withdraw(now) {
                    s.metrics.retries.with_label_values(&[&model.id]).inc();
                    tokio::time::sleep(retry_pause()).await;
                    continue;
                }
                finish.status = StatusCode::BAD_GATEWAY;
                return ApiError::bad_gateway("The model's engine could not be reached")
                    .into_response();
            }
        }
    }
}

/// Time limits of one proxied exchange.
#[derive(Debug, Clone, Copy)]
struct Limits {
    stream: bool,
    /// From sending the request to the first body frame: the whole request for a
    /// non-streaming call, `first_byte_timeout` for a stream.
    first: Duration,
    /// Longest silence between body frames after the first (streams only).
    idle: Option<Duration>,
}

impl Limits {
    fn of(settings: &crate::config::Settings, stream: bool) -> Limits {
        if stream {
            Limits {
                stream,
                first: secs(settings.first_byte_timeout_secs),
                idle: Some(secs(settings.stream_idle_timeout_secs)),
            }
        } else {
            Limits {
                stream,
                first: Duration::from_secs(settings.request_timeout_secs.max(1)),
                idle: None,
            }
        }
    }

    fn timeout_error(&self) -> ApiError {
        let what = if self.stream {
            "The model's engine did not start answering within the first-byte timeout"
        } else {
            "The model's engine did not answer within the request timeout"
        };
        ApiError::upstream_timeout(what)
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

/// The body sent upstream: unchanged for local engines; for a remote server with a `name`
/// the `model` field becomes that name.
fn upstream_body(model: &ModelBackend, body: Bytes) -> Result<Bytes, ApiError> {
    let (true, Some(name)) = (model.entry.upstream.is_some(), &model.entry.name) else {
        return Ok(body);
    };
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("The request body must be a JSON object"))?;
    v.insert("model".into(), serde_json::Value::String(name.clone()));
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| ApiError::internal("Could not encode the request"))
}

/// Passes the upstream response through, streaming its body under the exchange's time
/// limits (`sent` is when the request left).
fn respond(
    resp: axum::http::Response<hyper::body::Incoming>,
    mut finish: Finish,
    limits: Limits,
    sent: Instant,
) -> Response {
    let status = resp.status();
    finish.status = status;
    let (parts, upstream) = resp.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (k, v) in parts.headers {
        if let Some(k) = k.filter(|k| !hop_by_hop(k)) {
            headers.append(k, v);
        }
    }
    let sse = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let deadline = tokio::time::Instant::from_std(sent + limits.first);
    let relay = Relay {
        upstream,
        sse,
        done: false,
        tail: [b'\n', b'\n'],
        timer: Box::pin(tokio::time::sleep_until(deadline)),
        limits,
        finish,
    };
    let mut out = Response::new(Body::new(relay));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The response body relayed from the engine, frame by frame. An upstream failure or a
/// time limit (first frame, then the idle gap of a stream) ends an SSE stream with an
/// error event (closing a half-written event first) and any other body with an error,
/// which makes the server abort the response. Dropping it (the client left) drops the
/// upstream body, which closes the engine connection.
struct Relay {
    upstream: hyper::body::Incoming,
    sse: bool,
    done: bool,
    /// The last two bytes sent, to close a half-written SSE event before the error event.
    tail: [u8; 2],
    /// Fires when the current time limit passes; re-armed after each frame of a stream.
    timer: Pin<Box<tokio::time::Sleep>>,
    limits: Limits,
    finish: Finish,
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let polled = match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(p) => p,
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                this.done = true;
                tracing::warn!(model = %this.finish.model.id, "upstream went silent; ending the response");
                let err = ApiError::upstream_timeout(
                    "The model's engine stopped sending within the stream idle timeout; the response is incomplete",
                );
                return Poll::Ready(Some(this.fail(err)));
            }
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(b) = frame.data_ref() {
                    this.remember_tail(b);
                    if let Some(idle) = this.limits.idle {
                        this.timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.done = true;
                tracing::warn!(model = %this.finish.model.id, error = %e, "upstream failed mid-response");
                let err = ApiError::bad_gateway(
                    "The model's engine stopped while streaming; the response is incomplete",
                );
                Poll::Ready(Some(this.fail(err)))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.upstream.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.done {
            http_body::SizeHint::with_exact(0)
        } else {
            self.upstream.size_hint()
        }
    }
}

impl Relay {
    fn remember_tail(&mut self, b: &[u8]) {
        match b.len() {
            0 => {}
            1 => self.tail = [self.tail[1], b[0]],
            n => self.tail = [b[n - 2], b[n - 1]],
        }
    }

    /// The last frame after a failure: an SSE error event, or an error for other bodies.
    fn fail(&self, err: ApiError) -> Result<http_body::Frame<Bytes>, std::io::Error> {
        if !self.sse {
            return Err(std::io::Error::other(err.message));
        }
        let sep = if self.tail == [b'\n', b'\n'] {
            ""
        } else if self.tail[1] == b'\n' {
            "\n"
        } else {
            "\n\n"
        };
        Ok(http_body::Frame::data(Bytes::from(format!(
            "{sep}data: {}\n\n",
            err.to_json()
        ))))
    }
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
        let b = super::super::backends::Backends::new(&file, "127.0.0.1", &|_, _| 9000);
        let body = Bytes::from_static(br#"{"model": "big", "messages": []}"#);
        let out = upstream_body(b.find("big").unwrap(), body.clone()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "Qwen/Qwen2.5-32B-Instruct");
        assert_eq!(v["messages"], serde_json::json!([]));
        assert_eq!(
            b.find("big").unwrap().replicas[0].base_url,
            "http://vllm:8000"
        );
        // Local engines get the body untouched.
        assert_eq!(
            upstream_body(b.find("local").unwrap(), body.clone()).unwrap(),
            body
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
