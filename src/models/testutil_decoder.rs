//! Tiny random decoder checkpoints for tests, written deterministically from Rust in the
//! Hugging Face layout (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`): Llama (optionally with Llama-3 rope
//! scaling), Qwen2 (q/k/v biases) and Qwen3 (q/k RMSNorm). Used by this crate's decoder
//! tests and by the chat engine's tests; not part of serving.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// What to generate.
#[derive(Debug, Clone)]
pub struct TinyDecoderSpec {
    /// `llama`, `qwen2` or `qwen3`.
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Add a `rope_scaling` of type `llama3` to the config.
    pub llama3_rope_scaling: bool,
    pub seed: u64,
}

impl TinyDecoderSpec {
    /// A 2-layer model of the given family with grouped-query attention.
    pub fn new(model_type: &str) -> Self {
        TinyDecoderSpec {
            model_type: model_type.into(),
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            max_position_embeddings: 512,
            tie_word_embeddings: model_type != "llama",
            llama3_rope_scaling: false,
            seed: 7,
        }
    }
}

/// Special tokens of the tiny tokenizer, after the 256 byte tokens.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Vocabulary size of the tiny models (256 bytes, 3 specials, padding).
pub const TINY_VOCAB: usize = 272;

/// GPT-2's reversible byte → printable character map.
fn byte_chars() -> Vec<char> {
    let mut direct: Vec<u32> = ('!' as u32..='~' as u32).collect();
    direct.extend('¡' as u32..='¬' as u32);
    direct.extend('®' as u32..='ÿ' as u32);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if direct.contains(&b) {
                char::from_u32(b).expect("byte is a valid char. This is a bug.")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("mapped byte is a valid char. This is a bug.")
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer without merges: one token per byte, plus ChatML specials.
pub fn tiny_tokenizer() -> Tokenizer {
    let mut vocab: Vocab = byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    for (i, s) in TINY_SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), 256 + i as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .build()
        .expect("static tokenizer is valid. This is a bug.");
    let mut t = Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
    t.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::new(
        false, false, false,
    )));
    let specials: Vec<AddedToken> = TINY_SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    t.add_special_tokens(specials)
        .expect("static tokens are valid. This is a bug.");
    t
}

/// SplitMix64: a small seeded generator so the weights are the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-1, 1).
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Norm weights around 1.
    fn norm(&mut self, n: usize) -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..n).map(|_| 1.0 + 0.2 * self.next()).collect();
        Tensor::from_vec(v, n, &Device::Cpu)
    }
}

/// Writes a tiny random checkpoint of `spec` into `dir` (created if needed).
pub fn write_tiny_decoder(
    dir: &Path,
    spec: &TinyDecoderSpec,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    let s = spec;
    let (h, is, hd) = (s.hidden_size, s.intermediate_size, s.head_dim);
    let (qd, kvd) = (s.num_heads * hd, s.num_kv_heads * hd);
    let mut rng = Rng(s.seed);
    let mut w: HashMap<String, Tensor> = HashMap::new();
    // Uniform(-a, a) has variance a²/3: a = sqrt(3 / fan_in) keeps activations near unit scale.
    let lin = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    w.insert(
        "model.embed_tokens.weight".into(),
        rng.tensor(&[TINY_VOCAB, h], 1.0)?,
    );
    for l in 0..s.num_layers {
        let p = format!("model.layers.{l}");
        w.insert(format!("{p}.input_layernorm.weight"), rng.norm(h)?);
        w.insert(format!("{p}.post_attention_layernorm.weight"), rng.norm(h)?);
        for (name, rows) in [("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)] {
            w.insert(
                format!("{p}.self_attn.{name}.weight"),
                rng.tensor(&[rows, h], lin(h))?,
            );
            if s.model_type == "qwen2" {
                w.insert(
                    format!("{p}.self_attn.{name}.bias"),
                    rng.tensor(&[rows], 0.5)?,
                );
            }
        }
        w.insert(
            format!("{p}.self_attn.o_proj.weight"),
            rng.tensor(&[h, qd], lin(qd))?,
        );
        if s.model_type == "qwen3" {
            w.insert(format!("{p}.self_attn.q_norm.weight"), rng.norm(hd)?);
            w.insert(format!("{p}.self_attn.k_norm.weight"), rng.norm(hd)?);
        }
        w.insert(
            format!("{p}.mlp.gate_proj.weight"),
            rng.tensor(&[is, h], lin(h))?,
        );
        w.insert(
            format!("{p}.mlp.up_proj.weight"),
            rng.tensor(&[is, h], lin(h))?,
        );
        w.insert(
            format!("{p}.mlp.down_proj.weight"),
            rng.tensor(&[h, is], lin(is))?,
        );
    }
    w.insert("model.norm.weight".into(), rng.norm(h)?);
    if !s.tie_word_embeddings {
        w.insert(
            "lm_head.weight".into(),
            rng.tensor(&[TINY_VOCAB, h], 2.0 * lin(h))?,
        );
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors"))?;

    let arch = match s.model_type.as_str() {
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let (bos, im_end) = (256u32, 258u32);
    let mut cfg = serde_json::json!({
        "architectures": [arch],
        "model_type": s.model_type,
        "hidden_size": h,
        "intermediate_size": is,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": hd,
        "max_position_embeddings": s.max_position_embeddings,
        "vocab_size": TINY_VOCAB,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": s.tie_word_embeddings,
        "attention_bias": s.model_type == "qwen2",
        "bos_token_id": bos,
        "eos_token_id": im_end,
        "torch_dtype": "float32",
    });
    if s.llama3_rope_scaling {
        cfg["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64
        });
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"bos_token_id": bos, "eos_token_id": [im_end, bos]}),
        )?,
    )?;
    let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": false,
            "chat_template": template, "model_max_length": s.max_position_embeddings
        }))?,
    )?;
    tiny_tokenizer().save(dir.join("tokenizer.json"), false)?;
    Ok(())
}

