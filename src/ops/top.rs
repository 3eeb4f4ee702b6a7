//! `trident top`: a terminal view of the gateway's `/metrics` for operators without Grafana.
//!
//! Scrapes the merged exposition twice, an interval apart, and prints one plain-text frame:
//! per model its state, requests/s, p50/p95 latency (from the histogram's bucket deltas, as
//! `histogram_quantile` over the interval), tokens/s, queue depth, running/waiting sequences
//! and KV usage; then one line per GPU when the CUDA build exports them. Repeats until
//! interrupted, or once with `--once`. Same names as the dashboards (`crate::metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;

use super::{check_http_url, OpsError};
use crate::metrics as m;

/// Arguments of `trident top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// The gateway's metrics URL.
    // No `env =`: every TRIDENT_* variable is a settings key.
    #[arg(long, default_value = "http://127.0.0.1:8000/metrics")]
    pub url: String,
    /// API key sent as a Bearer token (`/metrics` needs it unless metrics are public).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Read the API key from this file instead (e.g. the generated key).
    #[arg(long, conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Seconds between the two scrapes of a frame.
    #[arg(long, default_value_t = 2.0)]
    pub interval_secs: f64,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
}

/// One sample of the text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format (comments skipped; a line that does not parse is
/// skipped too: the view shows what it can).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        let consumed = chars.next().map_or(inner.len(), |(i, _)| i);
        rest = &inner[consumed..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The numbers of one model in one frame.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelRow {
    pub kind: String,
    pub ready: bool,
    pub req_per_s: f64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub tokens_per_s: f64,
    pub queue: f64,
    pub running: f64,
    pub waiting: f64,
    pub kv: Option<f64>,
}

/// Sum of the samples named `name` matching `filter`, per model.
fn per_model(
    samples: &[Sample],
    name: &str,
    filter: impl Fn(&Sample) -> bool,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name && filter(s)) {
        if let Some(model) = s.label("model").filter(|m| !m.is_empty()) {
            *out.entry(model.to_string()).or_insert(0.0) += s.value;
        }
    }
    out
}

fn gateway(s: &Sample) -> bool {
    s.label("component") == Some("gateway")
}

/// Buckets (upper bound → cumulative count) of the gateway's request duration per model.
fn buckets(samples: &[Sample]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let name = format!("{}_bucket", m::REQUEST_DURATION_SECONDS);
    let mut by: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name && gateway(s)) {
        let (Some(model), Some(le)) = (s.label("model"), s.label("le")) else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        if le.is_nan() {
            continue;
        }
        let e = by
            .entry(model.to_string())
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        e.1 += s.value;
    }
    by.into_iter()
        .map(|(k, v)| {
            let mut b: Vec<(f64, f64)> = v.into_values().collect();
            b.sort_by(|a, b| a.0.total_cmp(&b.0));
            (k, b)
        })
        .collect()
}

/// `histogram_quantile` over cumulative buckets (linear within a bucket; the +Inf bucket
/// answers its lower bound), `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let width = count - below;
            let frac = if width > 0.0 {
                (rank - below) / width
            } else {
                0.0
            };
            return Some(lower + (le - lower) * frac);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

/// One frame's rows from two scrapes `secs` apart.
pub fn rows(before: &[Sample], after: &[Sample], secs: f64) -> BTreeMap<String, ModelRow> {
    let secs = secs.max(1e-3);
    let mut rows: BTreeMap<String, ModelRow> = BTreeMap::new();
    for s in after
        .iter()
        .filter(|s| s.name == m::MODEL_READY && gateway(s))
    {
        if let Some(model) = s.label("model") {
            let r = rows.entry(model.to_string()).or_default();
            r.kind = s.label("kind").unwrap_or("").to_string();
            r.ready = s.value >= 1.0;
        }
    }
    let rate = |name: &str, filter: &dyn Fn(&Sample) -> bool| {
        let (a, b) = (
            per_model(before, name, filter),
            per_model(after, name, filter),
        );
        b.into_iter()
            .map(|(k, v)| {
                let d = v - a.get(&k).copied().unwrap_or(0.0);
                (k, if d < 0.0 { v / secs } else { d / secs })
            })
            .collect::<BTreeMap<_, _>>()
    };
    for (k, v) in rate(m::REQUESTS_TOTAL, &gateway) {
        rows.entry(k).or_default().req_per_s = v;
    }
    let engine = |s: &Sample| s.label("component") != Some("gateway");
    for name in [m::GENERATED_TOKENS_TOTAL, m::PROMPT_TOKENS_TOTAL] {
        for (k, v) in rate(name, &engine) {
            rows.entry(k).or_default().tokens_per_s += v;
        }
    }
    let (b0, b1) = (buckets(before), buckets(after));
    for (model, now) in b1 {
        let then = b0.get(&model);
        let delta: Vec<(f64, f64)> = now
            .iter()
            .map(|&(le, c)| {
                let old = then
                    .and_then(|t| t.iter().find(|(l, _)| *l == le))
                    .map_or(0.0, |(_, c)| *c);
                (le, (c - old).max(0.0))
            })
            .collect();
        let r = rows.entry(model).or_default();
        r.p50 = quantile(0.5, &delta);
        r.p95 = quantile(0.95, &delta);
    }
    for (k, v) in per_model(after, m::QUEUE_DEPTH, |_| true) {
        rows.entry(k).or_default().queue = v;
    }
    for (k, v) in per_model(after, m::RUNNING_SEQUENCES, |_| true) {
        rows.entry(k).or_default().running = v;
    }
    for (k, v) in per_model(after, m::WAITING_SEQUENCES, |_| true) {
        rows.entry(k).or_default().waiting = v;
    }
    for (k, v) in per_model(after, m::KV_CACHE_USAGE_RATIO, |_| true) {
        rows.entry(k).or_default().kv = Some(v);
    }
    rows
}

