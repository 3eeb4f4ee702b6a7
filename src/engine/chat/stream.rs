//! Shaping generation events into OpenAI responses: the collected (non-stream) answer and
//! the SSE stream (chat: role delta first, content deltas, a final chunk with
//! `finish_reason`, an optional usage chunk, then `data: [DONE]`; a failure after the
//! stream began ends it with a `data: {"error":…}` event).

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::mpsc;

use super::logprobs::{self, TokenLogprob};
use super::reasoning::{Reasoning, Split};
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
    /// Prompt tokens of the whole request (each prompt once, however many choices share it).
    pub prompt_tokens: usize,
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

/// Reads every choice to its end, concurrently, in choice order.
pub async fn collect_all(rxs: Vec<mpsc::Receiver<Event>>) -> Result<Vec<Collected>, ApiError> {
    futures::future::try_join_all(rxs.into_iter().map(collect)).await
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
    /// A reasoning model's splitter (chat only).
    reasoning: Option<Reasoning>,
}

/// Where one choice's stream stands after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    More,
    /// The choice ended after this many generated tokens.
    Done(usize),
    /// The response is over with an error.
    Failed,
}

impl ResponseMeta {
    /// The usage of the whole response.
    pub fn usage(&self, completion_tokens: usize) -> Usage {
        Usage::new(self.prompt_tokens, completion_tokens)
    }

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

    fn chunk(&self, index: usize, delta: Option<Delta>, finish: Option<FinishReason>) -> String {
        self.chunk_with(index, delta, finish, None, None)
    }

    fn chunk_with(
        &self,
        index: usize,
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
                    index,
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
                    index,
                    text: text.unwrap_or_default(),
                    finish_reason: finish.map(|f| f.as_str().to_string()),
                    logprobs,
                }],
                usage: None,
            }),
        }
        .expect("response chunks serialise. This is a bug.")
    }

    fn text_chunk(&self, index: usize, t: String, logprobs: Option<serde_json::Value>) -> String {
        match self.shape {
            Shape::Chat => self.chunk_with(
                index,
                Some(Delta {
                    content: Some(t),
                    ..Delta::default()
                }),
                None,
                None,
                logprobs,
            ),
            Shape::Completion => self.chunk_with(index, None, None, Some(t), logprobs),
        }
    }

    /// The first chunk of a chat choice: the assistant role and empty content.
    fn role_chunk(&self, index: usize) -> String {
        self.chunk(
            index,
            Some(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            }),
            None,
        )
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

    /// The end of a stream: the usage chunk when asked for, then `[DONE]`.
    fn tail(&self, completion_tokens: usize) -> Vec<String> {
        let mut out = Vec::new();
        if self.include_usage {
            out.push(self.usage_chunk(self.usage(completion_tokens)));
        }
        out.push("[DONE]".to_string());
        out
    }

    /// The chunks of a split piece of text: reasoning first, then content; the pending
    /// log probabilities ride with the first (and wait when both are empty).
    fn split_chunks(&self, index: usize, split: Split, pending: &mut Pending) -> Vec<String> {
        let mut out = Vec::new();
        for (text, reasoning) in [(split.reasoning, true), (split.content, false)] {
            if text.is_empty() {
                continue;
            }
            let lps = if out.is_empty() {
                self.take(pending)
            } else {
                None
            };
            let delta = if reasoning {
                Delta {
                    reasoning_content: Some(text),
                    ..Delta::default()
                }
            } else {
                Delta {
                    content: Some(text),
                    ..Delta::default()
                }
            };
            out.push(self.chunk_with(index, Some(delta), None, None, lps));
        }
        out
    }

    /// The SSE events answering one generation event of choice `index`.
    fn on_event(
        &self,
        index: usize,
        ev: Option<Event>,
        pending: &mut Pending,
    ) -> (Vec<String>, Step) {
        match ev {
            Some(Event::Logprob(lp)) => {
                pending.logprobs.push(lp);
                (Vec::new(), Step::More)
            }
            Some(Event::Text(t)) => {
                let out = match pending.reasoning.as_mut() {
                    None => {
                        let lps = self.take(pending);
                        vec![self.text_chunk(index, t, lps)]
                    }
                    Some(r) => {
                        let split = r.push(&t);
                        self.split_chunks(index, split, pending)
                    }
                };
                (out, Step::More)
            }
            Some(Event::Finished {
                reason,
                completion_tokens,
                ..
            }) => {
                let mut out = match pending.reasoning.as_mut().map(Reasoning::finish) {
                    Some(split) => self.split_chunks(index, split, pending),
                    None => Vec::new(),
                };
                // Tokens whose text never showed (a stop string ate it) keep their place
                // in the final chunk.
                let lps = (!pending.logprobs.is_empty())
                    .then(|| self.take(pending))
                    .flatten();
                out.push(self.chunk_with(index, Some(Delta::default()), Some(reason), None, lps));
                (out, Step::Done(completion_tokens))
            }
            Some(Event::Error(e)) => (vec![engine_error(&e).to_json()], Step::Failed),
            None => (
                vec![ApiError::unavailable("The engine stopped while generating").to_json()],
                Step::Failed,
            ),
        }
    }
}

