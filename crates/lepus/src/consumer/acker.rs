//! Acknowledgements in delivery order, batched with `multiple` where order allows.
//!
//! Deliveries on a channel carry increasing tags. An ack with `multiple` settles every
//! unacknowledged delivery up to its tag, so it may only be sent once every earlier
//! delivery is settled. The acker keeps the channel's deliveries in order and sends one
//! `basic.ack(multiple)` per run of `batch` finished ones (at most half the prefetch, so
//! the broker never runs out of credit); a partial batch goes out when deliveries pause
//! for a few milliseconds, and at most `ACK_LINGER_MAX` after its first ack while they
//! keep coming (the session keeps that timer), so finished work never holds the prefetch
//! window for long.
//!
//! A delivery can be *held*: its move to a wait queue or the dead-letter queue failed and
//! is being tried again, possibly for minutes. While one is held, an ack with `multiple`
//! past it would settle it too, and waiting for it would hold every later delivery's ack
//! and so stall the consumer once the prefetch window fills. So while any delivery is
//! held, later ones are acked one by one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lepus_amqp::Channel;
use tokio::time::Instant;

use super::ConsumerStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Held,
    Acked,
    Settled,
}

pub(crate) struct Acker {
    channel: Channel,
    batch: usize,
    stats: Arc<ConsumerStats>,
    outstanding: VecDeque<(u64, Instant, State)>,
    pending_ack: Option<u64>,
    pending_count: usize,
    held: usize,
    batches_sent: u64,
}

impl Acker {
    pub(crate) fn new(channel: Channel, batch: usize, stats: Arc<ConsumerStats>) -> Self {
        Self {
            channel,
            batch,
            stats,
            outstanding: VecDeque::new(),
            pending_ack: None,
            pending_count: 0,
            held: 0,
            batches_sent: 0,
        }
    }

    /// Keeps `tag`, taken `at`, until it is settled.
    pub(crate) fn track(&mut self, tag: u64, at: Instant) {
        self.outstanding.push_back((tag, at, State::Running));
    }

    fn entry(&mut self, tag: u64) -> Option<&mut (u64, Instant, State)> {
        let i = self.outstanding.binary_search_by_key(&tag, |e| e.0).ok()?;
        self.outstanding.get_mut(i)
    }

    fn mark(&mut self, tag: u64, state: State) {
        let mut released = false;
        if let Some(entry) = self.entry(tag) {
            released = entry.2 == State::Held;
            entry.2 = state;
        }
        if released {
            self.held -= 1;
        }
        self.advance();
    }

    pub(crate) fn ack(&mut self, tag: u64) {
        // The common case: nothing held and the oldest delivery finished (always so at
        // concurrency 1). It joins the pending batch at once, without a search.
        if self.held == 0
            && let Some(&(front, _, State::Running)) = self.outstanding.front()
            && front == tag
        {
            self.outstanding.pop_front();
            self.pending_ack = Some(tag);
            self.pending_count += 1;
            if self
                .outstanding
                .front()
                .is_some_and(|e| matches!(e.2, State::Acked | State::Settled))
            {
                // Later ones finished before it (concurrency above 1): they follow.
                self.advance();
            } else if self.pending_count >= self.batch {
                self.flush();
            }
            return;
        }
        if self.held > 0 && !self.entry(tag).is_some_and(|e| e.2 == State::Held) {
            // Another delivery is held: settle this one alone.
            if self.channel.basic_ack(tag, false).is_err() {
                self.stats.stale_settles.fetch_add(1, Ordering::Relaxed);
            }
            self.mark(tag, State::Settled);
        } else {
            self.mark(tag, State::Acked);
        }
    }

    /// Keeps the delivery unacknowledged for an unknown time (until acked, requeued, or
    /// its channel closes) without holding back the acks of others.
    pub(crate) fn hold(&mut self, tag: u64) {
        if let Some(entry) = self.entry(tag)
            && entry.2 == State::Running
        {
            entry.2 = State::Held;
            self.held += 1;
        }
    }

    /// How long the delivery has been unacknowledged.
    pub(crate) fn age(&mut self, tag: u64) -> Option<Duration> {
        self.entry(tag).map(|e| e.1.elapsed())
    }

    /// Returns the delivery to the queue now (not batched).
    pub(crate) fn nack_requeue(&mut self, tag: u64) {
        if self.channel.basic_nack(tag, false, true).is_err() {
            self.stats.stale_settles.fetch_add(1, Ordering::Relaxed);
        }
        self.mark(tag, State::Settled);
    }

    fn advance(&mut self) {
        while let Some(&(tag, _, state)) = self.outstanding.front() {
            if matches!(state, State::Running | State::Held) {
                break;
            }
            self.outstanding.pop_front();
            if state == State::Acked {
                self.pending_ack = Some(tag);
                self.pending_count += 1;
            }
        }
        if self.pending_count >= self.batch {
            self.flush();
        }
    }

    /// Whether acks are waiting for a batch to fill.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending_ack.is_some()
    }

    /// Sends the pending batch now.
    pub(crate) fn flush(&mut self) {
        if let Some(tag) = self.pending_ack.take() {
            self.batches_sent += 1;
            if self.channel.basic_ack(tag, true).is_err() {
                self.stats
                    .stale_settles
                    .fetch_add(self.pending_count as u64, Ordering::Relaxed);
            }
        }
        self.pending_count = 0;
    }

    /// How many batches were sent: a pending batch is a new one when this changed.
    pub(crate) fn batches_sent(&self) -> u64 {
        self.batches_sent
    }

    /// Whether any delivery taken is not settled yet (running, held, or waiting for an
    /// earlier one).
    pub(crate) fn has_unsettled(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// How long the oldest unsettled delivery has been held.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        self.outstanding.front().map(|e| e.1.elapsed())
    }
}