fn duration(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Formats one frame (plain text, one line per model, then one per GPU).
pub fn frame(header: &str, rows: &BTreeMap<String, ModelRow>, after: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:<9} {:>8} {:>8} {:>8} {:>9} {:>6} {:>9} {:>5}",
        "MODEL", "KIND", "STATE", "REQ/S", "P50", "P95", "TOK/S", "QUEUE", "RUN/WAIT", "KV"
    );
    for (model, r) in rows {
        let kv = r.kv.map_or("-".into(), |v| format!("{:.0}%", v * 100.0));
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<9} {:>8.2} {:>8} {:>8} {:>9.1} {:>6.0} {:>9} {:>5}",
            model,
            r.kind,
            if r.ready { "ready" } else { "NOT-READY" },
            r.req_per_s,
            duration(r.p50),
            duration(r.p95),
            r.tokens_per_s,
            r.queue,
            format!("{:.0}/{:.0}", r.running, r.waiting),
            kv
        );
    }
    let gpu = |name: &str| -> BTreeMap<String, f64> {
        after
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| Some((s.label("gpu")?.to_string(), s.value)))
            .collect()
    };
    let (util, used, total) = (
        gpu(m::GPU_UTILIZATION_RATIO),
        gpu(m::GPU_MEMORY_USED_BYTES),
        gpu(m::GPU_MEMORY_TOTAL_BYTES),
    );
    let (temp, power) = (gpu(m::GPU_TEMPERATURE_CELSIUS), gpu(m::GPU_POWER_WATTS));
    for (g, u) in &util {
        let gib =
            |v: Option<&f64>| v.map_or("-".into(), |b| format!("{:.1}", b / (1u64 << 30) as f64));
        let _ = writeln!(
            out,
            "GPU {g:<3} util {:>4.0}%  mem {}/{} GiB  {} °C  {} W",
            u * 100.0,
            gib(used.get(g)),
            gib(total.get(g)),
            temp.get(g).map_or("-".into(), |t| format!("{t:.0}")),
            power.get(g).map_or("-".into(), |p| format!("{p:.0}")),
        );
    }
    out
}

async fn scrape(
    client: &reqwest::Client,
    url: &reqwest::Url,
    key: Option<&str>,
) -> Result<Vec<Sample>, String> {
    let mut req = client.get(url.clone());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "HTTP {} (an API key is needed unless metrics are public: --api-key)",
            resp.status()
        ));
    }
    Ok(parse(&resp.text().await.map_err(|e| e.to_string())?))
}

/// Runs the view: `Ok(0)` after `--once` printed a frame, `Ok(1)` when the gateway could
/// not be scraped.
pub async fn run(args: &TopArgs) -> Result<i32, OpsError> {
    let url = check_http_url(&args.url)?;
    let key = match (&args.api_key, &args.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => Some(std::fs::read_to_string(f)?.trim().to_string()),
        (None, None) => None,
    };
    if !(0.1..=3600.0).contains(&args.interval_secs) {
        return Err(OpsError::InvalidArgument(
            "--interval-secs must be within 0.1..3600".into(),
        ));
    }
    let interval = Duration::from_secs_f64(args.interval_secs);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?;
    let clear = !args.once && std::io::stdout().is_terminal();
    let mut before = match scrape(&client, &url, key.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trident top: {}: {e}", args.url);
            return Ok(1);
        }
    };
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let after = match scrape(&client, &url, key.as_deref()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("trident top: {}: {e}", args.url);
                return Ok(1);
            }
        };
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let header = format!(
            "trident top  {}  {}  (rates over {secs:.1} s)",
            args.url,
            chrono_like_now()
        );
        let text = frame(&header, &rows(&before, &after, secs), &after);
        let mut stdout = std::io::stdout().lock();
        if clear {
            let _ = write!(stdout, "\x1b[H\x1b[2J");
        }
        if stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(0); // closed pipe
        }
        if args.once {
            return Ok(0);
        }
        let _ = writeln!(stdout);
        before = after;
    }
}

