//! A consumer's counters: atomics the consumer's task updates, and a snapshot of plain
//! numbers for everyone else.
//!
//! The atomics are public for code written before [`ConsumerSnapshot`]; new code reads
//! [`ConsumerStats::snapshot`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Counters of a consumer, updated as it works. [`ConsumerStats::snapshot`] reads them
/// all at once as plain numbers, the way to look at them from outside.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Deliveries received.
    pub delivered: AtomicU64,
    /// Messages acked after their handler succeeded.
    pub acked: AtomicU64,
    /// Messages sent to a wait queue, per tier.
    pub retried: Vec<AtomicU64>,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Handler invocations that failed (errors, panics and timeouts).
    pub failures: AtomicU64,
    /// Handler invocations that panicked.
    pub panics: AtomicU64,
    /// Handler invocations that ran past the handler timeout.
    pub timeouts: AtomicU64,
    /// Redeliveries skipped because the idempotency store had seen them.
    pub deduplicated: AtomicU64,
    /// Handlers running now.
    pub in_flight: AtomicUsize,
    /// Times the consumer subscribed (1 + resubscriptions after failures).
    pub subscriptions: AtomicU64,
    /// Whether the consumer is subscribed right now.
    pub active: AtomicBool,
    /// Acks or nacks the broker could not take (their channel had closed; the broker
    /// requeued those messages).
    pub stale_settles: AtomicU64,
    /// Failed attempts to move a failed message to a wait queue or the dead-letter queue
    /// (each is tried again after a pause, the original held unacknowledged).
    pub move_failures: AtomicU64,
}

impl ConsumerStats {
    pub(crate) fn new(tiers: usize) -> Self {
        Self {
            retried: (0..tiers).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Messages retried through any tier.
    pub fn retried_total(&self) -> u64 {
        self.retried.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// The counters now, as plain numbers. Each is read on its own (relaxed), so a
    /// snapshot taken while the consumer works may be a few messages apart between
    /// counters, never torn within one.
    pub fn snapshot(&self) -> ConsumerSnapshot {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerSnapshot {
            delivered: n(&self.delivered),
            acked: n(&self.acked),
            retried: self.retried.iter().map(n).collect(),
            dead_lettered: n(&self.dead_lettered),
            failures: n(&self.failures),
            panics: n(&self.panics),
            timeouts: n(&self.timeouts),
            deduplicated: n(&self.deduplicated),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            subscriptions: n(&self.subscriptions),
            active: self.active.load(Ordering::Relaxed),
            stale_settles: n(&self.stale_settles),
            move_failures: n(&self.move_failures),
        }
    }
}

/// A consumer's counters at one moment ([`ConsumerStats::snapshot`]); the fields mean
/// what the same fields of [`ConsumerStats`] mean.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerSnapshot {
    /// Deliveries received.
    pub delivered: u64,
    /// Messages acked after their handler succeeded.
    pub acked: u64,
    /// Messages sent to a wait queue, per tier.
    pub retried: Vec<u64>,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Handler invocations that failed (errors, panics and timeouts).
    pub failures: u64,
    /// Handler invocations that panicked.
    pub panics: u64,
    /// Handler invocations that ran past the handler timeout.
    pub timeouts: u64,
    /// Redeliveries skipped because the idempotency store had seen them.
    pub deduplicated: u64,
    /// Handlers running at the moment.
    pub in_flight: usize,
    /// Times the consumer subscribed (1 + resubscriptions after failures).
    pub subscriptions: u64,
    /// Whether the consumer was subscribed.
    pub active: bool,
    /// Acks or nacks the broker could not take (their channel had closed).
    pub stale_settles: u64,
    /// Failed attempts to move a failed message to a wait queue or the dead-letter queue.
    pub move_failures: u64,
}

impl ConsumerSnapshot {
    /// Messages retried through any tier.
    pub fn retried_total(&self) -> u64 {
        self.retried.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_the_counters_as_they_were() {
        let stats = ConsumerStats::new(2);
        stats.delivered.fetch_add(5, Ordering::Relaxed);
        stats.acked.fetch_add(2, Ordering::Relaxed);
        stats.retried[1].fetch_add(3, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.active.store(true, Ordering::Relaxed);
        let snap = stats.snapshot();
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            snap,
            ConsumerSnapshot {
                delivered: 5,
                acked: 2,
                retried: vec![0, 3],
                in_flight: 1,
                active: true,
                ..ConsumerSnapshot::default()
            }
        );
        assert_eq!(snap.retried_total(), stats.retried_total());
        assert_eq!(stats.snapshot().delivered, 6);
    }
}
