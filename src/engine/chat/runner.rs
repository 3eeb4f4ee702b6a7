//! The chat model thread and the handlers' handle to it.
//!
//! Handlers push validated [`GenRequest`]s into a bounded inbox ([`ChatQueue::submit`],
//! full → 429) and read [`Event`]s from their own bounded channel. One OS thread owns the
//! model, every KV cache and the [`Scheduler`]: it moves the inbox into the scheduler,
//! runs steps while there is work, records the metrics of each step and sleeps on a
//! condition variable when idle. Dropping the receiver is how a handler cancels. The thread
//! beats its [`ModelWatch`] around every step and while idle; when it panics, the running
//! sequences' channels drop with the scheduler and the inbox closes and empties, so every
//! client gets an error event instead of waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::backend::DecoderBackend;
use super::scheduler::{GenRequest, Scheduler, SchedulerConfig, StepStats};
use crate::engine::inbox::{Inbox, InboxState};
use crate::engine::liveness::{run_guarded, ModelWatch, IDLE_BEAT};
use crate::metrics::Metrics;

/// How often undelivered final events are retried when nothing else runs.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Why a request could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    Full,
    Closed,
}

/// The chat inbox: requests not yet moved into the scheduler.
struct ChatInbox {
    queue: VecDeque<GenRequest>,
    /// Requests the scheduler holds in its waiting set (updated every step).
    waiting: usize,
    closed: bool,
}

impl InboxState for ChatInbox {
    fn close(&mut self) {
        self.closed = true;
    }
    fn is_closed(&self) -> bool {
        self.closed
    }
    fn clear(&mut self) {
        self.queue.clear();
    }
}

/// The handlers' handle to the model thread (cheap to clone).
#[derive(Clone)]
pub struct ChatQueue {
    inbox: Arc<Inbox<ChatInbox>>,
    capacity: usize,
}

/// Labels and sinks of the model thread's metrics.
#[derive(Clone)]
pub struct RunnerMetrics {
    pub metrics: Metrics,
    pub model: String,
}

impl RunnerMetrics {
    /// Publishes the gauges at zero so dashboards see them before the first request.
    pub fn zero(&self) {
        self.record(&StepStats::default());
    }

    fn record(&self, st: &StepStats) {
        let m = &self.metrics;
        let mk = [self.model.as_str(), "chat"];
        let model = [self.model.as_str()];
        if st.batch_seqs > 0 {
            m.batch_size
                .with_label_values(&mk)
                .observe(st.batch_seqs as f64);
            m.batch_tokens
                .with_label_values(&mk)
                .observe(st.batch_tokens as f64);
        }
        if st.prefill_tokens > 0 {
            m.prompt_tokens
                .with_label_values(&mk)
                .inc_by(st.prefill_tokens as u64);
        }
        if st.generated_tokens > 0 {
            m.generated_tokens
                .with_label_values(&mk)
                .inc_by(st.generated_tokens as u64);
        }
        for d in &st.ttft {
            m.ttft.with_label_values(&model).observe(d.as_secs_f64());
        }
        for d in &st.itl {
            m.itl.with_label_values(&model).observe(d.as_secs_f64());
        }
        for d in &st.queue_wait {
            m.queue_wait.with_label_values(&mk).observe(d.as_secs_f64());
        }
        if st.disconnected > 0 {
            m.rejected
                .with_label_values(&[&self.model, "chat", crate::metrics::reason::DISCONNECTED])
                .inc_by(st.disconnected as u64);
        }
        m.running.with_label_values(&model).set(st.running as i64);
        m.waiting.with_label_values(&model).set(st.waiting as i64);
        m.queue_depth.with_label_values(&mk).set(st.waiting as i64);
        m.kv_usage.with_label_values(&model).set(st.kv_usage);
        m.kv_blocked
            .with_label_values(&model)
            .set(st.kv_blocked as i64);
        // Counters at 0 from the start, so rates and ratios exist before the first hit.
        m.prefix_query_tokens
            .with_label_values(&model)
            .inc_by(st.prefix_query_tokens as u64);
        m.prefix_hit_tokens
            .with_label_values(&model)
            .inc_by(st.prefix_hit_tokens as u64);
        m.prefix_blocks
            .with_label_values(&model)
            .set(st.prefix_blocks as i64);
    }
}

impl ChatQueue {
    /// Starts a model thread around `backend` and returns the handle.
    pub fn start<B>(
        backend: B,
        cfg: SchedulerConfig,
        capacity: usize,
        metrics: RunnerMetrics,
        watch: ModelWatch,
    ) -> Self
    where
        B: DecoderBackend + Send + 'static,
    {
        let queue = Self::new(capacity);
        let q = queue.clone();
        std::thread::Builder::new()
            .name("chat-model".into())
            .spawn(move || q.run(backend, cfg, metrics, watch))
            .expect("spawning the model thread. This is a bug.");
        queue
    }

