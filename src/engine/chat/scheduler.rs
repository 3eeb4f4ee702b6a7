//! Continuous batching as a plain state struct (no locks, no async, unit-tested with a fake
//! decoder): a FIFO of waiting requests and a set of running sequences, each with its own
//! KV cache. Every [`Scheduler::step`] drops sequences whose client has gone, admits
//! waiting requests while `max_num_seqs` and the KV budget (worst case: prompt +
//! `max_tokens`) allow, gives every decoding sequence its one token, spends the rest of the
//! token budget on prefill chunks (oldest first; at most `decode_prefill_tokens` while
//! anything decodes, so admitting a prompt never stalls the running streams for long),
//! runs one forward pass over all of them, then samples, detokenises, checks stop
//! conditions and queues the events for each client.
//! The model thread in `runner` owns it; handlers only see the event channel.
//!
//! With a [`PrefixCache`], admission starts a sequence's cache with the cached blocks of its
//! prompt's longest known prefix (prefill resumes after them), and a sequence whose prompt
//! is fully prefilled adds its whole prompt blocks to the cache. Memory: a sequence still
//! reserves its whole worst case (so the blocks it holds are inside its reservation), and
//! blocks nobody holds count on their own; admission and insertion evict those, least
//! recently used first, before anything is refused, so the cache never keeps a request out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::backend::{BatchItem, DecoderBackend};
use super::prefix::PrefixCache;
use super::sampling::{Sampler, SamplingParams};
use super::text::{Detokenizer, StopMatcher};

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// Set by the handler when the answer parsed as tool calls.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// What the model thread sends a handler, in order: text pieces, then one `Finished` or
/// `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    /// The log probabilities of the next generated token (before its text, when the
    /// request asked for them).
    Logprob(super::logprobs::TokenLogprob),
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// A validated generation request.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
    /// Tokens to generate at most (≥ 1; prompt + max_tokens fits the context).
    pub max_tokens: usize,
    /// Generate past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    pub events: mpsc::Sender<Event>,
    pub enqueued: Instant,
    /// Structured output: the grammar every token must follow.
    pub constraint: Option<super::constraint::Constraint>,
    /// `n` > 1: the event channels of the other choices. They share this request's
    /// prefill: once the prompt is cached, each becomes its own sequence with a copy of the
    /// cache, sampled independently.
    pub siblings: Vec<mpsc::Sender<Event>>,
}

impl GenRequest {
    /// The KV tokens reserved for this request and the siblings it has not forked yet.
    fn worst_case_tokens(&self) -> usize {
        (self.prompt.len() + self.max_tokens) * self.group()
    }

    /// Sequences this request becomes: itself and its unforked siblings.
    fn group(&self) -> usize {
        1 + self.siblings.len()
    }

    /// A sibling's request: the same prompt and limits, its own channel and parameters.
    fn sibling(&self, events: mpsc::Sender<Event>, params: SamplingParams) -> Self {
        GenRequest {
            prompt: self.prompt.clone(),
            params,
            stop: self.stop.clone(),
            max_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            events,
            enqueued: self.enqueued,
            constraint: None,
            siblings: Vec::new(),
        }
    }
}

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    /// Tokens per forward step (decode tokens + prefill chunks).
    pub max_batch_tokens: usize,
    /// Prefill tokens per step while some sequence is decoding (vLLM's chunked-prefill
    /// budget): a step's cost grows with its tokens, so this bounds how much a prompt
    /// being admitted delays every running stream's next token. Steps with nothing
    /// decoding prefill up to `max_batch_tokens`. Clamped to `1..=max_batch_tokens`.
    pub decode_prefill_tokens: usize,
    /// Tokens of KV cache the budget holds.
    pub kv_budget_tokens: usize,
    /// Tokens per prefix-cache block; 0 turns the prefix cache off.
    pub prefix_block_tokens: usize,
}

