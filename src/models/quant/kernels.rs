//! Dot products of one quantised weight row with up to four [`Q8Act`](super::act::Q8Act)
//! rows, for the ggml block formats that have a fast path here, `Q4_1` and `Q8_0`.
//!
//! Rows are repacked at load ([`pack_q4_1`], [`pack_q8_0`]) from ggml's array of blocks into
//! *interleaved groups* of up to [`GROUP`] blocks, then the scales:
//! * within a group of `r` blocks, the bytes of a block are cut into 4-byte slices and slice
//!   `j` of every block is stored together (block 0's four bytes, block 1's, … block `r-1`'s),
//!   slice after slice. One 64-byte load thus holds the same four elements of sixteen blocks,
//!   and a `vpdpbusd` accumulates one block per 32-bit lane: a block's integer dot product is
//!   complete after its slices, and the float scales are applied once per group, not once per
//!   block pair;
//! * `Q4_1` row: `nb × 16` bytes of nibbles (byte `i` of a block holds element `i` in its low
//!   nibble and element `i + 16` in its high one, as in ggml), `nb` f16 scales `d`, `nb` f16
//!   minima `m`; value = d·q + m;
//! * `Q8_0` row: `nb × 32` bytes `q + 128` (offset binary), `nb` f16 scales; value = d·q.
//!
//! Activations use the same interleaving ([`slot`]). Both formats are thus "unsigned bytes ×
//! scale + minimum" (Q8_0's minimum is −128·d), which is what `vpdpbusd` (unsigned × signed
//! bytes) wants. Kernels: portable scalar, AVX2, and AVX-512 VNNI. [`Isa::detect`] picks one
//! at run time; the tests compare every level the machine supports with the dequantised dot
//! product.

use super::act::QK;

/// Blocks per interleaved group.
pub const GROUP: usize = 16;

/// Where byte `i` of block `b` lives in an interleaved row of `nb` blocks of `bpb` bytes.
#[inline]
pub fn slot(nb: usize, b: usize, i: usize, bpb: usize) -> usize {
    let (g, l) = (b / GROUP * GROUP, b % GROUP);
    let r = GROUP.min(nb - g);
    g * bpb + (i / 4) * 4 * r + l * 4 + i % 4
}

/// One activation row as seen by the kernels: quantised values (interleaved), block scales,
/// scaled sums.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// Instruction-set level used by the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    /// The best level this CPU supports (`TRIDENT_ISA=scalar|avx2` lowers it).
    pub fn detect() -> Isa {
        let cap = std::env::var("TRIDENT_ISA").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let vnni = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if cap == "scalar" {
                return Isa::Scalar;
            }
            if vnni && cap != "avx2" {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        let _ = cap;
        Isa::Scalar
    }
}

/// Bytes per block of `Q4_1` (ggml and packed alike).
pub const Q4_1_BYTES: usize = 20;
/// Bytes per block of `Q8_0` (ggml and packed alike).
pub const Q8_0_BYTES: usize = 34;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Repacks ggml `Q4_1` rows (each `row_bytes` long) into the kernel layout.
pub fn pack_q4_1(ggml: &[u8], row_bytes: usize) -> Vec<u8> {
    let nb = row_bytes / Q4_1_BYTES;
    let mut out = vec![0u8; ggml.len()];
    for (src, dst) in ggml
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        for (b, blk) in src.chunks_exact(Q4_1_BYTES).enumerate() {
            for i in 0..16 {
                dst[slot(nb, b, i, 16)] = blk[4 + i];
            }
            dst[nb * 16 + 2 * b..nb * 16 + 2 * b + 2].copy_from_slice(&blk[0..2]);
            dst[nb * 18 + 2 * b..nb * 18 + 2 * b + 2].copy_from_slice(&blk[2..4]);
        }
    }
    out
}

/// Repacks ggml `Q8_0` rows (each `row_bytes` long) into the kernel layout.
pub fn pack_q8_0(ggml: &[u8], row_bytes: usize) -> Vec<u8> {
    let nb = row_bytes / Q8_0_BYTES;
    let mut out = vec![0u8; ggml.len()];
    for (src, dst) in ggml
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(row_bytes))
    {
        for (b, blk) in src.chunks_exact(Q8_0_BYTES).enumerate() {
            for i in 0..QK {
                dst[slot(nb, b, i, QK)] = blk[2 + i] ^ 0x80;
            }
            dst[nb * QK + 2 * b..nb * QK + 2 * b + 2].copy_from_slice(&blk[0..2]);
        }
    }
    out
}

