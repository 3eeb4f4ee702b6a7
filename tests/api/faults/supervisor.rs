//! f07–f10: the supervisor itself SIGKILLed, SIGTERM with a request in flight, an engine
//! port taken by another process when the engine restarts, and a load that keeps
//! exceeding `startup_timeout`.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::{
    chat_and_embed, chat_body, chat_status, engine, mock_received, other_model_serves, record, FAST,
};
use crate::gateway::{client, poll, process_gone, Appliance, Opts};

/// `N` distinct free ports, drawn the way the supervisor draws engine ports: from below the
/// kernel's ephemeral range, where other tests' client sockets cannot take them.
fn free_ports<const N: usize>() -> [u16; N] {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < N {
        let p = trident::supervisor::preflight::free_port().unwrap();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    std::array::from_fn(|i| ports[i])
}

#[tokio::test]
async fn f07_supervisor_killed_leaves_no_engine_and_a_new_one_starts_on_the_same_ports() {
    let [chat_port, embed_port, gateway_port] = free_ports();
    let models = json!({"chat": {"type": "chat", "port": chat_port},
                        "embed": {"type": "embedding", "port": embed_port}});
    let opts = || Opts {
        env: FAST,
        config_ports: true,
        gateway_port: Some(gateway_port),
        ..Default::default()
    };
    let mut first = Appliance::start(models.clone(), opts()).await;
    let pids = [
        engine(&first, "chat").await.0,
        engine(&first, "embed").await.0,
    ];
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    let gone = poll(Duration::from_secs(5), || async {
        pids.iter().all(|&p| process_gone(p)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "orphan engines: {pids:?}");
    let orphans_gone = killed.elapsed();
    let second = Appliance::start(models, opts()).await;
    let serving = killed.elapsed();
    assert_eq!(second.base, format!("http://127.0.0.1:{gateway_port}"));
    assert_eq!(engine(&second, "chat").await.1, chat_port);
    assert_eq!(engine(&second, "embed").await.1, embed_port);
    other_model_serves(&second).await;
    let r = client()
        .post(second.url("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(first);
    record(
        "f07",
        "supervisor SIGKILL",
        &[
            ("engines gone after", orphans_gone),
            ("new supervisor serving after", serving),
        ],
    );
}

#[tokio::test]
async fn f08_sigterm_lets_a_request_in_flight_finish() {
    let app = chat_and_embed("latency_ms=700").await;
    let (pid, port) = engine(&app, "chat").await;
    let url = app.url("/v1/chat/completions");
    let call = tokio::spawn(async move { client().post(url).json(&chat_body(false)).send().await });
    mock_received(port, 1).await;
    kill(Pid::from_raw(app.pid()), Signal::SIGTERM).unwrap();
    let term = Instant::now();
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the request in flight was cut");
    let status = tokio::task::spawn_blocking(move || {
        let mut app = app;
        app.child.wait().unwrap()
    })
    .await
    .unwrap();
    let exited = term.elapsed();
    assert!(status.success(), "{status}");
    assert!(process_gone(pid), "the engine outlived the supervisor");
    assert!(exited < Duration::from_secs(10), "{exited:?}");
    record(
        "f08",
        "SIGTERM with a request in flight",
        &[("supervisor exited after", exited)],
    );
}

#[tokio::test]
async fn f09_engine_port_taken_at_restart() {
    let [chat_port, embed_port] = free_ports();
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "port": chat_port},
               "embed": {"type": "embedding", "port": embed_port}}),
        Opts {
            env: FAST,
            config_ports: true,
            restart_backoff_ms: Some(400),
            ..Default::default()
        },
    )
    .await;
    let (pid, _) = engine(&app, "chat").await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    // Another process takes the port before the restart (400 ms later).
    let squatter = poll(Duration::from_secs(2), || async {
        std::net::TcpListener::bind(("127.0.0.1", chat_port)).ok()
    })
    .await
    .expect("the killed engine's port never came free");
    let refused = poll(Duration::from_secs(10), || async {
        let e = app.engines("chat", None).await.remove(0);
        let err = e["last_error"].as_str().unwrap_or("").to_string();
        (e["restarts"].as_u64() >= Some(2) && err.contains(&chat_port.to_string())).then_some(err)
    })
    .await
    .unwrap_or_else(|| panic!("no port error: {:?}", app.log_text()));
    assert!(refused.contains("cannot listen"), "{refused}");
    other_model_serves(&app).await;
    drop(squatter);
    let back = poll(Duration::from_secs(15), || async {
        let e = app.engines("chat", None).await.remove(0);
        (e["state"] == "ready").then_some(())
    })
    .await;
    assert!(back.is_some(), "not back: {}", app.log_text());
    assert_eq!(chat_status(&app).await, 200);
    record(
        "f09",
        "engine port taken at restart",
        &[(
            "serving again (port held until two refused restarts) after",
            killed.elapsed(),
        )],
    );
}

#[tokio::test]
async fn f10_a_load_past_the_startup_timeout_counts_as_a_crash_until_failed() {
    let mut env = FAST.to_vec();
    env.push(("TRIDENT_STARTUP_TIMEOUT_SECS", "1"));
    let started = Instant::now();
    let app = Appliance::start(
        json!({"slow": {"type": "chat"}, "embed": {"type": "embedding"}}),
        Opts {
            behaviour: Some(json!({"slow": "load_ms=600000"})),
            env: &env,
            no_wait: true,
            ..Default::default()
        },
    )
    .await;
    let failed = poll(Duration::from_secs(30), || async {
        let e = app.engines("slow", None).await.remove(0);
        (e["state"] == "failed").then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("never failed: {}", app.log_text()));
    let gave_up = started.elapsed();
    assert_eq!(failed["restarts"], 4, "five starts, then no more: {failed}");
    let err = failed["last_error"].as_str().unwrap();
    assert!(err.contains("startup timeout"), "{err}");
    other_model_serves(&app).await;
    let r = client()
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "slow", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    record(
        "f10",
        "load past startup_timeout (1 s), five times",
        &[("marked failed after", gave_up)],
    );
}
