//! `trident serve` with the real engines for all three kinds (real weights from
//! `scripts/fetch-models.sh`): the gateway's answers equal the engines' own.

use serde_json::{json, Value};

use super::{client, get_json, sse_events, Appliance, Opts, ENGINE_TOKEN};
use crate::common::{floats, minilm, repo};
use trident::engine::access::ENGINE_TOKEN_HEADER;

/// POSTs to the gateway or (with the test's engine token) straight to an engine.
async fn post_json(url: String, body: &Value) -> (u16, Value) {
    let r = client()
        .post(url)
        .header(ENGINE_TOKEN_HEADER, ENGINE_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn real_engines_of_every_kind_behind_the_gateway() {
    let chat = repo("models/chat/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(chat.exists(), "run scripts/fetch-models.sh");
    // Each model's port is also the gateway's, pinned to it (`model_ports`).
    let pins = super::model_ports::free_ports(3, 0);
    let models = json!({
        "chat": {"type": "chat", "path": chat, "port": pins[0], "device": "cpu", "max_model_len": 2048, "max_num_seqs": 4},
        "minilm": {"type": "embedding", "path": minilm(), "port": pins[1], "device": "cpu", "aliases": ["all-MiniLM-L6-v2"]},
        "rerank": {"type": "rerank", "path": minilm(), "port": pins[2], "device": "cpu"}
    });
    let app = Appliance::start(
        models,
        Opts {
            real_engines: true,
            model_ports: true,
            ..Default::default()
        },
    )
    .await;
    let port = |e: &Vec<Value>| e[0]["port"].as_u64().unwrap();
    let direct = |p: u64, path: &str| format!("http://127.0.0.1:{p}{path}");

    // Embeddings: same vectors through the gateway as from the engine.
    let body =
        json!({"model": "all-MiniLM-L6-v2", "input": ["a gateway in front of engines", "hello"]});
    let engines = app.engines("minilm", None).await;
    assert_eq!(
        (engines[0]["state"].as_str(), engines[0]["device"].as_str()),
        (Some("ready"), Some("cpu"))
    );
    let (s, via) = post_json(app.url("/v1/embeddings"), &body).await;
    assert_eq!(s, 200, "{via}");
    let (_, own) = post_json(direct(port(&engines), "/v1/embeddings"), &body).await;
    assert_eq!(floats(&via["data"][0]["embedding"]).len(), 384);
    assert_eq!(via["data"], own["data"], "the gateway changed the answer");

    // Rerank (bi-encoder mode): same scores and order.
    let body = json!({"model": "rerank", "query": "where do engines run?",
                      "documents": ["engines run as child processes", "bananas are yellow"]});
    let (s, via) = post_json(app.url("/v1/rerank"), &body).await;
    assert_eq!(s, 200, "{via}");
    let (_, own) = post_json(
        direct(port(&app.engines("rerank", None).await), "/v1/rerank"),
        &body,
    )
    .await;
    assert_eq!(via["results"], own["results"]);
    assert_eq!(via["results"][0]["index"], 0, "{via}");

    // Chat, greedy: the same text through the gateway; the stream ends with [DONE].
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "Name a colour."}],
                      "max_tokens": 6, "temperature": 0});
    let (s, via) = post_json(app.url("/v1/chat/completions"), &body).await;
    assert_eq!(s, 200, "{via}");
    let (_, own) = post_json(
        direct(
            port(&app.engines("chat", None).await),
            "/v1/chat/completions",
        ),
        &body,
    )
    .await;
    let text = via["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(
        text,
        own["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let r = client()
        .post(app.url("/v1/chat/completions"))
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("text/event-stream")
    );
    let events = sse_events(r).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert!(events.len() >= 3, "{events:?}");

    // /v1/models: every kind with the engines' facts.
    let models = get_json(&app, "/v1/models", None).await;
    let card = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(card("rerank")["rerank_mode"], "bi-encoder (cosine)");
    assert_eq!(card("chat")["type"], "chat");
    assert_eq!(card("minilm")["aliases"], json!(["all-MiniLM-L6-v2"]));
    for id in ["chat", "minilm", "rerank"] {
        assert_eq!(card(id)["state"], "ready", "{id}");
        assert!(
            card(id)["max_model_len"].as_u64().is_some(),
            "engine facts missing: {}",
            card(id)
        );
    }
    let metrics = crate::common::get_text(&app.url("/metrics")).await;
    let ready =
        crate::common::metric_value(&metrics, "trident_model_ready", &[("component", "engine")]);
    assert_eq!(ready, 3.0, "{metrics}");

    // The seed's commands: each model's own port, no `model` in the body.
    let pinned = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", pins[i]);
    let (s, v) = post_json(
        pinned(0, "/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let (s, v) = post_json(
        pinned(1, "/v1/embeddings"),
        &json!({"input": ["hello", "world"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(floats(&v["data"][1]["embedding"]).len(), 384);
    let (s, v) = post_json(
        pinned(2, "/v1/rerank"),
        &json!({"query": "where do engines run?", "documents": ["bananas are yellow", "engines run as child processes"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"][0]["index"], 1, "{v}");
}
