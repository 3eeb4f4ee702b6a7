//! docs/COMPATIBILITY.md checked against the code: every row of its parameter table is sent
//! through the gateway of an appliance on the real default models, and the answer must
//! match the row's status (supported: 200 and not counted as ignored; refused: 400 naming
//! the parameter; ignored: 200 and counted in `trident_ignored_request_fields_total`).

use serde_json::{json, Value};

use crate::common::{minilm, repo};
use crate::gateway::{client, Appliance, Opts};

const GGUF: &str = "models/chat/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Row {
    endpoint: String,
    param: String,
    status: String,
    extra: Value,
}

fn rows() -> Vec<Row> {
    let doc = std::fs::read_to_string(repo("docs/COMPATIBILITY.md")).unwrap();
    let table = doc
        .split("## Parameters")
        .nth(1)
        .expect("a Parameters section")
        .split("\n## ")
        .next()
        .unwrap();
    let unquote = |c: &str| c.trim().trim_matches('`').to_string();
    table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| endpoint"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 5, "a row of five cells: {l}");
            Row {
                endpoint: cells[0].trim().to_string(),
                param: unquote(cells[1]),
                status: cells[2].trim().to_string(),
                extra: serde_json::from_str(&unquote(cells[3]))
                    .unwrap_or_else(|e| panic!("request extra of {l}: {e}")),
            }
        })
        .collect()
}

fn base(endpoint: &str) -> (&'static str, &'static str, Value) {
    match endpoint {
        "chat" => (
            "/v1/chat/completions",
            "chat",
            json!({"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        ),
        "completions" => (
            "/v1/completions",
            "chat",
            json!({"model": "chat", "prompt": "Hi", "max_tokens": 4}),
        ),
        "embeddings" => (
            "/v1/embeddings",
            "embedding",
            json!({"model": "embedding", "input": "hello"}),
        ),
        "rerank" => (
            "/v1/rerank",
            "rerank",
            json!({"model": "rerank", "query": "q", "documents": ["a", "b"]}),
        ),
        other => panic!("unknown endpoint {other} in docs/COMPATIBILITY.md"),
    }
}

/// The engine-side count of ignored `field` for `model`, from the gateway's `/metrics`.
async fn ignored(app: &Appliance, model: &str, field: &str) -> f64 {
    let text = client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("trident_ignored_request_fields_total{"))
        .filter(|l| {
            l.contains(&format!("field=\"{field}\"")) && l.contains(&format!("model=\"{model}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

#[tokio::test]
async fn every_documented_parameter_behaves_as_the_table_says() {
    let rows = rows();
    assert!(rows.len() > 50, "the table has {} rows", rows.len());
    // Every field the code refuses is documented as refused for chat.
    for f in trident::api::types::UNSUPPORTED_GENERATION_FIELDS {
        assert!(
            rows.iter().any(|r| r.param == *f && r.status == "refused"),
            "{f} is refused by the code but not documented as refused"
        );
    }
    if !repo(GGUF).exists() {
        eprintln!("SKIPPED: {GGUF} not found (run scripts/fetch-models.sh)");
        return;
    }
    let models = json!({
        "chat": {"type": "chat", "path": repo(GGUF), "port": 1, "device": "cpu", "max_model_len": 2048},
        "embedding": {"type": "embedding", "path": minilm(), "port": 2, "device": "cpu"},
        "rerank": {"type": "rerank", "path": minilm(), "port": 3, "device": "cpu"}
    });
    let app = Appliance::start(
        models,
        Opts {
            real_engines: true,
            ..Default::default()
        },
    )
    .await;
    let mut wrong = Vec::new();
    for row in &rows {
        let (path, model, mut body) = base(&row.endpoint);
        for (k, v) in row.extra.as_object().expect("request extra is an object") {
            body[k] = v.clone();
        }
        let before = ignored(&app, model, &row.param).await;
        let r = client()
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let after = ignored(&app, model, &row.param).await;
        let param = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["param"].as_str().map(str::to_owned));
        let ok = match row.status.as_str() {
            "supported" => status == 200 && after == before,
            "refused" => status == 400 && param.as_deref() == Some(row.param.as_str()),
            "ignored" => status == 200 && after == before + 1.0,
            other => panic!("unknown status {other}"),
        };
        if !ok {
            wrong.push(format!(
                "{} {} ({}): HTTP {status}, ignored count {before} -> {after}: {}",
                row.endpoint,
                row.param,
                row.status,
                text.chars().take(200).collect::<String>()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "rows that do not match the code:\n{}",
        wrong.join("\n")
    );
}
