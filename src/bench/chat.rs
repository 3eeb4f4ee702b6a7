//! `trident bench chat`: streamed `POST /v1/chat/completions` load — time to first token,
//! time per output token, inter-token latency, end-to-end latency (p50/p90/p99) and
//! aggregate output tokens per second. Requests set `ignore_eos` so every answer is
//! `--max-tokens` long and runs are comparable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::{authorize, drive, filler_text, Percentiles, Sample};

#[derive(Debug, Clone, Args)]
pub struct ChatBenchArgs {
    /// Base URL of the gateway or engine.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    #[arg(long)]
    pub model: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Approximate prompt length in tokens (filler words; the server's count is reported).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Output tokens per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Put the same system message of about this many tokens before every request's own
    /// user turn (0: none): with the warm-up request it measures the prefix cache.
    #[arg(long, default_value_t = 0)]
    pub system_tokens: usize,
    /// Requests sent before timing starts.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, env = "TRIDENT_API_KEY")]
    pub api_key: Option<String>,
    /// Constrain every stream to this JSON Schema (`response_format` json_schema): measures
    /// the cost of structured output against the same run without it.
    #[arg(long)]
    pub json_schema: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Timings of one streamed request.
#[derive(Debug, Clone, Default)]
struct StreamTiming {
    ttft: Duration,
    e2e: Duration,
    itl: Vec<Duration>,
    prompt_tokens: usize,
    output_tokens: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    concurrency: usize,
    requests: usize,
    errors: usize,
    mean_prompt_tokens: f64,
    max_tokens: usize,
    seconds: f64,
    output_tok_per_s: f64,
    requests_per_s: f64,
    ttft_ms: Percentiles,
    tpot_ms: Percentiles,
    itl_ms: Percentiles,
    e2e_ms: Percentiles,
}

/// Sends one streamed request and times its chunks.
async fn one(req: reqwest::RequestBuilder) -> Option<StreamTiming> {
    let started = Instant::now();
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut t = StreamTiming::default();
    let mut last: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).ok()?;
            if v.get("error").is_some() {
                return None;
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                t.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                t.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => t.ttft = now - started,
                    Some(prev) => t.itl.push(now - prev),
                }
                last = Some(now);
            }
        }
    }
    t.e2e = started.elapsed();
    (done && t.output_tokens > 0).then_some(t)
}

/// Runs the benchmark; exit code 0 when no request failed.
pub async fn run(args: &ChatBenchArgs) -> anyhow::Result<u8> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let schema: Option<serde_json::Value> = match &args.json_schema {
        Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    let body = |i: usize| {
        let user =
            serde_json::json!({"role": "user", "content": filler_text(i, args.prompt_tokens)});
        let messages = if args.system_tokens > 0 {
            // One seed for every request: the same text each time.
            let system = filler_text(usize::MAX, args.system_tokens);
            serde_json::json!([{"role": "system", "content": system}, user])
        } else {
            serde_json::json!([user])
        };
        let mut b = serde_json::json!({
            "model": args.model,
            "messages": messages,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(s) = &schema {
            b["response_format"] = serde_json::json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": s}});
        }
        b.to_string()
    };
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..args.requests.max(args.warmup).max(1))
            .map(body)
            .collect(),
    );
    let timings: Arc<Mutex<Vec<StreamTiming>>> = Arc::default();
    let call = {
        let (client, url, key, bodies, timings) = (
            client.clone(),
            url.clone(),
            args.api_key.clone(),
            bodies.clone(),
            timings.clone(),
        );
        move |i: usize| {
            let req = authorize(
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone()),
                key.as_deref(),
            );
            let timings = timings.clone();
            async move {
                let t0 = Instant::now();
                let r = one(req).await;
                let ok = r.is_some();
                let tokens = r.as_ref().map_or(0, |t| t.output_tokens);
                if let Some(t) = r {
                    if let Ok(mut v) = timings.lock() {
                        v.push(t);
                    }
                }
                Sample {
                    latency: t0.elapsed(),
                    ok,
                    units: 1,
                    tokens,
                }
            }
        }
    };
    for i in 0..args.warmup {
        if !call(i).await.ok {
            anyhow::bail!(
                "warm-up request to {url} failed; is the chat model {:?} served there?",
                args.model
            );
        }
    }
    timings.lock().map_err(|_| anyhow::anyhow!("lock"))?.clear();
    let (samples, wall) = drive(args.concurrency, args.requests, call).await;
    let t = timings.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let secs = wall.as_secs_f64();
    let out_tokens: usize = t.iter().map(|x| x.output_tokens).sum();
    let tpot: Vec<Duration> = t
        .iter()
        .filter(|x| x.output_tokens > 1)
        .map(|x| (x.e2e - x.ttft) / (x.output_tokens as u32 - 1))
        .collect();
    let report = Report {
        model: args.model.clone(),
        concurrency: args.concurrency,
        requests: args.requests,
        errors: samples.iter().filter(|s| !s.ok).count(),
        mean_prompt_tokens: t.iter().map(|x| x.prompt_tokens as f64).sum::<f64>()
            / t.len().max(1) as f64,
        max_tokens: args.max_tokens,
        seconds: secs,
        output_tok_per_s: out_tokens as f64 / secs,
        requests_per_s: t.len() as f64 / secs,
        ttft_ms: Percentiles::of(t.iter().map(|x| x.ttft).collect()),
        tpot_ms: Percentiles::of(tpot),
        itl_ms: Percentiles::of(t.iter().flat_map(|x| x.itl.iter().copied()).collect()),
        e2e_ms: Percentiles::of(t.iter().map(|x| x.e2e).collect()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "chat {}: {} req, concurrency {}, ~{:.0} prompt + {} output tokens: {:.1} output tok/s, {:.2} req/s\n  TTFT p50 {:.1} p90 {:.1} p99 {:.1} ms | TPOT p50 {:.1} p90 {:.1} p99 {:.1} ms | ITL p50 {:.1} p90 {:.1} p99 {:.1} ms | E2E p50 {:.0} p90 {:.0} p99 {:.0} ms | errors {}",
            report.model, report.requests, report.concurrency, report.mean_prompt_tokens, report.max_tokens,
            report.output_tok_per_s, report.requests_per_s,
            report.ttft_ms.p50, report.ttft_ms.p90, report.ttft_ms.p99,
            report.tpot_ms.p50, report.tpot_ms.p90, report.tpot_ms.p99,
            report.itl_ms.p50, report.itl_ms.p90, report.itl_ms.p99,
            report.e2e_ms.p50, report.e2e_ms.p90, report.e2e_ms.p99, report.errors
        );
    }
    Ok(u8::from(report.errors > 0))
}
