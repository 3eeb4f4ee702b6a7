//! Decode-time attention of the CPU decoder: the query heads of one token that share a kv
//! head (grouped-query attention) against that sequence's cached keys and values.
//!
//! [`attend`] picks the AVX-512 kernel where the CPU has it and the portable one otherwise;
//! the tests hold both to an f64 reference. The AVX-512 kernel scores sixteen keys per pass
//! for one head (sixteen dot products accumulated in sixteen registers, every key row read
//! once per head from L1) and folds the sixteen sums into one register with a transposing
//! add tree ([`x86::hsum16`]), so a score costs its multiply-adds and a fraction of a
//! shuffle instead of a whole horizontal reduction; the weighted sum of values keeps each
//! head's output in registers across all positions.
//!
//! Keys and values are cached as [`KvElem`]s: `f32`, or `f16`, which halves the memory
//! attention reads (at batch 16 and a few hundred positions the cache a decode step reads
//! is larger than the model's quantised weights) and what a sequence holds. Both kernels
//! widen them to f32 as they load, so every sum is in f32 either way.

use half::f16;

use super::math::dot;

/// The element type of cached keys and values.
pub trait KvElem: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// True for `f16` (the kernels load it with a widening load).
    const HALF: bool;
    fn to_f32(self) -> f32;
    /// Appends `src`, rounded to this type (to nearest, ties to even).
    fn extend_from_f32(dst: &mut Vec<Self>, src: &[f32]);
}

impl KvElem for f32 {
    const HALF: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn extend_from_f32(dst: &mut Vec<f32>, src: &[f32]) {
        dst.extend_from_slice(src);
    }
}

impl KvElem for f16 {
    const HALF: bool = true;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn extend_from_f32(dst: &mut Vec<f16>, src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        let at = dst.len();
        dst.resize(at + src.len(), f16::ZERO);
        dst[at..].convert_from_f32_slice(src);
    }
}

/// The query heads of one token that share one kv head, against its sequence's keys and
/// values.
pub struct Heads<'a, T: KvElem = f32> {
    /// The heads' queries, `hd` floats each, one after the other.
    pub q: &'a [f32],
    pub hd: usize,
    /// The sequence's keys and values: segments of whole positions (shared prefix blocks,
    /// then its own rows), `kvd` floats per position.
    pub segs: &'a [(&'a [T], &'a [T])],
    /// Positions it attends to (causal: up to and including its own).
    pub ctx: usize,
    /// Floats per cached position.
    pub kvd: usize,
    /// Offset of the kv head within a position.
    pub at: usize,
    pub scale: f32,
}

impl<T: KvElem> Heads<'_, T> {
    /// The segments' keys and values with the position of their first row and how many of
    /// their rows are inside the context.
    fn rows(&self) -> impl Iterator<Item = (&[T], &[T], usize, usize)> + '_ {
        let mut done = 0;
        self.segs.iter().map(move |&(k, v)| {
            let rows = (k.len() / self.kvd).min(self.ctx - done);
            done += rows;
            (k, v, done - rows, rows)
        })
    }
}

/// `acc[h] = softmax(q[h]·Kᵀ·scale)·V` for every head `h` of `heads` (`acc` holds
/// `heads.q.len()` floats; `scores` is scratch space).
pub fn attend<T: KvElem>(heads: &Heads<'_, T>, scores: &mut Vec<f32>, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx512() {
        // SAFETY: the CPU supports AVX-512 F/BW/VL (checked just above).
        return unsafe { x86::attend(heads, scores, acc) };
    }
    portable(heads, scores, acc)
}

super::multiversion! {
    /// Softmax over each head's `ctx` scores, in place (eight partial maxima and sums, so
    /// the loops vectorise).
    fn softmax_rows(scores: &mut [f32], ctx: usize) {
        for sc in scores.chunks_exact_mut(ctx) {
            let mut m8 = [f32::NEG_INFINITY; 8];
            let chunks = sc.chunks_exact(8);
            let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for c in chunks {
                for i in 0..8 {
                    m8[i] = m8[i].max(c[i]);
                }
            }
            max = m8.iter().fold(max, |m, &v| m.max(v));
            for s in sc.iter_mut() {
                *s = super::math::fast_exp(*s - max);
            }
            let mut s8 = [0f32; 8];
            let chunks = sc.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for i in 0..8 {
                    s8[i] += c[i];
                }
            }
            let inv = 1.0 / (s8.iter().sum::<f32>() + tail);
            sc.iter_mut().for_each(|s| *s *= inv);
        }
    }
}

