//! `POST /tokenize` and `POST /detokenize` (vLLM shapes).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// Plain text to tokenize (completion form).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages (chat form; chat engines render the template first).
    #[serde(default)]
    pub messages: Option<serde_json::Value>,
    #[serde(default = "default_true")]
    pub add_special_tokens: bool,
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Extra variables for the chat template, as on chat completions.
    #[serde(default)]
    pub chat_template_kwargs: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub return_token_strs: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
