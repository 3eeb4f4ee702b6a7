//! Device selection seen from the CLI: `check-config --gpus` runs the supervisor's GPU plan
//! (the one `serve` runs before any engine starts) against this machine. CI machines have no
//! GPU, and a CPU-only build has no NVML at all, so a `cuda` model must be refused there with
//! its id in the message; without `--gpus` the same file is only checked for its own content
//! (what `deploy.sh` asks a GPU-less throwaway container to do).

use std::process::Command;

use serde_json::json;

const EXE: &str = env!("CARGO_BIN_EXE_trident");

/// `trident check-config` on `models` (entries without a `path` get an empty directory);
/// whether it passed, and what it printed.
pub(crate) fn check_config(models: serde_json::Value, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    let mut models = models;
    for entry in models.as_object_mut().unwrap().values_mut() {
        if entry.get("path").is_none() {
            entry["path"] = json!(dir.path());
        }
    }
    std::fs::write(&file, json!({ "models": models }).to_string()).unwrap();
    let out = Command::new(EXE)
        .arg("check-config")
        .args(extra)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_cuda_model_is_refused_on_a_machine_without_a_gpu() {
    // Only meaningful where no GPU can be used, as on CI; a GPU machine skips the refusal.
    if trident::supervisor::gpu::detect().is_ok_and(|g| !g.is_empty()) {
        return;
    }
    let models = json!({
        "small-cpu": {"type": "embedding", "port": 19001, "device": "cpu"},
        "big-gpu": {"type": "chat", "port": 19002, "device": "cuda", "gpu_memory_utilization": 0.5},
    });
    let (ok, text) = check_config(models.clone(), &["--gpus"]);
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("\"big-gpu\"") && text.contains("GPU 0") && !text.contains("small-cpu"),
        "{text}"
    );
    // The file alone is fine.
    let (ok, text) = check_config(models, &[]);
    assert!(ok, "{text}");
    // CPU models pass the GPU plan too.
    let (ok, text) = check_config(
        json!({"e": {"type": "embedding", "port": 19001, "device": "cpu"}}),
        &["--gpus"],
    );
    assert!(ok, "{text}");
}

#[test]
fn check_config_refuses_the_ports_serve_would_refuse() {
    // The gateway's own port (8000 by default) cannot also be a model's pinned port.
    let (ok, text) = check_config(
        json!({"chat": {"type": "chat", "port": 8000, "device": "cpu"}}),
        &[],
    );
    assert!(!ok, "accepted: {text}");
    assert!(
        text.contains("models.chat.port") && text.contains("gateway's own port"),
        "{text}"
    );
    // An engine's private port (port + engine_port_offset) on another model's pinned port.
    let (ok, text) = check_config(
        json!({
            "a": {"type": "embedding", "port": 9001, "device": "cpu"},
            "b": {"type": "rerank", "port": 19001, "device": "cpu"},
        }),
        &[],
    );
    assert!(!ok, "accepted: {text}");
    assert!(text.contains("19001"), "{text}");
    // Ports that do not meet are fine.
    let (ok, text) = check_config(
        json!({
            "a": {"type": "embedding", "port": 9001, "device": "cpu"},
            "b": {"type": "rerank", "port": 9002, "device": "cpu"},
        }),
        &[],
    );
    assert!(ok, "{text}");
}
