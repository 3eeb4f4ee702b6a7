//! Cohere's `/v1/embed` and `/v2/embed` and TEI's `/embed`, `/embed_all` and `/info` on the
//! real MiniLM engine: every answer must agree with `/v1/embeddings` (the same core), the
//! compressed types with the float vectors, `/embed_all`'s token states with the pooled
//! vector, plus each endpoint's error table.

use serde_json::{json, Value};

use crate::common::*;
use crate::embeddings::{embed, minilm_engine};

const TEXTS: [&str; 3] = [
    "trident answers Cohere clients",
    "a second text, a little longer, about vector databases and retrieval",
    "Grüße aus Zürich 🚀",
];

async fn ok(s: &Server, path: &str, body: Value) -> Value {
    let (status, _, v) = call(s, path, &body).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[tokio::test]
async fn cohere_v2_types_agree_with_the_openai_floats() {
    let s = minilm_engine().await;
    let want = embed(&s, json!({"model": "minilm", "input": TEXTS})).await;
    let v = ok(
        &s,
        "/v2/embed",
        json!({"model": "minilm", "texts": TEXTS, "input_type": "search_document",
               "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"]}),
    )
    .await;
    assert_eq!(v["response_type"], "embeddings_by_type");
    assert_eq!(v["texts"], json!(TEXTS));
    assert_eq!(v["meta"]["api_version"]["version"], "2");
    let (_, _, usage) = call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": TEXTS}),
    )
    .await;
    assert_eq!(
        v["meta"]["billed_units"]["input_tokens"],
        usage["usage"]["prompt_tokens"]
    );
    let e = &v["embeddings"];
    for (i, w) in want.iter().enumerate() {
        let f = floats(&e["float"][i]);
        assert!(
            close(&f, w, 1e-5),
            "input {i}: float differs from /v1/embeddings"
        );
        // int8: round(127 x) of the unit vector, so within half a step of it.
        let q = ints(&e["int8"][i]);
        assert_eq!(q.len(), 384);
        for (qj, xj) in q.iter().zip(w) {
            assert!(
                (*qj as f32 / 127.0 - xj).abs() <= 0.5 / 127.0 + 1e-4,
                "{qj} vs {xj}"
            );
        }
        assert_eq!(
            ints(&e["uint8"][i]),
            q.iter().map(|x| x + 128).collect::<Vec<_>>()
        );
        let qf: Vec<f32> = q.iter().map(|&x| x as f32).collect();
        assert!(cosine(&qf, w) > 0.995, "int8 keeps the direction");
        // binary: the sign bits, 48 bytes for 384 dimensions.
        let ub = ints(&e["ubinary"][i]);
        assert_eq!(ub.len(), 48);
        for (j, x) in w.iter().enumerate() {
            let bit = (ub[j / 8] >> (7 - j % 8)) & 1;
            assert_eq!(bit == 1, *x > 0.0, "input {i} dimension {j}");
        }
        assert_eq!(
            ints(&e["binary"][i]),
            ub.iter().map(|b| b - 128).collect::<Vec<_>>()
        );
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e["base64"][i].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(decoded, f);
    }
    // output_dimension: the first 128, renormalised, like `dimensions`.
    let v = ok(
        &s,
        "/v2/embed",
        json!({"model": "minilm", "texts": [TEXTS[0]], "output_dimension": 128}),
    )
    .await;
    let short = embed(
        &s,
        json!({"model": "minilm", "input": TEXTS[0], "dimensions": 128}),
    )
    .await;
    assert!(close(
        &floats(&v["embeddings"]["float"][0]),
        &short[0],
        1e-6
    ));
}

