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
use super::reasoning::Reasoning;
use super::request::{
    check_chars, check_chat, check_completion, check_vocab, completion_budget, encode, json_chars,
    template_kwargs, CheckedChat, CheckedCompletion, Generation, PromptInput,
};
use super::runner::SubmitError;
use super::scheduler::{Event, FinishReason, GenRequest};
use super::stream::{
    collect_all, split_reasoning, sse, sse_tool_answer, ResponseMeta, Shape, StreamChoice,
};
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

/// Renders a conversation with the model's template and tokenises it; also says whether
/// the rendered prompt leaves the answer inside an open reasoning block.
fn chat_prompt(
    rt: &ChatRuntime,
    messages: &[serde_json::Value],
    tools: Option<&serde_json::Value>,
    add_generation_prompt: bool,
    kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<(Vec<u32>, bool), ApiError> {
    let text = rt
        .template
        .render(messages, tools, add_generation_prompt, kwargs)
        .map_err(|e| match e {
            TemplateError::Render(msg) => ApiError::invalid_param("messages", msg),
            TemplateError::Invalid(msg) => {
                tracing::error!(error = %msg, "chat template");
                ApiError::internal("The model's chat template failed")
            }
        })?;
    let opened = super::reasoning::prompt_opens(&text);
    Ok((
        encode(&rt.tokenizer, &rt.info, &text, true, rt.max_model_len)?,
        opened,
    ))
}

impl ChatState {
    /// Queues each prompt with its `n` choices (the siblings share the prompt's prefill)
    /// and returns the choices' event receivers in OpenAI's order: prompt by prompt, `n`
    /// each. Nothing runs for a request that cannot fit: each prompt's context and the KV
    /// and sequence room its choices need together are checked first.
    fn submit(
        &self,
        rt: &ChatRuntime,
        prompts: Vec<Vec<u32>>,
        gen: Generation,
        constraint: Option<Constraint>,
        param: &str,
    ) -> Result<Vec<mpsc::Receiver<Event>>, ApiError> {
        let n = gen.n;
        let sched = rt.scheduler;
        if n > sched.max_num_seqs {
            self.common.reject(reason::INVALID);
            return Err(ApiError::invalid_param(
                "n",
                format!(
                    "'n' must be at most {} for this model (its max_num_seqs; got {n})",
                    sched.max_num_seqs
                ),
            ));
        }
        let mut budgets = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let max_tokens = completion_budget(p.len(), gen.max_tokens, rt.max_model_len, param)
                .inspect_err(|_| self.common.reject(reason::TOO_LONG))?;
            if n > 1 && (p.len() + max_tokens).saturating_mul(n) > sched.kv_budget_tokens {
                self.common.reject(reason::TOO_LONG);
                return Err(ApiError::invalid_param(
                    "n",
                    format!(
                        "{n} choices of up to {} tokens each do not fit this model's KV cache ({} tokens); lower 'n' or the maximum tokens",
                        p.len() + max_tokens,
                        sched.kv_budget_tokens
                    ),
                ));
            }
            budgets.push(max_tokens);
        }
        let mut receivers = Vec::with_capacity(prompts.len() * n);
        let last = prompts.len().saturating_sub(1);
        let mut constraint = constraint;
        for (i, (prompt, max_tokens)) in prompts.into_iter().zip(budgets).enumerate() {
            let (tx, rx) = mpsc::channel(EVENT_BUFFER);
            receivers.push(rx);
            let siblings = (1..n)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
                    receivers.push(rx);
                    tx
                })
                .collect();
            // Each prompt gets its own grammar state; the last one takes the original.
            let c = if i == last {
                constraint.take()
            } else {
                constraint.as_ref().map(Constraint::fork)
            };
            let req = GenRequest {
                prompt,
                params: gen.params.clone(),
                stop: gen.stop.clone(),
                max_tokens,
                ignore_eos: gen.ignore_eos,
                events: tx,
                enqueued: Instant::now(),
                constraint: c,
                siblings,
            };
            match rt.queue.submit(req) {
                Ok(()) => {}
                // Prompts already queued are dropped with their receivers.
                Err(SubmitError::Full) => {
                    self.common.reject(reason::QUEUE_FULL);
                    return Err(ApiError::overloaded(1));
                }
                Err(SubmitError::Closed) => {
                    return Err(ApiError::unavailable("The engine is shutting down"))
                }
            }
        }
        Ok(receivers)
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
        kwargs,
    } = s.invalid(check_chat(&req, &rt.info.sampling_defaults))?;
    s.common.ignored(&req.other);
    s.invalid(check_vocab(&gen, rt.info.vocab_size))?;
    // With tool_choice "none" the template still sees the tools (as OpenAI documents).
    let tools = req.tools.clone();
    let add_gen = req.add_generation_prompt.unwrap_or(true);
    let ((prompt, opened), constraint) = {
        let rt = rt.clone();
        s.invalid(
            blocking(move || {
                let prompt = chat_prompt(&rt, &messages, tools.as_ref(), add_gen, kwargs.as_ref())?;
                let c = spec.map(|(sp, p)| rt.constraint(&sp, p)).transpose()?;
                Ok((prompt, c))
            })
            .await,
        )?
    };
    // Some(opened) when the model's reasoning is split from its answer.
    let reasoning = rt.reasoning.then_some(opened);
    let meta = ResponseMeta {
        id: response_id("chatcmpl"),
        created: now_secs(),
        model: req.model.clone().unwrap_or_else(|| s.common.id.to_string()),
        shape: Shape::Chat,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs: gen.params.logprobs.is_some(),
        prompt_tokens: prompt.len(),
    };
    let rxs = s.submit(&rt, vec![prompt], gen, constraint, "messages")?;
    if req.stream {
        return Ok(match tool_spec {
            None => {
                let choices = rxs.into_iter().map(|rx| StreamChoice {
                    rx,
                    echo: None,
                    reasoning: reasoning.map(Reasoning::new),
                });
                sse(choices.collect(), meta).into_response()
            }
            Some(t) => sse_tool_answer(rxs, t, reasoning, meta).into_response(),
        });
    }
    let done = collect_all(rxs).await?;
    let completion_tokens = done.iter().map(|d| d.usage.completion_tokens).sum();
    let choices = done
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let (reasoning_content, text) = split_reasoning(reasoning, &d.text);
            let (content, calls) = match &tool_spec {
                Some(t) => tools::extract(&text, t),
                // A reasoning model that never got to its answer has none.
                None if reasoning_content.is_some() && text.is_empty() => (None, Vec::new()),
                None => (Some(text), Vec::new()),
            };
            let finish = if calls.is_empty() {
                d.finish_reason
            } else {
                FinishReason::ToolCalls
            };
            let tool_calls = (!calls.is_empty()).then(|| {
                serde_json::to_value(&calls).expect("tool calls serialise. This is a bug.")
            });
            ChatChoice {
                index,
                message: ChatMessage {
                    role: "assistant".into(),
                    content,
                    tool_calls,
                    reasoning_content,
                },
                finish_reason: Some(finish.as_str().into()),
                logprobs: d.logprobs_json(&meta),
            }
        })
        .collect();
    Ok(Json(ChatCompletionResponse {
        usage: meta.usage(completion_tokens),
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        choices,
    })
    .into_response())
}

