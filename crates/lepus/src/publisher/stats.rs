//! A publisher's counters: atomics its task updates, and a snapshot of plain numbers
//! for everyone else (the same shape as the consumer's).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters of a publisher, updated as it works. Read them with
/// [`PublisherStats::snapshot`].
#[derive(Debug, Default)]
pub struct PublisherStats {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    returned: AtomicU64,
    republished: AtomicU64,
    failed: AtomicU64,
    stalls: AtomicU64,
    buffered: AtomicUsize,
    in_flight: AtomicUsize,
}

impl PublisherStats {
    /// The counters now, as plain numbers. Each is read on its own (relaxed), so a
    /// snapshot taken while the publisher works may be a few messages apart between
    /// counters, never torn within one.
    pub fn snapshot(&self) -> PublisherSnapshot {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PublisherSnapshot {
            published: n(&self.published),
            confirmed: n(&self.confirmed),
            nacked: n(&self.nacked),
            returned: n(&self.returned),
            republished: n(&self.republished),
            failed: n(&self.failed),
            stalls: n(&self.stalls),
            buffered: self.buffered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_nacked(&self) {
        self.nacked.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_returned(&self) {
        self.returned.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_republished(&self) {
        self.republished.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_stall(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_buffered(&self, delta: isize) {
        add(&self.buffered, delta);
    }

    pub(super) fn add_in_flight(&self, delta: isize) {
        add(&self.in_flight, delta);
    }
}

fn add(gauge: &AtomicUsize, delta: isize) {
    if delta >= 0 {
        gauge.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        gauge.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// A publisher's counters at one moment ([`PublisherStats::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherSnapshot {
    /// Messages written to a channel (republishes included).
    pub published: u64,
    /// Messages confirmed by the broker.
    pub confirmed: u64,
    /// Nacks received.
    pub nacked: u64,
    /// Mandatory messages returned as unroutable.
    pub returned: u64,
    /// Messages republished after a connection loss, a nack or a stall.
    pub republished: u64,
    /// Messages failed back to the caller.
    pub failed: u64,
    /// Times the publisher dropped its connection because nothing was confirmed (or no
    /// channel opened, or no room to write came) within the stall timeout (see
    /// [`PublisherOptions::stall_timeout`](super::PublisherOptions::stall_timeout)).
    pub stalls: u64,
    /// Messages waiting to be published.
    pub buffered: usize,
    /// Messages published and not yet confirmed.
    pub in_flight: usize,
}
