//! `trident status`: the deployment at a glance, from the Docker Engine API and the gateway.
//!
//! Per container of the compose project: service, state, health, uptime, published ports,
//! CPU and memory (one `stats` sample each, taken concurrently). Per model: the state from
//! the gateway's `/ready` (see [`super::ready`]). Exit 0 only when every container runs and
//! is healthy (or has no healthcheck) and every model is ready; 1 otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerStatsResponse, ContainerSummary, HealthStatusEnum};
use bollard::query_parameters::StatsOptionsBuilder;
use bollard::Docker;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::format::{cpu_percent, human_bytes, human_duration, parse_rfc3339};
use super::ready::{self, Readiness};
use super::{connect_docker, container_name, project_containers, service_name, OpsError};

/// Arguments of `trident status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Compose project whose containers to show.
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = super::DEFAULT_PROJECT)]
    pub project: String,
    /// The gateway's readiness URL (per-model state).
    #[arg(long, default_value = "http://127.0.0.1:8000/ready")]
    pub ready_url: String,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the gateway and for each stats sample.
    #[arg(long, default_value_t = 5.0)]
    pub timeout_secs: f64,
}

/// One container's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerReport {
    /// Compose service name.
    pub service: String,
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `running`, `exited`, `restarting`, …
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or `none` without a healthcheck.
    pub health: String,
    /// Seconds since the container started (running containers only).
    pub uptime_secs: Option<i64>,
    /// How often the engine restarted it (restart policy).
    pub restart_count: i64,
    /// Published ports, `host:port->container/proto`.
    pub ports: Vec<String>,
    /// CPU use in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Memory in use (without page cache), bytes.
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
}

impl ContainerReport {
    /// Running, and healthy or without a healthcheck.
    pub fn is_healthy(&self) -> bool {
        self.state == "running" && matches!(self.health.as_str(), "healthy" | "none")
    }
}

/// The whole report (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Compose project name.
    pub project: String,
    /// Containers of the project.
    pub containers: Vec<ContainerReport>,
    /// What the gateway said about its models.
    pub gateway: Readiness,
    /// Containers present, all healthy, all models ready.
    pub healthy: bool,
}

