//! Linear layers of the decoder with their weights in whatever form the checkpoint gave:
//! ggml `Q4_1` / `Q8_0` blocks run on this crate's own kernels ([`kernels`]), every other
//! ggml format runs through candle's `QMatMul`, and dense safetensors weights through candle's
//! matmul. Activations come and go as plain row-major `f32` slices; the quantised paths
//! quantise them once per call to 8 bits ([`act::Q8Act`]) and split the output rows over the
//! rayon pool so each weight row is read once per step, whatever the number of tokens.

pub mod act;
pub mod kernels;

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;

use self::act::{Q8Act, QK};
use self::kernels::{ActRow, Isa, Q4_1_BYTES, Q8_0_BYTES};
use super::kernels::SharedMut;
use super::ModelError;

/// Weight storage of a [`QLinear`].
#[derive(Debug, Clone)]
pub enum Weights {
    /// ggml `Q4_1` blocks, row-major.
    Q4_1(Arc<Vec<u8>>),
    /// ggml `Q8_0` blocks, row-major.
    Q8_0(Arc<Vec<u8>>),
    /// Any other ggml format, with its raw bytes kept for concatenation.
    Ggml {
        dtype: GgmlDType,
        bytes: Arc<Vec<u8>>,
        mm: Arc<QMatMul>,
    },
    /// A dense `rows × cols` tensor (f32, f16 or bf16).
    Dense(Tensor),
}

/// `y = x Wᵀ (+ b)` with `W` of shape `rows × cols`.
#[derive(Debug, Clone)]
pub struct QLinear {
    pub rows: usize,
    pub cols: usize,
    pub weights: Weights,
    pub bias: Option<Vec<f32>>,
}

fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::Candle(e)
}

impl QLinear {
    /// True when the weights are f32 (dense or ggml `F32`).
    pub fn is_f32(&self) -> bool {
        match &self.weights {
            Weights::Dense(t) => t.dtype() == DType::F32,
            Weights::Ggml { dtype, .. } => *dtype == GgmlDType::F32,
            Weights::Q4_1(_) | Weights::Q8_0(_) => false,
        }
    }

    /// A linear layer from raw ggml bytes (`rows` rows of `cols` elements).
    pub fn from_ggml(
        dtype: GgmlDType,
        bytes: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<Self, ModelError> {
        if !cols.is_multiple_of(dtype.block_size())
            || bytes.len() != rows * cols / dtype.block_size() * dtype.type_size()
        {
            return Err(ModelError::Unsupported(format!(
                "{dtype:?} weight of {rows}x{cols} with {} bytes",
                bytes.len()
            )));
        }
        let weights = match dtype {
            GgmlDType::Q4_1 => {
                Weights::Q4_1(Arc::new(kernels::pack_q4_1(&bytes, cols / QK * Q4_1_BYTES)))
            }
            GgmlDType::Q8_0 => {
                Weights::Q8_0(Arc::new(kernels::pack_q8_0(&bytes, cols / QK * Q8_0_BYTES)))
            }
            _ => {
                let qt = qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &Device::Cpu)
                    .map_err(candle_err)?;
                let mm = QMatMul::from_qtensor(qt).map_err(candle_err)?;
                Weights::Ggml {
                    dtype,
                    bytes: Arc::new(bytes),
                    mm: Arc::new(mm),
                }
            }
        };
        Ok(QLinear {
            rows,
            cols,
            weights,
            bias: None,
        })
    }

    /// A linear layer from a dense `rows × cols` tensor.
    pub fn dense(w: Tensor) -> Result<Self, ModelError> {
        let (rows, cols) = w.dims2().map_err(candle_err)?;
        Ok(QLinear {
            rows,
            cols,
            weights: Weights::Dense(w),
            bias: None,
        })
    }

    /// Stacks the rows of several layers with the same input size into one layer (for fused
    /// q/k/v and gate/up projections). Falls back to dense f32 when the formats differ.
    pub fn concat(parts: Vec<QLinear>) -> Result<QLinear, ModelError> {
        let cols = parts[0].cols;
        if parts.iter().any(|p| p.cols != cols) {
            return Err(ModelError::Unsupported(
                "concatenating layers of different widths".into(),
            ));
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let mut b = Vec::with_capacity(rows);
            for p in &parts {
                match &p.bias {
                    Some(pb) => b.extend_from_slice(pb),
                    None => b.extend(std::iter::repeat_n(0.0, p.rows)),
                }
            }
            Some(b)
        } else {
            None
        };
        let dtypes = parts.iter().map(|p| p.ggml_dtype()).collect::<Vec<_>>();
        let mut out = if dtypes.iter().all(|d| d.is_some() && *d == dtypes[0]) {
            let dtype = dtypes[0].expect("checked above. This is a bug.");
            let mut bytes = Vec::new();
            for p in &parts {
                bytes.extend_from_slice(
                    p.raw_bytes().expect("ggml layer has bytes. This is a bug."),
                );
            }
            // Packed rows concatenate as they are; other formats are rebuilt by candle.
            match dtype {
                GgmlDType::Q4_1 => QLinear {
                    rows,
                    cols,
                    weights: Weights::Q4_1(Arc::new(bytes)),
                    bias: None,
                },
                GgmlDType::Q8_0 => QLinear {
                    rows,
                    cols,
                    weights: Weights::Q8_0(Arc::new(bytes)),
                    bias: None,
                },
                _ => QLinear::from_ggml(dtype, bytes, rows, cols)?,
            }
        } else {
            let ts = parts
                .iter()
                .map(|p| p.dense_f32())
                .collect::<Result<Vec<_>, _>>()?;
            QLinear::dense(Tensor::cat(&ts, 0).map_err(candle_err)?)?
        };
        out.bias = bias;
        Ok(out)
    }

