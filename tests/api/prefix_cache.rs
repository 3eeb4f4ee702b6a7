//! The chat prefix cache on the real SmolLM2-135M-Instruct Q4_1 GGUF: two engines, one with
//! `prefix_cache` on and one with it off, answer the same greedy requests (a long shared
//! system prompt, different user turns, one after the other and concurrently) with the
//! same text, and the cached engine counts its hits. Skipped without the model file.

use std::time::Duration;

use serde_json::{json, Value};

use crate::chat::chat;
use crate::common::chat::{metric_value, root, start_engine, Engine};

const GGUF: &str = "models/chat/SmolLM2-135M-Instruct.Q4_1.gguf";

async fn engine(prefix_cache: bool) -> Engine {
    let models = json!({"models": {"chat": {"path": GGUF, "type": "chat", "port": 1,
        "max_model_len": 2048, "device": "cpu", "prefix_cache": prefix_cache}}});
    start_engine(&models.to_string(), "chat", Duration::from_secs(120)).await
}

/// A system prompt of a few hundred tokens, as a RAG or agent prompt would be.
fn system_prompt() -> String {
    let facts = [
        "The warehouse opens at seven and closes at nineteen.",
        "Orders above fifty euros ship for free within the country.",
        "Returns are accepted for thirty days with the receipt.",
        "The support line answers in English, French and German.",
        "Fragile items travel in double boxes with foam corners.",
    ];
    let mut s = String::from("You are the assistant of a small shop. Facts you may use:\n");
    for i in 0..8 {
        for f in facts {
            s.push_str(&format!("{i}. {f}\n"));
        }
    }
    s.push_str("Answer in one short sentence.");
    s
}

fn body(question: &str) -> Value {
    json!({"model": "chat", "temperature": 0, "max_tokens": 24, "messages": [
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": question},
    ]})
}

fn hits(e: &Engine) -> (f64, f64) {
    let text = e.metrics.render();
    let get = |name| metric_value(&text, name, &["model=\"chat\""]).unwrap_or(0.0);
    (
        get("trident_prefix_cache_query_tokens_total"),
        get("trident_prefix_cache_hit_tokens_total"),
    )
}

#[tokio::test]
async fn greedy_answers_are_the_same_with_and_without_the_prefix_cache() {
    if !root().join(GGUF).exists() {
        eprintln!("SKIPPED: {GGUF} not found (run scripts/fetch-models.sh)");
        return;
    }
    let questions = [
        "When does the warehouse open?",
        "Can I return a lamp after two weeks?",
        "Which languages does support speak?",
    ];
    let off = engine(false).await;
    let mut want = Vec::new();
    for q in questions {
        want.push(chat(&off.base, body(q)).await);
    }
    assert_eq!(hits(&off), (0.0, 0.0), "the cache is off");

    let on = engine(true).await;
    // One after the other: the first fills the cache, the others reuse the system prompt.
    for (q, w) in questions.iter().zip(&want) {
        assert_eq!(&chat(&on.base, body(q)).await, w, "{q}");
    }
    let (queried, hit) = hits(&on);
    let prompt = want[0].2["prompt_tokens"].as_f64().expect("prompt_tokens");
    assert!(prompt > 300.0, "system prompt too short: {prompt} tokens");
    assert!(queried >= 3.0 * prompt * 0.9, "{queried}");
    // Both later requests reuse at least the system prompt's whole blocks.
    assert!(hit >= 2.0 * (prompt - 40.0), "hit {hit} of {queried}");
    // Concurrently, sharing the cached blocks while they run.
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let (base, b) = (on.base.clone(), body(q));
            tokio::spawn(async move { chat(&base, b).await })
        })
        .collect();
    for (t, w) in tasks.into_iter().zip(&want) {
        assert_eq!(&t.await.expect("task"), w);
    }
    assert!(hits(&on).1 >= hit + 3.0 * (prompt - 40.0));
    let blocks = metric_value(
        &on.metrics.render(),
        "trident_prefix_cache_blocks",
        &["model=\"chat\""],
    );
    assert!(
        blocks.is_some_and(|b| b >= prompt / 16.0 - 3.0),
        "{blocks:?}"
    );
}
