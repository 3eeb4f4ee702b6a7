//! The supervisor's running side: one task per replica, and the operator's commands on a
//! running appliance.
//!
//! * **Reload** (`trident reload`, SIGHUP, `POST /admin/reload`): the edited models file is
//!   checked like at start (paths, role, GPU plan, ports) and refused whole, naming every
//!   problem, if anything is wrong — nothing changes then. Otherwise the routing table is
//!   rebuilt from the current one (`routing::Backends::reload`): unchanged models keep their
//!   engines untouched; a model whose `replicas` or `upstream` list changed keeps the
//!   replicas both versions have; a changed model restarts with the new entry; a removed
//!   model leaves routing at once. The new table is published first, then leaving replicas
//!   are drained (their requests finish, up to `drain_timeout_secs`) and stopped, then the
//!   new ones start. The gateway's pinned listeners (`model_ports`) follow the file: new
//!   ports are bound before anything changes (a taken one refuses the reload), a port whose
//!   model left closes, a port that now belongs to another model is pinned to it.
//! * **Rolling restart** (`trident restart MODEL`, `POST /admin/restart/{model}`): one
//!   replica at a time is drained, stopped, started again and waited for until it is
//!   ready, so a model with several replicas never stops serving. A replica that does not
//!   come back stops the restart there (the others keep running).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine_task::{engine_task, upstream_task, EngineTask, LivenessPolicy};
use super::ports::PortPlan;
use super::spawn::EngineCommand;
use super::{bind_pinned, gpu, preflight, EnginePorts, ServeOptions};
use crate::api::ApiError;
use crate::config::{CheckOptions, ModelsFile, Problem};
use crate::gateway::admin::{Command, Reply};
use crate::gateway::GatewayState;
use crate::routing::{effective_gpus, ModelBackend, Replica, ReplicaState};

/// A replica's task and the token that stops it.
struct Running {
    replica: Arc<Replica>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Every replica task of the appliance, and what it takes to start more.
pub struct Supervisor {
    opts: ServeOptions,
    state: GatewayState,
    cmd: Arc<EngineCommand>,
    /// Parent of every replica's token (shutdown cancels it).
    stop: CancellationToken,
    running: Vec<Running>,
}

impl Supervisor {
    pub fn new(opts: ServeOptions, state: GatewayState, cmd: Arc<EngineCommand>) -> Self {
        Supervisor {
            opts,
            state,
            cmd,
            stop: CancellationToken::new(),
            running: Vec::new(),
        }
    }

    /// Starts every replica of the current table: smallest models first, and models
    /// sharing a GPU one after another so each sees the memory left to it.
    pub fn start_all(&mut self, file: &ModelsFile) {
        let table = self.state.routes.current();
        let mut on_gpu: HashMap<usize, Vec<Arc<Replica>>> = HashMap::new();
        for id in preflight::start_order(file) {
            let Some(model) = table.find(&id).cloned() else {
                continue;
            };
            for replica in &model.replicas {
                let after = self.gpu_queue(&model, replica, &mut on_gpu);
                self.start(&model, replica, after);
            }
        }
    }

    /// The replicas already placed on `replica`'s GPUs (it must start after them); records it.
    fn gpu_queue(
        &self,
        model: &ModelBackend,
        replica: &Arc<Replica>,
        on_gpu: &mut HashMap<usize, Vec<Arc<Replica>>>,
    ) -> Vec<Arc<Replica>> {
        if model.entry.upstream.is_some() {
            return Vec::new();
        }
        let gpus = effective_gpus(&model.entry);
        let after: Vec<_> = gpus
            .iter()
            .flat_map(|g| on_gpu.get(g).cloned().unwrap_or_default())
            .collect();
        for g in &gpus {
            on_gpu.entry(*g).or_default().push(replica.clone());
        }
        after
    }

