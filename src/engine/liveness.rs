//! Liveness of an engine's model thread, which the supervisor's probe of `/health` reads.
//!
//! The HTTP server answering says little: a model thread stuck in a forward pass (a wedged
//! GPU, a deadlock) or gone after a panic leaves the server up. So the model thread beats a
//! [`Liveness`] before and after every unit of work (a chat step, an encoder batch) and at
//! least once a second while it waits; `/health` turns 503 `hung` when the last beat is
//! older than `model_stall_secs`, and 503 `failed` once the thread stopped (its panic
//! message kept). [`run_guarded`] is the wrapper every model thread runs in.
//!
//! [`FaultHook`] is the test-only way to make a loader or a model thread panic or wedge
//! (`TRIDENT_TEST_FAULT=<model id>:<spec>`, read in debug builds only; release builds
//! ignore it).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait of an idle model thread between two beats.
pub const IDLE_BEAT: Duration = Duration::from_secs(1);

/// The model thread's heartbeat and, once it stopped, why.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    /// Milliseconds since `origin` of the last beat.
    last_ms: AtomicU64,
    stall: Duration,
    stopped: Mutex<Option<String>>,
}

/// What `/health` makes of the model thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulse {
    Alive,
    /// No beat for longer than the stall limit.
    Hung(String),
    /// The thread is gone.
    Stopped(String),
}

impl Liveness {
    /// A heartbeat that counts as hung after `stall` without a beat.
    pub fn new(stall: Duration) -> Arc<Liveness> {
        Arc::new(Liveness {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            stall,
            stopped: Mutex::new(None),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis().min(u64::MAX as u128) as u64
    }

    /// Called by the model thread: it is alive and about to work or wait.
    pub fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Records that the model thread stopped (kept: the first reason wins).
    pub fn stop(&self, why: String) {
        let mut s = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        s.get_or_insert(why);
    }

    pub fn pulse(&self) -> Pulse {
        if let Some(why) = self
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Pulse::Stopped(why);
        }
        let age = self.age();
        if age > self.stall {
            return Pulse::Hung(format!(
                "the model thread has been inside one unit of work for {:.1} s",
                age.as_secs_f64()
            ));
        }
        Pulse::Alive
    }
}

/// What a model thread needs to be watched: its heartbeat and the test fault hooks.
#[derive(Debug, Clone)]
pub struct ModelWatch {
    pub liveness: Arc<Liveness>,
    pub faults: Arc<FaultHook>,
}

impl ModelWatch {
    /// A watch of `model`'s thread with the given stall limit and the environment's test
    /// faults.
    pub fn new(model: &str, stall: Duration) -> ModelWatch {
        ModelWatch {
            liveness: Liveness::new(stall),
            faults: Arc::new(FaultHook::from_env(model)),
        }
    }

    /// Called by the model thread before each unit of work: fires a test fault, then beats.
    pub fn before_work(&self) {
        self.faults.before_work();
        self.liveness.beat();
    }
}

impl Default for ModelWatch {
    /// The default stall limit (120 s) and no faults.
    fn default() -> Self {
        ModelWatch {
            liveness: Liveness::new(Duration::from_secs(120)),
            faults: Arc::new(FaultHook::default()),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs a model thread's loop; when it returns or panics, records why on `liveness` and
/// calls `cleanup` (which closes the inbox and fails everything still pending).
pub fn run_guarded(liveness: &Liveness, work: impl FnOnce(), cleanup: impl FnOnce()) {
    liveness.beat();
    let why = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(()) => "the model thread stopped".to_string(),
        Err(p) => format!("the model thread panicked: {}", panic_message(p.as_ref())),
    };
    tracing::error!(error = %why, "model thread stopped");
    liveness.stop(why);
    cleanup();
}

/// Test-only faults of the model thread, from `TRIDENT_TEST_FAULT=<model id>:<spec>`
/// (debug builds), spec words `load_panic`, `model_panic_after=N`, `model_hang_after=N`
/// (N units of work succeed first).
#[derive(Debug, Default)]
pub struct FaultHook {
    load_panic: bool,
    panic_after: Option<u64>,
    hang_after: Option<u64>,
    done: AtomicU64,
}

impl FaultHook {
    /// The faults the environment asks for `model` (none in release builds).
    pub fn from_env(model: &str) -> FaultHook {
        if !cfg!(debug_assertions) {
            return FaultHook::default();
        }
        std::env::var("TRIDENT_TEST_FAULT")
            .ok()
            .and_then(|v| {
                let (id, spec) = v.split_once(':')?;
                (id == model).then(|| FaultHook::parse(spec))
            })
            .unwrap_or_default()
    }

    /// Parses `model_panic_after=2,load_panic`; unknown words are ignored.
    pub fn parse(spec: &str) -> FaultHook {
        let mut f = FaultHook::default();
        for part in spec.split(',').map(str::trim) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let n = v.parse().ok();
            match k {
                "load_panic" => f.load_panic = true,
                "model_panic_after" => f.panic_after = n,
                "model_hang_after" => f.hang_after = n,
                _ => {}
            }
        }
        f
    }

    /// Called by the loader before it loads.
    pub fn on_load(&self) {
        if self.load_panic {
            panic!("injected fault: load_panic");
        }
    }

    /// Called by the model thread before each unit of work.
    pub fn before_work(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed);
        if self.panic_after.is_some_and(|n| done >= n) {
            panic!("injected fault: model_panic_after");
        }
        if self.hang_after.is_some_and(|n| done >= n) {
            tracing::warn!("injected fault: the model thread wedges");
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_heartbeat_is_hung_and_a_stopped_thread_says_why() {
        let l = Liveness::new(Duration::from_millis(30));
        l.beat();
        assert_eq!(l.pulse(), Pulse::Alive);
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(l.pulse(), Pulse::Hung(_)), "{:?}", l.pulse());
        l.beat();
        assert_eq!(l.pulse(), Pulse::Alive);

        let mut cleaned = false;
        run_guarded(&l, || panic!("boom"), || cleaned = true);
        assert!(cleaned);
        assert_eq!(
            l.pulse(),
            Pulse::Stopped("the model thread panicked: boom".into())
        );
    }

    #[test]
    fn fault_specs_fire_after_their_count() {
        let f = FaultHook::parse("model_panic_after=2");
        f.before_work();
        f.before_work();
        let third = catch_unwind(AssertUnwindSafe(|| f.before_work()));
        assert!(third.is_err());
        assert!(catch_unwind(|| FaultHook::parse("load_panic").on_load()).is_err());
        FaultHook::parse("").on_load();
    }
}
