//! Prefill and decode throughput of the decoder backend.
//!
//! `cargo run --release --example decoder_bench -- MODEL [--prompt-tokens 128]
//! [--decode-tokens 64] [--batch 16] [--context 64]`; threads come from `RAYON_NUM_THREADS`
//! (default: all cores). Prints one JSON line. The prompt is seeded random ids, like
//! `shared/peers/gguf_peer.py`, so figures compare with llama.cpp on the same file.
//!
//! `step_ms` is the cost of one forward step as the chat scheduler runs it, every sequence
//! at the same `--context` tokens: one decoding sequence, `--batch` decoding sequences, and
//! `--batch` decoding sequences plus one prefill chunk of P tokens (`mixed`, the steps that
//! admit a request), median of `--decode-tokens` steps each. `--profile-steps S` runs only
//! S steps of `--batch` decoding sequences (a clean target for `perf record`).

use std::path::PathBuf;
use std::time::Instant;

use trident::models::decoder::{DecoderModel, StepItem};
use trident::models::LoadOptions;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used by this process so far (user + system, all threads).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime field 11, stime field 12 (in 1/100 s).
    (tick(11) + tick(12)) / 100.0
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|x| x.0 as u32)
        .unwrap_or(0)
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Median wall time (ms) of `reps` steps of `nb` decoding sequences at `ctx` cached tokens,
/// plus one `prefill`-token chunk of a new prompt when `prefill` > 0.
fn step_ms(
    m: &DecoderModel,
    ctx: usize,
    nb: usize,
    prefill: usize,
    reps: usize,
    rnd: &mut impl FnMut() -> u32,
) -> BenchResult<f64> {
    let mut caches: Vec<_> = (0..nb).map(|_| m.new_sequence()).collect();
    let prompt: Vec<u32> = (0..ctx).map(|_| rnd()).collect();
    for c in caches.iter_mut() {
        m.step(&mut [StepItem {
            tokens: &prompt,
            cache: c,
        }])?;
    }
    let chunk: Vec<u32> = (0..prefill).map(|_| rnd()).collect();
    let mut times = Vec::with_capacity(reps);
    let mut toks: Vec<[u32; 1]> = vec![[rnd()]; nb];
    for _ in 0..reps {
        let mut fresh = m.new_sequence();
        let mut items: Vec<StepItem> = toks
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, c)| StepItem {
                tokens: p,
                cache: c,
            })
            .collect();
        if prefill > 0 {
            items.push(StepItem {
                tokens: &chunk,
                cache: &mut fresh,
            });
        }
        let t = Instant::now();
        let l = m.step(&mut items)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        toks = l.iter().take(nb).map(|x| [argmax(x)]).collect();
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The `step_ms` JSON object: batch 1 vs batch `nb` decode steps and mixed steps.
fn step_costs(
    m: &DecoderModel,
    ctx: usize,
    nb: usize,
    reps: usize,
    rnd: &mut impl FnMut() -> u32,
) -> BenchResult<String> {
    let reps = reps.max(3);
    let b1 = step_ms(m, ctx, 1, 0, reps, rnd)?;
    let bn = step_ms(m, ctx, nb, 0, reps, rnd)?;
    let mut mixed = Vec::new();
    for p in [16, 32, 64, 128, 256] {
        let ms = step_ms(m, ctx, nb, p, reps, rnd)?;
        mixed.push(format!("\"{p}\":{ms:.2}"));
    }
    Ok(format!(
        "{{\"context\":{ctx},\"batch_1\":{b1:.2},\"batch_{nb}\":{bn:.2},\"ratio\":{:.2},\"mixed_{nb}_plus_prefill\":{{{}}}}}",
        bn / b1,
        mixed.join(",")
    ))
}

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(args.get(1).ok_or("usage: decoder_bench MODEL [options]")?);
    let (np, nd, nb) = (
        arg(&args, "--prompt-tokens", 128),
        arg(&args, "--decode-tokens", 64),
        arg(&args, "--batch", 16),
    );
    let ctx = arg(&args, "--context", 64);
    let m = DecoderModel::load(&path, &LoadOptions::default())?;
    let vocab = m.info().vocab_size.min(30_000) as u64;
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (100 + s % (vocab - 100)) as u32
    };
    let prompt: Vec<u32> = (0..np).map(|_| rnd()).collect();
    let profile = arg(&args, "--profile-steps", 0);
    if profile > 0 {
        let ms = step_ms(&m, ctx, nb, 0, profile, &mut rnd)?;
        println!("{{\"batch\":{nb},\"context\":{ctx},\"median_step_ms\":{ms:.2}}}");
        return Ok(());
    }

    // Warm-up.
    let mut c = m.new_sequence();
    m.step(&mut [StepItem {
        tokens: &prompt[..16],
        cache: &mut c,
    }])?;

    // Single stream: best of 3.
    let (mut pf, mut dc) = (f64::MAX, f64::MAX);
    let (mut cpu_pf, mut cpu_dc) = (0f64, 0f64);
    for _ in 0..3 {
        let mut c = m.new_sequence();
        let t = Instant::now();
        let c0 = cpu_secs();
        let l = m.step(&mut [StepItem {
            tokens: &prompt,
            cache: &mut c,
        }])?;
        pf = pf.min(t.elapsed().as_secs_f64());
        cpu_pf += cpu_secs() - c0;
        let c0 = cpu_secs();
        let mut tok = argmax(&l[0]);
        let t = Instant::now();
        for _ in 0..nd {
            let l = m.step(&mut [StepItem {
                tokens: &[tok],
                cache: &mut c,
            }])?;
            tok = argmax(&l[0]);
        }
        dc = dc.min(t.elapsed().as_secs_f64() / nd as f64);
        cpu_dc += cpu_secs() - c0;
    }

    // Batch: nb sequences prefilled together (prompt/4 tokens each), then decoded together.
    let plen = (np / 4).max(1);
    let mut caches: Vec<_> = (0..nb).map(|_| m.new_sequence()).collect();
    let prompts: Vec<Vec<u32>> = (0..nb)
        .map(|_| (0..plen).map(|_| rnd()).collect())
        .collect();
    let t = Instant::now();
    let c0 = cpu_secs();
    let mut items: Vec<StepItem> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| StepItem {
            tokens: p,
            cache: c,
        })
        .collect();
    let l = m.step(&mut items)?;
    let bpf = t.elapsed().as_secs_f64();
    let cpu_bpf = cpu_secs() - c0;
    let c0 = cpu_secs();
    let mut toks: Vec<[u32; 1]> = l.iter().map(|x| [argmax(x)]).collect();
    let t = Instant::now();
    for _ in 0..nd {
        let mut items: Vec<StepItem> = toks
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, c)| StepItem {
                tokens: p,
                cache: c,
            })
            .collect();
        let l = m.step(&mut items)?;
        toks = l.iter().map(|x| [argmax(x)]).collect();
    }
    let bdc = t.elapsed().as_secs_f64();
    let cpu_bdc = cpu_secs() - c0;
    let steps = step_costs(&m, ctx, nb, nd, &mut rnd)?;
    // CPU milliseconds per token: less sensitive than wall time to other load on the host.
    eprintln!(
        "cpu ms/token: prefill {:.2}, decode {:.2}, batch prefill {:.2}, batch decode {:.2}",
        cpu_pf * 1e3 / (3 * np) as f64,
        cpu_dc * 1e3 / (3 * nd) as f64,
        cpu_bpf * 1e3 / (nb * plen) as f64,
        cpu_bdc * 1e3 / (nb * nd) as f64
    );
    println!(
        "{{\"impl\":\"trident\",\"threads\":{},\"prefill_tok_per_s\":{:.1},\"decode_tok_per_s\":{:.1},\"batch\":{nb},\"batch_prefill_tok_per_s\":{:.1},\"batch_decode_tok_per_s\":{:.1},\"step_ms\":{steps}}}",
        rayon::current_num_threads(),
        np as f64 / pf,
        1.0 / dc,
        (nb * plen) as f64 / bpf,
        (nb * nd) as f64 / bdc
    );
    Ok(())
}
