//! Encoder throughput / latency, shaped like `shared/peers/embed_peer.py` so the two can
//! be compared back to back:
//!
//! `cargo run --release --example encoder_bench -- models/embedding [--dtype f32|auto]
//!  [--threads 2] [--batch 32] [--words 100] [--n 512] [--queries 300] [--all-rows]`
//!
//! `--all-rows` times the batches through `token_states` (every token's last-layer state)
//! instead of `embed`, which for a CLS-pooled model reads only the first row: the two side
//! by side give the cost of the full last layer. `--micro` times single linears instead.

use std::path::PathBuf;
use std::time::Instant;

use trident::models::encoder::EncoderModel;
use trident::models::testutil::SplitMix;
use trident::models::{DTypeChoice, LoadOptions};

const WORDS: &str = "the of and to in is that for it as was with be by on not this are or from at which but have an they \
you were her she there been one all we their has would when if so no out what up into can more said time \
about other than them some could these two may first then do any like now over such our even most made \
after also did many before must through back years where much your way down should because each just \
those people how too little state good very make world still own see men work long get here between";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "models/embedding".into()),
    );
    let dtype = match arg(&args, "--dtype", "auto").as_str() {
        "f32" => DTypeChoice::F32,
        "bf16" => DTypeChoice::Bf16,
        _ => DTypeChoice::Auto,
    };
    let threads: usize = arg(&args, "--threads", "2").parse().expect("--threads");
    let batch: usize = arg(&args, "--batch", "32").parse().expect("--batch");
    let nwords: usize = arg(&args, "--words", "100").parse().expect("--words");
    let n: usize = arg(&args, "--n", "512").parse().expect("--n");
    let nq: usize = arg(&args, "--queries", "300").parse().expect("--queries");
    let all_rows = args.iter().any(|a| a == "--all-rows");

    if args.iter().any(|a| a == "--micro") {
        micro(threads);
        return;
    }
    let mut m = EncoderModel::load(
        &dir,
        &LoadOptions {
            dtype,
            ..Default::default()
        },
    )
    .expect("load");
    m.set_threads(threads).expect("threads");
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = SplitMix::new(42);
    let mut sent = |k: usize| {
        let mut s: Vec<&str> = (0..k)
            .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
            .collect();
        let first = s[0].to_owned();
        let cap = first[..1].to_uppercase() + &first[1..];
        s[0] = Box::leak(cap.into_boxed_str());
        s.join(" ") + "."
    };
    // Warm-up (also grows the scratch buffers).
    let warm: Vec<Vec<u32>> = (0..8)
        .map(|_| m.encode_text(&sent(10), true).unwrap())
        .collect();
    m.embed(&warm.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        .unwrap();

    // Single short queries, tokenisation included like the peer's encode([q]).
    let qs: Vec<String> = (0..nq).map(|_| sent(12)).collect();
    let mut lat = Vec::with_capacity(nq);
    let mut qtok = 0;
    for q in &qs {
        let t = Instant::now();
        let ids = m.encode_text(q, true).unwrap();
        m.embed(&[&ids]).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        qtok += ids.len();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // With --queries 0 the percentiles print as NaN.
    let pct = |q: f64| {
        lat.get((lat.len() as f64 * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };

    let texts: Vec<String> = (0..n).map(|_| sent(nwords)).collect();
    let run = |texts: &[String]| -> usize {
        let mut tokens = 0;
        for chunk in texts.chunks(batch) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|t| m.encode_text(t, true).unwrap())
                .collect();
            tokens += ids.iter().map(Vec::len).sum::<usize>();
            let ids: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            if all_rows {
                m.token_states(&ids).unwrap();
            } else {
                m.embed(&ids).unwrap();
            }
        }
        tokens
    };
    run(&texts[..batch.min(n)]);
    let t = Instant::now();
    let tokens = run(&texts);
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{{\"peer\": \"trident\", \"dtype\": \"{}\", \"threads\": {}, \"single_query_p50_ms\": {:.3}, \
         \"single_query_p99_ms\": {:.3}, \"query_tokens\": {:.1}, \"batch\": {}, \"avg_tokens\": {:.1}, \
         \"sentences_per_s\": {:.1}, \"tokens_per_s\": {:.1}}}",
        m.info().dtype,
        m.threads(),
        pct(0.5),
        pct(0.99),
        qtok as f64 / nq as f64,
        batch,
        tokens as f64 / n as f64,
        n as f64 / dt,
        tokens as f64 / dt
    );
}

/// GFLOP/s of one MiniLM-sized linear (rows × 384 → 1536) in f32 (gemm) and bf16.
fn micro(threads: usize) {
    use trident::models::kernels::linear::Linear;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut rng = SplitMix::new(7);
    for (rows, inf, outf) in [
        (3300, 384, 1536),
        (3300, 1536, 384),
        (16, 384, 1536),
        (16, 1536, 384),
        // XLM-R large (bge-m3): 4 × 256 tokens.
        (1024, 1024, 3072),
        (1024, 1024, 4096),
        (1024, 4096, 1024),
    ] {
        let w = rng.vec(inf * outf, 0.05);
        let x = rng.vec(rows * inf, 1.0);
        let mut dst = vec![0.0f32; rows * outf];
        for bf16 in [false, true] {
            let mut lin = Linear::new(&w, vec![0.0; outf], outf, inf);
            if bf16 {
                lin.use_bf16();
            }
            let reps = if rows > 100 { 5 } else { 500 };
            pool.install(|| lin.forward_acc(&x, rows, &mut dst, threads));
            let t = Instant::now();
            for _ in 0..reps {
                pool.install(|| lin.forward_acc(&x, rows, &mut dst, threads));
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            let gf = 2.0 * (rows * inf * outf) as f64 / dt / 1e9;
            println!(
                "{rows}x{inf}->{outf} bf16={bf16}: {:.3} ms, {gf:.1} GFLOP/s",
                dt * 1e3
            );
        }
    }
}
