//! Routing by path and `model` (ids, aliases, the sole model of a kind), `/v1/models`,
//! request ids, and the envelope on every gateway error.

use serde_json::{json, Value};

use super::{client, get_json, post, Appliance, Opts};
use crate::common::assert_envelope;

fn three_kinds() -> Value {
    json!({
        "chat": {"type": "chat", "aliases": ["gpt-4o-mini"]},
        "embed": {"type": "embedding", "aliases": ["text-embedding-3-small"]},
        "rr": {"type": "rerank"},
        "rr2": {"type": "rerank"}
    })
}

#[tokio::test]
async fn every_kind_is_routed_by_path_and_model() {
    let app = Appliance::start(three_kinds(), Opts::default()).await;

    let (s, _, b) = post(
        &app,
        "/v1/chat/completions",
        &json!({"model": "gpt-4o-mini", "messages": []}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["model"], "chat");
    assert_eq!(b["choices"][0]["message"]["content"], "t0 t1 t2 t3 t4");

    let (s, _, b) = post(
        &app,
        "/v1/completions",
        &json!({"model": "chat", "prompt": "x"}),
    )
    .await;
    assert_eq!((s, &b["model"]), (200, &json!("chat")));

    // No model: the only embedding model serves the request.
    let (s, _, b) = post(&app, "/v1/embeddings", &json!({"input": ["a", "b", "c"]})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["model"], "embed");
    assert_eq!(b["data"].as_array().unwrap().len(), 3);
    let (s, _, b) = post(
        &app,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "a"}),
    )
    .await;
    assert_eq!((s, &b["model"]), (200, &json!("embed")));

    for path in ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/score"] {
        let (s, _, b) = post(
            &app,
            path,
            &json!({"model": "rr2", "query": "q", "documents": ["a", "b"]}),
        )
        .await;
        assert_eq!(s, 200, "{path}: {b}");
        assert_eq!(b["model"], "rr2", "{path}");
        assert_eq!(b["results"].as_array().unwrap().len(), 2);
    }
    // Two rerank models: the model must be named.
    let (s, h, b) = post(
        &app,
        "/v1/rerank",
        &json!({"query": "q", "documents": ["a"]}),
    )
    .await;
    assert_eq!(assert_envelope(s, &h, &b, 400)["param"], "model");

    for model in ["chat", "embed", "rr"] {
        let (s, _, b) = post(&app, "/tokenize", &json!({"model": model, "prompt": "hi"})).await;
        assert_eq!((s, &b["tokens"]), (200, &json!([1, 2])), "{model}");
    }
    let (s, _, b) = post(
        &app,
        "/detokenize",
        &json!({"model": "embed", "tokens": [1]}),
    )
    .await;
    assert_eq!((s, &b["prompt"]), (200, &json!("mock")));

    // Unknown model: 404 envelope; a model of the wrong kind: 400 naming `model`.
    let (s, h, b) = post(
        &app,
        "/v1/embeddings",
        &json!({"model": "nope", "input": "a"}),
    )
    .await;
    assert_eq!(assert_envelope(s, &h, &b, 404)["code"], "model_not_found");
    let (s, h, b) = post(
        &app,
        "/v1/embeddings",
        &json!({"model": "chat", "input": "a"}),
    )
    .await;
    assert_eq!(assert_envelope(s, &h, &b, 400)["param"], "model");

    // /v1/models lists every model with the gateway's view and the engine's facts.
    let models = get_json(&app, "/v1/models", None).await;
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    let card = |id: &str| data.iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!(card("chat")["type"], "chat");
    assert_eq!(card("chat")["aliases"], json!(["gpt-4o-mini"]));
    assert_eq!(card("embed")["state"], "ready");
    assert_eq!(card("embed")["replicas"], 1);
    assert_eq!(card("rr")["rerank_mode"], "cross-encoder");
}

