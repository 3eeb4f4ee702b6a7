//! `tensor_parallel_size` end to end on the CPU: an engine whose chat model is split over two
//! rank threads answers greedy requests (plain, streamed and concurrent) with the unsplit
//! engine's text, and `check-config` refuses the splits `serve` would refuse, naming the
//! numbers (heads that do not divide, a `gpus` list of the wrong length, a non-chat model).

use std::time::Duration;

use serde_json::{json, Value};

use crate::chat::{chat, chat_stream};
use crate::common::chat::{start_engine, Engine};
use crate::devices::check_config;
use trident::models::testutil_decoder::{write_tiny_decoder, TinyDecoderSpec};

async fn engine(dir: &std::path::Path, tp: usize) -> Engine {
    let models = json!({"models": {"chat": {"path": dir, "type": "chat", "port": 1,
        "device": "cpu", "dtype": "float32", "tensor_parallel_size": tp}}});
    start_engine(&models.to_string(), "chat", Duration::from_secs(60)).await
}

fn body(prompt: &str) -> Value {
    json!({"model": "chat", "temperature": 0, "max_tokens": 16,
           "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn a_model_split_over_two_cpu_ranks_answers_as_the_whole_model() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_decoder(tmp.path(), &TinyDecoderSpec::new("qwen2")).unwrap();
    let whole = engine(tmp.path(), 1).await;
    let split = engine(tmp.path(), 2).await;
    let prompts = [
        "Hi",
        "The quick brown fox",
        "Tell me about the sea, please.",
    ];
    for p in prompts {
        let want = chat(&whole.base, body(p)).await;
        assert!(!want.0.is_empty(), "{p}: empty answer");
        assert_eq!(chat(&split.base, body(p)).await, want, "{p}");
        assert_eq!(
            chat_stream(&split.base, body(p)).await,
            want,
            "{p} (stream)"
        );
    }
    // Concurrent requests batch on the split model as they do on the whole one.
    let want: Vec<_> = futures::future::join_all(prompts.map(|p| chat(&whole.base, body(p)))).await;
    let got: Vec<_> = futures::future::join_all(prompts.map(|p| chat(&split.base, body(p)))).await;
    assert_eq!(got, want);
}

#[test]
fn check_config_refuses_splits_that_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 attention heads, 2 KV heads, intermediate_size 96.
    write_tiny_decoder(tmp.path(), &TinyDecoderSpec::new("llama")).unwrap();
    let chat = |tp: usize| json!({"path": tmp.path(), "type": "chat", "port": 19101, "tensor_parallel_size": tp});
    let (ok, text) = check_config(json!({"c": chat(2)}), &[]);
    assert!(ok, "{text}");
    let (ok, text) = check_config(json!({"c": chat(4)}), &[]);
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("models.c.tensor_parallel_size") && text.contains("KV heads 2"),
        "{text}"
    );
    let mut listed = chat(2);
    listed["gpus"] = json!([0]);
    listed["device"] = json!("cuda");
    let (ok, text) = check_config(json!({"c": listed}), &[]);
    assert!(!ok && text.contains("lists 1 GPU(s)"), "{text}");
    let embed =
        json!({"path": tmp.path(), "type": "embedding", "port": 19102, "tensor_parallel_size": 2});
    let (ok, text) = check_config(json!({"e": embed}), &[]);
    assert!(
        !ok && text.contains("only applies to chat models"),
        "{text}"
    );
}
