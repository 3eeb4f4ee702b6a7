//! The chat engine: continuous batching over a decoder model.
//!
//! * `routes` — the HTTP handlers (chat completions, completions, tokenize, detokenize).
//! * `request` — sampling validation, prompt encoding, context-length check.
//! * `template` — the model's chat template (minijinja).
//! * `runner` — the model thread and the handlers' bounded inbox.
//! * `scheduler` — the plain continuous-batching state (waiting/running, KV budget).
//! * `prefix` — the prefix cache (shared KV blocks of prompt prefixes, LRU).
//! * `sampling`, `text` — token choice, incremental detokenisation, stop strings.
//! * `stream` — OpenAI response and SSE shapes.
//! * `backend` — the trait the scheduler drives, implemented by `DecoderModel`.

pub mod backend;
pub mod constraint;
pub mod logprobs;
pub mod prefix;
pub mod reasoning;
pub mod request;
pub mod routes;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod stream;
pub mod template;
#[cfg(test)]
pub(crate) mod testutil;
pub mod text;
pub mod tools;

use std::sync::{Arc, OnceLock};

use tokenizers::Tokenizer;

use super::common::{CardFacts, EngineCommon};
use crate::api::ApiError;
use crate::config::models::ReasoningParser;
use crate::config::ModelEntry;
use crate::models::decoder::{DecoderInfo, DecoderModel, StepItem};
use crate::models::ModelError;
use runner::{ChatQueue, RunnerMetrics};
use scheduler::SchedulerConfig;
use template::ChatTemplate;

pub use routes::routes;

/// Default KV cache budget on CPU (MiB) when the entry sets no `kv_cache_memory_mb`.
pub const DEFAULT_KV_CACHE_MB: usize = 1024;
/// Default sequences decoding at once.
pub const DEFAULT_MAX_NUM_SEQS: usize = 16;
/// Default tokens per forward step (decode tokens plus prefill chunks).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 256;
/// Prefill tokens per step while sequences decode, on the CPU path: there a step's cost is
/// about linear in its tokens, so a prompt chunk this size keeps a step that admits a
/// request within a small factor of a decode step (docs/ARCHITECTURE.md, chat engine). A
/// device step is nearly flat in tokens up to hundreds, so there the cap is the whole step.
pub const CPU_DECODE_PREFILL_TOKENS: usize = 32;
/// Default requests waiting for admission before 429.
pub const DEFAULT_MAX_QUEUE: usize = 256;

/// What the handlers need once the model is loaded.
pub struct ChatRuntime {
    pub tokenizer: Arc<Tokenizer>,
    pub info: DecoderInfo,
    pub template: ChatTemplate,
    pub queue: ChatQueue,
    /// Longest prompt + completion, tokens.
    pub max_model_len: usize,
    /// The scheduler's limits (the choices of one prompt must fit them together).
    pub scheduler: SchedulerConfig,
    /// `<think>…</think>` is returned as `reasoning_content`.
    pub reasoning: bool,
    /// The structured-output compiler, built on the first constrained request.
    pub grammars: OnceLock<Result<Arc<constraint::Grammars>, String>>,
}

impl ChatRuntime {
    /// Compiles a structured-output constraint (blocking: call off the async runtime).
    pub fn constraint(
        &self,
        spec: &constraint::ConstraintSpec,
        param: &str,
    ) -> Result<constraint::Constraint, crate::api::ApiError> {
        let grammars = self.grammars.get_or_init(|| {
            let eos = self.info.eos_token_ids.first().copied().unwrap_or(0);
            constraint::Grammars::new(self.tokenizer.clone(), self.info.vocab_size, eos)
                .map(Arc::new)
        });
        let grammars = grammars.as_ref().map_err(|e| {
            tracing::error!(error = %e, "structured output: the tokenizer cannot be used by the grammar engine");
            crate::api::ApiError::invalid_param(param, "structured output is not available for this model's tokenizer")
        })?;
        grammars.compile(spec).map_err(|e| {
            crate::api::ApiError::invalid_param(param, format!("'{param}' cannot be enforced: {e}"))
        })
    }
}

