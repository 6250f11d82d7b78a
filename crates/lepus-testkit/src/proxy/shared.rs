//! The state a proxy's handle, its acceptor and its pumps share: toxics and flags under
//! one mutex (with a condvar that announces every change), counters as atomics.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pump::{Conn, End};
use super::toxics::{Direction, ProxyStats, Toxics};

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) upstream: Toxics,
    pub(crate) downstream: Toxics,
    pub(crate) shut_down: bool,
    /// `None` while the proxy is disabled.
    pub(crate) listener: Option<Arc<TcpListener>>,
    pub(crate) conns: Vec<Arc<Conn>>,
    /// A periodic reset: its period and when it next fires.
    pub(crate) reset_every: Option<(Duration, Instant)>,
    pub(crate) threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    accepted: AtomicU64,
    resets: AtomicU64,
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    threads: AtomicU64,
}

impl Shared {
    /// The state, even if a thread panicked while holding it (the state stays usable: every
    /// update is a single assignment).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn wake_all(&self) {
        self.changed.notify_all();
    }

    pub(crate) fn wait_for_change(&self, timeout: Duration) {
        let guard = self.lock();
        drop(self.wait(guard, timeout));
    }

    pub(crate) fn toxics(&self, dir: Direction) -> Toxics {
        let state = self.lock();
        if dir.covers_upstream() {
            state.upstream
        } else {
            state.downstream
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Ends every current connection; returns how many were still running.
    pub(crate) fn end_all(&self, how: End) -> u64 {
        let mut ended = 0;
        for conn in &self.lock().conns {
            if conn.end(how) {
                ended += 1;
            }
        }
        if how == End::Reset {
            self.resets.fetch_add(ended, Ordering::Relaxed);
        }
        self.wake_all();
        ended
    }

    pub(crate) fn count_accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_bytes(&self, dir: Direction, n: u64) {
        let counter = if dir.covers_upstream() {
            &self.bytes_upstream
        } else {
            &self.bytes_downstream
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One pump of `conn` has finished; the second one takes the connection off the list.
    pub(crate) fn pump_done(&self, conn: &Arc<Conn>) {
        if conn.pump_finished() {
            self.lock().conns.retain(|c| !Arc::ptr_eq(c, conn));
            self.wake_all();
        }
    }

    pub(crate) fn keep_thread(&self, handle: JoinHandle<()>) {
        let mut state = self.lock();
        state.threads.retain(|t| !t.is_finished());
        state.threads.push(handle);
    }

    pub(crate) fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            active: u64::try_from(self.lock().conns.len()).unwrap_or(u64::MAX),
            resets: self.resets.load(Ordering::Relaxed),
            bytes_upstream: self.bytes_upstream.load(Ordering::Relaxed),
            bytes_downstream: self.bytes_downstream.load(Ordering::Relaxed),
            threads: self.threads.load(Ordering::Relaxed),
        }
    }
}

/// Counts a proxy thread from its creation to the end of its body.
pub(crate) struct ThreadGuard(Arc<Shared>);

impl ThreadGuard {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.threads.fetch_add(1, Ordering::Relaxed);
        ThreadGuard(Arc::clone(shared))
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.threads.fetch_sub(1, Ordering::Relaxed);
    }
}
