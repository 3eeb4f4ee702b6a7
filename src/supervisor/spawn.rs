//! Starting and stopping engine processes.
//!
//! Each engine is `trident engine --config … --model … --port … --replica …` (the same
//! binary) in its own process group, with `PR_SET_PDEATHSIG=SIGKILL` set between fork and
//! exec so that no engine outlives the supervisor, even after a SIGKILL of the supervisor.
//! `CUDA_VISIBLE_DEVICES` comes from the model's GPUs (empty for CPU engines); API keys are
//! removed from the child's environment. Output lines are forwarded to the supervisor's log
//! with the model id and kept in the replica's tail.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::routing::{effective_gpus, ModelBackend, Replica};

/// How engine processes are started.
#[derive(Debug, Clone)]
pub struct EngineCommand {
    /// The `trident` executable.
    pub exe: PathBuf,
    /// Subcommand words before the engine flags (`["engine"]`; tests use `["mock-engine"]`).
    pub subcommand: Vec<String>,
    pub models_file: PathBuf,
    /// `--settings` passed on, if the supervisor got one.
    pub settings_file: Option<PathBuf>,
    /// `--log-format` passed on, if the supervisor got one.
    pub log_format: Option<String>,
    /// Extra environment for every engine.
    pub env: Vec<(String, String)>,
}

/// Environment variables that must not reach engines (secrets).
const SCRUBBED_ENV: &[&str] = &[
    "TRIDENT_API_KEYS",
    "TRIDENT_API_KEY_FILE",
    "TRIDENT_GENERATE_API_KEY",
];

/// Starts one replica's engine.
pub fn spawn(
    cmd: &EngineCommand,
    model: &ModelBackend,
    replica: &Replica,
) -> std::io::Result<Child> {
    let port = replica
        .port
        .ok_or_else(|| std::io::Error::other("a remote upstream has no process"))?;
    let mut c = Command::new(&cmd.exe);
    c.args(&cmd.subcommand)
        .arg("--config")
        .arg(&cmd.models_file)
        .args(["--model", &model.id])
        .args(["--port", &port.to_string()])
        .args(["--replica", &replica.index.to_string()])
        .args(["--host", "127.0.0.1"]);
    if let Some(s) = &cmd.settings_file {
        c.arg("--settings").arg(s);
    }
    if let Some(f) = &cmd.log_format {
        c.args(["--log-format", f]);
    }
    for k in SCRUBBED_ENV {
        c.env_remove(k);
    }
    let gpus = effective_gpus(&model.entry);
    let visible: Vec<String> = gpus.iter().map(|g| g.to_string()).collect();
    c.env("CUDA_VISIBLE_DEVICES", visible.join(","))
        .env("NO_COLOR", "1")
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid); it allocates nothing.
    unsafe {
        c.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The supervisor may have died before prctl took effect.
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::other("supervisor exited"));
            }
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the *thread* that forked exits; spawning happens on a
    // runtime worker thread, which lives as long as the supervisor.
    c.spawn()
}

/// Longest engine log line forwarded in one piece (longer ones are split).
const MAX_LINE: u64 = 64 * 1024;

/// Forwards an engine's output to the log and the replica's tail until it closes.
pub fn forward_output(
    stream: impl AsyncRead + Unpin + Send + 'static,
    replica: std::sync::Arc<Replica>,
    tag: String,
) {
    tokio::spawn(async move {
        // Bytes, not `lines()`: a line that is not UTF-8 would end a `lines()` reader, and an
        // engine whose output is no longer read blocks once the pipe fills. Lines are cut at
        // MAX_LINE so a missing newline cannot grow one without bound.
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = strip_ansi(text.trim_end_matches(['\n', '\r']));
            tracing::info!(target: "trident::engine", "[{tag}] {line}");
            replica.push_log(line);
        }
    });
}

/// Removes ANSI escape sequences (colours) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// SIGTERM to the engine's process group, SIGKILL after `grace`, then reaps it.
pub async fn stop(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id() else {
        let _ = child.wait().await;
        return;
    };
    let group = Pid::from_raw(pid as i32);
    // A stopped (SIGSTOP) or wedged engine ignores this; the SIGKILL below follows.
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            pid,
            "engine did not stop within the grace period; killing it"
        );
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Anything the engine itself started goes with it.
    let _ = killpg(group, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m boom"),
            "2026 ERROR boom"
        );
    }
}
