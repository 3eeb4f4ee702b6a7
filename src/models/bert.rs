//! BERT and (XLM-)RoBERTa encoders, one implementation parameterised by `config.json`,
//! plus the `*ForSequenceClassification` heads.
//!
//! Reference: `transformers/models/bert/modeling_bert.py` and
//! `transformers/models/xlm_roberta/modeling_xlm_roberta.py`. The forward pass runs
//! over the concatenated tokens of a batch without padding (variable-length attention per
//! sequence and head), so a padded batch and each input alone give identical results and
//! padding costs nothing. Buffers are reused between calls; matrix products and fused
//! element-wise passes live in `models::kernels`. `models::encoder` is the public face.

use std::collections::HashMap;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Deserialize;

use super::kernels::linear::{sgemm, Linear, MatMut, MatRef};
use super::kernels::math;
use super::kernels::SharedMut;
use super::tensors::Store;
use super::ModelError;

/// The fields of `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<HashMap<String, String>>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl Config {
    /// RoBERTa-style models number positions from `padding_idx + 1`.
    pub fn position_offset(&self) -> usize {
        match self.model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => self.pad_token_id.unwrap_or(1) + 1,
            _ => 0,
        }
    }

    /// Whether the architecture is a sequence classifier.
    pub fn is_classifier(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
    }

    /// Number of labels as transformers derives it (`id2label` wins over `num_labels`).
    pub fn labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(|m| m.len())
            .or(self.num_labels)
            .unwrap_or(2)
    }
}

/// Which rows of the last layer a caller reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Every token's state.
    All,
    /// Only each sequence's first token (`[CLS]`/`<s>`).
    First,
}

#[derive(Clone, Copy)]
enum Act {
    Gelu,
    GeluTanh,
    Relu,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    ln1: Norm,
    inter: Linear,
    out: Linear,
    ln2: Norm,
}

/// The classification head on the first (`[CLS]`/`<s>`) token.
enum Head {
    /// BERT: `classifier(tanh(pooler(h_cls)))`.
    Pooler { pooler: Linear, classifier: Linear },
    /// RoBERTa: `out_proj(tanh(dense(h_cls)))`.
    Roberta { dense: Linear, out_proj: Linear },
}

/// One input sequence: token ids (specials included) and optional token type ids.
pub struct Seq<'a> {
    pub ids: &'a [u32],
    pub type_ids: Option<&'a [u32]>,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    inter: Vec<f32>,
}

/// A loaded encoder.
pub struct Bert {
    pub cfg: Config,
    word: Vec<f32>,
    pos: Vec<f32>,
    types: Vec<f32>,
    emb_ln: Norm,
    layers: Vec<Layer>,
    head: Option<Head>,
    act: Act,
    eps: f32,
    scratch: Mutex<Scratch>,
}

thread_local! {
    /// Attention scores of one (sequence, head), reused between jobs on a thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rejects sequences the model cannot take (too long, unknown ids, bad type ids); shared
/// with the device-generic encoder.
pub(crate) fn check_seqs(cfg: &Config, seqs: &[Seq]) -> Result<(), ModelError> {
    let max = cfg
        .max_position_embeddings
        .saturating_sub(cfg.position_offset());
    for s in seqs {
        if s.ids.len() > max {
            return Err(ModelError::Input(format!(
                "sequence of {} tokens exceeds the model's {max} positions",
                s.ids.len(),
            )));
        }
        if let Some(&bad) = s.ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        if let Some(tt) = s.type_ids {
            if tt.len() != s.ids.len() || tt.iter().any(|&t| t as usize >= cfg.type_vocab_size) {
                return Err(ModelError::Input("invalid token type ids".into()));
            }
        }
    }
    Ok(())
}

const PREFIXES: [&str; 4] = ["", "bert.", "roberta.", "model."];

fn detect_prefix(st: &Store) -> Option<&'static str> {
    PREFIXES
        .into_iter()
        .find(|p| st.contains(&format!("{p}embeddings.word_embeddings.weight")))
}

fn linear(st: &Store, name: &str, out_f: usize, in_f: usize) -> Result<Linear, ModelError> {
    let w = st.get(&format!("{name}.weight"), &[out_f, in_f])?;
    let b = st.get(&format!("{name}.bias"), &[out_f])?;
    Ok(Linear::new(&w, b, out_f, in_f))
}

