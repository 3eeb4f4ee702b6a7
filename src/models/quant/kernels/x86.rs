//! The x86 kernels of [`super`]: AVX2 (eight blocks per register) and AVX-512 VNNI (a whole
//! group per register) dot products of packed `Q4_1` / `Q8_0` rows with activation rows.

use super::{ActRow, GROUP, Q4_1_BYTES, Q8_0_BYTES, QK};
use std::arch::x86_64::*;

/// # Safety
/// The CPU must support AVX (only called from `avx2`/`avx512`, which require it).
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled in every caller (see # Safety).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// Loads `len` (≤ 32) bytes at `p`, zero-filling the rest.
///
/// # Safety
/// `p` must address `len` (≤ 32) readable bytes; the CPU must support AVX2.
#[inline(always)]
unsafe fn load32(p: *const u8, len: usize) -> __m256i {
    // SAFETY: `p..p+len` is readable (see # Safety); `tmp` holds 32 bytes.
    unsafe {
        if len == 32 {
            _mm256_loadu_si256(p as *const __m256i)
        } else {
            let mut tmp = [0u8; 32];
            std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), len);
            _mm256_loadu_si256(tmp.as_ptr() as *const __m256i)
        }
    }
}

/// Loads `len` (≤ 8) f16 values at `p` as f32, zero-filling the rest.
///
/// # Safety
/// `p` must address `len` (≤ 8) readable `i16`s; the CPU must support F16C.
#[inline(always)]
unsafe fn load_f16x8(p: *const i16, len: usize) -> __m256 {
    // SAFETY: `p..p+len` is readable (see # Safety); `tmp` holds 8 values.
    unsafe {
        if len == 8 {
            return _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        }
        let mut tmp = [0i16; 8];
        std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), len);
        _mm256_cvtph_ps(_mm_loadu_si128(tmp.as_ptr() as *const __m128i))
    }
}

/// Loads `len` (≤ 8) f32 values at `p`, zero-filling the rest.
///
/// # Safety
/// `p` must address `len` (≤ 8) readable `f32`s; the CPU must support AVX.
#[inline(always)]
unsafe fn load_f32x8(p: *const f32, len: usize) -> __m256 {
    // SAFETY: `p..p+len` is readable (see # Safety); `tmp` holds 8 values.
    unsafe {
        if len == 8 {
            return _mm256_loadu_ps(p);
        }
        let mut tmp = [0f32; 8];
        std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), len);
        _mm256_loadu_ps(tmp.as_ptr())
    }
}

/// AVX2: eight blocks per register (half a group). `maddubs` cannot take Q8_0's offset
/// bytes without saturating, so Q8_0 goes back to signed bytes and the sign trick.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `row` must be one repacked weight row (its
/// quants, then its f16 scales, then its f16 minimums, as `QLinear` lays them out) and every
/// `xs` row must have as many blocks as `row`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2<const N: usize, const Q8: bool>(
    row: &[u8],
    xs: &[ActRow<'_>; N],
    out: &mut [f32; N],
) {
    // SAFETY: every pointer below stays inside `row` (blocks, then scales, then mins) or an `xs` row of the same block count, as the caller guarantees (see # Safety).
    unsafe {
        let (bpb, nb) = if Q8 {
            (QK, row.len() / Q8_0_BYTES)
        } else {
            (16, row.len() / Q4_1_BYTES)
        };
        let qs = row.as_ptr();
        let dp = qs.add(nb * bpb) as *const i16;
        let mp = dp.add(nb);
        let m4 = _mm256_set1_epi8(0xF);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        let mut g = 0;
        while g < nb {
            let r = (nb - g).min(GROUP);
            let step = 4 * r;
            for h in 0..r.div_ceil(8) {
                let lanes = (r - 8 * h).min(8);
                let len = 4 * lanes;
                let b0 = g + 8 * h;
                let wbase = qs.add(g * bpb + 32 * h);
                let dw = load_f16x8(dp.add(b0), lanes);
                let mut isum = [_mm256_setzero_si256(); N];
                if Q8 {
                    for j in 0..8 {
                        let w = _mm256_xor_si256(
                            load32(wbase.add(j * step), len),
                            _mm256_set1_epi8(-128),
                        );
                        let aw = _mm256_sign_epi8(w, w);
                        for n in 0..N {
                            let xp = xs[n].qs.as_ptr().add(g * QK + 32 * h) as *const u8;
                            let xv = _mm256_sign_epi8(load32(xp.add(j * step), len), w);
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xv), ones);
                            isum[n] = _mm256_add_epi32(isum[n], p);
                        }
                    }
                } else {
                    for j in 0..4 {
                        let v = load32(wbase.add(j * step), len);
                        let lo = _mm256_and_si256(v, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for n in 0..N {
                            let xp = xs[n].qs.as_ptr().add(g * QK + 32 * h) as *const u8;
                            let xl = load32(xp.add(j * step), len);
                            let xh = load32(xp.add((j + 4) * step), len);
                            let p = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, xl),
                                _mm256_maddubs_epi16(hi, xh),
                            );
                            isum[n] = _mm256_add_epi32(isum[n], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
                let mw = if Q8 {
                    _mm256_setzero_ps()
                } else {
                    load_f16x8(mp.add(b0), lanes)
                };
                for n in 0..N {
                    let x = &xs[n];
                    let sc = _mm256_mul_ps(dw, load_f32x8(x.d.as_ptr().add(b0), lanes));
                    acc[n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[n]), sc, acc[n]);
                    if !Q8 {
                        let sx = load_f32x8(x.s.as_ptr().add(b0), lanes);
                        accm[n] = _mm256_fmadd_ps(mw, sx, accm[n]);
                    }
                }
            }
            g += GROUP;
        }
        for n in 0..N {
            out[n] = hsum(_mm256_add_ps(acc[n], accm[n]));
        }
    }
}

