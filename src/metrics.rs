//! Metric names and the registry: one schema for every engine kind and the gateway.
//!
//! Names carry the `trident_` prefix and base units; labels are low-cardinality (`model`,
//! `kind`, `route` templates, status codes, fixed reasons). A model name never becomes a
//! label unless it is a configured model id. Engines expose these on their `/metrics`; the
//! gateway adds its own and re-exports every engine's (DESIGN §5). The Grafana dashboards
//! and tests refer to the constants below.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "trident_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "trident_request_duration_seconds";
pub const QUEUE_DEPTH: &str = "trident_queue_depth";
pub const QUEUE_WAIT_SECONDS: &str = "trident_queue_wait_seconds";
pub const BATCH_SIZE: &str = "trident_batch_size";
pub const BATCH_TOKENS: &str = "trident_batch_tokens";
pub const PROMPT_TOKENS_TOTAL: &str = "trident_prompt_tokens_total";
pub const GENERATED_TOKENS_TOTAL: &str = "trident_generated_tokens_total";
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "trident_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "trident_inter_token_latency_seconds";
pub const RUNNING_SEQUENCES: &str = "trident_running_sequences";
pub const WAITING_SEQUENCES: &str = "trident_waiting_sequences";
pub const KV_CACHE_USAGE_RATIO: &str = "trident_kv_cache_usage_ratio";
pub const ENGINE_RESTARTS_TOTAL: &str = "trident_engine_restarts_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "trident_upstream_retries_total";
pub const UPSTREAM_EJECTIONS_TOTAL: &str = "trident_upstream_ejections_total";
pub const REJECTED_REQUESTS_TOTAL: &str = "trident_rejected_requests_total";
pub const MODEL_READY: &str = "trident_model_ready";
/// Top-level request fields an engine does not read (ignored, as OpenAI's own servers do),
/// by field name; names past the first [`MAX_IGNORED_FIELD_LABELS`] count as `other`.
pub const IGNORED_FIELDS_TOTAL: &str = "trident_ignored_request_fields_total";
/// Distinct field names [`IGNORED_FIELDS_TOTAL`] keeps apart per process.
pub const MAX_IGNORED_FIELD_LABELS: usize = 64;
/// Requests the gateway holds right now (set when `/metrics` is scraped).
pub const GATEWAY_INFLIGHT_REQUESTS: &str = "trident_gateway_inflight_requests";
/// Client connections the gateway holds open right now (set when `/metrics` is scraped).
pub const GATEWAY_OPEN_CONNECTIONS: &str = "trident_gateway_open_connections";
/// Connections answered 503 and closed because `max_connections` were open.
pub const GATEWAY_REFUSED_CONNECTIONS_TOTAL: &str = "trident_gateway_refused_connections_total";
/// Requests that could not be admitted because the KV budget was reserved by running
/// sequences (set every step). The scheduler reserves a sequence's worst case at admission
/// and so never preempts; this is where KV pressure shows instead.
pub const KV_BLOCKED_SEQUENCES: &str = "trident_kv_blocked_sequences";
/// Prompt tokens of the chat requests admitted while the prefix cache is on.
pub const PREFIX_CACHE_QUERY_TOKENS_TOTAL: &str = "trident_prefix_cache_query_tokens_total";
/// Of those, tokens whose KV came from the prefix cache instead of a prefill (hit ratio =
/// hits / queries).
pub const PREFIX_CACHE_HIT_TOKENS_TOTAL: &str = "trident_prefix_cache_hit_tokens_total";
/// KV blocks the chat prefix cache holds (in use by sequences or idle).
pub const PREFIX_CACHE_BLOCKS: &str = "trident_prefix_cache_blocks";

// GPU families, labelled `gpu` (the device index). Registered here so the dashboards, alert
// rules and tests share one schema; the CUDA build fills them from NVML and a CPU build
// leaves them without series (docs/MONITORING.md lists them as may-be-empty).
pub const GPU_UTILIZATION_RATIO: &str = "trident_gpu_utilization_ratio";
pub const GPU_MEMORY_USED_BYTES: &str = "trident_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL_BYTES: &str = "trident_gpu_memory_total_bytes";
pub const GPU_TEMPERATURE_CELSIUS: &str = "trident_gpu_temperature_celsius";
pub const GPU_POWER_WATTS: &str = "trident_gpu_power_watts";
/// 1 for each (gpu, model) pair the GPU plan placed.
pub const GPU_MODEL_ASSIGNED: &str = "trident_gpu_model_assigned";

