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

use futures_util::stream::{FuturesUnordered, StreamExt};
use lepus_amqp::{ConsumeOptions, ErrorKind as AmqpErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acker::Acker;
use super::invocation::{Invocation, handle_span};
use super::settle::{Move, Settling};
use super::{ACK_LINGER, Consumer, Handler, Incoming, Outcome};
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
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let mut handlers_running = 0usize;
        let mut draining: Option<Instant> = None;
        let linger = tokio::time::sleep(ACK_LINGER);
        tokio::pin!(linger);
        let mut linger_armed = false;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One wait on the token for the whole session: a new one per turn of the loop
        // would register and unregister a waiter for every message.
        // Once registered with this task's waker, the wait is not polled again while
        // deliveries flow: reading the flag is enough, and much cheaper than re-arming
        // the waiter every turn. A different waker (the session moved to another task)
        // re-registers.
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        let mut registered: Option<std::task::Waker> = None;
        let mut cancel_wait = std::pin::pin!(std::future::poll_fn(|cx| {
            if shutdown.is_cancelled() {
                return std::task::Poll::Ready(());
            }
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return std::task::Poll::Pending;
            }
            registered = Some(cx.waker().clone());
            cancelled.as_mut().poll(cx)
        }));
        let end = loop {
            if let Some(since) = draining {
                if running.is_empty() {
                    break SessionEnd::Shutdown;
                }
                if since.elapsed() >= cfg.shutdown_timeout {
                    tracing::warn!(queue = %queue, left = running.len(), "shutdown deadline passed; unfinished messages go back to the queue");
                    break SessionEnd::Shutdown;
                }
            }
            let can_take = draining.is_none() && handlers_running < cfg.concurrency;
            // A partial ack batch waits at most ACK_LINGER: one timer per batch, not
            // per message.
            if !acker.has_pending() {
                linger_armed = false;
            } else if !linger_armed {
                linger.as_mut().reset(Instant::now() + ACK_LINGER);
                linger_armed = true;
            }
            let drain_deadline =
                draining.map(|since| crate::deadline::deadline_from(since, cfg.shutdown_timeout));
            tokio::select! {
                biased;
                _ = &mut cancel_wait, if draining.is_none() => {
                    draining = Some(Instant::now());
                    if let Err(e) = consumer.cancel().await {
                        tracing::debug!(error = %crate::error::report(&e), "cancelling the consumer failed");
                    }
                }
                Some(done) = running.next(), if !running.is_empty() => {
                    if matches!(done, Done::Handled { .. } | Done::Skipped { .. }) {
                        handlers_running -= 1;
                        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        metrics.in_flight.decrement(1.0);
                    }
                    let settling = Settling { acker: &mut acker, publisher, queue: &queue, metrics, shutdown };
                    if let Some(next) = self.settle(done, settling) {
                        running.push(next);
                    }
                }
                delivery = consumer.next(), if can_take => match delivery {
                    Some(Ok(delivery)) => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        metrics.delivered.increment(1);
                        let incoming = Incoming::new(delivery);
                        acker.track(incoming.delivery.delivery_tag());
                        handlers_running += 1;
                        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        metrics.in_flight.increment(1.0);
                        let span = handle_span(&queue, &incoming);
                        let call = Invocation {
                            handler: Arc::clone(handler),
                            incoming,
                            immediate: cfg.retry.immediate,
                            timeout: cfg.handler_timeout,
                            stats: Arc::clone(&self.stats),
                            metrics: Arc::clone(metrics),
                            store: cfg.idempotency.clone(),
                            span: span.clone(),
                        };
                        running.push(Box::pin(call.run().instrument(span)));
                    }
                    Some(Err(err)) if err.kind() == AmqpErrorKind::ConsumerCancelled => break SessionEnd::Cancelled(err.into()),
                    Some(Err(err)) => break SessionEnd::Lost(err.into()),
                    None => break SessionEnd::Lost(Error::new(ErrorKind::Closed, "consumer ended")),
                },
                _ = &mut linger, if linger_armed => {
                    acker.flush();
                    linger_armed = false;
                }
                _ = tick.tick() => {
                    if let Some(age) = acker.oldest_age() && age > cfg.broker_consumer_timeout.mul_f64(0.8) {
                        tracing::warn!(queue = %queue, age = ?age, broker_consumer_timeout = ?cfg.broker_consumer_timeout, "a message has been unacknowledged for close to the broker's consumer timeout");
                    }
                }
                _ = sleep_until_opt(drain_deadline) => {}
            }
        };
        if !matches!(end, SessionEnd::Shutdown) && !running.is_empty() {
            // The channel is gone, but handlers already running are let finish (within
            // their timeout): their side effects complete and a success is recorded in
            // the idempotency store (by the invocation), so the broker's redelivery is
            // recognised. Their acks are refused (the channel closed), never applied to
            // another message. A failed message's copy is not moved now (moves still
            // under way are dropped): the original comes back.
            let deadline = crate::deadline::deadline_after(cfg.handler_timeout);
            while handlers_running > 0
                && let Ok(Some(done)) = tokio::time::timeout_at(deadline, running.next()).await
            {
                if matches!(done, Done::Handled { .. } | Done::Skipped { .. }) {
                    handlers_running -= 1;
                    self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    metrics.in_flight.decrement(1.0);
                }
            }
        }
        // Handlers abandoned at a deadline no longer count as running.
        self.stats
            .in_flight
            .fetch_sub(handlers_running, Ordering::Relaxed);
        metrics.in_flight.decrement(handlers_running as f64);
        acker.flush();
        // Buffered deliveries that never started, and any handler abandoned at a
        // deadline, go back to the queue with the channel.
        let _ = channel.close().await;
        if matches!(end, SessionEnd::Shutdown) {
            tracing::info!(queue = %queue, "consumer stopped");
        }
        end
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
