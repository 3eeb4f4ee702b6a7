//! The decoder backend on tiny random safetensors checkpoints written by
//! `trident::models::testutil_decoder`: every family loads, batched steps equal solo runs,
//! bad input is an error, and (with the committed fixture from `transformers`) the logits
//! match the reference implementation.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_same, run_batched, run_solo, three_plans};
use trident::models::decoder::{DecoderModel, StepItem};
use trident::models::testutil_decoder::{write_tiny_decoder, TinyDecoderSpec};
use trident::models::{LoadOptions, ModelError};

fn specs() -> Vec<(&'static str, TinyDecoderSpec)> {
    let mut l3 = TinyDecoderSpec::new("llama");
    l3.llama3_rope_scaling = true;
    l3.seed = 11;
    vec![
        ("llama", TinyDecoderSpec::new("llama")),
        ("llama3", l3),
        ("qwen2", TinyDecoderSpec::new("qwen2")),
        ("qwen3", TinyDecoderSpec::new("qwen3")),
    ]
}

fn tiny(dir: &Path, spec: &TinyDecoderSpec) -> DecoderModel {
    write_tiny_decoder(dir, spec).unwrap();
    DecoderModel::load(dir, &LoadOptions::default()).unwrap()
}

fn encode(m: &DecoderModel, text: &str) -> Vec<u32> {
    m.tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}

#[test]
fn tiny_models_load_with_their_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in specs() {
        let m = tiny(&tmp.path().join(name), &spec);
        let i = m.info();
        assert_eq!(i.model_type, spec.model_type);
        assert_eq!((i.num_layers, i.num_kv_heads, i.head_dim), (2, 2, 16));
        assert_eq!(i.kv_bytes_per_token, 2 * 2 * 2 * 16 * 4);
        assert_eq!(i.eos_token_ids, vec![258, 256], "{name}");
        assert_eq!(i.eos_token.as_deref(), Some("<|im_end|>"));
        assert_eq!(
            (i.bos_token_id, i.bos_token.as_deref()),
            (Some(256), Some("<|endoftext|>"))
        );
        assert!(i.chat_template.as_deref().unwrap().contains("<|im_start|>"));
        assert_eq!(i.dtype, "f32");
        let ids = encode(&m, "<|im_start|>héllo<|im_end|>");
        assert_eq!(ids.len(), 1 + 6 + 1);
        assert_eq!(
            m.tokenizer().decode(&ids, false).unwrap(),
            "<|im_start|>héllo<|im_end|>"
        );
    }
}

#[test]
fn batched_steps_equal_solo_runs() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in specs() {
        let m = tiny(&tmp.path().join(name), &spec);
        let plans = three_plans(
            encode(&m, "Hi"),
            encode(&m, "The quick brown fox jumps"),
            encode(&m, "<|im_start|>user\nA much longer prompt, with punctuation and numbers 12345!<|im_end|>\n"),
            10,
        );
        let b = run_batched(&m, &plans);
        let s = run_solo(&m, &plans);
        let worst = assert_same(&b, &s, 1e-3);
        eprintln!("{name}: batched vs solo max |Δlogit| = {worst:e}");
        // The schedule produced varied tokens (a degenerate model would hide bugs).
        let distinct: std::collections::HashSet<_> = b.iter().flat_map(|x| x.0.iter()).collect();
        assert!(distinct.len() >= 3, "{name}: {distinct:?}");
    }
}

#[test]
fn bad_input_is_an_input_error_and_leaves_caches_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = TinyDecoderSpec::new("qwen3");
    spec.max_position_embeddings = 8;
    let m = tiny(&tmp.path().join("m"), &spec);
    let mut a = m.new_sequence();
    let mut b = m.new_sequence();
    let too_big = [1u32, 9999];
    let r = m.step(&mut [
        StepItem {
            tokens: &[1, 2],
            cache: &mut a,
        },
        StepItem {
            tokens: &too_big,
            cache: &mut b,
        },
    ]);
    assert!(matches!(r, Err(ModelError::Input(_))), "{r:?}");
    assert_eq!((a.len(), b.len()), (0, 0));
    let r = m.step(&mut [StepItem {
        tokens: &[],
        cache: &mut a,
    }]);
    assert!(matches!(r, Err(ModelError::Input(_))));
    m.step(&mut [StepItem {
        tokens: &[1, 2, 3, 4, 5, 6],
        cache: &mut a,
    }])
    .unwrap();
    let r = m.step(&mut [StepItem {
        tokens: &[1, 2, 3],
        cache: &mut a,
    }]);
    assert!(
        matches!(r, Err(ModelError::Input(ref s)) if s.contains("8 positions")),
        "{r:?}"
    );
    assert_eq!(a.len(), 6);
    m.step(&mut [StepItem {
        tokens: &[1, 2],
        cache: &mut a,
    }])
    .unwrap();
    assert_eq!(a.len(), 8);
}

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_decoders_transformers.json")
}