/// GPU families, for dashboards and tests (empty on CPU builds).
pub const GPU: &[&str] = &[
    GPU_UTILIZATION_RATIO,
    GPU_MEMORY_USED_BYTES,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_TEMPERATURE_CELSIUS,
    GPU_POWER_WATTS,
    GPU_MODEL_ASSIGNED,
];

// The prometheus crate's process collector (Linux), in every process: the gateway's samples
// carry `component="gateway"`, each engine's `component="engine"` and its `model`.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

/// Process families, for dashboards and tests.
pub const PROCESS: &[&str] = &[
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
];

/// Every metric name, for dashboards and tests.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    QUEUE_DEPTH,
    QUEUE_WAIT_SECONDS,
    BATCH_SIZE,
    BATCH_TOKENS,
    PROMPT_TOKENS_TOTAL,
    GENERATED_TOKENS_TOTAL,
    TIME_TO_FIRST_TOKEN_SECONDS,
    INTER_TOKEN_LATENCY_SECONDS,
    RUNNING_SEQUENCES,
    WAITING_SEQUENCES,
    KV_CACHE_USAGE_RATIO,
    ENGINE_RESTARTS_TOTAL,
    UPSTREAM_RETRIES_TOTAL,
    UPSTREAM_EJECTIONS_TOTAL,
    REJECTED_REQUESTS_TOTAL,
    MODEL_READY,
    GATEWAY_INFLIGHT_REQUESTS,
    GATEWAY_OPEN_CONNECTIONS,
    GATEWAY_REFUSED_CONNECTIONS_TOTAL,
    KV_BLOCKED_SEQUENCES,
    PREFIX_CACHE_QUERY_TOKENS_TOTAL,
    PREFIX_CACHE_HIT_TOKENS_TOTAL,
    PREFIX_CACHE_BLOCKS,
];

/// Reasons for `trident_rejected_requests_total{reason}`.
pub mod reason {
    pub const QUEUE_FULL: &str = "queue_full";
    pub const INVALID: &str = "invalid";
    pub const TOO_LONG: &str = "too_long";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const MODEL_NOT_FOUND: &str = "model_not_found";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const DISCONNECTED: &str = "disconnected";
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

/// The metric families of one process.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub queue_wait: HistogramVec,
    pub batch_size: HistogramVec,
    pub batch_tokens: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub generated_tokens: IntCounterVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub running: IntGaugeVec,
    pub waiting: IntGaugeVec,
    pub kv_usage: prometheus::GaugeVec,
    pub restarts: IntCounterVec,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub rejected: IntCounterVec,
    pub ignored_fields: IntCounterVec,
    /// The field names `ignored_fields` has seen (bounded label set).
    ignored_names: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pub ready: IntGaugeVec,
    pub gateway_inflight: IntGauge,
    pub gateway_connections: IntGauge,
    pub gateway_refused_connections: prometheus::IntCounter,
    pub kv_blocked: IntGaugeVec,
    pub prefix_query_tokens: IntCounterVec,
    pub prefix_hit_tokens: IntCounterVec,
    pub prefix_blocks: IntGaugeVec,
    pub gpu_utilization: GaugeVec,
    pub gpu_memory_used: GaugeVec,
    pub gpu_memory_total: GaugeVec,
    pub gpu_temperature: GaugeVec,
    pub gpu_power: GaugeVec,
    pub gpu_model_assigned: IntGaugeVec,
}

