//! The embedding APIs through the gateway (mock engines): Cohere's `/v1/embed` and
//! `/v2/embed` and TEI's `/embed`, `/embed_all` and `GET /info` route by `model` like every
//! route; a body (or `/info` query) without `model` goes to the only embedding model, and
//! with several the answer is a 400 naming `model` and the candidates.

use serde_json::{json, Value};

use super::{client, post, Appliance, Opts};
use crate::common::assert_envelope;

/// GETs a gateway path; status, headers and the JSON body (Null when not JSON).
async fn get(app: &Appliance, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client().get(app.url(path)).send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn served_by(headers: &reqwest::header::HeaderMap) -> &str {
    headers
        .get("x-mock-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_only_embedding_model_serves_bodies_without_model() {
    let models = json!({
        "chat": {"type": "chat"},
        "embed": {"type": "embedding", "aliases": ["bge-m3"]},
        "rr": {"type": "rerank"}
    });
    let app = Appliance::start(models, Opts::default()).await;
    for (path, body) in [
        ("/v1/embed", json!({"texts": ["a", "b"]})),
        (
            "/v2/embed",
            json!({"texts": ["a", "b"], "embedding_types": ["float"]}),
        ),
        ("/embed", json!({"inputs": ["a", "b"]})),
        ("/embed_all", json!({"inputs": ["a", "b"]})),
        ("/embed", json!({"model": "bge-m3", "inputs": ["a", "b"]})),
    ] {
        let (s, h, b) = post(&app, path, &body).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert_eq!(served_by(&h), "embed", "{path}");
    }
    let (s, h, b) = get(&app, "/info").await;
    assert_eq!((s, served_by(&h)), (200, "embed"), "{b}");
    assert_eq!(b["model_id"], "embed");
    let (s, h, _) = get(&app, "/info?model=bge-m3").await;
    assert_eq!((s, served_by(&h)), (200, "embed"));
    // A model of another kind, or none at all, is refused at the gateway.
    let (s, h, b) = get(&app, "/info?model=chat").await;
    let err = assert_envelope(s, &h, &b, 400);
    assert_eq!(
        (err["param"].as_str(), err["code"].as_str()),
        (Some("model"), Some("model_not_supported"))
    );
    let (s, h, b) = post(&app, "/v2/embed", &json!({"model": "rr", "texts": ["a"]})).await;
    assert_eq!(assert_envelope(s, &h, &b, 400)["param"], "model");
    let (s, h, b) = get(&app, "/info?model=nope").await;
    assert_eq!(assert_envelope(s, &h, &b, 404)["code"], "model_not_found");
    // /info is GET only; the embed routes are POST only.
    let (s, h, b) = post(&app, "/info", &json!({})).await;
    assert_envelope(s, &h, &b, 405);
    let (s, h, b) = get(&app, "/embed").await;
    assert_envelope(s, &h, &b, 405);
}

#[tokio::test]
async fn several_embedding_models_need_a_model_named() {
    let models = json!({"e1": {"type": "embedding"}, "e2": {"type": "embedding"}});
    let app = Appliance::start(models, Opts::default()).await;
    for path in ["/embed", "/embed_all", "/v2/embed"] {
        let (s, h, b) = post(&app, path, &json!({"inputs": ["a"], "texts": ["a"]})).await;
        let err = assert_envelope(s, &h, &b, 400);
        assert_eq!(err["param"], "model", "{path}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.contains("e1, e2") && msg.contains(path), "{msg}");
    }
    let (s, h, b) = get(&app, "/info").await;
    let err = assert_envelope(s, &h, &b, 400);
    assert!(
        err["message"].as_str().unwrap().contains("?model="),
        "{err}"
    );
    let (s, h, _) = post(&app, "/embed", &json!({"model": "e2", "inputs": "a"})).await;
    assert_eq!((s, served_by(&h)), (200, "e2"));
    let (s, h, b) = get(&app, "/info?model=e2").await;
    assert_eq!(
        (s, served_by(&h), &b["model_id"]),
        (200, "e2", &json!("e2"))
    );
}