/// Token ids fed to both implementations for the reference comparison.
const REF_TEXT: &str = "<|im_start|>user\nReference text for transformers, 2+2=4.<|im_end|>\n";

/// Writes the tiny models to `TRIDENT_TINY_DIR` (default /tmp/trident-tiny-decoders) for
/// `tests/fixtures/gen/tiny_decoders_transformers.py`.
#[test]
#[ignore]
fn dump_tiny_models() {
    let dir = PathBuf::from(
        std::env::var("TRIDENT_TINY_DIR").unwrap_or("/tmp/trident-tiny-decoders".into()),
    );
    for (name, spec) in specs() {
        let m = tiny(&dir.join(name), &spec);
        std::fs::write(
            dir.join(name).join("ref_ids.json"),
            serde_json::to_string(&encode(&m, REF_TEXT)).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn logits_match_transformers() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path()).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (name, spec) in specs() {
        let m = tiny(&tmp.path().join(name), &spec);
        let ids = encode(&m, REF_TEXT);
        let want_ids: Vec<u32> = fx[name]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_ids, "{name}: ids");
        // Feed the text in two chunks, comparing the last-token logits of each.
        let cut = ids.len() / 2;
        let mut cache = m.new_sequence();
        for (part, key) in [(&ids[..cut], "logits_mid"), (&ids[cut..], "logits_last")] {
            let got = m
                .step(&mut [StepItem {
                    tokens: part,
                    cache: &mut cache,
                }])
                .unwrap()
                .remove(0);
            let want: Vec<f32> = fx[name][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("{name} {key}: max |Δ| vs transformers = {d:e}");
            assert!(d < 1e-4, "{name} {key}: max abs diff {d}");
        }
    }
}

/// A llama checkpoint converted to GGUF the llama.cpp way (permuted q/k, interleaved rope)
/// gives the safetensors logits in f32, close ones in every quantised format, and batched
/// steps equal solo runs in each.
#[test]
fn gguf_conversions_match_the_safetensors_model() {
    use candle_core::quantized::GgmlDType;
    use trident::models::testutil_decoder::write_tiny_gguf;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    let mut spec = TinyDecoderSpec::new("llama");
    // K-quants need widths that are multiples of 256.
    (
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.head_dim,
    ) = (256, 256, 4, 64);
    let st = tiny(&dir, &spec);
    let ids = encode(&st, REF_TEXT);
    let mut c = st.new_sequence();
    let want = st
        .step(&mut [StepItem {
            tokens: &ids,
            cache: &mut c,
        }])
        .unwrap()
        .remove(0);
    let spread =
        want.iter().fold(f32::MIN, |a, b| a.max(*b)) - want.iter().fold(f32::MAX, |a, b| a.min(*b));
    for (dt, tol) in [
        (GgmlDType::F32, 1e-3),
        (GgmlDType::F16, 0.05),
        (GgmlDType::Q8_0, 0.1),
        (GgmlDType::Q4_1, 0.25),
        (GgmlDType::Q4_0, 0.25),
        (GgmlDType::Q4K, 0.25),
        (GgmlDType::Q6K, 0.1),
    ] {
        let file = dir.join(format!("m-{dt:?}.gguf"));
        write_tiny_gguf(&dir, &file, dt).unwrap();
        let g = DecoderModel::load(&file, &LoadOptions::default()).unwrap();
        assert_eq!(g.info().dtype, format!("gguf:{dt:?}"));
        let mut c = g.new_sequence();
        let got = g
            .step(&mut [StepItem {
                tokens: &ids,
                cache: &mut c,
            }])
            .unwrap()
            .remove(0);
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{dt:?}: max |Δlogit| vs safetensors f32 = {d:e} (logit spread {spread:.1})");
        assert!(d <= tol * spread, "{dt:?}: {d} (spread {spread})");
        let plans = three_plans(
            encode(&g, "Hi"),
            encode(&g, "The quick brown fox"),
            ids.clone(),
            6,
        );
        assert_same(&run_batched(&g, &plans), &run_solo(&g, &plans), 1e-3);
    }
}
