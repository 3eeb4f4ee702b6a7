//! Activations quantised to 8 bits in blocks of 32 (the `Q8_1` idea of ggml): the left-hand
//! operand of the quantised mat-mul kernels in [`super::kernels`].
//!
//! Each block keeps its scale `d` and `s = d * Σq` (needed by formats with a per-block minimum,
//! such as `Q4_1`), both in f32. The values are stored in the kernels' interleaved layout
//! ([`super::kernels::slot`]).

use super::kernels::slot;

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
        #[cfg(target_arch = "x86_64")]
        if crate::models::kernels::has_avx512() {
            // SAFETY: the CPU has AVX-512 F/BW/VL; the buffers were sized above.
            unsafe { x86::quantize_blocks(x, &mut self.qs, &mut self.d, &mut self.s, cols) };
            return;
        }
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

/// Where the values of block `b` (counting over all rows of `cols`) go in the quantised
/// buffer: slice `j` (values `4j..4j + 4`) at `base + j · stride`.
#[inline]
fn block_slices(b: usize, cols: usize) -> (usize, usize) {
    let bpr = cols / QK;
    let (r, rb) = (b / bpr, b % bpr);
    let first = slot(bpr, rb, 0, QK);
    (r * cols + first, slot(bpr, rb, 4, QK) - first)
}

/// The blocks of `x` (rows of `cols`) into interleaved values `qs`, scales `d` and scaled
/// sums `s` (the portable form of [`x86::quantize_blocks`], which gives the same bytes).
fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], cols: usize) {
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
        let (base, stride) = block_slices(b, cols);
        for (j, q4) in qb.chunks_exact(4).enumerate() {
            qs[base + j * stride..base + j * stride + 4].copy_from_slice(q4);
        }
        d[b] = db;
        s[b] = db * s8.iter().sum::<i32>() as f32;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::QK;
    use std::arch::x86_64::*;

    /// [`super::quantize_blocks`] with one block in two registers: it runs before every
    /// quantised mat-mul, on one thread, so its cost adds to every step. Rounding is the
    /// same (to nearest, ties to even), so the bytes are the same.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; `x` holds whole blocks, `qs` as many bytes,
    /// `d` and `s` one value per block, and `cols` is a multiple of [`QK`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn quantize_blocks(
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        s: &mut [f32],
        cols: usize,
    ) {
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            // SAFETY: `xb` holds 32 floats; the stores below write 4 bytes at each of the
            // block's 8 slots, inside its row of `qs` (see # Safety).
            unsafe {
                let lo = _mm512_loadu_ps(xb.as_ptr());
                let hi = _mm512_loadu_ps(xb.as_ptr().add(16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
                let db = amax / 127.0;
                let id = _mm512_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
                let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, id));
                let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, id));
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
                let (base, stride) = super::block_slices(b, cols);
                let p = qs.as_mut_ptr().add(base);
                let bytes = [_mm512_cvtepi32_epi8(qlo), _mm512_cvtepi32_epi8(qhi)];
                for (h, v) in bytes.iter().enumerate() {
                    let mut four = [0i32; 4];
                    _mm_storeu_si128(four.as_mut_ptr() as *mut __m128i, *v);
                    for (j, w) in four.iter().enumerate() {
                        std::ptr::write_unaligned(p.add((4 * h + j) * stride) as *mut i32, *w);
                    }
                }
                d[b] = db;
                s[b] = db * sum as f32;
            }
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

    #[test]
    fn the_avx512_quantiser_gives_the_portable_bytes() {
        if !crate::models::kernels::has_avx512() {
            return;
        }
        // 3 rows of 40 blocks (two whole groups and a partial one), with ties and zeros.
        let (rows, cols) = (3, 40 * QK);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 255) as f32 - 127.0) * 0.013)
            .collect();
        x[..QK].iter_mut().for_each(|v| *v = 0.0);
        x[QK..2 * QK]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i as f32 - 16.0) * 0.5);
        let nb = rows * cols / QK;
        let (mut q1, mut d1, mut s1) = (vec![0i8; rows * cols], vec![0f32; nb], vec![0f32; nb]);
        let (mut q2, mut d2, mut s2) = (vec![1i8; rows * cols], vec![0f32; nb], vec![0f32; nb]);
        quantize_blocks(&x, &mut q1, &mut d1, &mut s1, cols);
        // SAFETY: the CPU has AVX-512 (checked above); the buffers are sized for `x`.
        unsafe { x86::quantize_blocks(&x, &mut q2, &mut d2, &mut s2, cols) };
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
        assert_eq!(s1, s2);
    }
}
