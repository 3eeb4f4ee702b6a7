//! The routing table: every served model with its replicas (local engine processes or
//! remote `upstream`s, the same thing to the balancer). The supervisor and the gateway use
//! it as peers: the supervisor owns each replica's lifecycle (state, pid, restarts, last
//! error, log tail) and swaps in a new table on reload; the gateway reads the current table
//! per request to route, and updates the balancing fields (outstanding requests, latency
//! EWMA, consecutive failures and ejection). Lifecycle and ejection state sit behind small
//! per-replica mutexes held only for a copy; hot counters are atomics.
//!
//! `balance` picks a replica for a request; `admission` is each model's concurrency limit;
//! [`Routes`] holds the current table (read lock-free, replaced whole by a reload, which
//! carries over every model and replica it keeps, with their counters and processes).

pub mod admission;
pub mod balance;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::Uri;
use serde::Serialize;

use crate::api::types::models::ModelCard;
use crate::config::{DeviceSetting, ModelEntry, ModelKind, ModelsFile};
use admission::ModelLimiter;

/// Lines of engine output kept per replica for `/ready` and `/system/info`.
pub const LOG_TAIL_LINES: usize = 50;

/// Lifecycle of one replica as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Spawned (or probing a remote), not yet answering a forward pass.
    Starting,
    Ready,
    /// Was ready, stopped answering its health probe.
    Unhealthy,
    /// Exited; waiting for the backoff before the next start.
    Restarting,
    /// Gave up: crash loop, load failure past the limit, or a refused plan.
    Failed,
    /// Taken out of routing by the supervisor (a rolling restart, or a reload that removes
    /// it); finishing its requests before it is stopped.
    Draining,
    /// Stopped by the supervisor (shutdown, or removed by a reload).
    Stopped,
}

/// Mutable lifecycle facts of a replica (copied out for reports).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaLife {
    pub state: ReplicaState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_error: Option<String>,
    /// The engine's own `/v1/models` card, fetched when it became ready.
    #[serde(skip)]
    pub card: Option<ModelCard>,
}

/// Ejection bookkeeping (outlier detection) of a replica.
#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// One backend of a model: a local engine process or a remote server.
#[derive(Debug)]
pub struct Replica {
    pub model: Arc<str>,
    pub index: usize,
    /// `http://host:port` without a trailing slash.
    pub base_url: String,
    /// `base_url` parsed once, when it is a bare origin (no path prefix), so a proxied
    /// request's URI is assembled from parts instead of formatted and parsed again.
    origin: Option<(Scheme, Authority)>,
    pub port: Option<u16>,
    /// `cpu`, `cuda:0,1` or `remote`.
    pub device: String,
    pub remote: bool,
    ready: AtomicBool,
    /// Set by [`Replica::drain`]: the replica stays out of routing whatever its probes say.
    draining: AtomicBool,
    pub outstanding: AtomicUsize,
    /// Latency EWMA in microseconds (0 = no sample yet).
    ewma_us: AtomicU64,
    life: Mutex<ReplicaLife>,
    health: Mutex<Health>,
    tail: Mutex<VecDeque<String>>,
}

