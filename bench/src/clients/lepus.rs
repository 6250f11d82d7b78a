//! lepus, the toolkit: a supervised `lepus::Client` per task, `lepus::Publisher` (outage
//! buffer, window, UUIDv7 message ids, republish after reconnect: all of it on the path
//! being measured) and `lepus::Consumer` with a handler that acks at once.
//!
//! Publishing keeps the same sliding window as the engine row, on `Confirm` futures: the
//! publisher's window and buffer are both `workload.confirm`, so at most that many messages
//! are unconfirmed. Consuming runs the consumer with prefetch `P`, ack batches of `K`,
//! one handler at a time, no retries, no retry queues and no idempotency store; the
//! handler checks every message like the other rows do and cancels the consumer's token
//! once it has seen `count` of them, and the clock stops when the consumer has shut down
//! (its acks flushed, its channel closed).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::lepus::{
    CancellationToken, Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions,
    RetryPolicy,
};
use anyhow::{Context, Result, anyhow, bail};

use super::{Phase, Workload, check_delivery};
use crate::observability::{self, Sampling};

const NAME: &str = "lepus";

/// How long setting up and tearing down may take (connecting, closing).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A routing key no queue is bound to: the broker confirms a message sent there and drops
/// it, so one such publish before the clock starts proves the publisher's channel is open
/// in confirm mode without adding a message to the queue under test.
const WARM_UP_KEY: &str = "lepus-bench-warm-up-nowhere";

/// A client with one endpoint and the default reconnect policy, connected.
async fn connect(url: &str, what: &str) -> Result<Client> {
    let client = Client::builder()
        .endpoint(url)
        .with_context(|| format!("{NAME}: the {what}'s endpoint"))?
        .build()
        .with_context(|| format!("{NAME}: building the {what}'s client"))?;
    client
        .wait_connected(SETUP_TIMEOUT)
        .await
        .with_context(|| format!("{NAME}: connecting the {what}"))?;
    Ok(client)
}

pub async fn publish(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let client = connect(url, "publisher").await?;
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default()
            .window(workload.confirm)
            .buffer(workload.confirm),
    );
    publisher
        .publish(Message::new("", WARM_UP_KEY, Vec::new()))
        .await
        .map_err(|e| {
            anyhow!(
                "{NAME}: the warm-up publish failed: {}",
                ::lepus::error::report(&e)
            )
        })?;
    let mut window = VecDeque::with_capacity(workload.confirm);
    let mut acked = 0u64;

    phase.start().await;
    for seq in 0..workload.count {
        if window.len() >= workload.confirm
            && let Some(oldest) = window.pop_front()
        {
            acked += settle(oldest.await, queue)?;
        }
        let mut body = workload.body();
        Workload::stamp(&mut body, seq);
        let confirm = publisher
            .send(Message::new("", queue, body))
            .await
            .map_err(|e| {
                anyhow!(
                    "{NAME}: publishing message {seq} to {queue}: {}",
                    ::lepus::error::report(&e)
                )
            })?;
        window.push_back(confirm);
    }
    for confirm in window {
        acked += settle(confirm.await, queue)?;
    }
    phase.done().await;

    // The warm-up message, then the workload: nothing else was confirmed, nothing
    // republished (a reconnect in the middle would have shown here).
    let stats = publisher.stats();
    let (confirmed, republished) = (stats.snapshot().confirmed, stats.snapshot().republished);
    if confirmed != workload.count + 1 || republished != 0 {
        bail!(
            "{NAME}: the publisher to {queue} counted {confirmed} confirms and {republished} republishes, expected {} and 0",
            workload.count + 1
        );
    }
    publisher
        .close(SETUP_TIMEOUT)
        .await
        .with_context(|| format!("{NAME}: closing the publisher"))?;
    client
        .close(SETUP_TIMEOUT)
        .await
        .with_context(|| format!("{NAME}: closing the publisher's client"))?;
    Ok(acked)
}

