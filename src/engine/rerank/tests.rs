//! Handler tests against a fake backend whose scores are known in closed form: every
//! shape, both scoring modes, the error table and the queue bound.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::ModelKind;
use crate::engine::backend::{EncoderMeta, PairTokens, PreparedQuery};
use crate::engine::common::{self, EngineCommon};
use crate::engine::embed::EncoderRuntime;
use crate::engine::encoder_queue::{BatchLimits, EncoderQueue, QueueMetrics};
use crate::metrics::Metrics;
use crate::models::ModelError;

const VOCAB: u32 = 100;

/// Words map to ids 10..100; `[1] words [2]` for a text, `[1] q [2] d [2]` for a pair.
/// Pair logit: document words found in the query, minus one. Vectors: word counts.
struct Fake {
    cross: bool,
    max_len: usize,
    /// Queries prepared (tokenised) so far.
    queries: std::sync::atomic::AtomicUsize,
}

fn word_ids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| {
            10 + w
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                % (VOCAB - 10)
        })
        .collect()
}

impl EncoderBackend for Fake {
    fn meta(&self) -> EncoderMeta {
        EncoderMeta {
            model_type: "fake".into(),
            max_len: self.max_len,
            hidden_size: VOCAB as usize,
            cross_encoder: self.cross,
            dtype: "f32".into(),
            pooling: "mean".into(),
        }
    }
    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, ModelError> {
        let mut w = word_ids(text);
        if w.len() + 2 > self.max_len {
            if !truncate {
                return Err(ModelError::Input("too long".into()));
            }
            w.truncate(self.max_len - 2);
        }
        Ok([vec![1], w, vec![2]].concat())
    }
    fn prepare_query(&self, query: &str) -> Result<PreparedQuery, ModelError> {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(PreparedQuery::text(query))
    }
    fn encode_pair(&self, query: &str, doc: &str) -> Result<PairTokens, ModelError> {
        let (mut q, mut d) = (word_ids(query), word_ids(doc));
        let budget = self.max_len - 3;
        q.truncate(budget);
        d.truncate(budget - q.len());
        let ids = [vec![1], q.clone(), vec![2], d.clone(), vec![2]].concat();
        let type_ids = [vec![0; q.len() + 2], vec![1; d.len() + 1]].concat();
        Ok(PairTokens { ids, type_ids })
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
        Ok(batch.iter().map(|ids| bag(ids)).collect())
    }
    fn embed_unnormalized(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed(batch)
    }
    fn token_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        Ok(batch
            .iter()
            .map(|ids| ids.iter().map(|&i| bag(&[i])).collect())
            .collect())
    }
    fn score(&self, batch: &[&PairTokens]) -> Result<Vec<f32>, ModelError> {
        Ok(batch.iter().map(|p| pair_logit(p)).collect())
    }
}

fn bag(ids: &[u32]) -> Vec<f32> {
    let mut v = vec![0.0; VOCAB as usize];
    for &i in ids.iter().filter(|&&i| i >= 10) {
        v[i as usize] += 1.0;
    }
    v
}

fn pair_logit(p: &PairTokens) -> f32 {
    let split = p
        .type_ids
        .iter()
        .position(|&t| t == 1)
        .unwrap_or(p.ids.len());
    let (q, d) = p.ids.split_at(split);
    d.iter().filter(|&&i| i >= 10 && q.contains(&i)).count() as f32 - 1.0
}

fn app(cross: bool, capacity: usize) -> Router {
    app_and_fake(cross, capacity).0
}

fn app_and_fake(cross: bool, capacity: usize) -> (Router, Arc<Fake>) {
    let fake = Arc::new(Fake {
        cross,
        max_len: 12,
        queries: Default::default(),
    });
    let backend: Arc<dyn EncoderBackend> = fake.clone();
    let metrics = Metrics::new();
    let common = EngineCommon::new(
        "rr",
        ModelKind::Rerank,
        vec!["alias".into()],
        metrics.clone(),
    );
    let queue = EncoderQueue::start(
        backend.clone(),
        capacity,
        BatchLimits {
            max_batch_tokens: 64,
            max_batch_size: 4,
        },
        QueueMetrics {
            metrics,
            model: "rr".into(),
            kind: "rerank",
        },
        common.watch.clone(),
    );
    common.set_ready(
        Arc::new(EncoderRuntime { backend, queue }),
        common::CardFacts::default(),
    );
    let state = EncoderState {
        common: common.clone(),
        options: Default::default(),
    };
    (common::finish_router(routes(state), common, 1 << 20), fake)
}

async fn post(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-6
}

