//! The one decoder implementation behind Llama (incl. Llama-3 rope scaling), Qwen2 (q/k/v
//! biases) and Qwen3 (per-head q/k RMSNorm): a pre-norm transformer with grouped-query
//! attention, rotary positions and a SwiGLU MLP. The variants differ only in
//! [`DecoderConfig`] and in which weights are present; loading lives in [`gguf`] (ggml
//! checkpoints) and [`st`] (Hugging Face safetensors).
//!
//! A step runs the tokens of all sequences through every linear layer as one matrix (see
//! [`super::quant::QLinear`]); attention runs per sequence against its own [`KvCache`].
//! Reference: `transformers/models/llama/modeling_llama.py` and `qwen3/modeling_qwen3.py`.

pub mod gguf;
pub mod st;

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use half::f16;

use super::kernels::attend::{attend, Heads, KvElem};
use super::kernels::math::{dot, swiglu_rows};
use super::kernels::SharedMut;
use super::quant::act::Q8Act;
use super::quant::QLinear;
use super::ModelError;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` pairs with `i + d/2` (Hugging Face checkpoints, GGUF qwen2/qwen3).
    Neox,
    /// Dimension `2i` pairs with `2i + 1` (GGUF llama, whose q/k rows are permuted for it).
    Interleaved,
}

/// The shape and numerics of a decoder, whatever the checkpoint format.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_style: RopeStyle,
    /// Inverse frequency of each rotated pair (length `head_dim / 2`), scaling included.
    pub inv_freq: Vec<f32>,
}

/// Llama-3 style rope scaling parameters (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, Copy)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// `theta^(-2i/d)` for each pair, optionally with Llama-3 frequency scaling.
pub fn inv_freq(theta: f32, head_dim: usize, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let Some(s) = scaling else { return f as f32 };
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor as f64;
            let high_wavelen =
                s.original_max_position_embeddings as f64 / s.high_freq_factor as f64;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen > low_wavelen {
                f / s.factor as f64
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (s.original_max_position_embeddings as f64 / wavelen
                    - s.low_freq_factor as f64)
                    / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
                (1.0 - smooth) * f / s.factor as f64 + smooth * f
            };
            scaled as f32
        })
        .collect()
}

/// Weights of one transformer block.
#[derive(Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// q, k and v projections stacked (rows: q then k then v).
    pub qkv: QLinear,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub o: QLinear,
    pub ffn_norm: Vec<f32>,
    /// gate and up projections stacked (rows: gate then up).
    pub gate_up: QLinear,
    pub down: QLinear,
}

/// The element type of a decoder's cached keys and values: `f32` where every weight is
/// f32 (the cache adds no rounding to a full-precision model), `f16` otherwise (as
/// llama.cpp's default cache): half the memory per position, so twice the positions in the
/// same KV budget, and half the memory a decode step's attention reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
}

impl KvDtype {
    /// Bytes of one cached element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// Cached keys (or values) of one layer, `positions × kv_heads × head_dim` elements.
#[derive(Debug, Clone)]
pub enum KvRows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvRows {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvRows::F32(Vec::new()),
            KvDtype::F16 => KvRows::F16(Vec::new()),
        }
    }

    fn dtype(&self) -> KvDtype {
        match self {
            KvRows::F32(_) => KvDtype::F32,
            KvRows::F16(_) => KvDtype::F16,
        }
    }

    /// Elements held.
    fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }

    /// Appends `src`, rounded to the element type.
    fn push(&mut self, src: &[f32]) {
        match self {
            KvRows::F32(v) => f32::extend_from_f32(v, src),
            KvRows::F16(v) => f16::extend_from_f32(v, src),
        }
    }

    /// Appends elements `from..to` of `src` (of the same type; `false` otherwise).
    fn extend_from(&mut self, src: &KvRows, from: usize, to: usize) -> bool {
        match (self, src) {
            (KvRows::F32(d), KvRows::F32(s)) => d.extend_from_slice(&s[from..to]),
            (KvRows::F16(d), KvRows::F16(s)) => d.extend_from_slice(&s[from..to]),
            _ => return false,
        }
        true
    }
}

/// The element types [`KvRows`] holds, for code generic over them.
trait CacheElem: KvElem {
    fn of(rows: &KvRows) -> Option<&[Self]>;
}

impl CacheElem for f32 {
    fn of(rows: &KvRows) -> Option<&[f32]> {
        match rows {
            KvRows::F32(v) => Some(v),
            KvRows::F16(_) => None,
        }
    }
}

impl CacheElem for f16 {
    fn of(rows: &KvRows) -> Option<&[f16]> {
        match rows {
            KvRows::F16(v) => Some(v),
            KvRows::F32(_) => None,
        }
    }
}

impl Layer {
    /// True when every weight of the block is f32.
    fn is_f32(&self) -> bool {
        [&self.qkv, &self.o, &self.gate_up, &self.down]
            .iter()
            .all(|l| l.is_f32())
    }
}

/// Keys and values of one sequence. The first positions may be blocks shared with other
/// sequences (the chat engine's prefix cache; read-only); the rest are the sequence's own,
/// per layer `(len - shared positions) × kv_heads × head_dim` elements of the model's
/// [`KvDtype`]. A clone shares the blocks and copies the rest.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub len: usize,
    pub shared: Vec<Arc<KvBlock>>,
    pub k: Vec<KvRows>,
    pub v: Vec<KvRows>,
}

/// Keys and values of `len` consecutive positions, per layer `len × kv_heads × head_dim`
/// elements: the unit caches share.
#[derive(Debug)]
pub struct KvBlock {
    pub len: usize,
    pub k: Vec<KvRows>,
    pub v: Vec<KvRows>,
}

impl KvCache {
    /// Positions held by shared blocks.
    pub fn shared_len(&self) -> usize {
        self.shared.iter().map(|b| b.len).sum()
    }

    /// Layer `li`'s keys and values as contiguous runs of rows, in position order: each
    /// shared block, then the sequence's own rows.
    fn layer(&self, li: usize) -> impl Iterator<Item = (&KvRows, &KvRows)> + '_ {
        self.shared
            .iter()
            .map(move |b| (&b.k[li], &b.v[li]))
            .chain(std::iter::once((&self.k[li], &self.v[li])))
    }

    /// [`Self::layer`] as slices of `T` (the step checked that every run holds `T`).
    fn segments<T: CacheElem>(&self, li: usize) -> Vec<(&[T], &[T])> {
        const WRONG: &str = "a cache of another element type passed validation. This is a bug.";
        self.layer(li)
            .map(|(k, v)| (T::of(k).expect(WRONG), T::of(v).expect(WRONG)))
            .collect()
    }

    /// A copy of positions `start..start + len` (`kvd` elements per row and layer), or
    /// `None` when they are not all cached.
    pub fn export(&self, start: usize, len: usize, kvd: usize) -> Option<KvBlock> {
        if len == 0 || start + len > self.len {
            return None;
        }
        let layers = self.k.len();
        let (mut k, mut v) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for li in 0..layers {
            let (mut kb, mut vb) = (
                KvRows::new(self.k[li].dtype()),
                KvRows::new(self.v[li].dtype()),
            );
            let mut pos = 0;
            for (ks, vs) in self.layer(li) {
                let rows = ks.len() / kvd;
                let (from, to) = (start.max(pos), (start + len).min(pos + rows));
                if from < to {
                    let (a, b) = ((from - pos) * kvd, (to - pos) * kvd);
                    if !kb.extend_from(ks, a, b) || !vb.extend_from(vs, a, b) {
                        return None;
                    }
                }
                pos += rows;
            }
            if kb.len() != len * kvd {
                return None;
            }
            k.push(kb);
            v.push(vb);
        }
        Some(KvBlock { len, k, v })
    }
}

/// Buffers reused from step to step.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gu: Vec<f32>,
    mlp: Vec<f32>,
    act: Q8Act,
}

/// A loaded decoder.
pub struct Llama {
    pub cfg: DecoderConfig,
    pub embed: QLinear,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub lm_head: QLinear,
    /// What the caches of this model hold.
    pub kv_dtype: KvDtype,
    scratch: Mutex<Scratch>,
    /// The step's threads: the caller's work runs on a worker, so nested parallel loops
    /// never wait on a thread outside the pool.
    pool: Option<rayon::ThreadPool>,
}

/// One sequence's part of a step.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let ms = dot(xr, xr) / w.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = dot(x, x) / w.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v *= r * g;
    }
}

fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    match style {
        RopeStyle::Neox => {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

impl Llama {
    /// Assembles a model from loaded parts.
    pub fn new(
        cfg: DecoderConfig,
        embed: QLinear,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: QLinear,
    ) -> Self {
        // Same size as the global pool (`RAYON_NUM_THREADS`, else one per core).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("decoder-{i}"))
            .build()
            .ok();
        let kv_dtype = if layers.iter().all(Layer::is_f32) && lm_head.is_f32() {
            KvDtype::F32
        } else {
            KvDtype::F16
        };
        Llama {
            kv_dtype,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            scratch: Mutex::new(Scratch::default()),
            pool,
        }
    }

    /// An empty cache with one slot per layer.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            len: 0,
            shared: Vec::new(),
            k: vec![KvRows::new(self.kv_dtype); self.cfg.num_layers],
            v: vec![KvRows::new(self.kv_dtype); self.cfg.num_layers],
        }
    }

    /// A cache that starts with `blocks` (shared, not copied).
    pub fn cache_with_prefix(&self, blocks: Vec<Arc<KvBlock>>) -> KvCache {
        let mut c = self.new_cache();
        c.len = blocks.iter().map(|b| b.len).sum();
        c.shared = blocks;
        c
    }

    /// Bytes one position takes in a cache (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.cfg.num_layers * self.kv_dim() * self.kv_dtype.size()
    }

    /// Elements of one position's keys (or values) in one layer.
    pub fn kv_dim(&self) -> usize {
        self.cfg.num_kv_heads * self.cfg.head_dim
    }

    /// Checks a step's input without touching any cache.
    fn validate(&self, items: &[SeqStep<'_>]) -> Result<(), ModelError> {
        let (layers, kvd) = (self.cfg.num_layers, self.kv_dim());
        for (i, it) in items.iter().enumerate() {
            check_tokens(&self.cfg, i, it.tokens, it.cache.len)?;
            let c = &it.cache;
            let dt = self.kv_dtype;
            let typed = |rows: &[KvRows]| rows.iter().all(|r| r.dtype() == dt);
            let foreign = c.k.len() != layers
                || c.v.len() != layers
                || !typed(&c.k)
                || !typed(&c.v)
                || c.shared_len() > c.len
                || c.shared.iter().any(|b| {
                    b.k.len() != layers
                        || b.v.len() != layers
                        || !typed(&b.k)
                        || !typed(&b.v)
                        || b.k.iter().chain(&b.v).any(|k| k.len() != b.len * kvd)
                });
            if foreign {
                return Err(ModelError::Input("cache belongs to another model".into()));
            }
        }
        Ok(())
    }

    /// Appends each item's tokens to its cache and returns the logits of its last token.
    pub fn step(&self, items: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.validate(items)?;
        match &self.pool {
            Some(pool) => pool.install(|| self.step_inner(items)),
            None => self.step_inner(items),
        }
    }

    fn step_inner(&self, items: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let (qd, kvd, hs, is) = (nh * hd, nkv * hd, c.hidden_size, c.intermediate_size);
        let n: usize = items.iter().map(|it| it.tokens.len()).sum();
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        s.x.resize(n * hs, 0.0);
        s.h.resize(n * hs, 0.0);
        s.qkv.resize(n * (qd + 2 * kvd), 0.0);
        s.attn.resize(n * qd, 0.0);
        s.o.resize(n * hs, 0.0);
        s.gu.resize(n * 2 * is, 0.0);
        s.mlp.resize(n * is, 0.0);

        // Embeddings, positions and rope tables of every token of the step.
        let mut positions = Vec::with_capacity(n);
        let mut row = 0;
        for it in items.iter() {
            for (j, &t) in it.tokens.iter().enumerate() {
                self.embed
                    .dequant_row(t as usize, &mut s.x[row * hs..(row + 1) * hs])?;
                positions.push(it.cache.len + j);
                row += 1;
            }
        }
        let half = hd / 2;
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for (r, &p) in positions.iter().enumerate() {
            for (i, f) in c.inv_freq.iter().enumerate() {
                let (sv, cv) = (p as f32 * f).sin_cos();
                cos[r * half + i] = cv;
                sin[r * half + i] = sv;
            }
        }

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &layer.attn_norm, c.rms_norm_eps, &mut s.h);
            layer.qkv.forward(&s.h, n, &mut s.act, &mut s.qkv)?;
            let w = qd + 2 * kvd;
            for r in 0..n {
                let rowq = &mut s.qkv[r * w..(r + 1) * w];
                let (cs, sn) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                for h in 0..nh + nkv {
                    let head = &mut rowq[h * hd..(h + 1) * hd];
                    let norm = if h < nh { &layer.q_norm } else { &layer.k_norm };
                    if let Some(nw) = norm {
                        rms_norm_inplace(head, nw, c.rms_norm_eps);
                    }
                    rope(head, cs, sn, c.rope_style);
                }
            }
            // Append this step's keys and values, then attend.
            let mut off = 0;
            for it in items.iter_mut() {
                let (kc, vc) = (&mut it.cache.k[li], &mut it.cache.v[li]);
                for r in off..off + it.tokens.len() {
                    kc.push(&s.qkv[r * w + qd..r * w + qd + kvd]);
                    vc.push(&s.qkv[r * w + qd + kvd..(r + 1) * w]);
                }
                off += it.tokens.len();
            }
            self.attention(items, li, &s.qkv, &mut s.attn);
            layer.o.forward(&s.attn, n, &mut s.act, &mut s.o)?;
            for (x, o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
            rms_norm(&s.x, &layer.ffn_norm, c.rms_norm_eps, &mut s.h);
            layer.gate_up.forward(&s.h, n, &mut s.act, &mut s.gu)?;
            swiglu_rows(&s.gu, &mut s.mlp, is);
            layer.down.forward(&s.mlp, n, &mut s.act, &mut s.o)?;
            for (x, o) in s.x.iter_mut().zip(&s.o) {
                *x += o;
            }
        }
        for it in items.iter_mut() {
            it.cache.len += it.tokens.len();
        }

        // Final norm and lm_head on the last token of each sequence only.
        let m = items.len();
        let mut last = vec![0f32; m * hs];
        let mut off = 0;
        for (i, it) in items.iter().enumerate() {
            off += it.tokens.len();
            rms_norm(
                &s.x[(off - 1) * hs..off * hs],
                &self.norm,
                c.rms_norm_eps,
                &mut last[i * hs..(i + 1) * hs],
            );
        }
        let mut logits = vec![0f32; m * c.vocab_size];
        self.lm_head.forward(&last, m, &mut s.act, &mut logits)?;
        Ok(logits
            .chunks_exact(c.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Causal attention of every (sequence, kv head) of the step against the sequence's
    /// cache, which already holds this step's keys and values. The query heads that share
    /// a kv head (grouped-query attention) run together, so each key and value is read
    /// from memory once for all of them.
    fn attention(&self, items: &[SeqStep<'_>], li: usize, qkv: &[f32], out: &mut [f32]) {
        match self.kv_dtype {
            KvDtype::F32 => self.attention_of::<f32>(items, li, qkv, out),
            KvDtype::F16 => self.attention_of::<f16>(items, li, qkv, out),
        }
    }

    fn attention_of<T: CacheElem>(
        &self,
        items: &[SeqStep<'_>],
        li: usize,
        qkv: &[f32],
        out: &mut [f32],
    ) {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let w = qd + 2 * kvd;
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        // Each sequence's keys and values: its shared blocks, then its own rows.
        let segs: Vec<Vec<(&[T], &[T])>> =
            items.iter().map(|it| it.cache.segments::<T>(li)).collect();
        let mut units = Vec::with_capacity(items.len() * nkv);
        let mut off = 0;
        for (it, segs) in items.iter().zip(&segs) {
            for g in 0..nkv {
                units.push((off, it.tokens.len(), it.cache.len, segs.as_slice(), g));
            }
            off += it.tokens.len();
        }
        let ptr = SharedMut::new(out);
        units.par_iter().for_each(|&(off, len, start, segs, g)| {
            let p = ptr;
            let mut scores = Vec::with_capacity(group * (start + len));
            let mut acc = vec![0f32; group * hd];
            let q0 = g * group * hd;
            for t in 0..len {
                let r = off + t;
                let heads = Heads {
                    q: &qkv[r * w + q0..r * w + q0 + group * hd],
                    hd,
                    segs,
                    ctx: start + t + 1,
                    kvd,
                    at: g * hd,
                    scale,
                };
                attend(&heads, &mut scores, &mut acc);
                // SAFETY: (token r, heads of kv head g) are written by this task only; the
                // range `r·qd + q0 .. + group·hd` is inside `out`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        acc.as_ptr(),
                        p.get().add(r * qd + q0),
                        group * hd,
                    )
                };
            }
        });
    }
}

/// The per-sequence input checks both decoder paths share: tokens present, inside the
/// vocabulary, and within the model's positions after `cached` earlier tokens.
pub(crate) fn check_tokens(
    cfg: &DecoderConfig,
    i: usize,
    tokens: &[u32],
    cached: usize,
) -> Result<(), ModelError> {
    if tokens.is_empty() {
        return Err(ModelError::Input(format!(
            "sequence {i} of the step has no tokens"
        )));
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(ModelError::Input(format!(
            "token id {t} is outside the vocabulary ({} tokens)",
            cfg.vocab_size
        )));
    }
    let end = cached + tokens.len();
    if end > cfg.max_position_embeddings {
        return Err(ModelError::Input(format!(
            "sequence of {end} tokens exceeds the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    Ok(())
}
