//! The `trident` binary: parses the command line, sets up logging, runs the subcommand and
//! maps its outcome to an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use trident::cli::{BenchCommand, Cli, Command, FixtureCommand};
use trident::config::{CheckOptions, LogFormat, ModelsFile, Settings};

/// mimalloc instead of glibc's malloc: the gateway allocates a little on every request from
/// every worker thread, and glibc's arena locks showed up in its profile under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trident: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli, overrides: &[(&str, String)]) -> anyhow::Result<Settings> {
    let default = std::path::Path::new("config/trident.toml");
    let (file, required) = match &cli.settings {
        Some(p) => (Some(p.as_path()), true),
        None => (Some(default), false),
    };
    Ok(Settings::load(file, required, std::env::vars(), overrides)?)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TRIDENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log that cannot be written (a full disk, a closed pipe) loses lines, never the
        // process: tracing-subscriber would otherwise report the failure with `eprint!`,
        // which panics when stderr itself fails (fault f18).
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A small runtime for the operator commands (the healthcheck runs every few seconds).
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn ops_exit(r: Result<i32, trident::ops::OpsError>) -> anyhow::Result<ExitCode> {
    let code = r?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// `check-config --gpus`: the supervisor's GPU plan against this machine; prints every problem.
fn gpu_plan_ok(file: &ModelsFile) -> bool {
    let detected = trident::supervisor::gpu::detect();
    let problems = trident::supervisor::gpu::check_plan(file, &detected);
    for p in &problems {
        eprintln!("{p}");
    }
    problems.is_empty()
}

/// `check-config`: every tensor-parallel model's split against its checkpoint.
fn splits_ok(file: &ModelsFile) -> bool {
    let problems = trident::supervisor::gpu::check_splits(file);
    for p in &problems {
        eprintln!("{p}");
    }
    problems.is_empty()
}

/// `check-config`: the ports `serve` would open for the models (pinned model listeners, the
/// engines' private ports) against the settings; prints every clash.
fn port_plan_ok(cli: &Cli, file: &ModelsFile) -> anyhow::Result<bool> {
    let s = settings(cli, &[("generate_api_key", "false".into())])?;
    match trident::supervisor::ports::PortPlan::new(&s).listeners(file) {
        Ok(_) => Ok(true),
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            Ok(false)
        }
    }
}

/// The gateway port and first API key from the settings `serve` reads.
fn admin_defaults(cli: &Cli) -> anyhow::Result<trident::ops::admin::Defaults> {
    let s = settings(cli, &[("generate_api_key", "false".into())])?;
    Ok(trident::ops::admin::Defaults {
        port: s.port,
        api_key: s.api_keys.first().map(|k| k.expose().to_string()),
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(f) = &cli.log_format {
        overrides.push(("log_format", f.clone()));
    }
    match &cli.command {
        Command::Fixture(f) => {
            match f {
                FixtureCommand::Dequantize { gguf, out, dtype } => {
                    let dtype: trident::models::DTypeChoice = serde_json::from_value(
                        serde_json::Value::String(dtype.clone()),
                    )
                    .map_err(|_| anyhow::anyhow!("--dtype {dtype}: use f32, f16 or bf16"))?;
                    trident::models::export::gguf_to_safetensors(gguf, out, dtype)?;
                }
                FixtureCommand::CrossEncoder { from, out } => {
                    trident::models::testutil::write_minilm_cross_encoder(from, out)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            let opts = CheckOptions {
                check_paths: !args.no_paths,
            };
            match ModelsFile::load(&args.config, opts) {
                Ok(file) if args.gpus && !gpu_plan_ok(&file) => Ok(ExitCode::FAILURE),
                Ok(file) if !args.no_paths && !splits_ok(&file) => Ok(ExitCode::FAILURE),
                Ok(file) if !port_plan_ok(&cli, &file)? => Ok(ExitCode::FAILURE),
                Ok(file) => {
                    println!(
                        "{}: OK ({} models)",
                        args.config.display(),
                        file.models.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Engine(args) => {
            if let Some(h) = &args.host {
                overrides.push(("host", h.clone()));
            }
            let settings = settings(&cli, &overrides)?;
            init_logging(settings.log_format);
            let opts = trident::engine::EngineOptions {
                models_file: args.config.clone(),
                model_id: args.model.clone(),
                port: args.port,
                replica: args.replica,
                settings,
            };
            // Thread count must be fixed before the model's thread pools start.
            let (_, entry, _) = trident::engine::resolve(&opts)?;
            if let Some(n) = entry.threads {
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
            runtime()?.block_on(async move {
                trident::engine::run(opts, trident::shutdown_signal()).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            if let Some(p) = args.port {
                overrides.push(("port", p.to_string()));
            }
            if let Some(h) = &args.host {
                overrides.push(("host", h.clone()));
            }
            if !args.api_keys.is_empty() {
                overrides.push(("api_keys", args.api_keys.join(",")));
            }
            if args.allow_unauthenticated {
                overrides.push(("allow_unauthenticated", "true".into()));
            }
            let settings = settings(&cli, &overrides)?;
            init_logging(settings.log_format);
            let (file, format) = (cli.settings.clone(), cli.log_format.clone());
            runtime()?.block_on(trident::supervisor::run_cli(args, settings, file, format))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MockEngine(args) => {
            runtime()?
                .block_on(trident::mock_engine::run_cli(args))
                .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Embeddings(args)) => {
            let code = runtime()?.block_on(trident::bench::embeddings::run(args))?;
            Ok(ExitCode::from(code))
        }
        Command::Bench(BenchCommand::Chat(args)) => {
            let code = runtime()?.block_on(trident::bench::chat::run(args))?;
            Ok(ExitCode::from(code))
        }
        Command::Bench(BenchCommand::Rerank(args)) => {
            let code = runtime()?.block_on(trident::bench::rerank::run(args))?;
            Ok(ExitCode::from(code))
        }
        Command::Bundle(cmd) => Ok(ExitCode::from(trident::bundle::run(cmd)?)),
        // Operator commands: no settings, no logging setup (they run on the host or as the
        // HEALTHCHECK, where TRIDENT_* variables may be host-side names).
        Command::Status(args) => {
            ops_exit(current_thread()?.block_on(trident::ops::status::run(args)))
        }
        Command::Logs(args) => ops_exit(current_thread()?.block_on(trident::ops::logs::run(args))),
        Command::Healthcheck(args) => {
            ops_exit(current_thread()?.block_on(trident::ops::healthcheck::run(args)))
        }
        Command::Top(args) => ops_exit(current_thread()?.block_on(trident::ops::top::run(args))),
        // The appliance's own settings give the port and key (`generate_api_key` off: a
        // reload never creates a key file).
        Command::Reload(args) => {
            let d = admin_defaults(&cli)?;
            ops_exit(current_thread()?.block_on(trident::ops::admin::reload(args, &d)))
        }
        Command::Restart(args) => {
            let d = admin_defaults(&cli)?;
            ops_exit(current_thread()?.block_on(trident::ops::admin::restart(args, &d)))
        }
    }
}
