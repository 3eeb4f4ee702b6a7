//! `trident logs`: the logs of the compose project's containers through the Engine API.
//!
//! Lines are prefixed with the service name (like `docker compose logs`). Without `--follow`
//! each container's tail is printed in turn; with `--follow` the streams are merged as lines
//! arrive, until every container stops or Ctrl-C. A closed stdout (`| head`) ends quietly.

use std::io::ErrorKind;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptionsBuilder;
use clap::Args;
use futures::stream::{self, StreamExt};
use tokio::io::AsyncWriteExt;

use super::{connect_docker, project_containers, service_name, OpsError};

/// Arguments of `trident logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Services to show (default: every container of the project).
    pub services: Vec<String>,
    /// Compose project whose containers to show.
    #[arg(long, env = "COMPOSE_PROJECT_NAME", default_value = super::DEFAULT_PROJECT)]
    pub project: String,
    /// Keep streaming new lines.
    #[arg(long, short)]
    pub follow: bool,
    /// Lines from the end of each log (`all` for everything).
    #[arg(long, short = 'n', default_value = "200")]
    pub tail: String,
    /// Prefix lines with the engine's timestamp.
    #[arg(long, short)]
    pub timestamps: bool,
    /// Do not prefix lines with the service name.
    #[arg(long)]
    pub no_prefix: bool,
}

/// Prints the logs; `Ok(0)` when done, `Ok(1)` when the project has no containers.
pub async fn run(args: &LogsArgs) -> Result<i32, OpsError> {
    let tail = args.tail.trim();
    if tail != "all" && tail.parse::<u64>().is_err() {
        return Err(OpsError::InvalidArgument(format!(
            "--tail takes a number of lines or 'all', not '{tail}'"
        )));
    }
    let docker = connect_docker().await?;
    let containers = project_containers(&docker, &args.project).await?;
    if containers.is_empty() {
        eprintln!("no containers in compose project '{}'", args.project);
        return Ok(1);
    }
    for wanted in &args.services {
        if !containers.iter().any(|c| &service_name(c) == wanted) {
            return Err(OpsError::UnknownService {
                service: wanted.clone(),
                project: args.project.clone(),
            });
        }
    }
    let selected: Vec<_> = containers
        .iter()
        .filter(|c| args.services.is_empty() || args.services.contains(&service_name(c)))
        .collect();
    let width = selected
        .iter()
        .map(|c| service_name(c).len())
        .max()
        .unwrap_or(0);
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .follow(args.follow)
        .timestamps(args.timestamps)
        .tail(tail)
        .build();
    let streams = selected.iter().map(|c| {
        let prefix = if args.no_prefix {
            String::new()
        } else {
            format!("{:<width$} | ", service_name(c))
        };
        let id = c.id.clone().unwrap_or_default();
        docker
            .logs(&id, Some(options.clone()))
            .map(move |item| (prefix.clone(), item))
            .boxed()
    });
    let mut merged = if args.follow {
        stream::select_all(streams).boxed()
    } else {
        stream::iter(streams).flatten().boxed()
    };
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let printing = async {
        while let Some((prefix, item)) = merged.next().await {
            let (to_err, message) = match item? {
                LogOutput::StdErr { message } => (true, message),
                LogOutput::StdOut { message }
                | LogOutput::Console { message }
                | LogOutput::StdIn { message } => (false, message),
            };
            let line = format_line(&prefix, &message);
            if to_err {
                err.write_all(&line).await?;
            } else {
                out.write_all(&line).await?;
            }
        }
        out.flush().await?;
        Ok::<(), OpsError>(())
    };
    let result = tokio::select! {
        r = printing => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    match result {
        Err(OpsError::Io(e)) if e.kind() == ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e),
        Ok(()) => Ok(0),
    }
}

/// One output chunk with the prefix in front of every line it holds (the engine sends whole
/// lines for non-TTY containers, but a chunk may carry several).
fn format_line(prefix: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + prefix.len() + 1);
    for line in message.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format_line;

    #[test]
    fn every_line_gets_the_prefix() {
        assert_eq!(format_line("a | ", b"one\ntwo\n"), b"a | one\na | two\n");
        assert_eq!(format_line("", b"no newline"), b"no newline\n");
        assert_eq!(format_line("b | ", b"x"), b"b | x\n");
    }
}
