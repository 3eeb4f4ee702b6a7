//! `GET /v1/models`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One served model. The OpenAI fields plus trident's own (`type`, `state`, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// `chat`, `embedding` or `rerank`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `loading`, `ready`, `degraded` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// How a rerank model scores: `cross-encoder` or `bi-encoder (cosine)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}
