//! The encoder engines' queue and model thread (embedding and rerank).
//!
//! Handlers tokenize off the runtime, then push one [`Pending`] item per input through the
//! [`EncoderQueue`] handle; the queue is bounded (full → 429). A dedicated OS thread owns
//! the model: it takes token-budget batches of similar lengths from the plain
//! [`QueueState`] (unit-tested without tokio or a model), skips items whose client has gone,
//! runs the batch and answers each item through its oneshot. The thread beats its
//! [`ModelWatch`] around every batch and while idle; if it panics, the queue closes and
//! every waiting item is dropped, so each client gets an error instead of waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::backend::{EncoderBackend, PairTokens};
use super::inbox::{Inbox, InboxState};
use super::liveness::{run_guarded, ModelWatch, IDLE_BEAT};
use crate::metrics::Metrics;

/// One unit of model work.
#[derive(Debug, Clone)]
pub enum Job {
    /// A pooled vector, normalised when the model's configuration says so.
    Embed(Vec<u32>),
    /// A pooled vector, never normalised (TEI's `normalize: false`).
    EmbedRaw(Vec<u32>),
    /// Every token's last hidden state (TEI's `/embed_all`).
    Tokens(Vec<u32>),
    Score(PairTokens),
}

impl Job {
    fn tokens(&self) -> usize {
        match self {
            Job::Embed(ids) | Job::EmbedRaw(ids) | Job::Tokens(ids) => ids.len(),
            Job::Score(p) => p.ids.len(),
        }
    }
    /// Jobs of one kind share a batch (one backend call answers them all).
    fn same_kind(&self, other: &Job) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
    fn ids(&self) -> &[u32] {
        match self {
            Job::Embed(ids) | Job::EmbedRaw(ids) | Job::Tokens(ids) => ids,
            Job::Score(p) => &p.ids,
        }
    }
}

/// What the model thread answers for one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Vector(Vec<f32>),
    /// `[token][hidden]`.
    Tokens(Vec<Vec<f32>>),
    Score(f32),
}

/// A queued job with its reply channel.
#[derive(Debug)]
pub struct Pending {
    pub job: Job,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Output, String>>,
}

/// Limits of batching.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Padded tokens per batch (longest × count).
    pub max_batch_tokens: usize,
    /// Inputs per batch.
    pub max_batch_size: usize,
}

/// The queue's plain state (no locking, no async): waiting items and the bound.
pub struct QueueState {
    waiting: VecDeque<Pending>,
    capacity: usize,
    closed: bool,
}

impl QueueState {
    pub fn new(capacity: usize) -> Self {
        QueueState {
            waiting: VecDeque::new(),
            capacity,
            closed: false,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Admits all items or none (a request is never half-queued).
    pub fn push_all(&mut self, items: Vec<Pending>) -> Result<(), Vec<Pending>> {
        if self.closed || self.waiting.len() + items.len() > self.capacity {
            return Err(items);
        }
        self.waiting.extend(items);
        Ok(())
    }

    /// Drops items whose client has gone; returns how many were dropped.
    pub fn drop_abandoned(&mut self) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|p| !p.reply.is_closed());
        before - self.waiting.len()
    }

    /// Takes the next batch: the oldest item, then the waiting items of the same kind
    /// whose lengths are closest to it, while the padded cost stays within the budget.
    /// The oldest item always goes, even alone over budget, so nothing starves.
    pub fn next_batch(&mut self, limits: BatchLimits) -> Vec<Pending> {
        self.drop_abandoned();
        let Some(anchor) = self.waiting.pop_front() else {
            return Vec::new();
        };
        let anchor_len = anchor.job.tokens().max(1);
        let mut order: Vec<(usize, usize)> = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, p)| p.job.same_kind(&anchor.job))
            .map(|(i, p)| (p.job.tokens().max(1).abs_diff(anchor_len), i))
            .collect();
        order.sort_unstable();
        let mut longest = anchor_len;
        let mut chosen = Vec::new();
        for (_, i) in order {
            if chosen.len() + 1 >= limits.max_batch_size {
                break;
            }
            let len = self.waiting[i].job.tokens().max(1);
            let new_longest = longest.max(len);
            if new_longest * (chosen.len() + 2) > limits.max_batch_tokens {
                continue;
            }
            longest = new_longest;
            chosen.push(i);
        }
        chosen.sort_unstable();
        let mut batch = Vec::with_capacity(chosen.len() + 1);
        batch.push(anchor);
        for i in chosen.into_iter().rev() {
            batch.push(
                self.waiting
                    .remove(i)
                    .expect("index from enumerate. This is a bug."),
            );
        }
        batch
    }
}