/// Gathers the report, prints it (table or JSON) and returns the exit code.
pub async fn run(args: &StatusArgs) -> Result<i32, OpsError> {
    let timeout = Duration::from_secs_f64(args.timeout_secs.clamp(0.1, 300.0));
    let docker = connect_docker().await?;
    let containers = project_containers(&docker, &args.project).await?;
    let reports = futures::future::join_all(
        containers
            .iter()
            .map(|c| container_report(&docker, c, timeout)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let gateway = ready::fetch(&args.ready_url, timeout).await?;
    let healthy = !reports.is_empty()
        && reports.iter().all(ContainerReport::is_healthy)
        && gateway.all_ready();
    let report = StatusReport {
        project: args.project.clone(),
        containers: reports,
        gateway,
        healthy,
    };
    if args.json {
        let text =
            serde_json::to_string_pretty(&report).expect("report serializes. This is a bug.");
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.healthy { 0 } else { 1 })
}

async fn container_report(
    docker: &Docker,
    c: &ContainerSummary,
    timeout: Duration,
) -> Result<ContainerReport, OpsError> {
    let id = c.id.clone().unwrap_or_default();
    let inspect = docker.inspect_container(&id, None).await?;
    let state = inspect.state.as_ref();
    let status = state
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .or_else(|| c.state.map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown".to_string());
    let health = state
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .filter(|h| !matches!(h, HealthStatusEnum::EMPTY))
        .map(|h| h.to_string())
        .unwrap_or_else(|| "none".to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let uptime_secs = (status == "running")
        .then(|| state.and_then(|s| s.started_at.as_deref()))
        .flatten()
        .and_then(parse_rfc3339)
        .map(|t| now - t);
    let mut ports: Vec<String> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let public = p.public_port?;
            let ip = p.ip.as_deref().unwrap_or("");
            // Docker lists IPv4 and IPv6 bindings separately; show the port once.
            if ip.contains(':') {
                return None;
            }
            let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
            Some(format!("{public}->{}/{proto}", p.private_port))
        })
        .collect();
    ports.sort();
    ports.dedup();
    let mut report = ContainerReport {
        service: service_name(c),
        name: container_name(c),
        image: c.image.clone().unwrap_or_default(),
        state: status,
        health,
        uptime_secs,
        restart_count: inspect.restart_count.unwrap_or(0),
        ports,
        cpu_percent: None,
        memory_bytes: None,
        memory_limit_bytes: None,
    };
    if report.state == "running" {
        if let Some(stats) = one_stats_sample(docker, &id, timeout).await {
            fill_usage(&mut report, &stats);
        }
    }
    Ok(report)
}

/// One non-streaming stats sample (the engine includes the previous sample, ~1 s earlier,
/// as `precpu_stats`). Missing stats are not an error: the columns stay empty.
async fn one_stats_sample(
    docker: &Docker,
    id: &str,
    timeout: Duration,
) -> Option<ContainerStatsResponse> {
    let options = StatsOptionsBuilder::default().stream(false).build();
    let mut stream = docker.stats(id, Some(options));
    tokio::time::timeout(timeout, stream.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

fn fill_usage(report: &mut ContainerReport, s: &ContainerStatsResponse) {
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let cpus = cpu
        .and_then(|c| c.online_cpus)
        .or_else(|| {
            cpu.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|v| v.len() as u32)
        })
        .unwrap_or(1);
    report.cpu_percent = cpu_percent(total(cpu), total(pre), system(cpu), system(pre), cpus);
    if let Some(mem) = s.memory_stats.as_ref() {
        // Like `docker stats`: usage minus page cache (cgroup v1 "cache"/"total_inactive_file",
        // v2 "inactive_file").
        let cache = mem
            .stats
            .as_ref()
            .and_then(|st| {
                st.get("inactive_file")
                    .or_else(|| st.get("total_inactive_file"))
                    .or_else(|| st.get("cache"))
            })
            .copied()
            .unwrap_or(0);
        report.memory_bytes = mem.usage.map(|u| u.saturating_sub(cache));
        report.memory_limit_bytes = mem.limit;
    }
}

/// Human-readable tables.
pub fn render(r: &StatusReport) -> String {
    let mut rows = vec![[
        "SERVICE", "STATE", "HEALTH", "UPTIME", "RESTARTS", "CPU", "MEMORY", "PORTS",
    ]
    .map(String::from)];
    for c in &r.containers {
        rows.push([
            c.service.clone(),
            c.state.clone(),
            c.health.clone(),
            c.uptime_secs
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            c.restart_count.to_string(),
            c.cpu_percent
                .map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "-".into()),
            match (c.memory_bytes, c.memory_limit_bytes) {
                (Some(m), Some(l)) => format!("{} / {}", human_bytes(m), human_bytes(l)),
                (Some(m), None) => human_bytes(m),
                _ => "-".into(),
            },
            if c.ports.is_empty() {
                "-".into()
            } else {
                c.ports.join(", ")
            },
        ]);
    }
    let mut out = format!("compose project '{}'\n", r.project);
    if r.containers.is_empty() {
        out.push_str("  no containers (is the appliance started? ./deploy.sh start)\n");
    } else {
        out.push_str(&table(&rows));
    }
    out.push('\n');
    let g = &r.gateway;
    match (&g.error, g.http_status) {
        (Some(e), _) => out.push_str(&format!("gateway {}: {e}\n", g.url)),
        (None, status) => {
            out.push_str(&format!(
                "gateway {}: HTTP {}{}\n",
                g.url,
                status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                g.status
                    .as_ref()
                    .map(|s| format!(", status {s}"))
                    .unwrap_or_default()
            ));
            let mut rows = vec![["MODEL".to_string(), "STATE".to_string()]];
            rows.extend(g.models.iter().map(|m| [m.id.clone(), m.state.clone()]));
            if g.models.is_empty() {
                out.push_str("  no models reported\n");
            } else {
                out.push_str(&table(&rows));
            }
        }
    }
    out.push_str(if r.healthy {
        "\nhealthy\n"
    } else {
        "\nNOT healthy\n"
    });
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::ready::ModelState;

    fn container(state: &str, health: &str) -> ContainerReport {
        ContainerReport {
            service: "trident".into(),
            name: "trident-trident-1".into(),
            image: "trident:latest".into(),
            state: state.into(),
            health: health.into(),
            uptime_secs: Some(75),
            restart_count: 0,
            ports: vec!["8000->8000/tcp".into()],
            cpu_percent: Some(12.5),
            memory_bytes: Some(300 << 20),
            memory_limit_bytes: None,
        }
    }

    fn gateway(states: &[&str]) -> Readiness {
        Readiness {
            url: "http://127.0.0.1:8000/ready".into(),
            http_status: Some(200),
            status: Some("ready".into()),
            models: states
                .iter()
                .enumerate()
                .map(|(i, s)| ModelState {
                    id: format!("m{i}"),
                    state: s.to_string(),
                })
                .collect(),
            error: None,
        }
    }

    #[test]
    fn container_health_rules() {
        assert!(container("running", "healthy").is_healthy());
        assert!(container("running", "none").is_healthy());
        assert!(!container("running", "starting").is_healthy());
        assert!(!container("running", "unhealthy").is_healthy());
        assert!(!container("exited", "none").is_healthy());
        assert!(!container("restarting", "healthy").is_healthy());
    }

    #[test]
    fn render_shows_containers_models_and_verdict() {
        let report = StatusReport {
            project: "trident".into(),
            containers: vec![container("running", "healthy")],
            gateway: gateway(&["ready", "loading"]),
            healthy: false,
        };
        let text = render(&report);
        for needle in [
            "trident",
            "running",
            "healthy",
            "1m15s",
            "12.5%",
            "300.0MiB",
            "8000->8000/tcp",
            "m0",
            "m1",
            "loading",
            "NOT healthy",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