/// Scheme and authority of a base URL that has no path after them.
fn origin(base_url: &str) -> Option<(Scheme, Authority)> {
    let parts = Uri::try_from(base_url).ok()?.into_parts();
    let bare = parts
        .path_and_query
        .as_ref()
        .is_none_or(|p| p.as_str() == "/");
    // `Uri` adds no "/" for `http://h:1`, but `http://h:1?q` or a fragment would not be bare.
    (bare && !base_url.contains(['?', '#'])).then_some((parts.scheme?, parts.authority?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves plain data; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Consecutive transport failures that eject a replica.
pub const EJECT_AFTER_FAILURES: u32 = 3;
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);
/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl Replica {
    pub fn new(
        model: &str,
        index: usize,
        base_url: String,
        port: Option<u16>,
        device: String,
    ) -> Self {
        let remote = port.is_none();
        let base_url = base_url.trim_end_matches('/').to_string();
        Replica {
            model: model.into(),
            index,
            origin: origin(&base_url),
            base_url,
            port,
            device,
            remote,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            ewma_us: AtomicU64::new(0),
            life: Mutex::new(ReplicaLife {
                state: ReplicaState::Starting,
                pid: None,
                restarts: 0,
                last_error: None,
                card: None,
            }),
            health: Mutex::new(Health::default()),
            tail: Mutex::new(VecDeque::new()),
        }
    }

    /// The URI of a request for `path_and_query` (as the client sent it) on this replica.
    pub fn uri_for(&self, path_and_query: &PathAndQuery) -> Result<Uri, axum::http::Error> {
        match &self.origin {
            Some((scheme, authority)) => Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(path_and_query.clone())
                .build(),
            None => Ok(Uri::try_from(format!("{}{path_and_query}", self.base_url))?),
        }
    }

    /// True when the replica answers requests (ready, whatever its ejection).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn life(&self) -> ReplicaLife {
        lock(&self.life).clone()
    }

    pub fn state(&self) -> ReplicaState {
        lock(&self.life).state
    }

    /// Sets the lifecycle state (and the fast `ready` flag). While the replica drains, a
    /// probe that finds it ready leaves it `draining`.
    pub fn set_state(&self, state: ReplicaState) {
        let mut l = lock(&self.life);
        let state = match state {
            ReplicaState::Ready if self.draining.load(Ordering::Acquire) => ReplicaState::Draining,
            s => s,
        };
        l.state = state;
        self.ready
            .store(state == ReplicaState::Ready, Ordering::Release);
        if state == ReplicaState::Ready {
            // A fresh start forgets old transport failures.
            *lock(&self.health) = Health::default();
        }
    }

    /// Takes the replica out of routing until [`Replica::undrain`]; requests already on it
    /// finish (see `outstanding`).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let mut l = lock(&self.life);
        if l.state == ReplicaState::Ready {
            l.state = ReplicaState::Draining;
        }
        self.ready.store(false, Ordering::Release);
    }

    /// Lets a drained replica route again once it is ready (a restart of it begins).
    pub fn undrain(&self) {
        self.draining.store(false, Ordering::Release);
    }

    /// Waits until no request is on the replica, at most `limit`; false when some still are.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.outstanding.load(Ordering::Acquire) > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn update(&self, f: impl FnOnce(&mut ReplicaLife)) {
        f(&mut lock(&self.life));
    }

    /// Appends one output line of the engine to the tail.
    pub fn push_log(&self, line: String) {
        let mut t = lock(&self.tail);
        if t.len() == LOG_TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let t = lock(&self.tail);
        t.iter().skip(t.len().saturating_sub(n)).cloned().collect()
    }

    /// The most telling recent line: the last one that mentions an error, else the last.
    pub fn last_error_line(&self) -> Option<String> {
        let t = lock(&self.tail);
        t.iter()
            .rev()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("panic")
            })
            .or_else(|| t.back())
            .cloned()
    }

    /// True while an ejection is in force.
    pub fn is_ejected(&self, now: Instant) -> bool {
        lock(&self.health).ejected_until.is_some_and(|t| t > now)
    }

    /// Records a successful exchange and its latency.
    pub fn record_success(&self, latency: Duration) {
        {
            let mut h = lock(&self.health);
            h.consecutive_failures = 0;
            h.ejections = 0;
        }
        let sample = latency.as_micros().min(u64::MAX as u128) as f64;
        let old = self.ewma_us.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 {
            sample
        } else {
            old + EWMA_ALPHA * (sample - old)
        };
        self.ewma_us.store(new.max(1.0) as u64, Ordering::Relaxed);
    }

    /// Latency EWMA in microseconds (0 before the first sample).
    pub fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// Records a transport failure; returns true when it ejected the replica. `others` says
    /// whether another replica of the model is healthy (the last one is never ejected).
    pub fn record_failure(&self, now: Instant, others_healthy: bool) -> bool {
        let mut h = lock(&self.health);
        h.consecutive_failures += 1;
        if h.consecutive_failures < EJECT_AFTER_FAILURES || !others_healthy {
            return false;
        }
        if h.ejected_until.is_some_and(|t| t > now) {
            return false;
        }
        let factor = 1u32 << h.ejections.min(5);
        let span = (EJECT_BASE * factor).min(EJECT_MAX);
        h.ejections += 1;
        h.consecutive_failures = 0;
        h.ejected_until = Some(now + span);
        true
    }
}

