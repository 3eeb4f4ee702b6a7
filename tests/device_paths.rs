//! The device-generic model paths (`trident::models::device`, what CUDA runs) on candle's CPU
//! backend against the fast CPU kernels, family by family: BERT (MiniLM, real weights),
//! XLM-R (tiny generated, embedding and classifier), a BERT cross-encoder (MiniLM + seeded
//! head), and the Llama / Llama-3 / Qwen2 / Qwen3 decoder (tiny generated safetensors, GGUF
//! in f32 and the quantised formats the fast path has kernels for, and the real SmolLM2
//! GGUF). In f32 vectors and logits must agree within 1e-3; batched decode runs through the
//! same scheduler driver as `tests/decoder_tiny.rs`.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_same, encode, forced_logits, mixed_plans, run_batched};
use trident::models::decoder::{DecoderModel, StepItem};
use trident::models::encoder::{EncoderModel, PairTokens};
use trident::models::testutil;
use trident::models::testutil_decoder::{write_tiny_decoder, write_tiny_gguf, TinyDecoderSpec};
use trident::models::{DTypeChoice, LoadOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn opts(dtype: DTypeChoice, generic: bool) -> LoadOptions {
    LoadOptions {
        dtype,
        generic,
        ..Default::default()
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

const TEXTS: [&str; 4] = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Device-generic paths must give the fast kernels' vectors, padding or not.",
    "A longer sentence, with punctuation; numbers like 12345 and words that split into pieces.",
];

fn encoders(dir: &Path) -> (EncoderModel, EncoderModel) {
    let fast = EncoderModel::load(dir, &opts(DTypeChoice::F32, false)).unwrap();
    let generic = EncoderModel::load(dir, &opts(DTypeChoice::F32, true)).unwrap();
    assert_eq!(fast.info().max_len, generic.info().max_len);
    assert_eq!(fast.info().kind, generic.info().kind);
    (fast, generic)
}

fn embeddings_agree(dir: &Path) {
    let (fast, generic) = encoders(dir);
    let ids: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|t| fast.encode_text(t, true).unwrap())
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let want = fast.embed(&batch).unwrap();
    // One padded batch, and each text alone: padding must not change a vector.
    let got = generic.embed(&batch).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs(g, w);
        eprintln!("{}: text {i}: max |Δ| = {d:e}", dir.display());
        assert!(d <= 1e-3, "text {i}: {d}");
        let alone = generic.embed(&[batch[i]]).unwrap();
        assert!(max_abs(&alone[0], w) <= 1e-3);
    }
    // Per-token states (TEI's /embed_all) come unpadded from the padded batch as well.
    let want = fast.token_states(&batch).unwrap();
    let got = generic.token_states(&batch).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.len(), w.len()), (ids[i].len(), ids[i].len()), "text {i}");
        for (gr, wr) in g.iter().zip(w) {
            assert!(max_abs(gr, wr) <= 1e-3, "text {i}");
        }
    }
}

#[test]
fn minilm_embeddings_match_the_fast_path() {
    embeddings_agree(&root().join("models/embedding"));
}

#[test]
fn minilm_bf16_on_the_generic_path_stays_close() {
    let dir = root().join("models/embedding");
    let fast = EncoderModel::load(&dir, &opts(DTypeChoice::F32, false)).unwrap();
    let bf16 = EncoderModel::load(&dir, &opts(DTypeChoice::Bf16, true)).unwrap();
    assert_eq!(bf16.info().dtype, "bf16");
    let ids: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|t| fast.encode_text(t, true).unwrap())
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    for (g, w) in bf16
        .embed(&batch)
        .unwrap()
        .iter()
        .zip(fast.embed(&batch).unwrap())
    {
        let c = cosine(g, &w);
        assert!(c >= 0.995, "cosine {c}");
    }
}

#[test]
fn tiny_xlm_roberta_embedding_and_classifier_match_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    testutil::write_tiny_xlmr(&dir.path().join("emb"), false).unwrap();
    embeddings_agree(&dir.path().join("emb"));
    testutil::write_tiny_xlmr(&dir.path().join("cls"), true).unwrap();
    let (fast, generic) = encoders(&dir.path().join("cls"));
    let pairs: Vec<PairTokens> = TEXTS
        .iter()
        .map(|d| fast.encode_pair("which one?", d).unwrap())
        .collect();
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let want = fast.logits(&refs).unwrap();
    let got = generic.logits(&refs).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(w.len() > 1 && max_abs(g, w) <= 1e-3, "{g:?} vs {w:?}");
    }
}

