//! Device-generic model paths: one per family (`bert` for BERT/XLM-R encoders and their
//! cross-encoder heads, `llama` for the Llama/Qwen2/Qwen3 decoder), built from candle tensor
//! ops and candle-nn with the `Device` as a parameter. They serve CUDA, and they run on
//! candle's CPU backend too, which is how the normal test suite checks them against the fast
//! CPU kernels (`models::bert`, `models::llama`). [`choose`] is the one place that picks
//! between the two paths; default CPU traffic never takes the generic one.

pub mod bert;
pub mod comm;
pub mod kv;
pub mod llama;
pub mod tp;

use candle_core::DType;

use super::{DTypeChoice, DeviceChoice, LoadOptions, ModelError};

/// Which implementation a model runs on.
#[derive(Debug, Clone)]
pub enum ModelPath {
    /// The fast CPU kernels.
    Fast,
    /// The device-generic candle path on this device, in this dtype.
    Generic {
        device: candle_core::Device,
        dtype: DType,
    },
}

/// Picks the implementation for `opts`: CUDA always takes the generic path (bf16 for
/// `dtype: auto`); the CPU takes the fast kernels unless `opts.generic` asks for the generic
/// path (f32 for `auto`), as the equivalence tests and `scripts/gpu-check.sh` do.
pub fn choose(opts: &LoadOptions) -> Result<ModelPath, ModelError> {
    let cuda = matches!(opts.device, DeviceChoice::Cuda(_));
    // Tensor parallelism is a parameter of the generic path only.
    if !cuda && !opts.generic && opts.tensor_parallel <= 1 {
        return Ok(ModelPath::Fast);
    }
    let dtype = match opts.dtype {
        DTypeChoice::Auto if cuda => DType::BF16,
        DTypeChoice::Auto | DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::Bf16 => DType::BF16,
    };
    Ok(ModelPath::Generic {
        device: opts.device.to_candle()?,
        dtype,
    })
}

/// The device of each tensor-parallel rank: CUDA devices `first..first + n` of the visible
/// ones (the supervisor sets `CUDA_VISIBLE_DEVICES` to the model's GPUs), or the CPU `n`
/// times.
pub fn rank_devices(opts: &LoadOptions) -> Result<Vec<candle_core::Device>, ModelError> {
    (0..opts.tensor_parallel.max(1))
        .map(|r| match opts.device {
            DeviceChoice::Cpu => DeviceChoice::Cpu.to_candle(),
            DeviceChoice::Cuda(first) => DeviceChoice::Cuda(first + r).to_candle(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_defaults_take_the_fast_path_and_generic_is_explicit() {
        let fast = choose(&LoadOptions::default()).unwrap();
        assert!(matches!(fast, ModelPath::Fast));
        let opts = LoadOptions {
            generic: true,
            ..Default::default()
        };
        match choose(&opts).unwrap() {
            ModelPath::Generic { device, dtype } => {
                assert!(device.is_cpu());
                assert_eq!(dtype, DType::F32);
            }
            ModelPath::Fast => panic!("generic was asked for"),
        }
        let bf16 = LoadOptions {
            generic: true,
            dtype: DTypeChoice::Bf16,
            ..Default::default()
        };
        assert!(matches!(
            choose(&bf16).unwrap(),
            ModelPath::Generic {
                dtype: DType::BF16,
                ..
            }
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let opts = LoadOptions {
            device: DeviceChoice::Cuda(0),
            ..Default::default()
        };
        let err = choose(&opts).unwrap_err().to_string();
        assert!(err.contains("without the `cuda` feature"), "{err}");
    }
}
