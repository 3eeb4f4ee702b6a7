//! Parsing and shaping of rerank/score requests and responses.

use super::*;
use serde_json::json;

fn rerank(body: Value) -> Result<(PairTask, Option<usize>), ApiError> {
    from_value::<RerankRequest>(body)?.task()
}

#[test]
fn documents_as_strings_or_text_objects() {
    let (task, top) =
        rerank(json!({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 5})).unwrap();
    assert_eq!(task.seconds, vec!["a", "b"]);
    assert_eq!(task.firsts, vec!["q"]);
    assert_eq!(task.pairs, vec![(0, 0), (0, 1)]);
    assert_eq!(top, Some(5));
}

#[test]
fn top_n_zero_means_all_and_empty_documents_are_kept() {
    let (task, top) =
        rerank(json!({"query": "q", "documents": ["a", "", " "], "top_n": 0})).unwrap();
    assert_eq!(top, None);
    assert_eq!(task.seconds, vec!["a", "", " "]);
}

#[test]
fn bad_rerank_inputs_name_their_parameter() {
    let cases = [
        (json!({"documents": ["a"]}), "query"),
        (json!({"query": null, "documents": ["a"]}), "query"),
        (json!({"query": "  ", "documents": ["a"]}), "query"),
        (json!({"query": 3, "documents": ["a"]}), "query"),
        (json!({"query": "q"}), "documents"),
        (json!({"query": "q", "documents": null}), "documents"),
        (json!({"query": "q", "documents": []}), "documents"),
        (json!({"query": "q", "documents": "a"}), "documents"),
        (json!({"query": "q", "documents": ["a", null]}), "documents"),
        (json!({"query": "q", "documents": ["a", 7]}), "documents"),
        (
            json!({"query": "q", "documents": [{"title": "x"}]}),
            "documents",
        ),
        (
            json!({"query": "q", "documents": ["a"], "top_n": -2}),
            "top_n",
        ),
        (
            json!({"query": "q", "documents": ["a"], "top_n": "x"}),
            "top_n",
        ),
    ];
    for (body, param) in cases {
        let err = rerank(body.clone()).expect_err(&body.to_string());
        assert_eq!(err.status, 400, "{body}");
        assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
    }
}

#[test]
fn document_limit_is_checked_before_the_elements() {
    // Over the limit and full of invalid entries: the count is what gets reported.
    let docs = vec![Value::Null; MAX_DOCUMENTS + 1];
    let err = rerank(json!({"query": "q", "documents": docs})).unwrap_err();
    assert!(err.message.contains("1000"), "{}", err.message);
    let ok = vec!["d"; MAX_DOCUMENTS];
    assert_eq!(
        rerank(json!({"query": "q", "documents": ok}))
            .unwrap()
            .0
            .pairs
            .len(),
        1000
    );
}

#[test]
fn tei_texts_must_be_strings() {
    let req: TeiRerankRequest =
        from_value(json!({"query": "q", "texts": [{"text": "a"}]})).unwrap();
    assert_eq!(req.task().unwrap_err().param.as_deref(), Some("texts"));
    let req: TeiRerankRequest = from_value(json!({"query": "q", "texts": ["a"]})).unwrap();
    assert!(req.truncate && !req.raw_scores && !req.return_text);
    assert_eq!(req.task().unwrap().seconds, vec!["a"]);
}

#[test]
fn score_shapes() {
    let task = |b: Value| from_value::<ScoreRequest>(b).unwrap().task();
    let t = task(json!({"text_1": "q", "text_2": "d"})).unwrap();
    assert_eq!(t.pairs, vec![(0, 0)]);
    let t = task(json!({"text_1": "q", "text_2": ["a", "b", "c"]})).unwrap();
    assert_eq!(t.pairs, vec![(0, 0), (0, 1), (0, 2)]);
    let t = task(json!({"text_1": ["q"], "text_2": ["a", "b"]})).unwrap();
    assert_eq!(t.pairs, vec![(0, 0), (0, 1)]);
    let t = task(json!({"text_1": ["q", "r"], "text_2": ["a", "b"]})).unwrap();
    assert_eq!(t.pairs, vec![(0, 0), (1, 1)]);
    let e = task(json!({"text_1": ["q", "r"], "text_2": ["a", "b", "c"]})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("text_2"));
    let e = task(json!({"text_2": ["a"]})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("text_1"));
    let e = task(json!({"text_1": "q", "text_2": []})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("text_2"));
}

#[test]
fn ranking_sorts_descending_and_cuts() {
    let s = [0.1, 0.9, 0.5, 0.9, f64::NAN];
    assert_eq!(rank(&s, None), vec![1, 3, 2, 0, 4]);
    assert_eq!(rank(&[0.1, 0.9, 0.5], Some(2)), vec![1, 2]);
    assert_eq!(rank(&[0.1, 0.9, 0.5], Some(50)), vec![1, 2, 0]);
}

#[test]
fn score_math() {
    assert!((sigmoid(0.0) - 0.5).abs() < 1e-12);
    assert!((sigmoid(2.0) - 0.880_797_077_977_882_3).abs() < 1e-12);
    assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-9);
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
}

#[test]
fn v2_meta_and_result_shape() {
    let meta = serde_json::to_value(RerankMeta::v2(250)).unwrap();
    assert_eq!(
        meta,
        json!({"api_version": {"version": "2"}, "billed_units": {"search_units": 3}})
    );
    let r = serde_json::to_value(RerankResult {
        index: 1,
        relevance_score: 0.5,
        document: None,
    })
    .unwrap();
    assert_eq!(r, json!({"index": 1, "relevance_score": 0.5}));
}

#[test]
fn rank_fields_pick_the_keys_of_object_documents() {
    let req: RerankRequest = serde_json::from_value(serde_json::json!({
        "query": "q",
        "documents": [{"title": "Cats", "text": "purr", "id": 7}, "plain", {"text": "only"}],
        "rank_fields": ["title", "text"]
    }))
    .unwrap();
    let (task, _) = req.task().unwrap();
    assert_eq!(
        task.seconds,
        vec!["title: Cats\ntext: purr", "plain", "text: only"]
    );
    let bad = |docs: serde_json::Value, fields: serde_json::Value| {
        let req: RerankRequest = serde_json::from_value(
            serde_json::json!({"query": "q", "documents": docs, "rank_fields": fields}),
        )
        .unwrap();
        req.task().unwrap_err().param
    };
    assert_eq!(
        bad(serde_json::json!([{"x": 1}]), serde_json::json!(["title"])).as_deref(),
        Some("documents[0]")
    );
    assert_eq!(
        bad(serde_json::json!([{"x": 1}]), serde_json::json!([])).as_deref(),
        Some("rank_fields")
    );
    assert_eq!(
        bad(serde_json::json!([]), serde_json::json!(["x"])).as_deref(),
        Some("documents")
    );
    assert_eq!(
        bad(serde_json::json!("x"), serde_json::json!(["x"])).as_deref(),
        Some("documents")
    );
}
