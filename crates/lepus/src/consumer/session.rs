//! One subscription: a channel, a `basic.consume`, and the loop that takes deliveries,
//! polls the running handlers, settles what finished and batches acks, until shutdown,
//! a lost channel or a server-side cancel ends it.
//!
//! The loop is long because every event it waits on can arrive in any order; each arm of
//! its `select!` says what it does and why it is allowed at that moment.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lepus_amqp::{ConsumeOptions, Delivery, ErrorKind as AmqpErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acker::Acker;
use super::in_flight::{CancelWatch, InFlight};
use super::invocation::{Calls, Invocation, handle_span};
use super::settle::{Move, Settling};
use super::{ACK_LINGER, ACK_LINGER_MAX, Consumer, Handler, Incoming, Outcome};
use crate::error::{Error, ErrorKind};
use crate::message::Message;
use crate::observability::metrics::ConsumeMetrics;
use crate::publisher::Publisher;

pub(super) enum SessionEnd {
    Shutdown,
    Lost(Error),
    Cancelled(Error),
}

/// What a running handler (or a republish) finished with.
pub(super) enum Done {
    /// The idempotency store had seen it.
    Skipped { incoming: Incoming },
    Handled {
        incoming: Incoming,
        outcome: Outcome,
        failures: u32,
        span: tracing::Span,
        /// When the handler returned (a clock read the next message may reuse).
        finished: Instant,
    },
    Moved {
        /// The copy is given back when its publish failed.
        result: std::result::Result<(), (Error, Box<Message>)>,
        mv: Move,
    },
}

pub(super) type Running = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

