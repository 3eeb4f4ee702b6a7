//! Dense layers and strided matrix products on `f32` slices.
//!
//! [`Linear`] keeps the weight transposed to `[in, out]` (row-major) so the `gemm` crate
//! reads it contiguously; `forward_acc` accumulates into a destination the caller has
//! already filled (with the bias, or residual + bias), which fuses those additions away.

/// A strided, read-only matrix view: element `(i, j)` is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// A strided, writable matrix view.
#[derive(Clone, Copy)]
pub struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

/// `dst[m,n] = (accumulate ? dst : 0) + scale * lhs[m,k] · rhs[k,n]`.
///
/// # Safety
/// Every element addressed by the three views for the given shape must be in bounds of
/// live allocations, and `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    lhs: MatRef,
    rhs: MatRef,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs,
            rhs.rs, 1.0, scale, false, false, false, par,
        )
    }
}

/// A dense layer `y = x · Wᵀ + b` with `W` of shape `[out, in]` as stored by PyTorch.
pub struct Linear {
    pub in_f: usize,
    pub out_f: usize,
    /// `Wᵀ`, `[in, out]` row-major.
    w_t: Vec<f32>,
    pub bias: Vec<f32>,
    bf16: Option<super::bf16::PackedBf16>,
    /// Pre-packed f32 panels, used instead of `w_t` on AVX-512 CPUs.
    packed: Option<super::packed_f32::PackedF32>,
}

impl Linear {
    /// Builds the layer from a PyTorch-layout weight (`[out, in]`) and a bias of `out`.
    pub fn new(weight: &[f32], bias: Vec<f32>, out_f: usize, in_f: usize) -> Self {
        assert_eq!(
            weight.len(),
            out_f * in_f,
            "linear weight shape. This is a bug."
        );
        assert_eq!(bias.len(), out_f, "linear bias shape. This is a bug.");
        if super::has_avx512() {
            let packed = Some(super::packed_f32::PackedF32::pack(weight, out_f, in_f));
            return Linear {
                in_f,
                out_f,
                w_t: Vec::new(),
                bias,
                bf16: None,
                packed,
            };
        }
        let mut w_t = vec![0.0f32; in_f * out_f];
        for o in 0..out_f {
            for i in 0..in_f {
                w_t[i * out_f + o] = weight[o * in_f + i];
            }
        }
        Linear {
            in_f,
            out_f,
            w_t,
            bias,
            bf16: None,
            packed: None,
        }
    }

    /// Switches the layer to bf16 weights (AVX512_BF16 kernel) and drops the f32 copy.
    pub fn use_bf16(&mut self) {
        self.bf16 = Some(super::bf16::PackedBf16::pack(
            &self.weight(),
            self.out_f,
            self.in_f,
        ));
        self.w_t = Vec::new();
        self.packed = None;
    }

    /// The weight in PyTorch layout `[out, in]` (from whichever f32 copy is kept).
    fn weight(&self) -> Vec<f32> {
        let (i_f, o_f) = (self.in_f, self.out_f);
        if let Some(p) = &self.packed {
            return p.unpack();
        }
        let mut w = vec![0.0f32; i_f * o_f];
        for i in 0..i_f {
            for o in 0..o_f {
                w[o * i_f + i] = self.w_t[i * o_f + o];
            }
        }
        w
    }

    /// `dst[rows, out] += x[rows, in] · Wᵀ` (the bias is *not* added; callers prefill).
    pub fn forward_acc(&self, x: &[f32], rows: usize, dst: &mut [f32], threads: usize) {
        assert!(x.len() >= rows * self.in_f && dst.len() >= rows * self.out_f);
        if let Some(p) = &self.bf16 {
            p.matmul_acc(x, rows, dst, threads);
            return;
        }
        if let Some(p) = &self.packed {
            p.matmul_acc(x, rows, dst, threads);
            return;
        }
        // SAFETY: the asserts above bound every access of the row-major views.
        unsafe {
            sgemm(
                rows,
                self.out_f,
                self.in_f,
                MatMut {
                    ptr: dst.as_mut_ptr(),
                    rs: self.out_f as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: x.as_ptr(),
                    rs: self.in_f as isize,
                    cs: 1,
                },
                MatRef {
                    ptr: self.w_t.as_ptr(),
                    rs: self.out_f as isize,
                    cs: 1,
                },
                1.0,
                true,
                threads,
            )
        }
    }

    /// `x · Wᵀ + b` into a fresh vector (used for the small classification heads).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * self.out_f);
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        self.forward_acc(x, rows, &mut out, 1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive() {
        let (o, i, r) = (7, 5, 3);
        let w: Vec<f32> = (0..o * i).map(|v| (v as f32 * 0.13).sin()).collect();
        let b: Vec<f32> = (0..o).map(|v| v as f32 * 0.1).collect();
        let x: Vec<f32> = (0..r * i).map(|v| (v as f32 * 0.29).cos()).collect();
        let y = Linear::new(&w, b.clone(), o, i).forward(&x, r);
        for rr in 0..r {
            for oo in 0..o {
                let want: f32 = b[oo]
                    + (0..i)
                        .map(|ii| x[rr * i + ii] * w[oo * i + ii])
                        .sum::<f32>();
                assert!((y[rr * o + oo] - want).abs() < 1e-5);
            }
        }
    }
}
