//! Shared helpers of the integration tests: engines started in-process on port 0 with
//! `trident::engine::build` + `serve`, kept on one background runtime so that every test of
//! the binary can share an engine (a model loads once), and small HTTP helpers.

#![allow(dead_code)]

pub mod chat;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use trident::config::{ModelEntry, Settings};
use trident::metrics::Metrics;

/// The repository root (models/, tests/fixtures/).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The real MiniLM embedding model (`scripts/fetch-models.sh`).
pub fn minilm() -> PathBuf {
    root().join("models/embedding")
}

/// Reads a JSON fixture under `tests/fixtures/`.
pub fn fixture(rel: &str) -> Value {
    let path = root().join("tests/fixtures").join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A directory for generated test models that lives as long as the test binary.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("creating a temporary directory"))
        .path()
}

/// The directory of a model that `write` generates, written once per test process.
/// Tests run in parallel and an engine maps its weights, so the model is written under a
/// lock into a side directory and renamed into place: nobody ever sees a partial file.
pub fn generated(name: &str, write: impl FnOnce(&Path)) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_dir().join(name);
    if !dir.exists() {
        let partial = scratch_dir().join(format!("{name}.partial"));
        write(&partial);
        std::fs::rename(&partial, &dir).expect("moving a generated model into place");
    }
    dir
}

fn background() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("starting the test servers' runtime")
    })
}

/// Starts an engine for `entry` (a models.json entry as JSON) and returns its base URL
/// once `/health` answers 200. Engines are started once per `key` and shared.
pub fn engine(key: &str, entry: Value) -> String {
    static ENGINES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let engines = ENGINES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = engines.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(url) = map.get(key) {
        return url.clone();
    }
    let entry: ModelEntry = serde_json::from_value(entry).expect("a valid model entry");
    let id = key.to_string();
    let url = background().block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = trident::engine::build(&id, &entry, &Settings::default(), Metrics::new());
        tokio::spawn(trident::engine::serve(
            listener,
            app,
            std::future::pending(),
        ));
        url
    });
    wait_healthy(&url);
    map.insert(key.to_string(), url.clone());
    url
}

/// Polls `/health` until it answers 200; panics with the last body after two minutes.
fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        let probe = background().block_on(async {
            let r = reqwest::get(format!("{url}/health")).await.ok()?;
            let ok = r.status().is_success();
            Some((ok, r.text().await.unwrap_or_default()))
        });
        if let Some((ok, body)) = probe {
            if ok {
                return;
            }
            if body.contains("failed") {
                last = body;
                break;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("engine at {url} did not become healthy: {last}");
}

/// Runs a test body on the servers' runtime (tests are plain `#[test]` functions so that
/// starting a shared engine never nests runtimes).
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    background().block_on(f)
}

/// POSTs JSON and returns the status and the JSON body.
pub async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("reading the body");
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, v)
}

/// GETs JSON.
pub async fn get(url: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

// ---- async helpers: servers started from #[tokio::test] functions ----

/// A path inside the repository.
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn server_runtime() -> &'static tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime");
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        handle
    })
}

/// A running engine.
#[derive(Clone)]
pub struct Server {
    pub base: String,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// Starts an engine for `entry` (JSON of a models.json entry) in-process; returns once its
/// `/health` answers 200 (model loaded and warm) or panics after `timeout`.
pub async fn start_engine(id: &str, entry: Value) -> Server {
    start_engine_with(id, entry, Settings::default()).await
}

pub async fn start_engine_with(id: &str, entry: Value, settings: Settings) -> Server {
    let entry: ModelEntry = serde_json::from_value(entry).expect("valid test entry");
    let id = id.to_string();
    let base = server_runtime()
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = trident::engine::build(&id, &entry, &settings, Metrics::new());
            tokio::spawn(trident::engine::serve(
                listener,
                app,
                std::future::pending(),
            ));
            format!("http://{addr}")
        })
        .await
        .unwrap();
    let server = Server { base };
    wait_server_healthy(&server, Duration::from_secs(180)).await;
    server
}

/// Polls `/health` until 200; panics with the last body after `timeout`.
pub async fn wait_server_healthy(server: &Server, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = client().get(server.url("/health")).send().await {
            if r.status() == 200 {
                return;
            }
            last = r.text().await.unwrap_or_default();
            if last.contains("failed") {
                panic!("engine failed to start: {last}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("engine not healthy after {timeout:?}: {last}");
}

/// The shared HTTP client of the tests: loopback only, so never through a proxy. It keeps no
/// idle connections: each `#[tokio::test]` has its own runtime, and a pooled connection
/// whose runtime ended with its test fails the next test that picks it (`DispatchGone`).
pub fn client() -> reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("building the test HTTP client")
    })
    .clone()
}

/// POSTs JSON to a [`Server`]; returns status, headers and parsed body (Null when not JSON).
pub async fn call(
    server: &Server,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_to(&server.url(path), body).await
}

/// POSTs JSON to a URL; returns status, headers and parsed body (Null when not JSON).
pub async fn post_to(url: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// GETs a URL's body as text (e.g. `/metrics`).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Asserts the OpenAI error envelope with the given status; returns the `error` object.
pub fn assert_envelope(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    want: u16,
) -> Value {
    assert_eq!(status, want, "unexpected status, body {body}");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "error must be JSON"
    );
    let err = &body["error"];
    assert!(err["message"].is_string(), "no message in {body}");
    assert!(err["type"].is_string(), "no type in {body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "envelope fields missing in {body}"
    );
    let text = body.to_string();
    assert!(
        !text.contains("/root/") && !text.contains("panicked"),
        "leaks internals: {text}"
    );
    err.clone()
}

/// Reads one metric sample value from a Prometheus text body (sum over matching lines).
pub fn metric_value(text: &str, name: &str, label_filter: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            label_filter
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of floats")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A Python that can `import module`: `$env` when set, else `python3`, else the venv
/// `scripts/test.sh` installs under `~/.cache/trident/<venv>`; `None` after printing why
/// the client test is skipped.
pub fn python_with(module: &str, env: &str, venv: &str) -> Option<String> {
    let imports = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let venv_python = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/trident/{venv}/bin/python"))
        .unwrap_or_default();
    let candidates = [
        std::env::var(env).ok(),
        Some("python3".into()),
        Some(venv_python),
    ];
    let found = candidates.into_iter().flatten().find(|p| imports(p));
    if found.is_none() {
        eprintln!(
            "SKIPPED: no Python with the {module} package ({env}, python3, ~/.cache/trident/{venv}); \
             scripts/test.sh installs it"
        );
    }
    found
}
