//! Tensor parallelism: one decoder split across several devices, Megatron-style
//! (`DeviceLlama::from_llama_shard`). Each rank is a thread of the engine process that owns
//! its device, its shard and its share of every KV cache (its own pool, with the shard's KV
//! heads); the scheduler and the sampler stay single, on the caller's thread.
//!
//! A step hands every rank the step's tokens and that rank's caches (moved, so no borrow
//! crosses threads), the ranks run their shard's forward pass at once, meeting in the
//! collectives of their [`Communicator`], and hand the caches back with the logits; rank 0's
//! logits are the model's. A rank whose step fails aborts its group so no rank waits for it,
//! and the CPU group is reset before the next step.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{DType, Device};

use super::comm::{CommFactory, CpuGroup};
use super::kv::{BlockTable, SharedPool};
use super::llama::{DeviceCache, DeviceLlama, DeviceStep, Shard};
use crate::models::llama::{check_tokens, DecoderConfig, Llama};
use crate::models::ModelError;

/// One sequence's KV cache on a tensor-parallel model: one [`DeviceCache`] per rank.
#[derive(Debug)]
pub struct TpCache {
    /// Rank order; empty while the caches are out on a step that did not bring them back.
    ranks: Vec<DeviceCache>,
}

impl TpCache {
    /// Number of tokens cached.
    pub fn len(&self) -> usize {
        self.ranks.first().map_or(0, |c| c.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sequence's part of a [`TpLlama::step`].
pub struct TpStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut TpCache,
}

struct Job {
    tokens: Vec<Vec<u32>>,
    caches: Vec<DeviceCache>,
}

type Reply = (Vec<DeviceCache>, Result<Vec<Vec<f32>>, ModelError>);

struct Rank {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<Reply>,
    pool: SharedPool,
    thread: Option<JoinHandle<()>>,
}

/// A decoder split over `world` ranks.
pub struct TpLlama {
    pub cfg: DecoderConfig,
    dtype: DType,
    ranks: Vec<Rank>,
    /// The CPU group, reset after an aborted step (NCCL groups have nothing to reset).
    cpu_group: Option<Arc<CpuGroup>>,
}

impl TpLlama {
    /// Splits `m` over `devices` (rank `r` on `devices[r]`), dense weights in `dtype`. CPU
    /// devices share a [`CpuGroup`]; CUDA devices an NCCL group.
    pub fn new(m: &Llama, devices: &[Device], dtype: DType) -> Result<Self, ModelError> {
        let world = devices.len();
        if world < 2 {
            return Err(ModelError::Unsupported(
                "tensor parallelism needs at least two ranks".into(),
            ));
        }
        let (factories, cpu_group) = if devices.iter().all(Device::is_cpu) {
            let (f, g) = super::comm::cpu_factories(world);
            (f, Some(g))
        } else {
            (cuda_factories(devices)?, None)
        };
        let mut ranks = Vec::with_capacity(world);
        let mut ready = Vec::with_capacity(world);
        for (r, (device, factory)) in devices.iter().zip(factories).enumerate() {
            let shard = DeviceLlama::from_llama_shard(m, device, dtype, Shard { rank: r, world })?;
            let (rank, up) = spawn_rank(shard, factory, r)?;
            ranks.push(rank);
            ready.push(up);
        }
        // Only now: NCCL ranks join their group together, each blocking until all have.
        for (r, up) in ready.into_iter().enumerate() {
            up.recv().map_err(|_| {
                ModelError::Unsupported(format!("tensor-parallel rank {r} stopped while starting"))
            })??;
        }
        let dtype = DeviceLlama::dtype_for(m, dtype);
        Ok(TpLlama {
            cfg: m.cfg.clone(),
            dtype,
            ranks,
            cpu_group,
        })
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// The dtype of activations and of the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bounds every rank's KV pool by `bytes` (the engine's KV budget, split evenly).
    pub fn set_kv_budget(&self, bytes: usize) {
        for r in &self.ranks {
            r.pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_budget(bytes / self.ranks.len());
        }
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> TpCache {
        TpCache {
            ranks: self
                .ranks
                .iter()
                .map(|r| DeviceCache::on_pool(BlockTable::new(&r.pool)))
                .collect(),
        }
    }

    /// Appends each item's tokens to its cache on every rank; the logits of each item's last
    /// token. Bad input is refused here, before any rank sees it, and leaves every cache
    /// unchanged.
    pub fn step(&self, items: &mut [TpStep<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        for (i, it) in items.iter().enumerate() {
            if it.cache.ranks.len() != self.ranks.len() {
                return Err(ModelError::Input(
                    "this cache was lost in a failed step or belongs to another model".into(),
                ));
            }
            check_tokens(&self.cfg, i, it.tokens, it.cache.len())?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let world = self.ranks.len();
        let mut per_rank: Vec<Vec<DeviceCache>> = (0..world)
            .map(|_| Vec::with_capacity(items.len()))
            .collect();
        for it in items.iter_mut() {
            for (r, c) in std::mem::take(&mut it.cache.ranks).into_iter().enumerate() {
                per_rank[r].push(c);
            }
        }
        let tokens: Vec<Vec<u32>> = items.iter().map(|it| it.tokens.to_vec()).collect();
        let mut sent = Vec::with_capacity(world);
        for (rank, caches) in self.ranks.iter().zip(per_rank) {
            let job = Job {
                tokens: tokens.clone(),
                caches,
            };
            sent.push(rank.jobs.send(job).is_ok());
        }
        let mut back: Vec<Option<Vec<DeviceCache>>> = Vec::with_capacity(world);
        let mut result = None;
        let mut failed = None;
        for (r, (rank, ok)) in self.ranks.iter().zip(sent).enumerate() {
            let reply = if ok { rank.replies.recv().ok() } else { None };
            match reply {
                Some((caches, logits)) => {
                    back.push(Some(caches));
                    match logits {
                        Ok(l) if r == 0 => result = Some(l),
                        Ok(_) => {}
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                None => {
                    back.push(None);
                    failed.get_or_insert(ModelError::Unsupported(format!(
                        "tensor-parallel rank {r} has stopped"
                    )));
                }
            }
        }
        if back.iter().all(Option::is_some) {
            let mut iters: Vec<_> = back.into_iter().flatten().map(Vec::into_iter).collect();
            for it in items.iter_mut() {
                it.cache.ranks = iters.iter_mut().filter_map(Iterator::next).collect();
            }
        }
        if let Some(e) = failed {
            if let Some(g) = &self.cpu_group {
                g.reset();
            }
            return Err(e);
        }
        Ok(result.expect("rank 0 replied with logits. This is a bug."))
    }
}

impl Drop for TpLlama {
    fn drop(&mut self) {
        for r in &mut self.ranks {
            // Closing the job channel ends the rank's loop.
            let (tx, _) = mpsc::channel();
            drop(std::mem::replace(&mut r.jobs, tx));
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Starts rank `r`'s thread: it makes its communicator (the returned channel says whether
/// that worked), then runs steps until the job channel closes.
fn spawn_rank(
    shard: DeviceLlama,
    factory: CommFactory,
    r: usize,
) -> Result<(Rank, mpsc::Receiver<Result<(), ModelError>>), ModelError> {
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (reply_tx, replies) = mpsc::channel::<Reply>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ModelError>>();
    let pool = shard.kv_pool().clone();
    let thread = std::thread::Builder::new()
        .name(format!("trident-tp-rank-{r}"))
        .spawn(move || {
            let comm = match factory() {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok(Job { tokens, mut caches }) = job_rx.recv() {
                let mut steps: Vec<DeviceStep<'_>> = tokens
                    .iter()
                    .zip(caches.iter_mut())
                    .map(|(t, cache)| DeviceStep { tokens: t, cache })
                    .collect();
                let out = shard.step_with(&mut steps, Some(&*comm));
                drop(steps);
                if out.is_err() {
                    comm.abort();
                }
                if reply_tx.send((caches, out)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| {
            ModelError::Unsupported(format!("cannot start tensor-parallel rank {r}: {e}"))
        })?;
    let rank = Rank {
        jobs,
        replies,
        pool,
        thread: Some(thread),
    };
    Ok((rank, ready_rx))
}

#[cfg(feature = "cuda")]
fn cuda_factories(devices: &[Device]) -> Result<Vec<CommFactory>, ModelError> {
    if !devices.iter().all(Device::is_cuda) {
        return Err(ModelError::Unsupported(
            "tensor-parallel ranks must all be CUDA devices or all the CPU".into(),
        ));
    }
    Ok(super::comm::nccl_factories(devices)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_factories(_: &[Device]) -> Result<Vec<CommFactory>, ModelError> {
    Err(ModelError::Unsupported(
        "this trident binary was built without the `cuda` feature".into(),
    ))
}
