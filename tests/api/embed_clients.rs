//! Official Python clients against the embedding side: `cohere` (ClientV2 and Client:
//! embed with every embedding type, rerank) through the gateway with the real engines, and
//! LangChain's `OpenAIEmbeddings` against the embedding engine (strings give the
//! `/v1/embeddings` vectors; token ids, LangChain's default, get the documented 400).
//! Each test is skipped with a message where its package is not installed
//! (`scripts/test.sh` installs them into venvs under `~/.cache/trident`).

use serde_json::{json, Value};

use crate::common::{cosine, floats, minilm, python_with, repo};
use crate::embeddings::minilm_engine;
use crate::gateway::{client, Appliance, Opts};

async fn run_script(python: &str, script: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(python)
        .arg(repo(script))
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stderr}");
    // Skip notices of the script's own optional paths.
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED")) {
        eprintln!("{line}");
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn post(url: String, body: Value) -> Value {
    let r = client().post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(floats)
        .collect()
}

fn ints(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "{what}: dimensions");
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{what}: differs by {worst}");
    }
}

#[tokio::test]
async fn cohere_python_client_embeds_and_reranks_through_the_gateway() {
    let Some(python) = python_with("cohere", "TRIDENT_COHERE_PYTHON", "cohere-venv") else {
        return;
    };
    let models = json!({
        "minilm": {"type": "embedding", "path": minilm(), "port": 1, "device": "cpu", "dtype": "float32"},
        "rerank": {"type": "rerank", "path": minilm(), "port": 2, "device": "cpu", "dtype": "float32"}
    });
    let app = Appliance::start(
        models,
        Opts {
            real_engines: true,
            ..Default::default()
        },
    )
    .await;
    let v = run_script(
        &python,
        "tests/cohere_client.py",
        &[&app.base, "minilm", "rerank"],
    )
    .await;
    let texts = v["v2"]["texts"].clone();
    let want = post(
        app.url("/v1/embeddings"),
        json!({"model": "minilm", "input": texts}),
    )
    .await;
    let want: Vec<Vec<f32>> = want["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();

    // v2: every type parsed by the client, floats equal to /v1/embeddings.
    let v2 = &v["v2"];
    assert_eq!(v2["type"], "EmbedByTypeResponse", "{v2}");
    assert_eq!(v2["version"], "2");
    assert!(v2["input_tokens"].as_f64().unwrap() > 10.0);
    assert_close(&rows(&v2["float"]), &want, 1e-5, "v2 float");
    for (name, offset) in [("int8", 0), ("uint8", 128)] {
        for (q, w) in ints(&v2[name]).iter().zip(&want) {
            assert_eq!(q.len(), 384, "{name}");
            for (qj, wj) in q.iter().zip(w) {
                let back = (qj - offset) as f32 / 127.0;
                assert!(
                    (back - wj).abs() <= 0.5 / 127.0 + 1e-4,
                    "{name}: {qj} for {wj}"
                );
            }
        }
    }
    for (name, offset) in [("ubinary", 0), ("binary", 128)] {
        for (b, w) in ints(&v2[name]).iter().zip(&want) {
            assert_eq!(b.len(), 48, "{name}: 384 bits in 48 bytes");
            for (j, x) in w.iter().enumerate() {
                let bit = ((b[j / 8] + offset) >> (7 - j % 8)) & 1;
                assert_eq!(bit == 1, *x > 0.0, "{name} dimension {j}");
            }
        }
    }
    assert_eq!(v2["base64"].as_array().unwrap().len(), want.len());
    // A text-only `inputs` entry embeds like the text.
    assert_close(
        &rows(&v["v2_inputs"]["float"]),
        &want[..1],
        1e-5,
        "v2 inputs",
    );

    // v1: the plain list without types, by type with them.
    let v1 = &v["v1_floats"];
    assert_eq!(
        (
            v1["type"].as_str(),
            v1["response_type"].as_str(),
            v1["version"].as_str()
        ),
        (
            Some("EmbeddingsFloatsEmbedResponse"),
            Some("embeddings_floats"),
            Some("1")
        )
    );
    assert_close(&rows(&v1["embeddings"]), &want, 1e-5, "v1 floats");
    let by_type = &v["v1_by_type"];
    assert_eq!(by_type["type"], "EmbeddingsByTypeEmbedResponse");
    assert!(
        by_type["float"].is_null(),
        "only the asked types: {by_type}"
    );
    assert_eq!(ints(&by_type["int8"]), ints(&v2["int8"]));
    assert_eq!(ints(&by_type["ubinary"]), ints(&v2["ubinary"]));

    // Rerank v2 and v1: the engine's own scores, the relevant document first.
    let docs = json!([
        "bananas are yellow",
        "the engines run as child processes of the supervisor"
    ]);
    let own = post(
        app.url("/v2/rerank"),
        json!({"model": "rerank", "query": "where do the engines run?", "documents": docs}),
    )
    .await;
    for key in ["rerank_v2", "rerank_v1"] {
        let got = v[key].as_array().unwrap();
        assert_eq!(got.len(), 2, "{key}");
        assert_eq!(got[0]["index"], 1, "{key}: {got:?}");
        for (g, o) in got.iter().zip(own["results"].as_array().unwrap()) {
            assert_eq!(g["index"], o["index"]);
            let d = g["relevance_score"].as_f64().unwrap() - o["relevance_score"].as_f64().unwrap();
            assert!(d.abs() < 1e-9, "{key}");
        }
    }
    assert_eq!(v["rerank_v1"][0]["text"], docs[1]);

    // An unknown embedding type is the client's BadRequestError with the envelope.
    let refused = &v["refused"];
    assert_eq!(refused["status_code"], 400, "{v}");
    assert_eq!(refused["body"]["error"]["param"], "embedding_types");
}

#[tokio::test]
async fn langchain_strings_match_and_token_ids_are_refused() {
    let Some(python) = python_with(
        "langchain_openai",
        "TRIDENT_LANGCHAIN_PYTHON",
        "langchain-venv",
    ) else {
        return;
    };
    let s = minilm_engine().await;
    let base = s.url("/v1");
    let v = run_script(&python, "tests/langchain_embeddings.py", &[&base, "minilm"]).await;
    let mut texts = v["docs"].as_array().unwrap().clone();
    texts.push(v["query_text"].clone());
    let (status, _, want) = crate::common::call(
        &s,
        "/v1/embeddings",
        &json!({"model": "minilm", "input": texts}),
    )
    .await;
    assert_eq!(status, 200);
    let want: Vec<Vec<f32>> = want["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    let mut got = rows(&v["documents"]);
    got.push(floats(&v["query"]));
    assert_close(
        &got,
        &want,
        1e-5,
        "LangChain with check_embedding_ctx_length=False",
    );
    assert!(cosine(&got[0], &got[1]) < 0.99);

    let ids = &v["ids"];
    assert_eq!(ids["status_code"], 400, "{v}");
    assert_eq!(ids["param"], "input");
    assert_eq!(ids["code"], "token_ids_not_accepted");
    assert!(
        ids["message"]
            .as_str()
            .unwrap()
            .contains("check_embedding_ctx_length=False"),
        "{ids}"
    );
    // The script printed a SKIPPED line (forwarded above) when tiktoken had no cl100k_base.
    if v["tiktoken"] == true {
        assert_eq!(v["default_path"]["status_code"], 400, "{v}");
        assert_eq!(v["default_path"]["param"], "input");
    }
}
