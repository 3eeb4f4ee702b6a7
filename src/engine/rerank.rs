//! Rerank engine routes: `POST /v1/rerank` (Jina / Cohere v1), `POST /v2/rerank` (Cohere
//! v2), `POST /rerank` (TEI shape when the body has `texts`, else v1), `POST /v1/score`
//! and `/score` (vLLM), plus the shared `/tokenize` and `/detokenize`.
//!
//! Every shape is validated into a `PairTask` (api::types::rerank), scored here and shaped
//! back. A cross-encoder tokenizes each (query, document) pair with the model's pair
//! template (only the document is truncated) and queues one `Job::Score` per pair; the
//! answer is the sigmoid of the logit, or the logit with `raw_scores`. An embedding model
//! configured as `rerank` runs in bi-encoder mode: the query and the documents are
//! embedded in one queued request and the score is their cosine similarity (the sigmoid
//! does not apply, so `raw_scores` changes nothing). Batching, the queue bound (429) and
//! dropping the work of clients that went away are the queue's (`encoder_queue`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::backend::EncoderBackend;
use super::embed::{self, blocking_unless_small, input_error, EncoderState};
use super::encoder_queue::{Job, Output};
use crate::api::types::rerank::{
    cosine, from_value, rank, sigmoid, DocumentText, PairTask, RerankMeta, RerankRequest,
    RerankResponse, RerankResult, RerankUsage, RerankV2Response, ScoreData, ScoreRequest,
    ScoreResponse, ScoreUsage, TeiRank, TeiRerankRequest,
};
use crate::api::{ApiError, ApiJson};
use crate::metrics::reason;

/// Routes of a rerank engine.
pub fn routes(state: EncoderState) -> Router {
    Router::new()
        .route("/v1/rerank", post(rerank_v1))
        .route("/v2/rerank", post(rerank_v2))
        .route("/rerank", post(rerank_any))
        .route("/v1/score", post(score))
        .route("/score", post(score))
        .with_state(state.clone())
        .merge(embed::token_routes(state))
}

/// How scores are computed.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Raw logits instead of sigmoid scores (cross-encoders).
    pub raw: bool,
    /// Truncate documents that do not fit, or reject them.
    pub truncate: bool,
}

/// The scores of a task in pair order, and the tokens they took.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<f64>,
    pub prompt_tokens: usize,
}

/// Scores every pair of `task` with the loaded model (cross-encoder or bi-encoder mode).
pub async fn score_task(
    s: &EncoderState,
    task: PairTask,
    opts: ScoreOptions,
) -> Result<Scored, ApiError> {
    let rt = s.runtime()?;
    let meta = rt.backend.meta();
    let backend = rt.backend.clone();
    let scored = if meta.cross_encoder {
        cross_encoder(s, backend, task, opts, meta.max_len).await?
    } else {
        bi_encoder(s, backend, task, opts).await?
    };
    s.common
        .metrics
        .prompt_tokens
        .with_label_values(&[&s.common.id, s.common.kind.as_str()])
        .inc_by(scored.prompt_tokens as u64);
    Ok(scored)
}

/// Prefixes an input error with the position of the offending text.
fn at(mut e: ApiError, param: &str, index: Option<usize>) -> ApiError {
    let place = match index {
        Some(i) => format!("{param}[{i}]"),
        None => param.to_string(),
    };
    e.message = format!("{place}: {}", e.message);
    e
}

