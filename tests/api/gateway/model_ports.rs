//! `model_ports`: the gateway also listens on each model's `port`, pinned to that model (the
//! seed's `:8001/v1/chat/completions`, `:8002/v1/embeddings`, `:8003/v1/rerank`), with the
//! main port's key, limits and envelope; the engines move to `port + engine_port_offset`.
//! Off, the engines keep the entries' ports. Reload opens, moves and closes pinned listeners.

use std::time::Duration;

use serde_json::{json, Value};

use super::{client, mock_models, poll, Appliance, Opts, ENGINE_TOKEN};
use trident::engine::access::ENGINE_TOKEN_HEADER;

const KEY: &str = "sk-model-ports";

/// `n` ports `p` such that `p` and `p + offset` are both free now (loopback).
pub(super) fn free_ports(n: usize, offset: u16) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let Some(q) = p.checked_add(offset) else {
            continue;
        };
        drop(l);
        let clear = |x: u16| {
            out.iter()
                .all(|&o| o != x && o.checked_add(offset) != Some(x))
        };
        if clear(p) && clear(q) && std::net::TcpListener::bind(("127.0.0.1", q)).is_ok() {
            out.push(p);
        }
    }
    out
}

fn at(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// POSTs `body` to `url` (with `key` when given); status and JSON body.
async fn call(url: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut rb = client().post(url).json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// True once nothing accepts on `port` any more (a closed listener goes within moments).
async fn closed(port: u16) -> bool {
    poll(Duration::from_secs(5), || async {
        client()
            .get(at(port, "/health"))
            .send()
            .await
            .is_err()
            .then_some(())
    })
    .await
    .is_some()
}

async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut rb = client().get(url);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn chat_body() -> Value {
    json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
}

#[tokio::test]
async fn the_seed_commands_work_on_the_model_ports_with_the_main_ports_rules() {
    let offset = 1000;
    let p = free_ports(3, offset);
    let (chat, emb, rr) = (p[0], p[1], p[2]);
    let offset_env = offset.to_string();
    let env = [
        ("TRIDENT_ENGINE_PORT_OFFSET", offset_env.as_str()),
        ("TRIDENT_MAX_BODY_BYTES", "4096"),
    ];
    let app = Appliance::start(
        json!({
            "chat": {"type": "chat", "name": "SmolLM2-135M-Instruct", "port": chat},
            "embedding": {"type": "embedding", "aliases": ["all-MiniLM-L6-v2"], "port": emb},
            "rerank": {"type": "rerank", "port": rr}}),
        Opts {
            api_keys: &[KEY],
            model_ports: true,
            config_ports: true,
            env: &env,
            ..Default::default()
        },
    )
    .await;

    // The seed's three calls, as its guide writes them: no `model`, the key as Bearer.
    let seed = [
        (chat, "/v1/chat/completions", chat_body()),
        (emb, "/v1/embeddings", json!({"input": ["a", "b"]})),
        (
            rr,
            "/v1/rerank",
            json!({"query": "q", "documents": ["x", "y"]}),
        ),
    ];
    for (port, path, body) in &seed {
        let (s, v) = call(&at(*port, path), Some(KEY), body).await;
        assert_eq!(s, 200, "{port}{path}: {v}");
        let (s, v) = call(&at(*port, path), None, body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("invalid_api_key")),
            "{v}"
        );
    }

    // `model` may name the port's model by id, alias or display name.
    for name in ["chat", "SmolLM2-135M-Instruct"] {
        let mut body = chat_body();
        body["model"] = json!(name);
        let (s, v) = call(&at(chat, "/v1/chat/completions"), Some(KEY), &body).await;
        assert_eq!(s, 200, "{name}: {v}");
    }
    let (s, v) = call(
        &at(emb, "/v1/embeddings"),
        Some(KEY),
        &json!({"model": "all-MiniLM-L6-v2", "input": "a"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Another model (or an unknown one) on a pinned port: 404 naming the port's model.
    for other in ["embedding", "gpt-4o"] {
        let mut body = chat_body();
        body["model"] = json!(other);
        let (s, v) = call(&at(chat, "/v1/chat/completions"), Some(KEY), &body).await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("serves only the model 'chat'") && msg.contains(other),
            "{msg}"
        );
    }
    // The main port still routes by `model`.
    let mut body = chat_body();
    body["model"] = json!("chat");
    let (s, v) = call(&app.url("/v1/chat/completions"), Some(KEY), &body).await;
    assert_eq!(s, 200, "{v}");

    // A route of another kind on a pinned port names the mismatch like the main port does.
    let (s, v) = call(
        &at(chat, "/v1/embeddings"),
        Some(KEY),
        &json!({"input": "a"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("model_not_supported")),
        "{v}"
    );

    // The body limit holds on pinned ports too.
    let big = json!({"input": "x".repeat(8000)});
    let (s, v) = call(&at(emb, "/v1/embeddings"), Some(KEY), &big).await;
    assert_eq!(s, 413, "{v}");

    // /v1/models and /ready speak of the port's model only.
    let (s, v) = get(&at(emb, "/v1/models"), Some(KEY)).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["embedding"]);
    let (s, _) = get(&at(emb, "/v1/models/chat"), Some(KEY)).await;
    assert_eq!(s, 404);
    let (s, v) = get(&at(rr, "/ready"), None).await;
    assert_eq!(s, 200, "{v}");
    let ready: Vec<&String> = v["models"].as_object().unwrap().keys().collect();
    assert_eq!(ready, ["rerank"]);
    let (s, _) = get(&at(rr, "/health"), None).await;
    assert_eq!(s, 200);
    // /metrics needs the key there too.
    assert_eq!(get(&at(chat, "/metrics"), None).await.0, 401);
    let r = client()
        .get(at(chat, "/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("trident_requests_total"));

    // Admin endpoints are on the main port only.
    let (s, v) = call(&at(chat, "/admin/reload"), Some(KEY), &json!({})).await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("main port only"),
        "{v}"
    );
    let (s, v) = call(&app.url("/admin/reload"), Some(KEY), &json!({})).await;
    assert_eq!(s, 200, "{v}");

    // The engines are on the private ports (entry + offset), not on the entries' ports.
    for (id, port) in [("chat", chat), ("embedding", emb), ("rerank", rr)] {
        let engines = app.engines(id, Some(KEY)).await;
        assert_eq!(
            engines[0]["port"].as_u64(),
            Some(u64::from(port + offset)),
            "{engines:?}"
        );
    }
    let r = client()
        .get(at(emb + offset, "/v1/models"))
        .header(ENGINE_TOKEN_HEADER, ENGINE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the engine answers on its private port");
}

#[tokio::test]
async fn off_the_engines_keep_the_entry_ports_and_the_gateway_only_its_own() {
    let p = free_ports(1, 1000)[0];
    let app = Appliance::start(
        json!({"e": {"type": "embedding", "port": p}}),
        Opts {
            model_ports: false,
            config_ports: true,
            ..Default::default()
        },
    )
    .await;
    let engines = app.engines("e", None).await;
    assert_eq!(engines[0]["port"].as_u64(), Some(u64::from(p)));
    // That port is the engine's: without the engine token it refuses, unlike the gateway.
    let (s, _) = call(&at(p, "/v1/embeddings"), None, &json!({"input": "a"})).await;
    assert_eq!(s, 401);
    let (s, v) = call(&app.url("/v1/embeddings"), None, &json!({"input": "a"})).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn reload_opens_moves_and_closes_model_ports() {
    let p = free_ports(4, 0);
    let (a1, a2, b, busy_port) = (p[0], p[1], p[2], p[3]);
    let app = Appliance::start(
        json!({"a": {"type": "embedding", "port": a1}}),
        Opts {
            model_ports: true,
            ..Default::default()
        },
    )
    .await;
    let embed = json!({"input": "a"});
    assert_eq!(call(&at(a1, "/v1/embeddings"), None, &embed).await.0, 200);
    let reload = || async { call(&app.url("/admin/reload"), None, &json!({})).await };

    // Add b on its port, move a to another.
    mock_models(
        app.models_file.parent().unwrap(),
        json!({"a": {"type": "embedding", "port": a2}, "b": {"type": "rerank", "port": b}}),
    );
    let (s, v) = reload().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_ports"][a2.to_string()], "a", "{v}");
    app.wait_ready(Duration::from_secs(20)).await;
    assert!(closed(a1).await, "the old port of a still accepts");
    assert_eq!(call(&at(a2, "/v1/embeddings"), None, &embed).await.0, 200);
    let rerank = json!({"query": "q", "documents": ["x"]});
    let (s, v) = call(&at(b, "/v1/rerank"), None, &rerank).await;
    assert_eq!(s, 200, "{v}");

    // A model port taken by another program refuses the reload whole.
    let busy = std::net::TcpListener::bind(("127.0.0.1", busy_port)).unwrap();
    mock_models(
        app.models_file.parent().unwrap(),
        json!({"a": {"type": "embedding", "port": a2}, "c": {"type": "chat", "port": busy_port}}),
    );
    let (s, v) = reload().await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("port {busy_port}")) && msg.contains("models.c.port"),
        "{msg}"
    );
    assert_eq!(call(&at(b, "/v1/rerank"), None, &rerank).await.0, 200);
    drop(busy);

    // Remove b: its port closes.
    mock_models(
        app.models_file.parent().unwrap(),
        json!({"a": {"type": "embedding", "port": a2}}),
    );
    let (s, v) = reload().await;
    assert_eq!(s, 200, "{v}");
    assert!(closed(b).await, "the port of a removed model still accepts");
    assert_eq!(call(&at(a2, "/v1/embeddings"), None, &embed).await.0, 200);
}
