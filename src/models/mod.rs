//! Model backends: everything that touches `candle` lives under this module.
//!
//! The engine servers above talk to models only through the plain-Rust APIs exposed here
//! (token ids in, vectors/scores/logits out), never through `candle_core::Tensor`.
//! `files` resolves where a model's files are (local directory or Hugging Face cache layout).
//! Each family has a fast CPU implementation (`bert`, `llama` + `kernels`, `quant`) and a
//! device-generic one (`device`) that CUDA runs; `device::choose` picks.

pub mod bert;
pub mod decoder;
pub mod device;
pub mod encoder;
pub mod export;
pub mod files;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod llama;
pub mod pooling;
pub mod quant;
pub mod tensors;
pub mod testutil;
#[doc(hidden)]
pub mod testutil_decoder;

use std::path::PathBuf;

/// Errors raised while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file is missing or unreadable.
    #[error("{what}: {path}")]
    Files { what: String, path: PathBuf },
    /// A file exists but its content cannot be used.
    #[error("invalid model file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The model family or a feature of it is not supported.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Tokenizer construction or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The request cannot be run on this model (too long, bad token id, ...).
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The `dtype` setting of a model entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeChoice {
    /// Let the backend pick the fastest dtype that keeps accuracy within the documented bound.
    #[default]
    Auto,
    #[serde(alias = "float32", alias = "fp32")]
    F32,
    #[serde(alias = "float16", alias = "fp16", alias = "half")]
    F16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// CUDA device by ordinal (after `CUDA_VISIBLE_DEVICES` remapping).
    Cuda(usize),
}

impl DeviceChoice {
    /// Creates the candle device; fails with a clear message when CUDA support is absent.
    pub fn to_candle(self) -> Result<candle_core::Device, ModelError> {
        match self {
            DeviceChoice::Cpu => Ok(candle_core::Device::Cpu),
            DeviceChoice::Cuda(i) => {
                if cfg!(feature = "cuda") {
                    Ok(candle_core::Device::new_cuda(i)?)
                } else {
                    Err(ModelError::Unsupported(
                        "this trident binary was built without the `cuda` feature".into(),
                    ))
                }
            }
        }
    }
}

/// Options shared by every model loader.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub dtype: DTypeChoice,
    pub device: DeviceChoice,
    /// Run the device-generic path (`models::device`) on the CPU too, instead of the fast
    /// kernels: for the equivalence tests and the CPU side of `scripts/gpu-check.sh`.
    pub generic: bool,
    /// Ranks of a tensor-parallel decoder (`tensor_parallel_size`; 0 or 1: not split). On
    /// CUDA rank `r` runs on device `r` of the visible ones; on the CPU every rank is a
    /// thread of the CPU.
    pub tensor_parallel: usize,
}