/// Undoes [`pack_q4_1`] for one row (`dst` gets ggml's blocks).
pub fn unpack_q4_1_row(src: &[u8], dst: &mut [u8]) {
    let nb = src.len() / Q4_1_BYTES;
    for (b, blk) in dst.chunks_exact_mut(Q4_1_BYTES).enumerate() {
        blk[0..2].copy_from_slice(&src[nb * 16 + 2 * b..nb * 16 + 2 * b + 2]);
        blk[2..4].copy_from_slice(&src[nb * 18 + 2 * b..nb * 18 + 2 * b + 2]);
        for i in 0..16 {
            blk[4 + i] = src[slot(nb, b, i, 16)];
        }
    }
}

/// Undoes [`pack_q8_0`] for one row (`dst` gets ggml's blocks).
pub fn unpack_q8_0_row(src: &[u8], dst: &mut [u8]) {
    let nb = src.len() / Q8_0_BYTES;
    for (b, blk) in dst.chunks_exact_mut(Q8_0_BYTES).enumerate() {
        blk[0..2].copy_from_slice(&src[nb * QK + 2 * b..nb * QK + 2 * b + 2]);
        for i in 0..QK {
            blk[2 + i] = src[slot(nb, b, i, QK)] ^ 0x80;
        }
    }
}