/// The integer block sums of one group (`step` bytes per slice) against every row, in
/// two halves; `load` reads one slice (plain for whole groups, masked for the last).
///
/// # Safety
/// The CPU must support AVX-512 VNNI. `wbase + 8 * step` and every `xs` row from `xoff` on
/// must be readable through `load` (which may mask the last group).
#[inline(always)]
unsafe fn group512<const N: usize, const Q8: bool>(
    wbase: *const i8,
    xs: &[ActRow<'_>; N],
    xoff: usize,
    step: usize,
    load: impl Fn(*const i8) -> __m512i,
) -> ([__m512i; N], [__m512i; N]) {
    // SAFETY: the offsets stay inside the slices the caller passes (see # Safety).
    unsafe {
        let mut ia = [_mm512_setzero_si512(); N];
        let mut ib = [_mm512_setzero_si512(); N];
        if Q8 {
            for j in (0..8).step_by(2) {
                let w0 = load(wbase.add(j * step));
                let w1 = load(wbase.add((j + 1) * step));
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff);
                    ia[n] = _mm512_dpbusd_epi32(ia[n], w0, load(xp.add(j * step)));
                    ib[n] = _mm512_dpbusd_epi32(ib[n], w1, load(xp.add((j + 1) * step)));
                }
            }
        } else {
            let m4 = _mm512_set1_epi8(0xF);
            for j in 0..4 {
                let v = load(wbase.add(j * step));
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff);
                    ia[n] = _mm512_dpbusd_epi32(ia[n], lo, load(xp.add(j * step)));
                    ib[n] = _mm512_dpbusd_epi32(ib[n], hi, load(xp.add((j + 4) * step)));
                }
            }
        }
        (ia, ib)
    }
}

/// The integer block sums of the last group of a row when it holds fewer than [`GROUP`]
/// blocks (`r`): its slices are contiguous, so as many whole slices as fit go into one
/// register (`r · ⌊16/r⌋` four-byte lanes) instead of one slice per register, and lane `k`
/// holds part of block `k mod r`. A row of 18 blocks (576 columns) thus pays two
/// multiply-adds per activation row for its last two blocks instead of eight.
///
/// # Safety
/// The CPU must support AVX-512 VNNI; `wbase` must address the group's `bpb · r` weight
/// bytes and every `xs` row its `QK · r` activation bytes from `xoff` on.
#[inline(always)]
unsafe fn tail512<const N: usize, const Q8: bool>(
    wbase: *const i8,
    xs: &[ActRow<'_>; N],
    xoff: usize,
    r: usize,
) -> [__m512i; N] {
    // SAFETY: every masked load stays inside the group's bytes (see # Safety).
    unsafe {
        let mut acc = [_mm512_setzero_si512(); N];
        // Four-byte units of weights in the group: slice j of block l is unit j·r + l.
        let units = if Q8 { 8 * r } else { 4 * r };
        let per = r * (GROUP / r);
        let m4 = _mm512_set1_epi8(0xF);
        let mut u = 0;
        while u < units {
            let len = (units - u).min(per);
            let mask: __mmask64 = if len == GROUP {
                !0
            } else {
                (1u64 << (4 * len)) - 1
            };
            let w = _mm512_maskz_loadu_epi8(mask, wbase.add(4 * u));
            if Q8 {
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff + 4 * u);
                    acc[n] = _mm512_dpbusd_epi32(acc[n], w, _mm512_maskz_loadu_epi8(mask, xp));
                }
            } else {
                // Low nibbles pair with slices 0..4 (the first 16·r activation bytes), high
                // nibbles with slices 4..8 (the next 16·r).
                let lo = _mm512_and_si512(w, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff + 4 * u);
                    let xl = _mm512_maskz_loadu_epi8(mask, xp);
                    let xh = _mm512_maskz_loadu_epi8(mask, xp.add(16 * r));
                    acc[n] = _mm512_dpbusd_epi32(acc[n], lo, xl);
                    acc[n] = _mm512_dpbusd_epi32(acc[n], hi, xh);
                }
            }
            u += len;
        }
        acc
    }
}

