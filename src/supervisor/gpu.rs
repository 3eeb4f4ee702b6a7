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