fn settle(result: ::lepus::PublishResult, queue: &str) -> Result<u64> {
    match result {
        Ok(()) => Ok(1),
        Err(e) => bail!(
            "{NAME}: the broker did not ack a message to {queue}: {}",
            ::lepus::error::report(&e)
        ),
    }
}

/// What the handler checks and counts, shared with the task that runs the consumer.
struct Checks {
    queue: String,
    workload: Workload,
    /// Messages handled so far; the next one must carry this sequence number.
    handled: AtomicU64,
    /// The first check that failed; the consumer is stopped when one does.
    failure: Mutex<Option<anyhow::Error>>,
    /// Messages that carried a W3C `traceparent` header.
    traced: AtomicU64,
    stop: CancellationToken,
}

impl Checks {
    fn handle(&self, msg: &Incoming) {
        let n = self.handled.fetch_add(1, Ordering::Relaxed);
        if msg.header("traceparent").is_some() {
            self.traced.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(err) = check_delivery(
            NAME,
            &self.queue,
            &self.workload,
            n,
            msg.body(),
            msg.redelivered(),
        ) {
            if let Ok(mut first) = self.failure.lock() {
                first.get_or_insert(err);
            }
            self.stop.cancel();
        }
        if n + 1 >= self.workload.count {
            self.stop.cancel();
        }
    }
}

pub async fn consume(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let client = connect(url, "consumer").await?;
    let consumer = Consumer::builder(&client, queue)
        .prefetch(workload.prefetch)
        .ack_batch(usize::try_from(workload.multi_ack).unwrap_or(usize::MAX))
        .concurrency(1)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .build()
        .with_context(|| format!("{NAME}: building the consumer of {queue}"))?;
    let checks = Arc::new(Checks {
        queue: queue.to_owned(),
        workload: *workload,
        handled: AtomicU64::new(0),
        failure: Mutex::new(None),
        traced: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });
    let handler = {
        let checks = Arc::clone(&checks);
        move |msg: Incoming| {
            checks.handle(&msg);
            std::future::ready(Outcome::Ack)
        }
    };

    phase.start().await;
    consumer
        .run(handler, checks.stop.clone())
        .await
        .with_context(|| format!("{NAME}: the consumer of {queue} failed"))?;
    if let Some(err) = checks.failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(err);
    }
    let handled = checks.handled.load(Ordering::Relaxed);
    if handled != workload.count {
        bail!(
            "{NAME}: the consumer of {queue} stopped after {handled} messages, expected {}",
            workload.count
        );
    }
    phase.done().await;

    let stats = consumer.stats();
    let acked = stats.acked.load(Ordering::Relaxed);
    let stale = stats.stale_settles.load(Ordering::Relaxed);
    if stale != 0 {
        bail!("{NAME}: {stale} acks on {queue} reached a closed channel");
    }
    // Spans are on exactly when the observability switch says so, and sampled about as
    // it says: a sampled publish span's context travels in the message's headers.
    let traced = checks.traced.load(Ordering::Relaxed);
    let count = workload.count;
    let plausible = match observability::sampling() {
        Sampling::Off => traced == 0,
        Sampling::Ratio(r) if r >= 1.0 => traced == count,
        Sampling::Ratio(r) if r <= 0.0 => traced == 0,
        // A ratio sampler keeps about r x count traces: far from 0 and from all of them
        // once enough are expected (the bounds are many standard deviations wide).
        Sampling::Ratio(r) if count as f64 * r >= 100.0 => {
            let expected = count as f64 * r;
            (traced as f64) > expected / 2.0 && (traced as f64) < expected * 2.0
        }
        Sampling::Ratio(_) | Sampling::Env => traced <= count,
    };
    if !plausible {
        bail!(
            "{NAME}: {traced} of {count} messages on {queue} carried a traceparent header, but tracing is {:?}",
            observability::sampling()
        );
    }
    client
        .close(SETUP_TIMEOUT)
        .await
        .with_context(|| format!("{NAME}: closing the consumer's client"))?;
    Ok(acked)
}
