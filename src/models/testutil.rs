//! Deterministic test models for the encoder backend, shared by the model tests and the
//! engine/API tests: a tiny XLM-RoBERTa (embedding or sequence classifier) with a hand-built
//! word-level tokenizer, and a MiniLM cross-encoder (the real MiniLM encoder with a seeded
//! `BertForSequenceClassification` head). Written in the Hugging Face layout so that
//! `tests/fixtures/gen/encoder_refs.py` computes transformers references from the very
//! same files (`cargo test --lib models::testutil -- --ignored` dumps them).

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::tensors::Mmaps;
use super::{files, ModelError};

/// SplitMix64: a tiny PRNG whose stream is fixed forever (fixtures depend on it).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`, rounded to f32.
    pub fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }

    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }
}

/// A named f32 tensor to write.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

fn io_err(e: impl std::fmt::Display, path: &Path) -> ModelError {
    ModelError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes f32 tensors as one `model.safetensors`.
pub fn write_safetensors(path: &Path, tensors: &[Tensor]) -> Result<(), ModelError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.2.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| TensorView::new(Dtype::F32, t.1.clone(), b).map(|v| (t.0.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err(e, path))?;
    safetensors::serialize_to_file(views, &None, path).map_err(|e| io_err(e, path))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io_err(e, path))?;
    std::fs::write(path, text)?;
    Ok(())
}

/// The words of the tiny tokenizer (ids follow the four specials).
pub const TINY_WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with",
    "as", "be", "at", "one", "have", "this", "from", "by", "hot", "word", "but", "what", "some",
    "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how",
    "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about",
    "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make",
    "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did",
    "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call",
    "first", "who", "may", "down", "side", "been", "now", "find", "cat", "dog", ".", ",", "?",
];

/// Sizes of the tiny XLM-RoBERTa.
pub const TINY_HIDDEN: usize = 32;
const TINY_LAYERS: usize = 2;
const TINY_HEADS: usize = 4;
const TINY_INTER: usize = 64;
/// Positions 0..=1 are reserved (padding_idx 1), so the model takes 64 tokens.
const TINY_POSITIONS: usize = 66;
/// Labels of the tiny classifier.
pub const TINY_LABELS: usize = 2;

fn tiny_tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, s) in ["<s>", "<pad>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert((*s).into(), json!(i));
    }
    for (i, w) in TINY_WORDS.iter().enumerate() {
        vocab.insert((*w).into(), json!(i + 4));
    }
    let special = |id: usize, c: &str| {
        json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<s>"), special(1, "<pad>"), special(2, "</s>"), special(3, "<unk>")],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                           "trim_offsets": true, "add_prefix_space": false},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// Writes a tiny random XLM-RoBERTa to `dir`: `XLMRobertaModel` or, with `classifier`,
/// `XLMRobertaForSequenceClassification` with [`TINY_LABELS`] labels.
pub fn write_tiny_xlmr(dir: &Path, classifier: bool) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir)?;
    let (h, i) = (TINY_HIDDEN, TINY_INTER);
    let vocab = TINY_WORDS.len() + 4;
    let mut rng = SplitMix::new(0x7A1D_5EED);
    let p = if classifier { "roberta." } else { "" };
    let mut t: Vec<Tensor> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, a: f32, base: f32, rng: &mut SplitMix| {
        let n = shape.iter().product();
        let v = rng.vec(n, a).into_iter().map(|x| x + base).collect();
        t.push((name, shape, v));
    };
    push(
        format!("{p}embeddings.word_embeddings.weight"),
        vec![vocab, h],
        0.5,
        0.0,
        &mut rng,
    );
    push(
        format!("{p}embeddings.position_embeddings.weight"),
        vec![TINY_POSITIONS, h],
        0.5,
        0.0,
        &mut rng,
    );
    push(
        format!("{p}embeddings.token_type_embeddings.weight"),
        vec![1, h],
        0.5,
        0.0,
        &mut rng,
    );
    push(
        format!("{p}embeddings.LayerNorm.weight"),
        vec![h],
        0.1,
        1.0,
        &mut rng,
    );
    push(
        format!("{p}embeddings.LayerNorm.bias"),
        vec![h],
        0.1,
        0.0,
        &mut rng,
    );
    for l in 0..TINY_LAYERS {
        let n = format!("{p}encoder.layer.{l}");
        for (name, o, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            let a = 1.0 / (inp as f32).sqrt();
            push(format!("{n}.{name}.weight"), vec![o, inp], a, 0.0, &mut rng);
            push(format!("{n}.{name}.bias"), vec![o], 0.1, 0.0, &mut rng);
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            push(format!("{n}.{ln}.weight"), vec![h], 0.1, 1.0, &mut rng);
            push(format!("{n}.{ln}.bias"), vec![h], 0.1, 0.0, &mut rng);
        }
    }
    if classifier {
        let a = 1.0 / (h as f32).sqrt();
        push(
            "classifier.dense.weight".into(),
            vec![h, h],
            a,
            0.0,
            &mut rng,
        );
        push("classifier.dense.bias".into(), vec![h], 0.1, 0.0, &mut rng);
        push(
            "classifier.out_proj.weight".into(),
            vec![TINY_LABELS, h],
            a,
            0.0,
            &mut rng,
        );
        push(
            "classifier.out_proj.bias".into(),
            vec![TINY_LABELS],
            0.1,
            0.0,
            &mut rng,
        );
    }
    write_safetensors(&dir.join("model.safetensors"), &t)?;
    let arch = if classifier {
        "XLMRobertaForSequenceClassification"
    } else {
        "XLMRobertaModel"
    };
    let mut cfg = json!({
        "architectures": [arch], "model_type": "xlm-roberta", "vocab_size": vocab,
        "hidden_size": h, "num_hidden_layers": TINY_LAYERS, "num_attention_heads": TINY_HEADS,
        "intermediate_size": i, "hidden_act": "gelu", "max_position_embeddings": TINY_POSITIONS,
        "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    });
    if classifier {
        cfg["id2label"] = json!({"0": "LABEL_0", "1": "LABEL_1"});
        cfg["label2id"] = json!({"LABEL_0": 0, "LABEL_1": 1});
    }
    write_json(&dir.join("config.json"), &cfg)?;
    write_json(&dir.join("tokenizer.json"), &tiny_tokenizer())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": TINY_POSITIONS - 2,
                "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>"}),
    )?;
    Ok(())
}

