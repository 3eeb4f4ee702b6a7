//! f32 weights pre-packed into 64-column panels with an AVX-512 FMA register tile
//! (6 rows × 64 columns), the exact-dtype twin of [`super::bf16`].
//!
//! Packing once at load avoids the per-call weight packing a general GEMM does, which
//! dominates for the few rows of a single query. Used only when the CPU has AVX-512;
//! `Linear` falls back to the `gemm` crate otherwise.

use rayon::prelude::*;

use super::SharedMut;

const NR: usize = 64;
const MR: usize = 6;
const ROW_CHUNK: usize = 96;

/// A weight matrix `[out, in]` packed as `panel[p][k][64]`.
pub struct PackedF32 {
    out_f: usize,
    in_f: usize,
    panels: usize,
    data: Vec<f32>,
}

impl PackedF32 {
    /// Packs a PyTorch-layout weight `[out, in]`.
    pub fn pack(w: &[f32], out_f: usize, in_f: usize) -> Self {
        let panels = out_f.div_ceil(NR);
        let mut data = vec![0.0f32; panels * in_f * NR];
        for o in 0..out_f {
            let (p, c) = (o / NR, o % NR);
            for k in 0..in_f {
                data[(p * in_f + k) * NR + c] = w[o * in_f + k];
            }
        }
        PackedF32 {
            out_f,
            in_f,
            panels,
            data,
        }
    }

    /// The weight back in PyTorch layout `[out, in]`.
    pub fn unpack(&self) -> Vec<f32> {
        let k = self.in_f;
        let mut w = vec![0.0f32; self.out_f * k];
        for o in 0..self.out_f {
            let (p, c) = (o / NR, o % NR);
            for kk in 0..k {
                w[o * k + kk] = self.data[(p * k + kk) * NR + c];
            }
        }
        w
    }

    /// `dst[rows, out] += x[rows, in] · Wᵀ`. The caller checked `super::has_avx512()`.
    pub fn matmul_acc(&self, x: &[f32], rows: usize, dst: &mut [f32], threads: usize) {
        assert!(
            super::has_avx512(),
            "PackedF32 needs AVX-512. This is a bug."
        );
        let k = self.in_f;
        let tasks = rows.div_ceil(ROW_CHUNK) * self.panels;
        let dptr = SharedMut::new(dst);
        let run = |t: usize| {
            let (c, p) = (t / self.panels, t % self.panels);
            let r0 = c * ROW_CHUNK;
            let r1 = (r0 + ROW_CHUNK).min(rows);
            let cols = (self.out_f - p * NR).min(NR);
            let w = &self.data[p * k * NR..(p + 1) * k * NR];
            let mut r = r0;
            while r < r1 {
                let mr = (r1 - r).min(MR);
                let xs = &x[r * k..(r + mr) * k];
                // SAFETY: AVX-512 checked above; the tile (rows r..r+mr, columns of
                // panel p) is inside dst and written by this task only.
                unsafe {
                    let d = dptr.get().add(r * self.out_f + p * NR);
                    match mr {
                        6 => tile::<6>(xs, k, w, d, self.out_f, cols),
                        5 => tile::<5>(xs, k, w, d, self.out_f, cols),
                        4 => tile::<4>(xs, k, w, d, self.out_f, cols),
                        3 => tile::<3>(xs, k, w, d, self.out_f, cols),
                        2 => tile::<2>(xs, k, w, d, self.out_f, cols),
                        _ => tile::<1>(xs, k, w, d, self.out_f, cols),
                    }
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

/// One `M × cols` tile (`cols` ≤ 64) of `xs` times the packed panel `w`, accumulated into `d`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and FMA; `xs` holds `M * k` floats, `w` holds
/// `k * NR`, and `d` addresses `M` rows of `cols` writable floats with stride `ld`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn tile<const M: usize>(
    xs: &[f32],
    k: usize,
    w: &[f32],
    d: *mut f32,
    ld: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; M];
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    for kk in 0..k {
        // SAFETY: w holds k*NR floats, xs holds M*k floats.
        unsafe {
            let wk = wp.add(kk * NR);
            let b0 = _mm512_loadu_ps(wk);
            let b1 = _mm512_loadu_ps(wk.add(16));
            let b2 = _mm512_loadu_ps(wk.add(32));
            let b3 = _mm512_loadu_ps(wk.add(48));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(r * k + kk));
                a[0] = _mm512_fmadd_ps(xv, b0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, b1, a[1]);
                a[2] = _mm512_fmadd_ps(xv, b2, a[2]);
                a[3] = _mm512_fmadd_ps(xv, b3, a[3]);
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
            // SAFETY: masked to the valid columns of row r.
            unsafe {
                let p = d.add(r * ld + c0);
                let old = _mm512_maskz_loadu_ps(mask, p);
                _mm512_mask_storeu_ps(p, mask, _mm512_add_ps(old, *v));
            }
        }
    }
}

/// Never called: `PackedF32` is only built on x86_64.
///
/// # Safety
/// None needed; it panics.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const M: usize>(_: &[f32], _: usize, _: &[f32], _: *mut f32, _: usize, _: usize) {
    unreachable!("PackedF32 is only built on x86_64 with AVX-512. This is a bug.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_f32_matches_naive() {
        if !super::super::has_avx512() {
            return; // The packed path is never selected on this CPU.
        }
        for (o, i, r) in [(70, 33, 13), (130, 64, 7)] {
            let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.37).sin()).collect();
            let x: Vec<f32> = (0..r * i).map(|v| (v as f32 * 0.11).cos()).collect();
            let mut y = vec![1.0f32; r * o];
            PackedF32::pack(&w, o, i).matmul_acc(&x, r, &mut y, 2);
            for rr in 0..r {
                for oo in 0..o {
                    let want: f32 = 1.0
                        + (0..i)
                            .map(|ii| x[rr * i + ii] * w[oo * i + ii])
                            .sum::<f32>();
                    assert!((y[rr * o + oo] - want).abs() < 1e-4, "{o}x{i} {rr},{oo}");
                }
            }
        }
    }
}
