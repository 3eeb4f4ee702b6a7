//! Handler tests of every embedding API against a fake backend whose vectors are known in
//! closed form: the shapes, the quantised types against the float answer, truncation
//! sides, TEI's `normalize`, `/embed_all` and `/info`, the token-id policy and the error
//! tables.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::api::types::embeddings::MAX_INPUTS;
use crate::api::types::quantize;
use crate::config::ModelKind;
use crate::engine::backend::{EncoderMeta, PairTokens};
use crate::engine::common::{self, EngineCommon};
use crate::engine::encoder_queue::{BatchLimits, QueueMetrics};
use crate::metrics::Metrics;
use crate::models::ModelError;

const VOCAB: u32 = 100;
const HIDDEN: usize = 8;
const MAX_LEN: usize = 6;

/// Words map to ids 10..100; a text is `[1] words [2]`. A token's state is a fixed
/// function of its id; the pooled vector is the mean of the states, normalised by `embed`.
struct Fake;

fn word_id(w: &str) -> u32 {
    10 + w
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % (VOCAB - 10)
}

fn state(id: u32) -> Vec<f32> {
    (0..HIDDEN)
        .map(|j| ((id as usize * (j + 3)) % 7) as f32 - 3.0)
        .collect()
}

fn mean(ids: &[u32]) -> Vec<f32> {
    let mut v = vec![0.0; HIDDEN];
    for &i in ids {
        v.iter_mut().zip(state(i)).for_each(|(a, b)| *a += b);
    }
    v.iter_mut().for_each(|a| *a /= ids.len().max(1) as f32);
    v
}

impl EncoderBackend for Fake {
    fn meta(&self) -> EncoderMeta {
        EncoderMeta {
            model_type: "fake".into(),
            max_len: MAX_LEN,
            hidden_size: HIDDEN,
            cross_encoder: false,
            dtype: "f32".into(),
            pooling: "mean".into(),
        }
    }
    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, ModelError> {
        let t = if truncate {
            Truncate::End
        } else {
            Truncate::Refuse
        };
        self.encode_text_fit(text, t, None)
    }
    fn encode_text_fit(
        &self,
        text: &str,
        truncate: Truncate,
        max_tokens: Option<usize>,
    ) -> Result<Vec<u32>, ModelError> {
        let mut w: Vec<u32> = text.split_whitespace().map(word_id).collect();
        let room = max_tokens.unwrap_or(MAX_LEN).min(MAX_LEN).saturating_sub(2);
        if w.len() > room {
            match truncate {
                Truncate::Refuse => return Err(ModelError::Input("too long".into())),
                Truncate::End => w.truncate(room),
                Truncate::Start => w = w[w.len() - room..].to_vec(),
            }
        }
        Ok([vec![1], w, vec![2]].concat())
    }
    fn encode_pair(&self, _: &str, _: &str) -> Result<PairTokens, ModelError> {
        Err(ModelError::Unsupported("not a cross-encoder".into()))
    }
    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        Ok(format!("{ids:?}"))
    }
    fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(u32::to_string).collect()
    }
    fn vocab_size(&self) -> usize {
        VOCAB as usize
    }
    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = self.embed_unnormalized(batch)?;
        out.iter_mut().for_each(|v| normalize(v));
        Ok(out)
    }
    fn embed_unnormalized(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(batch.iter().map(|ids| mean(ids)).collect())
    }
    fn token_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        Ok(batch
            .iter()
            .map(|ids| ids.iter().map(|&i| state(i)).collect())
            .collect())
    }
    fn score(&self, _: &[&PairTokens]) -> Result<Vec<f32>, ModelError> {
        Err(ModelError::Unsupported("not a cross-encoder".into()))
    }
}

fn app(options: EmbedOptions) -> Router {
    let backend: Arc<dyn EncoderBackend> = Arc::new(Fake);
    let metrics = Metrics::new();
    let common = EngineCommon::new("emb", ModelKind::Embedding, vec![], metrics.clone());
    let queue = EncoderQueue::start(
        backend.clone(),
        64,
        BatchLimits {
            max_batch_tokens: 64,
            max_batch_size: 4,
        },
        QueueMetrics {
            metrics,
            model: "emb".into(),
            kind: "embedding",
        },
        common.watch.clone(),
    );
    common.set_ready(
        Arc::new(EncoderRuntime { backend, queue }),
        common::CardFacts::default(),
    );
    let state = EncoderState {
        common: common.clone(),
        options: Arc::new(options),
    };
    common::finish_router(routes(state), common, 1 << 20)
}