struct Seq<C> {
    req: GenRequest,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    /// Tokens already in the cache.
    cached: usize,
    /// Tokens planned for this step.
    chunk: usize,
    cache: C,
    sampler: Sampler,
    detok: Detokenizer,
    stop: StopMatcher,
    generated: usize,
    last_token_at: Option<Instant>,
    outbox: VecDeque<Event>,
    finished: bool,
    gone: bool,
}

impl<C> Seq<C> {
    fn new(req: GenRequest, cache: C, cached: usize, sampler: Sampler) -> Self {
        Seq {
            tokens: req.prompt.clone(),
            cached,
            chunk: 0,
            cache,
            sampler,
            detok: Detokenizer::new(&req.prompt),
            stop: StopMatcher::new(req.stop.clone()).including(req.params.include_stop_str),
            generated: 0,
            last_token_at: None,
            outbox: VecDeque::new(),
            finished: false,
            gone: false,
            req,
        }
    }

    fn send(&mut self, ev: Event) {
        self.outbox.push_back(ev);
    }
}

/// Delivers queued events without blocking; returns false when the client has gone.
fn flush(tx: &mpsc::Sender<Event>, outbox: &mut VecDeque<Event>) -> bool {
    while let Some(ev) = outbox.pop_front() {
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                outbox.push_front(ev);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    true
}

/// What one step did, for metrics and tests.
#[derive(Debug, Default, Clone)]
pub struct StepStats {
    /// Sequences in the forward pass.
    pub batch_seqs: usize,
    /// Tokens in the forward pass.
    pub batch_tokens: usize,
    /// Prefill tokens in the forward pass.
    pub prefill_tokens: usize,
    pub generated_tokens: usize,
    pub ttft: Vec<Duration>,
    pub itl: Vec<Duration>,
    /// Time admitted requests waited.
    pub queue_wait: Vec<Duration>,
    /// Sequences dropped because their client went away.
    pub disconnected: usize,
    pub running: usize,
    pub waiting: usize,
    /// Waiting requests held back because the KV budget is reserved (0 when admission
    /// stopped for another reason or nothing waits).
    pub kv_blocked: usize,
    pub kv_usage: f64,
    /// Prompt tokens of the requests admitted this step (prefix cache on).
    pub prefix_query_tokens: usize,
    /// Of those, tokens whose KV came from the prefix cache instead of a prefill.
    pub prefix_hit_tokens: usize,
    /// Blocks the prefix cache holds after the step.
    pub prefix_blocks: usize,
    /// The forward pass failed (its sequences got an error event).
    pub failed: Option<String>,
}

/// The scheduler state of a backend `B`: waiting requests, running sequences, KV
/// reservations and the prefix cache.
pub struct Scheduler<B: DecoderBackend> {
    cfg: SchedulerConfig,
    waiting: VecDeque<GenRequest>,
    running: Vec<Seq<B::Cache>>,
    /// Finished sequences whose last events the client has not taken yet.
    draining: Vec<(mpsc::Sender<Event>, VecDeque<Event>)>,
    reserved: usize,
    prefix: Option<PrefixCache<B::Block>>,
}

impl<B: DecoderBackend> Scheduler<B> {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let max_batch_tokens = cfg.max_batch_tokens.max(cfg.max_num_seqs).max(1);
        Scheduler {
            cfg: SchedulerConfig {
                max_num_seqs: cfg.max_num_seqs.max(1),
                max_batch_tokens,
                decode_prefill_tokens: cfg.decode_prefill_tokens.clamp(1, max_batch_tokens),
                ..cfg
            },
            waiting: VecDeque::new(),
            running: Vec::new(),
            draining: Vec::new(),
            reserved: 0,
            prefix: (cfg.prefix_block_tokens > 0)
                .then(|| PrefixCache::new(cfg.prefix_block_tokens)),
        }
    }

    /// The prefix cache, when it is on.
    pub fn prefix_cache(&self) -> Option<&PrefixCache<B::Block>> {
        self.prefix.as_ref()
    }

    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }

    /// Queues a request (the handle bounds the queue). An empty prompt cannot be run and
    /// is answered with an error at once.
    pub fn add(&mut self, req: GenRequest) {
        if req.prompt.is_empty() {
            let _ = req
                .events
                .try_send(Event::Error("The prompt is empty".into()));
            return;
        }
        self.waiting.push_back(req);
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Fraction of the KV budget reserved by running sequences.
    pub fn kv_usage(&self) -> f64 {
        if self.cfg.kv_budget_tokens == 0 {
            return 0.0;
        }
        self.reserved as f64 / self.cfg.kv_budget_tokens as f64
    }

    /// True when sequences wait or run (a step would do model work).
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// True when there is nothing to run and nothing to deliver.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.draining.is_empty()
    }

    /// Drops waiting requests and running sequences whose client has gone.
    fn drop_disconnected(&mut self) -> usize {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|r| !r.events.is_closed());
        let mut freed = 0;
        self.running.retain(|s| {
            let keep = !s.gone && !s.req.events.is_closed();
            if !keep {
                freed += s.req.worst_case_tokens();
            }
            keep
        });
        self.reserved -= freed;
        self.draining
            .retain_mut(|(tx, q)| flush(tx, q) && !q.is_empty());
        before - self.waiting.len() - self.running.len()
    }

    /// Moves waiting requests into the running set, oldest first, while they fit (a
    /// request with siblings needs room for all of them). A request starts from the cached
    /// blocks of its prompt's longest cached prefix.
    fn admit(&mut self, backend: &B, stats: &mut StepStats) {
        while let Some(front) = self.waiting.front() {
            if self.running.len() + front.group().min(self.cfg.max_num_seqs) > self.cfg.max_num_seqs
            {
                break;
            }
            let need = front.worst_case_tokens();
            // Held from here on, so making room below cannot evict them.
            let hit = match &mut self.prefix {
                Some(p) => p.lookup(&front.prompt),
                None => Vec::new(),
            };
            if !self.make_room(need) {
                stats.kv_blocked = self.waiting.len();
                break;
            }
            let mut req = self
                .waiting
                .pop_front()
                .expect("front exists. This is a bug.");
            self.reserved += need;
            stats.queue_wait.push(req.enqueued.elapsed());
            let sampler = Sampler::new(req.params.clone(), &req.prompt)
                .with_constraint(req.constraint.take())
                .with_eos(&backend.info().eos_token_ids);
            let (cache, cached) = match self.prefix.as_ref().map(PrefixCache::block_tokens) {
                Some(bt) => {
                    stats.prefix_query_tokens += req.prompt.len();
                    let matched = hit.len() * bt;
                    match (matched > 0).then(|| backend.with_prefix(hit)).flatten() {
                        Some(cache) => {
                            stats.prefix_hit_tokens += matched;
                            (cache, matched)
                        }
                        None => (backend.new_sequence(), 0),
                    }
                }
                None => (backend.new_sequence(), 0),
            };
            self.running.push(Seq::new(req, cache, cached, sampler));
        }
    }

    /// Whether `need` more reserved tokens fit the budget beside the reservations and the
    /// prefix cache's idle blocks, evicting idle blocks when that makes them fit.
    fn make_room(&mut self, need: usize) -> bool {
        let budget = self.cfg.kv_budget_tokens;
        let wanted = self.reserved + need;
        if wanted > budget {
            return false;
        }
        let Some(p) = &mut self.prefix else {
            return true;
        };
        let idle = p.idle_tokens();
        if wanted + idle > budget {
            p.evict(wanted + idle - budget);
        }
        wanted + p.idle_tokens() <= budget
    }

    /// Plans the step: one token per decoding sequence, then prefill chunks oldest first,
    /// within `decode_prefill_tokens` when anything decodes.
    fn plan(&mut self) {
        let mut decoding = 0;
        for s in self.running.iter_mut() {
            s.chunk = 0;
            if s.tokens.len() - s.cached == 1 && s.generated > 0 {
                s.chunk = 1;
                decoding += 1;
            }
        }
        let mut budget = self.cfg.max_batch_tokens.saturating_sub(decoding);
        if decoding > 0 {
            budget = budget.min(self.cfg.decode_prefill_tokens);
        }
        for s in self.running.iter_mut() {
            if budget == 0 {
                break;
            }
            if s.chunk == 0 {
                s.chunk = (s.tokens.len() - s.cached).min(budget);
                budget -= s.chunk;
            }
        }
    }

    /// Runs one scheduling step and forward pass.
    pub fn step(&mut self, backend: &B) -> StepStats {
        let mut stats = StepStats {
            disconnected: self.drop_disconnected(),
            ..StepStats::default()
        };
        self.admit(backend, &mut stats);
        self.plan();
        // The sequences that sample after this pass and follow a grammar get their masks
        // computed beside it.
        let mut items: Vec<BatchItem<'_, B::Cache>> = Vec::new();
        let mut masks: Vec<&mut Sampler> = Vec::new();
        for s in self.running.iter_mut().filter(|s| s.chunk > 0) {
            let Seq {
                tokens,
                cached,
                chunk,
                cache,
                sampler,
                ..
            } = s;
            if *cached + *chunk == tokens.len() && sampler.constrained() {
                masks.push(sampler);
            }
            items.push(BatchItem {
                tokens: &tokens[*cached..*cached + *chunk],
                cache,
            });
        }
        stats.batch_seqs = items.len();
        stats.batch_tokens = items.iter().map(|i| i.tokens.len()).sum();
        let result = if items.is_empty() {
            Ok(Vec::new())
        } else {
            forward_beside_masks(backend, &mut items, masks)
        };
        drop(items);
        match result {
            Ok(logits) => self.consume(backend, logits, &mut stats),
            Err(e) => {
                let msg = e.to_string();
                for s in self.running.iter_mut().filter(|s| s.chunk > 0) {
                    s.send(Event::Error("The model failed while generating".into()));
                    s.finished = true;
                }
                stats.failed = Some(msg);
            }
        }
        stats.disconnected += self.retire();
        stats.running = self.running.len();
        stats.waiting = self.waiting.len();
        stats.kv_usage = self.kv_usage();
        stats.prefix_blocks = self.prefix.as_ref().map_or(0, PrefixCache::len);
        stats
    }

    /// Samples the next token of every sequence whose prompt is now fully cached. A request
    /// with siblings forks them here, from the same logits, before its own first token; its
    /// prompt blocks go into the prefix cache first.
    fn consume(&mut self, backend: &B, logits: Vec<Vec<f32>>, stats: &mut StepStats) {
        let now = Instant::now();
        let mut forked = Vec::new();
        let Scheduler {
            running,
            prefix,
            reserved,
            cfg,
            ..
        } = self;
        let batched = running.iter_mut().filter(|s| s.chunk > 0);
        for (s, l) in batched.zip(logits) {
            if s.generated == 0 {
                stats.prefill_tokens += s.chunk;
            }
            s.cached += s.chunk;
            if s.cached < s.tokens.len() {
                continue; // mid-prompt chunk: its logits are not needed
            }
            if let (Some(p), 0) = (prefix.as_mut(), s.generated) {
                let free = cfg
                    .kv_budget_tokens
                    .saturating_sub(*reserved + p.idle_tokens());
                let cache = &s.cache;
                p.insert(&s.tokens, free, |start, len| {
                    backend.export_block(cache, start, len)
                });
            }
            for (i, events) in std::mem::take(&mut s.req.siblings).into_iter().enumerate() {
                let sampler = s.sampler.fork(i as u64 + 1);
                let req = s.req.sibling(events, sampler.params().clone());
                let mut sib = match backend.fork(&s.cache) {
                    Some(cache) => Seq::new(req, cache, s.cached, sampler),
                    None => Seq::new(req, backend.new_sequence(), 0, sampler),
                };
                if sib.cached == sib.tokens.len() {
                    advance(&mut sib, l.clone(), backend, now, stats);
                }
                forked.push(sib);
            }
            advance(s, l, backend, now, stats);
        }
        running.extend(forked);
    }

    /// Delivers queued events and removes finished or abandoned sequences; returns how
    /// many were abandoned.
    fn retire(&mut self) -> usize {
        let mut freed = 0;
        let mut gone = 0;
        let mut draining = Vec::new();
        self.running.retain_mut(|s| {
            if !flush(&s.req.events, &mut s.outbox) {
                s.gone = true;
            }
            let keep = !s.finished && !s.gone;
            if !keep {
                freed += s.req.worst_case_tokens();
                gone += usize::from(s.gone);
                if !s.gone && !s.outbox.is_empty() {
                    draining.push((s.req.events.clone(), std::mem::take(&mut s.outbox)));
                }
            }
            keep
        });
        self.reserved -= freed;
        self.draining.extend(draining);
        gone
    }
}

