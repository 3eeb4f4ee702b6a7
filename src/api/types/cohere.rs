//! Cohere's embed API: `POST /v1/embed` and `POST /v2/embed` request and response types.
//!
//! Requests are parsed leniently (unknown fields such as `priority` are ignored) and then
//! validated here into a [`CohereEmbed`]: every rejection names its parameter, and the
//! text count is checked before any text is looked at. The engine's `embed::cohere`
//! module embeds the texts with the shared embedding core and shapes these responses
//! (the shapes of the `cohere` Python SDK's `EmbedByTypeResponse` and v1 `EmbedResponse`).
//!
//! * `input_type` (`search_document`, `search_query`, `classification`, `clustering`) is
//!   checked and otherwise changes nothing: Cohere's models prepend a type-specific prompt,
//!   the sentence-transformers models trident serves have none (a model that needs a
//!   query prefix gets it from the client, as with `/v1/embeddings`). `image` is refused.
//! * `inputs` (v2) may hold text content only; each input's text parts are joined with
//!   newlines into one text. Images (`images`, `image_url` parts) are refused: no served
//!   model embeds images.
//! * `truncate`: `END` (default) keeps the start, `START` keeps the end, `NONE` refuses a
//!   text longer than the model's maximum (or `max_tokens`).
//! * `output_dimension` truncates and renormalises like OpenAI's `dimensions`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::embeddings::{Overflow, MAX_INPUTS};
use super::quantize;
use super::rerank::ApiVersion;
use crate::api::ApiError;

/// `POST /v1/embed` and `POST /v2/embed`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CohereEmbedRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub texts: Option<Value>,
    /// v2: `[{"content": [{"type": "text", "text": …}]}]`.
    #[serde(default)]
    pub inputs: Option<Value>,
    #[serde(default)]
    pub images: Option<Value>,
    #[serde(default)]
    pub input_type: Option<Value>,
    #[serde(default)]
    pub embedding_types: Option<Value>,
    #[serde(default)]
    pub truncate: Option<Value>,
    #[serde(default)]
    pub output_dimension: Option<Value>,
    #[serde(default)]
    pub max_tokens: Option<Value>,
}

/// One of Cohere's `embedding_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

impl EmbeddingType {
    pub const ALL: [EmbeddingType; 6] = [
        EmbeddingType::Float,
        EmbeddingType::Int8,
        EmbeddingType::Uint8,
        EmbeddingType::Binary,
        EmbeddingType::Ubinary,
        EmbeddingType::Base64,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingType::Float => "float",
            EmbeddingType::Int8 => "int8",
            EmbeddingType::Uint8 => "uint8",
            EmbeddingType::Binary => "binary",
            EmbeddingType::Ubinary => "ubinary",
            EmbeddingType::Base64 => "base64",
        }
    }

    fn parse(s: &str) -> Option<EmbeddingType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// `input_type` values that are accepted (and change nothing for these models).
pub const INPUT_TYPES: [&str; 4] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
];

/// A validated embed request.
#[derive(Debug, Clone, PartialEq)]
pub struct CohereEmbed {
    /// The texts, one embedding each.
    pub texts: Vec<String>,
    /// Names the texts in errors (`texts` or `inputs`).
    pub param: &'static str,
    /// The requested types in request order, without repeats; empty when not given.
    pub types: Vec<EmbeddingType>,
    pub overflow: Overflow,
    pub output_dimension: Option<usize>,
    pub max_tokens: Option<usize>,
}

fn bad(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, msg)
}

/// A positive integer field, or none.
fn positive(v: Option<&Value>, param: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(bad(param, format!("'{param}' must be a positive integer"))),
        },
    }
}

/// A list of strings; the count is checked first.
fn strings(items: &[Value], param: &str) -> Result<Vec<String>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(param, format!("'{param}[{i}]' must be a string"))),
        })
        .collect()
}