/// The portable kernel: one dot product per (head, position), eight lanes each.
pub fn portable<T: KvElem>(heads: &Heads<'_, T>, scores: &mut Vec<f32>, acc: &mut [f32]) {
    let (hd, kvd, at, ctx) = (heads.hd, heads.kvd, heads.at, heads.ctx);
    let nq = heads.q.len() / hd;
    scores.clear();
    scores.resize(nq * ctx, 0.0);
    let mut key = vec![0f32; hd];
    for (kc, _, first, rows) in heads.rows() {
        for j in 0..rows {
            let row = &kc[j * kvd + at..j * kvd + at + hd];
            key.iter_mut().zip(row).for_each(|(k, r)| *k = r.to_f32());
            for (h, q) in heads.q.chunks_exact(hd).enumerate() {
                scores[h * ctx + first + j] = dot(q, &key) * heads.scale;
            }
        }
    }
    softmax_rows(scores, ctx);
    acc.iter_mut().for_each(|a| *a = 0.0);
    for (_, vc, first, rows) in heads.rows() {
        for j in 0..rows {
            let val = &vc[j * kvd + at..j * kvd + at + hd];
            for (h, ah) in acc.chunks_exact_mut(hd).enumerate() {
                let w = scores[h * ctx + first + j];
                for (a, v) in ah.iter_mut().zip(val) {
                    *a += w * v.to_f32();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::fold;
    use super::{Heads, KvElem};
    use std::arch::x86_64::*;

    /// The lanes of `m` from `p` as f32 (an `f16` load widens; the other lanes are zero).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; the lanes of `m` at `p` must be readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load<T: KvElem>(m: __mmask16, p: *const T) -> __m512 {
        // SAFETY: only the lanes of `m` are read (see # Safety).
        unsafe {
            if T::HALF {
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16))
            } else {
                _mm512_maskz_loadu_ps(m, p as *const f32)
            }
        }
    }

    /// Lane `i` of the result is the sum of the lanes of `v[p(i)]`, where the inputs are
    /// taken in the order `p(i) = 4·(i mod 4) + i / 4` (the tree's own order; the caller
    /// passes them so, and gets lane `i` = sum of its `i`-th vector). Four levels of
    /// shuffle + add, 45 instructions for sixteen sums.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tree16(v: &[__m512; 16]) -> __m512 {
        // 256-bit halves, then one quad per input vector, four partials each.
        let l1: [__m512; 8] = std::array::from_fn(|i| fold::halves(v[2 * i], v[2 * i + 1]));
        let l2: [__m512; 4] = std::array::from_fn(|i| fold::quads(l1[2 * i], l1[2 * i + 1]));
        // Within each quad: two partials per vector, then one.
        let l3: [__m512; 2] = std::array::from_fn(|i| {
            let (x, y) = (l2[2 * i], l2[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
                _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
            )
        });
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(l3[0], l3[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(l3[0], l3[1]),
        )
    }

    /// The sums of sixteen vectors, lane `i` = sum of `v[i]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
        let p: [__m512; 16] = std::array::from_fn(|i| v[4 * (i % 4) + i / 4]);
        // SAFETY: AVX-512 F is enabled here (see # Safety).
        unsafe { tree16(&p) }
    }

    /// The mask of the first `n` (≤ 16) lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            !0
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `scores[j] = scale · q · key(j)` for `rows` keys of `hd` elements.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; `q` holds `hd` floats, `key(j)` points at `hd`
    /// readable elements for every `j < rows`, `scores` holds `rows` floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn score_rows<T: KvElem>(
        q: *const f32,
        hd: usize,
        key: impl Fn(usize) -> *const T,
        rows: usize,
        scale: f32,
        scores: *mut f32,
    ) {
        // SAFETY: every load reads `hd` floats of `q` or of a key below `rows`, every
        // store `rows` floats of `scores` (see # Safety), masked where shorter than 16.
        unsafe {
            let mut j0 = 0;
            while j0 < rows {
                let n = (rows - j0).min(16);
                // Always sixteen accumulators (so they stay in registers); past the last
                // key a lane's loads are masked off and it sums zeros.
                let mut acc = [_mm512_setzero_ps(); 16];
                let mut c = 0;
                if n == 16 && hd.is_multiple_of(16) {
                    // A whole pass of whole registers (most passes): no masks to build.
                    let keys: [*const T; 16] = std::array::from_fn(|j| key(j0 + j));
                    while c < hd {
                        let qv = _mm512_loadu_ps(q.add(c));
                        for (a, k) in acc.iter_mut().zip(keys) {
                            *a = _mm512_fmadd_ps(qv, load(!0, k.add(c)), *a);
                        }
                        c += 16;
                    }
                }
                while c < hd {
                    let m = lanes(hd - c);
                    let qv = _mm512_maskz_loadu_ps(m, q.add(c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        let (mj, row) = if j < n { (m, j0 + j) } else { (0, j0) };
                        let kv = load(mj, key(row).add(c));
                        *a = _mm512_fmadd_ps(qv, kv, *a);
                    }
                    c += 16;
                }
                let s = _mm512_mul_ps(hsum16(&acc), _mm512_set1_ps(scale));
                _mm512_mask_storeu_ps(scores.add(j0), lanes(n), s);
                j0 += 16;
            }
        }
    }

    /// `out[..16·R] += Σ_j w[j] · val(j)[..16·R]` over `rows` positions (`width` ≤ 16·R
    /// floats, the rest masked), the output in `R` registers throughout.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; `val(j)` points at `width` readable elements
    /// for every `j < rows`, `w` holds `rows` floats and `out` `width`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn weigh<const R: usize, T: KvElem>(
        w: *const f32,
        val: impl Fn(usize) -> *const T,
        rows: usize,
        width: usize,
        out: *mut f32,
    ) {
        // SAFETY: every access is masked to `width` floats of a value below `rows` or of
        // `out`, and `w` is read below `rows` (see # Safety).
        unsafe {
            let m: [__mmask16; R] = std::array::from_fn(|r| lanes(width.saturating_sub(16 * r)));
            // One chain per register, positions in order: a segmented cache (shared prefix
            // blocks, then own rows) sums in the same order as a contiguous one, so a
            // prefix-cache hit gives the same answer to the bit.
            let mut acc: [__m512; R] =
                std::array::from_fn(|r| _mm512_maskz_loadu_ps(m[r], out.add(16 * r)));
            for j in 0..rows {
                let s = _mm512_set1_ps(*w.add(j));
                let v = val(j);
                for r in 0..R {
                    acc[r] = _mm512_fmadd_ps(s, load(m[r], v.add(16 * r)), acc[r]);
                }
            }
            for r in 0..R {
                _mm512_mask_storeu_ps(out.add(16 * r), m[r], acc[r]);
            }
        }
    }

    /// `out += Σ_j w[j] · val(j)` over `rows` positions of `hd` floats, up to 128 floats
    /// at a time in registers.
    ///
    /// # Safety
    /// As for [`weigh`], with `hd` floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn weigh_rows<T: KvElem>(
        w: *const f32,
        val: impl Fn(usize) -> *const T + Copy,
        rows: usize,
        hd: usize,
        out: *mut f32,
    ) {
        let mut c0 = 0;
        while c0 < hd {
            let width = (hd - c0).min(128);
            let v = move |j: usize| val(j).wrapping_add(c0);
            // SAFETY: the columns `c0 .. c0 + width` are inside every value and `out`.
            unsafe {
                let o = out.add(c0);
                match width.div_ceil(16) {
                    1 => weigh::<1, T>(w, v, rows, width, o),
                    2 => weigh::<2, T>(w, v, rows, width, o),
                    3 => weigh::<3, T>(w, v, rows, width, o),
                    4 => weigh::<4, T>(w, v, rows, width, o),
                    5 => weigh::<5, T>(w, v, rows, width, o),
                    6 => weigh::<6, T>(w, v, rows, width, o),
                    7 => weigh::<7, T>(w, v, rows, width, o),
                    _ => weigh::<8, T>(w, v, rows, width, o),
                }
            }
            c0 += width;
        }
    }

    /// The AVX-512 form of [`super::attend`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL. The raw accesses below stay in bounds because of
    /// the `assert!` (each head reads `at..at + hd` of a `kvd`-float position; `acc` and the
    /// queries hold `nq · hd` floats) and because [`Heads::rows`] counts only whole
    /// positions of each segment, at most `ctx` in all.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn attend<T: KvElem>(heads: &Heads<'_, T>, scores: &mut Vec<f32>, acc: &mut [f32]) {
        let (hd, kvd, at, ctx) = (heads.hd, heads.kvd, heads.at, heads.ctx);
        assert!(at + hd <= kvd && acc.len() == heads.q.len());
        let nq = heads.q.len() / hd;
        scores.clear();
        scores.resize(nq * ctx, 0.0);
        for (kc, _, first, rows) in heads.rows() {
            let kp = kc.as_ptr();
            for h in 0..nq {
                // SAFETY: see # Safety; head h's scores go to `h·ctx + first ..+ rows`,
                // inside `(h + 1)·ctx`.
                unsafe {
                    score_rows(
                        heads.q.as_ptr().add(h * hd),
                        hd,
                        |j| kp.add(j * kvd + at),
                        rows,
                        heads.scale,
                        scores.as_mut_ptr().add(h * ctx + first),
                    )
                };
            }
        }
        super::softmax_rows(scores, ctx);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (_, vc, first, rows) in heads.rows() {
            let vp = vc.as_ptr();
            for h in 0..nq {
                // SAFETY: as for the keys; head h's output is `acc[h·hd ..+ hd]`.
                unsafe {
                    weigh_rows(
                        scores.as_ptr().add(h * ctx + first),
                        |j| vp.add(j * kvd + at),
                        rows,
                        hd,
                        acc.as_mut_ptr().add(h * hd),
                    )
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention in f64, one position at a time.
    fn reference(q: &[f32], keys: &[&[f32]], vals: &[&[f32]], scale: f32) -> Vec<f64> {
        let sc: Vec<f64> = keys
            .iter()
            .map(|k| q.iter().zip(*k).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64)
            .collect();
        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..q.len())
            .map(|i| {
                e.iter()
                    .zip(vals)
                    .map(|(w, v)| w * v[i] as f64)
                    .sum::<f64>()
                    / z
            })
            .collect()
    }

    /// Both kernels against [`reference`] on keys and values stored as `T` (the reference
    /// reads the same stored values, widened).
    fn kernels_match_reference<T: KvElem>() {
        let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) * 0.03;
        let store = |n: usize, off: usize, kvd: usize| -> Vec<T> {
            let mut v = Vec::new();
            T::extend_from_f32(
                &mut v,
                &(0..n * kvd).map(|i| val(i + off)).collect::<Vec<_>>(),
            );
            v
        };
        // Head sizes: whole registers, a partial one, and more than the 128 kept at once.
        for hd in [64, 80, 136] {
            let kvh = 2;
            let kvd = hd * kvh;
            // A shared block of 7 positions, then 20 own ones (more than one pass of 16);
            // the heads read kv head 1.
            let (n1, n2) = (7, 20);
            let (k1, v1) = (store(n1, 0, kvd), store(n1, 5, kvd));
            let (k2, v2) = (store(n2, 11, kvd), store(n2, 3, kvd));
            let segs = [(&k1[..], &v1[..]), (&k2[..], &v2[..])];
            let rows = |k: &[T], n: usize| -> Vec<Vec<f32>> {
                (0..n)
                    .map(|j| {
                        k[j * kvd + hd..j * kvd + 2 * hd]
                            .iter()
                            .map(|x| x.to_f32())
                            .collect()
                    })
                    .collect()
            };
            let (mut keys, mut vals) = (rows(&k1, n1), rows(&v1, n1));
            keys.extend(rows(&k2, n2));
            vals.extend(rows(&v2, n2));
            for nq in [1, 3, 7] {
                let q: Vec<f32> = (0..nq * hd).map(|i| val(i + 1) * 0.5).collect();
                for ctx in [1, 3, 7, 9, 16, 23, 27] {
                    let heads = Heads {
                        q: &q,
                        hd,
                        segs: &segs,
                        ctx,
                        kvd,
                        at: hd,
                        scale: 0.125,
                    };
                    let keys: Vec<&[f32]> = keys[..ctx].iter().map(Vec::as_slice).collect();
                    let vals: Vec<&[f32]> = vals[..ctx].iter().map(Vec::as_slice).collect();
                    type Kernel<T> = fn(&Heads<'_, T>, &mut Vec<f32>, &mut [f32]);
                    for (name, kernel) in [
                        ("portable", portable::<T> as Kernel<T>),
                        ("best", attend::<T>),
                    ] {
                        let (mut scores, mut acc) = (Vec::new(), vec![0f32; nq * hd]);
                        kernel(&heads, &mut scores, &mut acc);
                        for h in 0..nq {
                            let want = reference(&q[h * hd..(h + 1) * hd], &keys, &vals, 0.125);
                            for (g, w) in acc[h * hd..(h + 1) * hd].iter().zip(&want) {
                                assert!(
                                    (*g as f64 - w).abs() < 1e-5,
                                    "{name} {}: hd {hd}, {nq} heads, ctx {ctx}: {g} vs {w}",
                                    std::any::type_name::<T>()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn both_kernels_match_softmax_attention_across_segments() {
        kernels_match_reference::<f32>();
        kernels_match_reference::<f16>();
    }

    /// A cache cut into segments (prefix blocks, then own rows) attends to the bit like the
    /// same rows in one run: a prefix-cache hit must not change a greedy answer.
    fn segments_do_not_change_the_sums<T: KvElem>() {
        let (hd, kvd, n) = (64, 128, 40);
        let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) * 0.03;
        let mut k = Vec::new();
        let mut v = Vec::new();
        T::extend_from_f32(&mut k, &(0..n * kvd).map(val).collect::<Vec<_>>());
        T::extend_from_f32(
            &mut v,
            &(0..n * kvd).map(|i| val(i + 7)).collect::<Vec<_>>(),
        );
        let q: Vec<f32> = (0..3 * hd).map(|i| val(i + 1) * 0.5).collect();
        let cut = 16 * kvd;
        let whole = [(&k[..], &v[..])];
        let split = [(&k[..cut], &v[..cut]), (&k[cut..], &v[cut..])];
        type Kernel<T> = fn(&Heads<'_, T>, &mut Vec<f32>, &mut [f32]);
        for kernel in [portable::<T> as Kernel<T>, attend::<T>] {
            let run = |segs: &[(&[T], &[T])]| {
                let heads = Heads {
                    q: &q,
                    hd,
                    segs,
                    ctx: n,
                    kvd,
                    at: hd,
                    scale: 0.125,
                };
                let (mut scores, mut acc) = (Vec::new(), vec![0f32; 3 * hd]);
                kernel(&heads, &mut scores, &mut acc);
                acc
            };
            let (a, b) = (run(&whole), run(&split));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn segmented_caches_attend_to_the_bit_like_contiguous_ones() {
        segments_do_not_change_the_sums::<f32>();
        segments_do_not_change_the_sums::<f16>();
    }

    #[test]
    fn f16_storage_rounds_to_nearest() {
        let mut v: Vec<f16> = Vec::new();
        let src = [0.1f32, -2.71, 65504.0, 1e-8, 2049.0];
        f16::extend_from_f32(&mut v, &src);
        for (h, x) in v.iter().zip(src) {
            assert_eq!(*h, f16::from_f32(x), "{x}");
            assert!((h.to_f32() - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x}: {h}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_add_tree_sums_each_vector_into_its_lane() {
        if !crate::models::kernels::has_avx512() {
            return;
        }
        use std::arch::x86_64::*;
        let vals: Vec<[f32; 16]> = (0..16)
            .map(|i| {
                std::array::from_fn(|l| (i * 16 + l) as f32 * if l % 3 == 0 { -1.0 } else { 1.0 })
            })
            .collect();
        // SAFETY: AVX-512 F is present (checked above); each array holds 16 floats.
        let got: [f32; 16] = unsafe {
            let v: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(vals[i].as_ptr()));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), x86::hsum16(&v));
            out
        };
        for (i, g) in got.iter().enumerate() {
            assert_eq!(*g, vals[i].iter().sum::<f32>(), "lane {i}");
        }
    }
}