/// Dequantises one packed `Q4_1` row into `out`.
pub fn dequant_q4_1(row: &[u8], out: &mut [f32]) {
    let nb = row.len() / Q4_1_BYTES;
    for (b, o) in out.chunks_exact_mut(QK).enumerate().take(nb) {
        let (d, m) = (f16_at(row, nb * 16 + 2 * b), f16_at(row, nb * 18 + 2 * b));
        for i in 0..16 {
            let q = row[slot(nb, b, i, 16)];
            o[i] = d * (q & 0xF) as f32 + m;
            o[i + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Dequantises one packed `Q8_0` row into `out`.
pub fn dequant_q8_0(row: &[u8], out: &mut [f32]) {
    let nb = row.len() / Q8_0_BYTES;
    for (b, o) in out.chunks_exact_mut(QK).enumerate().take(nb) {
        let d = f16_at(row, nb * QK + 2 * b);
        for (i, v) in o.iter_mut().enumerate() {
            *v = d * (row[slot(nb, b, i, QK)] as i32 - 128) as f32;
        }
    }
}

/// Portable kernel for both formats (`Q8` selects the format): per block, the exact integer
/// dot product, then `d·dx·Σ + m·s`.
fn scalar<const N: usize, const Q8: bool>(row: &[u8], xs: &[ActRow<'_>; N], out: &mut [f32; N]) {
    let (bpb, nb) = if Q8 {
        (QK, row.len() / Q8_0_BYTES)
    } else {
        (16, row.len() / Q4_1_BYTES)
    };
    for (n, x) in xs.iter().enumerate() {
        let mut acc = 0f32;
        for b in 0..nb {
            let d = f16_at(row, nb * bpb + 2 * b);
            let m = if Q8 {
                -128.0 * d
            } else {
                f16_at(row, nb * 18 + 2 * b)
            };
            let q = |i: usize| x.qs[slot(nb, b, i, QK)] as i32;
            let mut isum = 0i32;
            for i in 0..bpb {
                let w = row[slot(nb, b, i, bpb)] as i32;
                if Q8 {
                    isum += w * q(i);
                } else {
                    isum += (w & 0xF) * q(i) + (w >> 4) * q(i + 16);
                }
            }
            acc += d * x.d[b] * isum as f32 + m * x.s[b];
        }
        out[n] = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

/// `out[i][n] = rows[i] · xs[n]` for packed rows of `Q8_0` (`Q8`) or `Q4_1`: the AVX-512
/// kernel takes the rows as one tile, the others one row at a time.
#[inline]
pub fn dot<const R: usize, const N: usize, const Q8: bool>(
    isa: Isa,
    rows: &[&[u8]; R],
    xs: &[ActRow<'_>; N],
    out: &mut [[f32; N]; R],
) {
    match isa {
        // SAFETY: `Isa::detect` returned this level only when the CPU has these features;
        // row and activation lengths agree (checked by the caller, `QLinear::forward`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::avx512::<R, N, Q8>(rows, xs, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            for (row, o) in rows.iter().zip(out.iter_mut()) {
                // SAFETY: as above.
                unsafe { x86::avx2::<N, Q8>(row, xs, o) }
            }
        }
        _ => {
            for (row, o) in rows.iter().zip(out.iter_mut()) {
                scalar::<N, Q8>(row, xs, o)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::act::Q8Act;
    use super::*;

    fn rand_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    fn set_f16(b: &mut [u8], i: usize, v: f32) {
        b[i..i + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
    }

    /// ggml-layout dequantisation, written independently of the packed layout.
    fn ggml_dequant(fmt: &str, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        if fmt == "q4_1" {
            for blk in bytes.chunks_exact(Q4_1_BYTES) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let lo: Vec<f32> = (0..16).map(|j| d * (blk[4 + j] & 0xF) as f32 + m).collect();
                let hi: Vec<f32> = (0..16).map(|j| d * (blk[4 + j] >> 4) as f32 + m).collect();
                out.extend(lo);
                out.extend(hi);
            }
        } else {
            for blk in bytes.chunks_exact(Q8_0_BYTES) {
                out.extend((0..QK).map(|j| f16_at(blk, 0) * (blk[2 + j] as i8) as f32));
            }
        }
        out
    }

    #[test]
    fn unpacking_gives_back_the_ggml_rows() {
        // 40 blocks: two whole groups of 16 and a partial one.
        for (block, seed) in [(Q4_1_BYTES, 3), (Q8_0_BYTES, 4)] {
            let row = 40 * block;
            let ggml = rand_bytes(3 * row, seed);
            type Unpack = fn(&[u8], &mut [u8]);
            let (packed, unpack): (Vec<u8>, Unpack) = if block == Q4_1_BYTES {
                (pack_q4_1(&ggml, row), unpack_q4_1_row)
            } else {
                (pack_q8_0(&ggml, row), unpack_q8_0_row)
            };
            assert_ne!(packed, ggml);
            let mut back = vec![0u8; ggml.len()];
            for (src, dst) in packed.chunks_exact(row).zip(back.chunks_exact_mut(row)) {
                unpack(src, dst);
            }
            assert_eq!(back, ggml, "block size {block}");
        }
    }

    /// `row` against four activation rows and against `x1` alone, after checking that
    /// every tile holding it (beside `other`, in either place) gives the same bits as the
    /// lone-row kernel: batched greedy decoding must equal solo decoding.
    fn lone_and_tiled<const Q8: bool>(
        isa: Isa,
        row: &[u8],
        other: &[u8],
        xs4: &[ActRow<'_>; 4],
        x1: ActRow<'_>,
        cols: usize,
    ) -> ([f32; 4], [f32; 1]) {
        let (mut got4, mut got1, mut other4) = ([[0f32; 4]], [[0f32; 1]], [[0f32; 4]]);
        dot::<1, 4, Q8>(isa, &[row], xs4, &mut got4);
        dot::<1, 1, Q8>(isa, &[row], &[x1], &mut got1);
        dot::<1, 4, Q8>(isa, &[other], xs4, &mut other4);
        for (pair, me, them) in [([row, other], 0, 1), ([other, row], 1, 0)] {
            let (mut tile, mut tile1) = ([[0f32; 4]; 2], [[0f32; 1]; 2]);
            dot::<2, 4, Q8>(isa, &pair, xs4, &mut tile);
            dot::<2, 1, Q8>(isa, &pair, &[x1], &mut tile1);
            for r in 0..4 {
                assert_eq!(
                    tile[me][r].to_bits(),
                    got4[0][r].to_bits(),
                    "{isa:?} Q8={Q8} {cols}: tile row {me}, act {r}"
                );
                assert_eq!(
                    tile[them][r].to_bits(),
                    other4[0][r].to_bits(),
                    "{isa:?} Q8={Q8} {cols}: tile row {them}, act {r}"
                );
            }
            assert_eq!(tile1[me][0].to_bits(), got1[0][0].to_bits());
        }
        (got4[0], got1[0])
    }

    fn check(isa: Isa, cols: usize) {
        let nb = cols / QK;
        let mut q4 = rand_bytes(nb * Q4_1_BYTES, 1);
        let mut q8 = rand_bytes(nb * Q8_0_BYTES, 2);
        for b in 0..nb {
            set_f16(&mut q4, b * Q4_1_BYTES, 0.01 * (b as f32 + 1.0));
            set_f16(&mut q4, b * Q4_1_BYTES + 2, -0.05 * b as f32);
            set_f16(&mut q8, b * Q8_0_BYTES, 0.02 * (b as f32 + 1.0));
        }
        let x: Vec<f32> = (0..4 * cols)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) * 0.1)
            .collect();
        let mut a = Q8Act::default();
        a.quantize(&x, 4, cols);
        let rows: Vec<ActRow> = (0..4)
            .map(|r| {
                let (qs, d, s) = a.row(r);
                ActRow { qs, d, s }
            })
            .collect();
        let xs4 = [rows[0], rows[1], rows[2], rows[3]];
        for fmt in ["q4_1", "q8_0"] {
            let (raw, packed) = if fmt == "q4_1" {
                (&q4, pack_q4_1(&q4, q4.len()))
            } else {
                (&q8, pack_q8_0(&q8, q8.len()))
            };
            let w = ggml_dequant(fmt, raw);
            let mut back = vec![0f32; cols];
            if fmt == "q4_1" {
                dequant_q4_1(&packed, &mut back);
            } else {
                dequant_q8_0(&packed, &mut back);
            }
            assert_eq!(back, w, "{fmt}: packed dequantisation");
            // The row alone, and as either row of a two-row tile (beside another row).
            let block = if fmt == "q4_1" {
                Q4_1_BYTES
            } else {
                Q8_0_BYTES
            };
            let scales = if fmt == "q4_1" { 4 } else { 2 };
            let raw_other: Vec<u8> = raw
                .chunks_exact(block)
                .flat_map(|b| {
                    let (s, q) = b.split_at(scales);
                    s.iter().copied().chain(q.iter().map(|v| v.rotate_left(3)))
                })
                .collect();
            let other = if fmt == "q4_1" {
                pack_q4_1(&raw_other, raw_other.len())
            } else {
                pack_q8_0(&raw_other, raw_other.len())
            };
            let (got4, got1) = if fmt == "q8_0" {
                lone_and_tiled::<true>(isa, &packed, &other, &xs4, rows[2], cols)
            } else {
                lone_and_tiled::<false>(isa, &packed, &other, &xs4, rows[2], cols)
            };
            for r in 0..4 {
                // The kernels must equal the dot product of the dequantised operands.
                let (_, d, _) = a.row(r);
                let q = |i: usize| a.value(r, i) as f32;
                let exact: f32 = (0..cols).map(|i| w[i] * q(i) * d[i / QK]).sum();
                let scale: f32 = (0..cols).map(|i| (w[i] * q(i) * d[i / QK]).abs()).sum();
                assert!(
                    (got4[r] - exact).abs() <= 1e-4 * scale.max(1.0),
                    "{isa:?} {fmt} {cols} row {r}: {} vs {exact}",
                    got4[r]
                );
                let full: f32 = w.iter().zip(&x[r * cols..]).map(|(a, b)| a * b).sum();
                assert!(
                    (got4[r] - full).abs() <= 0.02 * scale.max(1.0),
                    "{fmt} row {r}: {} vs {full}",
                    got4[r]
                );
            }
            assert_eq!(
                got1[0].to_bits(),
                got4[2].to_bits(),
                "{isa:?} {fmt} {cols}: N=1 vs N=4"
            );
        }
    }

    #[test]
    fn kernels_match_dequantised_dot_products() {
        let best = Isa::detect();
        let mut levels = vec![Isa::Scalar];
        if best != Isa::Scalar {
            levels.push(Isa::Avx2);
        }
        if best == Isa::Avx512Vnni {
            levels.push(Isa::Avx512Vnni);
        }
        // Block counts: one, odd, a full group of 16, and 16 + a partial group.
        for isa in levels {
            // Last groups of 2, 4, 9 and 15 blocks (the partial-group kernel's lane layouts).
            for cols in [32, 96, 512, 576, 640, 800, 992, 1536] {
                check(isa, cols);
            }
        }
    }
}
