//! `POST /v1/chat/completions` types and the shape checks of `messages`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::completions::{SamplingFields, StopField, StreamOptions, Usage};
use crate::api::ApiError;

/// Roles a message may have.
pub const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Value,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
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
    /// Return the log probability of each generated token.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`: this many most likely alternatives per token (0–20).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// vLLM extension: end the prompt with the assistant header (default true).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Extra variables for the chat template (Qwen3's `enable_thinking`, …).
    #[serde(default)]
    pub chat_template_kwargs: Option<Value>,
    #[serde(flatten)]
    pub structured: super::completions::StructuredFields,
    #[serde(flatten)]
    pub extras: super::completions::SamplingExtras,
    /// Every other top-level field (kept last: it takes what the others left).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

impl ChatCompletionRequest {
    pub fn sampling(&self) -> SamplingFields {
        let (max_tokens, max_tokens_param) = match self.max_completion_tokens {
            Some(v) => (Some(v), "max_completion_tokens"),
            None => (self.max_tokens, "max_tokens"),
        };
        SamplingFields {
            max_tokens,
            max_tokens_param,
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
            logprobs: match self.logprobs {
                Some(true) => Some(self.top_logprobs.unwrap_or(0)),
                _ => None,
            },
            logprobs_param: "top_logprobs",
            extras: self.extras.clone(),
        }
    }
}

/// Checks `messages` and returns them with `content` flattened to a string (text parts
/// joined by newlines), ready for the chat template. Other keys (`name`, `tool_calls`, …) are kept.
pub fn parse_messages(messages: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(items) = messages else {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must be a list of message objects",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(obj) = m else {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}]"),
                    format!("messages[{i}] must be an object with 'role' and 'content'"),
                ));
            };
            let role = match obj.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
                Some(Value::String(r)) => {
                    let shown: String = r.chars().take(32).filter(|c| !c.is_control()).collect();
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!(
                            "messages[{i}].role '{shown}' is not one of {}",
                            ROLES.join(", ")
                        ),
                    ));
                }
                _ => {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!("messages[{i}].role must be a string"),
                    ))
                }
            };
            let param = format!("messages[{i}].content");
            let content = match obj.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => text_parts(parts, &param)?,
                None | Some(Value::Null) if role == "assistant" => String::new(),
                _ => {
                    return Err(ApiError::invalid_param(
                        &param,
                        format!("{param} must be a string or a list of text parts"),
                    ))
                }
            };
            let mut out = obj.clone();
            out.insert("role".into(), Value::String(role));
            out.insert("content".into(), Value::String(content));
            Ok(Value::Object(out))
        })
        .collect()
}

fn text_parts(parts: &[Value], param: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match (p.get("type").and_then(Value::as_str), p.get("text")) {
            (Some("text"), Some(Value::String(t))) => {
                // Parts are joined with a newline, as vLLM renders them for the templates.
                if j > 0 {
                    text.push('\n');
                }
                text.push_str(t);
            }
            (Some(other), _) if other != "text" => {
                let shown: String = other.chars().take(32).filter(|c| !c.is_control()).collect();
                return Err(ApiError::invalid_param(
                    param,
                    format!("{param}[{j}] has type '{shown}'; this model accepts only text parts"),
                ));
            }
            _ => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("{param}[{j}] must be {{\"type\": \"text\", \"text\": \"…\"}}"),
                ))
            }
        }
    }
    Ok(text)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `null` when the answer is only tool calls (as OpenAI sends it).
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// A reasoning model's thinking, apart from its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_checked_and_flattened() {
        let ok = parse_messages(&json!([
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": []}
        ]))
        .unwrap();
        assert_eq!(ok[1]["content"], "a\nb");
        assert_eq!(ok[2]["content"], "");
        assert!(ok[2].get("tool_calls").is_some());
        let param = |v: Value| parse_messages(&v).unwrap_err().param;
        assert_eq!(param(json!([])), Some("messages".into()));
        assert_eq!(param(json!("hi")), Some("messages".into()));
        assert_eq!(
            param(json!([{"role": "wizard", "content": "x"}])),
            Some("messages[0].role".into())
        );
        assert_eq!(
            param(json!([{"role": "user", "content": "x"}, {"role": "user", "content": 3}])),
            Some("messages[1].content".into())
        );
        assert_eq!(
            param(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])),
            Some("messages[0].content".into())
        );
        assert_eq!(
            param(json!([{"role": "user"}])),
            Some("messages[0].content".into())
        );
    }
}
