//! Tensor parallelism (`tensor_parallel_size`) on the CPU communicator: a decoder split over
//! 2, 3 or 4 ranks (threads) must give the unsplit model's greedy tokens and logits within
//! 1e-4 in f32: the tiny generated Llama / Llama-3 / Qwen2 / Qwen3 models (TP=2, and TP=4
//! where the head counts allow), one whose vocabulary does not divide (padded LM-head
//! shards), a quantised GGUF (shards cut between ggml blocks) and the default SmolLM2 GGUF
//! dequantised (9 heads, 3 KV heads: TP=3; its 30 layers drift to 1e-4, bound 3e-4).
//! Splits that do not divide are refused with the numbers.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_same, encode, forced_logits, mixed_plans, run_batched};
use trident::models::decoder::{DecoderModel, StepItem};
use trident::models::testutil_decoder::{write_tiny_decoder, write_tiny_gguf, TinyDecoderSpec};
use trident::models::{DTypeChoice, LoadOptions};

fn opts(dtype: DTypeChoice, tensor_parallel: usize) -> LoadOptions {
    LoadOptions {
        dtype,
        generic: true,
        tensor_parallel,
        ..Default::default()
    }
}

/// The batched schedule (chunked prefill beside decoding sequences) on the whole model and
/// on `tp` ranks: same greedy tokens, logits within `tol`.
fn split_agrees(path: &Path, dtype: DTypeChoice, tp: usize, tol: f32, what: &str) {
    let whole = DecoderModel::load(path, &opts(dtype, 1)).unwrap();
    let split = DecoderModel::load(path, &opts(dtype, tp)).unwrap();
    assert_eq!(
        split.info().kv_bytes_per_token,
        whole.info().kv_bytes_per_token,
        "{what}: the ranks together hold the whole KV"
    );
    let plans = mixed_plans(&whole);
    let want = run_batched(&whole, &plans);
    let got = run_batched(&split, &plans);
    let worst = assert_same(&got, &want, tol);
    eprintln!("{what}: TP={tp} vs TP=1 max |Δlogit| = {worst:e}");
}

#[test]
fn tiny_decoders_split_two_and_four_ways_match_the_whole_model() {
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
        split_agrees(&dir, DTypeChoice::F32, 2, 1e-4, name);
    }
    // Four ranks need four KV heads.
    for family in ["qwen2", "qwen3"] {
        let mut spec = TinyDecoderSpec::new(family);
        (spec.num_heads, spec.num_kv_heads, spec.head_dim) = (8, 4, 8);
        let dir = tmp.path().join(format!("{family}-8h"));
        write_tiny_decoder(&dir, &spec).unwrap();
        split_agrees(
            &dir,
            DTypeChoice::F32,
            4,
            1e-4,
            &format!("{family} 8 heads"),
        );
        split_agrees(
            &dir,
            DTypeChoice::F32,
            2,
            1e-4,
            &format!("{family} 8 heads"),
        );
    }
}

#[test]
fn a_vocabulary_that_does_not_divide_is_padded_per_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = TinyDecoderSpec::new("qwen2");
    // 272 tokens over 3 ranks: 91 rows each, the last padded with one zero row.
    (spec.hidden_size, spec.num_heads, spec.num_kv_heads) = (96, 6, 3);
    write_tiny_decoder(tmp.path(), &spec).unwrap();
    split_agrees(tmp.path(), DTypeChoice::F32, 3, 1e-4, "qwen2 6 heads");
}

