//! Shaping generation events into OpenAI responses: the collected (non-stream) answer and
//! the SSE stream (chat: role delta first, content deltas, a final chunk with
//! `finish_reason`, an optional usage chunk, then `data: [DONE]`; a failure after the
//! stream began ends it with a `data: {"error":…}` event).

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::mpsc;

use super::logprobs::{self, TokenLogprob};
use super::scheduler::{Event, FinishReason};
use crate::api::types::chat::{ChatCompletionChunk, ChunkChoice, Delta};
use crate::api::types::completions::{CompletionChoice, CompletionResponse, Usage};
use crate::api::ApiError;

/// Which endpoint's shapes to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completion,
}

/// Identity of one response.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub shape: Shape,
    pub include_usage: bool,
    /// The request asked for log probabilities (every chunk then carries them).
    pub logprobs: bool,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Collected {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// One per generated token when asked for.
    pub logprobs: Vec<TokenLogprob>,
}

fn engine_error(msg: &str) -> ApiError {
    tracing::error!(error = %msg, "generation failed");
    ApiError::internal("The model failed while generating")
}

/// Reads events until the sequence ends.
pub async fn collect(mut rx: mpsc::Receiver<Event>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut lps = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Logprob(lp) => lps.push(lp),
            Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                return Ok(Collected {
                    text,
                    finish_reason: reason,
                    usage: Usage::new(prompt_tokens, completion_tokens),
                    logprobs: lps,
                })
            }
            Event::Error(e) => return Err(engine_error(&e)),
        }
    }
    Err(ApiError::unavailable("The engine stopped while generating"))
}

impl Collected {
    /// The `logprobs` of a whole answer in `shape`'s form (`None` when not asked for).
    pub fn logprobs_json(&self, meta: &ResponseMeta) -> Option<serde_json::Value> {
        meta.logprobs_json(&self.logprobs, 0)
    }
}

/// Log probabilities received but not yet sent (their text may still be held back by the
/// stop matcher), and the text offset the next completion chunk starts at.
#[derive(Debug, Default)]
struct Pending {
    logprobs: Vec<TokenLogprob>,
    offset: usize,
}

impl ResponseMeta {
    fn logprobs_json(&self, items: &[TokenLogprob], offset: usize) -> Option<serde_json::Value> {
        if !self.logprobs {
            return None;
        }
        Some(match self.shape {
            Shape::Chat => logprobs::chat_json(items),
            Shape::Completion => logprobs::completion_json(items, offset),
        })
    }

    /// The pending log probabilities for the next chunk (emptied).
    fn take(&self, p: &mut Pending) -> Option<serde_json::Value> {
        let v = self.logprobs_json(&p.logprobs, p.offset);
        p.offset += logprobs::text_len(&p.logprobs);
        p.logprobs.clear();
        v
    }

    fn chunk(
        &self,
        delta: Option<Delta>,
        finish: Option<FinishReason>,
        text: Option<String>,
    ) -> String {
        self.chunk_with(delta, finish, text, None)
    }

    fn chunk_with(
        &self,
        delta: Option<Delta>,
        finish: Option<FinishReason>,
        text: Option<String>,
        logprobs: Option<serde_json::Value>,
    ) -> String {
        match self.shape {
            Shape::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta: delta.unwrap_or_default(),
                    finish_reason: finish.map(|f| f.as_str().to_string()),
                    logprobs: logprobs.clone(),
                }],
                usage: None,
            }),
            Shape::Completion => serde_json::to_string(&CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or_default(),
                    finish_reason: finish.map(|f| f.as_str().to_string()),
                    logprobs,
                }],
                usage: None,
            }),
        }
        .expect("response chunks serialise. This is a bug.")
    }

    fn text_chunk(&self, t: String, logprobs: Option<serde_json::Value>) -> String {
        match self.shape {
            Shape::Chat => self.chunk_with(
                Some(Delta {
                    role: None,
                    content: Some(t),
                    tool_calls: None,
                }),
                None,
                None,
                logprobs,
            ),
            Shape::Completion => self.chunk_with(None, None, Some(t), logprobs),
        }
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        let v = serde_json::json!({
            "id": self.id,
            "object": match self.shape { Shape::Chat => "chat.completion.chunk", Shape::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        });
        v.to_string()
    }

    /// The SSE events answering one generation event; `true` when the stream is over.
    fn on_event(&self, ev: Option<Event>, pending: &mut Pending) -> (Vec<String>, bool) {
        match ev {
            Some(Event::Logprob(lp)) => {
                pending.logprobs.push(lp);
                (Vec::new(), false)
            }
            Some(Event::Text(t)) => {
                let lps = self.take(pending);
                (vec![self.text_chunk(t, lps)], false)
            }
            Some(Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                // Tokens whose text never showed (a stop string ate it) keep their place
                // in the final chunk.
                let lps = (!pending.logprobs.is_empty())
                    .then(|| self.take(pending))
                    .flatten();
                let mut out =
                    vec![self.chunk_with(Some(Delta::default()), Some(reason), None, lps)];
                if self.include_usage {
                    out.push(self.usage_chunk(Usage::new(prompt_tokens, completion_tokens)));
                }
                out.push("[DONE]".to_string());
                (out, true)
            }
            Some(Event::Error(e)) => (vec![engine_error(&e).to_json()], true),
            None => (
                vec![ApiError::unavailable("The engine stopped while generating").to_json()],
                true,
            ),
        }
    }
}