    /// The weights in ggml's own block layout (undoing the kernels' repacking), for
    /// formats that have one; for the device-generic path's `QMatMul`s.
    pub fn ggml_bytes(&self) -> Option<(GgmlDType, Vec<u8>)> {
        let unpack = |packed: &[u8], block: usize, f: fn(&[u8], &mut [u8])| {
            let row = self.cols / QK * block;
            let mut out = vec![0u8; packed.len()];
            for (src, dst) in packed.chunks_exact(row).zip(out.chunks_exact_mut(row)) {
                f(src, dst);
            }
            out
        };
        match &self.weights {
            Weights::Q4_1(b) => Some((
                GgmlDType::Q4_1,
                unpack(b, Q4_1_BYTES, kernels::unpack_q4_1_row),
            )),
            Weights::Q8_0(b) => Some((
                GgmlDType::Q8_0,
                unpack(b, Q8_0_BYTES, kernels::unpack_q8_0_row),
            )),
            Weights::Ggml { dtype, bytes, .. } => Some((*dtype, bytes.to_vec())),
            Weights::Dense(_) => None,
        }
    }

    fn ggml_dtype(&self) -> Option<GgmlDType> {
        match &self.weights {
            Weights::Q4_1(_) => Some(GgmlDType::Q4_1),
            Weights::Q8_0(_) => Some(GgmlDType::Q8_0),
            Weights::Ggml { dtype, .. } => Some(*dtype),
            Weights::Dense(_) => None,
        }
    }

    fn raw_bytes(&self) -> Option<&[u8]> {
        match &self.weights {
            Weights::Q4_1(b) | Weights::Q8_0(b) | Weights::Ggml { bytes: b, .. } => Some(b),
            Weights::Dense(_) => None,
        }
    }

    /// The weights as a dense f32 tensor.
    pub fn dense_f32(&self) -> Result<Tensor, ModelError> {
        let t = match &self.weights {
            Weights::Dense(t) => t.to_dtype(DType::F32).map_err(candle_err)?,
            Weights::Q4_1(_) | Weights::Q8_0(_) | Weights::Ggml { .. } => {
                let mut v = vec![0f32; self.rows * self.cols];
                for (r, o) in v.chunks_exact_mut(self.cols).enumerate() {
                    self.dequant_row(r, o)?;
                }
                Tensor::from_vec(v, (self.rows, self.cols), &Device::Cpu).map_err(candle_err)?
            }
        };
        Ok(t)
    }

    /// Writes row `r` of the weights, as f32, into `out` (used for embedding look-ups).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) -> Result<(), ModelError> {
        match &self.weights {
            Weights::Q4_1(b) => {
                let rb = self.cols / QK * Q4_1_BYTES;
                kernels::dequant_q4_1(&b[r * rb..(r + 1) * rb], out);
            }
            Weights::Q8_0(b) => {
                let rb = self.cols / QK * Q8_0_BYTES;
                kernels::dequant_q8_0(&b[r * rb..(r + 1) * rb], out);
            }
            Weights::Ggml { dtype, bytes, .. } => {
                let rb = self.cols / dtype.block_size() * dtype.type_size();
                let qt = qtensor_from_ggml(
                    *dtype,
                    &bytes[r * rb..(r + 1) * rb],
                    vec![1, self.cols],
                    &Device::Cpu,
                )
                .map_err(candle_err)?;
                let v = qt.dequantize(&Device::Cpu).map_err(candle_err)?;
                out.copy_from_slice(
                    &v.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(candle_err)?,
                );
            }
            Weights::Dense(t) => {
                let row = t
                    .get(r)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.to_vec1::<f32>());
                out.copy_from_slice(&row.map_err(candle_err)?);
            }
        }
        Ok(())
    }

    /// `out (n × rows) = x (n × cols) Wᵀ + b`; `act` is scratch space for the quantised input.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        act: &mut Q8Act,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        debug_assert_eq!(x.len(), n * self.cols);
        debug_assert_eq!(out.len(), n * self.rows);
        match &self.weights {
            Weights::Q4_1(b) => {
                act.quantize(x, n, self.cols);
                gemm_blocks::<false>(b, self.rows, self.cols / QK * Q4_1_BYTES, act, out);
            }
            Weights::Q8_0(b) => {
                act.quantize(x, n, self.cols);
                gemm_blocks::<true>(b, self.rows, self.cols / QK * Q8_0_BYTES, act, out);
            }
            Weights::Ggml { mm, .. } => {
                let xt = Tensor::from_slice(x, (n, self.cols), &Device::Cpu).map_err(candle_err)?;
                let y = mm
                    .forward(&xt)
                    .and_then(|y| y.flatten_all())
                    .and_then(|y| y.to_vec1::<f32>());
                out.copy_from_slice(&y.map_err(candle_err)?);
            }
            Weights::Dense(w) => {
                let xt = Tensor::from_slice(x, (n, self.cols), &Device::Cpu)
                    .and_then(|t| t.to_dtype(w.dtype()))
                    .map_err(candle_err)?;
                let y = xt
                    .matmul(&w.t().map_err(candle_err)?)
                    .and_then(|y| y.to_dtype(DType::F32))
                    .and_then(|y| y.flatten_all())
                    .and_then(|y| y.to_vec1::<f32>());
                out.copy_from_slice(&y.map_err(candle_err)?);
            }
        }
        if let Some(b) = &self.bias {
            for o in out.chunks_exact_mut(self.rows) {
                for (v, bv) in o.iter_mut().zip(b) {
                    *v += bv;
                }
            }
        }
        Ok(())
    }
}

