//! f04–f06: an engine SIGKILLed (the OOM killer, a CUDA abort) while idle, while it holds
//! a request, and mid-stream. The client gets a prompt 502 or a final SSE error event, the
//! supervisor notices the exit at once and restarts the engine.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{
    chat_and_embed, chat_body, chat_status, engine, last_event, mock_received, other_model_serves,
    read_rest, record, wait_restarted,
};
use crate::gateway::client;

const RECOVERY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn f04_engine_killed_while_idle() {
    let app = chat_and_embed("").await;
    let (pid, _) = engine(&app, "chat").await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, killed, RECOVERY).await;
    let (new_pid, _) = engine(&app, "chat").await;
    assert_ne!(new_pid, pid);
    assert_eq!(chat_status(&app).await, 200);
    record(
        "f04",
        "engine SIGKILL while idle",
        &[("serving again after", back)],
    );
}

#[tokio::test]
async fn f05_engine_killed_during_a_request() {
    let app = chat_and_embed("latency_ms=3000").await;
    let (pid, port) = engine(&app, "chat").await;
    let url = app.url("/v1/chat/completions");
    let call = tokio::spawn(async move { client().post(url).json(&chat_body(false)).send().await });
    mock_received(port, 1).await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let resp = call.await.unwrap().unwrap();
    let answered = killed.elapsed();
    // The engine took the work, so it is not retried: a 502 in the envelope, at once.
    assert_eq!(resp.status(), 502);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "bad_gateway", "{b}");
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, killed, RECOVERY).await;
    record(
        "f05",
        "engine SIGKILL during a request",
        &[
            ("client 502 after", answered),
            ("serving again after", back),
        ],
    );
}

#[tokio::test]
async fn f06_engine_killed_during_a_stream() {
    let app = chat_and_embed("tokens=100,token_delay_ms=50").await;
    let (pid, _) = engine(&app, "chat").await;
    let mut resp = client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.chunk().await.unwrap().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let rest = read_rest(&mut resp, Duration::from_secs(5)).await;
    let ended = killed.elapsed();
    assert_eq!(last_event(&rest)["error"]["code"], "bad_gateway", "{rest}");
    assert!(!rest.contains("[DONE]"));
    other_model_serves(&app).await;
    let back = wait_restarted(&app, "chat", 1, killed, RECOVERY).await;
    let r = client()
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    let events = crate::gateway::sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    record(
        "f06",
        "engine SIGKILL during a stream",
        &[
            ("stream error event after", ended),
            ("serving again after", back),
        ],
    );
}
