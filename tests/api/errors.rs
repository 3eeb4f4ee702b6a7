//! The error contract for framework rejections: every non-2xx is the OpenAI envelope.

use serde_json::json;

use crate::common::*;
use crate::embeddings::minilm_engine;

#[tokio::test]
async fn framework_rejections_use_the_envelope() {
    let s = minilm_engine().await;
    let c = client();
    let url = s.url("/v1/embeddings");

    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("[1, 2]"),
            400,
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body("42"),
            400,
        ),
        (
            c.post(&url)
                .header("content-type", "application/json")
                .body(""),
            400,
        ),
        (
            c.post(&url).header("content-type", "text/plain").body("{}"),
            415,
        ),
        (c.post(&url).body(r#"{"model":"minilm","input":"x"}"#), 415),
        (c.get(&url), 405),
        (c.post(s.url("/v1/nothing-here")).json(&json!({})), 404),
        (c.get(s.url("/")), 404),
        (
            c.post(&url)
                .json(&json!({"model": "minilm", "input": "x", "encoding_format": 7})),
            400,
        ),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("case {i}: body is not JSON: {text:?}"));
        assert_envelope(status, &headers, &body, want);
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413_in_the_envelope() {
    let settings = trident::config::Settings {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let s = start_engine_with(
        "small-body",
        json!({"path": minilm(), "type": "embedding", "port": 1}),
        settings,
    )
    .await;
    let body = json!({"model": "small-body", "input": "x".repeat(4096)});
    let (status, headers, v) = call(&s, "/v1/embeddings", &body).await;
    let err = assert_envelope(status, &headers, &v, 413);
    assert_eq!(err["code"], "payload_too_large");
    assert!(err["message"].as_str().unwrap().contains("1024"), "{v}");
}

#[tokio::test]
async fn health_and_models_list() {
    let s = minilm_engine().await;
    let r = client().get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = client()
        .get(s.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "minilm");
    assert_eq!(v["data"][0]["type"], "embedding");
    assert_eq!(v["data"][0]["state"], "ready");
    assert_eq!(v["data"][0]["max_model_len"], 256);
}
