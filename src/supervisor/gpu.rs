//! The GPU plan, checked before any engine starts: every GPU a model is assigned exists,
//! and the summed `gpu_memory_utilization` per GPU is at most 1.0. GPUs are listed through
//! NVML (`nvml-wrapper`, only with the `cuda` feature); without it the machine counts as
//! CPU-only and any model that needs a GPU is refused with a message naming model and GPU.
//! A driver older than the toolkit the binary was built with counts as no GPU, with a
//! message giving both versions (candle's kernels are PTX, which an older driver cannot load).

use std::collections::BTreeMap;

use crate::config::{ModelsFile, Problem};
use crate::gateway::GpuFacts;
use crate::routing::effective_gpus;

/// `gpu_memory_utilization` assumed when an entry does not set it (vLLM's default).
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// The CUDA version the build's toolkit targets (`scripts/cuda-toolchain.sh` pins 13.0), as
/// NVML reports driver support: major × 1000 + minor × 10.
pub const MIN_CUDA_DRIVER_API: i32 = 13000;

/// The first NVIDIA driver release that supports [`MIN_CUDA_DRIVER_API`] (CUDA 13.0 GA).
pub const MIN_DRIVER_VERSION: &str = "580.65.06";

/// Why the installed driver cannot run this build's kernels, if it cannot. `cuda_api` is
/// NVML's `nvmlSystemGetCudaDriverVersion` (e.g. 12040 for CUDA 12.4), `driver` the
/// driver's own version string.
pub fn driver_problem(cuda_api: i32, driver: &str) -> Option<String> {
    (cuda_api < MIN_CUDA_DRIVER_API).then(|| {
        format!(
            "the NVIDIA driver {driver} supports CUDA up to {}.{}, but this trident build needs CUDA {}.{} \
             (driver {MIN_DRIVER_VERSION} or newer); upgrade the driver or run the models on the CPU",
            cuda_api / 1000,
            cuda_api % 1000 / 10,
            MIN_CUDA_DRIVER_API / 1000,
            MIN_CUDA_DRIVER_API % 1000 / 10,
        )
    })
}

/// Lists the GPUs, or says why none can be used (no NVML, or a driver that is too old).
pub fn detect() -> Result<Vec<GpuFacts>, String> {
    #[cfg(feature = "cuda")]
    {
        let nvml =
            nvml_wrapper::Nvml::init().map_err(|e| format!("NVML is not available ({e})"))?;
        let driver = nvml
            .sys_driver_version()
            .unwrap_or_else(|_| "unknown".into());
        let api = nvml
            .sys_cuda_driver_version()
            .map_err(|e| format!("NVML cannot tell the driver's CUDA version ({e})"))?;
        if let Some(why) = driver_problem(api, &driver) {
            return Err(why);
        }
        let n = nvml
            .device_count()
            .map_err(|e| format!("NVML cannot count devices ({e})"))?;
        let mut out = Vec::new();
        for i in 0..n {
            let d = nvml
                .device_by_index(i)
                .map_err(|e| format!("NVML cannot open GPU {i} ({e})"))?;
            let mem = d.memory_info().ok();
            out.push(GpuFacts {
                index: i as usize,
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                memory_total_bytes: mem.as_ref().map(|m| m.total).unwrap_or(0),
                memory_used_bytes: mem.as_ref().map(|m| m.used).unwrap_or(0),
            });
        }
        Ok(out)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build has no CUDA support (built without the `cuda` feature)".into())
    }
}

/// Tensor-parallel models whose checkpoint cannot be split as asked (attention heads, KV
/// heads and MLP width must divide by `tensor_parallel_size`), read from each checkpoint's
/// configuration before any engine starts; the problems name the numbers.
pub fn check_splits(file: &ModelsFile) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
        let (Some(tp), Some(path)) = (e.tensor_parallel_size.filter(|&t| t > 1), &e.path) else {
            continue;
        };
        let message = match crate::models::decoder::split_problem(path, tp) {
            Ok(None) => continue,
            Ok(Some(why)) => format!("model {id:?}: {why}"),
            Err(err) => format!(
                "model {id:?}: cannot read its configuration to check tensor_parallel_size {tp}: {err}"
            ),
        };
        problems.push(Problem {
            path: format!("models.{id}.tensor_parallel_size"),
            message,
        });
    }
    problems
}

