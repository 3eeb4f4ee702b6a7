//! Embedding engine routes: `POST /v1/embeddings`, `POST /tokenize`, `POST /detokenize`.
//!
//! Flow: validate the request shape (count limits before any tokenisation) → tokenize on a
//! blocking thread → queue one job per input (bounded, all-or-nothing) → await the model
//! thread's answers → shape the OpenAI response. Dropping the handler (client gone) drops
//! the receivers, so queued jobs are skipped before they reach the model.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::backend::EncoderBackend;
use super::common::EngineCommon;
use super::encoder_queue::{EncoderQueue, Job, Output, PushError};
use crate::api::types::embeddings::{
    apply_dimensions, check_dimensions, encode_vector, parse_inputs, EmbeddingData, EmbeddingInput,
    EmbeddingRequest, EmbeddingResponse, Usage,
};
use crate::api::types::tokenize::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};
use crate::api::{ApiError, ApiJson};
use crate::metrics::reason;
use crate::models::ModelError;

/// The loaded model and its queue (set once loading finished).
pub struct EncoderRuntime {
    pub backend: Arc<dyn EncoderBackend>,
    pub queue: EncoderQueue,
}

/// State of the encoder routes.
#[derive(Clone)]
pub struct EncoderState {
    pub common: EngineCommon<EncoderRuntime>,
}

impl EncoderState {
    /// The runtime, or 503 unless the model is ready.
    pub fn runtime(&self) -> Result<Arc<EncoderRuntime>, ApiError> {
        self.common.runtime()
    }

    /// Runs jobs through the queue and waits for every answer.
    pub async fn run_jobs(&self, jobs: Vec<Job>) -> Result<Vec<Output>, ApiError> {
        let rt = self.runtime()?;
        let receivers = match rt.queue.submit(jobs) {
            Ok(r) => r,
            Err(PushError::Full) => {
                self.common.reject(reason::QUEUE_FULL);
                return Err(ApiError::overloaded(1));
            }
            Err(PushError::Closed) => {
                return Err(ApiError::unavailable("The engine is shutting down"))
            }
        };
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            match rx.await {
                Ok(Ok(o)) => out.push(o),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "model error");
                    return Err(ApiError::internal(
                        "The model failed to process the request",
                    ));
                }
                Err(_) => {
                    return Err(ApiError::unavailable(
                        "The model's engine stopped before answering; try again",
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// Maps a tokenisation/model error on user input to a 400 naming `param`.
pub fn input_error(param: &str, e: ModelError) -> ApiError {
    match e {
        ModelError::Input(msg) | ModelError::Tokenizer(msg) => ApiError::invalid_param(param, msg),
        other => {
            tracing::error!(error = %other, "tokenisation failed");
            ApiError::internal("Tokenisation failed")
        }
    }
}

/// Runs blocking work (tokenisation, templates) off the async workers, at most
/// [`tokenize_permits`] jobs at once per engine: a burst of huge requests queues here
/// instead of filling the blocking pool (512 threads) and starving the model thread of
/// cores. A request whose client leaves while it waits gives its place up.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let permits = PERMITS.get_or_init(|| tokio::sync::Semaphore::new(tokenize_permits()));
    let _permit = permits
        .acquire()
        .await
        .map_err(|_| ApiError::internal("Tokenisation task failed"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("Tokenisation task failed"))?
}

/// Concurrent tokenisation jobs per engine: two per core.
pub fn tokenize_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// Routes of an embedding engine.
pub fn routes(state: EncoderState) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(state.clone())
        .merge(token_routes(state))
}

/// `/tokenize` and `/detokenize`, shared by every encoder engine (rerank included).
pub fn token_routes(state: EncoderState) -> Router {
    Router::new()
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(state)
}

async fn embeddings(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    s.common.check_model(Some(&req.model))?;
    let inputs = parse_inputs(&req.input).inspect_err(|_| s.common.reject(reason::INVALID))?;
    let rt = s.runtime()?;
    let meta = rt.backend.meta();
    check_dimensions(req.dimensions, meta.hidden_size)
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let backend = rt.backend.clone();
    let truncate = req.truncate;
    let ids: Vec<Vec<u32>> = blocking(move || tokenize_inputs(backend.as_ref(), inputs, truncate))
        .await
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    let outputs = s
        .run_jobs(ids.into_iter().map(Job::Embed).collect())
        .await?;
    s.common
        .metrics
        .prompt_tokens
        .with_label_values(&[&s.common.id, s.common.kind.as_str()])
        .inc_by(prompt_tokens as u64);
    let data = outputs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let Output::Vector(v) = o else {
                return Err(ApiError::internal(
                    "The model returned the wrong kind of output",
                ));
            };
            Ok(EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: encode_vector(apply_dimensions(v, req.dimensions), req.encoding_format),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

/// Tokenizes every input; token-id inputs are taken as complete sequences (specials
/// included) and checked against the vocabulary and the length limit.
fn tokenize_inputs(
    backend: &dyn EncoderBackend,
    inputs: Vec<EmbeddingInput>,
    truncate: bool,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let meta = backend.meta();
    let vocab = backend.vocab_size();
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| match input {
            EmbeddingInput::Text(t) => backend.encode_text(&t, truncate).map_err(|e| {
                let mut err = input_error("input", e);
                err.message = format!("input[{i}]: {}", err.message);
                err
            }),
            EmbeddingInput::Tokens(mut ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid_param(
                        "input",
                        format!("input[{i}]: token id {bad} is outside the vocabulary (size {vocab})"),
                    ));
                }
                if ids.len() > meta.max_len {
                    if !truncate {
                        return Err(ApiError::invalid_param(
                            "input",
                            format!(
                                "input[{i}] has {} tokens; the model accepts at most {} (set truncate to true to cut it)",
                                ids.len(),
                                meta.max_len
                            ),
                        ));
                    }
                    ids.truncate(meta.max_len);
                }
                Ok(ids)
            }
        })
        .collect()
}

async fn tokenize(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    let Some(prompt) = req.prompt else {
        return Err(ApiError::invalid_param("prompt", "'prompt' is required"));
    };
    let backend = rt.backend.clone();
    let want_strs = req.return_token_strs;
    let (tokens, strs) = blocking(move || {
        let ids = backend
            .encode_text(&prompt, true)
            .map_err(|e| input_error("prompt", e))?;
        let strs = want_strs.then(|| backend.token_strings(&ids));
        Ok((ids, strs))
    })
    .await?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: rt.backend.meta().max_len,
        tokens,
        token_strs: strs,
    }))
}

async fn detokenize(
    State(s): State<EncoderState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    let vocab = rt.backend.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let backend = rt.backend.clone();
    let prompt = blocking(move || {
        backend
            .decode(&req.tokens)
            .map_err(|e| input_error("tokens", e))
    })
    .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
