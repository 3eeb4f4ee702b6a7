//! `POST /v1/completions` types, and the sampling fields both text-generation endpoints
//! share ([`SamplingFields`]); value checks happen in the chat engine so errors name the
//! parameter.

use serde::{Deserialize, Serialize};

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub include_usage: bool,
}

/// The generation fields of a chat or completion request, as sent.
#[derive(Debug, Clone, Default)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    /// Which parameter `max_tokens` came from (for error messages).
    pub max_tokens_param: &'static str,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
    /// vLLM extension: keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Log probabilities asked for: `Some(k)` = each token's, plus `k` alternatives.
    pub logprobs: Option<i64>,
    /// Which parameter `logprobs`' count came from (for error messages).
    pub logprobs_param: &'static str,
    pub extras: SamplingExtras,
}

impl SamplingFields {
    /// Fills the values the request left unset from the checkpoint's recommendations.
    pub fn with_defaults(mut self, d: &crate::models::decoder::SamplingDefaults) -> Self {
        self.temperature = self.temperature.or(d.temperature);
        self.top_p = self.top_p.or(d.top_p);
        self.top_k = self.top_k.or(d.top_k);
        self.repetition_penalty = self.repetition_penalty.or(d.repetition_penalty);
        self.extras.min_p = self.extras.min_p.or(d.min_p);
        self
    }
}

/// Sampling controls chat and completion requests share beyond the classic ones: OpenAI's
/// `logit_bias` and vLLM's `min_p` and `min_tokens`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingExtras {
    /// Token id (as a string key) → bias added to its logit, in [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<serde_json::Value>,
    /// Drop tokens whose probability is below `min_p` × the most likely token's, in [0, 1].
    #[serde(default)]
    pub min_p: Option<f64>,
    /// End-of-sequence tokens are suppressed until this many tokens were generated.
    #[serde(default)]
    pub min_tokens: Option<i64>,
    /// Token ids that end generation like end-of-sequence (vLLM).
    #[serde(default)]
    pub stop_token_ids: Option<Vec<i64>>,
    /// Keep a matched stop string at the end of the text (vLLM).
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub include_stop_str_in_output: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: serde_json::Value,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub ignore_eos: bool,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub echo: bool,
    /// The log probability of each generated token and this many alternatives (0–20).
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(flatten)]
    pub structured: StructuredFields,
    #[serde(flatten)]
    pub extras: SamplingExtras,
    /// Every other top-level field (kept last: it takes what the others left).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

/// Structured-output fields of chat and completion requests: OpenAI's `response_format` and
/// vLLM's `guided_*` / `structured_outputs` (at most one may be set).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StructuredFields {
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    #[serde(default)]
    pub guided_json: Option<serde_json::Value>,
    #[serde(default)]
    pub guided_regex: Option<serde_json::Value>,
    #[serde(default)]
    pub guided_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub guided_grammar: Option<serde_json::Value>,
    #[serde(default)]
    pub structured_outputs: Option<serde_json::Value>,
}

/// `max_tokens` of a completion that does not set it (OpenAI's and vLLM's default; chat
/// requests default to the rest of the context instead).
pub const COMPLETION_DEFAULT_MAX_TOKENS: i64 = 16;

impl CompletionRequest {
    pub fn sampling(&self) -> SamplingFields {
        SamplingFields {
            max_tokens: self.max_tokens.or(Some(COMPLETION_DEFAULT_MAX_TOKENS)),
            max_tokens_param: "max_tokens",
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            stop: self.stop.clone(),
            n: self.n,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            logprobs_param: "logprobs",
            extras: self.extras.clone(),
        }
    }
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub finish_reason: Option<String>,
    pub logprobs: Option<serde_json::Value>,
}

/// A completion, or one chunk of a streamed completion (same shape, `usage` only on the
/// last chunk when asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
