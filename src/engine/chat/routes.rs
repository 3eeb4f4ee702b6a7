//! Chat engine handlers: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /tokenize`, `POST /detokenize`.
//!
//! Flow: check the model name and sampling values → render the template and tokenise on a
//! blocking thread → context-length check (400 before queueing) → submit to the model
//! thread (full → 429) → collect or stream the events.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::mpsc;

use super::constraint::Constraint;
use super::request::{
    check_chars, check_chat, check_completion, check_vocab, completion_budget, encode, json_chars,
    CheckedChat, CheckedCompletion, Generation,
};
use super::runner::SubmitError;
use super::scheduler::{Event, FinishReason, GenRequest};
use super::stream::{collect, sse, sse_tool_answer, ResponseMeta, Shape};
use super::template::TemplateError;
use super::tools;
use super::{ChatRuntime, ChatState};
use crate::api::types::chat::{
    parse_messages, ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage,
};
use crate::api::types::completions::{CompletionChoice, CompletionRequest, CompletionResponse};
use crate::api::types::tokenize::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};
use crate::api::{ApiError, ApiJson};
use crate::engine::embed::blocking;
use crate::metrics::reason;

/// Events buffered per stream between the model thread and the handler.
const EVENT_BUFFER: usize = 256;

/// Routes of a chat engine.
pub fn routes(state: ChatState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// Renders a conversation with the model's template and tokenises it.
fn chat_prompt(
    rt: &ChatRuntime,
    messages: &[serde_json::Value],
    tools: Option<&serde_json::Value>,
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let text = rt
        .template
        .render(messages, tools, add_generation_prompt)
        .map_err(|e| match e {
            TemplateError::Render(msg) => ApiError::invalid_param("messages", msg),
            TemplateError::Invalid(msg) => {
                tracing::error!(error = %msg, "chat template");
                ApiError::internal("The model's chat template failed")
            }
        })?;
    encode(&rt.tokenizer, &rt.info, &text, true, rt.max_model_len)
}

impl ChatState {
    /// Queues a checked prompt and returns its event receiver.
    fn submit(
        &self,
        rt: &ChatRuntime,
        prompt: Vec<u32>,
        gen: Generation,
        constraint: Option<Constraint>,
        param: &str,
    ) -> Result<mpsc::Receiver<Event>, ApiError> {
        let max_tokens = completion_budget(prompt.len(), gen.max_tokens, rt.max_model_len, param)
            .inspect_err(|_| self.common.reject(reason::TOO_LONG))?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let req = GenRequest {
            prompt,
            params: gen.params,
            stop: gen.stop,
            max_tokens,
            ignore_eos: gen.ignore_eos,
            events: tx,
            enqueued: Instant::now(),
            constraint,
        };
        match rt.queue.submit(req) {
            Ok(()) => Ok(rx),
            Err(SubmitError::Full) => {
                self.common.reject(reason::QUEUE_FULL);
                Err(ApiError::overloaded(1))
            }
            Err(SubmitError::Closed) => Err(ApiError::unavailable("The engine is shutting down")),
        }
    }

    fn invalid<T>(&self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        r.inspect_err(|_| self.common.reject(reason::INVALID))
    }
}

async fn chat_completions(
    State(s): State<ChatState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    // Nothing is rendered or tokenised for a conversation that cannot fit.
    check_chars(
        json_chars(&req.messages) + req.tools.as_ref().map_or(0, json_chars),
        rt.max_model_len,
        "messages",
    )
    .inspect_err(|_| s.common.reject(reason::TOO_LONG))?;
    let CheckedChat {
        messages,
        gen,
        tools: tool_spec,
        spec,
    } = s.invalid(check_chat(&req))?;
    s.invalid(check_vocab(&gen, rt.info.vocab_size))?;
    // With tool_choice "none" the template still sees the tools (as OpenAI documents).
    let tools = req.tools.clone();
    let add_gen = req.add_generation_prompt.unwrap_or(true);
    let (prompt, constraint) = {
        let rt = rt.clone();
        s.invalid(
            blocking(move || {
                let prompt = chat_prompt(&rt, &messages, tools.as_ref(), add_gen)?;
                let c = spec.map(|(sp, p)| rt.constraint(&sp, p)).transpose()?;
                Ok((prompt, c))
            })
            .await,
        )?
    };
    let logprobs = gen.params.logprobs.is_some();
    let rx = s.submit(&rt, prompt, gen, constraint, "messages")?;
    let meta = ResponseMeta {
        id: response_id("chatcmpl"),
        created: now_secs(),
        model: req.model.clone().unwrap_or_else(|| s.common.id.to_string()),
        shape: Shape::Chat,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs,
    };
    if req.stream {
        return Ok(match tool_spec {
            None => sse(rx, meta).into_response(),
            Some(t) => sse_tool_answer(rx, t, meta).into_response(),
        });
    }
    let done = collect(rx).await?;
    let logprobs = done.logprobs_json(&meta);
    let (content, calls) = match &tool_spec {
        Some(t) => tools::extract(&done.text, t),
        None => (Some(done.text.clone()), Vec::new()),
    };
    let finish = if calls.is_empty() {
        done.finish_reason
    } else {
        FinishReason::ToolCalls
    };
    let tool_calls = (!calls.is_empty())
        .then(|| serde_json::to_value(&calls).expect("tool calls serialise. This is a bug."));
    Ok(Json(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant".into(),
                content,
                tool_calls,
            },
            finish_reason: Some(finish.as_str().into()),
            logprobs,
        }],
        usage: done.usage,
    })
    .into_response())
}