fn default_app() -> Router {
    app(EmbedOptions::default())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, req).await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// The normalised vector the fake gives `text` (cut at the end).
fn expected(text: &str) -> Vec<f32> {
    let ids = Fake.encode_text(text, true).unwrap();
    Fake.embed(&[&ids]).unwrap().remove(0)
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

const TEXTS: [&str; 2] = ["the cat sat", "dogs run fast today"];

#[tokio::test]
async fn v2_embed_answers_every_type_from_the_same_vectors() {
    let app = default_app();
    let body = json!({"model": "emb", "texts": TEXTS, "input_type": "search_document",
                      "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"]});
    let (st, v) = post(&app, "/v2/embed", body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["response_type"], "embeddings_by_type");
    assert_eq!(v["texts"], json!(TEXTS));
    assert_eq!(v["meta"]["api_version"]["version"], "2");
    // [1] the cat sat [2] and [1] dogs run fast today [2]: 5 + 6 tokens.
    assert_eq!(v["meta"]["billed_units"]["input_tokens"], 11);
    assert!(!v["id"].as_str().unwrap().is_empty());
    let e = &v["embeddings"];
    let (_, openai) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": TEXTS}),
    )
    .await;
    for (i, text) in TEXTS.iter().enumerate() {
        let f = floats(&e["float"][i]);
        assert!(close(&f, &expected(text)), "{f:?}");
        assert!(close(&f, &floats(&openai["data"][i]["embedding"])));
        let q: Vec<i64> = quantize::int8(&f).into_iter().map(i64::from).collect();
        assert_eq!(ints(&e["int8"][i]), q);
        let u: Vec<i64> = ints(&e["uint8"][i]);
        assert_eq!(u, q.iter().map(|x| x + 128).collect::<Vec<_>>());
        let ub = ints(&e["ubinary"][i]);
        assert_eq!(ub.len(), HIDDEN / 8);
        let bits: i64 = f
            .iter()
            .enumerate()
            .filter(|(_, &x)| x > 0.0)
            .map(|(j, _)| 1 << (7 - j))
            .sum();
        assert_eq!(ub, vec![bits]);
        assert_eq!(ints(&e["binary"][i]), vec![bits - 128]);
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
    // Without embedding_types v2 answers floats only.
    let (st, v) = post(&app, "/v2/embed", json!({"texts": ["a b"]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["embeddings"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["float"]
    );
}

#[tokio::test]
async fn v1_embed_is_a_list_without_types_and_by_type_with_them() {
    let app = default_app();
    let (st, v) = post(&app, "/v1/embed", json!({"texts": TEXTS})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["response_type"], "embeddings_floats");
    assert_eq!(v["meta"]["api_version"]["version"], "1");
    assert!(close(&floats(&v["embeddings"][1]), &expected(TEXTS[1])));
    let (st, v) = post(
        &app,
        "/v1/embed",
        json!({"texts": TEXTS, "embedding_types": ["ubinary"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["response_type"], "embeddings_by_type");
    assert_eq!(v["embeddings"]["ubinary"].as_array().unwrap().len(), 2);
    assert!(v["embeddings"].get("float").is_none(), "{v}");
}

#[tokio::test]
async fn cohere_truncation_sides_output_dimension_and_max_tokens() {
    let app = default_app();
    // Six words, room for four: END keeps the first four, START the last four.
    let long = "a b c d e f";
    let first = |body: Value| {
        let app = app.clone();
        async move {
            let (st, v) = post(&app, "/v2/embed", body).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            floats(&v["embeddings"]["float"][0])
        }
    };
    let end = first(json!({"texts": [long]})).await;
    assert!(close(&end, &expected("a b c d")));
    let start = first(json!({"texts": [long], "truncate": "START"})).await;
    assert!(close(&start, &expected("c d e f")));
    let (st, v) = post(
        &app,
        "/v2/embed",
        json!({"texts": [long], "truncate": "NONE"}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "texts");
    // max_tokens 4 leaves room for two words.
    let short = first(json!({"texts": [long], "max_tokens": 4})).await;
    assert!(close(&short, &expected("a b")));
    // output_dimension: the first four values, renormalised.
    let cut = first(json!({"texts": ["the cat sat"], "output_dimension": 4})).await;
    let mut want = expected("the cat sat")[..4].to_vec();
    normalize(&mut want);
    assert!(close(&cut, &want), "{cut:?}");
    let (st, v) = post(
        &app,
        "/v2/embed",
        json!({"texts": ["x"], "output_dimension": 9}),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("output_dimension"))
    );
}

#[tokio::test]
async fn tei_embed_normalizes_by_default_and_not_when_asked() {
    let app = default_app();
    let (st, v) = post(&app, "/embed", json!({"inputs": "the cat sat"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert!(close(&floats(&v[0]), &expected("the cat sat")));
    let ids = Fake.encode_text("the cat sat", true).unwrap();
    let (st, v) = post(
        &app,
        "/embed",
        json!({"inputs": ["the cat sat", "x"], "normalize": false}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(close(&floats(&v[0]), &mean(&ids)), "{v}");
    let (_, v) = post(
        &app,
        "/embed",
        json!({"inputs": "a b c d e f", "truncation_direction": "Left", "dimensions": 2}),
    )
    .await;
    let mut want = expected("c d e f")[..2].to_vec();
    normalize(&mut want);
    assert!(close(&floats(&v[0]), &want), "{v}");
    let (st, v) = post(
        &app,
        "/embed",
        json!({"inputs": "a b c d e f", "truncate": false}),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("inputs"))
    );
}

#[tokio::test]
async fn tei_embed_all_returns_every_token_state_unpadded() {
    let app = default_app();
    let (st, v) = post(&app, "/embed_all", json!({"inputs": ["the cat sat", "x"]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let all = v.as_array().unwrap();
    for (i, text) in ["the cat sat", "x"].iter().enumerate() {
        let ids = Fake.encode_text(text, true).unwrap();
        let rows = all[i].as_array().unwrap();
        assert_eq!(
            rows.len(),
            ids.len(),
            "one row per token, specials included"
        );
        for (row, &id) in rows.iter().zip(&ids) {
            assert_eq!(floats(row), state(id));
        }
    }
    let (st, v) = post(
        &app,
        "/embed_all",
        json!({"inputs": "x", "normalize": true}),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("normalize"))
    );
}

#[tokio::test]
async fn tei_info_describes_the_model_and_the_limits() {
    let app = app(EmbedOptions {
        name: Some("sentence-transformers/fake".into()),
        max_batch_tokens: 4096,
        ..EmbedOptions::default()
    });
    let (st, v) = send(&app, Request::get("/info").body(Body::empty()).unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["model_id"], "sentence-transformers/fake");
    assert_eq!(v["model_dtype"], "float32");
    assert_eq!(v["model_type"], json!({"embedding": {"pooling": "mean"}}));
    assert_eq!(v["max_input_length"], MAX_LEN);
    assert_eq!(v["max_batch_tokens"], 4096);
    assert_eq!(v["max_client_batch_size"], MAX_INPUTS);
    assert_eq!(v["max_concurrent_requests"], DEFAULT_MAX_QUEUE);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (st, v) = send(
        &default_app(),
        Request::get("/info").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((st, &v["model_id"]), (StatusCode::OK, &json!("emb")));
}

#[tokio::test]
async fn token_ids_are_refused_by_default_on_every_route_that_takes_them() {
    let app = default_app();
    for (path, body, param) in [
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": [11, 12]}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": ["a", [11, 12]]}),
            "input",
        ),
        ("/embed", json!({"inputs": [[11, 12]]}), "inputs"),
        ("/embed_all", json!({"inputs": [11, 12]}), "inputs"),
    ] {
        let (st, v) = post(&app, path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
        let e = &v["error"];
        assert_eq!(e["param"], param);
        assert_eq!(e["code"], "token_ids_not_accepted");
        let msg = e["message"].as_str().unwrap();
        for needle in [
            "own vocabulary",
            "tiktoken",
            "check_embedding_ctx_length=False",
            "\"token_ids\": \"model_vocab\"",
        ] {
            assert!(msg.contains(needle), "{path}: {needle} missing in {msg}");
        }
    }
    let (_, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": ["a", [11]]}),
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("'input[1]'"),
        "{v}"
    );
}

#[tokio::test]
async fn model_vocab_token_ids_embed_like_the_text_and_are_checked() {
    let app = app(EmbedOptions {
        token_ids: TokenIds::ModelVocab,
        ..EmbedOptions::default()
    });
    let ids = Fake.encode_text("the cat sat", true).unwrap();
    let (st, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": ids}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(close(
        &floats(&v["data"][0]["embedding"]),
        &expected("the cat sat")
    ));
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    let (st, v) = post(&app, "/embed", json!({"inputs": [ids]})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": [5, VOCAB]}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "input");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("outside the vocabulary"));
    // Too many ids: cut at the end by default, refused with truncate false.
    let long: Vec<u32> = (10..20).collect();
    let (st, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": long}),
    )
    .await;
    assert_eq!(
        (st, &v["usage"]["prompt_tokens"]),
        (StatusCode::OK, &json!(MAX_LEN))
    );
    let (st, v) = post(
        &app,
        "/v1/embeddings",
        json!({"model": "emb", "input": long, "truncate": false}),
    )
    .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (StatusCode::BAD_REQUEST, &json!("input"))
    );
}

#[tokio::test]
async fn error_tables_name_the_parameter_and_never_fail_the_server() {
    let app = default_app();
    let many: Vec<String> = (0..MAX_INPUTS + 1).map(|i| format!("t{i}")).collect();
    let cases = [
        ("/v2/embed", json!({"texts": []}), "texts"),
        ("/v2/embed", json!({"texts": [1, 2]}), "texts"),
        ("/v2/embed", json!({"texts": many}), "texts"),
        (
            "/v2/embed",
            json!({"texts": ["a"], "embedding_types": ["int4"]}),
            "embedding_types",
        ),
        (
            "/v2/embed",
            json!({"texts": ["a"], "truncate": "SIDEWAYS"}),
            "truncate",
        ),
        (
            "/v2/embed",
            json!({"texts": ["a"], "input_type": 7}),
            "input_type",
        ),
        (
            "/v2/embed",
            json!({"inputs": [{"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "inputs",
        ),
        (
            "/v2/embed",
            json!({"model": "other", "texts": ["a"]}),
            "model",
        ),
        ("/v1/embed", json!({"texts": "a"}), "texts"),
        (
            "/v1/embed",
            json!({"texts": ["a"], "images": ["data:x"]}),
            "images",
        ),
        (
            "/v1/embed",
            json!({"texts": ["a"], "embedding_types": [null]}),
            "embedding_types",
        ),
        ("/embed", json!({}), "inputs"),
        ("/embed", json!({"inputs": []}), "inputs"),
        ("/embed", json!({"inputs": [true]}), "inputs"),
        ("/embed", json!({"inputs": many}), "inputs"),
        (
            "/embed",
            json!({"inputs": "a", "dimensions": 0}),
            "dimensions",
        ),
        (
            "/embed",
            json!({"inputs": "a", "dimensions": "8"}),
            "dimensions",
        ),
        (
            "/embed",
            json!({"inputs": "a", "normalize": "yes"}),
            "normalize",
        ),
        (
            "/embed",
            json!({"inputs": "a", "prompt_name": "query"}),
            "prompt_name",
        ),
        ("/embed_all", json!({"inputs": null}), "inputs"),
        (
            "/embed_all",
            json!({"inputs": "a", "truncation_direction": 1}),
            "truncation_direction",
        ),
    ];
    for (path, body, param) in cases {
        let (st, v) = post(&app, path, body.clone()).await;
        let want = if param == "model" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(st, want, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"], param, "{path} {body}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Not JSON, or JSON of the wrong shape, is a 400 in the envelope too.
    for path in ["/v1/embed", "/v2/embed", "/embed", "/embed_all"] {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from("{\"texts\": ["))
            .unwrap();
        let (st, v) = send(&app, req).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(v["error"]["message"].is_string());
        let (st, _) = post(&app, path, json!(["a"])).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path}");
    }
    // The engine still answers.
    let (st, _) = post(&app, "/v2/embed", json!({"texts": ["fine"]})).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn small_work_runs_in_place_and_large_work_off_the_worker() {
    let here = std::thread::current().id();
    let on =
        |bytes| blocking_unless_small(bytes, || Ok::<_, ApiError>(std::thread::current().id()));
    assert_eq!(on(INLINE_TEXT_BYTES).await.unwrap(), here);
    assert_ne!(on(INLINE_TEXT_BYTES + 1).await.unwrap(), here);
}
