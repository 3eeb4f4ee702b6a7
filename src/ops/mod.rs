//! Operator commands around the container deployment: `trident status`, `trident logs`,
//! `trident healthcheck`, `trident top` (the gateway's metrics as a terminal view), and
//! `trident reload` / `trident restart MODEL` (the supervisor's operations, `admin`).
//!
//! `status` and `logs` talk to the Docker Engine API (through `bollard`) about the containers
//! of one compose project (label `com.docker.compose.project`), so they work the same with
//! compose v1 and v2 and need no `docker` CLI; `status` also asks the gateway's `/ready` for
//! per-model state. `healthcheck` is the image's own HEALTHCHECK (no curl in the image).
//! `deploy.sh status|logs` call these. Each command exposes a clap `Args` struct and an async
//! `run` that returns the process exit code; `main.rs` only wires them in.

pub mod admin;
pub mod format;
pub mod healthcheck;
pub mod logs;
pub mod ready;
pub mod status;
pub mod top;

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;

pub use admin::{ReloadArgs, RestartArgs};
pub use healthcheck::HealthcheckArgs;
pub use logs::LogsArgs;
pub use status::StatusArgs;
pub use top::TopArgs;

/// Compose's label naming the project a container belongs to (v1 and v2 alike).
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's label naming the service a container runs.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// The compose project name used by `compose.yaml` (`name: trident`) and `deploy.sh`.
pub const DEFAULT_PROJECT: &str = "trident";

/// Errors of the operator commands. Exit codes for "ran, but unhealthy" are not errors:
/// `run` returns them as `Ok(code)`.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The Docker daemon could not be reached or answered with an error.
    #[error("Docker Engine API: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// A URL given on the command line is not usable.
    #[error("invalid URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A command-line value that is out of its domain.
    #[error("{0}")]
    InvalidArgument(String),
    /// A service named on the command line has no container in the project.
    #[error("no container for service '{service}' in compose project '{project}'")]
    UnknownService {
        /// The service asked for.
        service: String,
        /// The compose project searched.
        project: String,
    },
    /// Writing the output failed (other than a closed pipe, which ends quietly).
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Connects to the daemon named by `DOCKER_HOST` (default: the local socket) and agrees on an
/// API version the daemon supports (engines as old as API 1.41 / Docker 20.10 work).
pub async fn connect_docker() -> Result<Docker, OpsError> {
    let docker = Docker::connect_with_defaults()?;
    Ok(docker.negotiate_version().await?)
}

/// Every container (running or not) of compose project `project`, sorted by service name
/// then container name so output is stable.
pub async fn project_containers(
    docker: &Docker,
    project: &str,
) -> Result<Vec<ContainerSummary>, OpsError> {
    let mut filters = HashMap::new();
    filters.insert("label", vec![format!("{PROJECT_LABEL}={project}")]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut containers = docker.list_containers(Some(options)).await?;
    containers.sort_by_key(|c| (service_name(c), container_name(c)));
    Ok(containers)
}

/// The compose service of a container, or its name when it has no service label.
pub fn service_name(c: &ContainerSummary) -> String {
    c.labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .cloned()
        .unwrap_or_else(|| container_name(c))
}

/// The container's name without Docker's leading slash (or its short id).
pub fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| c.id.as_ref().map(|id| id.chars().take(12).collect()))
        .unwrap_or_default()
}

/// Validates an `http://` URL given on the command line (no TLS client is built in: the
/// gateway is reached on loopback or through the compose network).
pub(crate) fn check_http_url(url: &str) -> Result<reqwest::Url, OpsError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| OpsError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() != "http" {
        return Err(OpsError::InvalidUrl {
            url: url.to_string(),
            reason: "only http:// is supported".to_string(),
        });
    }
    Ok(parsed)
}
