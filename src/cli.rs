//! Command-line interface: one binary, one subcommand per role.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// trident — chat, embedding and rerank engines behind one OpenAI-compatible gateway.
#[derive(Debug, Parser)]
#[command(name = "trident", version, about)]
pub struct Cli {
    /// Settings file (TOML); default `config/trident.toml` when present.
    #[arg(long, global = true, env = "TRIDENT_SETTINGS")]
    pub settings: Option<PathBuf>,
    /// Log format: text or json (overrides settings).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one model of models.json on its port (started by the supervisor).
    Engine(EngineArgs),
    /// Check models.json and report every problem; exit non-zero if there is any.
    CheckConfig(CheckConfigArgs),
    /// Load generators for the running appliance or an engine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Containers of the compose deployment and per-model state; exit 0 only when healthy.
    Status(crate::ops::StatusArgs),
    /// Logs of the compose deployment's containers (Docker Engine API).
    Logs(crate::ops::LogsArgs),
    /// Probe the gateway (the image's HEALTHCHECK): exit 0 iff it answers 200.
    Healthcheck(crate::ops::HealthcheckArgs),
    /// Per-model state, req/s, p50/p95, tokens/s, queue and KV from the gateway's /metrics.
    Top(crate::ops::TopArgs),
    /// Apply the edited models.json to the running appliance (added, removed and changed
    /// models; the others are untouched). Run it where the appliance runs.
    Reload(crate::ops::ReloadArgs),
    /// Restart one model of the running appliance, one replica at a time (each drained
    /// first), so a model with replicas keeps serving.
    Restart(crate::ops::RestartArgs),
    /// The offline bundle: pack, verify, load, inspect, keygen, inventory.
    #[command(subcommand)]
    Bundle(crate::bundle::BundleCommand),
    /// Run the supervisor (one engine per model) and the gateway.
    Serve(crate::supervisor::ServeArgs),
    /// A fault-injecting stand-in for an engine (tests and benchmarks).
    #[command(hide = true)]
    MockEngine(crate::mock_engine::MockEngineArgs),
    /// Model fixtures made from local files (scripts/gpu-check.sh): no hub is reachable.
    #[command(subcommand, hide = true)]
    Fixture(FixtureCommand),
}

#[derive(Debug, Subcommand)]
pub enum FixtureCommand {
    /// A GGUF decoder dequantised into a Hugging Face safetensors directory.
    Dequantize {
        #[arg(long)]
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// A cross-encoder: a BERT embedding model plus a seeded classification head.
    CrossEncoder {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The models file.
    #[arg(long, default_value = "config/models.json", env = "TRIDENT_MODELS")]
    pub config: PathBuf,
    /// Model id (key in models.json).
    #[arg(long)]
    pub model: String,
    /// Listen on this port instead of the entry's.
    #[arg(long)]
    pub port: Option<u16>,
    /// Replica index (port = entry port + replica).
    #[arg(long, default_value_t = 0)]
    pub replica: usize,
    /// Address to bind.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The models file.
    #[arg(long, default_value = "config/models.json", env = "TRIDENT_MODELS")]
    pub config: PathBuf,
    /// Do not check that model paths exist (e.g. when checking a container's file outside it).
    #[arg(long)]
    pub no_paths: bool,
    /// Also check the GPU plan against this machine's GPUs (NVML), as `serve` does before
    /// starting engines: assigned GPUs exist, memory shares fit, the driver is new enough.
    #[arg(long)]
    pub gpus: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// POST /v1/embeddings load.
    Embeddings(crate::bench::embeddings::EmbeddingBenchArgs),
    /// Streamed POST /v1/chat/completions load (TTFT, TPOT, ITL, output tok/s).
    Chat(crate::bench::chat::ChatBenchArgs),
    /// POST /v1/rerank load (one query × N documents per request).
    Rerank(crate::bench::rerank::RerankBenchArgs),
}
