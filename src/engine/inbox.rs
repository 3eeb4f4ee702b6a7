//! The one inbox of every model thread (chat and encoders): a plain, lock-free-to-test
//! state behind a mutex, and a condition variable the model thread sleeps on.
//!
//! One lock-poisoning policy for both: the state is plain data (queues, counters, a
//! `closed` flag) that no code leaves half-updated across a panic point, so a poisoned lock
//! is recovered, never propagated. A panic on the model thread itself is handled one level
//! up: [`super::liveness::run_guarded`] calls [`Inbox::fail_pending`], which closes the
//! inbox and drops everything in it, so every waiting client gets an error at once.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What an inbox state must offer the shared handle.
pub trait InboxState {
    /// Refuse new work from now on.
    fn close(&mut self);
    fn is_closed(&self) -> bool;
    /// Drop everything queued (the senders of its replies drop with it).
    fn clear(&mut self);
}

/// A model thread's inbox: the handlers' side pushes, the model thread takes.
pub struct Inbox<S> {
    state: Mutex<S>,
    wake: Condvar,
}

impl<S: InboxState> Inbox<S> {
    pub fn new(state: S) -> Self {
        Inbox {
            state: Mutex::new(state),
            wake: Condvar::new(),
        }
    }

    /// The state, locked (a poisoned lock is recovered: see the module note).
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `push` on the state unless the inbox is closed, then wakes the model thread
    /// when it succeeded.
    pub fn push<T, E>(&self, closed: E, push: impl FnOnce(&mut S) -> Result<T, E>) -> Result<T, E> {
        let mut s = self.lock();
        if s.is_closed() {
            return Err(closed);
        }
        let out = push(&mut s)?;
        drop(s);
        self.wake.notify_one();
        Ok(out)
    }

    /// Sleeps on the inbox until a push or `timeout` (the model thread's idle wait).
    pub fn wait<'a>(&'a self, guard: MutexGuard<'a, S>, timeout: Duration) -> MutexGuard<'a, S> {
        match self.wake.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }

    /// Stops the model thread once the queued work is done.
    pub fn close(&self) {
        self.lock().close();
        self.wake.notify_all();
    }

    /// Closes the inbox and drops every waiting item (their clients see an error).
    pub fn fail_pending(&self) {
        let mut s = self.lock();
        s.close();
        s.clear();
        drop(s);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Q {
        items: Vec<u32>,
        closed: bool,
    }

    impl InboxState for Q {
        fn close(&mut self) {
            self.closed = true;
        }
        fn is_closed(&self) -> bool {
            self.closed
        }
        fn clear(&mut self) {
            self.items.clear();
        }
    }

    #[test]
    fn a_closed_inbox_refuses_and_fail_pending_empties_it() {
        let inbox = Inbox::new(Q::default());
        let push = |n| {
            inbox.push("closed", |q| {
                q.items.push(n);
                Ok::<_, &str>(())
            })
        };
        assert!(push(1).is_ok());
        inbox.fail_pending();
        assert_eq!(push(2), Err("closed"));
        assert!(inbox.lock().items.is_empty());
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let inbox = std::sync::Arc::new(Inbox::new(Q::default()));
        let i = inbox.clone();
        let _ = std::thread::spawn(move || {
            let _g = i.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(inbox.state.is_poisoned());
        let pushed = inbox.push("closed", |q| {
            q.items.push(7);
            Ok::<_, &str>(())
        });
        assert!(pushed.is_ok());
        let g = inbox.wait(inbox.lock(), Duration::from_millis(1));
        assert_eq!(g.items, [7]);
    }
}
