//! Element-wise and row-wise kernels: exp, erf-GELU, layer norm, softmax.
//!
//! The scalar `exp`/`erf` approximations are branch-free so the loops that call them
//! vectorise; their accuracy (a few f32 ulp) is checked against f64 references in tests.

use super::multiversion;

const LANES: usize = 16;

/// exp(x) for f32: Cody–Waite range reduction and a degree-6 polynomial (rel. err. < 2e-7).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Dot product with eight independent partial sums, so it vectorises.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// erf(x) for f32 as an odd/even rational polynomial on [-4, 4] (|erf| = 1 in f32 outside).
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10_f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 + -2.101_024e-6;
    let p = p * x2 + -5.692_506_4e-5;
    let p = p * x2 + -7.349_906_3e-4;
    let p = p * x2 + -2.954_6e-3;
    let p = p * x2 + -1.609_603_3e-2;
    let q = -1.456_607_2e-5_f32;
    let q = q * x2 + -2.133_740_6e-4;
    let q = q * x2 + -1.682_827e-3;
    let q = q * x2 + -7.373_329e-3;
    let q = q * x2 + -1.426_473_9e-2;
    x * p / q
}

multiversion! {
    /// `x = gelu(x)` with the exact (erf) definition used by BERT's `"gelu"`.
    pub fn gelu_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            let a = *v;
            *v = 0.5 * a * (1.0 + fast_erf(a * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// `x = gelu_tanh(x)` (the `"gelu_new"` / `"gelu_pytorch_tanh"` activations).
    pub fn gelu_tanh_inplace(x: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for v in x.iter_mut() {
            let a = *v;
            let u = C * (a + 0.044_715 * a * a * a);
            // tanh(u) = 1 - 2 / (exp(2u) + 1)
            let t = 1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0);
            *v = 0.5 * a * (1.0 + t);
        }
    }
}

multiversion! {
    /// SwiGLU: `out[r][i] = silu(gu[r][i]) · gu[r][w + i]` for rows `r` of `gu` holding the
    /// gate then the up projection (`w` = `out`'s row width).
    pub fn swiglu_rows(gu: &[f32], out: &mut [f32], w: usize) {
        for (gu, o) in gu.chunks_exact(2 * w).zip(out.chunks_exact_mut(w)) {
            let (g, u) = gu.split_at(w);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + fast_exp(-g)) * u;
            }
        }
    }
}

multiversion! {
    /// `x = max(x, 0)`.
    pub fn relu_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    rest.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

multiversion! {
    /// Layer norm of every `gamma.len()`-wide row of `x`, in place (two-pass variance).
    pub fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let h = gamma.len();
        for row in x.chunks_exact_mut(h) {
            let mean = sum(row) / h as f32;
            let var = sum_sq_dev(row, mean) / h as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

multiversion! {
    /// Softmax of every `n`-wide row of `x`, in place.
    pub fn softmax_rows(x: &mut [f32], n: usize) {
        for row in x.chunks_exact_mut(n) {
            let m = max(row);
            for v in row.iter_mut() {
                *v = fast_exp(*v - m);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// `dst[r] = src[r] + bias` for every row `r` (`dst` may hold garbage before).
    pub fn broadcast_rows(dst: &mut [f32], bias: &[f32]) {
        for row in dst.chunks_exact_mut(bias.len()) {
            row.copy_from_slice(bias);
        }
    }
}

multiversion! {
    /// `x[r] += bias` for every row `r`.
    pub fn add_rows(x: &mut [f32], bias: &[f32]) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Maclaurin series; converges for |x| <= 4 with ~1e-10 accuracy in f64.
        let mut term = x;
        let mut s = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            s += term / (2 * n + 1) as f64;
        }
        s * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0.0f64;
        let mut worst_erf = 0.0f64;
        for i in -4000..=4000 {
            let x = i as f32 * 0.02;
            let e = fast_exp(x) as f64;
            let r = (x as f64).exp();
            worst_exp = worst_exp.max(((e - r) / r).abs());
            let x = i as f32 * 0.001;
            worst_erf = worst_erf.max((fast_erf(x) as f64 - erf_f64(x as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp rel err {worst_exp}");
        assert!(worst_erf < 5e-7, "erf abs err {worst_erf}");
        assert!((1.0 - fast_erf(9.0)).abs() < 2e-7 && fast_erf(-9.0) <= -0.999_999_8);
    }

    #[test]
    fn swiglu_matches_its_definition() {
        let w = 37;
        let gu: Vec<f32> = (0..4 * w).map(|i| (i as f32 * 0.61).sin() * 12.0).collect();
        let mut out = vec![0f32; 2 * w];
        swiglu_rows(&gu, &mut out, w);
        for r in 0..2 {
            for i in 0..w {
                let (g, u) = (gu[r * 2 * w + i] as f64, gu[r * 2 * w + w + i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                let got = out[r * w + i] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn layer_norm_and_softmax_match_definitions() {
        let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let g: Vec<f32> = (0..20).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..20).map(|i| i as f32 * -0.02).collect();
        let mut y = x.clone();
        layer_norm_rows(&mut y, &g, &b, 1e-5);
        for r in 0..2 {
            let row = &x[r * 20..(r + 1) * 20];
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / 20.0;
            let v = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / 20.0;
            for j in 0..20 {
                let want = (row[j] as f64 - m) / (v + 1e-5).sqrt() * g[j] as f64 + b[j] as f64;
                assert!((y[r * 20 + j] as f64 - want).abs() < 1e-5);
            }
        }
        let mut s = x.clone();
        softmax_rows(&mut s, 20);
        let row = &x[..20];
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        for j in 0..20 {
            assert!((s[j] as f64 - (row[j] as f64).exp() / z).abs() < 1e-6);
        }
    }
}
