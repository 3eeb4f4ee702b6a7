//! API keys, per-model concurrency limits, slow clients and the merged `/metrics`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{client, get_json, Appliance, Opts};
use crate::common::{assert_envelope, metric_value};

const KEYS: &[&str] = &["sk-alpha-123", "sk-beta-456"];

#[tokio::test]
async fn only_exact_bearer_keys_pass_and_keys_never_leak() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            api_keys: KEYS,
            ..Default::default()
        },
    )
    .await;
    let body = json!({"input": "a"});
    let call = |auth: Option<String>, query: &str| {
        let mut rb = client()
            .post(app.url(&format!("/v1/embeddings{query}")))
            .json(&body);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        async move {
            let r = rb.send().await.unwrap();
            let (s, h) = (r.status().as_u16(), r.headers().clone());
            let b: Value = r.json().await.unwrap_or(Value::Null);
            (s, h, b)
        }
    };
    let bad: Vec<(Option<String>, &str)> = vec![
        (None, ""),
        (Some("Bearer sk-wrong".into()), ""),
        (Some("Bearer sk-alpha".into()), ""),
        (Some("Bearer sk-alpha-1234".into()), ""),
        (Some("Bearer ".into()), ""),
        (Some("Basic sk-alpha-123".into()), ""),
        (Some("sk-alpha-123".into()), ""),
        (None, "?api_key=sk-alpha-123"),
    ];
    for (auth, query) in bad {
        let (s, h, b) = call(auth.clone(), query).await;
        let err = assert_envelope(s, &h, &b, 401);
        assert_eq!(err["code"], "invalid_api_key", "{auth:?}{query}");
        assert!(!b.to_string().contains("sk-alpha"), "key echoed: {b}");
    }
    for key in KEYS {
        let (s, _, b) = call(Some(format!("Bearer {key}")), "").await;
        assert_eq!(s, 200, "{key}: {b}");
    }
    // Liveness and readiness need no key; everything else does.
    for path in ["/health", "/ready"] {
        assert_eq!(
            client().get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for path in ["/metrics", "/v1/models", "/system/info"] {
        assert_eq!(
            client().get(app.url(path)).send().await.unwrap().status(),
            401,
            "{path}"
        );
    }
    let metrics = client()
        .get(app.url("/metrics"))
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info = get_json(&app, "/system/info", Some(KEYS[1]))
        .await
        .to_string();
    for text in [&metrics, &info, &app.log_text()] {
        for k in KEYS {
            assert!(!text.contains(k), "a key leaked");
        }
    }
    assert!(
        metric_value(
            &metrics,
            "trident_rejected_requests_total",
            &[("reason", "unauthorized")]
        ) >= 8.0
    );
}

#[tokio::test]
async fn metrics_can_be_public() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            api_keys: KEYS,
            env: &[("TRIDENT_METRICS_PUBLIC", "true")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        client()
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(app.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn a_full_model_answers_429_with_retry_after() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding", "max_concurrent_requests": 1}}),
        Opts {
            behaviour: Some(json!({"embed": "latency_ms=400"})),
            ..Default::default()
        },
    )
    .await;
    let calls = (0..3).map(|_| {
        let rb = client()
            .post(app.url("/v1/embeddings"))
            .json(&json!({"input": "a"}));
        async move {
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").cloned())
        }
    });
    let mut results = futures::future::join_all(calls).await;
    results.sort_by_key(|r| r.0);
    // One runs, one waits for the slot, the third finds the queue full.
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    assert_eq!(results[2].1.as_ref().unwrap(), "1");
}

#[tokio::test]
async fn a_slowloris_connection_is_closed() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            env: &[("TRIDENT_HEADER_READ_TIMEOUT_SECS", "1")],
            ..Default::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Trickle a header byte now and then, never finishing the head.
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                n = s.read(&mut buf) => return n.unwrap_or(0),
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    if s.write_all(b"X").await.is_err() {
                        return 0;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn metrics_merge_gateway_and_engine_series() {
    let app = Appliance::start(
        json!({"chat": {"type": "chat", "replicas": 2}, "embed": {"type": "embedding"}}),
        Opts::default(),
    )
    .await;
    for _ in 0..4 {
        let r = client()
            .post(app.url("/v1/embeddings"))
            .json(&json!({"input": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = crate::common::get_text(&app.url("/metrics")).await;
    assert_eq!(
        text.matches("# TYPE trident_requests_total ").count(),
        1,
        "{text}"
    );
    let gw = [
        ("model", "embed"),
        ("component", "gateway"),
        ("status", "200"),
    ];
    assert_eq!(
        metric_value(&text, "trident_requests_total", &gw),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "trident_requests_total",
            &[("model", "embed"), ("component", "engine")]
        ),
        4.0
    );
    // Two replicas of chat: each engine's series is told apart by `replica`.
    assert!(text.contains("replica=\"1\""), "{text}");
    // The gateway's own gauges from the routing table: readiness per model (stays while an
    // engine is down), restart/retry/ejection counters at 0 from the first scrape, its
    // process figures (Linux).
    let gw_ready = |m: &str| {
        metric_value(
            &text,
            "trident_model_ready",
            &[("model", m), ("component", "gateway")],
        )
    };
    assert_eq!((gw_ready("chat"), gw_ready("embed")), (1.0, 1.0), "{text}");
    for family in [
        "trident_engine_restarts_total",
        "trident_upstream_retries_total",
        "trident_upstream_ejections_total",
    ] {
        assert!(
            text.contains(&format!(
                "{family}{{model=\"embed\",component=\"gateway\"}} 0"
            )),
            "{family}: {text}"
        );
    }
    assert!(text.contains("# TYPE trident_gateway_inflight_requests gauge"));
    #[cfg(target_os = "linux")]
    assert!(
        metric_value(&text, "process_open_fds", &[("component", "gateway")]) > 0.0,
        "{text}"
    );
}

/// `trident top --once` against a running gateway: one frame with a row per model, the
/// gateway's request rate over the interval; without the key it says so and exits 1.
#[tokio::test]
async fn top_prints_one_frame_from_the_gateway_metrics() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}, "chat": {"type": "chat"}}),
        Opts {
            api_keys: KEYS,
            ..Default::default()
        },
    )
    .await;
    let url = app.url("/metrics");
    let top = |key: Option<&str>| {
        let mut cmd = tokio::process::Command::new(super::EXE);
        cmd.args(["top", "--once", "--interval-secs", "1", "--url", &url]);
        if let Some(k) = key {
            cmd.args(["--api-key", k]);
        }
        cmd.output()
    };
    let (out, ()) = tokio::join!(top(Some(KEYS[0])), async {
        // Requests land between the two scrapes of the frame.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..5 {
            let r = client()
                .post(app.url("/v1/embeddings"))
                .bearer_auth(KEYS[0])
                .json(&json!({"model": "embed", "input": "a"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    let out = out.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |m: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(m))
            .unwrap_or_else(|| panic!("no row for {m}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let embed = row("embed");
    assert_eq!(embed[1..3], ["embedding", "ready"], "{text}");
    let rate: f64 = embed[3].parse().unwrap();
    assert!(rate > 0.0, "5 requests within the interval: {text}");
    assert_eq!(row("chat")[2], "ready", "{text}");
    let denied = top(None).await.unwrap();
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("HTTP 401"));
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_idle_keep_alive_ones_close() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            env: &[
                ("TRIDENT_MAX_CONNECTIONS", "3"),
                ("TRIDENT_HEADER_READ_TIMEOUT_SECS", "2"),
            ],
            ..Default::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // The readiness polls' pooled connections go idle and the gateway closes them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // One served request on a keep-alive connection, then two silent connections: the cap.
    let mut served = tokio::net::TcpStream::connect(&addr).await.unwrap();
    served
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = served.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_from = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The fourth is answered 503 in the error envelope and closed, unread.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut answer))
        .await
        .expect("the refused connection was not closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    // The idle keep-alive connection is closed after the header timeout (2 s), not held.
    let eof = tokio::time::timeout(Duration::from_secs(5), served.read(&mut buf))
        .await
        .expect("idle keep-alive connection still open after 5 s");
    assert_eq!(eof.unwrap_or(0), 0);
    let idle_for = idle_from.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1500),
        "closed after {idle_for:?}"
    );
    // With the idle connections gone, new clients are served again, and /metrics counted.
    drop(silent);
    let text = poll_metrics_after_close(&app).await;
    assert!(metric_value(&text, "trident_gateway_refused_connections_total", &[]) >= 1.0);
    // The scrape's own connection is open while the gauge is sampled.
    assert!(metric_value(&text, "trident_gateway_open_connections", &[]) >= 1.0);
}

/// `/metrics`, retried while the gateway is still at its connection cap.
async fn poll_metrics_after_close(app: &Appliance) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client().get(app.url("/metrics")).send().await {
            if r.status() == 200 {
                return r.text().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "/metrics not served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
