//! The device-generic BERT / (XLM-)RoBERTa encoder and its `*ForSequenceClassification`
//! heads, built only from candle tensor ops and candle-nn, so the same code runs on CUDA and
//! on candle's CPU backend (which is how CI checks it against the fast path in
//! `models::bert`). Weights load straight onto the device in the chosen dtype.
//!
//! A batch is padded to its longest sequence with an additive attention mask; layer norms
//! run in the weights' dtype through candle's fused kernel (f32 accumulation), attention
//! scores and softmax in f32. Reference: `transformers/models/bert/modeling_bert.py`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use crate::models::bert::{Config, Seq};
use crate::models::ModelError;

const PREFIXES: [&str; 4] = ["", "bert.", "roberta.", "model."];

#[derive(Clone, Copy)]
enum Act {
    Gelu,
    GeluTanh,
    Relu,
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    ln1: LayerNorm,
    inter: Linear,
    out: Linear,
    ln2: LayerNorm,
}

enum Head {
    /// BERT: `classifier(tanh(pooler(h_cls)))`.
    Pooler { pooler: Linear, classifier: Linear },
    /// RoBERTa: `out_proj(tanh(dense(h_cls)))`.
    Roberta { dense: Linear, out_proj: Linear },
}

/// A BERT-family encoder on any candle device.
pub struct DeviceBert {
    cfg: Config,
    device: Device,
    dtype: DType,
    word: Embedding,
    pos: Embedding,
    types: Embedding,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    head: Option<Head>,
    act: Act,
}

