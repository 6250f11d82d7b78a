//! The channel: opening it, publishing on it, and giving it up when it stalls.

use lepus_amqp::PublishOptions;
use tokio::time::Instant;

use super::{Open, RENEW_WAIT, Task};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;

impl Task {
    pub(super) async fn ensure_channel(&mut self) {
        if let Some(since) = self.renew
            && self.channel.is_some()
            && (self.inflight.is_empty() || since.elapsed() >= RENEW_WAIT)
        {
            tracing::debug!("repeated nacks; publishing on a new channel");
            self.channel_lost(None);
        }
        if let Some(open) = &self.channel {
            if open.channel.is_open() {
                return;
            }
            // Confirms failed by the close say which publish (if any) caused it.
            self.settle_ready();
            if self.channel.is_some() {
                self.channel_lost(None);
            }
        }
        let live = self.live.borrow_and_update().clone();
        let Some(live) = live else { return };
        if !live.connection.is_open() {
            return;
        }
        let opened = async {
            let ch = live.connection.open_channel().await?;
            ch.confirm_select().await?;
            Ok::<_, lepus_amqp::Error>(ch)
        };
        match opened.await {
            Ok(channel) => {
                tracing::debug!(generation = live.generation, "publisher channel open");
                self.blocked = Some(live.connection.blocked());
                self.progress = Instant::now();
                self.channel = Some(Open {
                    channel,
                    connection: live.connection,
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "publisher could not open a channel; waiting for the next connection")
            }
        }
    }

    /// Publishes waiting messages while the window and the broker allow. True if the
    /// channel was found closed (and dropped) on the way.
    pub(super) async fn publish_waiting(&mut self) -> bool {
        loop {
            let window = if self.probe > 0 {
                1
            } else {
                self.options.window
            };
            if self.inflight.len() >= window || self.is_blocked() {
                return false;
            }
            if self.renew.is_some() {
                // Nothing more on this channel; `ensure_channel` replaces it once what
                // is in flight on it is settled.
                return false;
            }
            let Some(open) = &self.channel else {
                return false;
            };
            let Some(job) = self.waiting.pop_front() else {
                return false;
            };
            self.shared.buffered(-1);
            // One clock read serves the deadline and the confirm latency's start.
            let now = Instant::now();
            if job.deadline <= now {
                let error = Error::new(
                    ErrorKind::Timeout,
                    "not published before the publish timeout",
                );
                self.shared.fail(job, error);
                continue;
            }
            let options = PublishOptions {
                mandatory: job.msg.mandatory.unwrap_or(self.options.mandatory),
            };
            let m = &job.msg;
            match open
                .channel
                .basic_publish(&m.exchange, &m.routing_key, options, &m.properties, &m.body)
                .await
            {
                Ok(confirm) => {
                    let mut job = job;
                    job.sent_at = Some(now);
                    self.shared.stats.count_published();
                    self.with_metrics(&job.msg.exchange, |m| m.published.increment(1));
                    self.shared.in_flight(1);
                    self.inflight.push_back((job, confirm));
                }
                Err(err) if err.is_recoverable() => {
                    // Not written: it goes out on the next channel, first. The confirms
                    // the close failed say whether a publish caused it.
                    tracing::debug!(error = %err, "publish failed; will retry on a new channel");
                    self.shared.buffered(1);
                    self.waiting.push_front(job);
                    self.settle_ready();
                    if self.channel.is_some() {
                        self.channel_lost(None);
                    }
                    return true;
                }
                Err(err) => self.shared.fail(job, Error::from_publish(err)),
            }
        }
    }

    pub(super) fn drop_channel(&mut self) -> Option<Open> {
        self.blocked = None;
        self.renew = None;
        self.channel.take()
    }

    /// When the channel counts as stalled if no confirm arrives before: the stall
    /// timeout after the later of the last sign of life and the oldest unconfirmed
    /// publish. `None` while nothing is in flight, there is no channel, the broker
    /// blocks the connection, or the channel is being replaced anyway.
    pub(super) fn stall_at(&self) -> Option<Instant> {
        if self.channel.is_none() || self.renew.is_some() || self.is_blocked() {
            return None;
        }
        let (oldest, _) = self.inflight.front()?;
        let since = oldest
            .sent_at
            .map_or(self.progress, |at| at.max(self.progress));
        since.checked_add(self.options.stall_timeout)
    }

    /// Gives up on a channel that confirmed nothing for the stall timeout while
    /// messages waited on it. RabbitMQ's channel sends a quorum queue's messages to the
    /// leader it learnt when it first used the queue; a channel opened while the old
    /// leader's node is cut off or paused (and not yet noticed as down by the others)
    /// keeps sending there, and neither confirms nor nacks until that node is back, even
    /// once a new leader serves. Everything unconfirmed goes out again, in order, on a
    /// fresh channel, which asks for the current leader. A fresh channel that stalls as
    /// well (no leader yet) is replaced in turn, one stall timeout later, until one
    /// confirms or the messages' publish timeout passes.
    ///
    /// The connection is kept: closing it would wait for the broker to close the
    /// stalled channels, which it cannot do while they wait on the lost node (seen in
    /// the drill: the close took until the node was back).
    pub(super) fn check_stall(&mut self) {
        let Some(at) = self.stall_at() else { return };
        let now = Instant::now();
        if at > now {
            return;
        }
        self.stalls = self.stalls.saturating_add(1);
        self.shared.stats.count_stall();
        m::publish_stalled();
        tracing::warn!(
            in_flight = self.inflight.len(),
            stall_timeout_ms =
                u64::try_from(self.options.stall_timeout.as_millis()).unwrap_or(u64::MAX),
            in_a_row = self.stalls,
            "no confirm within the stall timeout; publishing the unconfirmed messages again on a new channel"
        );
        self.channel_lost(None);
    }
}
