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

use std::ops::Range;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::comm::Communicator;
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
    /// The rows `rows` (ranges, stacked in order) and columns `cols` of `l`, with `pad`
    /// zero rows below, on `device` (a tensor-parallel shard; the whole layer for one
    /// range of every row and column). `bias`: whether this part carries the bias (a
    /// row-parallel layer's bias is added by one rank only, before the sum).
    fn from_part(
        l: &QLinear,
        rows: &[Range<usize>],
        cols: Range<usize>,
        pad: usize,
        bias: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let whole = rows.len() == 1 && rows[0] == (0..l.rows) && cols == (0..l.cols) && pad == 0;
        let n: usize = rows.iter().map(|r| r.len()).sum::<usize>() + pad;
        let dense = |t: &Tensor| -> Result<DLinear, ModelError> {
            let t = if whole {
                t.clone()
            } else {
                dense_part(t, rows, &cols, pad)?
            };
            Ok(DLinear::Dense(t.to_device(device)?.to_dtype(dtype)?))
        };
        let w = match &l.weights {
            Weights::Dense(t) => dense(t)?,
            Weights::Q4_1(_) | Weights::Q8_0(_) | Weights::Ggml { .. } => {
                let (ggml, bytes) = l
                    .ggml_bytes()
                    .expect("quantised weights have ggml bytes. This is a bug.");
                let (bs, ts) = (ggml.block_size(), ggml.type_size());
                if cols.start.is_multiple_of(bs) && cols.end.is_multiple_of(bs) {
                    // ggml rows are runs of whole blocks: a shard is byte ranges of them.
                    let row_bytes = l.cols / bs * ts;
                    let (c0, c1) = (cols.start / bs * ts, cols.end / bs * ts);
                    let mut part = Vec::with_capacity(n * (c1 - c0));
                    for r in rows.iter().flat_map(|r| r.clone()) {
                        part.extend_from_slice(&bytes[r * row_bytes + c0..r * row_bytes + c1]);
                    }
                    // Zero bytes are zero weights in every ggml format (zero scales).
                    part.resize(n * (c1 - c0), 0);
                    let qt = qtensor_from_ggml(ggml, &part, vec![n, cols.len()], device)?;
                    DLinear::Quant(QMatMul::from_qtensor(qt)?)
                } else {
                    // A column cut inside a quantisation block: this shard runs dequantised.
                    dense(&l.dense_f32()?)?
                }
            }
        };
        let bias = match (&l.bias, bias) {
            (Some(b), true) => {
                let mut part: Vec<f32> = rows.iter().flat_map(|r| b[r.clone()].to_vec()).collect();
                part.resize(n, 0.0);
                Some(Tensor::from_vec(part, n, device)?.to_dtype(dtype)?)
            }
            _ => None,
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

/// Rows `rows` (stacked) and columns `cols` of a dense `[rows, cols]` tensor, with `pad` zero
/// rows below.
fn dense_part(
    t: &Tensor,
    rows: &[Range<usize>],
    cols: &Range<usize>,
    pad: usize,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(rows.len() + 1);
    for r in rows {
        parts.push(
            t.narrow(0, r.start, r.len())?
                .narrow(1, cols.start, cols.len())?,
        );
    }
    if pad > 0 {
        parts.push(Tensor::zeros((pad, cols.len()), t.dtype(), t.device())?);
    }
    Tensor::cat(&parts, 0)
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

impl DeviceCache {
    /// An empty cache on a block table.
    pub fn on_pool(table: BlockTable) -> Self {
        DeviceCache { len: 0, table }
    }
}

/// One sequence's part of a step on the device path.
pub struct DeviceStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut DeviceCache,
}

/// Which part of the model a [`DeviceLlama`] holds: rank `rank` of a `world`-way
/// tensor-parallel split (Megatron-style: heads, MLP columns and vocabulary divided; one
/// sum after each row-parallel layer). `Shard::WHOLE` is the unsplit model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// This rank's share `rank * n / world .. (rank + 1) * n / world` of `n` (divisible).
    fn part(&self, n: usize) -> Range<usize> {
        let each = n / self.world;
        self.rank * each..(self.rank + 1) * each
    }
}

/// Why `cfg` cannot be split `world` ways (`None` when it can): attention heads, KV heads
/// and the MLP width must divide evenly.
pub fn split_problem(cfg: &DecoderConfig, world: usize) -> Option<String> {
    let bad: Vec<String> = [
        ("attention heads", cfg.num_heads),
        ("KV heads", cfg.num_kv_heads),
        ("intermediate_size", cfg.intermediate_size),
    ]
    .iter()
    .filter(|(_, n)| world == 0 || n % world != 0)
    .map(|(what, n)| format!("{what} {n}"))
    .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "tensor_parallel_size {world} must divide the model's attention heads ({}), KV heads ({}) \
             and intermediate_size ({}); it does not divide {}",
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.intermediate_size,
            bad.join(", ")
        )
    })
}

