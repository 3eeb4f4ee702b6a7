//! Throughput of the quantised mat-mul ([`QLinear::forward`]) on the default chat model's
//! layer shapes, for kernel work measured apart from the rest of a decode step:
//!
//! `cargo run --release --example quant_bench -- [--format q4_1|q8_0] [--n 16] [--reps 200]`
//!
//! Threads come from `RAYON_NUM_THREADS`. Weights are seeded random blocks with sane scales.
//! Prints one JSON line: per shape (`rows x cols`) the median milliseconds per call and the
//! multiply-adds per second it implies, and the step-weighted total (one call per layer and
//! shape as SmolLM2-135M runs them: 30 layers, then the 49,152-row output layer).

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use trident::models::quant::act::Q8Act;
use trident::models::quant::QLinear;
use trident::models::testutil::SplitMix;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// Random ggml blocks of `dtype` for `rows × cols` weights, scales in a realistic range.
fn weights(dtype: GgmlDType, rows: usize, cols: usize, rng: &mut SplitMix) -> Vec<u8> {
    let (bytes, scales) = match dtype {
        GgmlDType::Q4_1 => (20, 2),
        _ => (34, 1),
    };
    let blocks = rows * cols / 32;
    let mut out = Vec::with_capacity(blocks * bytes);
    for _ in 0..blocks {
        for s in 0..scales {
            let v = if s == 0 { 0.01 } else { -0.08 } * (1.0 + rng.uniform(0.5));
            out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
        for _ in 0..bytes - 2 * scales {
            out.push((rng.next_u64() >> 56) as u8);
        }
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let format = arg(&args, "--format", "q4_1");
    let dtype = match format.as_str() {
        "q4_1" => GgmlDType::Q4_1,
        "q8_0" => GgmlDType::Q8_0,
        other => return Err(format!("unknown format {other}").into()),
    };
    let n: usize = arg(&args, "--n", "16").parse()?;
    let reps: usize = arg(&args, "--reps", "200").parse()?;
    // (rows, cols, calls per step): fused qkv, o, fused gate/up, down, output layer.
    let shapes = [
        (960, 576, 30),
        (576, 576, 30),
        (3072, 576, 30),
        (576, 1536, 30),
        (49152, 576, 1),
    ];
    let mut rng = SplitMix::new(7);
    let mut parts = Vec::new();
    let mut step_ms = 0.0;
    for (rows, cols, calls) in shapes {
        let lin = QLinear::from_ggml(dtype, weights(dtype, rows, cols, &mut rng), rows, cols)?;
        let x = rng.vec(n * cols, 0.5);
        let mut out = vec![0f32; n * rows];
        let mut act = Q8Act::default();
        let reps = if rows > 10_000 { reps / 10 } else { reps }.max(3);
        for _ in 0..3 {
            lin.forward(&x, n, &mut act, &mut out)?;
        }
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                lin.forward(&x, n, &mut act, &mut out).map(|_| t.elapsed())
            })
            .map(|r| r.map(|d| d.as_secs_f64() * 1e3))
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        step_ms += ms * calls as f64;
        let gmacs = (rows * cols * n) as f64 / ms / 1e6;
        parts.push(format!(
            "\"{rows}x{cols}\":{{\"ms\":{ms:.4},\"gmac_s\":{gmacs:.1}}}"
        ));
    }
    println!(
        "{{\"format\":\"{format}\",\"n\":{n},\"threads\":{},{},\"step_ms\":{step_ms:.2}}}",
        rayon::current_num_threads(),
        parts.join(",")
    );
    Ok(())
}
