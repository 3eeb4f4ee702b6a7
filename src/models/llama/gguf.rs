//! Loading a [`Llama`] from a GGUF file (llama.cpp naming: `token_embd`, `blk.N.attn_q`, …,
//! `output_norm`, `output`; a missing `output` means tied embeddings). Tensors keep their
//! ggml format; [`QLinear`] decides which kernels run them.
//!
//! GGUF llama checkpoints store q/k rows permuted for interleaved rotary pairs, so they run
//! with [`RopeStyle::Interleaved`]; qwen2/qwen3 checkpoints are stored unpermuted (NeoX pairs).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

use super::{inv_freq, DecoderConfig, Layer, Llama, RopeStyle};
use crate::models::quant::QLinear;
use crate::models::ModelError;

/// Bound on head counts and head sizes read from a header (real models: ≤ 256 heads of ≤ 256).
const MAX_DIM: usize = 1 << 16;

/// An open GGUF file: its header and a reader for tensor data (a `File`, or any seekable
/// reader: the fuzz target reads from memory).
pub struct GgufFile<R = File> {
    pub path: PathBuf,
    pub content: Content,
    reader: R,
    /// Bytes in the file: every tensor is checked against it before anything is allocated.
    len: u64,
}

impl GgufFile {
    /// Reads the header (metadata and tensor table) of `path`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|_| ModelError::Files {
            what: "cannot open GGUF file".into(),
            path: path.to_path_buf(),
        })?;
        GgufFile::from_reader(path, file)
    }
}