impl Consumer {
    pub(super) async fn session<H: Handler>(
        &self,
        conn: &lepus_amqp::Connection,
        handler: &Arc<H>,
        publisher: &Publisher,
        shutdown: &CancellationToken,
        metrics: &Arc<ConsumeMetrics>,
    ) -> SessionEnd {
        let cfg = &self.config;
        let queue = cfg.client.queue_name(&cfg.queue);
        let setup = async {
            let ch = conn.open_channel().await?;
            if cfg.declare_retry_queues {
                for failure in
                    crate::topology::declare_on(&ch, conn, &cfg.retry.topology(&queue)).await?
                {
                    tracing::warn!(%failure, "retry topology");
                }
            }
            let ch = if ch.is_open() {
                ch
            } else {
                conn.open_channel().await?
            };
            ch.basic_qos(cfg.prefetch, false).await?;
            let tag = format!("{}-{}", cfg.name, uuid::Uuid::now_v7().simple());
            let consumer = ch
                .basic_consume(
                    &queue,
                    ConsumeOptions {
                        consumer_tag: Some(tag.chars().take(200).collect()),
                        ..ConsumeOptions::default()
                    },
                )
                .await?;
            Ok::<_, lepus_amqp::Error>((ch, consumer))
        };
        let (channel, mut consumer) = match setup.await {
            Ok(ok) => ok,
            Err(err) => return SessionEnd::Lost(err.into()),
        };
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.stats.active.store(true, Ordering::Relaxed);
        tracing::info!(queue = %queue, tag = consumer.tag(), "consumer subscribed");

        // Never hold back more than half the prefetch window in one batch: the broker
        // stops delivering when the window is full.
        let batch = cfg.ack_batch.min(usize::from(cfg.prefetch / 2).max(1));
        let mut acker = Acker::new(channel.clone(), batch, Arc::clone(&self.stats));
        let calls = Arc::new(Calls {
            handler: Arc::clone(handler),
            immediate: cfg.retry.immediate,
            timeout: cfg.handler_timeout,
            stats: Arc::clone(&self.stats),
            metrics: Arc::clone(metrics),
            store: cfg.idempotency.clone(),
        });
        let mut handlers: InFlight<H> = InFlight::new(cfg.concurrency);
        // Failed messages on their way to a wait queue or the dead-letter queue.
        let mut moves: FuturesUnordered<Running> = FuturesUnordered::new();
        // Handlers counted in `in_flight` (stats and gauge): brought up to date once per
        // turn of the loop, so a handler that finishes on its first poll costs no update.
        let mut counted = 0usize;
        let mut draining: Option<Instant> = None;
        // The ack linger: one timer for the session, moved later while deliveries keep
        // coming (an atomic update inside tokio as long as it has not fired) and armed
        // anew only after it fired, that is after a pause. Re-arming a fired timer per
        // partial batch took the timer driver's lock and woke the other worker.
        let linger = tokio::time::sleep(ACK_LINGER);
        tokio::pin!(linger);
        let mut linger_armed = false;
        let mut linger_due = Instant::now();
        // The latest clock read of the loop (a delivery taken, a handler finished): the
        // time the last ack was added, without a clock read of its own.
        let mut last_activity = linger_due;
        // When the pending batch was first seen here, and the acker's count of batches
        // sent then (a batch that filled and went out in between makes a new one).
        let mut pending_since: Option<(Instant, u64)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cancel = CancelWatch::new(shutdown);
        let end = 'session: loop {
            if let Some(since) = draining {
                if handlers.len() == 0 && moves.is_empty() {
                    break SessionEnd::Shutdown;
                }
                if since.elapsed() >= cfg.shutdown_timeout {
                    tracing::warn!(queue = %queue, left = handlers.len() + moves.len(), "shutdown deadline passed; unfinished messages go back to the queue");
                    break SessionEnd::Shutdown;
                }
            }
            let can_take = draining.is_none() && handlers.len() < cfg.concurrency;
            // A partial ack batch is sent once deliveries pause for ACK_LINGER, and at
            // most ACK_LINGER_MAX after its first ack.
            if acker.has_pending() {
                let sent = acker.batches_sent();
                let first = match pending_since {
                    Some((at, n)) if n == sent => at,
                    _ => {
                        pending_since = Some((last_activity, sent));
                        last_activity
                    }
                };
                if last_activity >= first + ACK_LINGER_MAX {
                    // The timer's branch comes after the deliveries' in the biased
                    // `select!`, so it is not polled while deliveries stay buffered: the
                    // bound is then seen here, by the loop's own latest clock read.
                    acker.flush();
                } else {
                    let due = (last_activity + ACK_LINGER).min(first + ACK_LINGER_MAX);
                    // The timer is moved only when its deadline moves by more than its
                    // own resolution (a millisecond).
                    if !linger_armed || due > linger_due + LINGER_SLACK {
                        linger.as_mut().reset(due);
                        linger_due = due;
                        linger_armed = true;
                    }
                }
            }
            if !acker.has_pending() {
                pending_since = None;
                linger_armed = false;
            }
            let drain_deadline =
                draining.map(|since| crate::deadline::deadline_from(since, cfg.shutdown_timeout));
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if draining.is_none() => {
                    draining = Some(Instant::now());
                    if let Err(e) = consumer.cancel().await {
                        tracing::debug!(error = %crate::error::report(&e), "cancelling the consumer failed");
                    }
                }
                Some(done) = moves.next(), if !moves.is_empty() => {
                    last_activity = Instant::now();
                    let settling = Settling { acker: &mut acker, publisher, queue: &queue, metrics, shutdown };
                    if let Some(next) = self.settle(done, settling) {
                        moves.push(next);
                    }
                }
                Some(done) = handlers.next(), if handlers.len() > 0 => {
                    last_activity = match &done {
                        Done::Handled { finished, .. } => *finished,
                        _ => Instant::now(),
                    };
                    let settling = Settling { acker: &mut acker, publisher, queue: &queue, metrics, shutdown };
                    if let Some(next) = self.settle(done, settling) {
                        moves.push(next);
                    }
                }
                delivery = consumer.next(), if can_take => {
                    // Deliveries already buffered are taken here, one after the other,
                    // while their handlers finish on their first poll: no turn of the
                    // loop (and of every branch of this select) per message.
                    let mut item = delivery;
                    let mut budget = DRAIN_BUDGET;
                    // The clock read that ended the previous handler, reused as the next
                    // message's start.
                    let mut now = None;
                    loop {
                        let delivery = match taken(item) {
                            Ok(delivery) => delivery,
                            Err(end) => break 'session end,
                        };
                        let at = now.take().unwrap_or_else(Instant::now);
                        last_activity = at;
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        metrics.delivered.increment(1);
                        let incoming = Incoming::new(delivery);
                        acker.track(incoming.delivery.delivery_tag(), at);
                        let span = handle_span(&queue, &incoming);
                        handlers.start(Invocation { calls: Arc::clone(&calls), incoming, span, started: at });
                        while let Some(done) = handlers.ready().await {
                            if let Done::Handled { finished, .. } = &done {
                                now = Some(*finished);
                                last_activity = *finished;
                            }
                            let settling = Settling { acker: &mut acker, publisher, queue: &queue, metrics, shutdown };
                            if let Some(next) = self.settle(done, settling) {
                                moves.push(next);
                            }
                        }
                        budget -= 1;
                        if budget == 0 || handlers.len() >= cfg.concurrency || cancel.is_cancelled() {
                            break;
                        }
                        match std::future::poll_fn(|cx| Poll::Ready(consumer.poll_next_unpin(cx))).await {
                            Poll::Ready(next) => item = next,
                            Poll::Pending => break,
                        }
                    }
                }
                _ = &mut linger, if linger_armed => {
                    acker.flush();
                    pending_since = None;
                    linger_armed = false;
                }
                // Only while deliveries are unsettled: that is all it checks, and an idle
                // turn (one per wake-up) then skips the timer.
                _ = tick.tick(), if acker.has_unsettled() => {
                    if let Some(age) = acker.oldest_age() && age > cfg.broker_consumer_timeout.mul_f64(0.8) {
                        tracing::warn!(queue = %queue, age = ?age, broker_consumer_timeout = ?cfg.broker_consumer_timeout, "a message has been unacknowledged for close to the broker's consumer timeout");
                    }
                }
                _ = sleep_until_opt(drain_deadline), if drain_deadline.is_some() => {}
            }
            counted = self.count_in_flight(counted, handlers.len(), metrics);
        };
        if !matches!(end, SessionEnd::Shutdown) && handlers.len() > 0 {
            // The channel is gone, but handlers already running are let finish (within
            // their timeout): their side effects complete and a success is recorded in
            // the idempotency store (by the invocation), so the broker's redelivery is
            // recognised. Their acks are refused (the channel closed), never applied to
            // another message. A failed message's copy is not moved now (moves still
            // under way are dropped): the original comes back.
            let deadline = crate::deadline::deadline_after(cfg.handler_timeout);
            while handlers.len() > 0
                && let Ok(Some(_)) = tokio::time::timeout_at(deadline, handlers.next()).await
            {
                counted = self.count_in_flight(counted, handlers.len(), metrics);
            }
        }
        // Handlers abandoned at a deadline no longer count as running.
        self.count_in_flight(counted, 0, metrics);
        acker.flush();
        // Buffered deliveries that never started, and any handler abandoned at a
        // deadline, go back to the queue with the channel.
        let _ = channel.close().await;
        if matches!(end, SessionEnd::Shutdown) {
            tracing::info!(queue = %queue, "consumer stopped");
        }
        end
    }

    /// Brings `in_flight` (stats and gauge) from `counted` to `running`; returns it.
    fn count_in_flight(&self, counted: usize, running: usize, metrics: &ConsumeMetrics) -> usize {
        if running > counted {
            let up = running - counted;
            self.stats.in_flight.fetch_add(up, Ordering::Relaxed);
            metrics.in_flight.increment(up as f64);
        } else if running < counted {
            let down = counted - running;
            self.stats.in_flight.fetch_sub(down, Ordering::Relaxed);
            metrics.in_flight.decrement(down as f64);
        }
        running
    }
}

/// How much later the ack linger's deadline must move before its timer is moved.
const LINGER_SLACK: Duration = Duration::from_millis(1);

/// Deliveries taken in one turn of the session's loop at most, so its timers (the ack
/// linger, the consumer-timeout check) and shutdown are looked at in between.
const DRAIN_BUDGET: usize = 64;

/// A delivery from the stream, or why the session ends.
fn taken(item: Option<lepus_amqp::Result<Delivery>>) -> std::result::Result<Delivery, SessionEnd> {
    match item {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(err)) if err.kind() == AmqpErrorKind::ConsumerCancelled => {
            Err(SessionEnd::Cancelled(err.into()))
        }
        Some(Err(err)) => Err(SessionEnd::Lost(err.into())),
        None => Err(SessionEnd::Lost(Error::new(
            ErrorKind::Closed,
            "consumer ended",
        ))),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
