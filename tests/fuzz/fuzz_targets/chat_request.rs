//! `POST /v1/chat/completions`: any body through the engine's JSON extractor and every
//! model-free check the handler applies (messages, sampling, tools, response_format and
//! the guided_* fields); then the grammar a request asks for compiled (JSON Schema, regex,
//! choice, Lark, a forced tool call) and run for a few tokens over a byte-level test
//! tokenizer, and the tool-call parser over each message's text, as if the model had
//! written it, and the reasoning splitter over the same text: fed in pieces it must give
//! what it gives for the whole text.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trident::api::json::parse_json;
use trident::api::types::chat::ChatCompletionRequest;
use trident::engine::chat::constraint::Grammars;
use trident::engine::chat::reasoning::Reasoning;
use trident::engine::chat::request::check_chat;
use trident::engine::chat::tools;
use trident::models::testutil_decoder::{tiny_tokenizer, TINY_SPECIALS};

/// Logits of the test tokenizer: 256 bytes plus its specials (the first is end of text).
const VOCAB: usize = 256 + TINY_SPECIALS.len();
/// Tokens generated under a compiled grammar.
const STEPS: usize = 8;

/// The grammar compiler of a chat engine with the byte-level test tokenizer (built once).
fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        Grammars::new(Arc::new(tiny_tokenizer()), VOCAB, 256)
            .expect("the test tokenizer suits the grammar engine. This is a bug.")
    })
}

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_json::<ChatCompletionRequest>(data) else {
        return;
    };
    let Ok(checked) = check_chat(&req, &Default::default()) else {
        return;
    };
    if let Some((spec, _)) = &checked.spec {
        if let Ok(mut c) = grammars().compile(spec) {
            // Greedy over what the grammar allows: the highest allowed token each step.
            for _ in 0..STEPS {
                let mut logits: Vec<f32> = (0..VOCAB).map(|i| (i % 97) as f32).collect();
                c.mask(&mut logits);
                let Some((best, _)) = logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_finite())
                    .max_by(|a, b| a.1.total_cmp(b.1))
                else {
                    break;
                };
                c.advance(best as u32);
            }
        }
    }
    for m in &checked.messages {
        let Some(text) = m.get("content").and_then(Value::as_str) else {
            continue;
        };
        if let Some(t) = &checked.tools {
            let _ = tools::extract(text, t);
        }
        for opened in [false, true] {
            let whole = Reasoning::split(opened, text);
            let mut r = Reasoning::new(opened);
            let (mut reasoning, mut content) = (String::new(), String::new());
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(1 + text.len() % 5) {
                let s = r.push(&piece.iter().collect::<String>());
                reasoning += &s.reasoning;
                content += &s.content;
            }
            let s = r.finish();
            reasoning += &s.reasoning;
            content += &s.content;
            assert_eq!((reasoning, content), (whole.reasoning, whole.content));
        }
    }
});
