//! The channel: opening it, publishing on it, and giving it up when it stalls.

use lepus_amqp::PublishOptions;
use tokio::time::Instant;

use super::{Open, RENEW_WAIT, Task};

/// How many messages of a burst share one reading of the clock.
const CLOCK_EVERY: usize = 16;
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
        // A connection that cannot open a channel within the stall timeout is one the
        // broker stopped serving (see `check_stall`): drop it rather than wait on it.
        let opened = match Instant::now().checked_add(self.options.stall_timeout) {
            Some(limit) => match tokio::time::timeout_at(limit, opened).await {
                Ok(opened) => opened,
                Err(_) => {
                    self.count_stall("no answer to opening a channel", 0);
                    live.connection
                        .abort("the publisher's channel did not open within the stall timeout");
                    return;
                }
            },
            None => opened.await,
        };
        match opened {
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
        if self.waiting.is_empty() || self.channel.is_none() {
            return false;
        }
        // Waiting for room to write is bounded like a confirm: a broker that stops
        // reading is a stall too. Worked out once per burst: it moves only when a confirm
        // comes in, and none is settled in here.
        let bound = self
            .stall_at()
            .or_else(|| Instant::now().checked_add(self.options.stall_timeout));
        // The clock is read once per `CLOCK_EVERY` messages of a burst (a read costs about
        // as much as the rest of the bookkeeping of a message): a publish time or a
        // deadline check is then a few microseconds early, never late.
        let mut now = Instant::now();
        let mut unread = 0usize;
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
            if unread >= CLOCK_EVERY {
                now = Instant::now();
                unread = 0;
            }
            unread += 1;
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
            let publish = open.channel.basic_publish(
                &m.exchange,
                &m.routing_key,
                options,
                &m.properties,
                &m.body,
            );
            let result = match bound {
                Some(at) => tokio::time::timeout_at(at, publish).await.ok(),
                None => Some(publish.await),
            };
            let Some(result) = result else {
                // Not written (the wait for room is all a publish awaits): first on
                // the next connection.
                self.waiting.push_front(job);
                self.stalled("no room to write within the stall timeout");
                return true;
            };
            match result {
                Ok(confirm) => {
                    let mut job = job;
                    job.sent_at = Some(now);
                    self.shared.stats.count_published();
                    job.metrics = self.metrics_slot(&job.msg.exchange);
                    self.with_metrics(job.metrics, |m| m.published.increment(1));
                    self.shared.stats.add_in_flight();
                    self.inflight.push_back((job, confirm));
                }
                Err(err) if err.is_recoverable() => {
                    // Not written: it goes out on the next channel, first. The confirms
                    // the close failed say whether a publish caused it.
                    tracing::debug!(error = %err, "publish failed; will retry on a new channel");
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

    /// Gives up on a connection whose channel confirmed nothing for the stall timeout
    /// while messages waited on it.
    ///
    /// Seen in the drill (RabbitMQ 3.10, a quorum queue): a channel opened while the
    /// queue's leader is on a node cut off or paused, and not yet noticed as down by the
    /// rest of the cluster, sends to that leader and blocks; the broker then stops
    /// reading the whole connection (its flow control waits on that channel) while the
    /// heartbeats go on. Nothing is confirmed or nacked, a new channel on it never opens,
    /// and even a graceful close waits for the lost node. So the connection is dropped
    /// (without the close handshake), the client reconnects (to another node first) and
    /// everything unconfirmed goes out again, in order, on the new connection. While no
    /// leader serves, each new connection stalls in turn, one stall timeout later, until
    /// one confirms or the messages' publish timeout passes.
    pub(super) fn check_stall(&mut self) {
        let Some(at) = self.stall_at() else { return };
        if at > Instant::now() {
            return;
        }
        self.stalled("no confirm within the stall timeout");
    }

    /// Counts and logs a stall, drops the connection, and puts what was unconfirmed back
    /// at the front of the queue.
    pub(super) fn stalled(&mut self, why: &str) {
        self.count_stall(why, self.inflight.len());
        if let Some(open) = &self.channel {
            open.connection.abort(
                "the publisher's channel stalled (nothing confirmed within the stall timeout)",
            );
        }
        self.channel_lost(None);
    }

    fn count_stall(&mut self, why: &str, in_flight: usize) {
        self.stalls = self.stalls.saturating_add(1);
        self.shared.stats.count_stall();
        m::publish_stalled();
        tracing::warn!(
            in_flight,
            stall_timeout_ms =
                u64::try_from(self.options.stall_timeout.as_millis()).unwrap_or(u64::MAX),
            in_a_row = self.stalls,
            "publisher stalled ({why}); dropping the connection and publishing the unconfirmed messages again on the next"
        );
    }
}
