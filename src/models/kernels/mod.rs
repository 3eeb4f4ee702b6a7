//! Fused CPU kernels for the encoder forward pass (see `models::bert`) and the decoder's
//! decode-time attention ([`attend`]).
//!
//! Everything here works on plain `f32` slices in row-major layout. Element-wise kernels
//! are written so that LLVM vectorises them; each public entry point is compiled twice,
//! once for AVX-512 (selected at run time) and once for the baseline target, so the
//! binary stays portable. Dense layers use weights pre-packed at load: f32 panels with an
//! AVX-512 FMA tile ([`packed_f32`]) or bf16 panels with AVX512_BF16 ([`bf16`]); the
//! `gemm` crate (the one candle uses) serves attention and CPUs without AVX-512.

pub mod attend;
pub mod bf16;
pub mod linear;
pub mod math;
pub mod packed_f32;

use std::sync::OnceLock;

/// Whether the running CPU has the AVX-512 subset the vectorised kernels are built for.
pub fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The first two levels of the transposing add trees that reduce many AVX-512 vectors at
/// once (attention's sixteen scores, the quantised kernel's eight tile sums): each level
/// adds two vectors' 128-bit quads pairwise, so the later levels see half as many vectors.
#[cfg(target_arch = "x86_64")]
pub(crate) mod fold {
    use std::arch::x86_64::*;

    /// `(a, b)` → quads `[a.q0+a.q2, a.q1+a.q3, b.q0+b.q2, b.q1+b.q3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn halves(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    }

    /// Two [`halves`] results `(x, y)` → one quad per input vector of the pair of pairs
    /// (four partial sums each): `[x.q0+x.q1, x.q2+x.q3, y.q0+y.q1, y.q2+y.q3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn quads(x: __m512, y: __m512) -> __m512 {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
        )
    }
}

/// Defines `fn $name(args)` (with the given visibility) that runs `$body` compiled for AVX-512 when the CPU has
/// it and for the baseline target otherwise.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            /// # Safety
            /// The CPU must support AVX-512 F/BW/VL, AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::models::kernels::has_avx512() {
                // SAFETY: the CPU supports every feature enabled on `avx512`.
                return unsafe { avx512($($arg),*) };
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// The destination buffer of a parallel kernel, shared by the rayon tasks that each write
/// their own disjoint part of it (tiles, rows, (sequence, head) blocks). The one place a raw
/// output pointer crosses threads: every user states, at its `unsafe` write, why its part
/// is disjoint from every other task's and in bounds.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

// SAFETY: the pointer is only dereferenced inside `unsafe` blocks whose users guarantee that
// concurrent tasks write disjoint elements of a buffer that outlives the parallel region
// (the buffer is mutably borrowed by the caller for that whole region).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Shares `buf` for the duration of one parallel region.
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        SharedMut(buf.as_mut_ptr())
    }

    /// The buffer's first element.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