#[test]
fn minilm_cross_encoder_scores_match_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    testutil::write_minilm_cross_encoder(&root().join("models/embedding"), dir.path()).unwrap();
    let (fast, generic) = encoders(dir.path());
    let pairs: Vec<PairTokens> = TEXTS
        .iter()
        .map(|d| fast.encode_pair("what does the fox do?", d).unwrap())
        .collect();
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let want = fast.score(&refs).unwrap();
    let got = generic.score(&refs).unwrap();
    eprintln!("cross-encoder: {got:?} vs {want:?}");
    assert!(max_abs(&got, &want) <= 1e-3, "{got:?} vs {want:?}");
    // The scores differ between documents (a constant head would hide bugs).
    assert!(want.iter().any(|s| (s - want[0]).abs() > 1e-3));
}

/// The batched schedule (chunked prefill beside decoding sequences) on both paths: same
/// greedy tokens, logits within `tol`.
fn decoders_agree(fast: &DecoderModel, generic: &DecoderModel, tol: f32, what: &str) {
    let plans = mixed_plans(fast);
    let want = run_batched(fast, &plans);
    let got = run_batched(generic, &plans);
    let worst = assert_same(&got, &want, tol);
    eprintln!("{what}: generic vs fast max |Δlogit| = {worst:e}");
}

#[test]
fn tiny_decoders_match_the_fast_path() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l3 = TinyDecoderSpec::new("llama");
    l3.llama3_rope_scaling = true;
    l3.seed = 11;
    for (name, spec) in [
        ("llama", TinyDecoderSpec::new("llama")),
        ("llama3", l3),
        ("qwen2", TinyDecoderSpec::new("qwen2")),
        ("qwen3", TinyDecoderSpec::new("qwen3")),
    ] {
        let dir = tmp.path().join(name);
        write_tiny_decoder(&dir, &spec).unwrap();
        let fast = DecoderModel::load(&dir, &opts(DTypeChoice::F32, false)).unwrap();
        let generic = DecoderModel::load(&dir, &opts(DTypeChoice::F32, true)).unwrap();
        assert_eq!(
            generic.info().kv_bytes_per_token,
            fast.info().kv_bytes_per_token
        );
        decoders_agree(&fast, &generic, 1e-3, name);
    }
}

#[test]
fn tiny_gguf_decoders_match_the_fast_path() {
    use candle_core::quantized::GgmlDType;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    let mut spec = TinyDecoderSpec::new("llama");
    (
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.head_dim,
    ) = (256, 256, 4, 64);
    write_tiny_decoder(&dir, &spec).unwrap();
    // f32 weights must agree tightly; the quantised formats differ only in how each path
    // rounds the activations (both to 8 bits), so a small share of the logit spread.
    for dt in [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let file = dir.join(format!("m-{dt:?}.gguf"));
        write_tiny_gguf(&dir, &file, dt).unwrap();
        let fast = DecoderModel::load(&file, &opts(DTypeChoice::Auto, false)).unwrap();
        let generic = DecoderModel::load(&file, &opts(DTypeChoice::Auto, true)).unwrap();
        assert_eq!(generic.info().dtype, format!("gguf:{dt:?}"));
        if dt == GgmlDType::F32 {
            decoders_agree(&fast, &generic, 1e-3, "gguf F32");
            continue;
        }
        // Quantised: near-ties of a random model may flip a greedy token, so both paths are
        // fed the same tokens and their logits compared step by step.
        let prompt = encode(&fast, "The quick brown fox jumps over the lazy dog");
        let forced = encode(&fast, " and runs away");
        let want = forced_logits(&fast, &prompt, &forced);
        let got = forced_logits(&generic, &prompt, &forced);
        let spread = want[0].iter().fold(f32::MIN, |a, b| a.max(*b))
            - want[0].iter().fold(f32::MAX, |a, b| a.min(*b));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| max_abs(g, w))
            .fold(0f32, f32::max);
        eprintln!("gguf {dt:?}: max |Δlogit| = {worst:e} (spread {spread:.2})");
        assert!(worst <= 0.05 * spread, "{dt:?}: {worst} (spread {spread})");
    }
}