/// A decoder on any candle device: the whole model, or one tensor-parallel [`Shard`].
pub struct DeviceLlama {
    pub cfg: DecoderConfig,
    device: Device,
    /// The activations' dtype: the weights' for dense checkpoints, f32 for ggml ones.
    dtype: DType,
    shard: Shard,
    /// This shard's attention heads, KV heads and MLP width.
    heads: usize,
    kv_heads: usize,
    inter: usize,
    /// Vocabulary rows per shard (the last shard padded with zero rows).
    vocab_part: usize,
    /// This shard's embedding rows, plus one zero row (at `vocab_part`) for the ids of
    /// other shards.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Lin,
    kv: SharedPool,
}

impl DeviceLlama {
    /// Moves a loaded model to `device`; dense weights are converted to `dtype`.
    pub fn from_llama(m: &Llama, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        Self::from_llama_shard(m, device, dtype, Shard::WHOLE)
    }

    /// Moves `shard` of a loaded model to `device` (its heads, MLP columns and vocabulary
    /// rows; quantised weights stay quantised where the cut falls between ggml blocks).
    pub fn from_llama_shard(
        m: &Llama,
        device: &Device,
        dtype: DType,
        shard: Shard,
    ) -> Result<Self, ModelError> {
        let c = &m.cfg;
        if let Some(why) = split_problem(c, shard.world) {
            return Err(ModelError::Unsupported(why));
        }
        let dtype = Self::dtype_for(m, dtype);
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
        let (hd, w) = (c.head_dim, shard.world);
        let (qd, kvd, is) = (c.num_heads * hd, c.num_kv_heads * hd, c.intermediate_size);
        let (q, kv, mlp) = (shard.part(qd), shard.part(kvd), shard.part(is));
        let shift = |r: &Range<usize>, by: usize| r.start + by..r.end + by;
        let first = shard.rank == 0;
        let part = |l: &QLinear, rows: &[Range<usize>], cols: Range<usize>, bias: bool| {
            Lin::from_part(l, rows, cols, 0, bias, device, dtype)
        };
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let hs = l.o.rows;
            layers.push(Layer {
                attn_norm: vec(&l.attn_norm)?,
                // Column-parallel: this shard's q, k and v heads, stacked as the whole is.
                qkv: part(
                    &l.qkv,
                    &[q.clone(), shift(&kv, qd), shift(&kv, qd + kvd)],
                    0..hs,
                    true,
                )?,
                q_norm: opt(&l.q_norm)?,
                k_norm: opt(&l.k_norm)?,
                // Row-parallel: the columns of this shard's heads; the bias once, on rank 0.
                o: part(&l.o, std::slice::from_ref(&(0..hs)), q.clone(), first)?,
                ffn_norm: vec(&l.ffn_norm)?,
                gate_up: part(&l.gate_up, &[mlp.clone(), shift(&mlp, is)], 0..hs, true)?,
                down: part(&l.down, std::slice::from_ref(&(0..hs)), mlp.clone(), first)?,
            });
        }
        // Vocabulary-parallel embedding and LM head: ceil(vocab / world) rows per shard.
        let v = c.vocab_size;
        let vocab_part = v.div_ceil(w);
        let rows = (shard.rank * vocab_part).min(v)..((shard.rank + 1) * vocab_part).min(v);
        let pad = vocab_part - rows.len();
        let embed = if w == 1 {
            m.embed.dense_f32()?
        } else {
            // One more zero row: where the ids of other shards look up.
            dense_part(
                &m.embed.dense_f32()?,
                std::slice::from_ref(&rows),
                &(0..c.hidden_size),
                pad + 1,
            )?
        };
        let lm_head = Lin::from_part(
            &m.lm_head,
            &[rows],
            0..c.hidden_size,
            pad,
            true,
            device,
            dtype,
        )?;
        Ok(DeviceLlama {
            cfg: c.clone(),
            device: device.clone(),
            dtype,
            shard,
            heads: c.num_heads / w,
            kv_heads: c.num_kv_heads / w,
            inter: is / w,
            vocab_part,
            embed: embed.to_device(device)?.to_dtype(dtype)?,
            layers,
            norm: vec(&m.norm)?,
            lm_head,
            kv: std::sync::Arc::new(std::sync::Mutex::new(KvPool::new(
                c.num_layers,
                c.num_kv_heads / w * hd,
                dtype,
                device,
            ))),
        })
    }

    /// The activations' dtype of `m` on the device path when dense weights are asked in
    /// `dtype`: ggml checkpoints run with f32 activations.
    pub fn dtype_for(m: &Llama, dtype: DType) -> DType {
        match m.layers.first().map(|l| &l.qkv.weights) {
            Some(Weights::Dense(_)) => dtype,
            _ => DType::F32,
        }
    }

    /// The shard this model holds.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The pool of this model's KV caches.
    pub fn kv_pool(&self) -> &SharedPool {
        &self.kv
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
        self.step_with(items, None)
    }

    /// [`Self::step`] of one tensor-parallel shard: `comm` joins it with the other shards'
    /// steps (which must run at the same time, on the same items); every shard returns the
    /// whole logits. `None` for the whole model.
    pub fn step_with(
        &self,
        items: &mut [DeviceStep<'_>],
        comm: Option<&dyn Communicator>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.validate(items)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if self.shard.world > 1 && comm.is_none_or(|c| c.world() != self.shard.world) {
            return Err(ModelError::Unsupported(
                "a tensor-parallel shard steps only with its group's communicator".into(),
            ));
        }
        let logits = self.forward(items, comm)?;
        for it in items.iter_mut() {
            it.cache.len += it.tokens.len();
        }
        Ok(logits)
    }

    fn forward(
        &self,
        items: &mut [DeviceStep<'_>],
        comm: Option<&dyn Communicator>,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let (hd, nh, nkv) = (c.head_dim, self.heads, self.kv_heads);
        let (qd, kvd, is) = (nh * hd, nkv * hd, self.inter);
        // The sum over shards after a row-parallel layer (nothing to sum for the whole model).
        let reduce = |x: Tensor| -> candle_core::Result<Tensor> {
            match comm {
                Some(comm) => comm.all_reduce(&x),
                None => Ok(x),
            }
        };
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
        if self.shard.world > 1 {
            // This shard's vocabulary rows; other ids read the zero row after them.
            let mine = self.shard.rank * self.vocab_part..(self.shard.rank + 1) * self.vocab_part;
            for id in ids.iter_mut() {
                let i = *id as usize;
                *id = if mine.contains(&i) {
                    (i - mine.start) as u32
                } else {
                    self.vocab_part as u32
                };
            }
        }
        let ids = Tensor::from_vec(ids, n, dev)?;
        // The residual stream is f32 (as on the CPU path); matmul inputs are cast to dtype.
        let mut x = reduce(self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?)?;
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
            x = (x + reduce(layer.o.forward(&attn)?.to_dtype(DType::F32)?)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?.to_dtype(dt)?;
            let gu = layer.gate_up.forward(&h)?;
            let mlp = (candle_nn::ops::silu(&gu.narrow(1, 0, is)?)? * gu.narrow(1, is, is)?)?;
            x = (x + reduce(layer.down.forward(&mlp)?.to_dtype(DType::F32)?)?)?;
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
        let logits = self.lm_head.forward(&last)?.to_dtype(DType::F32)?;
        let logits = match comm {
            // Every shard's vocabulary rows side by side, the padding cut off.
            Some(comm) => comm.all_gather_cols(&logits)?.narrow(1, 0, c.vocab_size)?,
            None => logits,
        };
        logits.to_vec2::<f32>()
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