/// One served model and its replicas.
#[derive(Debug)]
pub struct ModelBackend {
    pub id: Arc<str>,
    pub kind: ModelKind,
    pub entry: ModelEntry,
    pub replicas: Vec<Arc<Replica>>,
    /// Round-robin cursor.
    pub cursor: AtomicUsize,
    /// `Authorization` sent to remote replicas (from `upstream_api_key_file`; sensitive).
    pub upstream_auth: Option<axum::http::HeaderValue>,
    /// `max_concurrent_requests` admission (none when unset).
    pub limiter: Option<Arc<ModelLimiter>>,
}

/// The aggregate state of a model shown in `/ready` and `/v1/models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Loading,
    Ready,
    Degraded,
    /// No replica serves and at least one is being restarted after a crash or a hang.
    Restarting,
    Failed,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Degraded => "degraded",
            ModelState::Restarting => "restarting",
            ModelState::Failed => "failed",
        }
    }
}

impl ModelBackend {
    pub fn replicas_ready(&self) -> usize {
        self.replicas.iter().filter(|r| r.is_ready()).count()
    }

    /// ready = every replica ready; degraded = some; failed = every replica gave up;
    /// restarting = none serves and one is unhealthy, waiting to restart, or starting again
    /// after a crash; loading otherwise (first start).
    pub fn state(&self) -> ModelState {
        let ready = self.replicas_ready();
        if ready == self.replicas.len() {
            ModelState::Ready
        } else if ready > 0 {
            ModelState::Degraded
        } else if self
            .replicas
            .iter()
            .all(|r| r.state() == ReplicaState::Failed)
        {
            ModelState::Failed
        } else if self.replicas.iter().any(|r| {
            let life = r.life();
            matches!(
                life.state,
                ReplicaState::Unhealthy | ReplicaState::Restarting | ReplicaState::Draining
            ) || (life.state == ReplicaState::Starting && life.restarts > 0)
        }) {
            ModelState::Restarting
        } else {
            ModelState::Loading
        }
    }

    /// The newest error among the replicas.
    pub fn last_error(&self) -> Option<String> {
        self.replicas.iter().rev().find_map(|r| r.life().last_error)
    }

    /// The engine's own card (from any replica that reported one).
    pub fn engine_card(&self) -> Option<ModelCard> {
        self.replicas.iter().find_map(|r| r.life().card)
    }
}

/// Every served model, looked up by id or alias.
#[derive(Debug)]
pub struct Backends {
    pub models: Vec<Arc<ModelBackend>>,
    by_name: HashMap<String, usize>,
    /// The per-boot token local engines require (`engine::access`); never sent to a
    /// remote upstream.
    pub engine_token: Option<axum::http::HeaderValue>,
}

/// Where the supervisor puts a local replica.
pub type PortFor<'a> = dyn Fn(&str, usize) -> u16 + 'a;

