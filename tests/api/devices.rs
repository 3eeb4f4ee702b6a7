//! Device selection seen from the CLI: `check-config --gpus` runs the supervisor's GPU plan
//! (the one `serve` runs before any engine starts) against this machine. CI machines have no
//! GPU, and a CPU-only build has no NVML at all, so a `cuda` model must be refused there with
//! its id in the message; without `--gpus` the same file is only checked for its own content
//! (what `deploy.sh` asks a GPU-less throwaway container to do).

use std::process::Command;

use serde_json::json;

const EXE: &str = env!("CARGO_BIN_EXE_trident");

fn check_config(models: serde_json::Value, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    let mut models = models;
    for entry in models.as_object_mut().unwrap().values_mut() {
        entry["path"] = json!(dir.path());
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
