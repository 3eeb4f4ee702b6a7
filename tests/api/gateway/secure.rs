//! Secure defaults of `trident serve`: no key means loopback only (or an explicit
//! `--allow-unauthenticated`), `/metrics` needs the key on the gateway port while the
//! metrics-only listener serves it without one, `/ready` gives states only, and engines
//! answer only requests carrying the supervisor's per-boot token.

use std::process::Command;

use serde_json::json;

use trident::engine::access::ENGINE_TOKEN_HEADER;

use super::{client, get_json, mock_models, Appliance, Opts, ENGINE_TOKEN, EXE};

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

#[tokio::test]
async fn engines_answer_only_requests_with_the_boot_token() {
    let app = Appliance::start(json!({"e": {"type": "embedding"}}), Opts::default()).await;
    let port = app.engines("e", None).await[0]["port"].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/embeddings");
    let body = json!({"input": "a"});
    for token in [None, Some("wrong")] {
        let mut rb = client().post(&url).json(&body);
        if let Some(t) = token {
            rb = rb.header(ENGINE_TOKEN_HEADER, t);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "token {token:?}");
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "invalid_engine_token");
    }
    let health = client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 401, "even /health needs the token");
    let r = client()
        .post(&url)
        .header(ENGINE_TOKEN_HEADER, ENGINE_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The gateway sends it (probes, proxying, metrics scrapes) and never forwards a client's.
    let r = client()
        .post(app.url("/v1/embeddings"))
        .header(ENGINE_TOKEN_HEADER, "wrong")
        .json(&json!({"model": "e", "input": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client().get(app.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("component=\"engine\""),
        "engine metrics not scraped: {text}"
    );
}
