//! Restart policy of an engine: exponential backoff (1 s doubling to 60 s), reset after a
//! stable run, and a crash-loop cutoff: 5 crashes within 5 minutes, or 5 starts in a row
//! that never became ready → failed, no more restarts. The second rule is what catches a
//! load that keeps exceeding `startup_timeout` (or keeps failing slowly): such crashes are
//! spaced by the load time, so with a startup timeout near the window they would never
//! count 5 within it. Pure state so it is tested without processes or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The knobs of [`Backoff`]; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay before a restart.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Window over which crashes are counted.
    pub window: Duration,
    /// Crashes within `window` that mark the engine failed.
    pub max_crashes: usize,
    /// A run at least this long (after becoming ready) resets the delay.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            window: Duration::from_secs(300),
            max_crashes: 5,
            stable_after: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The default policy with a different first delay (the maximum scales with it).
    pub fn with_initial(initial: Duration) -> Self {
        RestartPolicy {
            initial,
            max: initial * 60,
            stable_after: (initial * 60).min(Duration::from_secs(60)),
            ..Default::default()
        }
    }
}

/// Crash history of one engine.
#[derive(Debug)]
pub struct Backoff {
    policy: RestartPolicy,
    next: Duration,
    crashes: VecDeque<Instant>,
    /// Crashes in a row of runs that never became ready.
    failed_starts: usize,
}

impl Backoff {
    pub fn new(policy: RestartPolicy) -> Self {
        Backoff {
            policy,
            next: policy.initial,
            crashes: VecDeque::new(),
            failed_starts: 0,
        }
    }

    /// Records a crash at `now` after a run of `stable_for` (time it was ready; zero if it
    /// never was). Returns the delay before the next start, or `None` to give up.
    pub fn on_crash(&mut self, now: Instant, stable_for: Duration) -> Option<Duration> {
        if stable_for >= self.policy.stable_after {
            self.next = self.policy.initial;
        }
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > self.policy.window)
        {
            self.crashes.pop_front();
        }
        if stable_for.is_zero() {
            self.failed_starts += 1;
        } else {
            self.failed_starts = 0;
        }
        if self.crashes.len() >= self.policy.max_crashes
            || self.failed_starts >= self.policy.max_crashes
        {
            return None;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_up_to_the_cap_and_five_quick_crashes_give_up() {
        let mut b = Backoff::new(RestartPolicy::default());
        let t0 = Instant::now();
        let delays: Vec<Option<Duration>> = (0..5)
            .map(|i| b.on_crash(t0 + S * i, Duration::ZERO))
            .collect();
        assert_eq!(
            delays,
            [Some(S), Some(2 * S), Some(4 * S), Some(8 * S), None]
        );

        let mut b = Backoff::new(RestartPolicy {
            max_crashes: 100,
            ..Default::default()
        });
        let mut last = Duration::ZERO;
        for i in 0..10 {
            last = b.on_crash(t0 + S * i, Duration::ZERO).unwrap();
        }
        assert_eq!(last, 60 * S);
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten_and_stable_runs_reset_the_delay() {
        let mut b = Backoff::new(RestartPolicy::default());
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(b.on_crash(t0 + S * i, Duration::ZERO).is_some());
        }
        // Ten minutes later: the old crashes no longer count; a stable run resets the delay.
        let later = t0 + 600 * S;
        assert_eq!(b.on_crash(later, 120 * S), Some(S));
        assert_eq!(b.on_crash(later + S, Duration::ZERO), Some(2 * S));
    }

    #[test]
    fn starts_that_time_out_count_even_when_spaced_wider_than_the_window() {
        // A load that always exceeds a startup timeout of 300 s: one crash every ~300 s.
        let mut b = Backoff::new(RestartPolicy::default());
        let t0 = Instant::now();
        let gaps: Vec<Option<Duration>> = (0..5)
            .map(|i| b.on_crash(t0 + 301 * S * i, Duration::ZERO))
            .collect();
        assert!(gaps[..4].iter().all(Option::is_some), "{gaps:?}");
        assert_eq!(gaps[4], None, "the fifth failed start gives up");

        // A run that became ready in between starts the count again.
        let mut b = Backoff::new(RestartPolicy::default());
        for i in 0..4 {
            assert!(b.on_crash(t0 + 301 * S * i, Duration::ZERO).is_some());
        }
        assert!(b.on_crash(t0 + 1300 * S, 10 * S).is_some());
        for i in 0..4 {
            assert!(b
                .on_crash(t0 + 1700 * S + 301 * S * i, Duration::ZERO)
                .is_some());
        }
    }
}
