//! The x86 kernels of [`super`]: AVX2 (eight blocks per register) and AVX-512 VNNI (a whole
//! group per register) dot products of packed `Q4_1` / `Q8_0` rows with activation rows.

use super::{ActRow, GROUP, Q4_1_BYTES, Q8_0_BYTES, QK};
use crate::models::kernels::fold;
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

/// The integer block sums of one group (`step` bytes per slice) of `R` weight rows against
/// every activation row; `load` reads one slice (plain for whole groups, masked for the
/// last). One row alone keeps two accumulators per activation row, so two dependency chains
/// are in flight; a tile of rows has chains enough and keeps one, which also keeps its
/// accumulators in registers.
///
/// # Safety
/// The CPU must support AVX-512 VNNI. Every `wbase[r] + 8 * step` and every `xs` row from
/// `xoff` on must be readable through `load` (which may mask the last group).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn group512<const R: usize, const N: usize, const Q8: bool>(
    wbase: &[*const i8; R],
    xs: &[ActRow<'_>; N],
    xoff: usize,
    step: usize,
    load: impl Fn(*const i8) -> __m512i,
) -> [[__m512i; N]; R] {
    // SAFETY: the offsets stay inside the slices the caller passes (see # Safety).
    unsafe {
        let mut ia = [[_mm512_setzero_si512(); N]; R];
        let mut ib = [[_mm512_setzero_si512(); N]; R];
        if Q8 {
            for j in 0..8 {
                let w: [__m512i; R] = std::array::from_fn(|r| load(wbase[r].add(j * step)));
                for n in 0..N {
                    let xv = load(xs[n].qs.as_ptr().add(xoff + j * step));
                    for r in 0..R {
                        if R == 1 && j % 2 == 1 {
                            ib[r][n] = _mm512_dpbusd_epi32(ib[r][n], w[r], xv);
                        } else {
                            ia[r][n] = _mm512_dpbusd_epi32(ia[r][n], w[r], xv);
                        }
                    }
                }
            }
        } else {
            let m4 = _mm512_set1_epi8(0xF);
            for j in 0..4 {
                let v: [__m512i; R] = std::array::from_fn(|r| load(wbase[r].add(j * step)));
                let lo = v.map(|v| _mm512_and_si512(v, m4));
                let hi = v.map(|v| _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff);
                    let xl = load(xp.add(j * step));
                    let xh = load(xp.add((j + 4) * step));
                    for r in 0..R {
                        ia[r][n] = _mm512_dpbusd_epi32(ia[r][n], lo[r], xl);
                        if R == 1 {
                            ib[r][n] = _mm512_dpbusd_epi32(ib[r][n], hi[r], xh);
                        } else {
                            ia[r][n] = _mm512_dpbusd_epi32(ia[r][n], hi[r], xh);
                        }
                    }
                }
            }
        }
        if R == 1 {
            for n in 0..N {
                ia[0][n] = _mm512_add_epi32(ia[0][n], ib[0][n]);
            }
        }
        ia
    }
}

/// The integer block sums of the last group of `R` rows when it holds fewer than [`GROUP`]
/// blocks (`r`): its slices are contiguous, so as many whole slices as fit go into one
/// register (`r · ⌊16/r⌋` four-byte lanes) instead of one slice per register, and lane `k`
/// holds part of block `k mod r`. A row of 18 blocks (576 columns) thus pays two
/// multiply-adds per activation row for its last two blocks instead of eight.
///
/// # Safety
/// The CPU must support AVX-512 VNNI; every `wbase[i]` must address the group's `bpb · r`
/// weight bytes and every `xs` row its `QK · r` activation bytes from `xoff` on.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tail512<const R: usize, const N: usize, const Q8: bool>(
    wbase: &[*const i8; R],
    xs: &[ActRow<'_>; N],
    xoff: usize,
    r: usize,
) -> [[__m512i; N]; R] {
    // SAFETY: every masked load stays inside the group's bytes (see # Safety).
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); N]; R];
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
            let w: [__m512i; R] =
                std::array::from_fn(|i| _mm512_maskz_loadu_epi8(mask, wbase[i].add(4 * u)));
            if Q8 {
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff + 4 * u);
                    let xv = _mm512_maskz_loadu_epi8(mask, xp);
                    for i in 0..R {
                        acc[i][n] = _mm512_dpbusd_epi32(acc[i][n], w[i], xv);
                    }
                }
            } else {
                // Low nibbles pair with slices 0..4 (the first 16·r activation bytes), high
                // nibbles with slices 4..8 (the next 16·r).
                let lo = w.map(|w| _mm512_and_si512(w, m4));
                let hi = w.map(|w| _mm512_and_si512(_mm512_srli_epi16(w, 4), m4));
                for n in 0..N {
                    let xp = xs[n].qs.as_ptr().add(xoff + 4 * u);
                    let xl = _mm512_maskz_loadu_epi8(mask, xp);
                    let xh = _mm512_maskz_loadu_epi8(mask, xp.add(16 * r));
                    for i in 0..R {
                        acc[i][n] = _mm512_dpbusd_epi32(acc[i][n], lo[i], xl);
                        acc[i][n] = _mm512_dpbusd_epi32(acc[i][n], hi[i], xh);
                    }
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

/// The lane sum of one vector, lane `i` with lane `i + 8`, then `i + 4`, `i + 2`, `i + 1`:
/// the order [`hsum8`] adds in too, so a row's dot product is the same to the bit whether
/// it ran in a tile or alone (a batched greedy answer equals the solo one).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn hsum1(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}

/// The lane sums of eight vectors, in their order and in [`hsum1`]'s order of additions:
/// three levels of shuffle + add (23 instructions, against about 64 for eight separate
/// reductions).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn hsum8(v: &[__m512; 8]) -> [f32; 8] {
    // SAFETY: AVX-512 F is enabled here (see # Safety).
    unsafe {
        // 256-bit halves, then quad k of l2[h] holds four partials of v[4h + k].
        let l1: [__m512; 4] = std::array::from_fn(|i| fold::halves(v[2 * i], v[2 * i + 1]));
        let l2: [__m512; 2] = std::array::from_fn(|i| fold::quads(l1[2 * i], l1[2 * i + 1]));
        // Quad k: [two partials of v[k], two of v[4 + k]] (lane i with lane i + 2, as
        // `hsum1` pairs them), then lane 0 and lane 2 the sums.
        let l3 = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(l2[0], l2[1]),
            _mm512_shuffle_ps::<0b11_10_11_10>(l2[0], l2[1]),
        );
        let l4 = _mm512_add_ps(l3, _mm512_shuffle_ps::<0b10_11_00_01>(l3, l3));
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), l4);
        std::array::from_fn(|i| lanes[if i < 4 { 4 * i } else { 4 * (i - 4) + 2 }])
    }
}

