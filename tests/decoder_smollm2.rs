//! The decoder backend on the real SmolLM2-135M-Instruct Q4_1 GGUF (no tokenizer.json),
//! against llama.cpp reference numbers in `tests/fixtures/smollm2_llamacpp.json`
//! (produced by `tests/fixtures/gen/smollm2_llamacpp.py`).
//!
//! The model comes from `scripts/fetch-models.sh` (`models/chat/…`) or `TRIDENT_CHAT_GGUF`;
//! without it these tests print a notice and pass vacuously.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use trident::models::decoder::{DecoderModel, StepItem};
use trident::models::LoadOptions;

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("TRIDENT_CHAT_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("models/chat/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} not found (run scripts/fetch-models.sh)",
            p.display()
        );
        None
    }
}

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_llamacpp.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32
}

fn load() -> Option<DecoderModel> {
    Some(DecoderModel::load(&model_path()?, &LoadOptions::default()).unwrap())
}

#[test]
fn info_comes_from_gguf_metadata() {
    let Some(m) = load() else { return };
    let i = m.info();
    assert_eq!(i.model_type, "llama");
    assert_eq!(
        (i.vocab_size, i.num_layers, i.num_kv_heads, i.head_dim),
        (49152, 30, 3, 64)
    );
    assert_eq!(i.max_position_embeddings, 8192);
    // Quantised weights: the cache holds f16.
    assert_eq!(i.kv_bytes_per_token, 2 * 30 * 3 * 64 * 2);
    assert!(i.eos_token_ids.contains(&2), "{:?}", i.eos_token_ids);
    assert_eq!(i.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(i.bos_token_id, Some(1));
    assert!(!i.add_bos_token);
    assert!(i
        .chat_template
        .as_deref()
        .unwrap_or("")
        .contains("<|im_start|>"));
    assert_eq!(i.dtype, "gguf:Q4_1");
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let Some(m) = load() else { return };
    let fx = fixture();
    for case in fx["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = m
            .tokenizer()
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got, want, "ids of {text:?}");
        let back = m.tokenizer().decode(&got, false).unwrap();
        assert_eq!(back, text, "decode of {text:?}");
    }
}

#[test]
fn logits_and_greedy_match_llama_cpp() {
    let Some(m) = load() else { return };
    let fx = &fixture()["chat"];
    let prompt = ids(&fx["prompt_ids"]);
    let enc = m
        .tokenizer()
        .encode(fx["prompt"].as_str().unwrap(), false)
        .unwrap();
    assert_eq!(enc.get_ids(), prompt.as_slice());
    let mut cache = m.new_sequence();
    let logits = m
        .step(&mut [StepItem {
            tokens: &prompt,
            cache: &mut cache,
        }])
        .unwrap()
        .remove(0);
    assert_eq!(logits.len(), 49152);
    assert_eq!(cache.len(), prompt.len());
    let top_ids = ids(&fx["top_ids"]);
    let top_logits: Vec<f64> = fx["top_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let mut ours: Vec<u32> = (0..logits.len() as u32).collect();
    ours.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
    assert_eq!(ours[0], top_ids[0], "top-1");
    let overlap = ours[..5]
        .iter()
        .filter(|t| top_ids[..5].contains(t))
        .count();
    assert!(
        overlap >= 4,
        "top-5 overlap {overlap}: ours {:?} llama.cpp {:?}",
        &ours[..5],
        &top_ids[..5]
    );
    let max_diff = top_ids
        .iter()
        .zip(&top_logits)
        .map(|(&i, &l)| (logits[i as usize] as f64 - l).abs())
        .fold(0f64, f64::max);
    eprintln!("max |logit - llama.cpp| over llama.cpp's top 50: {max_diff:.4}");
    assert!(max_diff < 0.5, "max abs logit diff {max_diff}");

    // Greedy continuation.
    let want = ids(&fx["greedy"]);
    let mut got = vec![argmax(&logits)];
    while got.len() < want.len() {
        let last = [*got.last().unwrap()];
        let l = m
            .step(&mut [StepItem {
                tokens: &last,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0);
        got.push(argmax(&l));
    }
    let text = m.tokenizer().decode(&got, true).unwrap();
    eprintln!("greedy: {text:?}");
    assert!(text.contains('4'), "{text:?}");
    let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    assert!(
        same >= 8,
        "greedy tokens agree with llama.cpp for only {same}: {got:?} vs {want:?}"
    );
}

#[test]
fn batched_steps_equal_solo_runs() {
    let Some(m) = load() else { return };
    let enc = |t: &str| m.tokenizer().encode(t, false).unwrap().get_ids().to_vec();
    let plans = common::three_plans(
        enc("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"),
        enc("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"),
        enc("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n"),
        8,
    );
    let b = common::run_batched(&m, &plans);
    let s = common::run_solo(&m, &plans);
    let worst = common::assert_same(&b, &s, 1e-3);
    eprintln!("GGUF batched vs solo max |dlogit| = {worst:e}");
}
