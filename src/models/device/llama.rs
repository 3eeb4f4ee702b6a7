//! The device-generic Llama / Qwen2 / Qwen3 decoder: the same model as `models::llama`, built
//! from candle tensor ops and candle-nn on any device, with every sequence's KV cache on that
//! device. It is assembled from a loaded `Llama` (so both checkpoint formats share one
//! loader): dense weights move to the device in the chosen dtype; ggml weights (GGUF) become
//! candle `QMatMul`s, which have CUDA kernels, with f32 activations.
//!
//! A step runs the tokens of all its sequences through every linear layer as one matrix
//! (weights read once per step, as on the CPU path); rotary embeddings use candle's fused
//! kernel with a position per token. Keys and values live in the model's paged pool
//! (`device::kv`); the sequences that decode one token attend as one padded batch, prefill
//! chunks one by one, scores and softmax in f32. The residual stream and the norms stay f32,
//! as on the CPU path; the matmul inputs, the heads and the KV cache are in the activations'
//! dtype.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::kv::{BlockTable, KvPool, SharedPool};
use crate::models::llama::{DecoderConfig, Llama, RopeStyle};
use crate::models::quant::{QLinear, Weights};
use crate::models::ModelError;

/// A linear layer on the device.
enum DLinear {
    Dense(Tensor),
    Quant(QMatMul),
}

struct Lin {
    w: DLinear,
    bias: Option<Tensor>,
}

impl Lin {
    fn from_q(l: &QLinear, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let w = match &l.weights {
            Weights::Dense(t) => DLinear::Dense(t.to_device(device)?.to_dtype(dtype)?),
            Weights::Q4_1(_) | Weights::Q8_0(_) | Weights::Ggml { .. } => {
                let (ggml, bytes) = l
                    .ggml_bytes()
                    .expect("quantised weights have ggml bytes. This is a bug.");
                let qt = qtensor_from_ggml(ggml, &bytes, vec![l.rows, l.cols], device)?;
                DLinear::Quant(QMatMul::from_qtensor(qt)?)
            }
        };
        let bias = match &l.bias {
            Some(b) => Some(Tensor::from_slice(b, l.rows, device)?.to_dtype(dtype)?),
            None => None,
        };
        Ok(Lin { w, bias })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.w {
            DLinear::Dense(w) => x.matmul(&w.t()?)?,
            DLinear::Quant(mm) => mm.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Lin,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Lin,
    ffn_norm: Tensor,
    gate_up: Lin,
    down: Lin,
}

/// The KV cache of one sequence: its length and its blocks in the model's [`KvPool`].
#[derive(Debug)]
pub struct DeviceCache {
    pub len: usize,
    table: BlockTable,
}

/// One sequence's part of a step on the device path.
pub struct DeviceStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut DeviceCache,
}

/// A decoder on any candle device.
pub struct DeviceLlama {
    pub cfg: DecoderConfig,
    device: Device,
    /// The activations' dtype: the weights' for dense checkpoints, f32 for ggml ones.
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Lin,
    kv: SharedPool,
}

impl DeviceLlama {
    /// Moves a loaded model to `device`; dense weights are converted to `dtype`.
    pub fn from_llama(m: &Llama, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let quantised = !matches!(
            m.layers.first().map(|l| &l.qkv.weights),
            Some(Weights::Dense(_))
        );
        let dtype = if quantised { DType::F32 } else { dtype };
        // Norm weights stay f32: they scale the f32 residual stream.
        let vec = |v: &[f32]| -> Result<Tensor, ModelError> {
            Ok(Tensor::from_slice(v, v.len(), device)?)
        };
        // q/k norms act on the heads, which are in the activations' dtype.
        let opt = |v: &Option<Vec<f32>>| -> Result<Option<Tensor>, ModelError> {
            match v {
                Some(v) => Ok(Some(vec(v)?.to_dtype(dtype)?)),
                None => Ok(None),
            }
        };
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            layers.push(Layer {
                attn_norm: vec(&l.attn_norm)?,
                qkv: Lin::from_q(&l.qkv, device, dtype)?,
                q_norm: opt(&l.q_norm)?,
                k_norm: opt(&l.k_norm)?,
                o: Lin::from_q(&l.o, device, dtype)?,
                ffn_norm: vec(&l.ffn_norm)?,
                gate_up: Lin::from_q(&l.gate_up, device, dtype)?,
                down: Lin::from_q(&l.down, device, dtype)?,
            });
        }
        Ok(DeviceLlama {
            cfg: m.cfg.clone(),
            device: device.clone(),
            dtype,
            embed: m.embed.dense_f32()?.to_device(device)?.to_dtype(dtype)?,
            layers,
            norm: vec(&m.norm)?,
            lm_head: Lin::from_q(&m.lm_head, device, dtype)?,
            kv: std::sync::Arc::new(std::sync::Mutex::new(KvPool::new(
                m.cfg.num_layers,
                m.cfg.num_kv_heads * m.cfg.head_dim,
                dtype,
                device,
            ))),
        })
    }

