//! Progress of the bundle commands, one phase at a time (export, hash, write, verify,
//! extract, load): byte-accurate `indicatif` bars with rate and ETA on a terminal, one line
//! per finished phase when stderr is not a terminal, or JSON lines (`--json`) for scripts.
//! Counters only ever grow, and a total that turns out too small grows with them, so a bar
//! never goes backwards.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars on stderr (a terminal).
    Bar,
    /// One line per phase on stderr.
    Plain,
    /// JSON lines on stderr.
    Json,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Bars on a terminal, JSON events when asked, plain lines otherwise.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Mode::Bar
        } else {
            Mode::Plain
        }
    }
}

/// One phase's counter; cheap to clone into the threads doing the work.
#[derive(Clone)]
pub struct Phase {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    name: String,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    started: Instant,
}

struct State {
    done: u64,
    total: u64,
    last_event: Instant,
    finished: bool,
}

const EVENT_EVERY: Duration = Duration::from_millis(250);

impl Phase {
    /// Starts a phase of `total` bytes (a best estimate; it may grow).
    pub fn start(mode: Mode, name: &str, total: u64) -> Phase {
        let bar = (mode == Mode::Bar).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("progress template is valid. This is a bug.")
                .progress_chars("=> "),
            );
            b.set_prefix(name.to_string());
            b
        });
        let now = Instant::now();
        let p = Phase {
            inner: Arc::new(Inner {
                mode,
                name: name.to_string(),
                bar,
                state: Mutex::new(State {
                    done: 0,
                    total,
                    last_event: now - EVENT_EVERY,
                    finished: false,
                }),
                started: now,
            }),
        };
        if mode == Mode::Json {
            p.event("phase_start", 0, total);
        }
        p
    }

    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.done += n;
        if s.done > s.total {
            s.total = s.done;
            if let Some(b) = &self.inner.bar {
                b.set_length(s.total);
            }
        }
        if let Some(b) = &self.inner.bar {
            b.inc(n);
        }
        if self.inner.mode == Mode::Json && s.last_event.elapsed() >= EVENT_EVERY {
            s.last_event = Instant::now();
            let (done, total) = (s.done, s.total);
            drop(s);
            self.event("progress", done, total);
        }
    }

    /// Raises the total (never lowers it).
    pub fn grow_total(&self, total: u64) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if total > s.total {
            s.total = total;
            if let Some(b) = &self.inner.bar {
                b.set_length(total);
            }
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done
    }

    /// Ends the phase and reports its totals.
    pub fn finish(&self) {
        let mut s = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.finished {
            return;
        }
        s.finished = true;
        let done = s.done;
        drop(s);
        let secs = self.inner.started.elapsed().as_secs_f64();
        match self.inner.mode {
            Mode::Bar => {
                if let Some(b) = &self.inner.bar {
                    b.finish_and_clear();
                }
                eprintln!("{:>8} {}", self.inner.name, summary(done, secs));
            }
            Mode::Plain => eprintln!("bundle: {} {}", self.inner.name, summary(done, secs)),
            Mode::Json => self.event("phase_done", done, done),
            Mode::Quiet => {}
        }
    }

    fn event(&self, event: &str, done: u64, total: u64) {
        let secs = self.inner.started.elapsed().as_secs_f64();
        let line = serde_json::json!({
            "event": event,
            "phase": self.inner.name,
            "done_bytes": done,
            "total_bytes": total,
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
        });
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// `12.3 MB in 1.5 s (8.2 MB/s)`.
pub fn summary(bytes: u64, secs: f64) -> String {
    let mb = bytes as f64 / 1e6;
    let rate = if secs > 0.0 { mb / secs } else { 0.0 };
    format!("{mb:.1} MB in {secs:.1} s ({rate:.0} MB/s)")
}

/// Prints a message line unless progress output is JSON or quiet.
pub fn say(mode: Mode, msg: &str) {
    match mode {
        Mode::Bar | Mode::Plain => eprintln!("bundle: {msg}"),
        Mode::Json => {
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                serde_json::json!({"event": "message", "message": msg})
            );
        }
        Mode::Quiet => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_monotonically() {
        let p = Phase::start(Mode::Quiet, "hash", 10);
        p.inc(4);
        p.inc(8); // past the estimate: the total follows
        p.grow_total(5); // never lowers
        assert_eq!(p.done(), 12);
        assert_eq!(p.inner.state.lock().unwrap().total, 12);
        p.finish();
        p.finish();
    }
}
