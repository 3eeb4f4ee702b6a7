//! Operations on a running appliance: `trident reload` (and SIGHUP) applies an edited
//! models.json without touching the models it keeps; `trident restart MODEL` restarts a
//! model's replicas one at a time so its traffic never stops.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client, get_json, mock_models, poll, process_gone, Appliance, Opts, EXE};

/// POST to an admin endpoint; status and body.
async fn admin(app: &Appliance, path: &str) -> (u16, Value) {
    let r = client().post(app.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The pid of each replica of `model`, by replica index.
async fn pids(app: &Appliance, model: &str) -> Vec<i64> {
    let mut e = app.engines(model, None).await;
    e.sort_by_key(|e| e["replica"].as_u64());
    e.iter().map(|e| e["pid"].as_i64().unwrap_or(0)).collect()
}

/// Rewrites the appliance's models file (mock paths filled in as at start).
fn rewrite(app: &Appliance, models: Value) {
    mock_models(app.models_file.parent().unwrap(), models);
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

/// Sends requests to `model` on `path` with `workers` loops until `stop`; counts every
/// answer that is not a 200 (with its status) and every answer.
fn traffic(
    app: &Appliance,
    path: &'static str,
    body: Value,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<u16>)> {
    let url = app.url(path);
    tokio::spawn(async move {
        let total = Arc::new(AtomicUsize::new(0));
        let loops = (0..workers).map(|_| {
            let (url, body, stop, total) = (url.clone(), body.clone(), stop.clone(), total.clone());
            async move {
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = match client().post(&url).json(&body).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    total.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        bad.push(status);
                    }
                }
                bad
            }
        });
        let bad = futures::future::join_all(loops).await.concat();
        (total.load(Ordering::Relaxed), bad)
    })
}

#[tokio::test]
async fn reload_adds_removes_and_changes_models_and_leaves_the_others_alone() {
    let app = Appliance::start(
        json!({
            "keep": {"type": "embedding", "port": 21000},
            "gone": {"type": "embedding", "port": 21010},
            "edit": {"type": "chat", "port": 21020}}),
        Opts::default(),
    )
    .await;
    let (keep, gone, edit) = (
        pids(&app, "keep").await,
        pids(&app, "gone").await,
        pids(&app, "edit").await,
    );
    // The kept model serves throughout the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        &app,
        "/v1/embeddings",
        json!({"model": "keep", "input": "x"}),
        2,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    rewrite(
        &app,
        json!({
            "keep": {"type": "embedding", "port": 21000},
            "edit": {"type": "chat", "port": 21020, "max_model_len": 512, "aliases": ["edited"]},
            "new": {"type": "rerank", "port": 21030}}),
    );
    let started = Instant::now();
    let (status, report) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(names(&report["added"]), ["new"]);
    assert_eq!(names(&report["removed"]), ["gone"]);
    assert_eq!(names(&report["changed"]), ["edit"]);
    assert_eq!(names(&report["unchanged"]), ["keep"]);
    app.wait_ready(Duration::from_secs(20)).await;
    println!(
        "OPS reload: applied and every model ready after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    let (total, bad) = load.await.unwrap();
    assert!(total > 10, "only {total} requests ran");
    assert!(bad.is_empty(), "the kept model failed {bad:?} of {total}");
    assert_eq!(
        pids(&app, "keep").await,
        keep,
        "the kept engine was touched"
    );
    assert_ne!(
        pids(&app, "edit").await,
        edit,
        "the changed model kept its engine"
    );
    assert!(poll(Duration::from_secs(5), || async {
        process_gone(gone[0] as i32).then_some(())
    })
    .await
    .is_some());
    // The new routing: the removed model is unknown, the new one and the new alias route.
    let (s, _, _) = super::post(
        &app,
        "/v1/embeddings",
        &json!({"model": "gone", "input": "x"}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _, _) = super::post(
        &app,
        "/v1/rerank",
        &json!({"model": "new", "query": "q", "documents": ["a"]}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = super::post(
        &app,
        "/v1/chat/completions",
        &json!({"model": "edited", "messages": []}),
    )
    .await;
    assert_eq!(s, 200);
    let ids: Vec<String> = get_json(&app, "/v1/models", None).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["edit", "keep", "new"]);
    // A second reload of the same file changes nothing.
    let (status, report) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 200);
    assert_eq!(names(&report["unchanged"]), ["edit", "keep", "new"]);
}

#[tokio::test]
async fn a_bad_models_file_is_refused_whole_and_nothing_changes() {
    let app = Appliance::start(
        json!({"a": {"type": "embedding", "port": 21100}}),
        Opts::default(),
    )
    .await;
    let before = pids(&app, "a").await;
    // Two problems at once: both are named, and neither the valid new model nor the
    // change to `a` is applied.
    std::fs::write(
        &app.models_file,
        json!({"models": {
            "a": {"type": "embedding", "path": "/nonexistent/weights", "port": 21100},
            "b": {"type": "sideways", "path": "/x", "port": 21110},
            "c": {"type": "embedding", "path": app.models_file, "port": 21120}}})
        .to_string(),
    )
    .unwrap();
    let (status, body) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_models_file");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("models.a.path") && msg.contains("models.b"),
        "{msg}"
    );
    // Not JSON at all.
    std::fs::write(&app.models_file, "{\"models\": {").unwrap();
    let (status, body) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 400, "{body}");
    let ids = get_json(&app, "/v1/models", None).await["data"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ids, 1);
    assert_eq!(pids(&app, "a").await, before);
    let (s, _, _) = super::post(&app, "/v1/embeddings", &json!({"model": "a", "input": "x"})).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn resizing_a_model_keeps_its_running_replicas() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "port": 21200}}),
        Opts::default(),
    )
    .await;
    let first = pids(&app, "chat").await;
    rewrite(
        &app,
        json!({"chat": {"type": "chat", "port": 21200, "replicas": 3}}),
    );
    let (status, report) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(names(&report["resized"]), ["chat"]);
    app.wait_every_replica().await;
    let three = pids(&app, "chat").await;
    assert_eq!(three.len(), 3);
    assert_eq!(three[0], first[0], "replica 0 was restarted by a resize");
    rewrite(
        &app,
        json!({"chat": {"type": "chat", "port": 21200, "replicas": 1}}),
    );
    let (status, _) = admin(&app, "/admin/reload").await;
    assert_eq!(status, 200);
    assert_eq!(pids(&app, "chat").await, [first[0]]);
    for pid in &three[1..] {
        assert!(
            poll(Duration::from_secs(5), || async {
                process_gone(*pid as i32).then_some(())
            })
            .await
            .is_some(),
            "replica pid {pid} still runs"
        );
    }
}

