//! Collective operations between the ranks of a tensor-parallel model (`device::tp`): the
//! sum of every rank's partial result (after each row-parallel layer, and the vocabulary-
//! parallel embedding) and the concatenation of every rank's logits (the vocabulary-parallel
//! LM head).
//!
//! Two implementations: [`CpuGroup`] (threads of one process meeting at an abortable
//! barrier around shared buffers), which lets `tensor_parallel_size` run on the CPU and
//! proves the sharding in CI; and, with the `cuda` feature, NCCL through cudarc
//! (`NcclComm`), one communicator per GPU, created on that rank's thread.

use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Tensor};

/// One rank's handle on its group's collectives. Every rank of the group must call the same
/// collectives in the same order with tensors of the same shape.
pub trait Communicator {
    /// This rank's index, `0..world()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world(&self) -> usize;

    /// The element-wise sum of every rank's `x` (f32), on every rank.
    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Every rank's `x` (`[rows, cols]`, f32) side by side, rank order: `[rows, world * cols]`.
    fn all_gather_cols(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Wakes every rank waiting in a collective with an error: called by a rank whose step
    /// failed, so the others do not wait for it forever.
    fn abort(&self);
}

/// Where a rank's communicator comes from: made on the rank's own thread (NCCL needs every
/// rank to join at once, each on its own thread).
pub type CommFactory =
    Box<dyn FnOnce() -> candle_core::Result<Box<dyn Communicator>> + Send + 'static>;

/// The shared state of a CPU group: one buffer per rank and a barrier that can be aborted.
#[derive(Debug)]
pub struct CpuGroup {
    world: usize,
    state: Mutex<GroupState>,
    turn: Condvar,
}

#[derive(Debug)]
struct GroupState {
    bufs: Vec<Vec<f32>>,
    /// Ranks arrived at the current barrier.
    arrived: usize,
    /// Barriers completed; a waiter leaves when it changes.
    generation: u64,
    aborted: bool,
}

impl CpuGroup {
    /// A group of `world` ranks.
    pub fn new(world: usize) -> Arc<Self> {
        Arc::new(CpuGroup {
            world,
            state: Mutex::new(GroupState {
                bufs: vec![Vec::new(); world],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            turn: Condvar::new(),
        })
    }

    /// Rank `rank`'s communicator on this group.
    pub fn comm(self: &Arc<Self>, rank: usize) -> CpuComm {
        assert!(
            rank < self.world,
            "rank {rank} of {}. This is a bug.",
            self.world
        );
        CpuComm {
            group: self.clone(),
            rank,
        }
    }

    /// Clears an abort once every rank has left its step, so the group can run again.
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.aborted = false;
        s.arrived = 0;
        s.generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every rank has arrived (or the group is aborted).
    fn barrier<'a>(
        &self,
        mut s: std::sync::MutexGuard<'a, GroupState>,
    ) -> candle_core::Result<std::sync::MutexGuard<'a, GroupState>> {
        if s.aborted {
            candle_core::bail!("tensor-parallel step aborted by another rank");
        }
        s.arrived += 1;
        if s.arrived == self.world {
            s.arrived = 0;
            s.generation += 1;
            self.turn.notify_all();
            return Ok(s);
        }
        let gen = s.generation;
        while s.generation == gen && !s.aborted {
            s = self.turn.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.aborted {
            candle_core::bail!("tensor-parallel step aborted by another rank");
        }
        Ok(s)
    }

    /// Puts `data` in `rank`'s buffer, waits for every rank, computes `f` over all buffers,
    /// and waits again so no buffer is overwritten before every rank has read them.
    fn exchange<T>(
        &self,
        rank: usize,
        data: Vec<f32>,
        f: impl FnOnce(&[Vec<f32>]) -> T,
    ) -> candle_core::Result<T> {
        let mut s = self.lock();
        s.bufs[rank] = data;
        let s = self.barrier(s)?;
        let out = f(&s.bufs);
        drop(self.barrier(s)?);
        Ok(out)
    }
}

/// A rank of a [`CpuGroup`].
#[derive(Debug)]
pub struct CpuComm {
    group: Arc<CpuGroup>,
    rank: usize,
}

fn host_f32(x: &Tensor) -> candle_core::Result<Vec<f32>> {
    x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Communicator for CpuComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.group.world
    }

    fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let sum = self.group.exchange(self.rank, host_f32(x)?, |bufs| {
            // Every rank sums in rank order, so all of them hold the same bits.
            let mut sum = bufs[0].clone();
            for b in &bufs[1..] {
                for (s, v) in sum.iter_mut().zip(b) {
                    *s += v;
                }
            }
            sum
        })?;
        Tensor::from_vec(sum, x.shape(), x.device())
    }

    fn all_gather_cols(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, cols) = x.dims2()?;
        let world = self.group.world;
        let all = self.group.exchange(self.rank, host_f32(x)?, |bufs| {
            let mut out = Vec::with_capacity(rows * cols * world);
            for r in 0..rows {
                for b in bufs {
                    out.extend_from_slice(&b[r * cols..(r + 1) * cols]);
                }
            }
            out
        })?;
        Tensor::from_vec(all, (rows, world * cols), x.device())
    }

    fn abort(&self) {
        let mut s = self.group.lock();
        s.aborted = true;
        self.group.turn.notify_all();
    }
}

/// A factory per rank for a CPU group of `world` ranks, and the group (to reset it).
pub fn cpu_factories(world: usize) -> (Vec<CommFactory>, Arc<CpuGroup>) {
    let group = CpuGroup::new(world);
    let factories = (0..world)
        .map(|r| {
            let comm = group.comm(r);
            Box::new(move || Ok(Box::new(comm) as Box<dyn Communicator>)) as CommFactory
        })
        .collect();
    (factories, group)
}