#[tokio::test]
async fn cohere_v1_shapes_and_truncation_sides() {
    let s = minilm_engine().await;
    let want = embed(&s, json!({"model": "minilm", "input": TEXTS})).await;
    let v = ok(&s, "/v1/embed", json!({"model": "minilm", "texts": TEXTS})).await;
    assert_eq!(v["response_type"], "embeddings_floats");
    assert_eq!(v["meta"]["api_version"]["version"], "1");
    assert!(close(&floats(&v["embeddings"][2]), &want[2], 1e-5));
    let v = ok(
        &s,
        "/v1/embed",
        json!({"model": "minilm", "texts": TEXTS, "embedding_types": ["int8"]}),
    )
    .await;
    assert_eq!(v["response_type"], "embeddings_by_type");
    assert_eq!(v["embeddings"]["int8"].as_array().unwrap().len(), 3);

    // 600 one-token words, 254 tokens of room: END embeds apples only, START oceans only.
    let long = format!("{}{}", "apple ".repeat(300), "ocean ".repeat(300));
    let cut = |truncate: &'static str| {
        let (s, long) = (s.clone(), long.clone());
        async move {
            let v = ok(
                &s,
                "/v2/embed",
                json!({"model": "minilm", "texts": [long], "truncate": truncate}),
            )
            .await;
            floats(&v["embeddings"]["float"][0])
        }
    };
    let (end, start) = (cut("END").await, cut("START").await);
    let apples = embed(
        &s,
        json!({"model": "minilm", "input": "apple ".repeat(254)}),
    )
    .await;
    let oceans = embed(
        &s,
        json!({"model": "minilm", "input": "ocean ".repeat(254)}),
    )
    .await;
    let (e, st) = (cosine(&end, &apples[0]), cosine(&start, &oceans[0]));
    assert!(e > 0.999, "END keeps the start ({e}; START: {st})");
    assert!(st > 0.999, "START keeps the end ({st})");
    let (status, headers, v) = call(
        &s,
        "/v2/embed",
        &json!({"model": "minilm", "texts": [long], "truncate": "NONE"}),
    )
    .await;
    assert_eq!(assert_envelope(status, &headers, &v, 400)["param"], "texts");
    // max_tokens: 6 tokens = [CLS] + 4 words + [SEP].
    let v = ok(
        &s,
        "/v2/embed",
        json!({"model": "minilm", "texts": ["one two three four five six seven"], "max_tokens": 6}),
    )
    .await;
    assert_eq!(v["meta"]["billed_units"]["input_tokens"], 6);
    let four = embed(
        &s,
        json!({"model": "minilm", "input": "one two three four"}),
    )
    .await;
    assert!(close(&floats(&v["embeddings"]["float"][0]), &four[0], 1e-5));
}

#[tokio::test]
async fn tei_embed_equals_the_openai_vectors_and_normalize_false_is_raw() {
    let s = minilm_engine().await;
    let want = embed(&s, json!({"model": "minilm", "input": TEXTS})).await;
    let v = ok(&s, "/embed", json!({"inputs": TEXTS})).await;
    let got: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(floats).collect();
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        assert!(close(g, w, 1e-5));
    }
    let one = ok(
        &s,
        "/embed",
        json!({"inputs": TEXTS[0], "normalize": false}),
    )
    .await;
    let raw = floats(&one[0]);
    let norm: f32 = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 0.05,
        "MiniLM's mean-pooled vector is not unit length ({norm})"
    );
    let unit: Vec<f32> = raw.iter().map(|x| x / norm).collect();
    assert!(close(&unit, &want[0], 1e-5));
    let v = ok(&s, "/embed", json!({"inputs": TEXTS[0], "dimensions": 32})).await;
    assert_eq!(floats(&v[0]).len(), 32);
}

