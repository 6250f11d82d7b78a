//! A publisher's counters: atomics its task updates, and a snapshot of plain numbers
//! for everyone else (the same shape as the consumer's).
//!
//! The one counter the callers write too, `outstanding`, lives on a cache line of its
//! own: the task's per-message counting then never pulls the callers' line over, nor
//! the reverse.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A value alone on its cache line (128 bytes: two lines, for CPUs that fetch pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Counters of a publisher, updated as it works. Read them with
/// [`PublisherStats::snapshot`].
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Messages taken and not yet answered (the outage buffer's fill): taken by callers,
    /// given back by the task.
    pub(super) outstanding: Padded<AtomicUsize>,
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    returned: AtomicU64,
    republished: AtomicU64,
    failed: AtomicU64,
    stalls: AtomicU64,
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
            buffered: self.buffered(),
            in_flight: self.in_flight(),
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

    /// Messages waiting to be published: every one outstanding that is not in flight
    /// (queued, waiting for a channel, or pausing after a nack).
    pub(super) fn buffered(&self) -> usize {
        let in_flight = self.in_flight();
        self.outstanding
            .load(Ordering::Relaxed)
            .saturating_sub(in_flight)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Only the task writes it: one message more (or `n` fewer) on the channel.
    pub(super) fn add_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sub_in_flight(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
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