    /// Bounds the KV pool by `bytes` (the engine's KV budget).
    pub fn set_kv_budget(&self, bytes: usize) {
        self.kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_budget(bytes);
    }

    /// The dtype of activations and of the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> DeviceCache {
        DeviceCache {
            len: 0,
            table: BlockTable::new(&self.kv),
        }
    }

    fn validate(&self, items: &[DeviceStep<'_>]) -> Result<(), ModelError> {
        for (i, it) in items.iter().enumerate() {
            crate::models::llama::check_tokens(&self.cfg, i, it.tokens, it.cache.len)?;
            if !it.cache.table.is_on(&self.kv) {
                return Err(ModelError::Input("cache belongs to another model".into()));
            }
        }
        Ok(())
    }

    /// Appends each item's tokens to its cache and returns the logits of its last token.
    pub fn step(&self, items: &mut [DeviceStep<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.validate(items)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.forward(items)?;
        for it in items.iter_mut() {
            it.cache.len += it.tokens.len();
        }
        Ok(logits)
    }

    fn forward(&self, items: &mut [DeviceStep<'_>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let (qd, kvd, is) = (nh * hd, nkv * hd, c.intermediate_size);
        let eps = c.rms_norm_eps;
        let dev = &self.device;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for it in items.iter() {
            ids.extend_from_slice(it.tokens);
            positions.extend(it.cache.len..it.cache.len + it.tokens.len());
        }
        let n = ids.len();
        let half = hd / 2;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for &p in &positions {
            for f in &c.inv_freq {
                let (s, co) = (p as f32 * f).sin_cos();
                cos.push(co);
                sin.push(s);
            }
        }
        let cos = Tensor::from_vec(cos, (n, 1, half), dev)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (n, 1, half), dev)?.to_dtype(self.dtype)?;
        let rope = |x: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            // One "batch" per token, so every token gets its own position.
            let x = x.reshape((n, heads, 1, hd))?.contiguous()?;
            let y = match c.rope_style {
                RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            };
            y.reshape((n, heads, hd))
        };
        // Slots for this step's keys and values, and what attention reads: decoding sequences
        // (one new token) as one padded batch, longer chunks one by one.
        let mut pool = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        let mut new_slots = Vec::with_capacity(n * kvd);
        for it in items.iter_mut() {
            let end = it.cache.len + it.tokens.len();
            it.cache.table.reserve(&mut pool, end)?;
            for p in it.cache.len..end {
                new_slots.extend(std::iter::repeat_n(it.cache.table.slot(p), kvd));
            }
        }
        let new_slots = Tensor::from_vec(new_slots, (n, kvd), dev)?;
        let plan = AttentionPlan::new(items, dev)?;
        let ids = Tensor::from_vec(ids, n, dev)?;
        // The residual stream is f32 (as on the CPU path); matmul inputs are cast to dtype.
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        let dt = self.dtype;
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?.to_dtype(dt)?;
            let qkv = layer.qkv.forward(&h)?;
            let mut q = qkv.narrow(1, 0, qd)?.reshape((n, nh, hd))?;
            let mut k = qkv.narrow(1, qd, kvd)?.reshape((n, nkv, hd))?;
            let v = qkv.narrow(1, qd + kvd, kvd)?.reshape((n, nkv, hd))?;
            if let Some(w) = &layer.q_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, w, eps)?;
            }
            if let Some(w) = &layer.k_norm {
                k = candle_nn::ops::rms_norm(&k.contiguous()?, w, eps)?;
            }
            let q = rope(q, nh)?;
            let k = rope(k, nkv)?;
            pool.write(li, &new_slots, &k.reshape((n, kvd))?, &v.reshape((n, kvd))?)?;
            let attn = plan.attend(&pool, li, &q, (nkv, hd), scale)?;
            x = (x + layer.o.forward(&attn)?.to_dtype(DType::F32)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?.to_dtype(dt)?;
            let gu = layer.gate_up.forward(&h)?;
            let mlp = (candle_nn::ops::silu(&gu.narrow(1, 0, is)?)? * gu.narrow(1, is, is)?)?;
            x = (x + layer.down.forward(&mlp)?.to_dtype(DType::F32)?)?;
        }
        let mut last = Vec::with_capacity(items.len());
        let mut off = 0;
        for it in items.iter() {
            off += it.tokens.len();
            last.push((off - 1) as u32);
        }
        let m = last.len();
        let last = x.index_select(&Tensor::from_vec(last, m, dev)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?.to_dtype(dt)?;
        self.lm_head
            .forward(&last)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()
    }
}

/// What a step's attention reads from the pool, worked out once for all layers.
struct AttentionPlan {
    /// Rows of the step (in item order) of the sequences that decode one token.
    decode_rows: Vec<u32>,
    /// Their cache slots, padded to the longest: `[batch * max_len]`.
    decode_slots: Option<Tensor>,
    /// `0` / `-inf` per (sequence, position): `[batch, 1, 1, max_len]`.
    decode_mask: Option<Tensor>,
    max_len: usize,
    /// Prefill chunks: (first row, tokens, cached before, slots of every position).
    chunks: Vec<(usize, usize, usize, Tensor)>,
    /// Where each row of the step is in `[decode rows…, chunk rows…]`.
    order: Tensor,
}

