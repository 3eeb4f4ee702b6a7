//! The paged KV cache of the device decoder (`device::llama`): per layer one K and one V
//! buffer of `slots × kv_dim` rows on the device, shared by every sequence of the model and
//! handed out in blocks of [`BLOCK`] tokens, so a sequence holds only the blocks it has
//! filled (no worst-case reservation). A sequence keeps a block table; a step scatters its
//! new rows into their slots once per layer and gathers a whole batch's rows with one
//! `index_select`. The buffers grow by doubling when no block is free; blocks go back to the
//! pool when their sequence's cache is dropped.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

/// Tokens per block.
pub const BLOCK: usize = 16;

/// Blocks of the first allocation.
const FIRST_BLOCKS: usize = 64;

/// Every layer's K and V rows, and the free blocks.
#[derive(Debug)]
pub struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    blocks: usize,
    /// The most blocks the buffers may grow to (from the KV budget); unlimited before set.
    max_blocks: usize,
    free: Vec<u32>,
    layers: usize,
    kv_dim: usize,
    dtype: DType,
    device: Device,
}

/// The pool as the model and its caches share it.
pub type SharedPool = Arc<Mutex<KvPool>>;

impl KvPool {
    /// An empty pool; nothing is allocated before the first block is taken.
    pub fn new(layers: usize, kv_dim: usize, dtype: DType, device: &Device) -> Self {
        KvPool {
            k: Vec::new(),
            v: Vec::new(),
            blocks: 0,
            max_blocks: usize::MAX,
            free: Vec::new(),
            layers,
            kv_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Bounds the buffers by `bytes` of K and V over all layers (the engine's KV budget).
    pub fn set_budget(&mut self, bytes: usize) {
        let per_block = 2 * self.layers * self.kv_dim * BLOCK * self.dtype.size_in_bytes();
        self.max_blocks = (bytes / per_block.max(1)).max(1);
    }

    fn grow(&mut self) -> candle_core::Result<()> {
        let new = (2 * self.blocks).max(FIRST_BLOCKS).min(self.max_blocks);
        if new <= self.blocks {
            candle_core::bail!(
                "the KV cache is full ({} blocks of {BLOCK} tokens, the KV budget)",
                self.blocks
            );
        }
        let rows = new * BLOCK;
        let mut k = Vec::with_capacity(self.layers);
        let mut v = Vec::with_capacity(self.layers);
        for l in 0..self.layers {
            let (nk, nv) = (
                Tensor::zeros((rows, self.kv_dim), self.dtype, &self.device)?,
                Tensor::zeros((rows, self.kv_dim), self.dtype, &self.device)?,
            );
            if self.blocks > 0 {
                nk.slice_set(&self.k[l], 0, 0)?;
                nv.slice_set(&self.v[l], 0, 0)?;
            }
            k.push(nk);
            v.push(nv);
        }
        (self.k, self.v) = (k, v);
        // Highest first, so blocks are handed out in ascending order.
        self.free.extend((self.blocks as u32..new as u32).rev());
        self.blocks = new;
        Ok(())
    }

    /// Takes one free block, growing the buffers when none is left.
    pub fn take(&mut self) -> candle_core::Result<u32> {
        if self.free.is_empty() {
            self.grow()?;
        }
        Ok(self
            .free
            .pop()
            .expect("grow() added blocks. This is a bug."))
    }

    /// Gives blocks back.
    pub fn give_back(&mut self, blocks: &[u32]) {
        self.free.extend(blocks.iter().rev());
    }

    /// Blocks in use.
    pub fn used_blocks(&self) -> usize {
        self.blocks - self.free.len()
    }

    /// Writes rows `k`, `v` (`[n, kv_dim]`) of `layer` at the slots of `index`
    /// (`[n, kv_dim]`, every row filled with its slot).
    pub fn write(
        &self,
        layer: usize,
        index: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<()> {
        self.k[layer].scatter_set(index, &k.contiguous()?, 0)?;
        self.v[layer].scatter_set(index, &v.contiguous()?, 0)
    }

    /// The rows of `layer` at `slots` (`[m]`, u32): `([m, kv_dim], [m, kv_dim])`.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.k[layer].index_select(slots, 0)?,
            self.v[layer].index_select(slots, 0)?,
        ))
    }
}

/// One sequence's block table; its blocks return to the pool when it is dropped.
#[derive(Debug)]
pub struct BlockTable {
    pool: SharedPool,
    blocks: Vec<u32>,
}

impl BlockTable {
    /// An empty table on `pool`.
    pub fn new(pool: &SharedPool) -> Self {
        BlockTable {
            pool: pool.clone(),
            blocks: Vec::new(),
        }
    }

    /// Whether this table takes its blocks from `pool`.
    pub fn is_on(&self, pool: &SharedPool) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }

    /// Makes room for `tokens` positions, taking blocks from `pool` (the caller's lock on
    /// this table's pool).
    pub fn reserve(&mut self, pool: &mut KvPool, tokens: usize) -> candle_core::Result<()> {
        while self.blocks.len() * BLOCK < tokens {
            self.blocks.push(pool.take()?);
        }
        Ok(())
    }

    /// The slot of position `pos` (reserved before).
    pub fn slot(&self, pos: usize) -> u32 {
        self.blocks[pos / BLOCK] * BLOCK as u32 + (pos % BLOCK) as u32
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.lock() {
            p.give_back(&self.blocks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_and_rows_survive_growth() {
        let dev = Device::Cpu;
        let pool: SharedPool = Arc::new(Mutex::new(KvPool::new(1, 2, DType::F32, &dev)));
        let mut a = BlockTable::new(&pool);
        {
            let mut p = pool.lock().unwrap();
            a.reserve(&mut p, 3).unwrap();
            assert_eq!(p.used_blocks(), 1);
            let slots = [a.slot(0), a.slot(1), a.slot(2)];
            let idx: Vec<u32> = slots.iter().flat_map(|&s| [s, s]).collect();
            let idx = Tensor::from_vec(idx, (3, 2), &dev).unwrap();
            let rows = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (3, 2), &dev).unwrap();
            p.write(0, &idx, &rows, &rows).unwrap();
            // Enough blocks to force two doublings; the rows written before must stay.
            a.reserve(&mut p, FIRST_BLOCKS * BLOCK * 3).unwrap();
            let back = Tensor::from_vec(slots.to_vec(), 3, &dev).unwrap();
            let (k, _) = p.gather(0, &back).unwrap();
            assert_eq!(
                k.to_vec2::<f32>().unwrap(),
                vec![vec![1., 2.], vec![3., 4.], vec![5., 6.]]
            );
        }
        let used = pool.lock().unwrap().used_blocks();
        assert_eq!(used, 3 * FIRST_BLOCKS);
        drop(a);
        assert_eq!(pool.lock().unwrap().used_blocks(), 0);
        let mut b = BlockTable::new(&pool);
        b.reserve(&mut pool.lock().unwrap(), 1).unwrap();
        assert_eq!(b.slot(5), 5, "the lowest block is handed out first");
    }

    #[test]
    fn the_budget_bounds_growth() {
        let dev = Device::Cpu;
        let mut p = KvPool::new(2, 4, DType::F32, &dev);
        // 10 blocks: 2 layers × (K + V) × 4 floats × 16 tokens × 4 bytes each.
        p.set_budget(10 * 2 * 2 * 4 * BLOCK * 4);
        for _ in 0..10 {
            p.take().unwrap();
        }
        let err = p.take().unwrap_err().to_string();
        assert!(err.contains("KV cache is full"), "{err}");
    }
}