#[test]
fn quantised_gguf_shards_match_the_whole_quantised_model() {
    use candle_core::quantized::GgmlDType;
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = TinyDecoderSpec::new("llama");
    (
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_heads,
        spec.head_dim,
    ) = (256, 256, 4, 64);
    write_tiny_decoder(tmp.path(), &spec).unwrap();
    // Row-parallel cuts (128 columns) fall on block boundaries, so the shards stay quantised
    // and each block's activation rounding is the whole model's: F32 and Q4_1 agree as f32
    // does.
    for dt in [GgmlDType::F32, GgmlDType::Q4_1] {
        let file = tmp.path().join(format!("m-{dt:?}.gguf"));
        write_tiny_gguf(tmp.path(), &file, dt).unwrap();
        split_agrees(&file, DTypeChoice::Auto, 2, 1e-4, &format!("gguf {dt:?}"));
    }
    // Q8_0: candle's x86 VNNI kernel takes a matmul whose depth is a multiple of 256 and
    // rounds its activations per 256 values; a 128-deep shard takes the plain kernel, which
    // rounds per 32. So only the rounding differs: logits within a small share of their
    // spread, the tokens fed being the same on both sides.
    let file = tmp.path().join("m-Q8_0.gguf");
    write_tiny_gguf(tmp.path(), &file, GgmlDType::Q8_0).unwrap();
    let whole = DecoderModel::load(&file, &opts(DTypeChoice::Auto, 1)).unwrap();
    let split = DecoderModel::load(&file, &opts(DTypeChoice::Auto, 2)).unwrap();
    let prompt = encode(&whole, "The quick brown fox jumps over the lazy dog");
    let forced = encode(&whole, " and runs away");
    let want = forced_logits(&whole, &prompt, &forced);
    let got = forced_logits(&split, &prompt, &forced);
    let spread = want[0].iter().fold(f32::MIN, |a, b| a.max(*b))
        - want[0].iter().fold(f32::MAX, |a, b| a.min(*b));
    let worst = got
        .iter()
        .zip(&want)
        .flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs()))
        .fold(0f32, f32::max);
    eprintln!("gguf Q8_0: TP=2 vs TP=1 max |Δlogit| = {worst:e} (spread {spread:.2})");
    assert!(worst <= 0.05 * spread, "{worst} (spread {spread})");
}

#[test]
fn splits_that_do_not_divide_the_heads_are_refused_with_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_decoder(tmp.path(), &TinyDecoderSpec::new("llama")).unwrap();
    let err = DecoderModel::load(tmp.path(), &opts(DTypeChoice::F32, 3))
        .err()
        .expect("3 ranks cannot split 4 heads")
        .to_string();
    assert!(
        err.contains("tensor_parallel_size 3") && err.contains("attention heads 4"),
        "{err}"
    );
}

#[test]
fn a_cache_of_another_model_is_refused_and_the_split_model_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_decoder(tmp.path(), &TinyDecoderSpec::new("qwen2")).unwrap();
    let split = DecoderModel::load(tmp.path(), &opts(DTypeChoice::F32, 2)).unwrap();
    let whole = DecoderModel::load(tmp.path(), &opts(DTypeChoice::F32, 1)).unwrap();
    let mut foreign = whole.new_sequence();
    let err = split
        .step(&mut [StepItem {
            tokens: &[1, 2],
            cache: &mut foreign,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
    // Bad input is refused before any rank sees it; the next step runs.
    let mut cache = split.new_sequence();
    let bad = split.step(&mut [StepItem {
        tokens: &[u32::MAX],
        cache: &mut cache,
    }]);
    assert!(bad.is_err());
    assert_eq!(cache.len(), 0);
    let logits = split
        .step(&mut [StepItem {
            tokens: &[1, 2, 3],
            cache: &mut cache,
        }])
        .unwrap();
    assert_eq!(logits[0].len(), split.info().vocab_size);
    assert_eq!(cache.len(), 3);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn smollm2_dequantised_splits_three_ways() {
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
    // 9 attention heads and 3 KV heads: three ranks of 3 and 1. Thirty layers of f32 sums in
    // another order (two all-reduces per layer) drift a little further than the tiny
    // models' two: measured 1.0e-4 on logits of magnitude ~20.
    split_agrees(tmp.path(), DTypeChoice::F32, 3, 3e-4, "SmolLM2 f32");
}
