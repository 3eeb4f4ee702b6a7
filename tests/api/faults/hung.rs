//! f01–f03: an engine that stops answering (SIGSTOP, as a wedged GPU or a deadlock does).
//! The client gets a 504 (or an SSE error event) within the gateway's time limit; the
//! supervisor declares the engine hung after its failed liveness probes, SIGKILLs it after
//! the SIGTERM grace and starts a new one, which answers.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{
    chat_and_embed, chat_body, chat_status, engine, last_event, mock_received, other_model_serves,
    read_rest, record, wait_restarted,
};
use crate::gateway::{client, process_gone};

/// Time the client may wait beyond the 1 s limit (scheduling on a loaded machine).
const SLACK: Duration = Duration::from_millis(1500);
/// Detection (≈2.3 s) + SIGTERM grace (2 s) + restart: the bound on recovery.
const RECOVERY: Duration = Duration::from_secs(15);

async fn expect_504(resp: reqwest::Response) {
    assert_eq!(resp.status(), 504);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "upstream_timeout", "{b}");
    assert_eq!(b["error"]["type"], "timeout_error", "{b}");
}

#[tokio::test]
async fn f01_engine_stopped_before_a_request() {
    let app = chat_and_embed("").await;
    let (pid, _) = engine(&app, "chat").await;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let resp = client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let answered = stopped.elapsed();
    expect_504(resp).await;
    assert!(answered < Duration::from_secs(1) + SLACK, "{answered:?}");
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, stopped, RECOVERY).await;
    assert!(process_gone(pid), "the hung engine was not killed");
    assert_eq!(chat_status(&app).await, 200);
    other_model_serves(&app).await;
    record(
        "f01",
        "engine SIGSTOP before a request",
        &[
            ("client 504 after", answered),
            ("serving again after", back),
        ],
    );
}

#[tokio::test]
async fn f02_engine_stopped_during_a_request() {
    let app = chat_and_embed("latency_ms=800").await;
    let (pid, port) = engine(&app, "chat").await;
    let url = app.url("/v1/chat/completions");
    let sent = Instant::now();
    let call = tokio::spawn(async move {
        let r = client().post(url).json(&chat_body(false)).send().await;
        (r, sent.elapsed())
    });
    // Stop it once it holds the request (the mock counts work requests on receipt).
    mock_received(port, 1).await;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let (resp, answered) = call.await.unwrap();
    expect_504(resp.unwrap()).await;
    assert!(answered < Duration::from_secs(1) + SLACK, "{answered:?}");
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, stopped, RECOVERY).await;
    assert!(process_gone(pid));
    assert_eq!(chat_status(&app).await, 200);
    record(
        "f02",
        "engine SIGSTOP during a request",
        &[
            ("client 504 after", answered),
            ("serving again after", back),
        ],
    );
}

#[tokio::test]
async fn f03_engine_stopped_during_a_stream() {
    let app = chat_and_embed("tokens=200,token_delay_ms=20").await;
    let (pid, _) = engine(&app, "chat").await;
    let mut resp = client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {"), "{first:?}");
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let rest = read_rest(&mut resp, Duration::from_secs(1) + SLACK).await;
    let ended = stopped.elapsed();
    let event = last_event(&rest);
    assert_eq!(event["error"]["code"], "upstream_timeout", "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");
    assert!(
        ended >= Duration::from_millis(900),
        "ended early: {ended:?}"
    );
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, stopped, RECOVERY).await;
    assert!(process_gone(pid));
    let r = client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let events = crate::gateway::sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    record(
        "f03",
        "engine SIGSTOP during a stream",
        &[
            ("stream error event after", ended),
            ("serving again after", back),
        ],
    );
}
