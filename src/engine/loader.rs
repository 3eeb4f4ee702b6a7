//! Loads the model of an entry behind the engine's backend traits.

use std::path::Path;
use std::sync::Arc;

use super::backend::{EncoderBackend, EncoderMeta, PairTokens, PreparedQuery, Truncate};
use crate::config::{DeviceSetting, ModelEntry};
use crate::models::decoder::DecoderModel;
use crate::models::encoder::{EncoderKind, EncoderModel};
use crate::models::{DeviceChoice, LoadOptions, ModelError};

/// Load options for an entry: dtype, and CUDA when asked for (device 0 of the
/// `CUDA_VISIBLE_DEVICES` the supervisor set).
pub fn load_options(entry: &ModelEntry) -> LoadOptions {
    let cuda = match entry.device {
        DeviceSetting::Cuda => true,
        DeviceSetting::Auto => !entry.gpus.is_empty() && cfg!(feature = "cuda"),
        DeviceSetting::Cpu => false,
    };
    LoadOptions {
        dtype: entry.dtype,
        device: if cuda {
            DeviceChoice::Cuda(0)
        } else {
            DeviceChoice::Cpu
        },
        // The device-generic path on the CPU, for scripts/gpu-check.sh's DEVICE=cpu mode.
        generic: std::env::var("TRIDENT_GENERIC_PATH").is_ok_and(|v| v == "1"),
        tensor_parallel: entry.tensor_parallel_size.unwrap_or(1),
    }
}

/// Loads an encoder (embedding, cross-encoder, or embedding model used for rerank).
pub fn load_encoder(entry: &ModelEntry) -> Result<Arc<dyn EncoderBackend>, ModelError> {
    let path = entry
        .path
        .as_ref()
        .ok_or_else(|| ModelError::Unsupported("model entry has no path".into()))?;
    let resolved = crate::models::files::resolve(path)?;
    let opts = load_options(entry);
    let mut model = EncoderModel::load(&resolved, &opts)?;
    if let Some(n) = entry.threads {
        model.set_threads(n)?;
    }
    let vocab = vocab_size(&resolved)?;
    Ok(Arc::new(EncoderAdapter { model, vocab }))
}

/// `vocab_size` of the model's `config.json`.
fn vocab_size(dir: &Path) -> Result<usize, ModelError> {
    let path = dir.join("config.json");
    let invalid = |reason: String| ModelError::Invalid {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    v.get("vocab_size")
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| invalid("config.json has no vocab_size".into()))
}

/// `models::encoder::EncoderModel` behind the engine's backend trait.
struct EncoderAdapter {
    model: EncoderModel,
    vocab: usize,
}

impl EncoderBackend for EncoderAdapter {
    fn meta(&self) -> EncoderMeta {
        let info = self.model.info();
        EncoderMeta {
            model_type: info.model_type.clone(),
            max_len: info.max_len,
            hidden_size: info.hidden_size,
            cross_encoder: matches!(info.kind, EncoderKind::CrossEncoder { .. }),
            dtype: info.dtype.clone(),
            pooling: info.pooling.as_str().to_string(),
        }
    }

    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, ModelError> {
        self.model.encode_text(text, truncate)
    }

    fn encode_text_fit(
        &self,
        text: &str,
        truncate: Truncate,
        max_tokens: Option<usize>,
    ) -> Result<Vec<u32>, ModelError> {
        self.model.encode_text_fit(text, truncate, max_tokens)
    }

    fn encode_pair(&self, query: &str, doc: &str) -> Result<PairTokens, ModelError> {
        self.model.encode_pair(query, doc)
    }

    fn prepare_query(&self, query: &str) -> Result<PreparedQuery, ModelError> {
        self.model.prepare_query(query)
    }

    fn encode_prepared_pair(
        &self,
        query: &PreparedQuery,
        doc: &str,
    ) -> Result<PairTokens, ModelError> {
        self.model.encode_prepared_pair(query, doc)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.model.decode(ids)
    }

    fn token_strings(&self, ids: &[u32]) -> Vec<String> {
        self.model.token_strings(ids)
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.model.embed(batch)
    }

    fn embed_unnormalized(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.model.embed_unnormalized(batch)
    }

    fn token_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        self.model.token_states(batch)
    }

    fn score(&self, batch: &[&PairTokens]) -> Result<Vec<f32>, ModelError> {
        self.model.score(batch)
    }
}

/// Loads a decoder for a chat entry; also says whether it runs on CUDA (for the KV budget).
pub fn load_decoder(entry: &ModelEntry) -> Result<(DecoderModel, bool), ModelError> {
    let path = entry
        .path
        .as_ref()
        .ok_or_else(|| ModelError::Unsupported("model entry has no path".into()))?;
    let opts = load_options(entry);
    let cuda = matches!(opts.device, DeviceChoice::Cuda(_));
    Ok((DecoderModel::load(path, &opts)?, cuda))
}