/// The text of one v2 `inputs` entry: its text parts joined with newlines.
fn input_text(input: &Value, i: usize) -> Result<String, ApiError> {
    let at = format!("inputs[{i}]");
    let parts = input
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad(
                "inputs",
                format!("'{at}' must be an object with a 'content' list"),
            )
        })?;
    if parts.is_empty() {
        return Err(bad("inputs", format!("'{at}.content' must not be empty")));
    }
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
            (Some("image_url"), _) => {
                return Err(bad(
                    "inputs",
                    format!("'{at}.content[{j}]' is an image; this model embeds text only"),
                ))
            }
            _ => {
                return Err(bad(
                    "inputs",
                    format!(
                        "'{at}.content[{j}]' must be {{\"type\": \"text\", \"text\": <string>}}"
                    ),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

impl CohereEmbedRequest {
    /// Validates the request: `texts` or (v2) `inputs`, and every option.
    pub fn task(&self) -> Result<CohereEmbed, ApiError> {
        if let Some(images) = self.images.as_ref().filter(|v| !v.is_null()) {
            if images.as_array().is_none_or(|a| !a.is_empty()) {
                return Err(bad(
                    "images",
                    "'images' is not supported: this model embeds text only",
                ));
            }
        }
        let given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        let (texts, param) = match (given(&self.texts), given(&self.inputs)) {
            (true, true) => return Err(bad("inputs", "give either 'texts' or 'inputs', not both")),
            (false, false) => return Err(bad("texts", "'texts' is required")),
            (true, false) => {
                let items = self
                    .texts
                    .as_ref()
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("texts", "'texts' must be an array of strings"))?;
                check_count(items.len(), "texts")?;
                (strings(items, "texts")?, "texts")
            }
            (false, true) => {
                let items = self
                    .inputs
                    .as_ref()
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        bad(
                            "inputs",
                            "'inputs' must be an array of {\"content\": [...]} objects",
                        )
                    })?;
                check_count(items.len(), "inputs")?;
                let texts = items
                    .iter()
                    .enumerate()
                    .map(|(i, input)| input_text(input, i))
                    .collect::<Result<Vec<_>, _>>()?;
                (texts, "inputs")
            }
        };
        match self.input_type.as_ref() {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if INPUT_TYPES.contains(&t.as_str()) => {}
            Some(Value::String(t)) if t == "image" => {
                return Err(bad(
                    "input_type",
                    "'input_type' \"image\" is not supported: this model embeds text only",
                ))
            }
            Some(_) => {
                return Err(bad(
                    "input_type",
                    format!("'input_type' must be one of {}", INPUT_TYPES.join(", ")),
                ))
            }
        }
        let overflow = match self.truncate.as_ref() {
            None | Some(Value::Null) => Overflow::CutEnd,
            Some(Value::String(t)) => match t.to_ascii_uppercase().as_str() {
                "END" => Overflow::CutEnd,
                "START" => Overflow::CutStart,
                "NONE" => Overflow::Refuse,
                _ => return Err(bad("truncate", "'truncate' must be NONE, START or END")),
            },
            Some(_) => return Err(bad("truncate", "'truncate' must be NONE, START or END")),
        };
        Ok(CohereEmbed {
            texts,
            param,
            types: parse_types(self.embedding_types.as_ref())?,
            overflow,
            output_dimension: positive(self.output_dimension.as_ref(), "output_dimension")?,
            max_tokens: positive(self.max_tokens.as_ref(), "max_tokens")?,
        })
    }
}

fn check_count(n: usize, param: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(bad(param, format!("'{param}' must not be an empty list")));
    }
    if n > MAX_INPUTS {
        return Err(bad(
            param,
            format!("'{param}' has {n} items; at most {MAX_INPUTS} are allowed per request"),
        ));
    }
    Ok(())
}