    /// Runs the model loop on the calling thread (the one that loaded the model) until
    /// [`ChatQueue::close`]; a panic in it is caught, recorded on `watch` and fails every
    /// pending request.
    pub fn run<B: DecoderBackend>(
        &self,
        backend: B,
        cfg: SchedulerConfig,
        metrics: RunnerMetrics,
        watch: ModelWatch,
    ) {
        let liveness = watch.liveness.clone();
        run_guarded(
            &liveness,
            || model_task(&self.inbox, backend, cfg, metrics, watch),
            || self.inbox.fail_pending(),
        );
    }

    /// A handle whose inbox holds at most `capacity` requests waiting for admission.
    pub fn new(capacity: usize) -> Self {
        ChatQueue {
            inbox: Arc::new(Inbox::new(ChatInbox {
                queue: VecDeque::new(),
                waiting: 0,
                closed: false,
            })),
            capacity: capacity.max(1),
        }
    }

    /// Queues a request; `Full` when `capacity` requests already wait for admission.
    pub fn submit(&self, req: GenRequest) -> Result<(), SubmitError> {
        self.inbox.push(SubmitError::Closed, |inbox| {
            if inbox.queue.len() + inbox.waiting >= self.capacity {
                return Err(SubmitError::Full);
            }
            inbox.queue.push_back(req);
            Ok(())
        })
    }

    /// Stops the model thread after its current step.
    pub fn close(&self) {
        self.inbox.close();
    }
}

/// The model thread: owns the backend, the caches and the scheduler.
fn model_task<B: DecoderBackend>(
    shared: &Inbox<ChatInbox>,
    backend: B,
    cfg: SchedulerConfig,
    metrics: RunnerMetrics,
    watch: ModelWatch,
) {
    let mut sched: Scheduler<B> = Scheduler::new(cfg);
    loop {
        {
            let mut inbox = shared.lock();
            loop {
                sched_extend(&mut sched, &mut inbox.queue);
                if inbox.closed {
                    return;
                }
                if sched.has_work() {
                    break;
                }
                if !sched.is_idle() {
                    // Only finished streams whose clients read slowly: retry delivery soon
                    // instead of spinning.
                    inbox = shared.wait(inbox, DRAIN_POLL);
                    break;
                }
                watch.liveness.beat();
                inbox = shared.wait(inbox, IDLE_BEAT);
            }
            inbox.waiting = sched.waiting_len();
        }
        watch.before_work();
        let stats = sched.step(&backend);
        watch.liveness.beat();
        if let Some(e) = &stats.failed {
            tracing::error!(error = %e, "forward step failed");
        }
        metrics.record(&stats);
        shared.lock().waiting = sched.waiting_len();
    }
}

fn sched_extend<B: DecoderBackend>(sched: &mut Scheduler<B>, queue: &mut VecDeque<GenRequest>) {
    for req in queue.drain(..) {
        sched.add(req);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::sync::mpsc;

    use super::*;
    use crate::engine::chat::sampling::SamplingParams;
    use crate::engine::chat::scheduler::Event;
    use crate::engine::chat::testutil::{mix, FakeDecoder};

    fn req(max_tokens: usize) -> (GenRequest, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(64);
        (
            GenRequest {
                prompt: vec![1, 2],
                params: SamplingParams::default(),
                stop: Vec::new(),
                max_tokens,
                ignore_eos: false,
                events: tx,
                enqueued: Instant::now(),
                constraint: None,
                siblings: Vec::new(),
            },
            rx,
        )
    }

    #[test]
    fn inbox_is_bounded_and_the_thread_answers() {
        let q = ChatQueue::new(2);
        let (a, _ra) = req(1);
        let (b, _rb) = req(1);
        let (c, _rc) = req(1);
        assert!(q.submit(a).is_ok());
        assert!(q.submit(b).is_ok());
        assert_eq!(q.submit(c), Err(SubmitError::Full));

        let metrics = Metrics::new();
        let cfg = SchedulerConfig {
            max_num_seqs: 4,
            max_batch_tokens: 64,
            decode_prefill_tokens: 64,
            kv_budget_tokens: 1000,
            prefix_block_tokens: 0,
        };
        let q = ChatQueue::start(
            FakeDecoder::new(mix),
            cfg,
            8,
            RunnerMetrics {
                metrics: metrics.clone(),
                model: "m".into(),
            },
            ModelWatch::default(),
        );
        let (a, mut ra) = req(5);
        q.submit(a).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = false;
        while Instant::now() < deadline && !done {
            match ra.try_recv() {
                Ok(Event::Finished {
                    completion_tokens, ..
                }) => {
                    assert_eq!(completion_tokens, 5);
                    done = true;
                }
                Ok(_) => {}
                Err(_) => std::thread::yield_now(),
            }
        }
        assert!(done, "no answer from the model thread");
        q.close();
        let text = metrics.render();
        assert!(
            text.contains("trident_generated_tokens_total{kind=\"chat\",model=\"m\"} 5"),
            "{text}"
        );
    }
}