async fn completions(
    State(s): State<ChatState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    let CheckedCompletion {
        prompt: text,
        gen,
        spec,
    } = s.invalid(check_completion(&req))?;
    s.invalid(check_vocab(&gen, rt.info.vocab_size))?;
    let (prompt, constraint) = {
        let rt = rt.clone();
        s.invalid(
            blocking(move || {
                let prompt = encode(&rt.tokenizer, &rt.info, &text, true, rt.max_model_len)?;
                let c = spec.map(|(sp, p)| rt.constraint(&sp, p)).transpose()?;
                Ok((prompt, c))
            })
            .await,
        )?
    };
    if prompt.is_empty() {
        s.common.reject(reason::INVALID);
        return Err(ApiError::invalid_param(
            "prompt",
            "'prompt' must not be empty",
        ));
    }
    let logprobs = gen.params.logprobs.is_some();
    let rx = s.submit(&rt, prompt, gen, constraint, "prompt")?;
    let meta = ResponseMeta {
        id: response_id("cmpl"),
        created: now_secs(),
        model: req.model.clone().unwrap_or_else(|| s.common.id.to_string()),
        shape: Shape::Completion,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs,
    };
    if req.stream {
        return Ok(sse(rx, meta).into_response());
    }
    let done = collect(rx).await?;
    let logprobs = done.logprobs_json(&meta);
    Ok(Json(CompletionResponse {
        id: meta.id,
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model,
        choices: vec![CompletionChoice {
            index: 0,
            text: done.text,
            finish_reason: Some(done.finish_reason.as_str().into()),
            logprobs,
        }],
        usage: Some(done.usage),
    })
    .into_response())
}

async fn tokenize(
    State(s): State<ChatState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt: Arc<ChatRuntime> = s.runtime()?;
    let want_strs = req.return_token_strs;
    let max_model_len = rt.max_model_len;
    let tokens = match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            let rt = rt.clone();
            let add = req.add_special_tokens;
            blocking(move || encode(&rt.tokenizer, &rt.info, &prompt, add, rt.max_model_len))
                .await?
        }
        (None, Some(messages)) => {
            let messages = s.invalid(parse_messages(&messages))?;
            let add_gen = req.add_generation_prompt.unwrap_or(true);
            let rt = rt.clone();
            s.invalid(blocking(move || chat_prompt(&rt, &messages, None, add_gen)).await)?
        }
        _ => {
            s.common.reject(reason::INVALID);
            return Err(ApiError::invalid(
                "Send exactly one of 'prompt' (text) or 'messages' (chat)",
            ));
        }
    };
    let token_strs = want_strs.then(|| {
        tokens
            .iter()
            .map(|&t| rt.tokenizer.id_to_token(t).unwrap_or_default())
            .collect()
    });
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len,
        tokens,
        token_strs,
    }))
}

async fn detokenize(
    State(s): State<ChatState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    let vocab = rt.tokenizer.get_vocab_size(true).max(rt.info.vocab_size);
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        s.common.reject(reason::INVALID);
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let prompt = blocking(move || {
        rt.tokenizer.decode(&req.tokens, false).map_err(|e| {
            tracing::warn!(error = %e, "detokenisation failed");
            ApiError::invalid_param("tokens", "The tokens could not be decoded")
        })
    })
    .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