#[tokio::test]
async fn v1_cross_encoder_sigmoid_sorted_top_n_with_documents() {
    let app = app(true, 64);
    let body = json!({"model": "rr", "query": "cat sat", "documents": ["dog ran", {"text": "cat sat mat"}, "cat"],
                      "top_n": 2, "return_documents": true});
    let (st, v) = post(&app, "/v1/rerank", body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0]["index"].as_u64(), r[1]["index"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(close(&r[0]["relevance_score"], sigmoid(1.0)), "{v}");
    assert!(close(&r[1]["relevance_score"], sigmoid(0.0)), "{v}");
    assert_eq!(r[0]["document"], json!({"text": "cat sat mat"}));
    // Pair lengths: 2 + 2 + 3 specials, 2 + 3 + 3, 2 + 1 + 3.
    assert_eq!(v["usage"]["prompt_tokens"], 7 + 8 + 6);
    assert_eq!(v["model"], "rr");
    assert!(v["id"].as_str().unwrap().starts_with("rerank-"));
    let raw =
        json!({"query": "cat sat", "documents": ["dog ran", "cat sat mat"], "raw_scores": true});
    let (_, v) = post(&app, "/v1/rerank", raw).await;
    assert!(close(&v["results"][0]["relevance_score"], 1.0), "{v}");
    assert!(close(&v["results"][1]["relevance_score"], -1.0), "{v}");
    assert!(v["results"][0].get("document").is_none());
}

#[tokio::test]
async fn the_query_is_tokenised_once_per_request_not_per_document() {
    let (app, fake) = app_and_fake(true, 64);
    let docs: Vec<String> = (0..20).map(|i| format!("doc {i}")).collect();
    let (st, v) = post(&app, "/v1/rerank", json!({"query": "q", "documents": docs})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 20);
    assert_eq!(fake.queries.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn bi_encoder_scores_are_cosines_and_ignore_raw_scores() {
    let app = app(false, 64);
    let docs = ["dog ran", "cat sat mat", "cat"];
    for raw in [false, true] {
        let body = json!({"query": "cat sat", "documents": docs, "raw_scores": raw});
        let (st, v) = post(&app, "/v1/rerank", body).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let q = bag(&word_ids("cat sat"));
        for r in v["results"].as_array().unwrap() {
            let i = r["index"].as_u64().unwrap() as usize;
            let want = cosine(&q, &bag(&word_ids(docs[i])));
            assert!(close(&r["relevance_score"], want), "{v}");
        }
        assert_eq!(v["results"][0]["index"], 1);
        assert_eq!(v["usage"]["prompt_tokens"], 4 + 4 + 5 + 3);
    }
}

#[tokio::test]
async fn v2_tei_and_score_shapes() {
    let app = app(true, 64);
    let (st, v) = post(
        &app,
        "/v2/rerank",
        json!({"query": "a b", "documents": ["b", "a b"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["meta"],
        json!({"api_version": {"version": "2"}, "billed_units": {"search_units": 1}})
    );
    assert_eq!(v["results"][0]["index"], 1);
    assert!(v.get("usage").is_none());

    let tei = json!({"query": "a b", "texts": ["b", "a b", "c"], "return_text": true, "raw_scores": true});
    let (st, v) = post(&app, "/rerank", tei).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let arr = v.as_array().unwrap();
    let idx: Vec<u64> = arr.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![1, 0, 2]);
    assert!(
        close(&arr[0]["score"], 1.0) && close(&arr[2]["score"], -1.0),
        "{v}"
    );
    assert_eq!(arr[0]["text"], "a b");

    // Without `texts`, /rerank speaks the v1 shape.
    let (_, v) = post(&app, "/rerank", json!({"query": "a", "documents": ["a"]})).await;
    assert!(
        close(&v["results"][0]["relevance_score"], sigmoid(0.0)),
        "{v}"
    );

    let (st, v) = post(
        &app,
        "/v1/score",
        json!({"model": "alias", "text_1": ["a b", "c"], "text_2": ["a b", "c"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "alias");
    assert_eq!(v["data"][0]["object"], "score");
    assert!(
        close(&v["data"][0]["score"], sigmoid(1.0)) && close(&v["data"][1]["score"], sigmoid(0.0)),
        "{v}"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 7 + 5);
    let (_, v) = post(
        &app,
        "/v1/score",
        json!({"text_1": "a", "text_2": ["x", "a"]}),
    )
    .await;
    let idx: Vec<u64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1], "score keeps pair order");
    assert!(close(&v["data"][1]["score"], sigmoid(0.0)), "{v}");
}

#[tokio::test]
async fn error_table() {
    let app = app(true, 64);
    let many: Vec<String> = (0..5000).map(|i| format!("d{i}")).collect();
    let cases = [
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}),
            400,
            Some("documents"),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [null]}),
            400,
            Some("documents"),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a", 1]}),
            400,
            Some("documents"),
        ),
        (
            "/v1/rerank",
            json!({"documents": ["a"]}),
            400,
            Some("query"),
        ),
        (
            "/v1/rerank",
            json!({"query": "", "documents": ["a"]}),
            400,
            Some("query"),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": many}),
            400,
            Some("documents"),
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": -1}),
            400,
            Some("top_n"),
        ),
        (
            "/v1/rerank",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
            404,
            Some("model"),
        ),
        (
            "/v2/rerank",
            json!({"query": "q", "documents": [{"x": 1}]}),
            400,
            Some("documents"),
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": [null]}),
            400,
            Some("texts"),
        ),
        (
            "/rerank",
            json!({"query": "q", "texts": ["w w w w w w w w w w w"], "truncate": false}),
            400,
            Some("texts"),
        ),
        (
            "/rerank",
            json!({"model": "nope", "query": "q", "texts": ["a"]}),
            404,
            Some("model"),
        ),
        (
            "/v1/score",
            json!({"text_1": ["a", "b"], "text_2": ["a"]}),
            400,
            Some("text_2"),
        ),
        (
            "/v1/score",
            json!({"text_1": null, "text_2": ["a"]}),
            400,
            Some("text_1"),
        ),
    ];
    for (path, body, status, param) in cases {
        let (st, v) = post(&app, path, body.clone()).await;
        assert_eq!(st.as_u16(), status, "{path} {body}: {v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{path} {body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // top_n above the list returns everything; a long document is truncated by default.
    let body =
        json!({"query": "q", "documents": ["a", "b", "w w w w w w w w w w w w w w"], "top_n": 99});
    let (st, v) = post(&app, "/v1/rerank", body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn full_queue_is_429_and_token_routes_remain() {
    let app = app(true, 2);
    let (st, v) = post(
        &app,
        "/v1/rerank",
        json!({"query": "q", "documents": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "queue_full");
    let (st, v) = post(&app, "/tokenize", json!({"prompt": "a b"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 4);
}
