//! Rerank and score request/response types: `POST /v1/rerank` (Jina / Cohere v1),
//! `POST /v2/rerank` (Cohere v2), `POST /rerank` (TEI shape when the body has `texts`,
//! else the v1 shape) and `POST /v1/score` (vLLM).
//!
//! Requests are parsed leniently (unknown fields are ignored and counted) and then validated here into
//! a [`PairTask`]: every rejection names its parameter, and the document count is checked
//! before any document is looked at, so a huge list costs nothing to refuse. The engine's
//! `rerank` module turns a task into scores and these types back into JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ApiError;

/// Most documents (or `text_2` entries of a score request) one request may carry.
pub const MAX_DOCUMENTS: usize = 1000;

fn default_true() -> bool {
    true
}

/// `POST /v1/rerank` and `POST /v2/rerank` (and `/rerank` without `texts`).
#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub query: Option<Value>,
    /// Strings or `{"text": …}` objects.
    #[serde(default)]
    pub documents: Option<Value>,
    #[serde(default)]
    pub top_n: Option<i64>,
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// Raw logits instead of sigmoid scores (cross-encoders only).
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub raw_scores: bool,
    /// Truncate documents that do not fit (default) or reject them.
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Cohere v1: which keys of object documents are ranked (default `text`).
    #[serde(default)]
    pub rank_fields: Option<Vec<String>>,
    /// Fields this type does not name: ignored and counted
    /// (`trident_ignored_request_fields_total`).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

/// `POST /rerank` in the text-embeddings-inference shape.
#[derive(Debug, Clone, Deserialize)]
pub struct TeiRerankRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub query: Option<Value>,
    #[serde(default)]
    pub texts: Option<Value>,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub raw_scores: bool,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub return_text: bool,
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Fields this type does not name: ignored and counted
    /// (`trident_ignored_request_fields_total`).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

/// `POST /v1/score` (vLLM): `text_1` against `text_2`, 1:1, 1:N or N:N.
#[derive(Debug, Clone, Deserialize)]
pub struct ScoreRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub text_1: Option<Value>,
    #[serde(default)]
    pub text_2: Option<Value>,
    #[serde(default, deserialize_with = "crate::api::types::null_default")]
    pub raw_scores: bool,
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Fields this type does not name: ignored and counted
    /// (`trident_ignored_request_fields_total`).
    #[serde(flatten)]
    pub other: super::OtherFields,
}

/// Validated work: score `firsts[a]` against `seconds[b]` for every `(a, b)` in `pairs`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTask {
    pub firsts: Vec<String>,
    pub seconds: Vec<String>,
    pub pairs: Vec<(usize, usize)>,
    /// Names the first texts in errors (`query`, `text_1`).
    pub first_param: &'static str,
    /// Names the second texts in errors (`documents`, `texts`, `text_2`).
    pub second_param: &'static str,
}

impl PairTask {
    /// The size of every text of the task.
    pub fn text_bytes(&self) -> usize {
        self.firsts
            .iter()
            .chain(&self.seconds)
            .map(String::len)
            .sum()
    }

    /// One query against every document.
    pub fn one_to_many(
        query: String,
        documents: Vec<String>,
        first_param: &'static str,
        second_param: &'static str,
    ) -> PairTask {
        let pairs = (0..documents.len()).map(|i| (0, i)).collect();
        PairTask {
            firsts: vec![query],
            seconds: documents,
            pairs,
            first_param,
            second_param,
        }
    }
}

