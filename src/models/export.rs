//! Writes a GGUF decoder back out as a Hugging Face safetensors checkpoint (dequantised, in
//! f32/f16/bf16): the one way to get a real-weights safetensors chat model where no hub is
//! reachable (`trident fixture dequantize`, used by `scripts/gpu-check.sh`). The weights come
//! from the GGUF loader (`llama::gguf`), so the export sees exactly the model trident serves;
//! the q/k rows of llama-arch files are permuted back from llama.cpp's interleaved-rope order
//! to the Hugging Face one. The tokenizer and chat template come from the GGUF metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::json;

use super::decoder::DecoderModel;
use super::llama::gguf::GgufFile;
use super::llama::RopeStyle;
use super::quant::QLinear;
use super::{DTypeChoice, LoadOptions, ModelError};

/// Rows of a (q or k) projection in llama.cpp's order back in Hugging Face's: within each
/// head, GGUF row `2i + j` is HF row `j * head_dim / 2 + i`.
fn unpermute(w: &[f32], cols: usize, heads: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_dim + 2 * i + j) * cols;
                let dst = (h * head_dim + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// `rope_theta` recovered from the inverse frequencies (`inv_freq[1] = theta^(-2/d)`).
fn rope_theta(inv_freq: &[f32], head_dim: usize) -> f64 {
    match inv_freq.get(1) {
        Some(&f) if f > 0.0 => (f as f64).powf(-(head_dim as f64) / 2.0),
        _ => 10_000.0,
    }
}

/// Dequantises the decoder in `gguf` into `out` (`config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json`) with weights in `dtype` (`auto` = f32).
pub fn gguf_to_safetensors(gguf: &Path, out: &Path, dtype: DTypeChoice) -> Result<(), ModelError> {
    let dtype = match dtype {
        DTypeChoice::Auto | DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::Bf16 => DType::BF16,
    };
    let meta = DecoderModel::load(gguf, &LoadOptions::default())?;
    let model = GgufFile::open(gguf)?.load_model()?;
    let c = &model.cfg;
    let (hd, nh, nkv, hs, is) = (
        c.head_dim,
        c.num_heads,
        c.num_kv_heads,
        c.hidden_size,
        c.intermediate_size,
    );
    let (qd, kvd) = (nh * hd, nkv * hd);
    let interleaved = c.rope_style == RopeStyle::Interleaved;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, v: Vec<f32>, shape: &[usize]| -> Result<(), ModelError> {
        t.insert(
            name,
            Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?.to_dtype(dtype)?,
        );
        Ok(())
    };
    let dense = |l: &QLinear| -> Result<Vec<f32>, ModelError> {
        Ok(l.dense_f32()?.flatten_all()?.to_vec1::<f32>()?)
    };
    put(
        "model.embed_tokens.weight".into(),
        dense(&model.embed)?,
        &[c.vocab_size, hs],
    )?;
    put("model.norm.weight".into(), model.norm.clone(), &[hs])?;
    put(
        "lm_head.weight".into(),
        dense(&model.lm_head)?,
        &[c.vocab_size, hs],
    )?;
    let mut bias = false;
    for (i, l) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let qkv = dense(&l.qkv)?;
        let (q, rest) = qkv.split_at(qd * hs);
        let (k, v) = rest.split_at(kvd * hs);
        let (q, k) = if interleaved {
            (unpermute(q, hs, nh, hd), unpermute(k, hs, nkv, hd))
        } else {
            (q.to_vec(), k.to_vec())
        };
        put(format!("{p}.self_attn.q_proj.weight"), q, &[qd, hs])?;
        put(format!("{p}.self_attn.k_proj.weight"), k, &[kvd, hs])?;
        put(
            format!("{p}.self_attn.v_proj.weight"),
            v.to_vec(),
            &[kvd, hs],
        )?;
        if let Some(b) = &l.qkv.bias {
            bias = true;
            let (bq, rest) = b.split_at(qd);
            let (bk, bv) = rest.split_at(kvd);
            let (bq, bk) = if interleaved {
                (unpermute(bq, 1, nh, hd), unpermute(bk, 1, nkv, hd))
            } else {
                (bq.to_vec(), bk.to_vec())
            };
            put(format!("{p}.self_attn.q_proj.bias"), bq, &[qd])?;
            put(format!("{p}.self_attn.k_proj.bias"), bk, &[kvd])?;
            put(format!("{p}.self_attn.v_proj.bias"), bv.to_vec(), &[kvd])?;
        }
        for (name, w) in [("q_norm", &l.q_norm), ("k_norm", &l.k_norm)] {
            if let Some(w) = w {
                put(format!("{p}.self_attn.{name}.weight"), w.clone(), &[hd])?;
            }
        }
        put(
            format!("{p}.self_attn.o_proj.weight"),
            dense(&l.o)?,
            &[hs, qd],
        )?;
        let gu = dense(&l.gate_up)?;
        let (g, u) = gu.split_at(is * hs);
        put(format!("{p}.mlp.gate_proj.weight"), g.to_vec(), &[is, hs])?;
        put(format!("{p}.mlp.up_proj.weight"), u.to_vec(), &[is, hs])?;
        put(
            format!("{p}.mlp.down_proj.weight"),
            dense(&l.down)?,
            &[hs, is],
        )?;
        put(
            format!("{p}.input_layernorm.weight"),
            l.attn_norm.clone(),
            &[hs],
        )?;
        put(
            format!("{p}.post_attention_layernorm.weight"),
            l.ffn_norm.clone(),
            &[hs],
        )?;
    }
    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&t, out.join("model.safetensors"))?;
    let info = meta.info();
    let config = json!({
        "architectures": [match c.model_type.as_str() {
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            _ => "LlamaForCausalLM",
        }],
        "model_type": c.model_type,
        "hidden_size": hs,
        "intermediate_size": is,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "head_dim": hd,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": rope_theta(&c.inv_freq, hd),
        "attention_bias": bias,
        "tie_word_embeddings": false,
        "bos_token_id": info.bos_token_id,
        "eos_token_id": info.eos_token_ids,
        "torch_dtype": format!("{dtype:?}").to_lowercase(),
    });
    let tc = json!({
        "add_bos_token": info.add_bos_token,
        "bos_token": info.bos_token,
        "eos_token": info.eos_token,
        "chat_template": info.chat_template,
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tc).unwrap_or_default(),
    )?;
    meta.tokenizer()
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2): HF row j*half+i → 2i+j.
        let (heads, hd, cols) = (2, 8, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = (h * hd + j * hd / 2 + i) * cols;
                    let dst = (h * hd + 2 * i + j) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute(&gguf, cols, heads, hd), hf);
        let inv = crate::models::llama::inv_freq(100_000.0, 64, None);
        assert!((rope_theta(&inv, 64) - 100_000.0).abs() < 1.0);
    }
}