/// The SSE response of a chat generation that may end in tool calls: every choice's text is
/// collected first (a tool call is only known once it is complete; keep-alive comments flow
/// meanwhile), then sent as OpenAI streams it — per choice the role, any content, each call
/// as one `tool_calls` delta (id, name and the whole `arguments`), the finish chunk — then
/// usage and `[DONE]`.
pub fn sse_tool_answer(
    rxs: Vec<mpsc::Receiver<Event>>,
    tools: super::tools::Tools,
    reasoning: Option<bool>,
    meta: ResponseMeta,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = stream::once(async move {
        match collect_all(rxs).await {
            Ok(done) => {
                let mut out = Vec::new();
                let mut completion = 0;
                for (i, d) in done.into_iter().enumerate() {
                    completion += d.usage.completion_tokens;
                    let (thought, text) = split_reasoning(reasoning, &d.text);
                    let (content, calls) = super::tools::extract(&text, &tools);
                    out.extend(tool_answer_chunks(&meta, i, &d, thought, content, &calls));
                }
                out.extend(meta.tail(completion));
                out
            }
            Err(e) => vec![e.to_json()],
        }
    })
    .flat_map(stream::iter);
    Sse::new(events.map(|data| Ok(SseEvent::default().data(data))))
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// A whole chat answer as (reasoning, content): with a splitter (`Some(opened)`), the
/// reasoning is `None` when there was none; without, all of it is content.
pub fn split_reasoning(reasoning: Option<bool>, text: &str) -> (Option<String>, String) {
    match reasoning {
        None => (None, text.to_string()),
        Some(opened) => {
            let s = Reasoning::split(opened, text);
            ((!s.reasoning.is_empty()).then_some(s.reasoning), s.content)
        }
    }
}

fn tool_answer_chunks(
    meta: &ResponseMeta,
    index: usize,
    done: &Collected,
    reasoning: Option<String>,
    content: Option<String>,
    calls: &[super::tools::ToolCall],
) -> Vec<String> {
    let delta = |content: Option<String>, tool_calls: Option<serde_json::Value>| Delta {
        content,
        tool_calls,
        ..Delta::default()
    };
    let mut out = vec![meta.role_chunk(index)];
    if let Some(r) = reasoning {
        let d = Delta {
            reasoning_content: Some(r),
            ..Delta::default()
        };
        out.push(meta.chunk(index, Some(d), None));
    }
    if let Some(c) = content.filter(|c| !c.is_empty()) {
        out.push(meta.chunk(index, Some(delta(Some(c), None)), None));
    }
    for (i, c) in calls.iter().enumerate() {
        let mut v = serde_json::to_value(c).expect("a tool call serialises. This is a bug.");
        v["index"] = serde_json::json!(i);
        out.push(meta.chunk(index, Some(delta(None, Some(serde_json::json!([v])))), None));
    }
    let reason = if calls.is_empty() {
        done.finish_reason
    } else {
        FinishReason::ToolCalls
    };
    out.push(meta.chunk(index, Some(Delta::default()), Some(reason)));
    out
}

/// Silence after which a stream sends an SSE comment: a long prefill never looks like a
/// stuck engine to the gateway's stream idle timeout.
pub const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// One streamed choice: its events, the text a completion with `echo` starts with, and a
/// reasoning model's splitter.
pub struct StreamChoice {
    pub rx: mpsc::Receiver<Event>,
    pub echo: Option<String>,
    pub reasoning: Option<Reasoning>,
}

/// A choice's events as a stream, tagged with its index; it ends after the choice's last
/// event (a channel closed before that yields `None` once).
fn tagged(index: usize, rx: mpsc::Receiver<Event>) -> impl Stream<Item = (usize, Option<Event>)> {
    stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        let ev = rx.recv().await;
        let last = matches!(
            ev,
            None | Some(Event::Finished { .. }) | Some(Event::Error(_))
        );
        Some(((index, ev), (!last).then_some(rx)))
    })
}

