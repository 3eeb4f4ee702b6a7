//! Balancing over replicas with one slow replica.

use std::collections::HashMap;

use serde_json::json;

use super::{client, Appliance, Opts};

/// Sends `n` requests with `concurrency` workers; counts answers per replica.
async fn spread(app: &Appliance, n: usize, concurrency: usize) -> HashMap<String, usize> {
    app.wait_every_replica().await;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        let url = app.url("/v1/chat/completions");
        async move {
            let mut seen = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = client()
                    .post(&url)
                    .json(&json!({"model": "chat", "messages": []}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                seen.push(r.headers()["x-mock-replica"].to_str().unwrap().to_string());
            }
            seen
        }
    });
    let mut counts = HashMap::new();
    for r in futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
    {
        *counts.entry(r).or_insert(0) += 1;
    }
    counts
}

async fn fast_share(balance: &str) -> f64 {
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "replicas": 2}}),
        Opts {
            behaviour: Some(json!({"chat/1": "latency_ms=150"})),
            env: &[("TRIDENT_BALANCE", balance)],
            ..Default::default()
        },
    )
    .await;
    let counts = spread(&app, 60, 4).await;
    let fast = counts.get("0").copied().unwrap_or(0);
    fast as f64 / 60.0
}

#[tokio::test]
async fn least_outstanding_sends_most_traffic_to_the_fast_replica() {
    let share = fast_share("least_outstanding").await;
    assert!(share >= 0.75, "fast replica got only {share:.2}");
}

#[tokio::test]
async fn least_latency_sends_most_traffic_to_the_fast_replica() {
    let share = fast_share("least_latency").await;
    assert!(share >= 0.75, "fast replica got only {share:.2}");
}

#[tokio::test]
async fn round_robin_alternates() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "replicas": 2}}),
        Opts {
            env: &[("TRIDENT_BALANCE", "round_robin")],
            ..Default::default()
        },
    )
    .await;
    let counts = spread(&app, 10, 1).await;
    assert_eq!((counts["0"], counts["1"]), (5, 5));
}