/// Runs the forward pass while a second thread computes the grammar masks of `masks`: the
/// grammar engine's work overlaps the model's instead of following it.
fn forward_beside_masks<B: DecoderBackend>(
    backend: &B,
    items: &mut [BatchItem<'_, B::Cache>],
    masks: Vec<&mut Sampler>,
) -> Result<Vec<Vec<f32>>, crate::models::ModelError> {
    if masks.is_empty() {
        return backend.step(items);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || masks.into_iter().for_each(Sampler::prepare));
        backend.step(items)
    })
}

/// Samples one sequence's next token from its logits, then detokenises it, checks the stop
/// conditions and queues the events.
fn advance<B: DecoderBackend>(
    s: &mut Seq<B::Cache>,
    mut l: Vec<f32>,
    backend: &B,
    now: Instant,
    stats: &mut StepStats,
) {
    let tok = backend.tokenizer();
    let eos = &backend.info().eos_token_ids;
    // Log probabilities come from the raw logits, before the sampler changes them.
    let raw = s.req.params.logprobs.map(|k| (k, l.clone()));
    let id = s.sampler.sample(&mut l);
    s.generated += 1;
    stats.generated_tokens += 1;
    match s.last_token_at {
        None => stats.ttft.push(now.duration_since(s.req.enqueued)),
        Some(t) => stats.itl.push(now.duration_since(t)),
    }
    s.last_token_at = Some(now);
    let ends =
        (!s.req.ignore_eos && eos.contains(&id)) || s.req.params.stop_token_ids.contains(&id);
    if ends {
        let rest = s.detok.flush(tok);
        let (text, _) = s.stop.push(&rest);
        let text = text + &s.stop.flush();
        finish(s, text, FinishReason::Stop);
        return;
    }
    if let Some((k, raw)) = raw {
        s.send(Event::Logprob(super::logprobs::compute(&raw, id, k, tok)));
    }
    s.tokens.push(id);
    let piece = s.detok.push(tok, id);
    let (text, stopped) = s.stop.push(&piece);
    if stopped {
        finish(s, text, FinishReason::Stop);
    } else if s.generated >= s.req.max_tokens {
        let (more, stopped) = s.stop.push(&s.detok.flush(tok));
        let text = if stopped {
            text + &more
        } else {
            text + &more + &s.stop.flush()
        };
        let reason = if stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        finish(s, text, reason);
    } else if !text.is_empty() {
        s.send(Event::Text(text));
    }
}

fn finish<C>(s: &mut Seq<C>, text: String, reason: FinishReason) {
    if !text.is_empty() {
        s.send(Event::Text(text));
    }
    s.send(Event::Finished {
        reason,
        prompt_tokens: s.req.prompt.len(),
        completion_tokens: s.generated,
    });
    s.finished = true;
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "scheduler_prefix_tests.rs"]
mod prefix_tests;