/// State of the chat routes.
#[derive(Clone)]
pub struct ChatState {
    pub common: EngineCommon<ChatRuntime>,
}

impl ChatState {
    pub fn new(common: EngineCommon<ChatRuntime>) -> Self {
        ChatState { common }
    }

    /// The runtime, or 503 unless the model is ready.
    pub fn runtime(&self) -> Result<Arc<ChatRuntime>, ApiError> {
        self.common.runtime()
    }
}

/// Limits derived from the entry and the loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    pub scheduler: SchedulerConfig,
    pub max_model_len: usize,
    pub max_queue: usize,
}

/// KV budget in bytes: on CUDA a share (`gpu_memory_utilization`) of the device's memory
/// left after loading the weights (per GPU: a tensor-parallel model has that on each of its
/// GPUs, measured on the first); on CPU `kv_cache_memory_mb`.
fn kv_budget_bytes(entry: &ModelEntry, cuda: bool) -> usize {
    if cuda {
        if let Some(b) = cuda_kv_bytes(entry.gpu_memory_utilization.unwrap_or(0.9)) {
            return b * entry.tensor_parallel_size.unwrap_or(1).max(1);
        }
    }
    entry.kv_cache_memory_mb.unwrap_or(DEFAULT_KV_CACHE_MB) * 1024 * 1024
}

#[cfg(feature = "cuda")]
fn cuda_kv_bytes(utilization: f64) -> Option<usize> {
    use nvml_wrapper::enums::device::UsedGpuMemory;
    // NVML numbers GPUs physically: the engine's device 0 is the first entry of the
    // CUDA_VISIBLE_DEVICES the supervisor set.
    let index = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| v.split(',').next().and_then(|s| s.trim().parse().ok()))
        .unwrap_or(0);
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let dev = nvml.device_by_index(index).ok()?;
    let mem = dev.memory_info().ok()?;
    // What this process holds already (weights, workspace); other processes on the GPU
    // have their own share of the utilisation.
    let pid = std::process::id();
    let ours = dev
        .running_compute_processes()
        .ok()
        .and_then(|ps| ps.into_iter().find(|p| p.pid == pid))
        .and_then(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b),
            UsedGpuMemory::Unavailable => None,
        })
        .unwrap_or(mem.used);
    let allowed = (mem.total as f64 * utilization) as u64;
    Some(allowed.saturating_sub(ours) as usize)
}

#[cfg(not(feature = "cuda"))]
fn cuda_kv_bytes(_utilization: f64) -> Option<usize> {
    None
}

/// Derives the scheduler limits: `max_model_len` is the entry's, capped by the model's
/// position limit and by what the KV budget can hold for one sequence; `device` says the
/// model runs on an accelerator rather than the CPU path.
pub fn limits(entry: &ModelEntry, info: &DecoderInfo, kv_bytes: usize, device: bool) -> ChatLimits {
    let kv_budget_tokens = kv_bytes / info.kv_bytes_per_token.max(1);
    let max_model_len = entry
        .max_model_len
        .unwrap_or(info.max_position_embeddings)
        .min(info.max_position_embeddings)
        .min(kv_budget_tokens)
        .max(1);
    let max_num_seqs = entry.max_num_seqs.unwrap_or(DEFAULT_MAX_NUM_SEQS).max(1);
    let max_batch_tokens = entry
        .max_batch_tokens
        .unwrap_or(DEFAULT_MAX_BATCH_TOKENS)
        .max(max_num_seqs);
    ChatLimits {
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_batch_tokens,
            decode_prefill_tokens: if device {
                max_batch_tokens
            } else {
                CPU_DECODE_PREFILL_TOKENS.min(max_batch_tokens)
            },
            kv_budget_tokens,
            prefix_block_tokens: if entry.prefix_cache {
                prefix::DEFAULT_BLOCK_TOKENS
            } else {
                0
            },
        },
        max_model_len,
        max_queue: entry.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
    }
}

