//! bf16 weights × f32 activations with AVX512_BF16 (`vdpbf16ps`), f32 accumulation.
//!
//! Weights are packed once at load into 64-column panels of bf16 pairs:
//! `panel[p][k/2][64]` where each `u32` holds `(W[o][k], W[o][k+1])`. Activations are
//! rounded to bf16 pairs per call. A 6-row × 64-column register tile accumulates
//! 32 MACs per instruction. Without AVX512_BF16 a scalar path computes the same
//! products (slowly); the loader only chooses bf16 when the CPU has it.

use std::cell::RefCell;

use rayon::prelude::*;

use super::SharedMut;

thread_local! {
    /// Activations rounded to bf16 pairs, reused between calls on the same thread.
    static XB: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Rounds `rows` rows of `in_f` floats into bf16 pairs (`kp = ceil(in_f/2)` per row).
fn convert_rows(x: &[f32], rows: usize, in_f: usize, xb: &mut [u32]) {
    let kp = in_f.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if supported() && in_f.is_multiple_of(32) {
        // SAFETY: CPU features checked; slices sized rows*in_f and rows*kp.
        unsafe { avx::convert(x, xb) };
        return;
    }
    for r in 0..rows {
        let row = &x[r * in_f..(r + 1) * in_f];
        let out = &mut xb[r * kp..(r + 1) * kp];
        for (k, o) in out.iter_mut().enumerate() {
            let lo = to_bf16(row[2 * k]);
            let hi = if 2 * k + 1 < in_f {
                to_bf16(row[2 * k + 1])
            } else {
                0
            };
            *o = lo | (hi << 16);
        }
    }
}

const NR: usize = 64;
const MR: usize = 6;
const ROW_CHUNK: usize = 96;

/// Rounds an f32 to bf16 bits (round to nearest even).
#[inline(always)]
fn to_bf16(x: f32) -> u32 {
    let b = x.to_bits();
    (b + 0x7FFF + ((b >> 16) & 1)) >> 16
}

#[inline(always)]
fn from_bf16(b: u32) -> f32 {
    f32::from_bits(b << 16)
}

/// Whether the CPU runs the AVX512_BF16 kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::has_avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix `[out, in]` packed for the bf16 kernel.
pub struct PackedBf16 {
    out_f: usize,
    kp: usize,
    panels: usize,
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Packs a PyTorch-layout weight `[out, in]`.
    pub fn pack(w: &[f32], out_f: usize, in_f: usize) -> Self {
        let kp = in_f.div_ceil(2);
        let panels = out_f.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        for o in 0..out_f {
            let (p, c) = (o / NR, o % NR);
            for k in 0..kp {
                let lo = to_bf16(w[o * in_f + 2 * k]);
                let hi = if 2 * k + 1 < in_f {
                    to_bf16(w[o * in_f + 2 * k + 1])
                } else {
                    0
                };
                data[(p * kp + k) * NR + c] = lo | (hi << 16);
            }
        }
        PackedBf16 {
            out_f,
            kp,
            panels,
            data,
        }
    }

    /// `dst[rows, out] += x[rows, in] · Wᵀ`, bf16 products with f32 accumulation.
    pub fn matmul_acc(&self, x: &[f32], rows: usize, dst: &mut [f32], threads: usize) {
        let in_f = x.len() / rows.max(1);
        let kp = self.kp;
        XB.with(|cell| {
            let mut xb = cell.borrow_mut();
            if xb.len() < rows * kp {
                xb.resize(rows * kp, 0);
            }
            convert_rows(&x[..rows * in_f], rows, in_f, &mut xb[..rows * kp]);
            self.run(&xb[..rows * kp], rows, dst, threads);
        });
    }

    fn run(&self, xb: &[u32], rows: usize, dst: &mut [f32], threads: usize) {
        let kp = self.kp;
        let chunks = rows.div_ceil(ROW_CHUNK);
        let tasks = chunks * self.panels;
        let dptr = SharedMut::new(dst);
        let run = |t: usize| {
            let (c, p) = (t / self.panels, t % self.panels);
            let r0 = c * ROW_CHUNK;
            let r1 = (r0 + ROW_CHUNK).min(rows);
            let cols = (self.out_f - p * NR).min(NR);
            let w = &self.data[p * kp * NR..(p + 1) * kp * NR];
            let mut r = r0;
            while r < r1 {
                let mr = (r1 - r).min(MR);
                let xs = &xb[r * kp..(r + mr) * kp];
                // SAFETY: tile rows r..r+mr, columns p*NR..p*NR+cols are in bounds of dst
                // and written by this task only.
                unsafe {
                    let d = dptr.get().add(r * self.out_f + p * NR);
                    tile(xs, mr, kp, w, d, self.out_f, cols);
                }
                r += mr;
            }
        };
        if threads > 1 && tasks > 1 {
            (0..tasks).into_par_iter().for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    }
}

/// One `mr × cols` tile (`mr <= 6`, `cols <= 64`) accumulated into `d` (row stride `ld`).
///
/// # Safety
/// `d` must address `mr` rows of `cols` writable floats with stride `ld`.
unsafe fn tile(xs: &[u32], mr: usize, kp: usize, w: &[u32], d: *mut f32, ld: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: CPU features checked; bounds per the caller's contract.
        unsafe {
            match mr {
                6 => avx::tile::<6>(xs, kp, w, d, ld, cols),
                5 => avx::tile::<5>(xs, kp, w, d, ld, cols),
                4 => avx::tile::<4>(xs, kp, w, d, ld, cols),
                3 => avx::tile::<3>(xs, kp, w, d, ld, cols),
                2 => avx::tile::<2>(xs, kp, w, d, ld, cols),
                _ => avx::tile::<1>(xs, kp, w, d, ld, cols),
            }
        }
        return;
    }
    for r in 0..mr {
        for c in 0..cols {
            let mut acc = 0.0f32;
            for k in 0..kp {
                let (a, b) = (xs[r * kp + k], w[k * NR + c]);
                acc += from_bf16(a & 0xFFFF) * from_bf16(b & 0xFFFF)
                    + from_bf16(a >> 16) * from_bf16(b >> 16);
            }
            // SAFETY: in bounds per the caller's contract.
            unsafe { *d.add(r * ld + c) += acc };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::NR;
    use std::arch::x86_64::*;

    /// Rounds `x` to bf16 (nearest even) into consecutive pairs; `x.len()` is a multiple
    /// of 32 and `xb` holds `x.len() / 2` words.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn convert(x: &[f32], xb: &mut [u32]) {
        let n = x.len() / 32;
        let (src, dst) = (x.as_ptr(), xb.as_mut_ptr() as *mut __m512i);
        for i in 0..n {
            // SAFETY: 32 floats in, 16 words out per step, within the slices.
            unsafe {
                let a = _mm512_loadu_ps(src.add(32 * i));
                let b = _mm512_loadu_ps(src.add(32 * i + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                _mm512_storeu_si512(dst.add(i), v);
            }
        }
    }

    /// The AVX512_BF16 body of the outer [`tile`](super::tile): `M` rows of `xs` (bf16 pairs,
    /// `kp` per row) times one packed panel `w`, accumulated into `d`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and AVX512_BF16; `xs` holds `M * kp` words, `w`
    /// holds `kp * NR`, and `d` addresses `M` rows of `cols` (≤ 64) writable floats, stride `ld`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn tile<const M: usize>(
        xs: &[u32],
        kp: usize,
        w: &[u32],
        d: *mut f32,
        ld: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        let wp = w.as_ptr();
        let xp = xs.as_ptr();
        for k in 0..kp {
            // SAFETY: w holds kp*NR u32, xs holds M*kp u32.
            unsafe {
                let wk = wp.add(k * NR) as *const __m512i;
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wk));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wk.add(1)));
                let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(wk.add(2)));
                let b3: __m512bh = std::mem::transmute(_mm512_loadu_si512(wk.add(3)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let x: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*xp.add(r * kp + k) as i32));
                    a[0] = _mm512_dpbf16_ps(a[0], b0, x);
                    a[1] = _mm512_dpbf16_ps(a[1], b1, x);
                    a[2] = _mm512_dpbf16_ps(a[2], b2, x);
                    a[3] = _mm512_dpbf16_ps(a[3], b3, x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, v) in a.iter().enumerate() {
                let c0 = j * 16;
                if c0 >= cols {
                    break;
                }
                let n = (cols - c0).min(16);
                let mask: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                // SAFETY: masked to the `cols` valid columns of row r.
                unsafe {
                    let p = d.add(r * ld + c0);
                    let old = _mm512_maskz_loadu_ps(mask, p);
                    _mm512_mask_storeu_ps(p, mask, _mm512_add_ps(old, *v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_matmul_matches_f32_within_rounding() {
        for (o, i, r) in [(70, 33, 13), (130, 64, 7)] {
            let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.37).sin()).collect();
            let x: Vec<f32> = (0..r * i).map(|v| (v as f32 * 0.11).cos()).collect();
            let p = PackedBf16::pack(&w, o, i);
            let mut y = vec![1.0f32; r * o];
            p.matmul_acc(&x, r, &mut y, 2);
            for rr in 0..r {
                for oo in 0..o {
                    let want: f32 = 1.0
                        + (0..i)
                            .map(|ii| x[rr * i + ii] * w[oo * i + ii])
                            .sum::<f32>();
                    let tol = 0.02 * (1.0 + want.abs());
                    let got = y[rr * o + oo];
                    assert!(
                        (got - want).abs() < tol,
                        "{o}x{i} {rr},{oo}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