/// Bytes of weight files at a model path (a file, or the `.safetensors` / `.gguf` / `.bin`
/// files of a directory); `None` when it cannot be read.
fn weight_bytes(path: &std::path::Path) -> Option<u64> {
    let path = crate::models::files::resolve(path).ok()?;
    if path.is_file() {
        return std::fs::metadata(&path).ok().map(|m| m.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(&path).ok()?.flatten() {
        let p = e.path();
        let weights = p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| matches!(x, "safetensors" | "gguf" | "bin"));
        if weights {
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
    }
    Some(total)
}

/// Checks the plan against the detected GPUs; returns every problem.
pub fn check_plan(file: &ModelsFile, detected: &Result<Vec<GpuFacts>, String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut load: BTreeMap<usize, Vec<(String, f64)>> = BTreeMap::new();
    for (id, e) in file.models.iter().filter(|(_, e)| e.upstream.is_none()) {
        let gpus = effective_gpus(e);
        if gpus.is_empty() {
            continue;
        }
        let path = if e.gpus.is_empty() {
            format!("models.{id}.device")
        } else {
            format!("models.{id}.gpus")
        };
        match detected {
            Err(why) => problems.push(Problem {
                path,
                message: format!(
                    "model {id:?} needs GPU {} but no GPU can be used: {why}; set \"device\": \"cpu\" and remove \"gpus\" to run it on the CPU",
                    gpus[0]
                ),
            }),
            Ok(list) => {
                for &g in &gpus {
                    if g >= list.len() {
                        problems.push(Problem {
                            path: path.clone(),
                            message: format!(
                                "model {id:?} is assigned GPU {g}, which does not exist (this machine has {} GPU(s))",
                                list.len()
                            ),
                        });
                    }
                }
            }
        }
        let share = e
            .gpu_memory_utilization
            .unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION);
        // Each GPU holds one rank's shard of the weights: it must fit in the model's share.
        let ranks = e.tensor_parallel_size.unwrap_or(1).max(1) as u64;
        let shard = e
            .path
            .as_deref()
            .and_then(weight_bytes)
            .map(|b| b.div_ceil(ranks));
        if let (Some(shard), Ok(list)) = (shard, detected) {
            for &g in &gpus {
                let Some(total) = list.get(g).map(|f| f.memory_total_bytes).filter(|&t| t > 0)
                else {
                    continue;
                };
                let room = (share * total as f64) as u64;
                if shard > room {
                    problems.push(Problem {
                        path: format!("models.{id}.gpu_memory_utilization"),
                        message: format!(
                            "model {id:?} needs {} MiB of weights on GPU {g} (its shard at tensor_parallel_size {ranks}), \
                             more than gpu_memory_utilization {share} of {} MiB = {} MiB; raise it, or split the model over more GPUs",
                            shard >> 20,
                            total >> 20,
                            room >> 20
                        ),
                    });
                }
            }
        }
        for &g in &gpus {
            for _ in 0..e.replicas.max(1) {
                load.entry(g).or_default().push((id.clone(), share));
            }
        }
    }
    for (g, users) in load {
        let total: f64 = users.iter().map(|(_, s)| s).sum();
        let parts: Vec<String> = users.iter().map(|(id, s)| format!("{id} {s}")).collect();
        if total > 1.0 + 1e-9 {
            problems.push(Problem {
                path: "models".into(),
                message: format!(
                    "GPU {g} is over-committed: gpu_memory_utilization {} = {total:.2} > 1.0",
                    parts.join(" + ")
                ),
            });
            continue;
        }
        // The shares are of the whole GPU (vLLM's meaning); what other processes hold
        // already is not ours to plan with.
        let Some(facts) = detected.as_ref().ok().and_then(|l| l.get(g)) else {
            continue;
        };
        let free = facts
            .memory_total_bytes
            .saturating_sub(facts.memory_used_bytes);
        let want = (total * facts.memory_total_bytes as f64) as u64;
        if facts.memory_total_bytes > 0 && want > free {
            problems.push(Problem {
                path: "models".into(),
                message: format!(
                    "GPU {g} has {} MiB free of {} MiB, but gpu_memory_utilization {} asks for {} MiB",
                    free >> 20,
                    facts.memory_total_bytes >> 20,
                    parts.join(" + "),
                    want >> 20
                ),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ModelsFile {
        ModelsFile::parse(text, Default::default()).unwrap()
    }

    fn gpus(n: usize) -> Result<Vec<GpuFacts>, String> {
        Ok((0..n)
            .map(|i| GpuFacts {
                index: i,
                name: "test".into(),
                memory_total_bytes: 1 << 34,
                memory_used_bytes: 0,
            })
            .collect())
    }

    #[test]
    fn cpu_models_need_nothing_and_gpu_models_need_a_gpu() {
        let cpu = file(
            r#"{"models": {"e": {"path": "/x", "type": "embedding", "port": 9000, "device": "cpu"}}}"#,
        );
        assert!(check_plan(&cpu, &Err("no NVML".into())).is_empty());
        let cuda = file(
            r#"{"models": {"c": {"path": "/x", "type": "chat", "port": 9000, "device": "cuda"}}}"#,
        );
        let p = check_plan(&cuda, &Err("no NVML".into()));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].message.contains("\"c\"") && p[0].message.contains("GPU 0"),
            "{}",
            p[0]
        );
        assert!(check_plan(&cuda, &gpus(1)).is_empty());
        let listed =
            file(r#"{"models": {"c": {"path": "/x", "type": "chat", "port": 9000, "gpus": [1]}}}"#);
        let p = check_plan(&listed, &gpus(1));
        assert!(
            p[0].message.contains("GPU 1") && p[0].path == "models.c.gpus",
            "{p:?}"
        );
    }

    #[test]
    fn memory_shares_per_gpu_must_fit() {
        let f = file(
            r#"{"models": {
              "c": {"path": "/x", "type": "chat", "port": 9000, "gpus": [0, 1], "gpu_memory_utilization": 0.7},
              "e": {"path": "/y", "type": "embedding", "port": 9001, "gpus": [1], "gpu_memory_utilization": 0.2},
              "r": {"path": "/z", "type": "rerank", "port": 9002, "gpus": [0], "gpu_memory_utilization": 0.2, "replicas": 2}}}"#,
        );
        let p = check_plan(&f, &gpus(2));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("GPU 0") && p[0].message.contains("1.10"),
            "{}",
            p[0]
        );
        assert!(p[0].message.contains("c 0.7") && p[0].message.contains("r 0.2"));
    }

    #[test]
    fn memory_other_processes_hold_is_not_planned_with() {
        let f = file(
            r#"{"models": {
              "c": {"path": "/x", "type": "chat", "port": 9000, "gpus": [0], "gpu_memory_utilization": 0.5},
              "e": {"path": "/y", "type": "embedding", "port": 9001, "gpus": [0], "gpu_memory_utilization": 0.3}}}"#,
        );
        let mut inv = gpus(1).unwrap();
        inv[0].memory_used_bytes = inv[0].memory_total_bytes / 10;
        assert!(check_plan(&f, &Ok(inv.clone())).is_empty());
        inv[0].memory_used_bytes = inv[0].memory_total_bytes / 4;
        let p = check_plan(&f, &Ok(inv));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("GPU 0")
                && p[0].message.contains("c 0.5")
                && p[0].message.contains("e 0.3")
                && p[0].message.contains("12288 MiB free"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn each_gpu_must_hold_its_shard_of_the_weights() {
        let tmp = tempfile::tempdir().unwrap();
        // 12 GiB of weights (a sparse file: only its length is read).
        std::fs::File::create(tmp.path().join("model.safetensors"))
            .unwrap()
            .set_len(12 << 30)
            .unwrap();
        let entry = |tp: usize, gpus: &str| {
            file(&format!(
                r#"{{"models": {{"c": {{"path": "{}", "type": "chat", "port": 9000, "device": "cuda",
                     "gpus": {gpus}, "tensor_parallel_size": {tp}, "gpu_memory_utilization": 0.5}}}}}}"#,
                tmp.path().display()
            ))
        };
        // 16 GiB GPUs at 0.5: 8 GiB each. Whole, 12 GiB does not fit; split in two, 6 GiB does.
        let p = check_plan(&entry(1, "[0]"), &gpus(2));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].path == "models.c.gpu_memory_utilization"
                && p[0].message.contains("12288 MiB")
                && p[0].message.contains("8192 MiB"),
            "{}",
            p[0]
        );
        assert!(check_plan(&entry(2, "[0, 1]"), &gpus(2)).is_empty());
        // Unlisted GPUs: a split over two takes GPUs 0 and 1, so one GPU is not enough.
        let unlisted = file(&format!(
            r#"{{"models": {{"c": {{"path": "{}", "type": "chat", "port": 9000, "device": "cuda",
                 "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5}}}}}}"#,
            tmp.path().display()
        ));
        let p = check_plan(&unlisted, &gpus(1));
        assert!(p.iter().any(|p| p.message.contains("GPU 1")), "{p:?}");
        assert!(check_plan(&unlisted, &gpus(2)).is_empty());
    }

    #[test]
    fn splits_are_checked_against_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = crate::models::testutil_decoder::TinyDecoderSpec::new("qwen2");
        crate::models::testutil_decoder::write_tiny_decoder(tmp.path(), &spec).unwrap();
        let at = |tp: usize| {
            file(&format!(
                r#"{{"models": {{"c": {{"path": "{}", "type": "chat", "port": 9000, "tensor_parallel_size": {tp}}}}}}}"#,
                tmp.path().display()
            ))
        };
        assert!(check_splits(&at(1)).is_empty());
        assert!(check_splits(&at(2)).is_empty());
        let p = check_splits(&at(3));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].path == "models.c.tensor_parallel_size"
                && p[0].message.contains("attention heads 4")
                && p[0].message.contains("KV heads 2")
                && p[0]
                    .message
                    .contains("it does not divide attention heads 4, KV heads 2"),
            "{}",
            p[0]
        );
        // A path that holds no checkpoint says so rather than passing.
        let missing = file(
            r#"{"models": {"c": {"path": "/nonexistent", "type": "chat", "port": 9000, "tensor_parallel_size": 2}}}"#,
        );
        let p = check_splits(&missing);
        assert!(
            p[0].message.contains("cannot read its configuration"),
            "{p:?}"
        );
    }

    #[test]
    fn an_old_driver_is_named_with_the_minimum() {
        assert_eq!(driver_problem(13000, "580.65.06"), None);
        assert_eq!(driver_problem(13020, "590.1"), None);
        let why = driver_problem(12040, "550.54.15").expect("12.4 is too old");
        assert!(
            why.contains("550.54.15") && why.contains("12.4") && why.contains("13.0"),
            "{why}"
        );
        assert!(why.contains(MIN_DRIVER_VERSION), "{why}");
        // A CUDA model on such a machine is refused with that reason.
        let cuda = file(
            r#"{"models": {"c": {"path": "/x", "type": "chat", "port": 9000, "device": "cuda"}}}"#,
        );
        let p = check_plan(&cuda, &Err(why));
        assert!(p[0].message.contains("\"c\"") && p[0].message.contains("550.54.15"));
    }
}