/// The device string of a local entry.
pub fn device_of(entry: &ModelEntry) -> String {
    let gpus = effective_gpus(entry);
    if gpus.is_empty() {
        "cpu".into()
    } else {
        format!(
            "cuda:{}",
            gpus.iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// The GPUs an entry runs on: its `gpus`, or GPU 0 for `device: cuda` without a list.
pub fn effective_gpus(entry: &ModelEntry) -> Vec<usize> {
    match entry.device {
        DeviceSetting::Cpu => Vec::new(),
        // A tensor-parallel model takes one GPU per rank.
        DeviceSetting::Cuda if entry.gpus.is_empty() => {
            (0..entry.tensor_parallel_size.unwrap_or(1).max(1)).collect()
        }
        _ => entry.gpus.clone(),
    }
}

/// `Bearer <key>` from a key file (first non-empty line), marked sensitive; `None` (logged)
/// when the file cannot be read or holds no key.
fn upstream_auth(file: &std::path::Path) -> Option<axum::http::HeaderValue> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read upstream_api_key_file");
            return None;
        }
    };
    let key = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut v = axum::http::HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Strips a trailing `/` and `/v1` from an upstream URL (paths are appended as received).
pub fn upstream_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

/// Replicas of an entry: one per upstream URL, else `replicas` (at least one).
fn replica_count(entry: &ModelEntry) -> usize {
    match &entry.upstream {
        Some(urls) => urls.0.len(),
        None => entry.replicas.max(1),
    }
}

/// Replica `r` of an entry: the `r`th upstream URL, or a local engine on `port_for(id, r)`.
fn new_replica(
    id: &str,
    entry: &ModelEntry,
    r: usize,
    host: &str,
    port_for: &PortFor<'_>,
) -> Arc<Replica> {
    Arc::new(match &entry.upstream {
        Some(urls) => Replica::new(id, r, upstream_base(&urls.0[r]), None, "remote".into()),
        None => {
            let port = port_for(id, r);
            Replica::new(
                id,
                r,
                format!("http://{host}:{port}"),
                Some(port),
                device_of(entry),
            )
        }
    })
}

impl ModelBackend {
    fn new(
        id: &str,
        entry: &ModelEntry,
        replicas: Vec<Arc<Replica>>,
        limiter: Option<Arc<ModelLimiter>>,
    ) -> Self {
        let limiter = limiter.or_else(|| {
            let max = entry.max_concurrent_requests?;
            Some(Arc::new(ModelLimiter::new(max, max)))
        });
        ModelBackend {
            id: id.into(),
            kind: entry.kind,
            entry: entry.clone(),
            replicas,
            cursor: AtomicUsize::new(0),
            upstream_auth: entry
                .upstream_api_key_file
                .as_deref()
                .and_then(upstream_auth),
            limiter,
        }
    }
}

/// What a reload does, model by model, and the replicas it stops and starts.
#[derive(Debug, Default, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Restarted with the new entry (every replica is new).
    pub changed: Vec<String>,
    /// Only `replicas` or `upstream` changed: the replicas both versions have keep serving.
    pub resized: Vec<String>,
    pub unchanged: Vec<String>,
    /// Replicas leaving the table: drained, then stopped.
    #[serde(skip)]
    pub stop: Vec<Arc<Replica>>,
    /// New replicas to start, with the model they belong to in the new table.
    #[serde(skip)]
    pub start: Vec<(Arc<ModelBackend>, Arc<Replica>)>,
}

impl Changes {
    fn start_all(&mut self, m: &Arc<ModelBackend>) {
        self.start
            .extend(m.replicas.iter().map(|r| (m.clone(), r.clone())));
    }

    /// True when the reload touches nothing.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty() && self.resized.is_empty()
    }
}

/// The current routing table, read without a lock on every request and replaced whole by
/// a reload (readers that already hold the old table finish with it).
#[derive(Debug)]
pub struct Routes(arc_swap::ArcSwap<Backends>);

impl Routes {
    pub fn new(table: Backends) -> Self {
        Routes(arc_swap::ArcSwap::from_pointee(table))
    }

    /// The current table, for the length of a request or a scrape.
    pub fn load(&self) -> arc_swap::Guard<Arc<Backends>> {
        self.0.load()
    }

    /// The current table, owned (to hold across awaits).
    pub fn current(&self) -> Arc<Backends> {
        self.0.load_full()
    }

    /// Makes `table` the current one.
    pub fn store(&self, table: Backends) {
        self.0.store(Arc::new(table));
    }
}

