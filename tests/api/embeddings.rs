//! `/v1/embeddings` on the real MiniLM weights through HTTP.

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::common::*;

/// One shared MiniLM engine (f32) for the tests that do not need special settings.
pub async fn minilm_engine() -> Server {
    static S: OnceCell<Server> = OnceCell::const_new();
    S.get_or_init(|| async {
        start_engine(
            "minilm",
            json!({"path": minilm(), "type": "embedding", "port": 1, "dtype": "float32",
                   "aliases": ["text-embedding-3-small"]}),
        )
        .await
    })
    .await
    .clone()
}

/// A MiniLM engine that reads token-id inputs in its own vocabulary (`token_ids`).
pub async fn minilm_ids_engine() -> Server {
    static S: OnceCell<Server> = OnceCell::const_new();
    S.get_or_init(|| async {
        start_engine(
            "minilm-ids",
            json!({"path": minilm(), "type": "embedding", "port": 1, "dtype": "float32",
                   "token_ids": "model_vocab"}),
        )
        .await
    })
    .await
    .clone()
}

pub async fn embed(s: &Server, body: Value) -> Vec<Vec<f32>> {
    let (status, _, v) = call(s, "/v1/embeddings", &body).await;
    assert_eq!(status, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            floats(&d["embedding"])
        })
        .collect()
}

#[tokio::test]
async fn response_shape_usage_and_unit_vectors() {
    let s = minilm_engine().await;
    let (status, _, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": ["hello world", "a second, longer sentence here"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let e = floats(&data[0]["embedding"]);
    assert_eq!(e.len(), 384);
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "normalised per modules.json, got {norm}"
    );
    // "hello world" is [CLS] hello world [SEP] = 4 tokens; the other is longer.
    let used = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(used > 8, "usage {used}");
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"]);
}

#[tokio::test]
async fn alias_string_input_and_batches_match_single_inputs() {
    let s = minilm_engine().await;
    let texts = [
        "short",
        "a considerably longer sentence that needs more tokens than the first one does",
        "Grüße aus Zürich, 東京タワー 🚀",
    ];
    let batch = embed(
        &s,
        json!({"model": "text-embedding-3-small", "input": texts}),
    )
    .await;
    for (i, t) in texts.iter().enumerate() {
        let one = embed(&s, json!({"model": "minilm", "input": t})).await;
        let c = cosine(&one[0], &batch[i]);
        assert!(c > 0.99999, "input {i}: batched vs alone cosine {c}");
    }
    let related = cosine(&batch[0], &batch[1]);
    assert!(related < 0.99, "different texts must differ ({related})");
}

