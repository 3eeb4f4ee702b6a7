//! trident: a container-first LLM serving appliance.
//!
//! A supervisor starts chat, embedding and rerank engines (child processes of the same
//! binary) and fronts them with one OpenAI-compatible gateway. See `docs/ARCHITECTURE.md`.

// Every unsafe operation sits in its own `unsafe` block with a SAFETY comment, also inside
// `unsafe fn`s (whose callers' obligations are in their `# Safety` sections).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod bench;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod metrics;
pub mod mock_engine;
pub mod models;
pub mod ops;
pub mod routing;
pub mod supervisor;
pub mod tls;

/// Completes on SIGTERM or Ctrl-C: the graceful-shutdown trigger of every server.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
