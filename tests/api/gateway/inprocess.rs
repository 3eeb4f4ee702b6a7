//! The gateway in-process against in-test mock engines, for what needs exact control of the
//! replica table: retries and ejection on refused connections, no retry once a status or a
//! token went out, timeouts, and cancellation when the client goes away.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trident::config::{ModelKind, ModelsFile, Settings};
use trident::gateway::{self, GatewayState, SystemFacts};
use trident::mock_engine::{self, Behaviour, MockConfig};
use trident::routing::{Backends, ReplicaState, Routes};

use crate::common::metric_value;

/// Starts an in-test mock engine; returns its port.
async fn mock(model: &str, kind: ModelKind, replica: usize, spec: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = MockConfig {
        model: model.into(),
        kind,
        replica,
        behaviour: Behaviour::parse(spec).unwrap(),
        exit_process: false,
    };
    tokio::spawn(async move { axum::serve(listener, mock_engine::router(cfg)).await });
    port
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway over one model `m` whose replicas listen on `ports`, all marked ready.
async fn gateway(kind: &str, ports: Vec<u16>, settings: Settings) -> (String, GatewayState) {
    let text =
        json!({"models": {"m": {"type": kind, "path": "/x", "port": 1, "replicas": ports.len()}}})
            .to_string();
    let file = ModelsFile::parse(&text, Default::default()).unwrap();
    let backends = Backends::new(&file, "127.0.0.1", &|_, r| ports[r]);
    for r in backends.replicas() {
        r.set_state(ReplicaState::Ready);
    }
    let state = GatewayState::new(
        Arc::new(Routes::new(backends)),
        settings,
        SystemFacts::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    (base, state)
}

fn settings(balance: &str) -> Settings {
    Settings::load(
        None,
        false,
        [("TRIDENT_BALANCE".to_string(), balance.to_string())],
        &[],
    )
    .unwrap()
}

async fn stats(port: u16) -> u64 {
    let v: Value = reqwest::get(format!("http://127.0.0.1:{port}/mock/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["requests"].as_u64().unwrap()
}

#[tokio::test]
async fn refused_connections_are_retried_elsewhere_and_the_replica_is_ejected() {
    let live = mock("m", ModelKind::Embedding, 1, "").await;
    let (base, state) = gateway(
        "embedding",
        vec![closed_port(), live],
        settings("round_robin"),
    )
    .await;
    let c = reqwest::Client::new();
    for _ in 0..20 {
        let r = c
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({"input": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mock-replica"], "1");
    }
    let text = state.metrics.render();
    let retries = metric_value(&text, "trident_upstream_retries_total", &[("model", "m")]);
    let ejections = metric_value(&text, "trident_upstream_ejections_total", &[("model", "m")]);
    assert!(ejections >= 1.0, "{text}");
    // Three failures eject it; after that it is skipped rather than retried.
    assert!((3.0..=6.0).contains(&retries), "retries {retries}");
    assert_eq!(stats(live).await, 20);
}

#[tokio::test]
async fn the_last_replica_is_never_ejected_and_failures_are_502() {
    let (base, state) = gateway("embedding", vec![closed_port()], settings("round_robin")).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let r = c
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({"input": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "bad_gateway");
    }
    let text = state.metrics.render();
    assert_eq!(
        metric_value(&text, "trident_upstream_ejections_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_started_generation_or_an_engine_error_is_never_retried() {
    let a = mock(
        "m",
        ModelKind::Chat,
        0,
        "crash_after_tokens=2,token_delay_ms=30",
    )
    .await;
    let b = mock(
        "m",
        ModelKind::Chat,
        1,
        "crash_after_tokens=2,token_delay_ms=30",
    )
    .await;
    let (base, _state) = gateway("chat", vec![a, b], settings("round_robin")).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    let err: Value = serde_json::from_str(events[2]).unwrap();
    assert!(err["error"]["message"].is_string(), "{text}");
    assert_eq!(
        stats(a).await + stats(b).await,
        1,
        "the generation was retried"
    );

    let e1 = mock("m", ModelKind::Chat, 0, "status=500").await;
    let e2 = mock("m", ModelKind::Chat, 1, "status=500").await;
    let (base, _state) = gateway("chat", vec![e1, e2], settings("round_robin")).await;
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let b: Value = r.json().await.unwrap();
    assert!(b["error"]["message"].is_string());
    assert_eq!(stats(e1).await + stats(e2).await, 1);
}

#[tokio::test]
async fn a_hung_engine_times_out_with_504() {
    let hung = mock("m", ModelKind::Embedding, 0, "hang").await;
    let s = Settings::load(
        None,
        false,
        [("TRIDENT_REQUEST_TIMEOUT_SECS".to_string(), "1".to_string())],
        &[],
    )
    .unwrap();
    let (base, _state) = gateway("embedding", vec![hung], s).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"input": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_stream() {
    let port = mock("m", ModelKind::Chat, 0, "tokens=1000,token_delay_ms=20").await;
    let (base, state) = gateway("chat", vec![port], settings("round_robin")).await;
    let mut r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    r.chunk().await.unwrap().unwrap();
    let replica = state.routes.load().models[0].replicas[0].clone();
    assert_eq!(
        replica
            .outstanding
            .load(std::sync::atomic::Ordering::Acquire),
        1
    );
    assert_eq!(state.inflight.count(), 1);
    drop(r);
    // The 20 s stream is abandoned at once: the slot and the in-flight count are released.
    let released = super::poll(Duration::from_secs(3), || async {
        (replica
            .outstanding
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
            && state.inflight.count() == 0)
            .then_some(())
    })
    .await;
    assert!(released.is_some());
}