#[tokio::test]
async fn request_ids_are_echoed_and_forwarded_and_keys_stay_at_the_gateway() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            api_keys: &["sk-test"],
            ..Default::default()
        },
    )
    .await;
    let r = client()
        .post(app.url("/v1/embeddings"))
        .bearer_auth("sk-test")
        .header("x-request-id", "req-123")
        .json(&json!({"input": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    assert_eq!(
        r.headers()["x-mock-request-id"],
        "req-123",
        "id not forwarded to the engine"
    );
    assert_eq!(
        r.headers()["x-mock-saw-auth"],
        "no",
        "the API key must not reach engines"
    );
    // Without one, an id is made up, echoed and forwarded.
    let r = client()
        .post(app.url("/v1/embeddings"))
        .bearer_auth("sk-test")
        .json(&json!({"input": "a"}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 16, "{id}");
    assert_eq!(r.headers()["x-mock-request-id"].to_str().unwrap(), id);
}

#[tokio::test]
async fn framework_rejections_through_the_gateway_are_envelopes() {
    let app = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            env: &[("TRIDENT_MAX_BODY_BYTES", "2000")],
            ..Default::default()
        },
    )
    .await;
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb.send().await.unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
        (s, h, b)
    };
    let c = client();
    let json_ct = ("content-type", "application/json");
    let (s, h, b) = send(
        c.post(app.url("/v1/embeddings"))
            .header(json_ct.0, json_ct.1)
            .body("{\"input\": "),
    )
    .await;
    assert!(assert_envelope(s, &h, &b, 400)["message"]
        .as_str()
        .unwrap()
        .contains("parse"));
    let (s, h, b) = send(
        c.post(app.url("/v1/embeddings"))
            .header(json_ct.0, json_ct.1)
            .body("[1, 2]"),
    )
    .await;
    assert_envelope(s, &h, &b, 400);
    let (s, h, b) = send(
        c.post(app.url("/v1/embeddings"))
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_envelope(s, &h, &b, 415);
    let (s, h, b) = send(
        c.post(app.url("/v1/nothing-here"))
            .header(json_ct.0, json_ct.1)
            .body("{}"),
    )
    .await;
    assert_envelope(s, &h, &b, 404);
    let (s, h, b) = send(c.get(app.url("/v1/embeddings"))).await;
    assert_envelope(s, &h, &b, 405);
    let big = json!({"input": "x".repeat(5000)}).to_string();
    let (s, h, b) = send(
        c.post(app.url("/v1/embeddings"))
            .header(json_ct.0, json_ct.1)
            .body(big),
    )
    .await;
    assert_envelope(s, &h, &b, 413);
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_listed() {
    let preflight = |app: &Appliance| {
        client()
            .request(reqwest::Method::OPTIONS, app.url("/v1/embeddings"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
    };
    let closed = Appliance::start(json!({"embed": {"type": "embedding"}}), Opts::default()).await;
    let r = preflight(&closed).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let open = Appliance::start(
        json!({"embed": {"type": "embedding"}}),
        Opts {
            env: &[("TRIDENT_CORS_ORIGINS", "https://app.example")],
            api_keys: &["k"],
            ..Default::default()
        },
    )
    .await;
    // The preflight carries no key and still passes; the listed origin is allowed.
    let r = preflight(&open).await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = client()
        .post(open.url("/v1/embeddings"))
        .bearer_auth("k")
        .header("origin", "https://evil.example")
        .json(&json!({"input": "a"}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn one_model_is_retrieved_by_id_or_alias_and_unknown_ones_are_404() {
    let app = Appliance::start(three_kinds(), Opts::default()).await;
    for name in ["embed", "text-embedding-3-small"] {
        let card = get_json(&app, &format!("/v1/models/{name}"), None).await;
        assert_eq!(card["id"], "embed", "{card}");
        assert_eq!(card["object"], "model");
    }
    let r = client()
        .get(app.url("/v1/models/org/not-here"))
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    let b: Value = r.json().await.unwrap();
    let err = assert_envelope(s, &h, &b, 404);
    assert_eq!(err["code"], "model_not_found");
    assert!(b.to_string().contains("org/not-here"), "{b}");
}
