//! Dead letters stay in the dead-letter queues; this module only reads them.
//!
//! lepus moves a message that failed for good to `<queue>.dlq`, with headers saying where
//! it came from and why. That queue is where operators look (`lepus dlq list`, `show`,
//! `replay`, see the README), so the services leave it alone: nothing drains it into a
//! table, and a message fixed and replayed by an operator goes back to work like any
//! other.
//!
//! The demo's report still needs to know which orders ended there (an order whose event
//! was dead-lettered has a final state: it did not get lost). [`read`] answers from the
//! queues themselves, the way `lepus dlq list` does: it counts each DLQ with a passive
//! declare, fetches its messages with `basic.get` on a channel of its own, holds them
//! unacknowledged, and closes the channel, so the broker puts every one of them back.
//! Nothing leaves the queue. (On a quorum DLQ each read counts as a delivery, which is why
//! the DLQs carry no delivery limit; see [`crate::topology`].)

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use lepus::amqp::{Channel, FieldTable, QueueDeclareOptions};
use lepus::{Client, FailureRecord, Role};

/// The most messages read from one DLQ: past that, they are counted but not read.
pub const MAX_READ: u32 = 10_000;
/// The longest a channel close may take (a failed close returns the messages too).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the dead-letter queues hold right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// Messages in all the DLQs read.
    pub count: u64,
    /// Distinct messages (by `message_id`) among those read: delivery is at least once,
    /// so the same message can be dead-lettered twice (its ack lost to a connection
    /// failure, it came back and failed again).
    pub distinct: u64,
    /// The message ids read.
    pub message_ids: BTreeSet<String>,
    /// The order ids of the messages read (those whose body names one).
    pub order_ids: BTreeSet<String>,
    /// Each distinct message as `queue: order id: reason: last error`, for a reader
    /// wondering why.
    pub errors: Vec<String>,
}

/// Reads `dlqs` through `client`'s consuming connection and puts every message back,
/// returning once they are counted in their queue again. A missing queue counts as
/// empty. The whole read is bounded by `timeout`.
pub async fn read(
    client: &Client,
    dlqs: &[String],
    timeout: Duration,
) -> anyhow::Result<DeadLetters> {
    tokio::time::timeout(timeout, read_all(client, dlqs, timeout))
        .await
        .with_context(|| format!("reading the dead-letter queues took over {timeout:?}"))?
}

async fn read_all(
    client: &Client,
    dlqs: &[String],
    timeout: Duration,
) -> anyhow::Result<DeadLetters> {
    let mut out = DeadLetters::default();
    for dlq in dlqs {
        let channel = open_channel(client, timeout).await?;
        let Some(ready) = ready_in(&channel, dlq).await? else {
            continue;
        };
        out.count += u64::from(ready);
        let result = read_one(&channel, dlq, ready, &mut out).await;
        // Returns every message held, whether the read went well or not.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
        result?;
        // The broker puts them back after the close is answered (a quorum queue, through
        // its log): wait until they are counted again, so the next reader sees them.
        let channel = open_channel(client, timeout).await?;
        loop {
            if ready_in(&channel, dlq).await?.unwrap_or(0) >= ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
    }
    Ok(out)
}

async fn open_channel(client: &Client, timeout: Duration) -> anyhow::Result<Channel> {
    let live = client
        .connection(Role::Consume, timeout)
        .await
        .context("no connection to read the dead-letter queues")?;
    live.connection
        .open_channel()
        .await
        .context("cannot open a channel")
}

/// Ready messages in `dlq`; `None` if it does not exist (that closes `channel`).
async fn ready_in(channel: &Channel, dlq: &str) -> anyhow::Result<Option<u32>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(dlq, passive, FieldTable::default())
        .await
    {
        Ok(info) => Ok(Some(info.message_count)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot look up '{dlq}'"))),
    }
}

async fn read_one(
    channel: &Channel,
    dlq: &str,
    ready: u32,
    out: &mut DeadLetters,
) -> anyhow::Result<()> {
    for _ in 0..ready.min(MAX_READ) {
        let Some(message) = channel
            .basic_get(dlq)
            .await
            .with_context(|| format!("cannot read '{dlq}'"))?
        else {
            break;
        };
        let delivery = message.delivery;
        if let Some(id) = delivery.properties().message_id()
            && !out.message_ids.insert(id.as_str().to_owned())
        {
            continue;
        }
        out.distinct += 1;
        let order_id = serde_json::from_slice::<serde_json::Value>(delivery.body())
            .ok()
            .and_then(|v| v.get("order_id")?.as_str().map(str::to_string));
        let failure = FailureRecord::from_headers(delivery.properties().headers().as_ref());
        out.errors.push(format!(
            "{}: {}: {}: {}",
            failure.original_queue.as_deref().unwrap_or(dlq),
            order_id.as_deref().unwrap_or("-"),
            failure.reason.as_deref().unwrap_or("unknown"),
            failure.last_error.as_deref().unwrap_or("")
        ));
        out.order_ids.extend(order_id);
    }
    Ok(())
}