async fn cross_encoder(
    s: &EncoderState,
    backend: Arc<dyn EncoderBackend>,
    task: PairTask,
    opts: ScoreOptions,
    max_len: usize,
) -> Result<Scored, ApiError> {
    let (jobs, prompt_tokens) = blocking_unless_small(task.text_bytes(), move || {
        let mut jobs = Vec::with_capacity(task.pairs.len());
        let mut tokens = 0;
        let many = task.seconds.len() > 1;
        // Each query is tokenised once, not once per document (a long query times a
        // thousand documents would otherwise pin a core).
        let many_firsts = task.firsts.len() > 1;
        let prepared = task
            .firsts
            .iter()
            .enumerate()
            .map(|(i, q)| {
                backend.prepare_query(q).map_err(|e| {
                    let p = task.first_param;
                    at(input_error(p, e), p, many_firsts.then_some(i))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for &(a, b) in &task.pairs {
            let param = task.second_param;
            let pair = backend
                .encode_prepared_pair(&prepared[a], &task.seconds[b])
                .map_err(|e| at(input_error(param, e), param, many.then_some(b)))?;
            // A pair that fills the whole window may have lost document tokens.
            if !opts.truncate && pair.ids.len() >= max_len {
                return Err(at(
                    ApiError::invalid_param(
                        param,
                        format!(
                            "the pair reaches the model's maximum of {max_len} tokens (set truncate to true to cut the document)"
                        ),
                    ),
                    param,
                    many.then_some(b),
                ));
            }
            tokens += pair.ids.len();
            jobs.push(Job::Score(pair));
        }
        Ok((jobs, tokens))
    })
    .await
    .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let outputs = s.run_jobs(jobs).await?;
    let scores = outputs
        .into_iter()
        .map(|o| match o {
            Output::Score(logit) if opts.raw => Ok(f64::from(logit)),
            Output::Score(logit) => Ok(sigmoid(f64::from(logit))),
            Output::Vector(_) | Output::Tokens(_) => Err(ApiError::internal(
                "The model returned the wrong kind of output",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Scored {
        scores,
        prompt_tokens,
    })
}

async fn bi_encoder(
    s: &EncoderState,
    backend: Arc<dyn EncoderBackend>,
    task: PairTask,
    opts: ScoreOptions,
) -> Result<Scored, ApiError> {
    let firsts = task.firsts.len();
    let pairs = task.pairs.clone();
    let (jobs, prompt_tokens) = blocking_unless_small(task.text_bytes(), move || {
        let mut jobs = Vec::with_capacity(task.firsts.len() + task.seconds.len());
        let mut tokens = 0;
        for (texts, param) in [
            (&task.firsts, task.first_param),
            (&task.seconds, task.second_param),
        ] {
            let many = texts.len() > 1;
            for (i, t) in texts.iter().enumerate() {
                let ids = backend
                    .encode_text(t, opts.truncate)
                    .map_err(|e| at(input_error(param, e), param, many.then_some(i)))?;
                tokens += ids.len();
                jobs.push(Job::Embed(ids));
            }
        }
        Ok((jobs, tokens))
    })
    .await
    .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let vectors = s
        .run_jobs(jobs)
        .await?
        .into_iter()
        .map(|o| match o {
            Output::Vector(v) => Ok(v),
            Output::Score(_) | Output::Tokens(_) => Err(ApiError::internal(
                "The model returned the wrong kind of output",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let scores = pairs
        .iter()
        .map(|&(a, b)| cosine(&vectors[a], &vectors[firsts + b]))
        .collect();
    Ok(Scored {
        scores,
        prompt_tokens,
    })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Validates, scores and ranks a v1/v2 request; the results and the tokens used.
async fn ranked(
    s: &EncoderState,
    req: &RerankRequest,
) -> Result<(Vec<RerankResult>, usize), ApiError> {
    s.common.check_model(req.model.as_deref())?;
    s.common.ignored(&req.other);
    let (task, top_n) = req
        .task()
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let docs = req
        .return_documents
        .unwrap_or(false)
        .then(|| task.seconds.clone());
    let opts = ScoreOptions {
        raw: req.raw_scores,
        truncate: req.truncate,
    };
    let scored = score_task(s, task, opts).await?;
    let results = rank(&scored.scores, top_n)
        .into_iter()
        .map(|i| RerankResult {
            index: i,
            relevance_score: scored.scores[i],
            document: docs.as_ref().map(|d| DocumentText { text: d[i].clone() }),
        })
        .collect();
    Ok((results, scored.prompt_tokens))
}

async fn rerank_v1(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<RerankRequest>,
) -> Result<Json<RerankResponse>, ApiError> {
    v1_response(&s, req).await.map(Json)
}

async fn v1_response(s: &EncoderState, req: RerankRequest) -> Result<RerankResponse, ApiError> {
    let (results, tokens) = ranked(s, &req).await?;
    Ok(RerankResponse {
        id: new_id("rerank"),
        model: req.model.unwrap_or_else(|| s.common.id.to_string()),
        usage: RerankUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
        results,
    })
}

async fn rerank_v2(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<RerankRequest>,
) -> Result<Json<RerankV2Response>, ApiError> {
    let (results, _) = ranked(&s, &req).await?;
    let documents = req
        .documents
        .as_ref()
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok(Json(RerankV2Response {
        id: new_id("rerank"),
        results,
        meta: RerankMeta::v2(documents),
    }))
}

/// `/rerank`: the TEI shape when the body has `texts`, else the v1 shape.
async fn rerank_any(
    State(s): State<EncoderState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if body.get("texts").is_none() {
        let req: RerankRequest = from_value(body)?;
        return Ok(Json(v1_response(&s, req).await?).into_response());
    }
    let req: TeiRerankRequest = from_value(body)?;
    s.common.check_model(req.model.as_deref())?;
    s.common.ignored(&req.other);
    let task = req
        .task()
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let texts = req.return_text.then(|| task.seconds.clone());
    let opts = ScoreOptions {
        raw: req.raw_scores,
        truncate: req.truncate,
    };
    let scored = score_task(&s, task, opts).await?;
    let out: Vec<TeiRank> = rank(&scored.scores, None)
        .into_iter()
        .map(|i| TeiRank {
            index: i,
            score: scored.scores[i],
            text: texts.as_ref().map(|t| t[i].clone()),
        })
        .collect();
    Ok(Json(out).into_response())
}

async fn score(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<ScoreRequest>,
) -> Result<Json<ScoreResponse>, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    s.common.ignored(&req.other);
    let task = req
        .task()
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let opts = ScoreOptions {
        raw: req.raw_scores,
        truncate: req.truncate,
    };
    let scored = score_task(&s, task, opts).await?;
    Ok(Json(ScoreResponse {
        id: new_id("score"),
        object: "list".into(),
        created: now_secs(),
        model: req.model.unwrap_or_else(|| s.common.id.to_string()),
        data: scored
            .scores
            .into_iter()
            .enumerate()
            .map(|(index, score)| ScoreData {
                index,
                object: "score".into(),
                score,
            })
            .collect(),
        usage: ScoreUsage {
            prompt_tokens: scored.prompt_tokens,
            total_tokens: scored.prompt_tokens,
            completion_tokens: 0,
        },
    }))
}

#[cfg(test)]
mod tests;