/// Checks a query: present, a string, not blank.
pub fn parse_query(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Err(ApiError::invalid_param(
            param,
            format!("'{param}' is required"),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::invalid_param(
            param,
            format!("'{param}' must not be empty"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid_param(
            param,
            format!("'{param}' must be a string"),
        )),
    }
}

/// Checks a document list: present, an array of 1..=[`MAX_DOCUMENTS`] strings (or, when
/// `objects` is set, `{"text": …}` objects). The count is checked first. An empty document
/// is scored like any other (a RAG chunk can be empty), not a reason to refuse the list.
pub fn parse_documents(
    v: Option<&Value>,
    param: &str,
    objects: bool,
) -> Result<Vec<String>, ApiError> {
    let bad = |msg: String| ApiError::invalid_param(param, msg);
    let items = match v {
        None | Some(Value::Null) => return Err(bad(format!("'{param}' is required"))),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad(format!("'{param}' must be an array of strings"))),
    };
    if items.is_empty() {
        return Err(bad(format!("'{param}' must not be an empty list")));
    }
    if items.len() > MAX_DOCUMENTS {
        return Err(bad(format!(
            "'{param}' has {} items; at most {MAX_DOCUMENTS} are allowed per request",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = match item {
                Value::String(s) => Some(s),
                Value::Object(o) if objects => match o.get("text") {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                },
                _ => None,
            };
            match text {
                Some(s) => Ok(s.clone()),
                None if objects => Err(bad(format!(
                    "'{param}[{i}]' must be a string or an object with a string 'text'"
                ))),
                None => Err(bad(format!("'{param}[{i}]' must be a string"))),
            }
        })
        .collect()
}

/// The text ranked for each object document under `rank_fields`: `field: value` lines for
/// the named fields it has (strings, or other JSON written compactly), in the listed order.
fn ranked_fields(v: Option<&Value>, fields: &[String]) -> Result<Vec<String>, ApiError> {
    if fields.is_empty() || fields.len() > 64 {
        return Err(ApiError::invalid_param(
            "rank_fields",
            "'rank_fields' must list between 1 and 64 field names",
        ));
    }
    let items = match v {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_DOCUMENTS => items,
        // Absent, not a list, empty or too long: the plain check names the problem.
        other => return parse_documents(other, "documents", false),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let lines: Vec<String> = match item {
                Value::String(s) => vec![s.clone()],
                Value::Object(o) => fields
                    .iter()
                    .filter_map(|f| {
                        o.get(f).map(|v| match v {
                            Value::String(s) => format!("{f}: {s}"),
                            other => format!("{f}: {other}"),
                        })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            if lines.is_empty() {
                return Err(ApiError::invalid_param(
                    &format!("documents[{i}]"),
                    format!(
                        "'documents[{i}]' has none of the 'rank_fields' ({})",
                        fields.join(", ")
                    ),
                ));
            }
            Ok(lines.join("\n"))
        })
        .collect()
}

/// Checks `top_n`: absent or 0 means all (as vLLM and Jina read it); larger than the list
/// means all; negative is refused.
pub fn parse_top_n(top_n: Option<i64>) -> Result<Option<usize>, ApiError> {
    match top_n {
        None | Some(0) => Ok(None),
        Some(n) if n < 0 => Err(ApiError::invalid_param(
            "top_n",
            "'top_n' must be 0 (all documents) or a positive integer",
        )),
        Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
    }
}

impl RerankRequest {
    /// Validates the request into a task (query × documents) and `top_n`.
    pub fn task(&self) -> Result<(PairTask, Option<usize>), ApiError> {
        let query = parse_query(self.query.as_ref(), "query")?;
        let top_n = parse_top_n(self.top_n)?;
        let docs = match &self.rank_fields {
            None => parse_documents(self.documents.as_ref(), "documents", true)?,
            Some(fields) => ranked_fields(self.documents.as_ref(), fields)?,
        };
        Ok((
            PairTask::one_to_many(query, docs, "query", "documents"),
            top_n,
        ))
    }
}

impl TeiRerankRequest {
    pub fn task(&self) -> Result<PairTask, ApiError> {
        let query = parse_query(self.query.as_ref(), "query")?;
        let texts = parse_documents(self.texts.as_ref(), "texts", false)?;
        Ok(PairTask::one_to_many(query, texts, "query", "texts"))
    }
}

impl ScoreRequest {
    /// `text_1` string or one-element list against a `text_2` string or list (1:N), or two
    /// lists of equal length scored position by position (N:N).
    pub fn task(&self) -> Result<PairTask, ApiError> {
        let firsts = match &self.text_1 {
            Some(Value::Array(_)) => parse_documents(self.text_1.as_ref(), "text_1", false)?,
            other => vec![parse_query(other.as_ref(), "text_1")?],
        };
        let seconds = match &self.text_2 {
            Some(Value::Array(_)) => parse_documents(self.text_2.as_ref(), "text_2", false)?,
            other => vec![parse_query(other.as_ref(), "text_2")?],
        };
        let pairs = if firsts.len() == 1 {
            (0..seconds.len()).map(|i| (0, i)).collect()
        } else if firsts.len() == seconds.len() {
            (0..seconds.len()).map(|i| (i, i)).collect()
        } else {
            return Err(ApiError::invalid_param(
                "text_2",
                format!(
                    "'text_1' has {} items and 'text_2' {}; give one 'text_1' or lists of equal length",
                    firsts.len(),
                    seconds.len()
                ),
            ));
        };
        Ok(PairTask {
            firsts,
            seconds,
            pairs,
            first_param: "text_1",
            second_param: "text_2",
        })
    }
}

/// Turns a JSON value into a request type, naming the offending field on a type error
/// (like `ApiJson`, for bodies that are dispatched on their content first).
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    T::deserialize(de).map_err(|e| {
        let path = track.path().to_string();
        let msg = e.to_string();
        if path.is_empty() || path == "." {
            ApiError::invalid(format!("Invalid request: {msg}"))
        } else {
            ApiError::invalid_param(&path, format!("Invalid value for '{path}': {msg}"))
        }
    })
}

/// Indices of `scores` from best to worst (ties keep input order, NaN ranks last), cut
/// to `top_n`.
pub fn rank(scores: &[f64], top_n: Option<usize>) -> Vec<usize> {
    let key = |i: usize| {
        if scores[i].is_nan() {
            f64::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.truncate(top_n.unwrap_or(usize::MAX));
    order
}

/// The logistic function, mapping a cross-encoder logit into (0, 1).
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// A document echoed back in a rerank result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocumentText {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankResult {
    pub index: usize,
    pub relevance_score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RerankUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The `/v1/rerank` response (Jina / Cohere v1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankResponse {
    pub id: String,
    pub model: String,
    pub usage: RerankUsage,
    pub results: Vec<RerankResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiVersion {
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BilledUnits {
    pub search_units: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankMeta {
    pub api_version: ApiVersion,
    pub billed_units: BilledUnits,
}

impl RerankMeta {
    /// Cohere counts one search unit per query and started hundred documents.
    pub fn v2(documents: usize) -> RerankMeta {
        RerankMeta {
            api_version: ApiVersion {
                version: "2".into(),
            },
            billed_units: BilledUnits {
                search_units: documents.div_ceil(100).max(1) as u64,
            },
        }
    }
}

/// The `/v2/rerank` response (Cohere v2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RerankV2Response {
    pub id: String,
    pub results: Vec<RerankResult>,
    pub meta: RerankMeta,
}

/// One entry of the TEI `/rerank` response (a bare JSON array of these).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeiRank {
    pub index: usize,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreData {
    pub index: usize,
    pub object: String,
    pub score: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScoreUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
}

/// The `/v1/score` response (vLLM).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub data: Vec<ScoreData>,
    pub usage: ScoreUsage,
}

#[cfg(test)]
mod tests;