/// Row-parallel quantised mat-mul (`Q8_0` rows when `Q8`, else `Q4_1`): every weight row is
/// dotted with every activation row.
fn gemm_blocks<const Q8: bool>(
    w: &[u8],
    rows: usize,
    row_bytes: usize,
    act: &Q8Act,
    out: &mut [f32],
) {
    let isa = isa();
    let n = act.rows;
    let xs: Vec<ActRow> = (0..n)
        .map(|r| {
            let (qs, d, s) = act.row(r);
            ActRow { qs, d, s }
        })
        .collect();
    let threads = rayon::current_num_threads().max(1);
    // An even chunk, so a task's rows pair up into tiles (only the last task may end on a
    // lone row).
    let chunk = (rows / (threads * 8)).clamp(4, 64).next_multiple_of(2);
    let nchunks = rows.div_ceil(chunk);
    let ptr = SharedMut::new(out);
    let row = |r: usize| &w[r * row_bytes..(r + 1) * row_bytes];
    // A task owns `chunk` weight rows and runs every activation row against them: two weight
    // rows by four activation rows at a time (so each load of either feeds several
    // multiply-adds), its weights staying in L1/L2 while the activations stream once per task.
    let work = |c: usize| {
        let p = ptr;
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
        // Writes the tile at (t, r): activation row t + k, weight row r + i.
        let put = |t: usize, r: usize| {
            move |k: usize, i: usize, v: f32| {
                debug_assert!(t + k < n && r + i < r1);
                // SAFETY: (t + k, r + i) is in bounds (every caller passes a tile inside
                // `n` activation rows and this task's rows) and row r + i belongs to this
                // task only.
                unsafe { *p.get().add((t + k) * rows + r + i) = v }
            }
        };
        let mut t = 0;
        while t + 4 <= n {
            let x4 = [xs[t], xs[t + 1], xs[t + 2], xs[t + 3]];
            let mut r = r0;
            while r < r1 {
                // The first pass over the task's rows brings them from memory: ask for the
                // next rows while these compute.
                if t == 0 && r + 2 < r1 {
                    prefetch(&w[(r + 2) * row_bytes..(r + 4).min(r1) * row_bytes]);
                }
                if r + 1 < r1 {
                    tile::<2, 4, Q8>(isa, &[row(r), row(r + 1)], &x4, put(t, r));
                    r += 2;
                } else {
                    tile::<1, 4, Q8>(isa, &[row(r)], &x4, put(t, r));
                    r += 1;
                }
            }
            t += 4;
        }
        for (t, x) in xs.iter().enumerate().skip(t) {
            for r in r0..r1 {
                if t + 1 == n && r + 1 < r1 {
                    prefetch(row(r + 1));
                }
                tile::<1, 1, Q8>(isa, &[row(r)], &[*x], put(t, r));
            }
        }
    };
    if nchunks == 1 {
        work(0);
    } else {
        (0..nchunks).into_par_iter().for_each(work);
    }
}

/// One kernel call: `R` weight rows against `N` activation rows, each result handed to
/// `put(activation k, row i, value)`.
#[inline(always)]
fn tile<const R: usize, const N: usize, const Q8: bool>(
    isa: Isa,
    rows: &[&[u8]; R],
    xs: &[ActRow<'_>; N],
    put: impl Fn(usize, usize, f32),
) {
    let mut o = [[0f32; N]; R];
    kernels::dot::<R, N, Q8>(isa, rows, xs, &mut o);
    for (i, oi) in o.iter().enumerate() {
        for (k, v) in oi.iter().enumerate() {
            put(k, i, *v);
        }
    }
}

/// Asks the CPU to start loading `bytes` (the next weight row) into cache.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..bytes.len()).step_by(64) {
        // SAFETY: prefetching is a hint; the address is inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().add(i) as *const i8,
            )
        };
    }
}

/// The kernel level, detected once.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}
