//! `POST /v1/embeddings`, and the input shapes, limits and vector helpers every embedding
//! API shares (`cohere` and `tei` build on them; `quantize` holds Cohere's compressed types).

use serde::{Deserialize, Serialize};

use crate::api::ApiError;

/// Most inputs one request may carry.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids, or an array of such arrays.
    pub input: serde_json::Value,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub encoding_format: EncodingFormat,
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Truncate inputs longer than the model's maximum (default) or reject them.
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Every other top-level field (counted as ignored).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// What a request asks for an input longer than the model takes (each API spells it its
/// own way: `truncate: bool`, Cohere's `NONE|START|END`, TEI's `truncation_direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the request (400 naming the input).
    Refuse,
    /// Keep the start of the input.
    #[default]
    CutEnd,
    /// Keep the end of the input.
    CutStart,
}

impl Overflow {
    /// `truncate: true` cuts the end, `false` refuses.
    pub fn from_bool(truncate: bool) -> Overflow {
        if truncate {
            Overflow::CutEnd
        } else {
            Overflow::Refuse
        }
    }
}

/// One input after shape validation.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Checks `dimensions` against the model's hidden size (1..=hidden).
pub fn check_dimensions(dimensions: Option<usize>, hidden_size: usize) -> Result<(), ApiError> {
    match dimensions {
        Some(d) if d == 0 || d > hidden_size => Err(ApiError::invalid_param(
            "dimensions",
            format!("'dimensions' must be between 1 and {hidden_size}"),
        )),
        _ => Ok(()),
    }
}

/// Validates the shape of `input` and splits it into inputs, checking the count before
/// looking at (or tokenising) any element.
pub fn parse_inputs(input: &serde_json::Value) -> Result<Vec<EmbeddingInput>, ApiError> {
    parse_inputs_named(input, "input")
}

/// [`parse_inputs`] for a field of another name (TEI's `inputs`), which errors name.
pub fn parse_inputs_named(
    input: &serde_json::Value,
    param: &str,
) -> Result<Vec<EmbeddingInput>, ApiError> {
    use serde_json::Value;
    let bad = |msg: String| ApiError::invalid_param(param, msg);
    match input {
        Value::String(s) => Ok(vec![EmbeddingInput::Text(s.clone())]),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad(format!("'{param}' must not be an empty list")));
            }
            if items.iter().all(Value::is_number) {
                return Ok(vec![EmbeddingInput::Tokens(token_ids(
                    items, param, param,
                )?)]);
            }
            if items.len() > MAX_INPUTS {
                return Err(bad(format!(
                    "'{param}' has {} items; at most {MAX_INPUTS} are allowed per request",
                    items.len()
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(EmbeddingInput::Text(s.clone())),
                    Value::Array(ids) if !ids.is_empty() => Ok(EmbeddingInput::Tokens(token_ids(
                        ids,
                        &format!("{param}[{i}]"),
                        param,
                    )?)),
                    Value::Array(_) => Err(bad(format!("'{param}[{i}]' is an empty token list"))),
                    _ => Err(bad(format!(
                        "'{param}[{i}]' must be a string or an array of token ids"
                    ))),
                })
                .collect()
        }
        Value::Null => Err(bad(format!("'{param}' is required"))),
        _ => Err(bad(format!(
            "'{param}' must be a string, an array of strings or an array of token ids"
        ))),
    }
}

fn token_ids(items: &[serde_json::Value], at: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        param,
                        format!("'{at}' must hold non-negative integer token ids"),
                    )
                })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingData {
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

/// A vector as floats or as base64 of little-endian f32 bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Truncates to `dims` (when given) and renormalises to unit length.
pub fn apply_dimensions(mut v: Vec<f32>, dims: Option<usize>) -> Vec<f32> {
    if let Some(d) = dims {
        if d < v.len() {
            v.truncate(d);
            normalize(&mut v);
        }
    }
    v
}

/// Base64 of the vector's little-endian f32 bytes (OpenAI's and Cohere's `base64`).
pub fn f32_base64(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Encodes a vector in the requested format.
pub fn encode_vector(v: Vec<f32>, format: EncodingFormat) -> EmbeddingVector {
    match format {
        EncodingFormat::Float => EmbeddingVector::Float(v),
        EncodingFormat::Base64 => EmbeddingVector::Base64(f32_base64(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_shapes() {
        assert_eq!(
            parse_inputs(&json!("a")).unwrap(),
            vec![EmbeddingInput::Text("a".into())]
        );
        assert_eq!(
            parse_inputs(&json!([1, 2])).unwrap(),
            vec![EmbeddingInput::Tokens(vec![1, 2])]
        );
        assert_eq!(parse_inputs(&json!([[1], "b"])).unwrap().len(), 2);
        assert!(parse_inputs(&json!([])).is_err());
        assert!(parse_inputs(&json!([-1])).is_err());
        assert!(parse_inputs(&json!([null])).is_err());
        assert!(parse_inputs(&json!({"a": 1})).is_err());
        let many: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let err = parse_inputs(&json!(many)).unwrap_err();
        assert!(err.message.contains("2048"), "{}", err.message);
        // Under another name, every message and param says that name.
        for bad in [
            json!([]),
            json!([[1, -2]]),
            json!([null]),
            json!(3),
            json!(null),
        ] {
            let err = parse_inputs_named(&bad, "inputs").unwrap_err();
            assert_eq!(err.param.as_deref(), Some("inputs"), "{bad}");
            assert!(err.message.contains("'inputs"), "{}", err.message);
        }
    }

    #[test]
    fn dimensions_renormalise() {
        let v = apply_dimensions(vec![3.0, 4.0, 12.0], Some(2));
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(apply_dimensions(vec![1.0, 0.0], None), vec![1.0, 0.0]);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        use base64::Engine;
        let EmbeddingVector::Base64(s) = encode_vector(vec![1.0, -2.5], EncodingFormat::Base64)
        else {
            panic!("expected base64");
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), -2.5);
    }
}
