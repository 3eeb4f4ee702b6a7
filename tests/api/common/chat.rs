//! Helpers of the chat tests: start an engine on 127.0.0.1:0 on its own
//! thread and runtime (so one engine can serve many tests), wait until it is ready, and
//! read SSE streams.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use trident::config::{CheckOptions, ModelsFile, Settings};
use trident::metrics::Metrics;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running engine.
pub struct Engine {
    pub base: String,
    pub metrics: Metrics,
}

/// Starts engine `id` from a models.json text (relative paths resolve against the
/// repository root) and waits up to `ready_within` for `/health` to answer 200.
pub async fn start_engine(models_json: &str, id: &str, ready_within: Duration) -> Engine {
    let file = ModelsFile::parse(models_json, CheckOptions { check_paths: false })
        .unwrap_or_else(|p| panic!("models.json: {p:?}"));
    let mut entry = file.models.get(id).expect("model id in file").clone();
    if let Some(p) = &entry.path {
        if p.is_relative() {
            entry.path = Some(root().join(p));
        }
    }
    let metrics = Metrics::new();
    let app = trident::engine::build(id, &entry, &Settings::default(), metrics.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(listener.local_addr().expect("addr"));
            trident::engine::serve(listener, app, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let addr = rx.await.expect("engine address");
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + ready_within;
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "engine {id} not ready within {ready_within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Engine { base, metrics }
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The value of a Prometheus sample line `name{labels} value` whose labels contain all
/// of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The Python with the official `openai` package (`TRIDENT_PYTHON`, else `python3`), or `None`
/// after printing why the client test is skipped.
pub fn openai_python() -> Option<String> {
    let python = std::env::var("TRIDENT_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: the openai Python package is not installed for {python} (pip install openai)"
        );
    }
    ok.then_some(python)
}