impl Metrics {
    /// Counts an ignored request field under a bounded label: names that are not short
    /// identifiers, and new names once [`MAX_IGNORED_FIELD_LABELS`] are known, are `other`.
    pub fn ignored_field(&self, model: &str, field: &str) {
        let plain = field.len() <= 48
            && !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let label = if !plain {
            "other"
        } else {
            let mut names = self.ignored_names.lock().unwrap_or_else(|p| p.into_inner());
            if names.contains(field) || names.len() < MAX_IGNORED_FIELD_LABELS {
                names.insert(field.to_string());
                field
            } else {
                "other"
            }
        };
        self.ignored_fields.with_label_values(&[model, label]).inc();
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definition is valid. This is a bug.");
    r.register(Box::new(c.clone()))
        .expect("metric registered once. This is a bug.");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("metric definition is valid. This is a bug.");
    r.register(Box::new(g.clone()))
        .expect("metric registered once. This is a bug.");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .expect("metric definition is valid. This is a bug.");
    r.register(Box::new(g.clone()))
        .expect("metric registered once. This is a bug.");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], b: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
        .expect("metric definition is valid. This is a bug.");
    r.register(Box::new(h.clone()))
        .expect("metric registered once. This is a bug.");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let mk = ["model", "kind"];
        let kv_usage = float_gauge(
            &r,
            KV_CACHE_USAGE_RATIO,
            "Fraction of the KV cache budget in use",
            &["model"],
        );
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector registered once. This is a bug.");
        let gateway_inflight = IntGauge::new(
            GATEWAY_INFLIGHT_REQUESTS,
            "Requests the gateway holds right now",
        )
        .expect("metric definition is valid. This is a bug.");
        r.register(Box::new(gateway_inflight.clone()))
            .expect("metric registered once. This is a bug.");
        let gateway_connections = IntGauge::new(
            GATEWAY_OPEN_CONNECTIONS,
            "Client connections the gateway holds open",
        )
        .expect("metric definition is valid. This is a bug.");
        r.register(Box::new(gateway_connections.clone()))
            .expect("metric registered once. This is a bug.");
        let gateway_refused_connections = prometheus::IntCounter::new(
            GATEWAY_REFUSED_CONNECTIONS_TOTAL,
            "Connections refused (503) because max_connections were open",
        )
        .expect("metric definition is valid. This is a bug.");
        r.register(Box::new(gateway_refused_connections.clone()))
            .expect("metric registered once. This is a bug.");
        let gpu = ["gpu"];
        Metrics {
            gateway_connections,
            gateway_refused_connections,
            kv_blocked: gauge(
                &r,
                KV_BLOCKED_SEQUENCES,
                "Requests waiting because the KV budget is reserved",
                &["model"],
            ),
            prefix_query_tokens: counter(
                &r,
                PREFIX_CACHE_QUERY_TOKENS_TOTAL,
                "Prompt tokens looked up in the prefix cache",
                &["model"],
            ),
            prefix_hit_tokens: counter(
                &r,
                PREFIX_CACHE_HIT_TOKENS_TOTAL,
                "Prompt tokens served from the prefix cache",
                &["model"],
            ),
            prefix_blocks: gauge(
                &r,
                PREFIX_CACHE_BLOCKS,
                "KV blocks held by the prefix cache",
                &["model"],
            ),
            requests: counter(
                &r,
                REQUESTS_TOTAL,
                "Requests answered, by route and status",
                &["model", "kind", "route", "status"],
            ),
            request_duration: histogram(
                &r,
                REQUEST_DURATION_SECONDS,
                "Request duration",
                &["model", "kind", "route"],
                LATENCY_BUCKETS,
            ),
            queue_depth: gauge(&r, QUEUE_DEPTH, "Inputs waiting in the engine queue", &mk),
            queue_wait: histogram(
                &r,
                QUEUE_WAIT_SECONDS,
                "Time an input waited before its batch ran",
                &mk,
                LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                &r,
                BATCH_SIZE,
                "Inputs (or sequences) per model batch",
                &mk,
                COUNT_BUCKETS,
            ),
            batch_tokens: histogram(
                &r,
                BATCH_TOKENS,
                "Tokens per model batch (padded for encoders)",
                &mk,
                TOKEN_BUCKETS,
            ),
            prompt_tokens: counter(
                &r,
                PROMPT_TOKENS_TOTAL,
                "Prompt/input tokens processed",
                &mk,
            ),
            generated_tokens: counter(&r, GENERATED_TOKENS_TOTAL, "Tokens generated", &mk),
            ttft: histogram(
                &r,
                TIME_TO_FIRST_TOKEN_SECONDS,
                "Time to first token",
                &["model"],
                LATENCY_BUCKETS,
            ),
            itl: histogram(
                &r,
                INTER_TOKEN_LATENCY_SECONDS,
                "Time between streamed tokens",
                &["model"],
                LATENCY_BUCKETS,
            ),
            running: gauge(&r, RUNNING_SEQUENCES, "Sequences decoding", &["model"]),
            waiting: gauge(
                &r,
                WAITING_SEQUENCES,
                "Sequences waiting for admission",
                &["model"],
            ),
            kv_usage,
            restarts: counter(
                &r,
                ENGINE_RESTARTS_TOTAL,
                "Engine process restarts",
                &["model"],
            ),
            retries: counter(
                &r,
                UPSTREAM_RETRIES_TOTAL,
                "Requests retried on another replica",
                &["model"],
            ),
            ejections: counter(
                &r,
                UPSTREAM_EJECTIONS_TOTAL,
                "Replica ejections after consecutive failures",
                &["model"],
            ),
            rejected: counter(
                &r,
                REJECTED_REQUESTS_TOTAL,
                "Requests rejected, by reason",
                &["model", "kind", "reason"],
            ),
            ignored_fields: counter(
                &r,
                IGNORED_FIELDS_TOTAL,
                "Request fields the engine ignored, by top-level name",
                &["model", "field"],
            ),
            ignored_names: Default::default(),
            ready: gauge(
                &r,
                MODEL_READY,
                "1 when the model answered a forward pass and serves",
                &["model", "kind"],
            ),
            gateway_inflight,
            gpu_utilization: float_gauge(&r, GPU_UTILIZATION_RATIO, "GPU busy fraction", &gpu),
            gpu_memory_used: float_gauge(&r, GPU_MEMORY_USED_BYTES, "GPU memory in use", &gpu),
            gpu_memory_total: float_gauge(&r, GPU_MEMORY_TOTAL_BYTES, "GPU memory size", &gpu),
            gpu_temperature: float_gauge(&r, GPU_TEMPERATURE_CELSIUS, "GPU core temperature", &gpu),
            gpu_power: float_gauge(&r, GPU_POWER_WATTS, "GPU power draw", &gpu),
            gpu_model_assigned: gauge(
                &r,
                GPU_MODEL_ASSIGNED,
                "1 for each GPU a model's engine was placed on",
                &["gpu", "model"],
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail. This is a bug.");
        String::from_utf8(buf).expect("prometheus text is UTF-8. This is a bug.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_metric_is_exported_once_touched() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["m", "embedding", "/v1/embeddings", "200"])
            .inc();
        m.request_duration
            .with_label_values(&["m", "embedding", "/v1/embeddings"])
            .observe(0.01);
        m.queue_depth.with_label_values(&["m", "embedding"]).set(0);
        m.queue_wait
            .with_label_values(&["m", "embedding"])
            .observe(0.0);
        m.batch_size
            .with_label_values(&["m", "embedding"])
            .observe(1.0);
        m.batch_tokens
            .with_label_values(&["m", "embedding"])
            .observe(1.0);
        m.prompt_tokens.with_label_values(&["m", "embedding"]).inc();
        m.generated_tokens.with_label_values(&["m", "chat"]).inc();
        m.ttft.with_label_values(&["m"]).observe(0.1);
        m.itl.with_label_values(&["m"]).observe(0.1);
        m.running.with_label_values(&["m"]).set(1);
        m.waiting.with_label_values(&["m"]).set(1);
        m.kv_usage.with_label_values(&["m"]).set(0.5);
        m.restarts.with_label_values(&["m"]).inc();
        m.retries.with_label_values(&["m"]).inc();
        m.ejections.with_label_values(&["m"]).inc();
        m.rejected
            .with_label_values(&["m", "chat", reason::QUEUE_FULL])
            .inc();
        m.ready.with_label_values(&["m", "chat"]).set(1);
        m.gateway_inflight.set(0);
        m.gateway_connections.set(1);
        m.gateway_refused_connections.inc();
        m.kv_blocked.with_label_values(&["m"]).set(0);
        m.prefix_query_tokens.with_label_values(&["m"]).inc();
        m.prefix_hit_tokens.with_label_values(&["m"]).inc();
        m.prefix_blocks.with_label_values(&["m"]).set(1);
        m.gpu_utilization.with_label_values(&["0"]).set(0.5);
        m.gpu_memory_used.with_label_values(&["0"]).set(1.0);
        m.gpu_memory_total.with_label_values(&["0"]).set(2.0);
        m.gpu_temperature.with_label_values(&["0"]).set(40.0);
        m.gpu_power.with_label_values(&["0"]).set(100.0);
        m.gpu_model_assigned.with_label_values(&["0", "m"]).set(1);
        let text = m.render();
        for name in ALL.iter().chain(GPU) {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_families_are_exported_untouched() {
        let text = Metrics::new().render();
        for name in PROCESS {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
