//! One pass over a dead-letter queue that loses nothing.
//!
//! Messages are fetched with `basic.get` (manual ack) on a channel of their own and held
//! unacknowledged. Whatever the command does not ack (messages it only looked at, those
//! a filter skipped, those whose copy failed) goes back when the channel closes: the
//! broker then requeues all of them at once, and a classic queue puts each back where it
//! was, so the queue keeps its order. The same happens if the command dies, since the
//! broker requeues a dead connection's unacked messages too. Requeued messages come back
//! marked redelivered; on a quorum queue with `x-delivery-limit` each pass also counts as
//! a delivery attempt.
//!
//! A pass reads at most the messages that were ready when it began: messages that arrive
//! during the pass (say, a replayed message that fails again) wait for the next pass, so
//! a pass always ends.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use lepus::amqp::{Channel, Delivery, FieldTable, QueueDeclareOptions};
use lepus::{Client, Role};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pass over one queue.
pub(super) struct Scan {
    channel: Channel,
    queue: String,
    total: u32,
    fetched: u32,
}

impl Scan {
    /// Opens a channel on the client's consuming connection and counts the ready
    /// messages. Fails if the queue does not exist.
    pub(super) async fn open(
        client: &Client,
        queue: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let channel = open_channel(client, timeout).await?;
        let total = ready_on(&channel, queue).await?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            total,
            fetched: 0,
        })
    }

    /// Messages ready when the pass began (fewer, once the queue ran dry early).
    pub(super) fn total(&self) -> u32 {
        self.total
    }

    /// Messages fetched so far.
    pub(super) fn fetched(&self) -> u32 {
        self.fetched
    }

    /// The next message, held unacknowledged; `None` at the end of the pass.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.fetched >= self.total {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(&self.queue)
            .await
            .with_context(|| format!("cannot read '{}'", self.queue))?;
        match got {
            Some(message) => {
                self.fetched += 1;
                Ok(Some(message.delivery))
            }
            None => {
                // Someone else took messages meanwhile: the pass is over.
                self.total = self.fetched;
                Ok(None)
            }
        }
    }

    /// Ends the pass: closes the channel, so the broker requeues every message not
    /// acknowledged. Bounded; a failed close requeues them just the same.
    pub(super) async fn finish(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.channel.close()).await;
    }
}

/// A fresh channel on the client's consuming connection.
pub(super) async fn open_channel(client: &Client, timeout: Duration) -> anyhow::Result<Channel> {
    let live = client.connection(Role::Consume, timeout).await?;
    live.connection
        .open_channel()
        .await
        .context("cannot open a channel")
}

/// Ready messages in `queue` (a passive declare; a missing queue closes `channel`).
async fn ready_on(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue, passive, FieldTable::default())
        .await
    {
        Ok(info) => Ok(info.message_count),
        Err(err) if err.is_not_found() => Err(anyhow!("queue '{queue}' does not exist")),
        Err(err) => Err(anyhow!(err).context(format!("cannot look up queue '{queue}'"))),
    }
}

/// Ready messages in `queue`, on a channel of its own.
pub(super) async fn ready(client: &Client, queue: &str, timeout: Duration) -> anyhow::Result<u32> {
    let channel = open_channel(client, timeout).await?;
    let count = ready_on(&channel, queue).await;
    if channel.is_open() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
    }
    count
}
