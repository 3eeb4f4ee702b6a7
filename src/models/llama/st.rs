//! Loading a [`Llama`] from a Hugging Face checkpoint: `config.json` plus safetensors shards
//! in the `model.layers.N.self_attn.q_proj` naming of `LlamaForCausalLM`,
//! `Qwen2ForCausalLM` (q/k/v biases) and `Qwen3ForCausalLM` (`q_norm`/`k_norm`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::{inv_freq, DecoderConfig, Layer, Llama, Llama3Scaling, RopeStyle};
use crate::models::files::safetensors_files;
use crate::models::quant::QLinear;
use crate::models::ModelError;

/// Parsed `config.json` values the loader needs besides [`DecoderConfig`].
pub struct HfConfig {
    pub cfg: DecoderConfig,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub json: Value,
}

fn get_usize(j: &Value, key: &str) -> Option<usize> {
    j.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

/// Reads and checks `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|_| ModelError::Files {
        what: "cannot read config.json".into(),
        path: path.clone(),
    })?;
    let j: Value = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| ModelError::Invalid {
        path: path.clone(),
        reason,
    };
    let model_type = j
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !matches!(model_type.as_str(), "llama" | "qwen2" | "qwen3" | "mistral") {
        return Err(ModelError::Unsupported(format!(
            "decoder model_type `{model_type}`"
        )));
    }
    let need = |k: &str| get_usize(&j, k).ok_or_else(|| invalid(format!("missing `{k}`")));
    let hidden = need("hidden_size")?;
    let heads = need("num_attention_heads")?;
    let kv_heads = get_usize(&j, "num_key_value_heads").unwrap_or(heads);
    let head_dim = get_usize(&j, "head_dim").unwrap_or(hidden / heads.max(1));
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || !head_dim.is_multiple_of(2) {
        return Err(invalid(format!(
            "{heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
        )));
    }
    let theta = j
        .get("rope_theta")
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0) as f32;
    let scaling = match j.get("rope_scaling") {
        Some(s) if s.is_object() => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let f = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
            match kind {
                "llama3" => Some(Llama3Scaling {
                    factor: f("factor", 8.0),
                    low_freq_factor: f("low_freq_factor", 1.0),
                    high_freq_factor: f("high_freq_factor", 4.0),
                    original_max_position_embeddings: f("original_max_position_embeddings", 8192.0),
                }),
                "default" | "" => None,
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "rope_scaling type `{other}`"
                    )))
                }
            }
        }
        _ => None,
    };
    let cfg = DecoderConfig {
        model_type: model_type.clone(),
        hidden_size: hidden,
        intermediate_size: need("intermediate_size")?,
        num_layers: need("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size: need("vocab_size")?,
        max_position_embeddings: get_usize(&j, "max_position_embeddings").unwrap_or(2048),
        rms_norm_eps: j
            .get("rms_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-6) as f32,
        rope_style: RopeStyle::Neox,
        inv_freq: inv_freq(theta, head_dim, scaling),
    };
    Ok(HfConfig {
        tie_word_embeddings: j
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        attention_bias: model_type == "qwen2"
            || j.get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        cfg,
        json: j,
    })
}

fn vector(vb: &VarBuilder, n: usize, name: &str) -> Result<Vec<f32>, ModelError> {
    Ok(vb.get(n, name)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

fn linear(vb: &VarBuilder, rows: usize, cols: usize, bias: bool) -> Result<QLinear, ModelError> {
    let mut l = QLinear::dense(vb.get((rows, cols), "weight")?)?;
    if bias {
        l.bias = Some(vector(vb, rows, "bias")?);
    }
    Ok(l)
}

/// Loads a model directory; weights are kept in `dtype` (f32 unless asked otherwise).
pub fn load_model(dir: &Path, dtype: DType) -> Result<(Llama, HfConfig), ModelError> {
    let hf = read_config(dir)?;
    let files = safetensors_files(dir)?;
    // SAFETY: the weight files are memory-mapped read-only; trident does not modify model
    // files while serving them (the usual contract of mmap-based loaders).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, &Device::Cpu)? };
    let c = &hf.cfg;
    let (hs, is) = (c.hidden_size, c.intermediate_size);
    let (qd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let m = vb.pp("model");
    let embed_t: Tensor = m.pp("embed_tokens").get((c.vocab_size, hs), "weight")?;
    let embed = QLinear::dense(embed_t.clone())?;
    let qk_norm = c.model_type == "qwen3";
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let l = m.pp("layers").pp(i.to_string());
        let a = l.pp("self_attn");
        let mlp = l.pp("mlp");
        let qkv = QLinear::concat(vec![
            linear(&a.pp("q_proj"), qd, hs, hf.attention_bias)?,
            linear(&a.pp("k_proj"), kvd, hs, hf.attention_bias)?,
            linear(&a.pp("v_proj"), kvd, hs, hf.attention_bias)?,
        ])?;
        let gate_up = QLinear::concat(vec![
            linear(&mlp.pp("gate_proj"), is, hs, false)?,
            linear(&mlp.pp("up_proj"), is, hs, false)?,
        ])?;
        layers.push(Layer {
            attn_norm: vector(&l.pp("input_layernorm"), hs, "weight")?,
            qkv: to_dtype(qkv, dtype)?,
            q_norm: if qk_norm {
                Some(vector(&a.pp("q_norm"), c.head_dim, "weight")?)
            } else {
                None
            },
            k_norm: if qk_norm {
                Some(vector(&a.pp("k_norm"), c.head_dim, "weight")?)
            } else {
                None
            },
            o: linear(
                &a.pp("o_proj"),
                hs,
                qd,
                hf.attention_bias
                    && vb.contains_tensor(&format!("model.layers.{i}.self_attn.o_proj.bias")),
            )?,
            ffn_norm: vector(&l.pp("post_attention_layernorm"), hs, "weight")?,
            gate_up: to_dtype(gate_up, dtype)?,
            down: linear(&mlp.pp("down_proj"), hs, is, false)?,
        });
    }
    let norm = vector(&m.pp("norm"), hs, "weight")?;
    let lm_head = if hf.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
        QLinear::dense(embed_t)?
    } else {
        QLinear::dense(vb.pp("lm_head").get((c.vocab_size, hs), "weight")?)?
    };
    let cfg = hf.cfg.clone();
    Ok((Llama::new(cfg, embed, layers, norm, lm_head), hf))
}

/// `QLinear::concat` of dense parts yields f32; bring it back to the checkpoint dtype.
fn to_dtype(mut l: QLinear, dtype: DType) -> Result<QLinear, ModelError> {
    if let crate::models::quant::Weights::Dense(t) = &l.weights {
        if t.dtype() != dtype {
            l.weights = crate::models::quant::Weights::Dense(t.to_dtype(dtype)?);
        }
    }
    Ok(l)
}
