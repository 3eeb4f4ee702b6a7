//! Rerank engines over HTTP: every API shape against (1) the real MiniLM configured as a
//! rerank model (bi-encoder mode: scores must equal the cosine of the engine's own
//! embeddings) and (2) generated cross-encoders whose logits were computed by transformers
//! (`tests/fixtures/encoder/*.json`): scores must equal sigmoid(logit). Plus the error table.

use serde_json::{json, Value};

use crate::common::{engine, fixture, generated, get, minilm, post, run};

const QUERY: &str = "How many people live in Paris?";
const DOCS: [&str; 4] = [
    "Bake the cake for forty minutes and let it cool.",
    "Paris, the capital of France, has a population of about 2.1 million people.",
    "The football match ended in a draw after extra time.",
    "Quantum computers use qubits instead of bits.",
];
const RELEVANT: usize = 1;

fn bi_encoder() -> String {
    engine(
        "minilm-rerank",
        json!({"path": minilm(), "type": "rerank", "port": 1}),
    )
}

fn embedder() -> String {
    engine(
        "minilm-embed",
        json!({"path": minilm(), "type": "embedding", "port": 1}),
    )
}

fn minilm_cross() -> String {
    let dir = generated("minilm-cross", |dir| {
        trident::models::testutil::write_minilm_cross_encoder(&minilm(), dir)
            .expect("writing the MiniLM cross-encoder")
    });
    engine(
        "minilm-cross",
        json!({"path": dir, "type": "rerank", "port": 1, "dtype": "f32"}),
    )
}

fn tiny_xlmr_cross() -> String {
    let dir = generated("tiny-xlmr-cls", |dir| {
        trident::models::testutil::write_tiny_xlmr(dir, true).expect("writing tiny XLM-R")
    });
    engine(
        "tiny-xlmr-cross",
        json!({"path": dir, "type": "rerank", "port": 1, "dtype": "f32"}),
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn cos(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Scores by document index from any of the four response shapes.
fn scores_by_index(path: &str, v: &Value) -> Vec<(usize, f64)> {
    let (list, key) = match path {
        "/rerank" => (v.as_array(), "score"),
        "/v1/score" => (v["data"].as_array(), "score"),
        _ => (v["results"].as_array(), "relevance_score"),
    };
    list.unwrap_or_else(|| panic!("{path}: no results in {v}"))
        .iter()
        .map(|r| (r["index"].as_u64().unwrap() as usize, f(&r[key])))
        .collect()
}

fn requests(query: &str, docs: &[&str], raw: bool) -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/rerank",
            json!({"query": query, "documents": docs, "raw_scores": raw}),
        ),
        (
            "/v2/rerank",
            json!({"query": query, "documents": docs, "raw_scores": raw}),
        ),
        (
            "/rerank",
            json!({"query": query, "texts": docs, "raw_scores": raw}),
        ),
        (
            "/v1/score",
            json!({"text_1": query, "text_2": docs, "raw_scores": raw}),
        ),
    ]
}