#[tokio::test]
async fn tei_embed_all_token_states_mean_pool_to_the_embedding() {
    let s = minilm_engine().await;
    let want = embed(&s, json!({"model": "minilm", "input": TEXTS})).await;
    let v = ok(&s, "/embed_all", json!({"inputs": TEXTS})).await;
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 3);
    for (i, text) in TEXTS.iter().enumerate() {
        let (_, _, tok) = call(&s, "/tokenize", &json!({"prompt": text})).await;
        let rows = all[i].as_array().unwrap();
        assert_eq!(
            rows.len() as u64,
            tok["count"].as_u64().unwrap(),
            "one row per token, no padding"
        );
        let rows: Vec<Vec<f32>> = rows.iter().map(floats).collect();
        assert!(rows.iter().all(|r| r.len() == 384));
        // MiniLM pools by mean, then normalises (modules.json).
        let mut mean = vec![0f32; 384];
        for r in &rows {
            mean.iter_mut()
                .zip(r)
                .for_each(|(m, x)| *m += x / rows.len() as f32);
        }
        assert!(cosine(&mean, &want[i]) > 0.99999, "input {i}");
    }
}

#[tokio::test]
async fn tei_info_reports_the_model() {
    let s = minilm_engine().await;
    let (status, v) = get(&s.base, "/info").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model_id"], "minilm");
    assert_eq!(v["model_dtype"], "float32");
    assert_eq!(v["model_type"], json!({"embedding": {"pooling": "mean"}}));
    assert_eq!(v["max_input_length"], 256);
    assert_eq!(v["max_batch_tokens"], 16384);
    assert_eq!(v["max_client_batch_size"], 2048);
    assert!(v["version"].is_string());
}

#[tokio::test]
async fn error_tables_of_the_new_endpoints() {
    let s = minilm_engine().await;
    let many: Vec<String> = (0..2049).map(|i| format!("t{i}")).collect();
    let cases = [
        (
            "/v2/embed",
            json!({"model": "minilm", "texts": []}),
            400,
            "texts",
        ),
        (
            "/v2/embed",
            json!({"model": "minilm", "texts": [1]}),
            400,
            "texts",
        ),
        (
            "/v2/embed",
            json!({"model": "minilm", "texts": many}),
            400,
            "texts",
        ),
        (
            "/v2/embed",
            json!({"model": "minilm", "texts": ["a"], "embedding_types": ["float16"]}),
            400,
            "embedding_types",
        ),
        (
            "/v2/embed",
            json!({"model": "minilm", "texts": ["a"], "output_dimension": 385}),
            400,
            "output_dimension",
        ),
        (
            "/v2/embed",
            json!({"model": "minilm", "images": ["data:image/png;base64,AA"]}),
            400,
            "images",
        ),
        (
            "/v2/embed",
            json!({"model": "nope", "texts": ["a"]}),
            404,
            "model",
        ),
        ("/v1/embed", json!({"model": "minilm"}), 400, "texts"),
        (
            "/v1/embed",
            json!({"model": "minilm", "texts": ["a"], "truncate": "LEFT"}),
            400,
            "truncate",
        ),
        (
            "/v1/embed",
            json!({"model": "minilm", "texts": ["a"], "input_type": "image"}),
            400,
            "input_type",
        ),
        ("/embed", json!({"inputs": []}), 400, "inputs"),
        ("/embed", json!({"inputs": {"text": "a"}}), 400, "inputs"),
        ("/embed", json!({"inputs": many}), 400, "inputs"),
        ("/embed", json!({"inputs": [[101, 102]]}), 400, "inputs"),
        (
            "/embed",
            json!({"inputs": "a", "dimensions": 400}),
            400,
            "dimensions",
        ),
        (
            "/embed",
            json!({"inputs": "word ".repeat(400), "truncate": false}),
            400,
            "inputs",
        ),
        ("/embed_all", json!({"inputs": []}), 400, "inputs"),
        (
            "/embed_all",
            json!({"inputs": "a", "dimensions": 8}),
            400,
            "dimensions",
        ),
    ];
    for (path, body, want, param) in cases {
        let (status, headers, v) = call(&s, path, &body).await;
        let err = assert_envelope(status, &headers, &v, want);
        assert_eq!(err["param"], param, "{path}: {v}");
    }
    // The engine is still healthy after the table.
    ok(&s, "/embed", json!({"inputs": "still fine"})).await;
}