/// `TAIL_LANES[r][k] = k mod r`: the block that lane `k` of a partial group of `r` blocks
/// belongs to ([`tail512`]), built once at compile time.
static TAIL_LANES: [[i32; GROUP]; GROUP] = {
    let mut t = [[0i32; GROUP]; GROUP];
    let mut r = 1;
    while r < GROUP {
        let mut k = 0;
        while k < GROUP {
            t[r][k] = (k % r) as i32;
            k += 1;
        }
        r += 1;
    }
    t
};

/// AVX-512 VNNI: a whole group per register, one block per 32-bit lane.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `row` and `xs` are laid
/// out as for [`avx2`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn avx512<const N: usize, const Q8: bool>(
    row: &[u8],
    xs: &[ActRow<'_>; N],
    out: &mut [f32; N],
) {
    // SAFETY: every pointer below stays inside `row` or an `xs` row of the same block count, as the caller guarantees (see # Safety).
    unsafe {
        let (bpb, nb) = if Q8 {
            (QK, row.len() / Q8_0_BYTES)
        } else {
            (16, row.len() / Q4_1_BYTES)
        };
        let qs = row.as_ptr();
        let dp = qs.add(nb * bpb) as *const i16;
        let mp = dp.add(nb);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut accm = [_mm512_setzero_ps(); N];
        let full = nb / GROUP * GROUP;
        let mut g = 0;
        while g < full {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(dp.add(g) as *const __m256i));
            let mw = if Q8 {
                _mm512_mul_ps(dw, _mm512_set1_ps(-128.0))
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(mp.add(g) as *const __m256i))
            };
            let wbase = qs.add(g * bpb) as *const i8;
            // Two integer accumulators per row keep two dependency chains in flight.
            let (ia, ib) =
                group512::<N, Q8>(wbase, xs, g * QK, 64, |p| _mm512_loadu_si512(p as *const _));
            for n in 0..N {
                let x = &xs[n];
                let sc = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d.as_ptr().add(g)));
                let isum = _mm512_add_epi32(ia[n], ib[n]);
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, acc[n]);
                accm[n] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(x.s.as_ptr().add(g)), accm[n]);
            }
            g += GROUP;
        }
        if g < nb {
            let r = nb - g;
            let m16 = ((1u32 << r) - 1) as __mmask16;
            let dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, dp.add(g)));
            let mw = if Q8 {
                _mm512_mul_ps(dw, _mm512_set1_ps(-128.0))
            } else {
                _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, mp.add(g)))
            };
            // Lane k of the integer sums belongs to block k mod r: spread the scales so.
            let idx = _mm512_loadu_si512(TAIL_LANES[r].as_ptr() as *const _);
            let dwp = _mm512_permutexvar_ps(idx, dw);
            let isum = tail512::<N, Q8>(qs.add(g * bpb) as *const i8, xs, g * QK, r);
            for n in 0..N {
                let x = &xs[n];
                let dx = _mm512_maskz_loadu_ps(m16, x.d.as_ptr().add(g));
                let sc = _mm512_mul_ps(dwp, _mm512_permutexvar_ps(idx, dx));
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[n]), sc, acc[n]);
                accm[n] =
                    _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(m16, x.s.as_ptr().add(g)), accm[n]);
            }
        }
        for n in 0..N {
            out[n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[n], accm[n]));
        }
    }
}
