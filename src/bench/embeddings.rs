//! `trident bench embeddings`: throughput and latency of `POST /v1/embeddings`.

use clap::Args;
use serde::Serialize;

use super::{filler_text, JsonLoad, Percentiles};

#[derive(Debug, Clone, Args)]
pub struct EmbeddingBenchArgs {
    /// Base URL of the gateway or engine.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Words per input.
    #[arg(long, default_value_t = 100)]
    pub words: usize,
    /// Inputs from this file instead (one per line, taken in order and cycled), so a peer
    /// can be given exactly the same texts; `--words` is then only reported.
    #[arg(long)]
    pub texts_file: Option<std::path::PathBuf>,
    /// Requests sent before timing starts.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, env = "TRIDENT_API_KEY")]
    pub api_key: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    concurrency: usize,
    requests: usize,
    inputs_per_request: usize,
    words: usize,
    errors: usize,
    seconds: f64,
    inputs_per_s: f64,
    tokens_per_s: f64,
    latency_ms: Percentiles,
}

/// Runs the benchmark; exit code 0 when no request failed.
pub async fn run(args: &EmbeddingBenchArgs) -> anyhow::Result<u8> {
    let url = format!("{}/v1/embeddings", args.url.trim_end_matches('/'));
    let texts: Vec<String> = match &args.texts_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--texts-file {}: {e}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    if args.texts_file.is_some() && texts.is_empty() {
        anyhow::bail!("--texts-file holds no texts");
    }
    let text = |k: usize| {
        if texts.is_empty() {
            filler_text(k, args.words)
        } else {
            texts[k % texts.len()].clone()
        }
    };
    let bodies: Vec<String> = (0..args.requests.max(args.warmup).max(1))
        .map(|i| {
            let input: Vec<String> = (0..args.inputs_per_request)
                .map(|j| text(i * args.inputs_per_request + j))
                .collect();
            serde_json::json!({"model": args.model, "input": input}).to_string()
        })
        .collect();
    let totals = JsonLoad {
        url,
        api_key: args.api_key.clone(),
        bodies,
        units: args.inputs_per_request,
        warmup: args.warmup,
        concurrency: args.concurrency,
        requests: args.requests,
        judge: |v, _| {
            (
                true,
                v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            )
        },
    }
    .run()
    .await?;
    let report = Report {
        model: args.model.clone(),
        concurrency: args.concurrency,
        requests: args.requests,
        inputs_per_request: args.inputs_per_request,
        words: args.words,
        errors: totals.errors,
        seconds: totals.seconds,
        inputs_per_s: totals.units_per_s,
        tokens_per_s: totals.tokens_per_s,
        latency_ms: totals.latency_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "embeddings {}: {} req × {} inputs × {} words, concurrency {}: {:.1} inputs/s, {:.0} tokens/s, latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms, errors {}",
            report.model, report.requests, report.inputs_per_request, report.words, report.concurrency,
            report.inputs_per_s, report.tokens_per_s, report.latency_ms.p50, report.latency_ms.p90,
            report.latency_ms.p99, report.errors
        );
    }
    Ok(u8::from(report.errors > 0))
}
