//! The device-generic Llama / Qwen2 / Qwen3 decoder: the same model as `models::llama`, built
//! from candle tensor ops and candle-nn on any device, with every sequence's KV cache on that
//! device. It is assembled from a loaded `Llama` (so both checkpoint formats share one
//! loader): dense weights move to the device in the chosen dtype; ggml weights (GGUF) become
//! candle `QMatMul`s, which have CUDA kernels, with f32 activations.
//!
//! A step runs the tokens of all its sequences through every linear layer as one matrix
//! (weights read once per step, as on the CPU path); rotary embeddings use candle's fused
//! kernel with a position per token; attention runs per sequence against its cache, scores
//! and softmax in f32. The residual stream and the norms stay f32, as on the CPU path; the
//! matmul inputs, the heads and the KV cache are in the activations' dtype. Caches grow by doubling (`slice_set` into a larger buffer).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

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

/// One layer's keys and values of a sequence: `[capacity, kv_heads, head_dim]` buffers of
/// which the first `len` rows (the cache's length) are valid.
#[derive(Debug)]
struct Kv {
    k: Tensor,
    v: Tensor,
}

/// The KV cache of one sequence, on the model's device.
#[derive(Debug, Default)]
pub struct DeviceCache {
    pub len: usize,
    layers: Vec<Option<Kv>>,
}

impl Clone for DeviceCache {
    /// A deep copy: appends write into the buffers in place, so clones must not share them.
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|kv| Kv {
                    k: kv.k.copy().expect("copying a KV buffer. This is a bug."),
                    v: kv.v.copy().expect("copying a KV buffer. This is a bug."),
                })
            })
            .collect();
        DeviceCache {
            len: self.len,
            layers,
        }
    }
}

/// Appends `k`, `v` (`[t, kv_heads, head_dim]`) after the first `len` rows of `slot`,
/// growing it, and returns the valid prefix of both buffers.
fn append(
    slot: &mut Option<Kv>,
    len: usize,
    k: &Tensor,
    v: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let t = k.dim(0)?;
    let cap = slot.as_ref().map_or(0, |kv| kv.k.dim(0).unwrap_or(0));
    if len + t > cap {
        let new_cap = (2 * cap).max(len + t).max(16);
        let (_, kvh, hd) = k.dims3()?;
        let grown = Kv {
            k: Tensor::zeros((new_cap, kvh, hd), k.dtype(), k.device())?,
            v: Tensor::zeros((new_cap, kvh, hd), v.dtype(), v.device())?,
        };
        if let Some(old) = slot.as_ref().filter(|_| len > 0) {
            grown.k.slice_set(&old.k.narrow(0, 0, len)?, 0, 0)?;
            grown.v.slice_set(&old.v.narrow(0, 0, len)?, 0, 0)?;
        }
        *slot = Some(grown);
    }
    let kv = slot.as_ref().expect("allocated above. This is a bug.");
    kv.k.slice_set(&k.contiguous()?, 0, len)?;
    kv.v.slice_set(&v.contiguous()?, 0, len)?;
    Ok((kv.k.narrow(0, 0, len + t)?, kv.v.narrow(0, 0, len + t)?))
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
        })
    }

    /// The dtype of activations and of the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> DeviceCache {
        DeviceCache {
            len: 0,
            layers: (0..self.cfg.num_layers).map(|_| None).collect(),
        }
    }

    fn validate(&self, items: &[DeviceStep<'_>]) -> Result<(), ModelError> {
        for (i, it) in items.iter().enumerate() {
            if it.tokens.is_empty() {
                return Err(ModelError::Input(format!(
                    "sequence {i} of the step has no tokens"
                )));
            }
            if let Some(t) = it
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "token id {t} is outside the vocabulary ({} tokens)",
                    self.cfg.vocab_size
                )));
            }
            let end = it.cache.len + it.tokens.len();
            if end > self.cfg.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "sequence of {end} tokens exceeds the model's {} positions",
                    self.cfg.max_position_embeddings
                )));
            }
            if it.cache.layers.len() != self.cfg.num_layers {
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
            let mut outs = Vec::with_capacity(items.len());
            let mut off = 0;
            for it in items.iter_mut() {
                let t = it.tokens.len();
                let start = it.cache.len;
                let (kc, vc) = append(
                    &mut it.cache.layers[li],
                    start,
                    &k.narrow(0, off, t)?,
                    &v.narrow(0, off, t)?,
                )?;
                let qi = q.narrow(0, off, t)?;
                outs.push(attend(&qi, &kc, &vc, start, scale)?);
                off += t;
            }
            let attn = Tensor::cat(&outs, 0)?;
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