/// Writes a cross-encoder to `dst`: the BERT encoder of `minilm` (renamed under `bert.`)
/// with a seeded random pooler and a one-label classifier, as `BertForSequenceClassification`.
pub fn write_minilm_cross_encoder(minilm: &Path, dst: &Path) -> Result<(), ModelError> {
    let src = files::resolve(minilm)?;
    std::fs::create_dir_all(dst)?;
    let mmaps = Mmaps::open(&files::safetensors_files(&src)?)?;
    let store = mmaps.store()?;
    let mut t: Vec<Tensor> = Vec::new();
    for (name, dtype, shape) in store.names() {
        if name.starts_with("pooler.") || dtype == Dtype::I64 || dtype == Dtype::I32 {
            continue;
        }
        let v = store.get(&name, &shape)?;
        t.push((format!("bert.{name}"), shape, v));
    }
    let cfg_text = std::fs::read_to_string(src.join("config.json"))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&cfg_text).map_err(|e| io_err(e, &src.join("config.json")))?;
    let h = cfg["hidden_size"].as_u64().unwrap_or(0) as usize;
    let mut rng = SplitMix::new(0xC055_E7C0);
    let a = 1.0 / (h as f32).sqrt();
    t.push((
        "bert.pooler.dense.weight".into(),
        vec![h, h],
        rng.vec(h * h, a),
    ));
    t.push(("bert.pooler.dense.bias".into(), vec![h], rng.vec(h, 0.1)));
    t.push(("classifier.weight".into(), vec![1, h], rng.vec(h, a)));
    t.push(("classifier.bias".into(), vec![1], rng.vec(1, 0.1)));
    write_safetensors(&dst.join("model.safetensors"), &t)?;
    cfg["architectures"] = json!(["BertForSequenceClassification"]);
    cfg["num_labels"] = json!(1);
    cfg["id2label"] = json!({"0": "LABEL_0"});
    cfg["label2id"] = json!({"LABEL_0": 0});
    write_json(&dst.join("config.json"), &cfg)?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dst.join(f))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dumps the generated models for `tests/fixtures/gen/encoder_refs.py`:
    /// `TRIDENT_FIXTURE_DIR=/tmp/enc-fixtures cargo test --lib models::testutil -- --ignored`.
    #[test]
    #[ignore]
    fn dump_fixture_models() {
        let out =
            std::env::var("TRIDENT_FIXTURE_DIR").unwrap_or("/tmp/trident-encoder-fixtures".into());
        let out = Path::new(&out);
        write_tiny_xlmr(&out.join("tiny-xlmr"), false).unwrap();
        write_tiny_xlmr(&out.join("tiny-xlmr-cls"), true).unwrap();
        let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/embedding");
        write_minilm_cross_encoder(&minilm, &out.join("minilm-cross")).unwrap();
    }

    #[test]
    fn splitmix_stream_is_fixed() {
        let mut r = SplitMix::new(1);
        // First outputs of SplitMix64 seeded with 1 (published reference values).
        assert_eq!(r.next_u64(), 0x910A_2DEC_8902_5CC1);
        assert_eq!(r.next_u64(), 0xBEEB_8DA1_658E_EC67);
    }
}
