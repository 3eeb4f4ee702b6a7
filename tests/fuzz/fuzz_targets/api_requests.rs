//! Every other JSON route: the first byte picks the route, the rest is the body, read the
//! way its handler reads it and put through the handler's model-free checks.
//!
//! 0 `/v1/completions` · 1 `/v1/embeddings` · 2 `/v1/rerank`, `/v2/rerank` · 3 `/rerank`
//! (TEI or v1 by shape) · 4 `/v1/score` · 5 `/tokenize` · 6 `/detokenize` · 7 the
//! gateway's look at a body before it forwards it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trident::api::json::parse_json;
use trident::api::types::chat::parse_messages;
use trident::api::types::completions::CompletionRequest;
use trident::api::types::embeddings::{
    apply_dimensions, check_dimensions, encode_vector, parse_inputs, EmbeddingRequest,
};
use trident::api::types::rerank::{
    from_value, rank, PairTask, RerankRequest, ScoreRequest, TeiRerankRequest,
};
use trident::api::types::tokenize::{DetokenizeRequest, TokenizeRequest};
use trident::engine::chat::request::check_completion;

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

/// The hidden size the embedding checks run against (MiniLM's).
const HIDDEN: usize = 384;

/// Scores a task the way the engine ranks them: one score per pair, any order.
fn ranked(task: &PairTask, top_n: Option<usize>) {
    let scores: Vec<f64> = task
        .pairs
        .iter()
        .map(|&(a, b)| (task.firsts[a].len() as f64 - task.seconds[b].len() as f64).sin())
        .collect();
    let order = rank(&scores, top_n);
    assert!(order.len() <= scores.len());
    assert!(order.iter().all(|&i| i < scores.len()));
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 8 {
        0 => {
            if let Ok(req) = parse_json::<CompletionRequest>(body) {
                let _ = check_completion(&req, &Default::default());
            }
        }
        1 => {
            let Ok(req) = parse_json::<EmbeddingRequest>(body) else {
                return;
            };
            if parse_inputs(&req.input).is_ok() && check_dimensions(req.dimensions, HIDDEN).is_ok()
            {
                let v = apply_dimensions(vec![0.5; HIDDEN], req.dimensions);
                assert!(v.len() <= HIDDEN);
                let _ = encode_vector(v, req.encoding_format);
            }
        }
        2 => {
            if let Ok((task, top_n)) = parse_json::<RerankRequest>(body).and_then(|r| r.task()) {
                ranked(&task, top_n);
            }
        }
        3 => {
            let Ok(v) = parse_json::<Value>(body) else {
                return;
            };
            if v.get("texts").is_none() {
                if let Ok((task, top_n)) = from_value::<RerankRequest>(v).and_then(|r| r.task()) {
                    ranked(&task, top_n);
                }
            } else if let Ok(task) = from_value::<TeiRerankRequest>(v).and_then(|r| r.task()) {
                ranked(&task, None);
            }
        }
        4 => {
            if let Ok(task) = parse_json::<ScoreRequest>(body).and_then(|r| r.task()) {
                ranked(&task, None);
            }
        }
        5 => {
            if let Ok(TokenizeRequest {
                messages: Some(m), ..
            }) = parse_json::<TokenizeRequest>(body)
            {
                let _ = parse_messages(&m);
            }
        }
        6 => {
            let _ = parse_json::<DetokenizeRequest>(body);
        }
        _ => {
            let _ = trident::gateway::proxy::probe(body);
        }
    }
});