    /// Spawns the task of one replica (an engine process, or the probe loop of a remote).
    fn start(
        &mut self,
        model: &Arc<ModelBackend>,
        replica: &Arc<Replica>,
        after: Vec<Arc<Replica>>,
    ) {
        let cancel = self.stop.child_token();
        replica.undrain();
        let handle = if model.entry.upstream.is_some() {
            tokio::spawn(upstream_task(
                self.state.client.clone(),
                model.clone(),
                replica.clone(),
                cancel.clone(),
            ))
        } else {
            let s = &self.opts.settings;
            let task = EngineTask {
                cmd: self.cmd.clone(),
                model: model.clone(),
                replica: replica.clone(),
                client: self.state.client.clone(),
                metrics: self.state.metrics.clone(),
                policy: self.opts.restart,
                startup_timeout: Duration::from_secs(s.startup_timeout_secs),
                stop_grace: self.opts.engine_stop_grace,
                liveness: LivenessPolicy::from_settings(s),
                token: self.state.routes.load().engine_token.clone(),
                start_after: after,
            };
            tokio::spawn(engine_task(task, cancel.clone()))
        };
        self.running.push(Running {
            replica: replica.clone(),
            cancel,
            handle,
        });
    }

    /// Drains `replicas` (out of routing; their requests get `drain_timeout_secs` to
    /// finish), then stops their tasks, all at once.
    async fn stop(&mut self, replicas: &[Arc<Replica>]) {
        let drain = Duration::from_secs(self.opts.settings.drain_timeout_secs);
        let (leaving, staying): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| replicas.iter().any(|x| Arc::ptr_eq(x, &r.replica)));
        self.running = staying;
        futures::future::join_all(leaving.into_iter().map(|r| async move {
            r.replica.drain();
            if !r.replica.wait_idle(drain).await {
                tracing::warn!(model = %r.replica.model, replica = r.replica.index, "drain timeout; stopping with requests in flight");
            }
            r.cancel.cancel();
            let _ = r.handle.await;
        }))
        .await;
    }

