//! Embedding engine routes: `POST /v1/embeddings` (OpenAI), `POST /v1/embed` and
//! `POST /v2/embed` (Cohere, in `cohere`), `POST /embed`, `POST /embed_all` and `GET /info`
//! (text-embeddings-inference, in `tei`), plus `POST /tokenize` and `POST /detokenize`.
//!
//! Every embedding API validates its own shape into an [`EmbedTask`] (count limits before
//! any tokenisation) and runs it through one core, [`embed_task`]: the token-id policy →
//! tokenize on a blocking thread → queue one job per input (bounded, all-or-nothing) →
//! await the model thread's answers; each API then shapes its own response. Dropping the
//! handler (client gone) drops the receivers, so queued jobs are skipped before they reach
//! the model.

mod cohere;
mod tei;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::backend::{EncoderBackend, Truncate};
use super::common::EngineCommon;
use super::encoder_queue::{EncoderQueue, Job, Output, PushError};
use crate::api::types::embeddings::{
    apply_dimensions, check_dimensions, encode_vector, normalize, parse_inputs, EmbeddingData,
    EmbeddingInput, EmbeddingRequest, EmbeddingResponse, Overflow, Usage,
};
use crate::api::types::tokenize::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};
use crate::api::{ApiError, ApiJson};
use crate::config::TokenIds;
use crate::metrics::reason;
use crate::models::ModelError;

/// The loaded model and its queue (set once loading finished).
pub struct EncoderRuntime {
    pub backend: Arc<dyn EncoderBackend>,
    pub queue: EncoderQueue,
}

/// Padded tokens per encoder batch unless the entry sets `max_batch_tokens`.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16_384;
/// Inputs per encoder batch.
pub const MAX_BATCH_SIZE: usize = 64;
/// Inputs waiting in the encoder queue unless the entry sets `max_queue`.
pub const DEFAULT_MAX_QUEUE: usize = 8192;

/// What the embedding routes take from the model's entry in `models.json`.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// How token-id inputs are read (`token_ids`).
    pub token_ids: TokenIds,
    /// The entry's display `name` (TEI's `model_id`).
    pub name: Option<String>,
    /// The queue's limits, as `/info` reports them.
    pub max_batch_tokens: usize,
    pub max_queue: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            token_ids: TokenIds::default(),
            name: None,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            max_queue: DEFAULT_MAX_QUEUE,
        }
    }
}

impl EmbedOptions {
    pub fn of(entry: &crate::config::ModelEntry) -> EmbedOptions {
        EmbedOptions {
            token_ids: entry.token_ids,
            name: entry.name.clone(),
            max_batch_tokens: entry.max_batch_tokens.unwrap_or(DEFAULT_MAX_BATCH_TOKENS),
            max_queue: entry.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
        }
    }
}

/// State of the encoder routes.
#[derive(Clone)]
pub struct EncoderState {
    pub common: EngineCommon<EncoderRuntime>,
    pub options: Arc<EmbedOptions>,
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

/// Work on at most this many bytes of text (a search query, a short document) runs on the
/// async worker itself: tokenising it takes microseconds, less than the two thread
/// hand-offs of [`blocking`] (which measured tens of microseconds each on a busy 2-core
/// machine, a visible share of a single short query's latency).
pub const INLINE_TEXT_BYTES: usize = 1024;

/// [`blocking`], except that work on at most [`INLINE_TEXT_BYTES`] of text runs in place.
pub async fn blocking_unless_small<T: Send + 'static>(
    text_bytes: usize,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if text_bytes <= INLINE_TEXT_BYTES {
        return f();
    }
    blocking(f).await
}

/// Concurrent tokenisation jobs per engine: two per core.
pub fn tokenize_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// Routes of an embedding engine.
pub fn routes(state: EncoderState) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/embed", post(cohere::embed_v1))
        .route("/v2/embed", post(cohere::embed_v2))
        .route("/embed", post(tei::embed))
        .route("/embed_all", post(tei::embed_all))
        .route("/info", get(tei::info))
        .with_state(state.clone())
        .merge(token_routes(state))
}