/// AVX-512 VNNI: `R` weight rows (a tile, so every activation load serves all of them)
/// against `N` activation rows, a whole group per register, one block per 32-bit lane.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; every row of `rows` and
/// `xs` is laid out as for [`avx2`], all with the same block count.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn avx512<const R: usize, const N: usize, const Q8: bool>(
    rows: &[&[u8]; R],
    xs: &[ActRow<'_>; N],
    out: &mut [[f32; N]; R],
) {
    // SAFETY: every pointer below stays inside a row of `rows` or an `xs` row of the same block count, as the caller guarantees (see # Safety).
    unsafe {
        let (bpb, nb) = if Q8 {
            (QK, rows[0].len() / Q8_0_BYTES)
        } else {
            (16, rows[0].len() / Q4_1_BYTES)
        };
        let qs = rows.map(|r| r.as_ptr());
        let dp = qs.map(|q| q.add(nb * bpb) as *const i16);
        let mp = dp.map(|d| d.add(nb));
        // Scale × integer sum and minimum × activation sum go into one accumulator.
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let full = nb / GROUP * GROUP;
        let mut g = 0;
        while g < full {
            let dw = dp.map(|d| _mm512_cvtph_ps(_mm256_loadu_si256(d.add(g) as *const __m256i)));
            let mw: [__m512; R] = std::array::from_fn(|i| {
                if Q8 {
                    _mm512_mul_ps(dw[i], _mm512_set1_ps(-128.0))
                } else {
                    _mm512_cvtph_ps(_mm256_loadu_si256(mp[i].add(g) as *const __m256i))
                }
            });
            let wbase = qs.map(|q| q.add(g * bpb) as *const i8);
            let isum = group512::<R, N, Q8>(&wbase, xs, g * QK, 64, |p| {
                _mm512_loadu_si512(p as *const _)
            });
            for n in 0..N {
                let x = &xs[n];
                let dx = _mm512_loadu_ps(x.d.as_ptr().add(g));
                let sx = _mm512_loadu_ps(x.s.as_ptr().add(g));
                for i in 0..R {
                    let sc = _mm512_mul_ps(dw[i], dx);
                    let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][n]), sc, acc[i][n]);
                    acc[i][n] = _mm512_fmadd_ps(mw[i], sx, a);
                }
            }
            g += GROUP;
        }
        if g < nb {
            let r = nb - g;
            let m16 = ((1u32 << r) - 1) as __mmask16;
            let dw = dp.map(|d| _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, d.add(g))));
            let mw: [__m512; R] = std::array::from_fn(|i| {
                if Q8 {
                    _mm512_mul_ps(dw[i], _mm512_set1_ps(-128.0))
                } else {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, mp[i].add(g)))
                }
            });
            // Lane k of the integer sums belongs to block k mod r: spread the scales so.
            let idx = _mm512_loadu_si512(TAIL_LANES[r].as_ptr() as *const _);
            let dwp = dw.map(|d| _mm512_permutexvar_ps(idx, d));
            let wbase = qs.map(|q| q.add(g * bpb) as *const i8);
            let isum = tail512::<R, N, Q8>(&wbase, xs, g * QK, r);
            for n in 0..N {
                let x = &xs[n];
                let dx =
                    _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(m16, x.d.as_ptr().add(g)));
                let sx = _mm512_maskz_loadu_ps(m16, x.s.as_ptr().add(g));
                for i in 0..R {
                    let sc = _mm512_mul_ps(dwp[i], dx);
                    let a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][n]), sc, acc[i][n]);
                    acc[i][n] = _mm512_fmadd_ps(mw[i], sx, a);
                }
            }
        }
        if R * N == 8 {
            let v: [__m512; 8] = std::array::from_fn(|k| acc[k / N][k % N]);
            let sums = hsum8(&v);
            for (k, s) in sums.iter().enumerate() {
                out[k / N][k % N] = *s;
            }
        } else {
            for i in 0..R {
                for n in 0..N {
                    out[i][n] = hsum1(acc[i][n]);
                }
            }
        }
    }
}