    /// Stops every task (engines get SIGTERM, then SIGKILL after the grace).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for r in self.running.drain(..) {
            let _ = r.handle.await;
        }
    }

    /// Runs one operator command to its end.
    pub async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Reload(reply) => {
                let r = self.reload().await;
                log_outcome("reload", &r);
                let _ = reply.send(r);
            }
            Command::Restart { model, reply } => {
                let r = self.restart(&model).await;
                log_outcome("rolling restart", &r);
                let _ = reply.send(r);
            }
        }
    }

    /// Applies the models file as it is now on disk (module docs).
    pub async fn reload(&mut self) -> Reply {
        let path = &self.opts.models_file;
        let file = ModelsFile::load(path, CheckOptions { check_paths: true })
            .map_err(|e| refused(e.problems))?;
        let mut problems = self.opts.role.check(&file);
        problems.extend(gpu::check_plan(&file, &gpu::detect()));
        problems.extend(gpu::check_splits(&file));
        if !problems.is_empty() {
            return Err(refused(problems));
        }
        let scheme = PortPlan::new(&self.opts.settings);
        let pinned = scheme.listeners(&file).map_err(refused)?;
        let current = self.state.routes.current();
        let mut ports = HashMap::new();
        if self.opts.engine_ports == EnginePorts::Ephemeral {
            for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
                for r in 0..e.replicas.max(1) {
                    let p = preflight::free_port().map_err(|e| {
                        ApiError::unavailable(format!("no free port for an engine: {e}"))
                    })?;
                    ports.insert((id.clone(), r), p);
                }
            }
        }
        let port_for = |id: &str, r: usize| -> u16 {
            ports.get(&(id.to_string(), r)).copied().unwrap_or_else(|| {
                file.models
                    .get(id)
                    .and_then(|e| scheme.engine_port(e, r))
                    .unwrap_or(0)
            })
        };
        let (table, changes) = current.reload(&file, "127.0.0.1", &port_for);
        // A new engine's port must be free, or be one a leaving engine gives back.
        let freed: HashSet<u16> = changes.stop.iter().filter_map(|r| r.port).collect();
        let taken: Vec<Problem> = changes
            .start
            .iter()
            .filter_map(|(m, r)| {
                let port = r.port?;
                if freed.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                {
                    return None;
                }
                Some(Problem {
                    path: format!("models.{}.port", m.id),
                    message: format!(
                        "port {port} (model {:?}, replica {}) is in use by another program",
                        m.id, r.index
                    ),
                })
            })
            .collect();
        if !taken.is_empty() {
            return Err(refused(taken));
        }
        // New model ports are bound now, so a taken one refuses the reload with nothing changed.
        let open = self.state.pinned.ports();
        let fresh: std::collections::BTreeMap<u16, String> = pinned
            .iter()
            .filter(|(p, _)| !open.contains_key(p))
            .map(|(p, id)| (*p, id.clone()))
            .collect();
        let fresh = bind_pinned(&self.opts.settings.host, &fresh)
            .await
            .map_err(refused)?;
        let ports_changed = !fresh.is_empty() || open != pinned;
        let report = json!({
            "object": "reload",
            "file": path.display().to_string(),
            "added": changes.added,
            "removed": changes.removed,
            "changed": changes.changed,
            "resized": changes.resized,
            "unchanged": changes.unchanged,
            "model_ports": pinned,
        });
        if changes.is_empty() && !ports_changed {
            return Ok(report);
        }
        self.state.routes.store(table);
        for (port, id) in &open {
            match pinned.get(port) {
                None => self.state.pinned.close(*port),
                Some(now) if now != id => self.state.pinned.retarget(*port, now),
                Some(_) => {}
            }
        }
        for (port, id, listener) in fresh {
            tracing::info!(port, model = %id, "gateway listening on the model's port");
            self.state.pinned.open(port, &id, listener);
        }
        self.stop(&changes.stop).await;
        let order = preflight::start_order(&file);
        let mut start = changes.start;
        start.sort_by_key(|(m, r)| (order.iter().position(|id| **id == *m.id), r.index));
        let table = self.state.routes.current();
        let mut on_gpu: HashMap<usize, Vec<Arc<Replica>>> = HashMap::new();
        for m in &table.models {
            for r in m
                .replicas
                .iter()
                .filter(|r| !start.iter().any(|(_, s)| Arc::ptr_eq(s, r)))
            {
                self.gpu_queue(m, r, &mut on_gpu);
            }
        }
        for (m, r) in &start {
            let after = self.gpu_queue(m, r, &mut on_gpu);
            self.start(m, r, after);
        }
        Ok(report)
    }

    /// Restarts a local model's replicas one at a time (module docs).
    pub async fn restart(&mut self, name: &str) -> Reply {
        let table = self.state.routes.current();
        let model = table
            .find(name)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(name))?;
        if model.entry.upstream.is_some() {
            return Err(ApiError::invalid_param(
                "model",
                format!(
                    "The model '{}' is served by a remote upstream: restart it on its own host",
                    model.id
                ),
            ));
        }
        let ready_within =
            Duration::from_secs(self.opts.settings.startup_timeout_secs) + Duration::from_secs(5);
        let mut done = Vec::new();
        for replica in &model.replicas {
            let started = Instant::now();
            self.stop(std::slice::from_ref(replica)).await;
            self.start(&model, replica, Vec::new());
            tracing::info!(model = %model.id, replica = replica.index, "rolling restart: replica restarted; waiting for it to be ready");
            if let Err(why) = wait_ready(replica, ready_within).await {
                return Err(ApiError::unavailable(format!(
                    "Replica {} of '{}' did not become ready again ({why}); the replicas after it were not restarted",
                    replica.index, model.id
                ))
                .with_code("restart_failed"));
            }
            done.push(json!({
                "replica": replica.index,
                "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            }));
        }
        Ok(json!({"object": "restart", "model": model.id.to_string(), "replicas": done}))
    }
}

/// Waits until `replica` is ready; the reason when it failed or took longer than `limit`.
async fn wait_ready(replica: &Replica, limit: Duration) -> Result<(), String> {
    let until = Instant::now() + limit;
    loop {
        match replica.state() {
            ReplicaState::Ready => return Ok(()),
            ReplicaState::Failed => {
                return Err(replica
                    .life()
                    .last_error
                    .unwrap_or_else(|| "it failed".into()))
            }
            _ if Instant::now() >= until => {
                return Err(format!("not ready within {} s", limit.as_secs()))
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// 400 naming every problem of a refused reload (nothing was changed).
fn refused(problems: Vec<Problem>) -> ApiError {
    let list: Vec<String> = problems.iter().map(|p| format!("{p}")).collect();
    ApiError::invalid(format!(
        "The models file was not applied (nothing changed): {}",
        list.join("; ")
    ))
    .with_code("invalid_models_file")
}

fn log_outcome(what: &str, r: &Reply) {
    match r {
        Ok(v) => tracing::info!(report = %v, "{what} done"),
        Err(e) => tracing::error!(error = %e.message, "{what} refused or failed"),
    }
}
