//! The life of one replica: spawn → probe `/health` until the engine answered its warm-up
//! forward pass (or `startup_timeout` passes, or it reports `failed`) → watch it: exit, or
//! liveness probes every `liveness.interval`; `liveness.failures` consecutive failed probes
//! (no answer within `liveness.timeout`, or `hung` because the model thread stopped
//! beating) declare it hung: it leaves routing and is stopped → restart with backoff, or
//! give up after a crash loop. Remote upstreams get a probe-only loop. Every loop stops on
//! its `CancellationToken`, stopping its child (SIGTERM, then SIGKILL after the grace).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::backoff::{Backoff, RestartPolicy};
use super::spawn::{self, EngineCommand};
use crate::api::types::models::{ModelCard, ModelList};
use crate::engine::access::ENGINE_TOKEN_HEADER;
use crate::metrics::Metrics;
use crate::routing::{ModelBackend, Replica, ReplicaState};

/// What an engine task needs.
#[derive(Clone)]
pub struct EngineTask {
    pub cmd: Arc<EngineCommand>,
    pub model: Arc<ModelBackend>,
    pub replica: Arc<Replica>,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    pub policy: RestartPolicy,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
    pub liveness: LivenessPolicy,
    /// The engines' per-boot token (`engine::access`), sent with every probe.
    pub token: Option<reqwest::header::HeaderValue>,
    /// Replicas that must be ready (or failed) before this one starts (shared GPUs).
    pub start_after: Vec<Arc<Replica>>,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
const UNHEALTHY_AFTER: u32 = 3;

/// How a ready engine is probed (settings `liveness_*`).
#[derive(Debug, Clone, Copy)]
pub struct LivenessPolicy {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that declare the engine hung.
    pub failures: u32,
}

impl LivenessPolicy {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        use crate::config::settings::secs;
        LivenessPolicy {
            interval: secs(s.liveness_interval_secs),
            timeout: secs(s.liveness_timeout_secs),
            failures: s.liveness_failures.max(1),
        }
    }
}

enum Probe {
    Ready,
    Loading,
    Failed(String),
    Unreachable,
}

/// A GET to a local engine, with its token.
fn engine_get(t: &EngineTask, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
    let mut req = t
        .client
        .get(format!("{}{path}", t.replica.base_url))
        .timeout(timeout);
    if let Some(token) = &t.token {
        req = req.header(ENGINE_TOKEN_HEADER, token.clone());
    }
    req
}

