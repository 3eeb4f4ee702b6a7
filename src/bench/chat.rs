//! `trident bench chat`: streamed `POST /v1/chat/completions` load — time to first token,
//! time per output token, inter-token latency, end-to-end latency (p50/p90/p99) and
//! aggregate output tokens per second. Requests set `ignore_eos` so every answer is
//! `--max-tokens` long and runs are comparable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::sse::SseEvents;
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
    /// Why the first failed request did not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
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

/// Sends one streamed request and times its chunks; `Err` says why it does not count.
/// The answer is complete at `data: [DONE]`: reading stops there, so how a server closes
/// the body afterwards does not matter (the measurement ends at the last event).
async fn one(req: reqwest::RequestBuilder) -> Result<StreamTiming, String> {
    let started = Instant::now();
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut body = resp.bytes_stream();
    let mut events = SseEvents::default();
    let mut t = StreamTiming::default();
    let mut last: Option<Instant> = None;
    let mut done = false;
    'read: while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("stream broke before [DONE]: {e}"))?;
        let now = Instant::now();
        for data in events.push(&chunk) {
            if data == "[DONE]" {
                done = true;
                break 'read;
            }
            let v: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| format!("event is not JSON ({e}): {}", clip(&data)))?;
            if let Some(e) = v.get("error") {
                return Err(format!("error event: {}", clip(&e.to_string())));
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                t.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                t.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            if has_text(&v) {
                match last {
                    None => t.ttft = now - started,
                    Some(prev) => t.itl.push(now - prev),
                }
                last = Some(now);
            }
        }
    }
    t.e2e = started.elapsed();
    if !done {
        return Err("stream ended without data: [DONE]".into());
    }
    if t.output_tokens == 0 {
        return Err("no usage.completion_tokens in the stream".into());
    }
    Ok(t)
}

/// Whether a chunk carries output text (content, or reasoning a server splits off).
fn has_text(chunk: &serde_json::Value) -> bool {
    let delta = &chunk["choices"][0]["delta"];
    ["content", "reasoning_content"]
        .iter()
        .any(|k| delta[k].as_str().is_some_and(|c| !c.is_empty()))
}

/// The start of a long text, for error messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Runs the benchmark; exit code 0 when no request failed.
pub async fn run(args: &ChatBenchArgs) -> anyhow::Result<u8> {
    // One connection per stream, never reused: llama-server answers a stream with
    // `Keep-Alive: timeout=5, max=100` and then closes the connection, so a pooled client
    // sends its next request into a closed socket and counts "connection closed before
    // message completed" as a failed request. A stream lasts seconds; a loopback connect
    // costs well under a millisecond and is paid alike by every server measured.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
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
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let call = {
        let (client, url, key, bodies, timings, failures) = (
            client.clone(),
            url.clone(),
            args.api_key.clone(),
            bodies.clone(),
            timings.clone(),
            failures.clone(),
        );
        move |i: usize| {
            let req = authorize(
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone()),
                key.as_deref(),
            );
            let (timings, failures) = (timings.clone(), failures.clone());
            async move {
                let t0 = Instant::now();
                let r = one(req).await;
                let ok = r.is_ok();
                let tokens = r.as_ref().map_or(0, |t| t.output_tokens);
                match r {
                    Ok(t) => {
                        if let Ok(mut v) = timings.lock() {
                            v.push(t);
                        }
                    }
                    Err(why) => {
                        if let Ok(mut v) = failures.lock() {
                            v.push(why);
                        }
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
    let lock_err = || anyhow::anyhow!("a bench worker panicked");
    for i in 0..args.warmup {
        if !call(i).await.ok {
            let why = failures.lock().map_err(|_| lock_err())?.pop();
            anyhow::bail!(
                "warm-up request to {url} failed ({}); is the chat model {:?} served there?",
                why.unwrap_or_default(),
                args.model
            );
        }
    }
    timings.lock().map_err(|_| lock_err())?.clear();
    let (samples, wall) = drive(args.concurrency, args.requests, call).await;
    let t = timings.lock().map_err(|_| lock_err())?.clone();
    let failures = failures.lock().map_err(|_| lock_err())?.clone();
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
        first_error: failures.first().cloned(),
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
        if let Some(why) = &report.first_error {
            println!("  first error: {why}");
        }
    }
    Ok(u8::from(report.errors > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The stream llama-server sends (captured with `curl -N --raw`, trimmed): a role
    /// chunk with `content: null`, one chunk per token, the finish chunk, a usage chunk with
    /// `choices: []` and `timings`, then `[DONE]`, as HTTP chunks that may hold several events.
    fn llama_server_stream(tokens: usize) -> Vec<String> {
        let chunk = |delta: &str, finish: &str| {
            format!(
                "data: {{\"choices\":[{{\"finish_reason\":{finish},\"index\":0,\"delta\":{delta}}}],\"object\":\"chat.completion.chunk\"}}\n\n"
            )
        };
        let mut out = vec![
            chunk(r#"{"role":"assistant","content":null}"#, "null")
                + &chunk(r#"{"content":" é"}"#, "null"),
        ];
        out.extend((1..tokens).map(|_| chunk(r#"{"content":" word"}"#, "null")));
        out.push(
            chunk("{}", "\"length\"")
                + &format!("data: {{\"choices\":[],\"usage\":{{\"completion_tokens\":{tokens},\"prompt_tokens\":38}},\"timings\":{{\"predicted_n\":{tokens}}}}}\n\n"),
        );
        out.push("data: [DONE]\n\n".into());
        out
    }

    /// A server that behaves like llama-server on the wire: each connection's first request
    /// gets a chunked SSE answer advertising keep-alive; a second request on the same
    /// connection is read and then the connection is closed without an answer.
    async fn closing_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut request = Vec::new();
                    // The request: headers, then a body of Content-Length bytes.
                    loop {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let mut answer = String::from("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n");
                    for part in llama_server_stream(8) {
                        answer += &format!("{:x}\r\n{part}\r\n", part.len());
                    }
                    answer += "0\r\n\r\n";
                    // Split the body mid-character ("é" is two bytes) as a transport may.
                    let bytes = answer.into_bytes();
                    let cut = bytes.iter().position(|&b| b == 0xc3).expect("test stream") + 1;
                    for part in [&bytes[..cut], &bytes[cut..]] {
                        if sock.write_all(part).await.is_err() || sock.flush().await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    // A next request on this connection is read, then left unanswered.
                    let _ = sock.read(&mut buf).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn every_completed_llama_server_stream_counts() {
        let url = closing_server().await;
        let args = ChatBenchArgs {
            url,
            model: "chat".into(),
            concurrency: 2,
            requests: 8,
            prompt_tokens: 4,
            system_tokens: 0,
            max_tokens: 8,
            warmup: 1,
            api_key: None,
            json_schema: None,
            json: true,
        };
        // Exit code 0: no request was counted as failed (with a pooled connection the second
        // request of each worker went into the closed socket and failed).
        assert_eq!(run(&args).await.expect("bench runs"), 0);
    }
}
