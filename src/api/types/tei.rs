//! text-embeddings-inference's embedding API: `POST /embed`, `POST /embed_all` and
//! `GET /info` request and response types.
//!
//! TEI bodies carry no `model`: an engine serves its one model, and the gateway sends a
//! body without `model` to the only model of the route's kind (a `model` field, when
//! present, routes as everywhere else). Answers are TEI's bare arrays: `[[f32]]` for
//! `/embed`, `[[[f32]]]` (input × token × hidden) for `/embed_all`.
//!
//! Departures, each documented in `docs/embeddings.md`: `truncate` defaults to true (as on
//! `/v1/embeddings` and trident's TEI `/rerank`; TEI's own default is its server flag),
//! errors are the OpenAI envelope every trident route answers, `prompt_name` is refused
//! (no prompts are configured), and token-id `inputs` follow the model's `token_ids`
//! setting like `/v1/embeddings`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::embeddings::Overflow;
use crate::api::ApiError;

/// `POST /embed` and `POST /embed_all`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TeiEmbedRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, a list of strings, token ids, or a list of token-id lists.
    #[serde(default)]
    pub inputs: Value,
    /// L2-normalise the pooled vector (default true); false gives the raw pooled vector.
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `Right` (default: keep the start) or `Left` (keep the end).
    #[serde(default)]
    pub truncation_direction: Option<Value>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub prompt_name: Option<Value>,
}

impl TeiEmbedRequest {
    /// What to do with an input longer than the model takes.
    pub fn overflow(&self) -> Result<Overflow, ApiError> {
        let cut = match self.truncation_direction.as_ref() {
            None | Some(Value::Null) => Overflow::CutEnd,
            Some(Value::String(d)) if d.eq_ignore_ascii_case("right") => Overflow::CutEnd,
            Some(Value::String(d)) if d.eq_ignore_ascii_case("left") => Overflow::CutStart,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "truncation_direction",
                    "'truncation_direction' must be \"Right\" or \"Left\"",
                ))
            }
        };
        Ok(if self.truncate.unwrap_or(true) {
            cut
        } else {
            Overflow::Refuse
        })
    }

    /// Refuses what trident does not do: named prompts.
    pub fn check_prompt(&self) -> Result<(), ApiError> {
        match &self.prompt_name {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(ApiError::invalid_param(
                "prompt_name",
                "'prompt_name' is not supported: no prompts are configured for this model; \
                 prepend the prompt to the input instead",
            )),
        }
    }
}

/// `model_type` of `/info`: `{"embedding": {"pooling": "mean"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeiModelType {
    pub embedding: TeiPooling,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeiPooling {
    pub pooling: String,
}

/// `GET /info`, with the fields TEI's `Info` has (unknown ones `null`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeiInfo {
    /// The entry's `name` when it has one (the Hugging Face id), else the model's id.
    pub model_id: String,
    pub model_sha: Option<String>,
    /// `float32`, `float16` or `bfloat16`: what the model runs in.
    pub model_dtype: String,
    pub model_type: TeiModelType,
    /// Inputs that may wait in the engine's queue (`max_queue`).
    pub max_concurrent_requests: usize,
    /// Tokens per input, specials included.
    pub max_input_length: usize,
    /// Padded tokens per batch (`max_batch_tokens`).
    pub max_batch_tokens: usize,
    /// Inputs per batch.
    pub max_batch_requests: Option<usize>,
    /// Inputs per request.
    pub max_client_batch_size: usize,
    /// `truncate` when a request does not say.
    pub auto_truncate: bool,
    pub tokenization_workers: usize,
    /// trident's version.
    pub version: String,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
}

/// TEI's name for a dtype trident reports (`f32` → `float32`).
pub fn dtype_name(dtype: &str) -> String {
    match dtype {
        "f32" => "float32",
        "f16" => "float16",
        "bf16" => "bfloat16",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> TeiEmbedRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn truncation_defaults_to_cutting_the_end() {
        assert_eq!(
            req(json!({"inputs": "a"})).overflow().unwrap(),
            Overflow::CutEnd
        );
        let left = req(json!({"inputs": "a", "truncation_direction": "Left"}));
        assert_eq!(left.overflow().unwrap(), Overflow::CutStart);
        let off = req(json!({"inputs": "a", "truncate": false, "truncation_direction": "left"}));
        assert_eq!(off.overflow().unwrap(), Overflow::Refuse);
        let bad = req(json!({"inputs": "a", "truncation_direction": "Up"}));
        assert_eq!(
            bad.overflow().unwrap_err().param.as_deref(),
            Some("truncation_direction")
        );
        let prompt = req(json!({"inputs": "a", "prompt_name": "query"}));
        assert_eq!(
            prompt.check_prompt().unwrap_err().param.as_deref(),
            Some("prompt_name")
        );
        assert_eq!(dtype_name("bf16"), "bfloat16");
    }
}
