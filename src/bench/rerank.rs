//! `trident bench rerank`: throughput (pairs/s) and latency of `POST /v1/rerank` with one
//! query against N documents of W words per request.

use clap::Args;
use serde::Serialize;

use super::{filler_text, JsonLoad, Percentiles};

#[derive(Debug, Clone, Args)]
pub struct RerankBenchArgs {
    /// Base URL of the gateway or engine.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Documents per request (one query each).
    #[arg(long, default_value_t = 100)]
    pub documents: usize,
    /// Words per document.
    #[arg(long, default_value_t = 100)]
    pub words: usize,
    /// Words per query.
    #[arg(long, default_value_t = 8)]
    pub query_words: usize,
    /// Requests sent before timing starts.
    #[arg(long, default_value_t = 2)]
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
    documents: usize,
    words: usize,
    query_words: usize,
    errors: usize,
    seconds: f64,
    pairs_per_s: f64,
    requests_per_s: f64,
    tokens_per_s: f64,
    latency_ms: Percentiles,
}

/// The query of request `i` (seeds are disjoint from the documents').
pub fn query_text(i: usize, words: usize) -> String {
    filler_text(usize::MAX / 2 + i, words)
}

/// Document `j` of request `i`.
pub fn document_text(i: usize, j: usize, documents: usize, words: usize) -> String {
    filler_text(i * documents + j, words)
}

/// Runs the benchmark; exit code 0 when no request failed.
pub async fn run(args: &RerankBenchArgs) -> anyhow::Result<u8> {
    let url = format!("{}/v1/rerank", args.url.trim_end_matches('/'));
    let bodies: Vec<String> = (0..args.requests.max(args.warmup).max(1))
        .map(|i| {
            let docs: Vec<String> = (0..args.documents)
                .map(|j| document_text(i, j, args.documents, args.words))
                .collect();
            serde_json::json!({
                "model": args.model,
                "query": query_text(i, args.query_words),
                "documents": docs,
            })
            .to_string()
        })
        .collect();
    let totals = JsonLoad {
        url,
        api_key: args.api_key.clone(),
        bodies,
        units: args.documents,
        warmup: args.warmup,
        concurrency: args.concurrency,
        requests: args.requests,
        judge: |v, units| {
            (
                v["results"].as_array().map(Vec::len) == Some(units),
                v["usage"]["total_tokens"].as_u64().unwrap_or(0) as usize,
            )
        },
    }
    .run()
    .await?;
    let report = Report {
        model: args.model.clone(),
        concurrency: args.concurrency,
        requests: args.requests,
        documents: args.documents,
        words: args.words,
        query_words: args.query_words,
        errors: totals.errors,
        seconds: totals.seconds,
        pairs_per_s: totals.units_per_s,
        requests_per_s: totals.ok as f64 / totals.seconds,
        tokens_per_s: totals.tokens_per_s,
        latency_ms: totals.latency_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "rerank {}: {} req × 1 query × {} documents × {} words, concurrency {}: {:.1} pairs/s, {:.0} tokens/s, latency p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms, errors {}",
            report.model, report.requests, report.documents, report.words, report.concurrency,
            report.pairs_per_s, report.tokens_per_s, report.latency_ms.p50, report.latency_ms.p90,
            report.latency_ms.p99, report.errors
        );
    }
    Ok(u8::from(report.errors > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_deterministic_and_distinct() {
        assert_eq!(document_text(2, 3, 100, 100), document_text(2, 3, 100, 100));
        assert_ne!(document_text(2, 3, 100, 100), document_text(2, 4, 100, 100));
        assert_ne!(query_text(0, 8), document_text(0, 0, 100, 8));
        assert_eq!(query_text(1, 8).split(' ').count(), 8);
    }
}
