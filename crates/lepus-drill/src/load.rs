//! The traffic of a scenario: fixed-rate publishing through `lepus::Publisher`, a
//! `lepus::Consumer` with an idempotency store, and the drain afterwards.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lepus::idempotency::MemoryStore;
use lepus::{
    CancellationToken, Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions,
    RetryPolicy,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::record::Recorder;

/// Bytes of every message body (the id is in the properties, not the body).
pub const BODY_SIZE: usize = 100;

/// Publishes `rate` messages per second to `queue` until `stop` is cancelled.
///
/// Each message gets the next id from `rec`. The generator keeps a fixed schedule; when
/// the publisher makes it wait (its buffer is full), the ticks it missed are skipped, so
/// the published rate on the chart shows the back-pressure. Every confirm or failure is
/// recorded by a callback.
pub fn spawn_load(
    publisher: Publisher,
    queue: String,
    rate: u32,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let body = vec![b'x'; BODY_SIZE];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let (n, id) = rec.next();
            let message = Message::new("", queue.as_str(), body.clone()).message_id_str(&id);
            let rec_cb = Arc::clone(&rec);
            let sent = publisher
                .send_with_callback(message, move |result| {
                    rec_cb.told(n, result.map(drop).map_err(|e| e.error.to_string()));
                })
                .await;
            if let Err(e) = sent {
                rec.told(n, Err(e.error.to_string()));
            }
        }
    })
}

/// Starts the consumer: every delivery is recorded as handled unless the idempotency
/// store has seen its id (then the consumer acks it without calling the handler).
pub fn spawn_consumer(
    client: &Client,
    queue: &str,
    rec: Arc<Recorder>,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<lepus::Result<()>>> {
    let consumer = Consumer::builder(client, queue)
        .name("drill")
        .prefetch(500)
        .ack_batch(50)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .idempotency(MemoryStore::default())
        .build()
        .context("building the consumer")?;
    let handler = move |msg: Incoming| {
        let rec = Arc::clone(&rec);
        async move {
            rec.handled(msg.message_id().unwrap_or_default());
            Outcome::Ack
        }
    };
    Ok(consumer.spawn(handler, stop))
}

/// Publisher options of the drill: lepus's defaults (30 s publish timeout, window 1000,
/// buffer 10,000, stall timeout 3 s), the stall timeout replaced if given.
pub fn publisher_options(stall_timeout: Option<Duration>) -> PublisherOptions {
    let options = PublisherOptions::default();
    match stall_timeout {
        Some(timeout) => options.stall_timeout(timeout),
        None => options,
    }
}

/// Waits until the consumer has handled every confirmed message, or handled nothing new
/// for `quiet`, or `timeout` passed.
pub async fn wait_consumed(rec: &Recorder, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = rec.handled_total();
    let mut last_change = Instant::now();
    while Instant::now() < deadline && rec.confirmed_unhandled() > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rec.handled_total();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            return;
        }
    }
}

/// Takes every message left in `queue` over a connection of its own (`basic.get`) and
/// records its id as queued; then deletes the queue. Returns how many it took.
pub async fn drain(urls: &[String], queue: &str, rec: &Recorder) -> anyhow::Result<u64> {
    let mut builder = Client::builder().name("drill-drain");
    for url in urls {
        builder = builder.endpoint(url)?;
    }
    let client = builder.build()?;
    let result = async {
        client
            .wait_connected(Duration::from_secs(60))
            .await
            .context("the drain's connection")?;
        let channel = client.channel().await.context("the drain's channel")?;
        let mut taken = 0u64;
        while let Some(got) = channel
            .basic_get(queue)
            .await
            .with_context(|| format!("basic.get from {queue}"))?
        {
            let delivery = got.delivery;
            let id = delivery
                .properties()
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default();
            rec.queued(&id);
            channel.basic_ack(delivery.delivery_tag(), false)?;
            taken += 1;
        }
        channel
            .queue_delete(queue, lepus::amqp::QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
        anyhow::Ok(taken)
    }
    .await;
    let _ = client.close(Duration::from_secs(5)).await;
    result
}
