//! Queue depth and consumer count as metrics, so that alerts can say "nobody consumes
//! this queue" and "this queue keeps growing" from a scrape of the services alone,
//! without the broker's management plugin.
//!
//! Every consuming service polls every queue of the system (a passive declare per queue
//! answers both numbers), not only its own: when a service dies, another one still
//! reports its queue with no consumers. Prometheus tells the copies apart by `instance`;
//! the alert rules take the largest.

use std::time::Duration;

use lepus::Client;
use lepus::amqp::{FieldTable, QueueDeclareOptions};
use tokio_util::sync::CancellationToken;

/// Messages ready in a queue, by `queue` and `kind`.
pub const MESSAGES: &str = "shop_queue_messages";
/// Consumers of a queue, by `queue` and `kind`.
pub const CONSUMERS: &str = "shop_queue_consumers";
/// How often the queues are polled.
pub const POLL: Duration = Duration::from_secs(5);
/// The longest one poll of all queues may take.
const POLL_DEADLINE: Duration = Duration::from_secs(3);

/// What a queue is for, as the `kind` label says: `work`, `retry` (a delay tier) or
/// `dead-letter`.
pub fn kind(name: &str) -> &'static str {
    if name.ends_with(".dlq") {
        "dead-letter"
    } else if name.contains(".retry.") {
        "retry"
    } else {
        "work"
    }
}

/// Polls `queues` through `client` every [`POLL`] until `cancel`, setting
/// [`MESSAGES`] and [`CONSUMERS`]. A queue that cannot be asked (not declared yet, the
/// connection down) keeps its last values until the next poll.
pub fn spawn_gauges(
    client: Client,
    queues: Vec<String>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let _ = tokio::time::timeout(POLL_DEADLINE, poll(&client, &queues)).await;
                }
            }
        }
    })
}

async fn poll(client: &Client, queues: &[String]) {
    for queue in queues {
        // A passive declare of a missing queue closes its channel: one channel each.
        let Ok(channel) = client.channel().await else {
            return;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(info) = channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
        {
            let labels = [("queue", queue.clone()), ("kind", kind(queue).to_string())];
            metrics::gauge!(MESSAGES, &labels).set(f64::from(info.message_count));
            metrics::gauge!(CONSUMERS, &labels).set(f64::from(info.consumer_count));
        }
    }
}