fn norm(st: &Store, name: &str, h: usize) -> Result<Norm, ModelError> {
    // Old checkpoints name the LayerNorm parameters gamma/beta.
    let (g, b) = if st.contains(&format!("{name}.weight")) {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    Ok(Norm {
        gamma: st.get(&format!("{name}.{g}"), &[h])?,
        beta: st.get(&format!("{name}.{b}"), &[h])?,
    })
}

impl Bert {
    /// Loads the encoder (and the classification head when `cfg` is a classifier).
    pub fn load(cfg: Config, st: &Store) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {h} is not divisible by num_attention_heads {}",
                cfg.num_attention_heads
            )));
        }
        if let Some(p) = cfg.position_embedding_type.as_deref() {
            if p != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type {p}"
                )));
            }
        }
        let act = match cfg.hidden_act.as_str() {
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            "relu" => Act::Relu,
            other => return Err(ModelError::Unsupported(format!("hidden_act {other}"))),
        };
        let p = detect_prefix(st).ok_or_else(|| {
            ModelError::Unsupported("no embeddings.word_embeddings.weight in checkpoint".into())
        })?;
        let e = format!("{p}embeddings");
        let word = st.get(&format!("{e}.word_embeddings.weight"), &[cfg.vocab_size, h])?;
        let pos = st.get(
            &format!("{e}.position_embeddings.weight"),
            &[cfg.max_position_embeddings, h],
        )?;
        let types = st.get(
            &format!("{e}.token_type_embeddings.weight"),
            &[cfg.type_vocab_size, h],
        )?;
        let emb_ln = norm(st, &format!("{e}.LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let i = cfg.intermediate_size;
        for l in 0..cfg.num_hidden_layers {
            let n = format!("{p}encoder.layer.{l}");
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                w.extend(st.get(&format!("{n}.attention.self.{part}.weight"), &[h, h])?);
                b.extend(st.get(&format!("{n}.attention.self.{part}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(&w, b, 3 * h, h),
                attn_out: linear(st, &format!("{n}.attention.output.dense"), h, h)?,
                ln1: norm(st, &format!("{n}.attention.output.LayerNorm"), h)?,
                inter: linear(st, &format!("{n}.intermediate.dense"), i, h)?,
                out: linear(st, &format!("{n}.output.dense"), h, i)?,
                ln2: norm(st, &format!("{n}.output.LayerNorm"), h)?,
            });
        }
        let head = if cfg.is_classifier() {
            let nl = cfg.labels();
            Some(if st.contains("classifier.out_proj.weight") {
                Head::Roberta {
                    dense: linear(st, "classifier.dense", h, h)?,
                    out_proj: linear(st, "classifier.out_proj", nl, h)?,
                }
            } else {
                Head::Pooler {
                    pooler: linear(st, &format!("{p}pooler.dense"), h, h)?,
                    classifier: linear(st, "classifier", nl, h)?,
                }
            })
        } else {
            None
        };
        let eps = cfg.layer_norm_eps as f32;
        Ok(Bert {
            cfg,
            word,
            pos,
            types,
            emb_ln,
            layers,
            head,
            act,
            eps,
            scratch: Mutex::default(),
        })
    }

    /// Whether a classification head was loaded.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Converts every large linear layer to bf16 weights.
    pub fn use_bf16(&mut self) {
        for l in &mut self.layers {
            for lin in [&mut l.qkv, &mut l.attn_out, &mut l.inter, &mut l.out] {
                lin.use_bf16();
            }
        }
    }

    /// Longest sequence the position table allows.
    pub fn max_positions(&self) -> usize {
        self.cfg
            .max_position_embeddings
            .saturating_sub(self.cfg.position_offset())
    }

    fn check(&self, seqs: &[Seq]) -> Result<(), ModelError> {
        check_seqs(&self.cfg, seqs)
    }

    /// Runs the encoder; calls `f(seq_index, hidden [len, hidden])` for every sequence.
    pub fn forward<F: FnMut(usize, &[f32])>(
        &self,
        seqs: &[Seq],
        threads: usize,
        f: F,
    ) -> Result<(), ModelError> {
        self.run(seqs, threads, Rows::All, f)
    }

    /// [`Bert::forward`] for callers that read only the first token's state (CLS pooling,
    /// classification heads): `f(seq_index, hidden [1, hidden])` (empty for an empty
    /// sequence). The last layer's attention output, norms and feed-forward then run on
    /// that one row per sequence; every other token's last-layer state is never read.
    pub fn forward_first<F: FnMut(usize, &[f32])>(
        &self,
        seqs: &[Seq],
        threads: usize,
        f: F,
    ) -> Result<(), ModelError> {
        self.run(seqs, threads, Rows::First, f)
    }

    fn run<F: FnMut(usize, &[f32])>(
        &self,
        seqs: &[Seq],
        threads: usize,
        rows: Rows,
        mut f: F,
    ) -> Result<(), ModelError> {
        self.check(seqs)?;
        let h = self.cfg.hidden_size;
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        let mut total = 0usize;
        for s in seqs {
            starts.push(total);
            total += s.ids.len();
        }
        starts.push(total);
        if total == 0 {
            for (i, _) in seqs.iter().enumerate() {
                f(i, &[]);
            }
            return Ok(());
        }
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let sc = &mut *guard;
        grow(&mut sc.x, total * h);
        grow(&mut sc.qkv, total * 3 * h);
        grow(&mut sc.ctx, total * h);
        grow(&mut sc.inter, total * self.cfg.intermediate_size);
        self.embed(seqs, &mut sc.x[..total * h]);
        let last = self.layers.len().saturating_sub(1);
        for (n, layer) in self.layers.iter().enumerate() {
            let rows = if n == last { rows } else { Rows::All };
            self.layer(layer, sc, &starts, threads, rows);
        }
        for i in 0..seqs.len() {
            let len = starts[i + 1] - starts[i];
            match rows {
                // With no layers the states are still the embeddings, one row per token.
                Rows::First if !self.layers.is_empty() => f(i, &sc.x[i * h..(i + len.min(1)) * h]),
                _ => f(i, &sc.x[starts[i] * h..starts[i + 1] * h]),
            }
        }
        Ok(())
    }

    fn embed(&self, seqs: &[Seq], x: &mut [f32]) {
        let h = self.cfg.hidden_size;
        let off = self.cfg.position_offset();
        let mut t = 0;
        for s in seqs {
            for (p, &id) in s.ids.iter().enumerate() {
                let tt = s.type_ids.map_or(0, |v| v[p] as usize);
                let row = &mut x[t * h..(t + 1) * h];
                let w = &self.word[id as usize * h..(id as usize + 1) * h];
                let pe = &self.pos[(p + off) * h..(p + off + 1) * h];
                let te = &self.types[tt * h..(tt + 1) * h];
                for j in 0..h {
                    row[j] = w[j] + pe[j] + te[j];
                }
                t += 1;
            }
        }
        math::layer_norm_rows(x, &self.emb_ln.gamma, &self.emb_ln.beta, self.eps);
    }

    fn layer(&self, l: &Layer, sc: &mut Scratch, starts: &[usize], threads: usize, rows: Rows) {
        let h = self.cfg.hidden_size;
        let i = self.cfg.intermediate_size;
        let t = *starts
            .last()
            .expect("starts is never empty. This is a bug.");
        let qkv = &mut sc.qkv[..t * 3 * h];
        math::broadcast_rows(qkv, &l.qkv.bias);
        l.qkv.forward_acc(&sc.x[..t * h], t, qkv, threads);
        self.attention(qkv, &mut sc.ctx[..t * h], starts, threads, rows);
        let t = match rows {
            Rows::All => t,
            Rows::First => {
                // Row s takes sequence s's first row (s <= starts[s], so no source row is
                // overwritten before it is read); the attention wrote ctx in that order too.
                let nseq = starts.len() - 1;
                for s in 0..nseq {
                    if starts[s + 1] > starts[s] && starts[s] != s {
                        sc.x.copy_within(starts[s] * h..(starts[s] + 1) * h, s * h);
                    }
                }
                nseq
            }
        };
        let x = &mut sc.x[..t * h];
        let ctx = &sc.ctx[..t * h];
        let inter = &mut sc.inter[..t * i];
        math::add_rows(x, &l.attn_out.bias);
        l.attn_out.forward_acc(ctx, t, x, threads);
        par_rows(x, h, threads, |c| {
            math::layer_norm_rows(c, &l.ln1.gamma, &l.ln1.beta, self.eps)
        });
        math::broadcast_rows(inter, &l.inter.bias);
        l.inter.forward_acc(x, t, inter, threads);
        par_rows(inter, i, threads, |c| match self.act {
            Act::Gelu => math::gelu_inplace(c),
            Act::GeluTanh => math::gelu_tanh_inplace(c),
            Act::Relu => math::relu_inplace(c),
        });
        math::add_rows(x, &l.out.bias);
        l.out.forward_acc(inter, t, x, threads);
        par_rows(x, h, threads, |c| {
            math::layer_norm_rows(c, &l.ln2.gamma, &l.ln2.beta, self.eps)
        });
    }

    /// Scaled dot-product attention per (sequence, head); no masking is needed because
    /// sequences are not padded. With [`Rows::First`] only each sequence's first token
    /// attends, and its context goes to row `s` of `ctx` (sequence order, no gaps).
    fn attention(
        &self,
        qkv: &[f32],
        ctx: &mut [f32],
        starts: &[usize],
        threads: usize,
        rows: Rows,
    ) {
        let h = self.cfg.hidden_size;
        let nh = self.cfg.num_attention_heads;
        let d = h / nh;
        let scale = 1.0 / (d as f32).sqrt();
        let nseq = starts.len() - 1;
        let out = SharedMut::new(ctx);
        let job = |j: usize| {
            let (s, hd) = (j / nh, j % nh);
            let (r0, r1) = (starts[s], starts[s + 1]);
            let len = r1 - r0;
            if len == 0 {
                return;
            }
            let (m, out_row) = match rows {
                Rows::All => (len, r0),
                Rows::First => (1, s),
            };
            SCORES.with(|cell| {
                // Rows padded to 16 lanes so softmax runs without scalar remainders; the
                // padding holds a large negative score and gets ~1e-38 weight, never read by P·V.
                let ld = len.next_multiple_of(16);
                let mut scores = cell.borrow_mut();
                if scores.len() < m * ld {
                    scores.resize(m * ld, 0.0);
                }
                let scores = &mut scores[..m * ld];
                for row in scores.chunks_exact_mut(ld) {
                    row[len..].fill(-1e30);
                }
                let base = qkv[r0 * 3 * h..].as_ptr();
                let stride = 3 * h as isize;
                // SAFETY: q/k/v views address rows r0..r1 and columns of head `hd` inside
                // `qkv`; the destination block (rows out_row..out_row+m, head columns)
                // belongs to this job: rows r0..r1 of sequence s, or row s < nseq <= t.
                unsafe {
                    let q = base.add(hd * d);
                    let k = base.add(h + hd * d);
                    let v = base.add(2 * h + hd * d);
                    sgemm(
                        m,
                        len,
                        d,
                        MatMut {
                            ptr: scores.as_mut_ptr(),
                            rs: ld as isize,
                            cs: 1,
                        },
                        MatRef {
                            ptr: q,
                            rs: stride,
                            cs: 1,
                        },
                        MatRef {
                            ptr: k,
                            rs: 1,
                            cs: stride,
                        },
                        scale,
                        false,
                        1,
                    );
                    math::softmax_rows(scores, ld);
                    sgemm(
                        m,
                        d,
                        len,
                        MatMut {
                            ptr: out.get().add(out_row * h + hd * d),
                            rs: h as isize,
                            cs: 1,
                        },
                        MatRef {
                            ptr: scores.as_ptr(),
                            rs: ld as isize,
                            cs: 1,
                        },
                        MatRef {
                            ptr: v,
                            rs: stride,
                            cs: 1,
                        },
                        1.0,
                        false,
                        1,
                    );
                }
            });
        };
        let work: usize = starts
            .windows(2)
            .map(|w| match rows {
                Rows::All => (w[1] - w[0]).pow(2),
                Rows::First => w[1] - w[0],
            })
            .sum::<usize>()
            * h;
        if threads > 1 && work > 1 << 18 {
            (0..nseq * nh).into_par_iter().for_each(job);
        } else {
            (0..nseq * nh).for_each(job);
        }
    }

    /// Classification logits `[num_labels]` from the first token's hidden state.
    pub fn classify(&self, cls: &[f32]) -> Option<Vec<f32>> {
        let tanh = |v: Vec<f32>| v.into_iter().map(f32::tanh).collect::<Vec<_>>();
        match self.head.as_ref()? {
            Head::Pooler { pooler, classifier } => {
                Some(classifier.forward(&tanh(pooler.forward(cls, 1)), 1))
            }
            Head::Roberta { dense, out_proj } => {
                Some(out_proj.forward(&tanh(dense.forward(cls, 1)), 1))
            }
        }
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Runs a row-wise kernel over `buf` split in `threads` parts when it is large enough.
fn par_rows(buf: &mut [f32], width: usize, threads: usize, f: impl Fn(&mut [f32]) + Sync) {
    let rows = buf.len() / width;
    if threads <= 1 || buf.len() < 32 * 1024 {
        f(buf);
        return;
    }
    let per = rows.div_ceil(threads) * width;
    buf.par_chunks_mut(per).for_each(&f);
}
