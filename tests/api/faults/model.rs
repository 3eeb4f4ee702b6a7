//! f14–f17: real engines (MiniLM) whose model thread panics or wedges (test-only hook
//! `TRIDENT_TEST_FAULT=<model>:<fault>`, debug builds), whose loader panics, or whose
//! weights are truncated or garbage. A second real model (`good`) keeps serving.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{record, wait_restarted, FAST};
use crate::common::minilm;
use crate::gateway::{client, poll, Appliance, Opts};

async fn embed(app: &Appliance, model: &str) -> (u16, Value) {
    let r = client()
        .post(app.url("/v1/embeddings"))
        .json(&json!({"model": model, "input": "a sentence"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `bad` and `good`, both MiniLM on CPU, with `fault` injected into `bad`; waits for both
/// unless `wait` is false.
async fn two_minilms(fault: &str, extra: &[(&'static str, &'static str)], wait: bool) -> Appliance {
    let mut env = FAST.to_vec();
    env.extend_from_slice(extra);
    let fault = format!("bad:{fault}");
    env.push(("TRIDENT_TEST_FAULT", fault.as_str()));
    let entry =
        |port: u16| json!({"type": "embedding", "path": minilm(), "port": port, "device": "cpu"});
    Appliance::start(
        json!({"bad": entry(1), "good": entry(2)}),
        Opts {
            real_engines: true,
            env: &env,
            no_wait: !wait,
            ..Default::default()
        },
    )
    .await
}

async fn good_serves(app: &Appliance) {
    let (s, b) = embed(app, "good").await;
    assert_eq!(s, 200, "the other model stopped serving: {b}");
}

#[tokio::test]
async fn f14_model_thread_panic_fails_pending_work_and_the_engine_is_restarted() {
    // The default panic hook prints a backtrace before unwinding; with RUST_BACKTRACE set
    // that takes longer than the suite's 1 s request limit, so this test allows 10 s.
    let app = two_minilms(
        "model_panic_after=1",
        &[
            ("TRIDENT_REQUEST_TIMEOUT_SECS", "10"),
            ("RUST_BACKTRACE", "0"),
        ],
        true,
    )
    .await;
    assert_eq!(embed(&app, "bad").await.0, 200);
    let panicked = Instant::now();
    let (status, body) = embed(&app, "bad").await;
    let answered = panicked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(answered < Duration::from_secs(5), "{answered:?}");
    good_serves(&app).await;
    let back = wait_restarted(&app, "bad", 1, panicked, Duration::from_secs(60)).await;
    assert_eq!(embed(&app, "bad").await.0, 200);
    good_serves(&app).await;
    record(
        "f14",
        "model thread panic (real engine)",
        &[
            ("client 503 after", answered),
            ("serving again after", back),
        ],
    );
}

#[tokio::test]
async fn f15_a_wedged_model_thread_is_declared_hung_and_restarted() {
    let app = two_minilms(
        "model_hang_after=1",
        &[("TRIDENT_MODEL_STALL_SECS", "1")],
        true,
    )
    .await;
    assert_eq!(embed(&app, "bad").await.0, 200);
    let wedged = Instant::now();
    let (status, body) = embed(&app, "bad").await;
    let answered = wedged.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");
    good_serves(&app).await;
    // The HTTP server still answers: only the model thread's heartbeat says it is hung.
    let back = wait_restarted(&app, "bad", 1, wedged, Duration::from_secs(60)).await;
    assert_eq!(embed(&app, "bad").await.0, 200);
    good_serves(&app).await;
    record(
        "f15",
        "wedged model thread (real engine, stall 1 s)",
        &[
            ("client 504 after", answered),
            ("serving again after", back),
        ],
    );
}

#[tokio::test]
async fn f16_a_loader_panic_is_a_load_failure_with_its_message() {
    let app = two_minilms("load_panic", &[("RUST_BACKTRACE", "0")], false).await;
    let started = Instant::now();
    let failed = poll(Duration::from_secs(60), || async {
        let e = app.engines("bad", None).await.remove(0);
        (e["state"] == "failed").then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("never failed: {}", app.log_text()));
    let err = failed["last_error"].as_str().unwrap();
    assert!(
        err.contains("loading the model panicked: injected fault: load_panic"),
        "{err}"
    );
    assert_eq!(failed["restarts"], 4);
    good_serves(&app).await;
    record(
        "f16",
        "loader panic (real engine)",
        &[("failed after five starts in", started.elapsed())],
    );
}

/// A copy of MiniLM with `weights` as its model.safetensors (other files linked).
fn broken_minilm(dir: &Path, weights: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(minilm()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != "model.safetensors" {
            std::os::unix::fs::symlink(entry.path(), dir.join(&name)).unwrap();
        }
    }
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
}

#[tokio::test]
async fn f17_truncated_or_garbage_weights_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let real = std::fs::read(minilm().join("model.safetensors")).unwrap();
    let (truncated, garbage) = (tmp.path().join("truncated"), tmp.path().join("garbage"));
    broken_minilm(&truncated, &real[..real.len() / 3]);
    // A header length of ~2^64 and nonsense after it.
    broken_minilm(&garbage, &[0xff; 4096]);
    let entry = |p: &Path, port: u16| json!({"type": "embedding", "path": p, "port": port, "device": "cpu"});
    let started = Instant::now();
    let app = Appliance::start(
        json!({"truncated": entry(&truncated, 1), "garbage": entry(&garbage, 2),
               "good": entry(&minilm(), 3)}),
        Opts {
            real_engines: true,
            env: FAST,
            no_wait: true,
            ..Default::default()
        },
    )
    .await;
    for model in ["truncated", "garbage"] {
        let failed = poll(Duration::from_secs(90), || async {
            let e = app.engines(model, None).await.remove(0);
            (e["state"] == "failed").then_some(e)
        })
        .await
        .unwrap_or_else(|| panic!("{model} never failed: {}", app.log_text()));
        let err = failed["last_error"].as_str().unwrap();
        assert!(err.contains("model.safetensors"), "{model}: {err}");
        assert!(!err.contains("panicked"), "{model}: {err}");
    }
    let gave_up = started.elapsed();
    let good = poll(Duration::from_secs(90), || async {
        (app.engines("good", None).await[0]["state"] == "ready").then_some(())
    })
    .await;
    assert!(good.is_some(), "good never became ready");
    good_serves(&app).await;
    record(
        "f17",
        "truncated and garbage weights (real engine)",
        &[("both failed (five starts each) in", gave_up)],
    );
}