#[test]
fn smollm2_gguf_matches_the_fast_path() {
    let file = root().join("models/chat/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !file.exists() {
        eprintln!(
            "SKIPPED: {} not found (run scripts/fetch-models.sh)",
            file.display()
        );
        return;
    }
    let fast = DecoderModel::load(&file, &LoadOptions::default()).unwrap();
    let generic = DecoderModel::load(&file, &opts(DTypeChoice::Auto, true)).unwrap();
    let ids = encode(
        &fast,
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    );
    let mut greedy = Vec::new();
    for m in [&fast, &generic] {
        let mut cache = m.new_sequence();
        let mut toks = Vec::new();
        let mut logits = m
            .step(&mut [StepItem {
                tokens: &ids,
                cache: &mut cache,
            }])
            .unwrap()
            .remove(0);
        let first = logits.clone();
        for _ in 0..6 {
            let t = common::argmax(&logits);
            toks.push(t);
            logits = m
                .step(&mut [StepItem {
                    tokens: &[t],
                    cache: &mut cache,
                }])
                .unwrap()
                .remove(0);
        }
        greedy.push((toks, first));
    }
    let spread = greedy[0].1.iter().fold(f32::MIN, |a, b| a.max(*b))
        - greedy[0].1.iter().fold(f32::MAX, |a, b| a.min(*b));
    let d = max_abs(&greedy[0].1, &greedy[1].1);
    eprintln!(
        "SmolLM2: max |Δlogit| = {d:e} (spread {spread:.1}); {:?} vs {:?}",
        greedy[0].0, greedy[1].0
    );
    assert!(d <= 0.05 * spread, "{d} (spread {spread})");
    assert_eq!(greedy[0].0, greedy[1].0);
}

/// `trident fixture dequantize`: the SmolLM2 GGUF written as a Hugging Face checkpoint (q/k
/// rows permuted back) is the same model: its logits on the fast safetensors path are close
/// to the GGUF's, and its bf16 form loads on the generic path (what gpu-check serves).
#[test]
fn smollm2_dequantized_to_safetensors_is_the_same_model() {
    use trident::models::export::gguf_to_safetensors;
    let file = root().join("models/chat/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !file.exists() {
        eprintln!(
            "SKIPPED: {} not found (run scripts/fetch-models.sh)",
            file.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    gguf_to_safetensors(&file, tmp.path(), DTypeChoice::F32).unwrap();
    let gguf = DecoderModel::load(&file, &LoadOptions::default()).unwrap();
    let st = DecoderModel::load(tmp.path(), &opts(DTypeChoice::F32, false)).unwrap();
    assert_eq!(st.info().model_type, "llama");
    assert_eq!(st.info().eos_token_ids, gguf.info().eos_token_ids);
    assert_eq!(st.info().chat_template, gguf.info().chat_template);
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = encode(&gguf, prompt);
    assert_eq!(encode(&st, prompt), ids);
    let want = forced_logits(&gguf, &ids, &[]).remove(0);
    let got = forced_logits(&st, &ids, &[]).remove(0);
    let spread =
        want.iter().fold(f32::MIN, |a, b| a.max(*b)) - want.iter().fold(f32::MAX, |a, b| a.min(*b));
    let d = max_abs(&got, &want);
    eprintln!("dequantised SmolLM2: max |Δlogit| = {d:e} (spread {spread:.1})");
    assert!(d <= 0.05 * spread, "{d} (spread {spread})");
    assert_eq!(common::argmax(&got), common::argmax(&want));
    let bf16 = tempfile::tempdir().unwrap();
    gguf_to_safetensors(&file, bf16.path(), DTypeChoice::Bf16).unwrap();
    let g = DecoderModel::load(bf16.path(), &opts(DTypeChoice::Bf16, true)).unwrap();
    assert_eq!(g.info().dtype, "bf16");
    let got = forced_logits(&g, &ids, &[]).remove(0);
    assert_eq!(common::argmax(&got), common::argmax(&want));
}
