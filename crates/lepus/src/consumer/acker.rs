//! Acknowledgements in delivery order, batched with `multiple` where order allows.
//!
//! Deliveries on a channel carry increasing tags. An ack with `multiple` settles every
//! unacknowledged delivery up to its tag, so it may only be sent once every earlier
//! delivery is settled. The acker keeps the channel's deliveries in order and sends one
//! `basic.ack(multiple)` per run of `batch` finished ones (at most half the prefetch, so
//! the broker never runs out of credit); a partial batch goes out after a few
//! milliseconds, so finished work never holds the prefetch window for long.

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
        }
    }

    pub(crate) fn track(&mut self, tag: u64) {
        self.outstanding
            .push_back((tag, Instant::now(), State::Running));
    }

    fn mark(&mut self, tag: u64, state: State) {
        if let Ok(i) = self.outstanding.binary_search_by_key(&tag, |e| e.0)
            && let Some(entry) = self.outstanding.get_mut(i)
        {
            entry.2 = state;
        }
        self.advance();
    }

    pub(crate) fn ack(&mut self, tag: u64) {
        self.mark(tag, State::Acked);
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
            if state == State::Running {
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
        if let Some(tag) = self.pending_ack.take()
            && self.channel.basic_ack(tag, true).is_err()
        {
            self.stats
                .stale_settles
                .fetch_add(self.pending_count as u64, Ordering::Relaxed);
        }
        self.pending_count = 0;
    }

    /// How long the oldest unsettled delivery has been held.
    pub(crate) fn oldest_age(&self) -> Option<Duration> {
        self.outstanding.front().map(|e| e.1.elapsed())
    }
}
