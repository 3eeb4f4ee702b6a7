//! Secure defaults of `trident serve`: no key means loopback only (or an explicit
//! `--allow-unauthenticated`), `/metrics` needs the key on the gateway port while the
//! metrics-only listener serves it without one, and `/ready` gives states only.

use std::process::Command;

use serde_json::json;

use super::{client, get_json, mock_models, Appliance, Opts, EXE};

#[test]
fn no_key_on_a_public_address_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = mock_models(dir.path(), json!({"e": {"type": "embedding"}}));
    let out = Command::new(EXE)
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--config"])
        .arg(&file)
        .args(["--engine-subcommand", "mock-engine"])
        .env_remove("TRIDENT_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve on 0.0.0.0 without an API key")
            && err.contains("TRIDENT_API_KEYS")
            && err.contains("--allow-unauthenticated"),
        "{err}"
    );
}

#[tokio::test]
async fn metrics_need_the_key_except_on_the_metrics_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let app = Appliance::start(
        json!({"e": {"type": "embedding"}}),
        Opts {
            api_keys: &["k-secret"],
            env: &[("TRIDENT_METRICS_PORT", port.as_str())],
            ..Default::default()
        },
    )
    .await;
    let r = client().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("trident_requests_total"), "{text}");
    // Nothing but /metrics there.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/system/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // /ready stays public and says no more than states and counts.
    let ready = get_json(&app, "/ready", None).await;
    let model = ready["models"]["e"].as_object().unwrap();
    let mut keys: Vec<&str> = model.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["kind", "replicas", "replicas_ready", "state"]);
}
