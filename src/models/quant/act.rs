//! Activations quantised to 8 bits in blocks of 32 (the `Q8_1` idea of ggml): the left-hand
//! operand of the quantised mat-mul kernels in [`super::kernels`].
//!
//! Each block keeps its scale `d` and `s = d * Σq` (needed by formats with a per-block minimum,
//! such as `Q4_1`), both in f32. The values are stored in the kernels' interleaved layout
//! ([`super::kernels::slot`]).

use super::kernels::slot;
use crate::models::kernels::multiversion;

/// Elements per quantisation block.
pub const QK: usize = 32;

/// `rows × cols` activations quantised block-wise; `cols` is a multiple of [`QK`].
#[derive(Debug, Default)]
pub struct Q8Act {
    pub rows: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl Q8Act {
    /// Quantises `x` (`rows × cols`, row-major) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        debug_assert_eq!(x.len(), rows * cols);
        debug_assert_eq!(cols % QK, 0);
        let nb = rows * cols / QK;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        quantize_blocks(x, &mut self.qs, &mut self.d, &mut self.s, cols);
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / QK
    }

    /// Element `i` of row `r`, quantised.
    pub fn value(&self, r: usize, i: usize) -> i8 {
        self.qs[r * self.cols + slot(self.blocks_per_row(), i / QK, i % QK, QK)]
    }

    /// The quantised values (interleaved), scales and scaled sums of row `r`.
    pub fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        let nb = self.blocks_per_row();
        (
            &self.qs[r * self.cols..(r + 1) * self.cols],
            &self.d[r * nb..(r + 1) * nb],
            &self.s[r * nb..(r + 1) * nb],
        )
    }
}

multiversion! {
    /// The blocks of `x` (rows of `cols`) into interleaved values `qs`, scales `d` and scaled
    /// sums `s`; compiled for AVX-512 where the CPU has it (it runs before every quantised
    /// mat-mul, on one thread).
    fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], cols: usize) {
        let bpr = cols / QK;
        let mut qb = [0i8; QK];
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            // Lane-wise maxima and sums so the loops vectorise.
            let mut m8 = [0f32; 8];
            for c in xb.chunks_exact(8) {
                for (m, v) in m8.iter_mut().zip(c) {
                    *m = m.max(v.abs());
                }
            }
            let amax = m8.iter().fold(0f32, |a, b| a.max(*b));
            let db = amax / 127.0;
            let id = if db > 0.0 { 1.0 / db } else { 0.0 };
            let mut s8 = [0i32; 8];
            for (qc, xc) in qb.chunks_exact_mut(8).zip(xb.chunks_exact(8)) {
                for ((q, v), sum) in qc.iter_mut().zip(xc).zip(s8.iter_mut()) {
                    // Round to nearest (ties to even) by the 1.5·2²³ trick; |v·id| ≤ 127.
                    let r = ((v * id + 12_582_912.0) - 12_582_912.0) as i32;
                    *q = r as i8;
                    *sum += r;
                }
            }
            // Slice j (4 values) of block rb goes to slot(.., 4j); the slices are `stride` apart.
            let (r, rb) = (b / bpr, b % bpr);
            let row = &mut qs[r * cols..(r + 1) * cols];
            let base = slot(bpr, rb, 0, QK);
            let stride = slot(bpr, rb, 4, QK) - base;
            for (j, q4) in qb.chunks_exact(4).enumerate() {
                row[base + j * stride..base + j * stride + 4].copy_from_slice(q4);
            }
            d[b] = db;
            s[b] = db * s8.iter().sum::<i32>() as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_roundtrip_is_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.31)
            .collect();
        let mut a = Q8Act::default();
        a.quantize(&x, 1, 64);
        let (_, d, s) = a.row(0);
        for (i, v) in x.iter().enumerate() {
            let back = a.value(0, i) as f32 * d[i / QK];
            assert!(
                (back - v).abs() <= d[i / QK] * 0.5 + 1e-6,
                "{i}: {back} vs {v}"
            );
        }
        let sum0: f32 = x[..32].iter().sum();
        assert!((s[0] - sum0).abs() < 0.2, "{} vs {sum0}", s[0]);
    }
}