#[tokio::test]
async fn a_rolling_restart_never_stops_traffic() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "port": 21300, "replicas": 2}}),
        Opts {
            // Each request takes a while, so some are always in flight on the replica
            // being drained.
            behaviour: Some(json!({"chat": "latency_ms=40"})),
            ..Default::default()
        },
    )
    .await;
    app.wait_every_replica().await;
    let before = pids(&app, "chat").await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        &app,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": []}),
        4,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, report) = admin(&app, "/admin/restart/chat").await;
    let took = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (total, bad) = load.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["replicas"].as_array().unwrap().len(), 2);
    println!(
        "OPS rolling restart of 2 replicas: {took:.2} s, {total} requests, {} failed",
        bad.len()
    );
    assert!(total > 20, "only {total} requests ran");
    assert!(
        bad.is_empty(),
        "{} of {total} requests failed: {bad:?}",
        bad.len()
    );
    let after = pids(&app, "chat").await;
    assert!(
        after[0] != before[0] && after[1] != before[1],
        "{before:?} -> {after:?}"
    );
    // Unknown and remote models are refused with a clear error.
    let (status, body) = admin(&app, "/admin/restart/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn sighup_and_the_cli_reload_the_models_file() {
    let app = Appliance::start(
        json!({"a": {"type": "embedding", "port": 21400}}),
        Opts {
            api_keys: &["sk-ops"],
            ..Default::default()
        },
    )
    .await;
    rewrite(
        &app,
        json!({"a": {"type": "embedding", "port": 21400}, "b": {"type": "embedding", "port": 21410}}),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let seen = poll(Duration::from_secs(10), || async {
        let v = get_json(&app, "/v1/models", Some("sk-ops")).await;
        (v["data"].as_array()?.len() == 2).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "SIGHUP did not add the model:\n{}",
        app.log_text()
    );
    // The CLI: the key is required like on every route, and --wait-secs follows /ready.
    rewrite(&app, json!({"a": {"type": "embedding", "port": 21400}}));
    let cli = |key: &str| {
        std::process::Command::new(EXE)
            .args([
                "reload",
                "--url",
                &app.base,
                "--api-key",
                key,
                "--wait-secs",
                "20",
            ])
            .output()
            .unwrap()
    };
    let out = cli("wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
    let out = cli("sk-ops");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed:   b") && stdout.contains("ready: a=ready"),
        "{stdout}"
    );
    let out = std::process::Command::new(EXE)
        .args(["restart", "a", "--url", &app.base, "--api-key", "sk-ops"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("restarted a: replica 0 in "), "{stdout}");
}