/// What the core returns for each input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedOutput {
    /// One pooled vector: normalised as the model's configuration says (`None`), always
    /// (`Some(true)`) or never (`Some(false)`).
    Vector { normalize: Option<bool> },
    /// Every token's last hidden state.
    Tokens,
}

/// One embedding request after its API's validation.
#[derive(Debug, Clone)]
pub struct EmbedTask {
    pub inputs: Vec<EmbeddingInput>,
    /// Names the inputs in errors (`input`, `texts`, `inputs`).
    pub param: &'static str,
    pub overflow: Overflow,
    /// At most this many tokens per input (at most the model's maximum).
    pub max_tokens: Option<usize>,
    pub output: EmbedOutput,
}

impl EmbedTask {
    /// The size of the inputs (a token id counts as four bytes).
    pub fn text_bytes(&self) -> usize {
        self.inputs
            .iter()
            .map(|i| match i {
                EmbeddingInput::Text(t) => t.len(),
                EmbeddingInput::Tokens(ids) => 4 * ids.len(),
            })
            .sum()
    }
}

/// The model's answers, in input order, and the tokens they took.
#[derive(Debug)]
pub struct Embedded {
    pub outputs: Vec<Output>,
    pub prompt_tokens: usize,
}

impl Embedded {
    /// The pooled vectors (of an [`EmbedOutput::Vector`] task).
    pub fn vectors(self) -> Result<Vec<Vec<f32>>, ApiError> {
        self.outputs
            .into_iter()
            .map(|o| match o {
                Output::Vector(v) => Ok(v),
                _ => Err(wrong_output()),
            })
            .collect()
    }

    /// The token states (of an [`EmbedOutput::Tokens`] task).
    pub fn token_states(self) -> Result<Vec<Vec<Vec<f32>>>, ApiError> {
        self.outputs
            .into_iter()
            .map(|o| match o {
                Output::Tokens(t) => Ok(t),
                _ => Err(wrong_output()),
            })
            .collect()
    }
}

fn wrong_output() -> ApiError {
    ApiError::internal("The model returned the wrong kind of output")
}

/// The one embedding pipeline behind every embedding API: refuses token ids unless the
/// model accepts them, tokenizes, queues and waits, and counts the prompt tokens.
pub async fn embed_task(s: &EncoderState, task: EmbedTask) -> Result<Embedded, ApiError> {
    check_token_ids(&task.inputs, task.param, s.options.token_ids)
        .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let rt = s.runtime()?;
    let backend = rt.backend.clone();
    let output = task.output;
    let ids: Vec<Vec<u32>> = blocking_unless_small(task.text_bytes(), move || {
        tokenize_inputs(backend.as_ref(), &task)
    })
    .await
    .inspect_err(|_| s.common.reject(reason::INVALID))?;
    let prompt_tokens: usize = ids.iter().map(Vec::len).sum();
    let job = match output {
        EmbedOutput::Vector {
            normalize: Some(false),
        } => Job::EmbedRaw,
        EmbedOutput::Vector { .. } => Job::Embed,
        EmbedOutput::Tokens => Job::Tokens,
    };
    let mut outputs = s.run_jobs(ids.into_iter().map(job).collect()).await?;
    if let EmbedOutput::Vector {
        normalize: Some(true),
    } = output
    {
        for o in &mut outputs {
            if let Output::Vector(v) = o {
                normalize(v);
            }
        }
    }
    s.common
        .metrics
        .prompt_tokens
        .with_label_values(&[&s.common.id, s.common.kind.as_str()])
        .inc_by(prompt_tokens as u64);
    Ok(Embedded {
        outputs,
        prompt_tokens,
    })
}