impl<R: Read + Seek> GgufFile<R> {
    /// Reads the header from `reader`; `path` names the file in errors.
    pub fn from_reader(path: &Path, mut reader: R) -> Result<Self, ModelError> {
        let len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        // candle's reader checks most sizes but divides by the file's alignment unchecked
        // (`general.alignment = 0`): a panic there is a bad header, not a crash.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let invalid = |reason: String| ModelError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let content = match read {
            Ok(r) => r.map_err(|e| invalid(e.to_string()))?,
            Err(p) => {
                return Err(invalid(format!(
                    "malformed GGUF header ({})",
                    crate::engine::liveness::panic_message(p.as_ref())
                )))
            }
        };
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
            len,
        })
    }

    fn invalid(&self, reason: String) -> ModelError {
        ModelError::Invalid {
            path: self.path.clone(),
            reason,
        }
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A metadata value as an unsigned integer.
    pub fn meta_usize(&self, key: &str) -> Option<usize> {
        let v = self.meta(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
            .ok()
    }

    /// A metadata value as a float.
    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        let v = self.meta(key)?;
        v.to_f32().or_else(|_| v.to_f64().map(|x| x as f32)).ok()
    }

    fn required(&self, key: &str) -> Result<usize, ModelError> {
        self.meta_usize(key)
            .ok_or_else(|| self.invalid(format!("missing metadata `{key}`")))
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Raw bytes and `(rows, cols)` of a tensor (1-D tensors have one row).
    fn raw(
        &mut self,
        name: &str,
    ) -> Result<(candle_core::quantized::GgmlDType, Vec<u8>, usize, usize), ModelError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::Invalid {
                path: self.path.clone(),
                reason: format!("missing tensor `{name}`"),
            })?;
        let dims = info.shape.dims().to_vec();
        let (rows, cols) = match dims.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            _ => return Err(self.invalid(format!("tensor `{name}` has shape {dims:?}"))),
        };
        if rows == 0 || cols == 0 {
            // An empty buffer has no aligned address for candle to view as blocks.
            return Err(self.invalid(format!("tensor `{name}` has a zero dimension: {dims:?}")));
        }
        let dtype = info.ggml_dtype;
        if cols % dtype.block_size() != 0 {
            return Err(self.invalid(format!(
                "tensor `{name}`: {cols} columns in {dtype:?} blocks"
            )));
        }
        // Every size is checked against the file before anything is allocated: a header
        // may claim any dimensions and offsets.
        let file_len = self.len;
        let size = rows
            .checked_mul(cols)
            .map(|n| n / dtype.block_size())
            .and_then(|blocks| blocks.checked_mul(dtype.type_size()))
            .ok_or_else(|| self.invalid(format!("tensor `{name}`: {rows}x{cols} overflows")))?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .filter(|s| s.checked_add(size as u64).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                self.invalid(format!(
                    "tensor `{name}` ({size} bytes at offset {}) runs past the end of the file ({file_len} bytes)",
                    info.offset
                ))
            })?;
        let mut bytes = vec![0u8; size];
        self.reader.seek(SeekFrom::Start(start))?;
        self.reader
            .read_exact(&mut bytes)
            .map_err(|_| self.invalid(format!("tensor `{name}` is truncated")))?;
        Ok((dtype, bytes, rows, cols))
    }

    /// A small tensor (norm weights, biases) as f32.
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (dtype, bytes, rows, cols) = self.raw(name)?;
        let t = qtensor_from_ggml(dtype, &bytes, vec![rows * cols], &Device::Cpu)?;
        Ok(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<QLinear, ModelError> {
        let (dtype, bytes, r, c) = self.raw(&format!("{name}.weight"))?;
        if (r, c) != (rows, cols) {
            return Err(self.invalid(format!("`{name}` is {r}x{c}, expected {rows}x{cols}")));
        }
        let mut l = QLinear::from_ggml(dtype, bytes, rows, cols)?;
        let bias = format!("{name}.bias");
        if self.has(&bias) {
            l.bias = Some(self.vector(&bias)?);
        }
        Ok(l)
    }

    /// The decoder configuration from the `{arch}.*` metadata.
    pub fn config(&mut self) -> Result<DecoderConfig, ModelError> {
        let arch = match self
            .meta("general.architecture")
            .and_then(|v| v.to_string().ok())
        {
            Some(a) => a.clone(),
            None => return Err(self.invalid("missing `general.architecture`".into())),
        };
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" | "qwen3" => RopeStyle::Neox,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF architecture `{other}`"
                )))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.required(&k("embedding_length"))?;
        let heads = self.required(&k("attention.head_count"))?;
        let kv_heads = self
            .meta_usize(&k("attention.head_count_kv"))
            .unwrap_or(heads);
        let head_dim = self
            .meta_usize(&k("attention.key_length"))
            .unwrap_or(hidden / heads.max(1));
        if heads == 0
            || kv_heads == 0
            || heads % kv_heads != 0
            || !head_dim.is_multiple_of(2)
            || head_dim > MAX_DIM
            || heads > MAX_DIM
            || hidden > MAX_DIM * 16
        {
            return Err(self.invalid(format!(
                "{heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
            )));
        }
        // GGUF allows any rank, a scalar included: only a matrix has a row per token.
        let embd_rows = match self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|i| i.shape.dims())
        {
            Some(&[rows, _]) => rows,
            Some(dims) => {
                return Err(self.invalid(format!("tensor `token_embd.weight` has shape {dims:?}")))
            }
            None => return Err(self.invalid("missing tensor `token_embd.weight`".into())),
        };
        let theta = self.meta_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
        let mut freqs = inv_freq(theta, head_dim, None);
        if self.has("rope_freqs.weight") {
            let f = self.vector("rope_freqs.weight")?;
            if f.len() != freqs.len() {
                return Err(self.invalid("rope_freqs.weight has the wrong length".into()));
            }
            freqs.iter_mut().zip(&f).for_each(|(a, b)| *a /= b);
        }
        Ok(DecoderConfig {
            model_type: arch.clone(),
            hidden_size: hidden,
            intermediate_size: self.required(&k("feed_forward_length"))?,
            num_layers: self.required(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            vocab_size: embd_rows,
            max_position_embeddings: self.meta_usize(&k("context_length")).unwrap_or(2048),
            rms_norm_eps: self
                .meta_f32(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_style,
            inv_freq: freqs,
        })
    }

    /// Loads every weight into a [`Llama`].
    pub fn load_model(&mut self) -> Result<Llama, ModelError> {
        let cfg = self.config()?;
        let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let embed = self.linear("token_embd", cfg.vocab_size, hs)?;
        // Each layer has several tensors: more layers than tensors is a lying header (and
        // must not size an allocation).
        if cfg.num_layers == 0 || cfg.num_layers > self.content.tensor_infos.len() {
            return Err(self.invalid(format!(
                "block_count {} does not fit the {} tensors in the file",
                cfg.num_layers,
                self.content.tensor_infos.len()
            )));
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let q = self.linear(&p("attn_q"), qd, hs)?;
            let kk = self.linear(&p("attn_k"), kvd, hs)?;
            let v = self.linear(&p("attn_v"), kvd, hs)?;
            let gate = self.linear(&p("ffn_gate"), is, hs)?;
            let up = self.linear(&p("ffn_up"), is, hs)?;
            let q_norm = if self.has(&p("attn_q_norm.weight")) {
                Some(self.vector(&p("attn_q_norm.weight"))?)
            } else {
                None
            };
            let k_norm = if self.has(&p("attn_k_norm.weight")) {
                Some(self.vector(&p("attn_k_norm.weight"))?)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: self.vector(&p("attn_norm.weight"))?,
                qkv: QLinear::concat(vec![q, kk, v])?,
                q_norm,
                k_norm,
                o: self.linear(&p("attn_output"), hs, qd)?,
                ffn_norm: self.vector(&p("ffn_norm.weight"))?,
                gate_up: QLinear::concat(vec![gate, up])?,
                down: self.linear(&p("ffn_down"), hs, is)?,
            });
        }
        let norm = self.vector("output_norm.weight")?;
        let lm_head = if self.has("output.weight") {
            self.linear("output", cfg.vocab_size, hs)?
        } else {
            embed.clone()
        };
        Ok(Llama::new(cfg, embed, layers, norm, lm_head))
    }
}
