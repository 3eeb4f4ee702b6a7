//! Replica choice for one request: `round_robin`, `least_outstanding` or `least_latency`
//! (latency EWMA weighted by the requests in flight), over the replicas that are ready and
//! not ejected. When every ready replica is ejected the choice falls back to the ready ones,
//! so ejection never leaves a model without a backend. The retry budget lives here too.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Balance;
use crate::routing::{ModelBackend, Replica};

/// Picks a replica of `model`, skipping the replica indices in `exclude`. Runs on every
/// request, so it walks the replica list instead of collecting candidates.
pub fn pick(
    model: &ModelBackend,
    strategy: Balance,
    exclude: &[usize],
    now: Instant,
) -> Option<Arc<Replica>> {
    let ready = |r: &&Arc<Replica>| r.is_ready() && !exclude.contains(&r.index);
    let (mut n_ready, mut n_healthy) = (0, 0);
    for r in model.replicas.iter().filter(ready) {
        n_ready += 1;
        if !r.is_ejected(now) {
            n_healthy += 1;
        }
    }
    // Ejected replicas are skipped while a healthy one is left (only ejected ones: use them
    // rather than nothing); with none ejected the pool needs no second look at ejection.
    let skip_ejected = n_healthy > 0 && n_healthy < n_ready;
    let n = if n_healthy > 0 { n_healthy } else { n_ready };
    if n == 0 {
        return None;
    }
    let pool = || {
        model
            .replicas
            .iter()
            .filter(ready)
            .filter(move |r| !skip_ejected || !r.is_ejected(now))
    };
    // The cursor rotates the starting point so ties spread evenly.
    let start = model.cursor.fetch_add(1, Ordering::Relaxed) % n;
    let rotated = || pool().skip(start).chain(pool().take(start));
    let chosen = match strategy {
        // (`or_else`: a replica may have left the pool since it was counted.)
        Balance::RoundRobin => pool().nth(start).or_else(|| pool().next()),
        Balance::LeastOutstanding => {
            rotated().min_by_key(|r| r.outstanding.load(Ordering::Relaxed))
        }
        Balance::LeastLatency => rotated().min_by_key(|r| {
            // An unmeasured idle replica scores 0 so it gets tried once; an unmeasured
            // busy one is not piled onto before its first answer says how fast it is.
            let inflight = r.outstanding.load(Ordering::Relaxed) as u64;
            match r.ewma_us() {
                0 if inflight > 0 => u64::MAX,
                ewma => ewma.saturating_mul(inflight + 1),
            }
        }),
    };
    chosen.cloned()
}

/// True when another replica than `index` is ready and not ejected.
pub fn others_healthy(model: &ModelBackend, index: usize, now: Instant) -> bool {
    model
        .replicas
        .iter()
        .any(|r| r.index != index && r.is_ready() && !r.is_ejected(now))
}

/// Limits retries to a fraction of recent traffic (plus a small floor), so a failing
/// backend cannot double the load on the others.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<(f64, Instant)>,
    ratio: f64,
    floor_per_sec: f64,
    cap: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 5.0, 20.0)
    }
}

impl RetryBudget {
    /// `ratio` tokens per request, `floor_per_sec` refill per second, at most `cap` saved.
    pub fn new(ratio: f64, floor_per_sec: f64, cap: f64) -> Self {
        RetryBudget {
            state: Mutex::new((cap, Instant::now())),
            ratio,
            floor_per_sec,
            cap,
        }
    }

    fn refill(&self, s: &mut (f64, Instant), now: Instant, extra: f64) {
        let secs = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + secs * self.floor_per_sec + extra).min(self.cap);
        s.1 = now;
    }

    /// Called once per request.
    pub fn deposit(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, now, self.ratio);
    }

    /// Takes one retry token if there is one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, now, 0.0);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Jittered pause before a retry: 5–25 ms.
pub fn retry_pause() -> Duration {
    use rand::Rng;
    Duration::from_millis(rand::thread_rng().gen_range(5..=25))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelsFile;
    use crate::routing::{Backends, ReplicaState};

    fn model(n: usize) -> Arc<ModelBackend> {
        let text = format!(
            r#"{{"models": {{"m": {{"path": "/x", "type": "embedding", "port": 9000, "replicas": {n}}}}}}}"#
        );
        let file = ModelsFile::parse(&text, Default::default()).unwrap();
        let b = Backends::new(&file, "127.0.0.1", &|_, r| 9000 + r as u16);
        let m = b.models[0].clone();
        for r in &m.replicas {
            r.set_state(ReplicaState::Ready);
        }
        m
    }

    #[test]
    fn round_robin_cycles_over_ready_replicas() {
        let m = model(3);
        m.replicas[1].set_state(ReplicaState::Restarting);
        let now = Instant::now();
        let picks: Vec<usize> = (0..4)
            .map(|_| pick(&m, Balance::RoundRobin, &[], now).unwrap().index)
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 2);
        assert!(pick(&m, Balance::RoundRobin, &[0, 2], now).is_none());
    }

    #[test]
    fn least_outstanding_and_least_latency_prefer_the_idle_fast_replica() {
        let m = model(2);
        let now = Instant::now();
        m.replicas[0].outstanding.store(3, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(
                pick(&m, Balance::LeastOutstanding, &[], now).unwrap().index,
                1
            );
        }
        m.replicas[0].outstanding.store(0, Ordering::Relaxed);
        m.replicas[0].record_success(Duration::from_millis(50));
        m.replicas[1].record_success(Duration::from_millis(2));
        for _ in 0..5 {
            assert_eq!(pick(&m, Balance::LeastLatency, &[], now).unwrap().index, 1);
        }
        // Enough queued work on the fast one tips the balance.
        m.replicas[1].outstanding.store(40, Ordering::Relaxed);
        assert_eq!(pick(&m, Balance::LeastLatency, &[], now).unwrap().index, 0);
    }

    #[test]
    fn ejected_replicas_are_skipped_unless_nothing_else_is_left() {
        let m = model(2);
        let now = Instant::now();
        for _ in 0..3 {
            m.replicas[0].record_failure(now, others_healthy(&m, 0, now));
        }
        assert!(m.replicas[0].is_ejected(now));
        for _ in 0..4 {
            assert_eq!(pick(&m, Balance::RoundRobin, &[], now).unwrap().index, 1);
        }
        // The other one goes down: the ejected replica is used rather than nothing.
        m.replicas[1].set_state(ReplicaState::Restarting);
        assert_eq!(pick(&m, Balance::RoundRobin, &[], now).unwrap().index, 0);
        // And it cannot be ejected as the last healthy replica.
        assert!(!others_healthy(&m, 0, now));
    }

    #[test]
    fn retry_budget_allows_a_fraction_of_traffic() {
        let b = RetryBudget::new(0.5, 0.0, 2.0);
        let now = Instant::now();
        assert!(b.withdraw(now));
        assert!(b.withdraw(now));
        assert!(!b.withdraw(now));
        b.deposit(now);
        assert!(!b.withdraw(now));
        b.deposit(now);
        assert!(b.withdraw(now));
    }
}