/// Refuses token-id inputs unless the model's entry says they are in its own vocabulary.
fn check_token_ids(
    inputs: &[EmbeddingInput],
    param: &str,
    policy: TokenIds,
) -> Result<(), ApiError> {
    if policy == TokenIds::ModelVocab {
        return Ok(());
    }
    let Some(i) = inputs
        .iter()
        .position(|x| matches!(x, EmbeddingInput::Tokens(_)))
    else {
        return Ok(());
    };
    let at = if inputs.len() > 1 {
        format!("'{param}[{i}]'")
    } else {
        format!("'{param}'")
    };
    Err(ApiError::invalid_param(
        param,
        format!(
            "{at} is a list of token ids. This model would read them in its own vocabulary, \
             not in tiktoken's cl100k_base that OpenAI clients tokenise with, so the vectors \
             would be wrong. Send the text as strings instead (LangChain: \
             OpenAIEmbeddings(..., check_embedding_ctx_length=False)). If the ids come from \
             this model's own tokenizer (POST /tokenize), the operator can accept them with \
             \"token_ids\": \"model_vocab\" in the model's models.json entry."
        ),
    )
    .with_code("token_ids_not_accepted"))
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
    s.common.ignored(&req.other);
    let inputs = parse_inputs(&req.input).inspect_err(|_| s.common.reject(reason::INVALID))?;
    let hidden = s.runtime()?.backend.meta().hidden_size;
    check_dimensions(req.dimensions, hidden).inspect_err(|_| s.common.reject(reason::INVALID))?;
    let task = EmbedTask {
        inputs,
        param: "input",
        overflow: Overflow::from_bool(req.truncate),
        max_tokens: None,
        output: EmbedOutput::Vector { normalize: None },
    };
    let done = embed_task(&s, task).await?;
    let prompt_tokens = done.prompt_tokens;
    let data = done
        .vectors()?
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding".into(),
            index,
            embedding: encode_vector(apply_dimensions(v, req.dimensions), req.encoding_format),
        })
        .collect();
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

/// The model-side cut for what a request asked.
fn truncate_of(overflow: Overflow) -> Truncate {
    match overflow {
        Overflow::Refuse => Truncate::Refuse,
        Overflow::CutEnd => Truncate::End,
        Overflow::CutStart => Truncate::Start,
    }
}

/// Tokenizes every input of a task. Token-id inputs (allowed by the policy) are taken as
/// complete sequences (specials included), checked against the vocabulary and cut to the
/// limit like text.
fn tokenize_inputs(
    backend: &dyn EncoderBackend,
    task: &EmbedTask,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let max_len = backend.meta().max_len;
    let limit = task.max_tokens.map_or(max_len, |m| m.min(max_len));
    let vocab = backend.vocab_size();
    let param = task.param;
    let many = task.inputs.len() > 1;
    let at = |i: usize| {
        if many {
            format!("{param}[{i}]")
        } else {
            param.to_string()
        }
    };
    task.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| match input {
            EmbeddingInput::Text(t) => backend
                .encode_text_fit(t, truncate_of(task.overflow), task.max_tokens)
                .map_err(|e| {
                    let mut err = input_error(param, e);
                    err.message = format!("{}: {}", at(i), err.message);
                    err
                }),
            EmbeddingInput::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid_param(
                        param,
                        format!(
                            "{}: token id {bad} is outside the vocabulary (size {vocab})",
                            at(i)
                        ),
                    ));
                }
                if ids.len() <= limit {
                    return Ok(ids.clone());
                }
                match task.overflow {
                    Overflow::Refuse => Err(ApiError::invalid_param(
                        param,
                        format!(
                            "{} has {} tokens; the limit is {limit} (allow truncation to cut it)",
                            at(i),
                            ids.len(),
                        ),
                    )),
                    Overflow::CutEnd => Ok(ids[..limit].to_vec()),
                    Overflow::CutStart => Ok(ids[ids.len() - limit..].to_vec()),
                }
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

#[cfg(test)]
mod tests;
