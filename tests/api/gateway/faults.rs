//! The supervisor under faults: a crash loop, the supervisor itself SIGKILLed, SIGTERM
//! draining, and refusals before anything starts. The numbered fault suite (`faults`)
//! covers hung and killed engines.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::{client, get_json, poll, process_gone, Appliance, Opts, EXE};

fn stream_body() -> Value {
    json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_crash_loop_ends_in_failed_with_the_engines_last_error() {
    let app = Appliance::start(
        json!({"bad": {"type": "embedding"}, "good": {"type": "embedding"}}),
        Opts {
            behaviour: Some(json!({"bad": "exit_on_start"})),
            no_wait: true,
            ..Default::default()
        },
    )
    .await;
    let failed = poll(Duration::from_secs(30), || async {
        let ready = get_json(&app, "/ready", None).await;
        (ready["models"]["bad"]["state"] == "failed").then_some(ready)
    })
    .await
    .unwrap_or_else(|| panic!("never failed:\n{}", app.log_text()));
    assert_eq!(failed["status"], "not_ready");
    assert_eq!(failed["models"]["good"]["state"], "ready");
    // The public /ready says no more than the state; the reason is in /system/info.
    assert!(
        failed["models"]["bad"].get("last_error").is_none(),
        "{failed}"
    );
    let engine = app.engines("bad", None).await.remove(0);
    let err = engine["last_error"].as_str().unwrap();
    assert!(err.contains("simulated start-up crash"), "{err}");
    assert_eq!(engine["restarts"], 4, "five starts, then no more: {engine}");
    assert!(engine["pid"].is_null());
    let r = client()
        .post(app.url("/v1/embeddings"))
        .json(&json!({"model": "bad", "input": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // No further restarts happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.engines("bad", None).await[0]["restarts"], 4);
}

#[tokio::test]
async fn no_engine_outlives_a_killed_supervisor() {
    let mut app = Appliance::start(
        json!({"chat": {"type": "chat", "replicas": 2}, "embed": {"type": "embedding"}}),
        Opts::default(),
    )
    .await;
    let info = get_json(&app, "/system/info", None).await;
    let pids: Vec<i32> = info["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| !process_gone(p)));
    app.child.kill().unwrap();
    app.child.wait().unwrap();
    let gone = poll(Duration::from_secs(5), || async {
        pids.iter().all(|&p| process_gone(p)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "engines survived: {:?}",
        pids.iter()
            .filter(|&&p| !process_gone(p))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat"}}),
        Opts {
            behaviour: Some(json!({"chat": "tokens=15,token_delay_ms=100"})),
            ..Default::default()
        },
    )
    .await;
    let pid = app.engines("chat", None).await[0]["pid"].as_i64().unwrap() as i32;
    let mut resp = client()
        .post(app.url("/v1/chat/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    kill(Pid::from_raw(app.pid()), Signal::SIGTERM).unwrap();
    let draining = poll(Duration::from_secs(5), || async {
        let r = client().get(app.url("/ready")).send().await.ok()?;
        let s = r.status().as_u16();
        let b: Value = r.json().await.ok()?;
        (b["status"] == "draining").then_some(s)
    })
    .await;
    assert_eq!(draining, Some(503));
    let r = client()
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "chat", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"].is_string());
    // The stream that was running finishes normally.
    let mut rest = String::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    let status = tokio::task::spawn_blocking(move || {
        let mut app = app;
        app.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    assert!(process_gone(pid));
}

#[tokio::test]
async fn bad_setups_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let run = |models: Value| {
        let file = dir.path().join("m.json");
        std::fs::write(&file, json!({"models": models}).to_string()).unwrap();
        let out = Command::new(EXE)
            .args([
                "serve",
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--engine-subcommand",
                "mock-engine",
                "--config",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let here = dir.path().display().to_string();
    // A model's port is the gateway's (`model_ports`, the default): taken, it stops here.
    let err = run(json!({"e": {"type": "embedding", "path": here, "port": port}}));
    assert!(
        err.contains(&format!(
            "port {port} (model \"e\") cannot be used by the gateway"
        )) && err.contains("models.e.port"),
        "{err}"
    );
    let err = run(json!({"e": {"type": "embedding", "path": "/no/such/model", "port": 1}}));
    assert!(
        err.contains("/no/such/model") && err.contains("does not exist"),
        "{err}"
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run(json!({"big": {"type": "chat", "path": here, "port": free, "device": "cuda"}}));
    assert!(err.contains("\"big\"") && err.contains("GPU 0"), "{err}");
    // The gateway's own port.
    let file = dir.path().join("m.json");
    std::fs::write(
        &file,
        json!({"models": {"e": {"type": "embedding", "path": here, "port": 1}}}).to_string(),
    )
    .unwrap();
    let out = Command::new(EXE)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("gateway port {port}")),
        "{err}"
    );
}
