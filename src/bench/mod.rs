//! Load generators (`trident bench …`): a closed-loop driver with N concurrent workers
//! sharing M requests, and latency/throughput summaries printed as text or JSON.
//! One file per endpoint family builds the requests; this module drives and summarises.

pub mod chat;
pub mod embeddings;
pub mod rerank;
pub mod sse;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The outcome of one request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub latency: Duration,
    pub ok: bool,
    /// Inputs (or pairs) the request carried.
    pub units: usize,
    /// Tokens the server reported (usage).
    pub tokens: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of the given durations.
    pub fn of(mut d: Vec<Duration>) -> Percentiles {
        if d.is_empty() {
            return Percentiles::default();
        }
        d.sort_unstable();
        let ms = |x: Duration| x.as_secs_f64() * 1e3;
        let at = |q: f64| {
            let idx = ((q * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
            ms(d[idx])
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            mean: d.iter().map(|x| ms(*x)).sum::<f64>() / d.len() as f64,
            max: ms(d[d.len() - 1]),
        }
    }
}

/// Runs `requests` calls of `call(i)` with `concurrency` workers; returns samples and the
/// wall time of the whole run.
pub async fn drive<F, Fut>(concurrency: usize, requests: usize, call: F) -> (Vec<Sample>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Sample> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let call = call.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    out.push(call(i).await);
                }
                out
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(requests);
    for w in workers {
        if let Ok(s) = w.await {
            samples.extend(s);
        }
    }
    (samples, started.elapsed())
}

/// A closed-loop load of JSON POSTs: request `i` sends `bodies[i % len]`.
pub struct JsonLoad {
    pub url: String,
    pub api_key: Option<String>,
    pub bodies: Vec<String>,
    /// Inputs (or pairs) each request carries.
    pub units: usize,
    pub warmup: usize,
    pub concurrency: usize,
    pub requests: usize,
    /// Judges a 2xx JSON answer: (counts as success, tokens the server reported).
    pub judge: fn(&serde_json::Value, usize) -> (bool, usize),
}

/// What a [`JsonLoad`] measured, over the successful requests.
#[derive(Debug, Clone)]
pub struct LoadTotals {
    pub ok: usize,
    pub errors: usize,
    pub seconds: f64,
    pub units_per_s: f64,
    pub tokens_per_s: f64,
    pub latency_ms: Percentiles,
}

impl JsonLoad {
    /// Sends the warm-up requests (any failure is an error naming the URL), then the timed load.
    pub async fn run(self) -> anyhow::Result<LoadTotals> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(self.concurrency.max(1))
            .build()?;
        let JsonLoad {
            url,
            api_key,
            bodies,
            units,
            warmup,
            concurrency,
            requests,
            judge,
        } = self;
        let bodies = Arc::new(bodies);
        let target = url.clone();
        let call = move |i: usize| {
            let req = authorize(
                client
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone()),
                api_key.as_deref(),
            );
            async move {
                let t = Instant::now();
                let (ok, tokens) = match req.send().await {
                    Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                        Ok(v) => judge(&v, units),
                        Err(_) => (false, 0),
                    },
                    _ => (false, 0),
                };
                Sample {
                    latency: t.elapsed(),
                    ok,
                    units,
                    tokens,
                }
            }
        };
        for i in 0..warmup {
            if !call(i).await.ok {
                anyhow::bail!("warm-up request to {url} failed; is the model served there?");
            }
        }
        let (samples, wall) = drive(concurrency, requests, call).await;
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
        let seconds = wall.as_secs_f64();
        Ok(LoadTotals {
            ok: ok.len(),
            errors: samples.len() - ok.len(),
            seconds,
            units_per_s: ok.iter().map(|s| s.units).sum::<usize>() as f64 / seconds,
            tokens_per_s: ok.iter().map(|s| s.tokens).sum::<usize>() as f64 / seconds,
            latency_ms: Percentiles::of(ok.iter().map(|s| s.latency).collect()),
        })
    }
}

/// Deterministic filler text of `words` words for input `seed`.
pub fn filler_text(seed: usize, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "model",
        "serves",
        "requests",
        "quickly",
        "while",
        "batches",
        "grow",
        "under",
        "load",
        "and",
        "latency",
        "stays",
        "low",
        "for",
        "every",
        "client",
        "that",
        "waits",
        "on",
        "an",
        "answer",
        "from",
        "engine",
        "gateway",
        "appliance",
        "runs",
        "offline",
        "in",
        "data",
        "centre",
        "with",
        "GPUs",
        "memory",
        "tokens",
        "vectors",
        "search",
        "documents",
        "ranking",
        "question",
        "reply",
        "stream",
        "metrics",
        "dashboard",
        "container",
        "image",
        "bundle",
        "network",
        "secure",
        "simple",
    ];
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Adds `Authorization: Bearer` when a key is given.
pub fn authorize(req: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => req.bearer_auth(k),
        None => req,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(d);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
    }

    #[test]
    fn filler_is_deterministic_and_sized() {
        assert_eq!(filler_text(3, 10), filler_text(3, 10));
        assert_ne!(filler_text(3, 10), filler_text(4, 10));
        assert_eq!(filler_text(1, 100).split(' ').count(), 100);
    }
}
