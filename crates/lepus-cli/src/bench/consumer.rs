//! One consumer: manual acks with `multiple` every `--multi-ack` deliveries (and whatever is
//! pending after a short idle), on a channel of the client's consuming connection, subscribing
//! again after every reconnect.
//!
//! An ack that fails because its channel died is counted, not fatal: the broker requeues
//! those messages and they come again (as duplicates, which `--verify` counts).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use lepus::Client;
use lepus::amqp::{AMQPValue, Delivery};
use lepus::observability::metrics::{ACKED, DELIVERED};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::producer::{TIMESTAMP_BYTES, TIMESTAMP_HEADER};
use super::verify::{SeqSet, parse_id};
use crate::subscription::{Next, Subscription};

/// Pending acks go out once no delivery came for this long.
const ACK_IDLE: Duration = Duration::from_millis(50);

/// What one consumer does.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The queue.
    pub queue: String,
    /// Unacknowledged deliveries at most.
    pub prefetch: u16,
    /// Ack with `multiple` every this many deliveries.
    pub multi_ack: u16,
    /// No acks: the broker considers a message acknowledged once sent.
    pub autoack: bool,
    /// Bound on each (re)subscription.
    pub timeout: Duration,
}

/// What one consumer saw.
#[derive(Debug)]
pub(super) struct Outcome {
    /// Publish to delivery, microseconds.
    pub e2e_latency: Histogram<u64>,
    /// Per producer, the sequence numbers seen (with `--verify`).
    pub seen: Vec<SeqSet>,
    /// Deliveries of a sequence number this consumer had already seen.
    pub repeats: u64,
    /// Deliveries of this run's messages.
    pub consumed: u64,
    /// Deliveries of other messages.
    pub foreign: u64,
    /// Acks refused because the channel had died.
    pub ack_errors: u64,
    /// Subscriptions made (1 + resubscriptions).
    pub subscribes: u64,
    /// First and last delivery of this run's messages.
    pub first: Option<Instant>,
    /// See `first`.
    pub last: Option<Instant>,
}

struct State {
    ctx: Arc<Ctx>,
    out: Outcome,
    /// The last delivery not yet acknowledged, and the subscription it came on.
    pending: Option<(Delivery, u64)>,
    unacked: u16,
    multi_ack: u16,
    autoack: bool,
}

fn sent_at(delivery: &Delivery) -> Option<u64> {
    if let Some(head) = delivery.body().get(..TIMESTAMP_BYTES) {
        let bytes: [u8; TIMESTAMP_BYTES] = head.try_into().ok()?;
        return Some(u64::from_le_bytes(bytes));
    }
    let headers = delivery.properties().headers().as_ref()?;
    match headers.inner().get(TIMESTAMP_HEADER)? {
        AMQPValue::Timestamp(t) => Some(*t),
        _ => None,
    }
}

impl State {
    fn record(&mut self, delivery: &Delivery) {
        let now_us = self.ctx.now_us();
        self.ctx
            .counters
            .last_delivery_us
            .fetch_max(now_us, Ordering::Relaxed);
        let ours = delivery
            .properties()
            .message_id()
            .as_ref()
            .and_then(|id| parse_id(id.as_str(), &self.ctx.run))
            .filter(|(producer, seq)| {
                self.ctx
                    .bounds
                    .get(*producer)
                    .is_some_and(|b| *seq < b.load(Ordering::Relaxed))
            });
        let Some((producer, seq)) = ours else {
            self.out.foreign += 1;
            return;
        };
        self.out.consumed += 1;
        self.ctx.counters.consumed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.out.first.get_or_insert(now);
        self.out.last = Some(now);
        if let Some(at) = sent_at(delivery) {
            let micros = now_us.saturating_sub(at).max(1);
            self.out.e2e_latency.saturating_record(micros);
            self.ctx
                .interval_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saturating_record(micros);
        }
        if self.ctx.verify
            && let Some(seen) = self.out.seen.get_mut(producer)
            && !seen.insert(seq)
        {
            self.out.repeats += 1;
        }
    }

    fn ack(&mut self, delivery: &Delivery) {
        if delivery.ack_multiple().is_err() {
            self.out.ack_errors += 1;
        }
        self.unacked = 0;
    }

    /// Handles a delivery of subscription number `subscription`.
    fn handle(&mut self, delivery: Delivery, subscription: u64) {
        self.record(&delivery);
        if self.autoack {
            return;
        }
        // Deliveries of an earlier subscription (an earlier channel) cannot be acked any
        // more; try (and count the refusal) so nothing is skipped silently, then count
        // afresh. Channel ids and generations repeat across connections, so the
        // subscription number is what tells channels apart.
        if let Some((old, _)) = self.pending.take_if(|(_, s)| *s != subscription) {
            self.ack(&old);
        }
        self.unacked = self.unacked.saturating_add(1);
        if self.unacked >= self.multi_ack {
            self.pending = None;
            self.ack(&delivery);
        } else {
            self.pending = Some((delivery, subscription));
        }
    }

    fn flush(&mut self) {
        if let Some((last, _)) = self.pending.take() {
            self.ack(&last);
        }
    }
}

/// Runs one consumer until `stop`; `ready` fires once it is subscribed.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    client: Client,
    plan: Plan,
    histogram: Histogram<u64>,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Outcome {
    let producers = ctx.bounds.len();
    let mut state = State {
        ctx: Arc::clone(&ctx),
        out: Outcome {
            e2e_latency: histogram,
            seen: vec![SeqSet::default(); producers],
            repeats: 0,
            consumed: 0,
            foreign: 0,
            ack_errors: 0,
            subscribes: 0,
            first: None,
            last: None,
        },
        pending: None,
        unacked: 0,
        multi_ack: plan.multi_ack.max(1),
        autoack: plan.autoack,
    };
    // The consumers run on the engine directly; they count deliveries and acks under
    // lepus's own metric names, so `--metrics-addr` shows both sides of the run.
    let delivered = metrics::counter!(DELIVERED, "queue" => plan.queue.clone());
    let acked = metrics::counter!(ACKED, "queue" => plan.queue.clone());
    let mut sub =
        Subscription::new(client, &plan.queue, plan.prefetch, plan.timeout).no_ack(plan.autoack);
    if let Err(err) = sub.start().await {
        ctx.fail(format!("consumer: {err:#}"));
        return state.out;
    }
    let _ = ready.send(());
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ctx.abort.cancelled() => break,
            next = sub.next(ACK_IDLE) => next,
        };
        match next {
            Ok(Next::Delivery(delivery)) => {
                delivered.increment(1);
                if !state.autoack {
                    acked.increment(1);
                }
                state.handle(delivery, sub.subscribes())
            }
            Ok(Next::Idle) => state.flush(),
            Err(err) => {
                ctx.fail(format!("consumer: {err:#}"));
                break;
            }
        }
    }
    state.flush();
    state.out.subscribes = sub.subscribes();
    sub.close().await;
    state.out
}
