//! `trident serve` end to end: the real binary as a child process (supervisor + gateway on
//! port 0, engines on OS-picked ports), with fault-injecting mock engines
//! (`trident mock-engine`) or the real ones.

mod balance;
mod embed_routes;
mod faults;
mod inprocess;
mod limits;
mod model_ports;
mod operations;
mod real;
mod remote;
mod routing;
mod secure;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_trident");

/// The engine token test appliances use instead of a random one, so tests can also talk
/// to engines directly.
pub const ENGINE_TOKEN: &str = "test-engine-token";

/// How to start a test appliance.
#[derive(Default)]
pub struct Opts<'a> {
    /// `MOCK_ENGINE_BEHAVIOUR` JSON map (model or model/replica → spec).
    pub behaviour: Option<Value>,
    pub api_keys: &'a [&'a str],
    /// Extra environment (settings as `TRIDENT_…`).
    pub env: &'a [(&'a str, &'a str)],
    /// Use the real engines instead of the mock.
    pub real_engines: bool,
    /// Do not wait for `/ready`.
    pub no_wait: bool,
    /// Engines listen on the entries' `port`s instead of OS-picked ones.
    pub config_ports: bool,
    /// The gateway also listens on each model's `port` (`model_ports`). Off by default in
    /// tests, whose models files use made-up ports.
    pub model_ports: bool,
    /// Gateway port (default: OS-picked).
    pub gateway_port: Option<u16>,
    /// First restart delay (default 50 ms).
    pub restart_backoff_ms: Option<u64>,
    /// The supervisor's log goes to `/dev/full` (every write fails with ENOSPC).
    pub log_to_dev_full: bool,
    /// A cgroup directory (its `cgroup.procs`) the supervisor is started in, so it and its
    /// engines share the cgroup's limits, as in a container.
    pub cgroup: Option<PathBuf>,
}

/// A running `trident serve`; SIGKILLed on drop (its engines die with it).
pub struct Appliance {
    pub child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
    /// The models file it serves (tests edit it and reload).
    pub models_file: PathBuf,
}

/// A models.json whose `path`s point at an existing file (mock engines load nothing).
pub fn mock_models(dir: &Path, models: Value) -> PathBuf {
    let file = dir.join("models.json");
    let mut models = models;
    for (i, (_, e)) in models.as_object_mut().unwrap().iter_mut().enumerate() {
        let e = e.as_object_mut().unwrap();
        if !e.contains_key("upstream") {
            e.entry("path")
                .or_insert(Value::String(file.display().to_string()));
            // Ports only need to be distinct for validation; engines get OS-picked ones.
            e.entry("port")
                .or_insert(Value::from(20_000 + 10 * i as u64));
        }
    }
    std::fs::write(&file, serde_json::json!({"models": models}).to_string()).unwrap();
    file
}

impl Appliance {
    pub async fn start(models: Value, opts: Opts<'_>) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let file = if opts.real_engines {
            let f = dir.path().join("models.json");
            std::fs::write(&f, serde_json::json!({"models": models}).to_string()).unwrap();
            f
        } else {
            mock_models(dir.path(), models)
        };
        let addr_file = dir.path().join("addr");
        let log = dir.path().join("serve.log");
        let mut cmd = Command::new(EXE);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--host", "127.0.0.1", "--port"])
            .arg(opts.gateway_port.unwrap_or(0).to_string())
            .arg("--config")
            .arg(&file)
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--restart-backoff-ms")
            .arg(opts.restart_backoff_ms.unwrap_or(50).to_string())
            .args(["--engine-stop-grace-ms", "2000"])
            .env("NO_COLOR", "1")
            .env("TRIDENT_ENGINE_TOKEN", ENGINE_TOKEN)
            .env_remove("TRIDENT_API_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if opts.log_to_dev_full {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap()
            } else {
                std::fs::File::create(&log).unwrap()
            });
        if let Some(cg) = &opts.cgroup {
            use std::os::unix::process::CommandExt;
            let procs = std::ffi::CString::new(
                cg.join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .unwrap();
            // SAFETY: between fork and exec only async-signal-safe calls (open, write,
            // close) on memory prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = nix::libc::open(procs.as_ptr(), nix::libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = nix::libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    nix::libc::close(fd);
                    if ok {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        if !opts.real_engines {
            cmd.args(["--engine-subcommand", "mock-engine"]);
        }
        if !opts.config_ports {
            cmd.arg("--ephemeral-engine-ports");
        }
        for k in opts.api_keys {
            cmd.args(["--api-key", k]);
        }
        if let Some(b) = &opts.behaviour {
            cmd.env("MOCK_ENGINE_BEHAVIOUR", b.to_string());
        }
        cmd.env("TRIDENT_MODEL_PORTS", opts.model_ports.to_string());
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn trident serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "trident serve exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let app = Appliance {
            child,
            base: format!("http://{addr}"),
            _dir: dir,
            log,
            models_file: file,
        };
        if !opts.no_wait {
            app.wait_ready(Duration::from_secs(if opts.real_engines {
                180
            } else {
                20
            }))
            .await;
        }
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/ready` until 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        // Stops early when a model failed: waiting longer would not help.
        let last = poll(timeout, || async {
            let r = client().get(self.url("/ready")).send().await.ok()?;
            let ok = r.status() == 200;
            let body: Value = r.json().await.ok()?;
            let failed = body["models"]
                .as_object()
                .is_some_and(|m| m.values().any(|v| v["state"] == "failed"));
            (ok || failed).then_some(ok)
        })
        .await
        .filter(|ok| *ok);
        if last.is_none() {
            let ready = get_json(self, "/ready", None).await;
            panic!(
                "not ready after {timeout:?}: {ready}\nlog:\n{}",
                self.log_text()
            );
        }
    }

    /// Waits until every replica of every model serves. `/ready` is already 200 when one
    /// replica of each model does; tests that count traffic per replica need them all.
    pub async fn wait_every_replica(&self) {
        let all = poll(Duration::from_secs(20), || async {
            let body: Value = client()
                .get(self.url("/ready"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["models"]
                .as_object()?
                .values()
                .all(|m| m["replicas_ready"] == m["replicas"])
                .then_some(())
        })
        .await;
        assert!(all.is_some(), "not every replica became ready");
    }

    /// `/system/info` engines of `model`.
    pub async fn engines(&self, model: &str, key: Option<&str>) -> Vec<Value> {
        let info = get_json(self, "/system/info", key).await;
        info["engines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["model"] == model)
            .cloned()
            .collect()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn client() -> reqwest::Client {
    crate::common::client()
}

pub async fn get_json(app: &Appliance, path: &str, key: Option<&str>) -> Value {
    let mut rb = client().get(app.url(path));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    // Null when the gateway is gone, so callers fail with their own message (and log).
    match rb.send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// POSTs JSON; returns status, headers and the parsed body (Null when not JSON).
pub async fn post(
    app: &Appliance,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    crate::common::post_to(&app.url(path), body).await
}

/// True when the process is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Reads an SSE response to its end; returns the `data:` payloads.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}