/// The SSE response of a chat generation that may end in tool calls: the text is collected
/// first (a tool call is only known once it is complete; keep-alive comments flow meanwhile),
/// then sent as OpenAI streams it — the role, any content, each call as one `tool_calls` delta
/// (id, name and the whole `arguments`), the finish chunk, usage, `[DONE]`.
pub fn sse_tool_answer(
    rx: mpsc::Receiver<Event>,
    tools: super::tools::Tools,
    meta: ResponseMeta,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = stream::once(async move {
        match collect(rx).await {
            Ok(done) => {
                let (content, calls) = super::tools::extract(&done.text, &tools);
                tool_answer_chunks(&meta, done, content, &calls)
            }
            Err(e) => vec![e.to_json()],
        }
    })
    .flat_map(stream::iter);
    Sse::new(events.map(|data| Ok(SseEvent::default().data(data))))
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

fn tool_answer_chunks(
    meta: &ResponseMeta,
    done: Collected,
    content: Option<String>,
    calls: &[super::tools::ToolCall],
) -> Vec<String> {
    let delta =
        |content: Option<String>, tool_calls: Option<serde_json::Value>, role: bool| Delta {
            role: role.then(|| "assistant".to_string()),
            content,
            tool_calls,
        };
    let mut out = vec![meta.chunk(Some(delta(Some(String::new()), None, true)), None, None)];
    if let Some(c) = content.filter(|c| !c.is_empty()) {
        out.push(meta.chunk(Some(delta(Some(c), None, false)), None, None));
    }
    for (i, c) in calls.iter().enumerate() {
        let mut v = serde_json::to_value(c).expect("a tool call serialises. This is a bug.");
        v["index"] = serde_json::json!(i);
        out.push(meta.chunk(
            Some(delta(None, Some(serde_json::json!([v])), false)),
            None,
            None,
        ));
    }
    let reason = if calls.is_empty() {
        done.finish_reason
    } else {
        FinishReason::ToolCalls
    };
    out.push(meta.chunk(Some(Delta::default()), Some(reason), None));
    if meta.include_usage {
        out.push(meta.usage_chunk(done.usage));
    }
    out.push("[DONE]".to_string());
    out
}

/// Silence after which a stream sends an SSE comment: a long prefill never looks like a
/// stuck engine to the gateway's stream idle timeout.
pub const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// The SSE response of a streamed generation. Dropping it (client gone) drops `rx`, which
/// the model thread notices before its next step.
pub fn sse(
    rx: mpsc::Receiver<Event>,
    meta: ResponseMeta,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let first = match meta.shape {
        Shape::Chat => vec![meta.chunk(
            Some(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                tool_calls: None,
            }),
            None,
            None,
        )],
        Shape::Completion => Vec::new(),
    };
    let head = stream::iter(first);
    let body = stream::unfold(Some((rx, meta, Pending::default())), |state| async move {
        let (mut rx, meta, mut pending) = state?;
        let (out, done) = meta.on_event(rx.recv().await, &mut pending);
        let next = if done {
            None
        } else {
            Some((rx, meta, pending))
        };
        Some((stream::iter(out), next))
    })
    .flatten();
    Sse::new(
        head.chain(body)
            .map(|data| Ok(SseEvent::default().data(data))),
    )
    .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(shape: Shape, include_usage: bool) -> ResponseMeta {
        ResponseMeta {
            id: "x".into(),
            created: 1,
            model: "m".into(),
            shape,
            include_usage,
            logprobs: false,
        }
    }

    #[test]
    fn finish_adds_usage_then_done_and_errors_end_the_stream() {
        let m = meta(Shape::Chat, true);
        let (out, done) = m.on_event(
            Some(Event::Finished {
                reason: FinishReason::Length,
                prompt_tokens: 3,
                completion_tokens: 2,
            }),
            &mut Pending::default(),
        );
        assert!(done);
        assert_eq!(out.len(), 3);
        let last: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let usage: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(out[2], "[DONE]");
        let (out, done) = meta(Shape::Completion, false)
            .on_event(Some(Event::Error("boom".into())), &mut Pending::default());
        assert!(done);
        assert_eq!(out.len(), 1);
        let err: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(err["error"]["type"], "server_error");
        assert!(!out[0].contains("boom"), "internal detail leaked");
        let (out, _) = meta(Shape::Completion, false)
            .on_event(Some(Event::Text("hi".into())), &mut Pending::default());
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            (c["object"].as_str(), c["choices"][0]["text"].as_str()),
            (Some("text_completion"), Some("hi"))
        );
    }

    #[test]
    fn streamed_logprobs_ride_with_their_text_and_offsets_run_on() {
        use crate::engine::chat::logprobs::Candidate;
        let lp = |t: &str| {
            Event::Logprob(TokenLogprob {
                chosen: Candidate {
                    token: t.into(),
                    logprob: -0.5,
                },
                top: Vec::new(),
            })
        };
        let mut m = meta(Shape::Completion, false);
        m.logprobs = true;
        let mut p = Pending::default();
        assert!(m.on_event(Some(lp("He")), &mut p).0.is_empty());
        assert!(m.on_event(Some(lp("llo")), &mut p).0.is_empty());
        let (out, _) = m.on_event(Some(Event::Text("Hello".into())), &mut p);
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["tokens"],
            serde_json::json!(["He", "llo"])
        );
        m.on_event(Some(lp(" you")), &mut p);
        let (out, _) = m.on_event(Some(Event::Text(" you".into())), &mut p);
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["text_offset"],
            serde_json::json!([5])
        );
        // A token held back and never shown still arrives, in the final chunk.
        m.on_event(Some(lp("!")), &mut p);
        let (out, done) = m.on_event(
            Some(Event::Finished {
                reason: FinishReason::Stop,
                prompt_tokens: 1,
                completion_tokens: 4,
            }),
            &mut p,
        );
        assert!(done);
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["tokens"],
            serde_json::json!(["!"])
        );
    }
}