/// The merged state of a streamed response.
struct Merge {
    pending: Vec<Pending>,
    open: usize,
    completion_tokens: usize,
}

/// The SSE response of a streamed generation: every choice's chunks as they come,
/// interleaved, then usage and `[DONE]` once all have finished (an error ends the whole
/// stream). Dropping it (client gone) drops the receivers, which the model thread notices
/// before its next step.
pub fn sse(
    choices: Vec<StreamChoice>,
    meta: ResponseMeta,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let mut head = Vec::new();
    let mut rxs = Vec::new();
    let mut pending = Vec::new();
    for (i, c) in choices.into_iter().enumerate() {
        pending.push(Pending {
            reasoning: c.reasoning,
            ..Pending::default()
        });
        match meta.shape {
            Shape::Chat => head.push(meta.role_chunk(i)),
            Shape::Completion => {
                if let Some(e) = c.echo.filter(|e| !e.is_empty()) {
                    head.push(meta.text_chunk(i, e, None));
                }
            }
        }
        rxs.push(tagged(i, c.rx).boxed());
    }
    let state = Merge {
        pending,
        open: rxs.len(),
        completion_tokens: 0,
    };
    let merged = stream::select_all(rxs);
    let body = stream::unfold(Some((merged, meta, state)), |st| async move {
        let (mut merged, meta, mut state) = st?;
        let (i, ev) = merged.next().await?;
        let (mut out, step) = meta.on_event(i, ev, &mut state.pending[i]);
        let over = match step {
            Step::More => false,
            Step::Failed => true,
            Step::Done(n) => {
                state.completion_tokens += n;
                state.open -= 1;
                if state.open == 0 {
                    out.extend(meta.tail(state.completion_tokens));
                }
                state.open == 0
            }
        };
        Some((stream::iter(out), (!over).then_some((merged, meta, state))))
    })
    .flatten();
    Sse::new(
        stream::iter(head)
            .chain(body)
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
            prompt_tokens: 3,
        }
    }

    #[test]
    fn finish_ends_a_choice_the_tail_adds_usage_then_done_and_errors_end_the_stream() {
        let m = meta(Shape::Chat, true);
        let (out, step) = m.on_event(
            1,
            Some(Event::Finished {
                reason: FinishReason::Length,
                prompt_tokens: 3,
                completion_tokens: 2,
            }),
            &mut Pending::default(),
        );
        assert_eq!(step, Step::Done(2));
        assert_eq!(out.len(), 1);
        let last: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["index"], 1);
        // Two choices of 2 and 4 tokens on one 3-token prompt: the prompt counts once.
        let tail = m.tail(6);
        assert_eq!(tail.len(), 2);
        let usage: serde_json::Value = serde_json::from_str(&tail[0]).unwrap();
        assert_eq!(usage["usage"]["prompt_tokens"], 3);
        assert_eq!(usage["usage"]["total_tokens"], 9);
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(tail[1], "[DONE]");
        assert_eq!(meta(Shape::Chat, false).tail(1), vec!["[DONE]".to_string()]);
        let (out, step) = meta(Shape::Completion, false).on_event(
            0,
            Some(Event::Error("boom".into())),
            &mut Pending::default(),
        );
        assert_eq!(step, Step::Failed);
        assert_eq!(out.len(), 1);
        let err: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(err["error"]["type"], "server_error");
        assert!(!out[0].contains("boom"), "internal detail leaked");
        let (out, _) = meta(Shape::Completion, false).on_event(
            0,
            Some(Event::Text("hi".into())),
            &mut Pending::default(),
        );
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
        assert!(m.on_event(0, Some(lp("He")), &mut p).0.is_empty());
        assert!(m.on_event(0, Some(lp("llo")), &mut p).0.is_empty());
        let (out, _) = m.on_event(0, Some(Event::Text("Hello".into())), &mut p);
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["tokens"],
            serde_json::json!(["He", "llo"])
        );
        m.on_event(0, Some(lp(" you")), &mut p);
        let (out, _) = m.on_event(0, Some(Event::Text(" you".into())), &mut p);
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["text_offset"],
            serde_json::json!([5])
        );
        // A token held back and never shown still arrives, in the final chunk.
        m.on_event(0, Some(lp("!")), &mut p);
        let (out, done) = m.on_event(
            0,
            Some(Event::Finished {
                reason: FinishReason::Stop,
                prompt_tokens: 1,
                completion_tokens: 4,
            }),
            &mut p,
        );
        assert_eq!(done, Step::Done(4));
        let c: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            c["choices"][0]["logprobs"]["tokens"],
            serde_json::json!(["!"])
        );
    }
}