impl AttentionPlan {
    fn new(items: &[DeviceStep<'_>], dev: &Device) -> candle_core::Result<Self> {
        let decoding: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].tokens.len() == 1)
            .collect();
        let max_len = decoding
            .iter()
            .map(|&i| items[i].cache.len + 1)
            .max()
            .unwrap_or(0);
        let (mut slots, mut mask) = (Vec::new(), Vec::new());
        for &i in &decoding {
            let (t, len) = (&items[i].cache.table, items[i].cache.len + 1);
            for p in 0..max_len {
                // Padding reads slot 0 of the sequence's own first block; the mask drops it.
                slots.push(t.slot(if p < len { p } else { 0 }));
                mask.push(if p < len { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        let b = decoding.len();
        let mut rows = Vec::with_capacity(items.len());
        let mut off = 0;
        let mut chunks = Vec::new();
        let mut decode_rows = Vec::with_capacity(b);
        for it in items {
            let t = it.tokens.len();
            if t == 1 {
                decode_rows.push(off as u32);
            } else {
                let all: Vec<u32> = (0..it.cache.len + t)
                    .map(|p| it.cache.table.slot(p))
                    .collect();
                chunks.push((
                    off,
                    t,
                    it.cache.len,
                    Tensor::from_vec(all, it.cache.len + t, dev)?,
                ));
            }
            rows.push((t, t == 1));
            off += t;
        }
        // Output rows come as [decode rows…, chunk rows…]; `order` maps each step row there.
        let mut order = Vec::with_capacity(off);
        let (mut d, mut c) = (0u32, b as u32);
        for (t, dec) in rows {
            let next = if dec { &mut d } else { &mut c };
            order.extend(*next..*next + t as u32);
            *next += t as u32;
        }
        Ok(AttentionPlan {
            decode_slots: (b > 0)
                .then(|| Tensor::from_vec(slots, b * max_len, dev))
                .transpose()?,
            decode_mask: (b > 0)
                .then(|| Tensor::from_vec(mask, (b, 1, 1, max_len), dev))
                .transpose()?,
            decode_rows,
            max_len,
            chunks,
            order: Tensor::from_vec(order, off, dev)?,
        })
    }

    /// Attention of every query row `q` (`[n, heads, head_dim]`) of `layer`; `[n, heads * head_dim]`.
    fn attend(
        &self,
        pool: &KvPool,
        layer: usize,
        q: &Tensor,
        (nkv, hd): (usize, usize),
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        let (_, nh, _) = q.dims3()?;
        let group = nh / nkv;
        let mut outs = Vec::with_capacity(1 + self.chunks.len());
        if let (Some(slots), Some(mask)) = (&self.decode_slots, &self.decode_mask) {
            let b = self.decode_rows.len();
            let rows = Tensor::from_slice(&self.decode_rows, b, q.device())?;
            let (k, v) = pool.gather(layer, slots)?;
            let heads = |t: Tensor| {
                t.reshape((b, self.max_len, nkv, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (k, v) = (heads(k)?, heads(v)?);
            let qb = q.index_select(&rows, 0)?.reshape((b, nkv, group, hd))?;
            let scores = (qb.matmul(&k.transpose(2, 3)?)?.to_dtype(DType::F32)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
            outs.push(
                probs
                    .to_dtype(v.dtype())?
                    .matmul(&v)?
                    .reshape((b, nh * hd))?,
            );
        }
        for (off, t, start, slots) in &self.chunks {
            let (k, v) = pool.gather(layer, slots)?;
            let len = start + t;
            let k = k.reshape((len, nkv, hd))?;
            let v = v.reshape((len, nkv, hd))?;
            outs.push(attend(&q.narrow(0, *off, *t)?, &k, &v, *start, scale)?);
        }
        Tensor::cat(&outs, 0)?.index_select(&self.order, 0)
    }
}

/// Causal attention of one sequence's `t` new queries (`[t, heads, head_dim]`, at positions
/// `start..start + t`) against its cache (`[start + t, kv_heads, head_dim]`); grouped-query
/// heads share their kv head. Returns `[t, heads * head_dim]`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    start: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (t, nh, hd) = q.dims3()?;
    let (len, nkv, _) = k.dims3()?;
    let group = nh / nkv;
    // [nkv, group * t, hd]: the queries of the heads that share a kv head, side by side.
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, group * t, hd))?;
    let k = k.transpose(0, 1)?.contiguous()?;
    let v = v.transpose(0, 1)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let scores = if t > 1 {
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    if j <= start + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, len), q.device())?;
        scores
            .reshape((nkv, group, t, len))?
            .broadcast_add(&mask)?
            .reshape((nkv, group * t, len))?
    } else {
        scores
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    probs
        .matmul(&v)?
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .reshape((t, nh * hd))
}
