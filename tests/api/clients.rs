//! The client matrix of docs/COMPATIBILITY.md: the official `openai` client, LangChain's
//! `ChatOpenAI` and LlamaIndex's `OpenAILike` against one appliance on the real default
//! models, through the gateway with an API key (`tests/client_matrix.py` does the calls and
//! prints what it saw). Each client is skipped with a message where it is not installed
//! (`scripts/test.sh` installs them into venvs under `~/.cache/trident`).

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::common::{minilm, python_with, repo};
use crate::gateway::{Appliance, Opts};

const GGUF: &str = "models/chat/SmolLM2-135M-Instruct.Q4_1.gguf";
const KEY: &str = "k-clients";

static APP: OnceCell<Appliance> = OnceCell::const_new();

/// The gateway process of [`APP`]. A static is never dropped, so `Appliance`'s `Drop` never
/// stops this one: without [`stop_at_exit`] it and its engines outlived the test binary.
static PID: AtomicI32 = AtomicI32::new(0);

extern "C" {
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

/// Runs as the test binary exits: SIGTERM makes the gateway stop its engines and exit.
extern "C" fn stop_at_exit() {
    let pid = PID.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

async fn appliance() -> Option<&'static Appliance> {
    if !repo(GGUF).exists() {
        eprintln!("SKIPPED: {GGUF} not found (run scripts/fetch-models.sh)");
        return None;
    }
    Some(
        APP.get_or_init(|| async {
            let models = json!({
                "chat": {"type": "chat", "path": repo(GGUF), "port": 1, "device": "cpu", "max_model_len": 2048},
                "embedding": {"type": "embedding", "path": minilm(), "port": 2, "device": "cpu"}
            });
            let app = Appliance::start(
                models,
                Opts {
                    real_engines: true,
                    api_keys: &[KEY],
                    ..Default::default()
                },
            )
            .await;
            PID.store(app.child.id() as i32, Ordering::SeqCst);
            // SAFETY: `stop_at_exit` is a plain function that only reads an atomic and
            // sends a signal; registering it has no other precondition.
            unsafe { atexit(stop_at_exit) };
            app
        })
        .await,
    )
}

async fn matrix(python: &str, client: &str) -> Value {
    let app = appliance().await.expect("checked by the caller");
    let out = tokio::process::Command::new(python)
        .arg(repo("tests/client_matrix.py"))
        .args([&app.base, KEY, client])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client_matrix.py {client} failed:\n{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    for (case, seen) in v.as_object().unwrap() {
        assert!(seen.get("exception").is_none(), "{client} {case}: {seen}");
    }
    v
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[tokio::test]
async fn openai_client_matrix() {
    let Some(python) = crate::common::chat::openai_python() else {
        return;
    };
    if appliance().await.is_none() {
        return;
    }
    let v = matrix(&python, "openai").await;
    let content = text(&v["chat"]["content"]);
    assert!(!content.is_empty());
    assert_eq!(
        v["stream"]["content"], v["chat"]["content"],
        "streamed = collected"
    );
    assert_eq!(v["stream"]["usage"], v["chat"]["usage"]);
    let n = v["n"]["contents"].as_array().unwrap();
    assert_eq!(n.len(), 3);
    assert!(n.iter().all(|c| *c == n[0]), "greedy choices agree: {n:?}");
    assert_eq!(v["n"]["indices"], json!([0, 1, 2]));
    let tokens: String = v["logprobs"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| text(t).to_string())
        .collect();
    assert_eq!(tokens, text(&v["logprobs"]["content"]));
    assert!(v["logprobs"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k == 2));
    assert!(v["logprobs"]["max"].as_f64().unwrap() <= 0.0);
    assert!(!text(&v["parse"]["name"]).is_empty(), "{}", v["parse"]);
    let tl = &v["tool_loop"];
    assert_eq!(
        (tl["name"].as_str(), tl["finish"].as_str()),
        (Some("get_weather"), Some("tool_calls"))
    );
    assert!(tl["args"]["city"].is_string(), "{tl}");
    assert!(tl["answer"].is_string(), "{tl}");
    let emb = &v["embeddings"];
    let f: Vec<f64> = emb["float"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!((f.len(), emb["float"].as_array().unwrap().len()), (384, 2));
    let b: Vec<f64> = emb["base64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(b.len(), 384);
    assert!(
        f.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
        "base64 = float"
    );
    assert_eq!(emb["dims"], 64);
    assert_eq!(
        v["errors"],
        json!({"bad_request": ["BadRequestError", 400], "not_found": ["NotFoundError", 404],
               "unauthorized": ["AuthenticationError", 401]})
    );
}

#[tokio::test]
async fn langchain_chat_openai_matrix() {
    let Some(python) = python_with(
        "langchain_openai",
        "TRIDENT_LANGCHAIN_PYTHON",
        "langchain-venv",
    ) else {
        return;
    };
    if appliance().await.is_none() {
        return;
    }
    let v = matrix(&python, "langchain").await;
    assert!(!text(&v["invoke"]["content"]).is_empty());
    assert!(
        !text(&v["structured"]["name"]).is_empty(),
        "{}",
        v["structured"]
    );
    let calls = v["bind_tools"]["calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "{}", v["bind_tools"]);
    assert_eq!(calls[0]["name"], "get_weather", "{calls:?}");
    assert!(calls[0]["args"]["city"].is_string(), "{calls:?}");
}

#[tokio::test]
async fn llamaindex_openai_like_matrix() {
    let Some(python) = python_with(
        "llama_index.llms.openai_like",
        "TRIDENT_LLAMAINDEX_PYTHON",
        "llamaindex-venv",
    ) else {
        return;
    };
    if appliance().await.is_none() {
        return;
    }
    let v = matrix(&python, "llamaindex").await;
    assert!(!text(&v["chat"]["content"]).is_empty());
    assert!(!text(&v["complete"]["text"]).is_empty());
}