fn layer_norm(vb: VarBuilder, h: usize, eps: f64) -> Result<LayerNorm, ModelError> {
    // Old BERT checkpoints name the parameters gamma/beta.
    let (w, b) = if vb.contains_tensor("weight") {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    Ok(LayerNorm::new(vb.get(h, w)?, vb.get(h, b)?, eps))
}

fn linear(vb: VarBuilder, out_f: usize, in_f: usize) -> Result<Linear, ModelError> {
    Ok(candle_nn::linear(in_f, out_f, vb)?)
}

impl DeviceBert {
    /// Loads the encoder (and the head when `cfg` is a classifier) from `vb`, whose device
    /// and dtype the model then runs in.
    pub fn load(cfg: Config, vb: VarBuilder) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {h} is not divisible by num_attention_heads {}",
                cfg.num_attention_heads
            )));
        }
        let act = match cfg.hidden_act.as_str() {
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            "relu" => Act::Relu,
            other => return Err(ModelError::Unsupported(format!("hidden_act {other}"))),
        };
        let p = PREFIXES
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                ModelError::Unsupported("no embeddings.word_embeddings.weight in checkpoint".into())
            })?;
        let root = if p.is_empty() {
            vb.clone()
        } else {
            vb.pp(p.trim_end_matches('.'))
        };
        let e = root.pp("embeddings");
        let emb = |name: &str, n: usize| -> Result<Embedding, ModelError> {
            Ok(Embedding::new(e.pp(name).get((n, h), "weight")?, h))
        };
        let word = emb("word_embeddings", cfg.vocab_size)?;
        let pos = emb("position_embeddings", cfg.max_position_embeddings)?;
        let types = emb("token_type_embeddings", cfg.type_vocab_size)?;
        let eps = cfg.layer_norm_eps;
        let emb_ln = layer_norm(e.pp("LayerNorm"), h, eps)?;
        let i = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let n = root.pp("encoder").pp("layer").pp(l.to_string());
            let a = n.pp("attention");
            let s = a.pp("self");
            layers.push(Layer {
                q: linear(s.pp("query"), h, h)?,
                k: linear(s.pp("key"), h, h)?,
                v: linear(s.pp("value"), h, h)?,
                attn_out: linear(a.pp("output").pp("dense"), h, h)?,
                ln1: layer_norm(a.pp("output").pp("LayerNorm"), h, eps)?,
                inter: linear(n.pp("intermediate").pp("dense"), i, h)?,
                out: linear(n.pp("output").pp("dense"), h, i)?,
                ln2: layer_norm(n.pp("output").pp("LayerNorm"), h, eps)?,
            });
        }
        let head = if cfg.is_classifier() {
            let nl = cfg.labels();
            let c = vb.pp("classifier");
            Some(if c.contains_tensor("out_proj.weight") {
                Head::Roberta {
                    dense: linear(c.pp("dense"), h, h)?,
                    out_proj: linear(c.pp("out_proj"), nl, h)?,
                }
            } else {
                Head::Pooler {
                    pooler: linear(root.pp("pooler").pp("dense"), h, h)?,
                    classifier: linear(c, nl, h)?,
                }
            })
        } else {
            None
        };
        Ok(DeviceBert {
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cfg,
            word,
            pos,
            types,
            emb_ln,
            layers,
            head,
            act,
        })
    }

    /// The dtype the model runs in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether a classification head was loaded.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Final hidden states `[batch, max_len, hidden]` (f32, padded rows unspecified) and the
    /// lengths of the sequences.
    fn hidden(&self, seqs: &[Seq]) -> Result<Tensor, ModelError> {
        let (b, l) = (
            seqs.len(),
            seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0),
        );
        let h = self.cfg.hidden_size;
        let nh = self.cfg.num_attention_heads;
        let d = h / nh;
        let off = self.cfg.position_offset() as u32;
        let mut ids = vec![0u32; b * l];
        let mut types = vec![0u32; b * l];
        let mut pos = vec![0u32; b * l];
        let mut mask = vec![f32::NEG_INFINITY; b * l];
        for (i, s) in seqs.iter().enumerate() {
            for (p, &t) in s.ids.iter().enumerate() {
                ids[i * l + p] = t;
                types[i * l + p] = s.type_ids.map_or(0, |v| v[p]);
                pos[i * l + p] = off + p as u32;
                mask[i * l + p] = 0.0;
            }
            // Padded positions point at a real position so the look-up stays in range.
            for p in s.ids.len()..l {
                pos[i * l + p] = off;
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (b, l), dev)?;
        let types = Tensor::from_vec(types, (b, l), dev)?;
        let pos = Tensor::from_vec(pos, (b, l), dev)?;
        let mask = Tensor::from_vec(mask, (b, 1, 1, l), dev)?;
        let x = (self.word.forward(&ids)? + self.types.forward(&types)?)?;
        let mut x = self.emb_ln.forward(&(x + self.pos.forward(&pos)?)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let heads = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, l, nh, d))?.transpose(1, 2)?.contiguous()
            };
            let q = heads(layer.q.forward(&x)?)?;
            let k = heads(layer.k.forward(&x)?)?;
            let v = heads(layer.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
            let ctx = probs.to_dtype(self.dtype)?.matmul(&v)?;
            let ctx = ctx.transpose(1, 2)?.reshape((b, l, h))?;
            let x1 = layer.ln1.forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let inter = layer.inter.forward(&x1)?;
            let inter = match self.act {
                Act::Gelu => inter.gelu_erf()?,
                Act::GeluTanh => inter.gelu()?,
                Act::Relu => inter.relu()?,
            };
            x = layer.ln2.forward(&(layer.out.forward(&inter)? + x1)?)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }

    /// Runs the encoder; calls `f(seq_index, hidden [len, hidden])` for every sequence, as
    /// `Bert::forward` does.
    pub fn forward<F: FnMut(usize, &[f32])>(
        &self,
        seqs: &[Seq],
        mut f: F,
    ) -> Result<(), ModelError> {
        crate::models::bert::check_seqs(&self.cfg, seqs)?;
        let h = self.cfg.hidden_size;
        let l = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        if l == 0 {
            for i in 0..seqs.len() {
                f(i, &[]);
            }
            return Ok(());
        }
        let all = self.hidden(seqs)?.flatten_all()?.to_vec1::<f32>()?;
        for (i, s) in seqs.iter().enumerate() {
            f(i, &all[i * l * h..(i * l + s.ids.len()) * h]);
        }
        Ok(())
    }

    /// The head's logits for each sequence (its first token), computed on the device.
    pub fn classify(&self, seqs: &[Seq]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Some(head) = &self.head else {
            return Err(ModelError::Unsupported(
                "a sequence-classification head is needed".into(),
            ));
        };
        crate::models::bert::check_seqs(&self.cfg, seqs)?;
        if seqs.iter().any(|s| s.ids.is_empty()) {
            return Err(ModelError::Input("empty sequence".into()));
        }
        let cls = self
            .hidden(seqs)?
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .to_dtype(self.dtype)?;
        let logits = match head {
            Head::Pooler { pooler, classifier } => {
                classifier.forward(&pooler.forward(&cls)?.tanh()?)?
            }
            Head::Roberta { dense, out_proj } => out_proj.forward(&dense.forward(&cls)?.tanh()?)?,
        };
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