#[test]
fn bi_encoder_scores_are_cosines_of_the_engines_own_embeddings() {
    let (rr, emb) = (bi_encoder(), embedder());
    run(async {
        let mut texts = vec![QUERY];
        texts.extend(DOCS);
        let (st, v) = post(
            &emb,
            "/v1/embeddings",
            &json!({"model": "minilm-embed", "input": texts}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let vecs: Vec<Vec<f64>> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["embedding"].as_array().unwrap().iter().map(f).collect())
            .collect();
        let want: Vec<f64> = (0..DOCS.len())
            .map(|i| cos(&vecs[0], &vecs[i + 1]))
            .collect();
        for raw in [false, true] {
            for (path, body) in requests(QUERY, &DOCS, raw) {
                let (st, v) = post(&rr, path, &body).await;
                assert_eq!(st, 200, "{path}: {v}");
                let got = scores_by_index(path, &v);
                assert_eq!(got.len(), DOCS.len(), "{path}: {v}");
                for (i, s) in &got {
                    assert!(
                        (s - want[*i]).abs() < 1e-4,
                        "{path} doc {i}: {s} vs cosine {}",
                        want[*i]
                    );
                }
                if path != "/v1/score" {
                    assert_eq!(
                        got[0].0, RELEVANT,
                        "{path}: the relevant document ranks first: {v}"
                    );
                    assert!(
                        got.windows(2).all(|w| w[0].1 >= w[1].1),
                        "{path}: sorted: {v}"
                    );
                }
            }
        }
        let (_, models) = get(&rr, "/v1/models").await;
        assert_eq!(models["data"][0]["type"], "rerank");
        assert_eq!(models["data"][0]["rerank_mode"], "bi-encoder (cosine)");
    });
}

#[test]
fn response_shapes_and_options() {
    let rr = bi_encoder();
    run(async {
        let body = json!({"model": "minilm-rerank", "query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": true});
        let (st, v) = post(&rr, "/v1/rerank", &body).await;
        assert_eq!(st, 200, "{v}");
        assert!(
            v["id"].is_string() && v["usage"]["total_tokens"].as_u64().unwrap() > 20,
            "{v}"
        );
        assert_eq!(v["model"], "minilm-rerank");
        let r = v["results"].as_array().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["document"]["text"], DOCS[RELEVANT]);

        let (st, v) = post(
            &rr,
            "/v2/rerank",
            &json!({"query": QUERY, "documents": DOCS, "top_n": 100}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), DOCS.len());
        assert_eq!(v["meta"]["api_version"]["version"], "2");
        assert_eq!(v["meta"]["billed_units"]["search_units"], 1);
        assert!(v["results"][0].get("document").is_none());

        let (st, v) = post(
            &rr,
            "/rerank",
            &json!({"query": QUERY, "texts": DOCS, "return_text": true}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v[0]["index"], RELEVANT);
        assert_eq!(v[0]["text"], DOCS[RELEVANT]);

        let (st, v) = post(&rr, "/v1/score", &json!({"model": "minilm-rerank", "text_1": [QUERY, DOCS[0]], "text_2": [DOCS[1], DOCS[0]]})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["object"], "score");
        assert!(
            (f(&v["data"][1]["score"]) - 1.0).abs() < 1e-4,
            "a text against itself: {v}"
        );
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

        let (st, v) = post(&rr, "/tokenize", &json!({"prompt": "hello world"})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["count"], 4);
        let (st, _) = post(&rr, "/v1/embeddings", &json!({"input": "x"})).await;
        assert_eq!(st, 404, "a rerank engine does not embed");
    });
}

#[test]
fn error_table() {
    let rr = minilm_cross();
    run(async {
        let many: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let cases = [
            (
                "/v1/rerank",
                json!({"query": "q", "documents": []}),
                400,
                "documents",
            ),
            (
                "/v1/rerank",
                json!({"query": "q", "documents": null}),
                400,
                "documents",
            ),
            (
                "/v1/rerank",
                json!({"query": "q", "documents": ["a", null]}),
                400,
                "documents",
            ),
            (
                "/v1/rerank",
                json!({"query": "q", "documents": ["a", 5]}),
                400,
                "documents",
            ),
            ("/v1/rerank", json!({"documents": ["a"]}), 400, "query"),
            (
                "/v1/rerank",
                json!({"query": "", "documents": ["a"]}),
                400,
                "query",
            ),
            (
                "/v1/rerank",
                json!({"query": "q", "documents": many}),
                400,
                "documents",
            ),
            (
                "/v1/rerank",
                json!({"query": "q", "documents": ["a"], "top_n": -3}),
                400,
                "top_n",
            ),
            (
                "/v1/rerank",
                json!({"model": "other", "query": "q", "documents": ["a"]}),
                404,
                "model",
            ),
            (
                "/v2/rerank",
                json!({"query": "q", "documents": [{"title": "a"}]}),
                400,
                "documents",
            ),
            ("/rerank", json!({"query": "q", "texts": []}), 400, "texts"),
            (
                "/v1/score",
                json!({"text_1": ["a", "b"], "text_2": ["c"]}),
                400,
                "text_2",
            ),
            (
                "/v1/score",
                json!({"model": "other", "text_1": "a", "text_2": "b"}),
                404,
                "model",
            ),
        ];
        for (path, body, status, param) in cases {
            let (st, v) = post(&rr, path, &body).await;
            let shown: String = body.to_string().chars().take(80).collect();
            assert_eq!(st, status, "{path} {shown}: {v}");
            assert_eq!(v["error"]["param"], param, "{path} {shown}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(param),
                "{v}"
            );
        }
        let (st, v) = post(
            &rr,
            "/v1/rerank",
            &json!({"query": "q", "documents": ["a", "b"], "top_n": 7}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), 2);
        // `top_n: 0` means all, and an empty document (a RAG chunk can be empty) is scored
        // with the others instead of refusing the request.
        let (st, v) = post(
            &rr,
            "/v1/rerank",
            &json!({"query": QUERY, "documents": [DOCS[0], "", DOCS[1]], "top_n": 0}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        let mut seen: Vec<u64> = results
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2], "{v}");
        assert!(results
            .iter()
            .all(|r| r["relevance_score"].as_f64().is_some_and(f64::is_finite)));
    });
}

/// Checks every shape's scores on a cross-encoder engine against fixture logits.
async fn check_cross_encoder(url: &str, pairs: &[(String, String)], logits: &[f64]) {
    let (_, models) = get(url, "/v1/models").await;
    assert_eq!(models["data"][0]["rerank_mode"], "cross-encoder");
    // All pairs at once, N:N, sigmoid and raw.
    let t1: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let t2: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    for raw in [false, true] {
        let (st, v) = post(
            url,
            "/v1/score",
            &json!({"text_1": t1, "text_2": t2, "raw_scores": raw}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        for (i, (k, s)) in scores_by_index("/v1/score", &v).into_iter().enumerate() {
            assert_eq!(i, k);
            let want = if raw { logits[i] } else { sigmoid(logits[i]) };
            assert!((s - want).abs() < 1e-4, "pair {i} raw={raw}: {s} vs {want}");
        }
    }
    // Every rerank shape, one query at a time.
    for (q, _) in pairs {
        let idx: Vec<usize> = (0..pairs.len()).filter(|&i| &pairs[i].0 == q).collect();
        let docs: Vec<&str> = idx.iter().map(|&i| pairs[i].1.as_str()).collect();
        for (path, body) in requests(q, &docs, false) {
            let (st, v) = post(url, path, &body).await;
            assert_eq!(st, 200, "{path}: {v}");
            let got = scores_by_index(path, &v);
            assert_eq!(got.len(), docs.len());
            for (k, s) in got {
                let want = sigmoid(logits[idx[k]]);
                assert!(
                    (s - want).abs() < 1e-4,
                    "{path} {q:?} doc {k}: {s} vs {want}"
                );
            }
        }
    }
}

/// Fixture pairs (empty documents are refused by the API, so they are left out).
fn fixture_pairs(v: &Value, logits: impl Fn(&Value) -> f64) -> (Vec<(String, String)>, Vec<f64>) {
    let mut pairs = Vec::new();
    let mut out = Vec::new();
    for (p, l) in v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v["logits"].as_array().unwrap())
    {
        let (q, d) = (p[0].as_str().unwrap(), p[1].as_str().unwrap());
        if !d.trim().is_empty() {
            pairs.push((q.to_string(), d.to_string()));
            out.push(logits(l));
        }
    }
    assert!(pairs.len() >= 3, "fixture has pairs");
    (pairs, out)
}

#[test]
fn minilm_cross_encoder_scores_are_sigmoid_of_transformers_logits() {
    let url = minilm_cross();
    let (pairs, logits) = fixture_pairs(&fixture("encoder/minilm_cross.json"), f);
    run(check_cross_encoder(&url, &pairs, &logits));
}

#[test]
fn tiny_xlmr_cross_encoder_scores_are_sigmoid_of_transformers_logits() {
    let url = tiny_xlmr_cross();
    let (pairs, logits) = fixture_pairs(&fixture("encoder/tiny_xlmr.json"), |l| f(&l[0]));
    run(check_cross_encoder(&url, &pairs, &logits));
}