impl InboxState for QueueState {
    fn close(&mut self) {
        self.closed = true;
    }
    fn is_closed(&self) -> bool {
        self.closed
    }
    fn clear(&mut self) {
        self.waiting.clear();
    }
}

/// Why an item could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

/// The async side's handle to the queue (cheap to clone).
#[derive(Clone)]
pub struct EncoderQueue {
    inbox: Arc<Inbox<QueueState>>,
}

/// Labels and sinks for the model thread's metrics.
#[derive(Clone)]
pub struct QueueMetrics {
    pub metrics: Metrics,
    pub model: String,
    pub kind: &'static str,
}

impl EncoderQueue {
    /// Starts the model thread and returns the queue handle.
    pub fn start(
        backend: Arc<dyn EncoderBackend>,
        capacity: usize,
        limits: BatchLimits,
        metrics: QueueMetrics,
        watch: ModelWatch,
    ) -> EncoderQueue {
        let inbox = Arc::new(Inbox::new(QueueState::new(capacity)));
        let queue = EncoderQueue {
            inbox: inbox.clone(),
        };
        std::thread::Builder::new()
            .name("encoder-model".into())
            .spawn(move || {
                let liveness = watch.liveness.clone();
                run_guarded(
                    &liveness,
                    || model_thread(&inbox, backend, limits, metrics, watch),
                    || inbox.fail_pending(),
                )
            })
            .expect("spawning the model thread. This is a bug.");
        queue
    }

    /// Queues every job of one request, or none when the queue lacks room.
    pub fn submit(
        &self,
        jobs: Vec<Job>,
    ) -> Result<Vec<oneshot::Receiver<Result<Output, String>>>, PushError> {
        let now = Instant::now();
        let mut receivers = Vec::with_capacity(jobs.len());
        let items: Vec<Pending> = jobs
            .into_iter()
            .map(|job| {
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                Pending {
                    job,
                    enqueued: now,
                    reply: tx,
                }
            })
            .collect();
        self.inbox.push(PushError::Closed, |state| {
            state.push_all(items).map_err(|_| PushError::Full)
        })?;
        Ok(receivers)
    }

    /// Items waiting now.
    pub fn depth(&self) -> usize {
        self.inbox.lock().len()
    }

    /// Stops the model thread after the queued work is done.
    pub fn close(&self) {
        self.inbox.close();
    }
}