/// Loads the model on a dedicated thread, runs a warm-up forward pass, reports ready and
/// then keeps that thread as the model thread. A panic while loading is a load failure;
/// one in the model loop stops the thread with every pending request failed.
pub fn start(entry: ModelEntry, state: ChatState) {
    std::thread::Builder::new()
        .name("chat-model".into())
        .spawn(move || {
            let common = state.common.clone();
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                common.watch.faults.on_load();
                load(&entry, &state)
            }));
            match loaded {
                Err(p) => super::load_panicked(&common, p.as_ref()),
                Ok(None) => {}
                Ok(Some((model, queue, cfg))) => {
                    let metrics = RunnerMetrics {
                        metrics: common.metrics.clone(),
                        model: common.id.to_string(),
                    };
                    metrics.zero();
                    queue.run(model, cfg, metrics, common.watch.clone());
                }
            }
        })
        .expect("spawning the model thread. This is a bug.");
}

/// Loads and warms the model and publishes the runtime; `None` when it failed (the status
/// says why).
fn load(
    entry: &ModelEntry,
    state: &ChatState,
) -> Option<(DecoderModel, ChatQueue, SchedulerConfig)> {
    let common = &state.common;
    let (model, cuda) = match super::loader::load_decoder(entry) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "model failed to load");
            common.set_failed(e.to_string());
            return None;
        }
    };
    if let Err(e) = warm_up(&model) {
        tracing::error!(error = %e, "warm-up forward pass failed");
        common.set_failed(format!("warm-up failed: {e}"));
        return None;
    }
    let info = model.info().clone();
    let template = match ChatTemplate::new(
        info.chat_template.as_deref(),
        info.bos_token.clone(),
        info.eos_token.clone(),
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "chat template");
            common.set_failed(e.to_string());
            return None;
        }
    };
    if template.is_fallback() {
        tracing::warn!("the model has no chat template; using ChatML");
    }
    let kv_bytes = kv_budget_bytes(entry, cuda);
    model.set_kv_budget(kv_bytes);
    let lim = limits(entry, &info, kv_bytes, cuda);
    let queue = ChatQueue::new(lim.max_queue);
    let runtime = ChatRuntime {
        tokenizer: Arc::new(model.tokenizer().clone()),
        info: info.clone(),
        template,
        queue: queue.clone(),
        max_model_len: lim.max_model_len,
        scheduler: lim.scheduler,
        reasoning: match entry.reasoning_parser {
            ReasoningParser::Auto => reasoning::template_reasons(info.chat_template.as_deref()),
            ReasoningParser::Think => true,
            ReasoningParser::None => false,
        },
        grammars: OnceLock::new(),
    };
    let facts = CardFacts {
        max_model_len: Some(lim.max_model_len),
        rerank_mode: None,
        dtype: Some(info.dtype.clone()),
    };
    common.set_ready(Arc::new(runtime), facts);
    tracing::info!(
        model = %common.id, dtype = %info.dtype, max_model_len = lim.max_model_len,
        kv_budget_tokens = lim.scheduler.kv_budget_tokens,
        max_num_seqs = lim.scheduler.max_num_seqs, "model ready"
    );
    if !info.sampling_defaults.is_empty() {
        tracing::info!(defaults = ?info.sampling_defaults, "sampling defaults from generation_config.json (a request's own values win)");
    }
    Some((model, queue, lim.scheduler))
}

/// One real forward pass before declaring readiness.
fn warm_up(model: &DecoderModel) -> Result<(), ModelError> {
    let ids = model
        .tokenizer()
        .encode("warm-up", false)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec();
    let ids = if ids.is_empty() { vec![0] } else { ids };
    let mut cache = model.new_sequence();
    let logits = model.step(&mut [StepItem {
        tokens: &ids,
        cache: &mut cache,
    }])?;
    if logits
        .first()
        .is_none_or(|l| l.iter().any(|x| !x.is_finite()))
    {
        return Err(ModelError::Input(
            "warm-up produced non-finite logits".into(),
        ));
    }
    Ok(())
}
