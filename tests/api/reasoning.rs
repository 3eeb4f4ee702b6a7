//! Reasoning models on the real SmolLM2 chat engine with `"reasoning_parser": "think"`:
//! a grammar makes the model write `<think>…</think>` before its answer (SmolLM2 does not
//! reason by itself), and the engine must return the inside as `reasoning_content` and only
//! the rest as `content`, whole and streamed, for `n` choices too.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::chat::{post, question};
use crate::common::chat::{root, sse_data, start_engine, Engine};

const GGUF: &str = "models/chat/SmolLM2-135M-Instruct.Q4_1.gguf";

static THINKER: OnceCell<Engine> = OnceCell::const_new();

async fn engine() -> Option<&'static Engine> {
    if !root().join(GGUF).exists() {
        eprintln!("SKIPPED: {GGUF} not found (run scripts/fetch-models.sh)");
        return None;
    }
    let models = json!({"models": {"thinker": {"path": GGUF, "type": "chat", "port": 1,
        "max_model_len": 2048, "device": "cpu", "reasoning_parser": "think"}}});
    Some(
        THINKER
            .get_or_init(|| async {
                start_engine(&models.to_string(), "thinker", Duration::from_secs(120)).await
            })
            .await,
    )
}

// Words of bounded length, so whatever greedy path the model's numerics take, the grammar
// ends within `max_tokens` (an unbounded word once ran past it inside the thought).
const THOUGHT: &str = "[a-z]{1,10}( [a-z]{1,10}){1,5}";
const ANSWER: &str = "[A-Z][a-z]{0,10}( [a-z]{1,10}){0,3}";

fn body(n: usize) -> Value {
    json!({"messages": question("What is the capital of France? Think first."),
           "temperature": 0, "max_tokens": 160, "n": n,
           "guided_regex": format!("<think>{THOUGHT}</think>\n\n{ANSWER}")})
}

fn full(re: &str) -> regex::Regex {
    regex::Regex::new(&format!("^(?:{re})$")).unwrap()
}

#[tokio::test]
async fn think_blocks_come_back_as_reasoning_content_whole_and_streamed() {
    let Some(e) = engine().await else { return };
    let (status, v) = post(&e.base, "/v1/chat/completions", body(2)).await;
    assert_eq!(status, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    let reasoning = msg["reasoning_content"]
        .as_str()
        .expect("reasoning_content");
    let content = msg["content"].as_str().expect("content");
    assert!(full(THOUGHT).is_match(reasoning), "{reasoning:?}");
    assert!(full(ANSWER).is_match(content), "{content:?}");
    assert!(
        !content.contains("think"),
        "a tag leaked into the answer: {content:?}"
    );
    assert_eq!(v["choices"][1]["message"], *msg, "greedy choices agree");

    // Streamed: reasoning deltas first, then content deltas, no tag in either.
    let mut b = body(1);
    b["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", e.base))
        .json(&b)
        .send()
        .await
        .unwrap();
    let (mut r_text, mut c_text, mut saw_content) = (String::new(), String::new(), false);
    for d in sse_data(&r.text().await.unwrap()) {
        if d == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&d).unwrap();
        let delta = &c["choices"][0]["delta"];
        if let Some(t) = delta["reasoning_content"].as_str() {
            assert!(!saw_content, "reasoning after the answer began");
            r_text.push_str(t);
        }
        if let Some(t) = delta["content"].as_str() {
            saw_content |= !t.is_empty();
            c_text.push_str(t);
        }
    }
    assert_eq!((r_text.as_str(), c_text.as_str()), (reasoning, content));

    // Free text without tags stays content; bad chat_template_kwargs is a 400.
    let (_, v) = post(
        &e.base,
        "/v1/chat/completions",
        json!({"messages": question("Say hi."), "temperature": 0, "max_tokens": 8,
               "chat_template_kwargs": {"enable_thinking": false}}),
    )
    .await;
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(
        v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{v}"
    );
    let (status, v) = post(
        &e.base,
        "/v1/chat/completions",
        json!({"messages": question("Say hi."), "chat_template_kwargs": [1]}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("chat_template_kwargs"))
    );
}