fn model_thread(
    inbox: &Inbox<QueueState>,
    backend: Arc<dyn EncoderBackend>,
    limits: BatchLimits,
    m: QueueMetrics,
    watch: ModelWatch,
) {
    let labels = [m.model.as_str(), m.kind];
    loop {
        let batch = {
            let mut state = inbox.lock();
            loop {
                let dropped = state.drop_abandoned();
                if dropped > 0 {
                    m.metrics
                        .rejected
                        .with_label_values(&[
                            labels[0],
                            labels[1],
                            crate::metrics::reason::DISCONNECTED,
                        ])
                        .inc_by(dropped as u64);
                }
                if !state.is_empty() {
                    break;
                }
                if state.closed {
                    return;
                }
                watch.liveness.beat();
                state = inbox.wait(state, IDLE_BEAT);
            }
            let batch = state.next_batch(limits);
            m.metrics
                .queue_depth
                .with_label_values(&labels)
                .set(state.len() as i64);
            batch
        };
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let longest = batch.iter().map(|p| p.job.tokens()).max().unwrap_or(0);
        for p in &batch {
            m.metrics
                .queue_wait
                .with_label_values(&labels)
                .observe(started.duration_since(p.enqueued).as_secs_f64());
        }
        m.metrics
            .batch_size
            .with_label_values(&labels)
            .observe(batch.len() as f64);
        m.metrics
            .batch_tokens
            .with_label_values(&labels)
            .observe((longest * batch.len()) as f64);
        watch.before_work();
        let result = run_batch(backend.as_ref(), &batch);
        watch.liveness.beat();
        match result {
            Ok(outputs) => {
                for (p, out) in batch.into_iter().zip(outputs) {
                    let _ = p.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(model = %m.model, error = %e, "encoder batch failed");
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn run_batch(backend: &dyn EncoderBackend, batch: &[Pending]) -> Result<Vec<Output>, String> {
    let err = |e: crate::models::ModelError| e.to_string();
    // A batch holds jobs of one kind (`next_batch`), so all of them go to one call.
    let ids = || -> Vec<&[u32]> { batch.iter().map(|p| p.job.ids()).collect() };
    let vectors = |v: Vec<Vec<f32>>| v.into_iter().map(Output::Vector).collect();
    Ok(match &batch[0].job {
        Job::Embed(_) => vectors(backend.embed(&ids()).map_err(err)?),
        Job::EmbedRaw(_) => vectors(backend.embed_unnormalized(&ids()).map_err(err)?),
        Job::Tokens(_) => backend
            .token_states(&ids())
            .map_err(err)?
            .into_iter()
            .map(Output::Tokens)
            .collect(),
        Job::Score(_) => {
            let pairs: Vec<&PairTokens> = batch
                .iter()
                .filter_map(|p| match &p.job {
                    Job::Score(pair) => Some(pair),
                    _ => None,
                })
                .collect();
            backend
                .score(&pairs)
                .map_err(err)?
                .into_iter()
                .map(Output::Score)
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize) -> (Pending, oneshot::Receiver<Result<Output, String>>) {
        let (tx, rx) = oneshot::channel();
        (
            Pending {
                job: Job::Embed(vec![1; len]),
                enqueued: Instant::now(),
                reply: tx,
            },
            rx,
        )
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_batch_tokens: 100,
        max_batch_size: 8,
    };

    #[test]
    fn batches_group_similar_lengths_within_budget() {
        let mut q = QueueState::new(100);
        let mut rxs = Vec::new();
        for len in [10, 50, 11, 12, 49, 9] {
            let (p, rx) = item(len);
            rxs.push(rx);
            q.push_all(vec![p]).unwrap();
        }
        let lens = |b: &[Pending]| {
            let mut l: Vec<usize> = b.iter().map(|p| p.job.tokens()).collect();
            l.sort_unstable();
            l
        };
        let b = q.next_batch(LIMITS);
        // anchor 10, then 11, 9, 12 (closest lengths): 12 * 4 = 48 ≤ 100; 49 would cost 245.
        assert_eq!(lens(&b), vec![9, 10, 11, 12]);
        let b = q.next_batch(LIMITS);
        assert_eq!(lens(&b), vec![49, 50]);
        assert!(q.next_batch(LIMITS).is_empty());
    }

    #[test]
    fn jobs_of_different_kinds_never_share_a_batch() {
        let mut q = QueueState::new(10);
        let mut rxs = Vec::new();
        for job in [
            Job::Embed(vec![1; 4]),
            Job::Tokens(vec![1; 4]),
            Job::EmbedRaw(vec![1; 4]),
            Job::Embed(vec![1; 4]),
            Job::Tokens(vec![1; 4]),
        ] {
            let (tx, rx) = oneshot::channel();
            rxs.push(rx);
            q.push_all(vec![Pending {
                job,
                enqueued: Instant::now(),
                reply: tx,
            }])
            .unwrap();
        }
        let kinds = |b: &[Pending]| -> Vec<std::mem::Discriminant<Job>> {
            b.iter().map(|p| std::mem::discriminant(&p.job)).collect()
        };
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let b = q.next_batch(LIMITS);
            let k = kinds(&b);
            assert!(k.windows(2).all(|w| w[0] == w[1]), "mixed batch");
            (!b.is_empty()).then_some(b.len())
        })
        .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn oversized_item_still_runs_alone() {
        let mut q = QueueState::new(10);
        let (p, _rx) = item(500);
        let (p2, _rx2) = item(5);
        q.push_all(vec![p, p2]).unwrap();
        assert_eq!(q.next_batch(LIMITS).len(), 1);
        assert_eq!(q.next_batch(LIMITS).len(), 1);
    }

    #[test]
    fn abandoned_items_never_take_a_slot() {
        let mut q = QueueState::new(10);
        let (a, rx_a) = item(5);
        let (b, _rx_b) = item(5);
        q.push_all(vec![a, b]).unwrap();
        drop(rx_a);
        let batch = q.next_batch(LIMITS);
        assert_eq!(batch.len(), 1);
        assert!(!batch[0].reply.is_closed());
    }

    #[test]
    fn capacity_is_all_or_nothing() {
        let mut q = QueueState::new(3);
        let (a, _ra) = item(1);
        let (b, _rb) = item(1);
        q.push_all(vec![a, b]).unwrap();
        let (c, _rc) = item(1);
        let (d, _rd) = item(1);
        assert!(q.push_all(vec![c, d]).is_err());
        assert_eq!(q.len(), 2);
    }
}