/// Converts a tiny llama checkpoint written by [`write_tiny_decoder`] into a GGUF file the
/// way llama.cpp's converter does (q/k rows permuted for interleaved rotary pairs, llama.cpp
/// tensor names), with the linear weights and embeddings in `dtype` (norms stay f32). The
/// tokenizer stays in `tokenizer.json` next to the source, so put `dst` in that directory.
/// K-quants need every input width to be a multiple of 256.
pub fn write_tiny_gguf(
    src_dir: &Path,
    dst: &Path,
    dtype: candle_core::quantized::GgmlDType,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src_dir.join("config.json"))?)?;
    let n = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
    if cfg["model_type"] != "llama" {
        return Err("write_tiny_gguf converts llama checkpoints only".into());
    }
    let (heads, kv_heads, hd, layers) = (
        n("num_attention_heads"),
        n("num_key_value_heads"),
        n("head_dim"),
        n("num_hidden_layers"),
    );
    let w = candle_core::safetensors::load(src_dir.join("model.safetensors"), &Device::Cpu)?;
    let get = |k: &str| w.get(k).cloned().ok_or_else(|| format!("missing {k}"));
    // Rows of each head: [first half, second half] → interleaved.
    let permute = |t: Tensor, nh: usize| -> candle_core::Result<Tensor> {
        let (rows, cols) = t.dims2()?;
        t.reshape((nh, 2, rows / nh / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: Tensor, dt: GgmlDType| -> candle_core::Result<()> {
        tensors.push((name, QTensor::quantize(&t, dt)?));
        Ok(())
    };
    add(
        "token_embd.weight".into(),
        get("model.embed_tokens.weight")?,
        dtype,
    )?;
    add(
        "output_norm.weight".into(),
        get("model.norm.weight")?,
        GgmlDType::F32,
    )?;
    if let Ok(t) = get("lm_head.weight") {
        add("output.weight".into(), t, dtype)?;
    }
    for l in 0..layers {
        let s = |x: &str| format!("model.layers.{l}.{x}");
        let b = |x: &str| format!("blk.{l}.{x}");
        add(
            b("attn_norm.weight"),
            get(&s("input_layernorm.weight"))?,
            GgmlDType::F32,
        )?;
        add(
            b("ffn_norm.weight"),
            get(&s("post_attention_layernorm.weight"))?,
            GgmlDType::F32,
        )?;
        add(
            b("attn_q.weight"),
            permute(get(&s("self_attn.q_proj.weight"))?, heads)?,
            dtype,
        )?;
        add(
            b("attn_k.weight"),
            permute(get(&s("self_attn.k_proj.weight"))?, kv_heads)?,
            dtype,
        )?;
        add(
            b("attn_v.weight"),
            get(&s("self_attn.v_proj.weight"))?,
            dtype,
        )?;
        add(
            b("attn_output.weight"),
            get(&s("self_attn.o_proj.weight"))?,
            dtype,
        )?;
        add(
            b("ffn_gate.weight"),
            get(&s("mlp.gate_proj.weight"))?,
            dtype,
        )?;
        add(b("ffn_up.weight"), get(&s("mlp.up_proj.weight"))?, dtype)?;
        add(
            b("ffn_down.weight"),
            get(&s("mlp.down_proj.weight"))?,
            dtype,
        )?;
    }
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let meta: Vec<(&str, gguf_file::Value)> = vec![
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("llama.block_count", u(layers)),
        ("llama.context_length", u(n("max_position_embeddings"))),
        ("llama.embedding_length", u(n("hidden_size"))),
        ("llama.feed_forward_length", u(n("intermediate_size"))),
        ("llama.attention.head_count", u(heads)),
        ("llama.attention.head_count_kv", u(kv_heads)),
        ("llama.rope.dimension_count", u(hd)),
        (
            "llama.rope.freq_base",
            gguf_file::Value::F32(cfg["rope_theta"].as_f64().unwrap_or(1e4) as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32),
        ),
        ("tokenizer.ggml.eos_token_id", u(258)),
        ("tokenizer.ggml.bos_token_id", u(256)),
    ];
    let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(dst)?;
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}