async fn probe(t: &EngineTask, timeout: Duration) -> Probe {
    let resp = match engine_get(t, "/health", timeout).send().await {
        Ok(r) => r,
        Err(_) => return Probe::Unreachable,
    };
    if resp.status().is_success() {
        return Probe::Ready;
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if body["status"] == "failed" {
        let msg = body["error"]
            .as_str()
            .unwrap_or("the engine reported a failure");
        Probe::Failed(msg.to_string())
    } else {
        Probe::Loading
    }
}

async fn fetch_card(t: &EngineTask) -> Option<ModelCard> {
    let list: ModelList = engine_get(t, "/v1/models", PROBE_TIMEOUT)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    list.data.into_iter().next()
}

/// How one run of the engine ended.
enum RunEnd {
    Cancelled,
    /// The process exited or was stopped after a failure; `ready_for` is how long it served.
    Crashed {
        reason: Option<String>,
        ready_for: Duration,
    },
}

/// Runs one local replica until `cancel` fires or it is given up.
pub async fn engine_task(t: EngineTask, cancel: CancellationToken) {
    let r = &t.replica;
    let tag = if t.model.replicas.len() > 1 {
        format!("{}#{}", t.model.id, r.index)
    } else {
        t.model.id.to_string()
    };
    for other in &t.start_after {
        while !matches!(other.state(), ReplicaState::Ready | ReplicaState::Failed) {
            tokio::select! {
                _ = cancel.cancelled() => return r.set_state(ReplicaState::Stopped),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
    let mut backoff = Backoff::new(t.policy);
    loop {
        r.set_state(ReplicaState::Starting);
        let end = match spawn::spawn(&t.cmd, &t.model, r) {
            Ok(mut child) => {
                r.update(|l| l.pid = child.id());
                if let Some(out) = child.stdout.take() {
                    spawn::forward_output(out, r.clone(), tag.clone());
                }
                if let Some(err) = child.stderr.take() {
                    spawn::forward_output(err, r.clone(), tag.clone());
                }
                tracing::info!(model = %t.model.id, replica = r.index, pid = child.id(), "engine started");
                let end = watch(&t, &mut child, &cancel).await;
                spawn::stop(&mut child, t.stop_grace).await;
                r.update(|l| l.pid = None);
                end
            }
            Err(e) => RunEnd::Crashed {
                reason: Some(format!("could not start the engine: {e}")),
                ready_for: Duration::ZERO,
            },
        };
        let RunEnd::Crashed { reason, ready_for } = end else {
            r.set_state(ReplicaState::Stopped);
            return;
        };
        // Let the output forwarders catch the last lines before reading the tail.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reason = reason.or_else(|| r.last_error_line());
        r.update(|l| l.last_error = reason.clone());
        match backoff.on_crash(Instant::now(), ready_for) {
            None => {
                tracing::error!(model = %t.model.id, replica = r.index, error = reason.as_deref().unwrap_or(""), "engine keeps crashing; giving up");
                r.set_state(ReplicaState::Failed);
                return;
            }
            Some(delay) => {
                tracing::warn!(model = %t.model.id, replica = r.index, error = reason.as_deref().unwrap_or(""), delay_ms = delay.as_millis() as u64, "engine exited; restarting");
                r.set_state(ReplicaState::Restarting);
                tokio::select! {
                    _ = cancel.cancelled() => {
                        r.set_state(ReplicaState::Stopped);
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                t.metrics.restarts.with_label_values(&[&t.model.id]).inc();
                r.update(|l| l.restarts += 1);
            }
        }
    }
}

/// The reason for an engine killed by a signal the supervisor did not send (its last log
/// line says nothing about that). SIGKILL from outside is almost always the kernel's
/// out-of-memory killer, so the message says where to look.
fn killed_by(status: &std::process::ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let sig = status.signal()?;
    let name = nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string());
    Some(if sig == nix::libc::SIGKILL {
        format!(
            "the engine was killed by {name}; the kernel's out-of-memory killer does this when the container or host runs out of memory (see `dmesg` and the container's memory limit)"
        )
    } else {
        format!("the engine was killed by {name}")
    })
}

/// Probes a running engine until it exits, fails, hangs or `cancel` fires.
async fn watch(t: &EngineTask, child: &mut Child, cancel: &CancellationToken) -> RunEnd {
    let r = &t.replica;
    let started = Instant::now();
    let mut ready_at: Option<Instant> = None;
    let mut misses = 0u32;
    let mut interval = Duration::from_millis(25);
    loop {
        tokio::select! {
            status = child.wait() => {
                let ready_for = ready_at.map(|t| t.elapsed()).unwrap_or_default();
                r.set_state(ReplicaState::Restarting);
                let reason = status.as_ref().ok().and_then(killed_by);
                let code = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(model = %t.model.id, replica = r.index, status = %code, "engine exited");
                return RunEnd::Crashed { reason, ready_for };
            }
            _ = cancel.cancelled() => return RunEnd::Cancelled,
            _ = tokio::time::sleep(interval) => {}
        }
        let timeout = if ready_at.is_some() {
            t.liveness.timeout
        } else {
            PROBE_TIMEOUT
        };
        let ready_for = ready_at.map(|t| t.elapsed()).unwrap_or_default();
        match probe(t, timeout).await {
            Probe::Ready => {
                misses = 0;
                if ready_at.is_none() {
                    let card = fetch_card(t).await;
                    r.update(|l| {
                        l.card = card;
                        l.last_error = None;
                    });
                    ready_at = Some(Instant::now());
                    tracing::info!(model = %t.model.id, replica = r.index, secs = started.elapsed().as_secs_f64(), "engine ready");
                }
                if r.state() != ReplicaState::Ready {
                    r.set_state(ReplicaState::Ready);
                }
                interval = t.liveness.interval;
            }
            Probe::Failed(msg) => {
                r.set_state(ReplicaState::Restarting);
                let what = if ready_at.is_some() {
                    "engine failed"
                } else {
                    "engine failed to load"
                };
                tracing::error!(model = %t.model.id, replica = r.index, error = %msg, "{what}");
                return RunEnd::Crashed {
                    reason: Some(msg),
                    ready_for,
                };
            }
            Probe::Loading | Probe::Unreachable if ready_at.is_none() => {
                if started.elapsed() > t.startup_timeout {
                    r.set_state(ReplicaState::Restarting);
                    return RunEnd::Crashed {
                        reason: Some(format!(
                            "the engine was not ready within the startup timeout of {} s",
                            t.startup_timeout.as_secs()
                        )),
                        ready_for: Duration::ZERO,
                    };
                }
                // Poll quickly: every millisecond here is cold-start time.
                interval = Duration::from_millis(25);
            }
            Probe::Loading | Probe::Unreachable => {
                misses += 1;
                if misses >= t.liveness.failures {
                    // Out of routing first, so no new request goes to it while it stops.
                    r.set_state(ReplicaState::Unhealthy);
                    let why = format!(
                        "the engine was hung: {misses} liveness probes in a row failed (each {:.1} s)",
                        t.liveness.timeout.as_secs_f64()
                    );
                    tracing::error!(model = %t.model.id, replica = r.index, "{why}; stopping it");
                    return RunEnd::Crashed {
                        reason: Some(why),
                        ready_for,
                    };
                }
                tracing::warn!(model = %t.model.id, replica = r.index, misses, "engine missed a liveness probe");
                interval = t.liveness.interval;
            }
        }
    }
}

/// What one probe of a remote replica learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Up,
    /// Another trident, answering that it drains or lacks the model.
    SaysNo,
    /// No usable answer.
    Silent,
}

/// Probes one remote replica of a model: ready while `/health` (or `/v1/models`) answers
/// 200. Probes carry the model's upstream key.
pub async fn upstream_task(
    client: reqwest::Client,
    model: Arc<ModelBackend>,
    replica: Arc<Replica>,
    cancel: CancellationToken,
) {
    let r = &replica;
    let get = |path: &str| {
        let mut rb = client
            .get(format!("{}{path}", r.base_url))
            .timeout(PROBE_TIMEOUT);
        if let Some(auth) = &model.upstream_auth {
            rb = rb.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        rb.send()
    };
    // The upstream's own name for the model (the proxy rewrites `model` to it).
    let upstream_id = model
        .entry
        .name
        .clone()
        .unwrap_or_else(|| model.id.to_string());
    let mut misses = 0u32;
    loop {
        // Another trident answers `/ready` with every model's state: up while this model
        // serves there and that host is not draining; a trident that says no is out at once.
        // Other servers: `/health`, else `/v1/models`. Silence is out only after
        // UNHEALTHY_AFTER probes (one lost packet is not an outage).
        let answer = match get("/ready").await {
            Err(_) => Answer::Silent,
            Ok(resp) => match resp.json::<serde_json::Value>().await.ok().and_then(|v| {
                let state = v.get("models")?.get(&upstream_id)?.get("state")?.as_str()?;
                Some(v["status"] != "draining" && matches!(state, "ready" | "degraded"))
            }) {
                Some(true) => Answer::Up,
                Some(false) => Answer::SaysNo,
                None => match get("/health").await {
                    Ok(resp) if resp.status().is_success() => Answer::Up,
                    Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                        match get("/v1/models").await {
                            Ok(r) if r.status().is_success() => Answer::Up,
                            _ => Answer::Silent,
                        }
                    }
                    _ => Answer::Silent,
                },
            },
        };
        let (ok, said_no) = (answer == Answer::Up, answer == Answer::SaysNo);
        if ok {
            misses = 0;
            if !r.is_ready() {
                tracing::info!(model = %model.id, "upstream ready");
                r.update(|l| l.last_error = None);
                r.set_state(ReplicaState::Ready);
            }
        } else {
            misses = if said_no { UNHEALTHY_AFTER } else { misses + 1 };
            if r.is_ready() && misses >= UNHEALTHY_AFTER {
                r.set_state(ReplicaState::Unhealthy);
            }
            if !r.is_ready() {
                let why = if said_no {
                    "the upstream reports the model not ready (or it is draining)"
                } else {
                    "the upstream does not answer /ready or /health"
                };
                r.update(|l| l.last_error = Some(why.into()));
            }
        }
        let wait = if r.is_ready() {
            WATCH_INTERVAL
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            _ = cancel.cancelled() => {
                r.set_state(ReplicaState::Stopped);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