impl Backends {
    /// The header value local replicas get for `token` (marked sensitive: never printed).
    pub fn token_header(token: &str) -> Option<axum::http::HeaderValue> {
        let mut v = axum::http::HeaderValue::from_str(token).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Builds the table; `port_for(id, replica)` gives each local replica's port.
    pub fn new(file: &ModelsFile, host: &str, port_for: &PortFor<'_>) -> Backends {
        let models = file
            .models
            .iter()
            .map(|(id, entry)| {
                let replicas = (0..replica_count(entry))
                    .map(|r| new_replica(id, entry, r, host, port_for))
                    .collect();
                Arc::new(ModelBackend::new(id, entry, replicas, None))
            })
            .collect();
        Backends::index(models, None)
    }

    /// The table for an edited models file, built from this one: a model whose entry is
    /// unchanged is carried over as it is (replicas, counters, processes); a model whose
    /// entry differs only in `replicas` or `upstream` keeps the replicas both versions have
    /// (same index, and for a remote the same URL); anything else about a model is a new
    /// model with new replicas. [`Changes`] says what to stop and what to start.
    pub fn reload(
        &self,
        file: &ModelsFile,
        host: &str,
        port_for: &PortFor<'_>,
    ) -> (Backends, Changes) {
        let mut changes = Changes::default();
        let mut models = Vec::new();
        for (id, entry) in &file.models {
            let old = self.models.iter().find(|m| &*m.id == id.as_str());
            let Some(old) = old else {
                let replicas: Vec<_> = (0..replica_count(entry))
                    .map(|r| new_replica(id, entry, r, host, port_for))
                    .collect();
                let m = Arc::new(ModelBackend::new(id, entry, replicas, None));
                changes.start_all(&m);
                changes.added.push(id.clone());
                models.push(m);
                continue;
            };
            if old.entry == *entry {
                changes.unchanged.push(id.clone());
                models.push(old.clone());
                continue;
            }
            let mut same_but_size = entry.clone();
            same_but_size.replicas = old.entry.replicas;
            same_but_size.upstream = old.entry.upstream.clone();
            if same_but_size != old.entry
                || entry.upstream.is_some() != old.entry.upstream.is_some()
            {
                let replicas: Vec<_> = (0..replica_count(entry))
                    .map(|r| new_replica(id, entry, r, host, port_for))
                    .collect();
                let m = Arc::new(ModelBackend::new(id, entry, replicas, None));
                changes.stop.extend(old.replicas.iter().cloned());
                changes.start_all(&m);
                changes.changed.push(id.clone());
                models.push(m);
                continue;
            }
            // Resized: keep what both versions have, stop the rest, start the new ones.
            let mut replicas = Vec::new();
            let mut fresh = Vec::new();
            for r in 0..replica_count(entry) {
                let kept = old.replicas.get(r).filter(|o| match &entry.upstream {
                    Some(urls) => o.base_url == upstream_base(&urls.0[r]),
                    None => true,
                });
                match kept {
                    Some(o) => replicas.push(o.clone()),
                    None => {
                        let n = new_replica(id, entry, r, host, port_for);
                        fresh.push(n.clone());
                        replicas.push(n);
                    }
                }
            }
            changes.stop.extend(
                old.replicas
                    .iter()
                    .filter(|o| !replicas.iter().any(|r| Arc::ptr_eq(r, o)))
                    .cloned(),
            );
            let m = Arc::new(ModelBackend::new(id, entry, replicas, old.limiter.clone()));
            changes
                .start
                .extend(fresh.into_iter().map(|r| (m.clone(), r)));
            changes.resized.push(id.clone());
            models.push(m);
        }
        for old in &self.models {
            if !file.models.contains_key(&*old.id) {
                changes.stop.extend(old.replicas.iter().cloned());
                changes.removed.push(old.id.to_string());
            }
        }
        (Backends::index(models, self.engine_token.clone()), changes)
    }

    /// The lookup by id, alias and display name over `models`.
    fn index(
        models: Vec<Arc<ModelBackend>>,
        engine_token: Option<axum::http::HeaderValue>,
    ) -> Backends {
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.id.to_string(), i);
            for a in &m.entry.aliases {
                by_name.insert(a.clone(), i);
            }
        }
        // A model's display `name` routes too (the seed's commands call the chat model by its
        // name), unless an id or alias already means something else or two models share it.
        let mut names: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            if let Some(n) = m.entry.name.as_deref() {
                names.entry(n).or_default().push(i);
            }
        }
        for (n, at) in names {
            if at.len() == 1 && !by_name.contains_key(n) {
                by_name.insert(n.to_string(), at[0]);
            }
        }
        Backends {
            models,
            by_name,
            engine_token,
        }
    }

    /// The model with this id or alias.
    pub fn find(&self, name: &str) -> Option<&Arc<ModelBackend>> {
        self.by_name.get(name).map(|&i| &self.models[i])
    }

    /// The only model of a kind (`None` = any kind), if there is exactly one.
    pub fn sole(&self, kind: Option<ModelKind>) -> Option<&Arc<ModelBackend>> {
        let mut it = self
            .models
            .iter()
            .filter(|m| kind.is_none_or(|k| m.kind == k));
        match (it.next(), it.next()) {
            (Some(m), None) => Some(m),
            _ => None,
        }
    }

    /// Every replica of every model.
    pub fn replicas(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.models.iter().flat_map(|m| m.replicas.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Replica {
        Replica::new("m", 0, "http://127.0.0.1:1/".into(), Some(1), "cpu".into())
    }

    #[test]
    fn request_uris_keep_the_path_and_query_and_any_base_prefix() {
        let pq = PathAndQuery::from_static("/v1/embeddings?x=1");
        assert_eq!(
            replica().uri_for(&pq).unwrap(),
            "http://127.0.0.1:1/v1/embeddings?x=1"
        );
        let prefixed = Replica::new("m", 0, "https://h:8443/api".into(), None, "remote".into());
        assert_eq!(
            prefixed.uri_for(&pq).unwrap(),
            "https://h:8443/api/v1/embeddings?x=1"
        );
        let bad = Replica::new("m", 0, "not a url".into(), None, "remote".into());
        assert!(bad.uri_for(&pq).is_err());
    }

    #[test]
    fn ejection_needs_consecutive_failures_and_another_healthy_replica() {
        let r = replica();
        let now = Instant::now();
        assert!(!r.record_failure(now, true));
        assert!(!r.record_failure(now, true));
        // The third failure ejects, but not when it is the last healthy replica.
        assert!(!r.record_failure(now, false));
        assert!(!r.is_ejected(now));
        assert!(r.record_failure(now, true));
        assert!(r.is_ejected(now));
        assert!(!r.is_ejected(now + Duration::from_millis(1001)));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let r = replica();
        let mut now = Instant::now();
        let mut spans = Vec::new();
        for _ in 0..8 {
            for _ in 0..EJECT_AFTER_FAILURES {
                r.record_failure(now, true);
            }
            let until = lock(&r.health).ejected_until.unwrap();
            spans.push(until - now);
            now = until + Duration::from_millis(1);
        }
        assert_eq!(spans[0], Duration::from_secs(1));
        assert_eq!(spans[1], Duration::from_secs(2));
        assert_eq!(spans[2], Duration::from_secs(4));
        assert_eq!(*spans.last().unwrap(), EJECT_MAX);
        // A success forgets the history.
        r.record_success(Duration::from_millis(1));
        for _ in 0..EJECT_AFTER_FAILURES {
            r.record_failure(now, true);
        }
        assert_eq!(lock(&r.health).ejected_until.unwrap() - now, EJECT_BASE);
    }

    #[test]
    fn names_route_unless_taken_or_shared() {
        let file = ModelsFile::parse(
            r#"{"models": {
              "chat": {"path": "/x", "type": "chat", "port": 9000, "name": "Qwen2.5-32B-Instruct"},
              "emb": {"path": "/y", "type": "embedding", "port": 9001, "name": "bge-m3", "aliases": ["e"]},
              "rr": {"path": "/y", "type": "rerank", "port": 9002, "name": "bge-m3"},
              "x": {"path": "/z", "type": "chat", "port": 9003, "name": "e"}}}"#,
            Default::default(),
        )
        .unwrap();
        let b = Backends::new(&file, "127.0.0.1", &|_, _| 9000);
        assert_eq!(&*b.find("Qwen2.5-32B-Instruct").unwrap().id, "chat");
        assert!(
            b.find("bge-m3").is_none(),
            "two models share the name: route by id"
        );
        assert_eq!(
            &*b.find("e").unwrap().id,
            "emb",
            "an alias wins over another model's name"
        );
    }

    #[test]
    fn ewma_moves_toward_samples() {
        let r = replica();
        r.record_success(Duration::from_millis(10));
        assert_eq!(r.ewma_us(), 10_000);
        r.record_success(Duration::from_millis(20));
        assert_eq!(r.ewma_us(), 13_000);
    }

    #[test]
    fn model_state_from_replicas_and_last_error_line() {
        let file = ModelsFile::parse(
            r#"{"models": {"e": {"path": "/x", "type": "embedding", "port": 9000, "replicas": 2, "aliases": ["a"]}}}"#,
            Default::default(),
        )
        .unwrap();
        let b = Backends::new(&file, "127.0.0.1", &|_, r| 9000 + r as u16);
        let m = b.find("a").unwrap();
        assert_eq!(m.replicas[1].base_url, "http://127.0.0.1:9001");
        assert_eq!(m.state(), ModelState::Loading);
        m.replicas[0].set_state(ReplicaState::Ready);
        assert_eq!(m.state(), ModelState::Degraded);
        m.replicas[1].set_state(ReplicaState::Ready);
        assert_eq!(m.state(), ModelState::Ready);
        for r in &m.replicas {
            r.set_state(ReplicaState::Failed);
        }
        assert_eq!(m.state(), ModelState::Failed);
        let r = &m.replicas[0];
        r.push_log("ERROR cannot open weights".into());
        r.push_log("exiting".into());
        assert_eq!(r.last_error_line().unwrap(), "ERROR cannot open weights");
        assert_eq!(upstream_base("http://h:1/v1/"), "http://h:1");
    }

    #[test]
    fn reload_keeps_what_did_not_change() {
        let parse = |t: &str| ModelsFile::parse(t, Default::default()).unwrap();
        let old = Backends::new(
            &parse(
                r#"{"models": {
                  "same": {"path": "/x", "type": "embedding", "port": 9000},
                  "grow": {"path": "/x", "type": "chat", "port": 9010, "max_concurrent_requests": 4},
                  "edit": {"path": "/x", "type": "chat", "port": 9020},
                  "gone": {"path": "/x", "type": "rerank", "port": 9030},
                  "far": {"type": "chat", "upstream": ["http://a:1", "http://b:1"]}}}"#,
            ),
            "127.0.0.1",
            &|_, r| 9000 + r as u16,
        );
        let (new, changes) = old.reload(
            &parse(
                r#"{"models": {
                  "same": {"path": "/x", "type": "embedding", "port": 9000},
                  "grow": {"path": "/x", "type": "chat", "port": 9010, "max_concurrent_requests": 4, "replicas": 2},
                  "edit": {"path": "/x", "type": "chat", "port": 9020, "max_model_len": 64},
                  "fresh": {"path": "/x", "type": "embedding", "port": 9040},
                  "far": {"type": "chat", "upstream": ["http://a:1", "http://c:1"]}}}"#,
            ),
            "127.0.0.1",
            &|_, r| 9100 + r as u16,
        );
        assert_eq!(changes.unchanged, ["same"]);
        assert_eq!(changes.resized, ["far", "grow"]);
        assert_eq!(changes.changed, ["edit"]);
        assert_eq!(changes.added, ["fresh"]);
        assert_eq!(changes.removed, ["gone"]);
        let (o, n) = (
            |id| old.find(id).unwrap().clone(),
            |id| new.find(id).unwrap().clone(),
        );
        assert!(
            Arc::ptr_eq(&o("same"), &n("same")),
            "unchanged: the same model"
        );
        // Resized: replica 0 and the limiter carry over, replica 1 is new.
        assert!(Arc::ptr_eq(&o("grow").replicas[0], &n("grow").replicas[0]));
        assert!(Arc::ptr_eq(
            o("grow").limiter.as_ref().unwrap(),
            n("grow").limiter.as_ref().unwrap()
        ));
        assert_eq!(n("grow").replicas[1].port, Some(9101));
        // A remote keeps the replica whose URL stayed at its place.
        assert!(Arc::ptr_eq(&o("far").replicas[0], &n("far").replicas[0]));
        assert_eq!(n("far").replicas[1].base_url, "http://c:1");
        let stopped: Vec<String> = changes
            .stop
            .iter()
            .map(|r| format!("{}#{}", r.model, r.index))
            .collect();
        assert_eq!(stopped, ["edit#0", "far#1", "gone#0"]);
        let started: Vec<String> = changes
            .start
            .iter()
            .map(|(m, r)| format!("{}#{}", m.id, r.index))
            .collect();
        assert_eq!(started, ["edit#0", "far#1", "fresh#0", "grow#1"]);
        assert!(new.find("gone").is_none());
        // The same file again: nothing to do.
        let same = parse(
            &serde_json::to_string(&ModelsFile {
                models: new
                    .models
                    .iter()
                    .map(|m| (m.id.to_string(), m.entry.clone()))
                    .collect(),
            })
            .unwrap(),
        );
        assert!(new.reload(&same, "127.0.0.1", &|_, _| 1).1.is_empty());
    }

    #[test]
    fn a_draining_replica_stays_out_of_routing() {
        let r = replica();
        r.set_state(ReplicaState::Ready);
        r.drain();
        assert!(!r.is_ready());
        // A probe that finds the engine answering does not put it back.
        r.set_state(ReplicaState::Ready);
        assert_eq!((r.is_ready(), r.state()), (false, ReplicaState::Draining));
        r.undrain();
        r.set_state(ReplicaState::Ready);
        assert!(r.is_ready());
    }
}