#[tokio::test]
async fn token_ids_base64_and_dimensions() {
    let s = minilm_engine().await;
    let (status, _, tok) = call(
        &s,
        "/tokenize",
        &json!({"model": "minilm", "prompt": "the quick brown fox"}),
    )
    .await;
    assert_eq!(status, 200, "{tok}");
    let ids = tok["tokens"].clone();
    assert_eq!(tok["count"], ids.as_array().unwrap().len());
    let from_text = embed(
        &s,
        json!({"model": "minilm", "input": "the quick brown fox"}),
    )
    .await;
    // Ids in the model's own vocabulary embed like the text where the entry allows them…
    let ids_engine = minilm_ids_engine().await;
    let from_ids = embed(
        &ids_engine,
        json!({"model": "minilm-ids", "input": ids.clone()}),
    )
    .await;
    assert!(cosine(&from_text[0], &from_ids[0]) > 0.99999);
    // …and are refused by default: they could be tiktoken's.
    let (status, headers, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": ids}),
    )
    .await;
    let err = assert_envelope(status, &headers, &v, 400);
    assert_eq!(
        (err["param"].as_str(), err["code"].as_str()),
        (Some("input"), Some("token_ids_not_accepted"))
    );

    let (status, _, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": "the quick brown fox", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200);
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, from_text[0]);

    let short = embed(
        &s,
        json!({"model": "minilm", "input": "the quick brown fox", "dimensions": 64}),
    )
    .await;
    assert_eq!(short[0].len(), 64);
    let norm: f32 = short[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    let prefix_cos = cosine(&short[0], &from_text[0][..64]);
    assert!(
        prefix_cos > 0.99999,
        "truncate then renormalise ({prefix_cos})"
    );

    let (status, _, d) = call(
        &s,
        "/detokenize",
        &json!({"model": "minilm", "tokens": tok["tokens"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        d["prompt"].as_str().unwrap().contains("quick brown fox"),
        "{d}"
    );
}

#[tokio::test]
async fn long_inputs_truncate_at_256_unless_asked_not_to() {
    let s = minilm_engine().await;
    let long = "word ".repeat(400);
    let (status, _, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": long}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["usage"]["prompt_tokens"], 256,
        "sentence_bert_config max_seq_length is 256"
    );
    let (status, headers, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": long, "truncate": false}),
    )
    .await;
    let err = assert_envelope(status, &headers, &v, 400);
    assert_eq!(err["param"], "input");
}

#[tokio::test]
async fn input_limits_and_bad_values() {
    let s = minilm_engine().await;
    let many: Vec<String> = (0..10_000).map(|i| format!("text {i}")).collect();
    let cases = [
        (json!({"model": "minilm", "input": []}), 400, "input"),
        (json!({"model": "minilm", "input": many}), 400, "input"),
        (json!({"model": "minilm", "input": [null]}), 400, "input"),
        (json!({"model": "minilm", "input": [[1, -2]]}), 400, "input"),
        (
            json!({"model": "minilm", "input": [[101, 102]]}),
            400,
            "input",
        ),
        (
            json!({"model": "minilm", "input": "x", "dimensions": 0}),
            400,
            "dimensions",
        ),
        (
            json!({"model": "minilm", "input": "x", "dimensions": 385}),
            400,
            "dimensions",
        ),
        (
            json!({"model": "minilm", "input": "x", "encoding_format": "int8"}),
            400,
            "encoding_format",
        ),
        (json!({"model": "minilm"}), 400, "input"),
        (json!({"model": "nope", "input": "x"}), 404, "model"),
    ];
    for (body, want, param) in cases {
        let (status, headers, v) = call(&s, "/v1/embeddings", &body).await;
        let err = assert_envelope(status, &headers, &v, want);
        assert_eq!(err["param"], param, "{v}");
    }
    let (status, headers, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "gpt-x", "input": "x"}),
    )
    .await;
    assert_eq!(
        assert_envelope(status, &headers, &v, 404)["code"],
        "model_not_found"
    );
    let texts: Vec<String> = (0..2048).map(|i| format!("t{i}")).collect();
    let ok = embed(&s, json!({"model": "minilm", "input": texts})).await;
    assert_eq!(ok.len(), 2048, "2048 inputs are allowed");
    // Where ids are accepted, an id past MiniLM's 30522 is refused naming the input.
    let ids = minilm_ids_engine().await;
    let (status, headers, v) = call(
        &ids,
        "/v1/embeddings",
        &json!({"model": "minilm-ids", "input": [[101, 999999, 102]]}),
    )
    .await;
    let err = assert_envelope(status, &headers, &v, 400);
    assert_eq!(err["param"], "input");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("outside the vocabulary"),
        "{v}"
    );
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    let s = start_engine(
        "small-queue",
        json!({"path": minilm(), "type": "embedding", "port": 1, "max_queue": 2}),
    )
    .await;
    let (status, headers, v) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "small-queue", "input": ["a", "b", "c"]}),
    )
    .await;
    let err = assert_envelope(status, &headers, &v, 429);
    assert_eq!(err["code"], "queue_full");
    assert!(headers.get("retry-after").is_some());
    let (status, _, _) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "small-queue", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(status, 200, "two inputs fit");
    let metrics = crate::common::get_text(&s.url("/metrics")).await;
    assert!(
        metric_value(
            &metrics,
            "trident_rejected_requests_total",
            &[("reason", "queue_full")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn abandoned_requests_never_reach_the_model() {
    let s = start_engine(
        "disconnect",
        json!({"path": minilm(), "type": "embedding", "port": 1}),
    )
    .await;
    // Occupy the model thread with one long batch…
    let long: Vec<String> = (0..128)
        .map(|i| format!("{i} {}", "token ".repeat(300)))
        .collect();
    let busy = {
        let s = s.clone();
        tokio::spawn(async move {
            call(
                &s,
                "/v1/embeddings",
                &json!({"model": "disconnect", "input": long}),
            )
            .await
        })
    };
    // Wait until the model thread has taken the first batch of that request…
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = crate::common::get_text(&s.url("/metrics")).await;
        if metric_value(&m, "trident_batch_size_count", &[("model", "disconnect")]) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the long request never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // …then queue a request whose client gives up while it waits.
    let gave_up = client()
        .post(s.url("/v1/embeddings"))
        .timeout(std::time::Duration::from_millis(100))
        .json(&json!({"model": "disconnect", "input": ["never", "runs"]}))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "the client must have timed out: {gave_up:?}"
    );
    let (status, _, _) = busy.await.unwrap();
    assert_eq!(status, 200);
    // The next batch drops the abandoned items; a fresh request forces that pass.
    let (status, _, _) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "disconnect", "input": "after"}),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = crate::common::get_text(&s.url("/metrics")).await;
    let dropped = metric_value(
        &metrics,
        "trident_rejected_requests_total",
        &[("reason", "disconnected")],
    );
    assert_eq!(
        dropped, 2.0,
        "both abandoned inputs were dropped before the model"
    );
    // Every input that reached the model: the 128 long ones and "after", never the 2 abandoned.
    let ran = metric_value(
        &metrics,
        "trident_batch_size_sum",
        &[("model", "disconnect")],
    );
    assert_eq!(ran, 129.0, "abandoned inputs ran in a batch");
}

#[tokio::test]
async fn metrics_have_the_schema_names() {
    let s = minilm_engine().await;
    let _ = embed(&s, json!({"model": "minilm", "input": "count me"})).await;
    let text = crate::common::get_text(&s.url("/metrics")).await;
    for name in [
        "trident_requests_total",
        "trident_request_duration_seconds",
        "trident_queue_depth",
        "trident_queue_wait_seconds",
        "trident_batch_size",
        "trident_batch_tokens",
        "trident_prompt_tokens_total",
        "trident_model_ready",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(
        metric_value(
            &text,
            "trident_requests_total",
            &[("route", "/v1/embeddings"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        !text.contains("model=\"nope\""),
        "unknown model names must not create series"
    );
}
