//! The numbered fault suite: each test injects one fault, asserts what the client sees,
//! bounds the recovery time and checks that another model keeps serving. Every test prints
//! one `FAULT fNN …` line with its measured times; collect them with
//! `cargo test --test api faults:: -- --nocapture 2>&1 | grep '^FAULT'`.
//!
//! * `hung` — f01–f03: engine SIGSTOPped before a request, during one, during a stream.
//! * `killed` — f04–f06: engine SIGKILLed idle, mid-request, mid-stream.
//! * `supervisor` — f07–f10: supervisor SIGKILLed, SIGTERM drain, engine port taken at
//!   restart, a load that exceeds `startup_timeout`.
//! * `upstream` — f11–f13: upstreams that accept and never answer, answer byte by byte,
//!   or reset (raw sockets behind an in-process gateway).
//! * `model` — f14–f17: real engines whose model thread panics or wedges, whose loader
//!   panics, whose weights are truncated.
//! * `resources` — f18–f19: the log disk full; the OOM killer ending an engine over the
//!   memory limit of the cgroup the appliance runs in.
//!
//! Time limits are made short through the settings (`FAST`), so the whole suite runs in
//! seconds on mock engines.

mod hung;
mod killed;
mod model;
mod resources;
mod supervisor;
mod upstream;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use trident::engine::access::ENGINE_TOKEN_HEADER;

use crate::gateway::{client, poll, Appliance, ENGINE_TOKEN};

/// Short time limits: requests and first bytes 1 s, stream silence 1 s; an engine is hung
/// after 3 failed liveness probes 0.25 s apart (0.5 s each), i.e. within about 2.3 s.
pub const FAST: &[(&str, &str)] = &[
    ("TRIDENT_REQUEST_TIMEOUT_SECS", "1"),
    ("TRIDENT_FIRST_BYTE_TIMEOUT_SECS", "1"),
    ("TRIDENT_STREAM_IDLE_TIMEOUT_SECS", "1"),
    ("TRIDENT_LIVENESS_INTERVAL_SECS", "0.25"),
    ("TRIDENT_LIVENESS_TIMEOUT_SECS", "0.5"),
    ("TRIDENT_LIVENESS_FAILURES", "3"),
];

/// A chat model `chat` (with `spec` as its mock behaviour) next to an embedding model
/// `embed` that must keep serving.
pub async fn chat_and_embed(spec: &str) -> Appliance {
    Appliance::start(
        json!({"chat": {"type": "chat"}, "embed": {"type": "embedding"}}),
        crate::gateway::Opts {
            behaviour: Some(json!({ "chat": spec })),
            env: FAST,
            ..Default::default()
        },
    )
    .await
}

pub fn chat_body(stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The status of one non-streamed chat request to `chat` through the gateway.
pub async fn chat_status(app: &Appliance) -> u16 {
    client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The pid and port of `model`'s (first) engine.
pub async fn engine(app: &Appliance, model: &str) -> (i32, u16) {
    let e = app.engines(model, None).await.remove(0);
    (
        e["pid"].as_i64().expect("a running engine has a pid") as i32,
        e["port"].as_u64().expect("a local engine has a port") as u16,
    )
}

/// Asserts that `embed` answers through the gateway right now.
pub async fn other_model_serves(app: &Appliance) {
    let r = client()
        .post(app.url("/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the other model stopped serving");
}

/// Waits until `model`'s engine was restarted `restarts` times and is ready again; returns
/// the time since `since`.
pub async fn wait_restarted(
    app: &Appliance,
    model: &str,
    restarts: u64,
    since: Instant,
    within: Duration,
) -> Duration {
    let back = poll(within, || async {
        let e = app.engines(model, None).await.remove(0);
        (e["restarts"].as_u64() >= Some(restarts) && e["state"] == "ready").then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "{model} was not restarted within {within:?}: {:?}\n{}",
        app.engines(model, None).await,
        app.log_text()
    );
    since.elapsed()
}

/// Polls the mock engine's own counter until it received `n` work requests.
pub async fn mock_received(port: u16, n: u64) {
    let got = poll(Duration::from_secs(5), || async {
        let v: Value = client()
            .get(format!("http://127.0.0.1:{port}/mock/stats"))
            .header(ENGINE_TOKEN_HEADER, ENGINE_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["requests"].as_u64()? >= n).then_some(())
    })
    .await;
    assert!(got.is_some(), "the engine never received the request");
}

/// Reads an SSE body to its end (or `limit`); returns the text and when it ended.
pub async fn read_rest(resp: &mut reqwest::Response, limit: Duration) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => return text,
            Err(_) => panic!("the stream did not end within {limit:?}: {text}"),
        }
    }
}

/// The last `data:` payload of an SSE text, parsed.
pub fn last_event(text: &str) -> Value {
    let last = text
        .lines()
        .rfind(|l| l.starts_with("data: "))
        .unwrap_or_else(|| panic!("no event in {text:?}"));
    serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or(Value::Null)
}

/// Prints the suite's one-line record of a fault.
pub fn record(id: &str, what: &str, figures: &[(&str, Duration)]) {
    let figures: Vec<String> = figures
        .iter()
        .map(|(k, d)| format!("{k} {:.2} s", d.as_secs_f64()))
        .collect();
    eprintln!("FAULT {id} {what}: {}", figures.join(", "));
}
