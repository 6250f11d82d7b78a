//! One producer: a `lepus::Publisher` of its own, at most `--confirm` messages
//! unconfirmed, optionally paced to a rate; or, with `--confirm 0`, plain publishes on a
//! channel without confirms (PerfTest's default), which measure the broker's intake and
//! promise nothing.
//!
//! Each message carries `{run}-p{producer}-{seq}` as its message id and its send time
//! (microseconds since the run started) in the body, or in a header when the body is too
//! small for it. The publisher's callback records the confirm latency and, with
//! `--verify`, the sequence number as confirmed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use lepus::amqp::{AMQPValue, PublishOptions};
use lepus::observability::metrics::PUBLISHED;
use lepus::{Client, ErrorKind, Message, PublishResult, Publisher, PublisherOptions, Role};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::verify::{SeqSet, message_id};

/// The header that carries the send time when the body has no room for it.
pub(super) const TIMESTAMP_HEADER: &str = "x-lepus-bench-ts";
/// Bytes of the send time at the start of the body.
pub(super) const TIMESTAMP_BYTES: usize = 8;

/// What one producer does.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// Messages to send; `None` until stopped.
    pub count: Option<u64>,
    /// Messages per second for this producer; 0 for as fast as confirms allow.
    pub rate: f64,
    /// Unconfirmed messages at most.
    pub window: usize,
    /// From send to confirm at most.
    pub timeout: Duration,
    /// The exchange (empty: the default exchange).
    pub exchange: String,
    /// The routing key (the queue's name for the default exchange).
    pub routing_key: String,
    /// Delivery mode 2 (persistent) or 1.
    pub persistent: bool,
    /// Unroutable messages come back as failures.
    pub mandatory: bool,
}

/// What one producer measured.
#[derive(Debug)]
pub(super) struct Outcome {
    /// Send to confirm, microseconds.
    pub confirm_latency: Histogram<u64>,
    /// Sequence numbers confirmed (with `--verify`).
    pub confirmed: SeqSet,
    /// When the last confirm came.
    pub last_confirm: Option<Instant>,
    /// Messages the publisher sent again after a connection loss or a nack.
    pub republished: u64,
    /// Published without confirms.
    pub unconfirmed: bool,
    /// When the last message was sent.
    pub last_sent: Option<Instant>,
}

struct Record {
    latency: Histogram<u64>,
    confirmed: SeqSet,
    last_confirm: Option<Instant>,
}

fn build(ctx: &Ctx, producer: usize, seq: u64, plan: &Plan) -> Message {
    let now = ctx.now_us();
    let mut body = vec![0u8; ctx.size];
    let stamped = match body.get_mut(..TIMESTAMP_BYTES) {
        Some(head) => {
            head.copy_from_slice(&now.to_le_bytes());
            true
        }
        None => false,
    };
    let mut msg = Message::new(plan.exchange.as_str(), plan.routing_key.as_str(), body)
        .message_id_str(&message_id(&ctx.run, producer, seq))
        .persistent(plan.persistent)
        .mandatory(plan.mandatory);
    if !stamped {
        msg = msg.header_value(TIMESTAMP_HEADER, AMQPValue::Timestamp(now));
    }
    msg
}

fn on_result(ctx: &Ctx, record: &Mutex<Record>, seq: u64, sent_at: Instant, result: PublishResult) {
    match result {
        Ok(()) => {
            ctx.counters.confirmed.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let micros = u64::try_from(now.duration_since(sent_at).as_micros()).unwrap_or(u64::MAX);
            let mut r = record.lock().unwrap_or_else(PoisonError::into_inner);
            r.latency.saturating_record(micros.max(1));
            if ctx.verify {
                r.confirmed.insert(seq);
            }
            r.last_confirm = Some(now);
        }
        Err(err) => {
            ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
            let reason = format!("publish failed: {}", err.error);
            match err.error.kind() {
                // The broker refused one message: counted, the run goes on.
                ErrorKind::Nacked | ErrorKind::Unroutable => ctx.note_failure(reason),
                // No broker within the publish timeout: stop rather than wait out every
                // remaining message.
                _ => ctx.fail(reason),
            }
        }
    }
}