#[cfg(feature = "cuda")]
pub use nccl::{nccl_factories, NcclComm};

#[cfg(feature = "cuda")]
mod nccl {
    //! NCCL collectives on candle CUDA tensors, as candle custom ops (the op runs on the
    //! rank's stream, so it is ordered with the rank's kernels).
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

    use super::{CommFactory, Communicator};

    /// One rank's NCCL communicator on its GPU.
    pub struct NcclComm {
        comm: Comm,
    }

    impl NcclComm {
        /// Joins the group `id` as `rank` of `world` on `device` (blocks until every rank
        /// has joined, so each rank calls it on its own thread).
        pub fn join(
            device: &Device,
            rank: usize,
            world: usize,
            id: Id,
        ) -> candle_core::Result<Self> {
            let Device::Cuda(dev) = device else {
                candle_core::bail!("NCCL needs a CUDA device, not {device:?}");
            };
            let comm = Comm::from_rank(dev.cuda_stream(), rank, world, id)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL init of rank {rank}: {e:?}")))?;
            Ok(NcclComm { comm })
        }
    }

    struct AllReduce<'a>(&'a Comm);
    struct AllGather<'a>(&'a Comm);

    fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("NCCL: {e:?}"))
    }

    impl CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce on a CPU tensor")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL all-reduce of a non-contiguous tensor")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            let dev = s.device().clone();
            let mut dst = dev.alloc_zeros::<f32>(end - start)?;
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(nccl_err)?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }

    impl CustomOp1 for AllGather<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-gather"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-gather on a CPU tensor")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL all-gather of a non-contiguous tensor")
            };
            let world = self.0.world_size();
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            let dev = s.device().clone();
            let mut dst = dev.alloc_zeros::<f32>((end - start) * world)?;
            self.0.all_gather(&src, &mut dst).map_err(nccl_err)?;
            let mut dims = vec![world];
            dims.extend_from_slice(l.dims());
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), Shape::from(dims)))
        }
    }

    impl Communicator for NcclComm {
        fn rank(&self) -> usize {
            self.comm.rank()
        }

        fn world(&self) -> usize {
            self.comm.world_size()
        }

        fn all_reduce(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            x.contiguous()?.apply_op1_no_bwd(&AllReduce(&self.comm))
        }

        fn all_gather_cols(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            let (rows, cols) = x.dims2()?;
            // NCCL stacks the ranks first: [world, rows, cols] -> [rows, world * cols].
            x.contiguous()?
                .apply_op1_no_bwd(&AllGather(&self.comm))?
                .transpose(0, 1)?
                .reshape((rows, self.world() * cols))
        }

        fn abort(&self) {
            // A rank that failed mid-step leaves the others inside NCCL kernels; the engine's
            // liveness watchdog ends the process and the supervisor restarts it.
        }
    }

    /// A factory per GPU rank (`devices[r]` is rank `r`'s device), all on one new NCCL id.
    pub fn nccl_factories(devices: &[Device]) -> candle_core::Result<Vec<CommFactory>> {
        let id = Id::new().map_err(nccl_err)?;
        let world = devices.len();
        Ok(devices
            .iter()
            .enumerate()
            .map(|(r, d)| {
                let d = d.clone();
                Box::new(move || {
                    Ok(Box::new(NcclComm::join(&d, r, world, id)?) as Box<dyn Communicator>)
                }) as CommFactory
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run<T: Send>(world: usize, f: impl Fn(CpuComm) -> T + Sync) -> Vec<T> {
        let group = CpuGroup::new(world);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..world)
                .map(|r| {
                    let c = group.comm(r);
                    let f = &f;
                    s.spawn(move || f(c))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sums_and_all_gather_concatenates_in_rank_order() {
        let out = run(3, |c| {
            let r = c.rank() as f32;
            let x = Tensor::from_vec(vec![r, 10.0 * r], (1, 2), &Device::Cpu).unwrap();
            let mut got = Vec::new();
            // Several rounds: buffers must not be overwritten before everyone has read.
            for _ in 0..50 {
                got.push(c.all_reduce(&x).unwrap().to_vec2::<f32>().unwrap());
                got.push(c.all_gather_cols(&x).unwrap().to_vec2::<f32>().unwrap());
            }
            got
        });
        for rank in &out {
            for pair in rank.chunks(2) {
                assert_eq!(pair[0], vec![vec![3.0, 30.0]]);
                assert_eq!(pair[1], vec![vec![0.0, 0.0, 1.0, 10.0, 2.0, 20.0]]);
            }
        }
    }

    #[test]
    fn an_aborted_group_wakes_every_waiter_with_an_error_and_can_run_again() {
        let group = CpuGroup::new(3);
        let x = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|r| {
                    let (c, x) = (group.comm(r), x.clone());
                    s.spawn(move || c.all_reduce(&x).map(|_| ()))
                })
                .collect();
            // Rank 2 fails before its collective and aborts instead of joining.
            std::thread::sleep(std::time::Duration::from_millis(50));
            group.comm(2).abort();
            for w in waiters {
                let err = w.join().unwrap().unwrap_err().to_string();
                assert!(err.contains("aborted"), "{err}");
            }
        });
        group.reset();
        let out = run_on(&group, &x);
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    }

    fn run_on(group: &Arc<CpuGroup>, x: &Tensor) -> Vec<candle_core::Result<Tensor>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..group.world)
                .map(|r| {
                    let (c, x) = (group.comm(r), x.clone());
                    s.spawn(move || c.all_reduce(&x))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}