/// `embedding_types`: a non-empty list of known names (repeats collapse).
fn parse_types(v: Option<&Value>) -> Result<Vec<EmbeddingType>, ApiError> {
    let known = || {
        EmbeddingType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            return Err(bad(
                "embedding_types",
                format!("'embedding_types' must be a non-empty list of: {}", known()),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let t = item
            .as_str()
            .and_then(EmbeddingType::parse)
            .ok_or_else(|| {
                let shown: String = item.to_string().chars().take(40).collect();
                bad(
                    "embedding_types",
                    format!(
                        "'embedding_types[{i}]' is {shown}; the types are: {}",
                        known()
                    ),
                )
            })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// The `embeddings` object of a by-type answer: one list per requested type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EmbeddingsByType {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float: Option<Vec<Vec<f32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uint8: Option<Vec<Vec<u8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<Vec<Vec<i8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ubinary: Option<Vec<Vec<u8>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<Vec<String>>,
}

impl EmbeddingsByType {
    /// Every requested type computed from the float vectors (see `quantize`).
    pub fn build(vectors: Vec<Vec<f32>>, types: &[EmbeddingType]) -> EmbeddingsByType {
        let each = |f: fn(&[f32]) -> Vec<i8>| vectors.iter().map(|v| f(v)).collect();
        let each_u = |f: fn(&[f32]) -> Vec<u8>| vectors.iter().map(|v| f(v)).collect();
        let mut out = EmbeddingsByType::default();
        for t in types {
            match t {
                EmbeddingType::Float => {}
                EmbeddingType::Int8 => out.int8 = Some(each(quantize::int8)),
                EmbeddingType::Uint8 => out.uint8 = Some(each_u(quantize::uint8)),
                EmbeddingType::Binary => out.binary = Some(each(quantize::binary)),
                EmbeddingType::Ubinary => out.ubinary = Some(each_u(quantize::ubinary)),
                EmbeddingType::Base64 => {
                    out.base64 = Some(vectors.iter().map(|v| quantize::base64(v)).collect())
                }
            }
        }
        if types.contains(&EmbeddingType::Float) {
            out.float = Some(vectors);
        }
        out
    }
}

/// `embeddings`: a plain list (v1 without `embedding_types`) or one list per type.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CohereEmbeddings {
    Floats(Vec<Vec<f32>>),
    ByType(EmbeddingsByType),
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbedBilledUnits {
    pub input_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbedMeta {
    pub api_version: ApiVersion,
    pub billed_units: EmbedBilledUnits,
}

impl EmbedMeta {
    /// `version` is "1" or "2"; tokens are the model's, specials included.
    pub fn new(version: &str, input_tokens: usize) -> EmbedMeta {
        EmbedMeta {
            api_version: ApiVersion {
                version: version.into(),
            },
            billed_units: EmbedBilledUnits { input_tokens },
        }
    }
}

/// The answer of `/v1/embed` and `/v2/embed`.
#[derive(Debug, Clone, Serialize)]
pub struct CohereEmbedResponse {
    pub id: String,
    pub embeddings: CohereEmbeddings,
    pub texts: Vec<String>,
    pub meta: EmbedMeta,
    /// `embeddings_floats` (v1 without `embedding_types`) or `embeddings_by_type`.
    pub response_type: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> CohereEmbedRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_full_request_validates() {
        let t = req(
            json!({"model": "m", "texts": ["a", "b"], "input_type": "search_query",
                           "embedding_types": ["int8", "float", "int8"], "truncate": "START",
                           "output_dimension": 64, "max_tokens": 10, "priority": 3}),
        )
        .task()
        .unwrap();
        assert_eq!(t.texts, vec!["a", "b"]);
        assert_eq!(t.param, "texts");
        assert_eq!(t.types, vec![EmbeddingType::Int8, EmbeddingType::Float]);
        assert_eq!(t.overflow, Overflow::CutStart);
        assert_eq!((t.output_dimension, t.max_tokens), (Some(64), Some(10)));
        let t = req(json!({"texts": ["a"]})).task().unwrap();
        assert_eq!((t.types.len(), t.overflow), (0, Overflow::CutEnd));
        let t = req(json!({"texts": ["a"], "truncate": "NONE", "images": []}))
            .task()
            .unwrap();
        assert_eq!(t.overflow, Overflow::Refuse);
    }

    #[test]
    fn v2_inputs_join_their_text_parts() {
        let t = req(json!({"inputs": [
            {"content": [{"type": "text", "text": "title"}, {"type": "text", "text": "body"}]},
            {"content": [{"type": "text", "text": "x"}]}]}))
        .task()
        .unwrap();
        assert_eq!(
            (t.texts, t.param),
            (vec!["title\nbody".into(), "x".into()], "inputs")
        );
    }

    #[test]
    fn every_bad_value_names_its_parameter() {
        let many: Vec<String> = (0..MAX_INPUTS + 1).map(|i| i.to_string()).collect();
        let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}});
        let cases = [
            (json!({}), "texts"),
            (json!({"texts": []}), "texts"),
            (json!({"texts": "one string"}), "texts"),
            (json!({"texts": ["a", 3]}), "texts"),
            (json!({"texts": many}), "texts"),
            (json!({"texts": ["a"], "inputs": []}), "inputs"),
            (json!({"inputs": [{"content": [image]}]}), "inputs"),
            (json!({"inputs": [{"content": []}]}), "inputs"),
            (json!({"inputs": ["text"]}), "inputs"),
            (
                json!({"texts": ["a"], "images": ["data:image/png;base64,AA"]}),
                "images",
            ),
            (json!({"texts": ["a"], "input_type": "image"}), "input_type"),
            (json!({"texts": ["a"], "input_type": "query"}), "input_type"),
            (
                json!({"texts": ["a"], "embedding_types": ["int4"]}),
                "embedding_types",
            ),
            (
                json!({"texts": ["a"], "embedding_types": []}),
                "embedding_types",
            ),
            (
                json!({"texts": ["a"], "embedding_types": "float"}),
                "embedding_types",
            ),
            (json!({"texts": ["a"], "truncate": "MIDDLE"}), "truncate"),
            (json!({"texts": ["a"], "truncate": true}), "truncate"),
            (
                json!({"texts": ["a"], "output_dimension": 0}),
                "output_dimension",
            ),
            (
                json!({"texts": ["a"], "output_dimension": "64"}),
                "output_dimension",
            ),
            (json!({"texts": ["a"], "max_tokens": -1}), "max_tokens"),
        ];
        for (body, param) in cases {
            let err = req(body.clone()).task().unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let err = req(json!({"texts": ["a"], "embedding_types": ["float", "int4"]}))
            .task()
            .unwrap_err();
        assert!(
            err.message.contains("embedding_types[1]") && err.message.contains("ubinary"),
            "{}",
            err.message
        );
    }

    #[test]
    fn by_type_answers_hold_only_the_requested_types() {
        let v = vec![vec![3.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        let all = EmbeddingsByType::build(v.clone(), &EmbeddingType::ALL);
        let j = serde_json::to_value(&all).unwrap();
        assert_eq!(
            j["float"],
            json!([[3.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
        );
        assert_eq!(j["int8"], json!([[76, -102, 0, 0, 0, 0, 0, 0]]));
        assert_eq!(j["uint8"], json!([[204, 26, 128, 128, 128, 128, 128, 128]]));
        assert_eq!(j["ubinary"], json!([[128]]));
        assert_eq!(j["binary"], json!([[0]]));
        assert!(j["base64"][0].is_string());
        let only = EmbeddingsByType::build(v, &[EmbeddingType::Ubinary]);
        let j = serde_json::to_value(&only).unwrap();
        assert_eq!(j, json!({"ubinary": [[128]]}));
    }
}