/// Runs one producer until its count is sent, `stop` is cancelled, or the run aborts;
/// then waits (bounded) for its confirms.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    producer: usize,
    client: Client,
    plan: Plan,
    histogram: Histogram<u64>,
    stop: CancellationToken,
) -> Outcome {
    if plan.window == 0 {
        return run_unconfirmed(ctx, producer, client, plan, histogram, stop).await;
    }
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default()
            .window(plan.window)
            .buffer(plan.window)
            .publish_timeout(plan.timeout),
    );
    let record = Arc::new(Mutex::new(Record {
        latency: histogram,
        confirmed: SeqSet::default(),
        last_confirm: None,
    }));
    let started = Instant::now();
    let mut seq = 0u64;
    loop {
        if plan.count.is_some_and(|count| seq >= count) || stop.is_cancelled() {
            break;
        }
        if plan.rate > 0.0 {
            let at = started + Duration::from_secs_f64(seq as f64 / plan.rate);
            if at > Instant::now() + Duration::from_millis(1) {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = stop.cancelled() => break,
                    _ = ctx.abort.cancelled() => break,
                }
            }
        }
        let msg = build(&ctx, producer, seq, &plan);
        if let Some(bound) = ctx.bounds.get(producer) {
            bound.store(seq + 1, Ordering::Relaxed);
        }
        let sent_at = Instant::now();
        let callback = {
            let ctx = Arc::clone(&ctx);
            let record = Arc::clone(&record);
            move |result| on_result(&ctx, &record, seq, sent_at, result)
        };
        let sent = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ctx.abort.cancelled() => break,
            sent = publisher.send_with_callback(msg, callback) => sent,
        };
        ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = sent {
            ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
            ctx.fail(format!("producer {producer}: {}", err.error));
            break;
        }
        seq += 1;
    }
    // Every message has its own deadline, so this ends within the publish timeout; after
    // an abort the broker is likely gone and a short wait is enough.
    let flush = if ctx.abort.is_cancelled() {
        Duration::from_secs(2)
    } else {
        plan.timeout + Duration::from_secs(5)
    };
    if let Err(err) = publisher.flush(flush).await {
        ctx.fail(format!(
            "producer {producer}: {}",
            lepus::error::report(&err)
        ));
    }
    let _ = publisher.close(Duration::from_secs(2)).await;
    let republished = publisher.stats().snapshot().republished;
    let record = Arc::try_unwrap(record)
        .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
        .unwrap_or_else(|shared| {
            // A callback still holds a clone (the publisher task has not dropped it yet):
            // copy what it recorded.
            let r = shared.lock().unwrap_or_else(PoisonError::into_inner);
            Record {
                latency: r.latency.clone(),
                confirmed: r.confirmed.clone(),
                last_confirm: r.last_confirm,
            }
        });
    Outcome {
        confirm_latency: record.latency,
        confirmed: record.confirmed,
        last_confirm: record.last_confirm,
        republished,
        unconfirmed: false,
        last_sent: None,
    }
}

/// Waits for the slot of message `seq` at `rate`; false if stopped meanwhile.
async fn pace(ctx: &Ctx, started: Instant, seq: u64, rate: f64, stop: &CancellationToken) -> bool {
    if rate <= 0.0 {
        return true;
    }
    let at = started + Duration::from_secs_f64(seq as f64 / rate);
    if at > Instant::now() + Duration::from_millis(1) {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => return false,
            _ = ctx.abort.cancelled() => return false,
        }
    }
    true
}

/// Publishes on a channel of its own without confirms. A channel or connection loss
/// stops the run: without confirms nobody can say what was lost.
async fn run_unconfirmed(
    ctx: Arc<Ctx>,
    producer: usize,
    client: Client,
    plan: Plan,
    histogram: Histogram<u64>,
    stop: CancellationToken,
) -> Outcome {
    let mut outcome = Outcome {
        confirm_latency: histogram,
        confirmed: SeqSet::default(),
        last_confirm: None,
        republished: 0,
        unconfirmed: true,
        last_sent: None,
    };
    let channel = match client.connection(Role::Publish, plan.timeout).await {
        Ok(live) => live
            .connection
            .open_channel()
            .await
            .map_err(lepus::Error::from),
        Err(err) => Err(err),
    };
    let channel = match channel {
        Ok(channel) => channel,
        Err(err) => {
            ctx.fail(format!(
                "producer {producer}: {}",
                lepus::error::report(&err)
            ));
            return outcome;
        }
    };
    let options = PublishOptions {
        mandatory: plan.mandatory,
    };
    let published = metrics::counter!(
        PUBLISHED,
        "exchange" => if plan.exchange.is_empty() { "(default)".to_owned() } else { plan.exchange.clone() }
    );
    let started = Instant::now();
    let mut seq = 0u64;
    while plan.count.is_none_or(|count| seq < count) && !stop.is_cancelled() {
        if !pace(&ctx, started, seq, plan.rate, &stop).await {
            break;
        }
        let msg = build(&ctx, producer, seq, &plan);
        if let Some(bound) = ctx.bounds.get(producer) {
            bound.store(seq + 1, Ordering::Relaxed);
        }
        let sent = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ctx.abort.cancelled() => break,
            sent = channel.basic_publish(msg.exchange(), msg.routing_key(), options, msg.properties(), msg.body()) => sent,
        };
        ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = sent {
            ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
            ctx.fail(format!(
                "producer {producer}: {}",
                lepus::error::report(&err)
            ));
            break;
        }
        published.increment(1);
        outcome.last_sent = Some(Instant::now());
        seq += 1;
    }
    let _ = channel.close().await;
    outcome
}