/// UTC wall-clock time as `HH:MM:SS` (no date crate needed for a header).
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP trident_requests_total Requests
# TYPE trident_requests_total counter
trident_requests_total{model="emb",kind="embedding",route="/v1/embeddings",status="200",component="gateway"} 10
trident_requests_total{model="emb",kind="embedding",route="/v1/embeddings",status="200",component="engine"} 10
trident_request_duration_seconds_bucket{model="emb",kind="embedding",route="/v1/embeddings",le="0.1",component="gateway"} 10
trident_request_duration_seconds_bucket{model="emb",kind="embedding",route="/v1/embeddings",le="1",component="gateway"} 10
trident_request_duration_seconds_bucket{model="emb",kind="embedding",route="/v1/embeddings",le="+Inf",component="gateway"} 10
trident_prompt_tokens_total{model="emb",kind="embedding",component="engine"} 100
trident_model_ready{model="emb",kind="embedding",component="gateway"} 1
trident_model_ready{model="chat",kind="chat",component="gateway"} 0
"#;

    fn after() -> String {
        BEFORE
            .replace(
                "\"200\",component=\"gateway\"} 10",
                "\"200\",component=\"gateway\"} 30",
            )
            .replace(
                "le=\"0.1\",component=\"gateway\"} 10",
                "le=\"0.1\",component=\"gateway\"} 20",
            )
            .replace(
                "le=\"1\",component=\"gateway\"} 10",
                "le=\"1\",component=\"gateway\"} 30",
            )
            .replace(
                "le=\"+Inf\",component=\"gateway\"} 10",
                "le=\"+Inf\",component=\"gateway\"} 30",
            )
            .replace("component=\"engine\"} 100", "component=\"engine\"} 500")
            + "trident_kv_cache_usage_ratio{model=\"chat\",component=\"engine\"} 0.25\n\
               trident_gpu_utilization_ratio{gpu=\"0\",component=\"gateway\"} 0.5\n\
               trident_gpu_memory_used_bytes{gpu=\"0\",component=\"gateway\"} 2147483648\n"
    }

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let s =
            parse("# c\nx{a=\"1\",b=\"q\\\"u,o}te\"} 2.5\ny +Inf\nz{} 3 1700000000\nbad{a=1} 2\n");
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].label("b"), Some("q\"u,o}te"));
        assert_eq!(s[0].value, 2.5);
        assert!(s[1].value.is_infinite());
        assert_eq!((s[2].name.as_str(), s[2].value), ("z", 3.0));
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let b = [(0.1, 10.0), (1.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        assert!((quantile(0.75, &b).unwrap() - 0.55).abs() < 1e-9);
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
    }

    #[test]
    fn rows_are_rates_over_the_interval_from_gateway_series() {
        let (a, b) = (parse(BEFORE), parse(&after()));
        let rows = rows(&a, &b, 2.0);
        let emb = &rows["emb"];
        // 20 more gateway requests in 2 s; the engine's own counter is not added.
        assert_eq!(emb.req_per_s, 10.0);
        assert_eq!(emb.tokens_per_s, 200.0);
        assert!(emb.ready);
        // 10 of the 20 new requests under 0.1 s, 10 between 0.1 and 1 s.
        assert_eq!(emb.p50, Some(0.1));
        assert!((emb.p95.unwrap() - 0.91).abs() < 1e-9);
        let chat = &rows["chat"];
        assert!(!chat.ready);
        assert_eq!(chat.kv, Some(0.25));
        assert_eq!(chat.p50, None);
        let text = frame("hdr", &rows, &b);
        assert!(text.starts_with("hdr\nMODEL"), "{text}");
        let chat_line = text.lines().find(|l| l.starts_with("chat ")).unwrap();
        assert!(
            chat_line.contains("NOT-READY") && chat_line.contains("25%"),
            "{chat_line}"
        );
        let emb_line = text.lines().find(|l| l.starts_with("emb ")).unwrap();
        assert!(
            emb_line.contains("10.00") && emb_line.contains("100ms") && emb_line.contains("910ms"),
            "{emb_line}"
        );
        assert!(
            text.contains("GPU 0") && text.contains("util   50%") && text.contains("2.0/- GiB"),
            "{text}"
        );
    }
}