/// The prompts of a completion as token ids, and the text each choice echoes.
struct CompletionPrompts {
    ids: Vec<Vec<u32>>,
    echoes: Vec<Option<String>>,
}

/// Token ids of a completion prompt, tokenising text prompts (on a blocking thread) and
/// checking given ids against the vocabulary; with `echo`, the text each choice starts with.
fn completion_prompts(
    rt: &ChatRuntime,
    prompts: Vec<PromptInput>,
    echo: bool,
) -> Result<CompletionPrompts, ApiError> {
    let mut ids = Vec::with_capacity(prompts.len());
    let mut echoes = Vec::with_capacity(prompts.len());
    for p in prompts {
        let (tokens, text) = match p {
            PromptInput::Text(t) => (
                encode(&rt.tokenizer, &rt.info, &t, true, rt.max_model_len)?,
                echo.then_some(t),
            ),
            PromptInput::Tokens(t) => {
                if let Some(bad) = t.iter().find(|&&id| id as usize >= rt.info.vocab_size) {
                    return Err(ApiError::invalid_param(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary (size {})",
                            rt.info.vocab_size
                        ),
                    ));
                }
                let text = echo
                    .then(|| rt.tokenizer.decode(&t, false))
                    .transpose()
                    .map_err(|_| {
                        ApiError::invalid_param(
                            "prompt",
                            "The prompt's tokens could not be decoded",
                        )
                    })?;
                (t, text)
            }
        };
        if tokens.is_empty() {
            return Err(ApiError::invalid_param(
                "prompt",
                "'prompt' must not be empty",
            ));
        }
        ids.push(tokens);
        echoes.push(text);
    }
    Ok(CompletionPrompts { ids, echoes })
}

async fn completions(
    State(s): State<ChatState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    s.common.check_model(req.model.as_deref())?;
    let rt = s.runtime()?;
    let CheckedCompletion {
        prompts,
        echo,
        gen,
        spec,
    } = s.invalid(check_completion(&req, &rt.info.sampling_defaults))?;
    s.common.ignored(&req.other);
    s.invalid(check_vocab(&gen, rt.info.vocab_size))?;
    let (prompts, echoes, constraint) = {
        let rt = rt.clone();
        s.invalid(
            blocking(move || {
                let CompletionPrompts { ids, echoes } = completion_prompts(&rt, prompts, echo)?;
                let c = spec.map(|(sp, p)| rt.constraint(&sp, p)).transpose()?;
                Ok((ids, echoes, c))
            })
            .await,
        )?
    };
    let meta = ResponseMeta {
        id: response_id("cmpl"),
        created: now_secs(),
        model: req.model.clone().unwrap_or_else(|| s.common.id.to_string()),
        shape: Shape::Completion,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        logprobs: gen.params.logprobs.is_some(),
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
    };
    let n = gen.n;
    let rxs = s.submit(&rt, prompts, gen, constraint, "prompt")?;
    // Choice i answers prompt i / n.
    let echo_of = |i: usize| echoes[i / n].clone();
    if req.stream {
        let choices = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| StreamChoice {
                rx,
                echo: echo_of(i),
                reasoning: None,
            })
            .collect();
        return Ok(sse(choices, meta).into_response());
    }
    let done = collect_all(rxs).await?;
    let completion_tokens = done.iter().map(|d| d.usage.completion_tokens).sum();
    let choices = done
        .iter()
        .enumerate()
        .map(|(index, d)| CompletionChoice {
            index,
            text: echo_of(index).unwrap_or_default() + &d.text,
            finish_reason: Some(d.finish_reason.as_str().into()),
            logprobs: d.logprobs_json(&meta),
        })
        .collect();
    Ok(Json(CompletionResponse {
        usage: Some(meta.usage(completion_tokens)),
        id: meta.id,
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model,
        choices,
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
            let kwargs = s.invalid(template_kwargs(req.chat_template_kwargs.as_ref()))?;
            let add_gen = req.add_generation_prompt.unwrap_or(true);
            let rt = rt.clone();
            s.invalid(
                blocking(move || chat_prompt(&rt, &messages, None, add_gen, kwargs.as_ref())).await,
            )?
            .0
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
