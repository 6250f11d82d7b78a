//! The reliable consumer: manual acks, bounded concurrency, retries through delay tiers,
//! a dead-letter queue with failure headers, idempotency, recovery, graceful shutdown.
//!
//! Handlers run as futures polled by the consumer's own task (no task per message), at
//! most `concurrency` at once. A panic or a timeout in a handler is a transient failure
//! of that message, never of the consumer. Every message ends acked (handled, skipped as
//! a duplicate, or moved to a wait queue or the dead-letter queue by a confirmed
//! publish), or returned to the queue when the channel closes: nothing is dropped.
//!
//! A move that fails (the wait queue or the dead-letter queue is missing, the broker
//! refuses the copy) is tried again after a growing, jittered pause while the original
//! stays unacknowledged. It is never requeued at once: on a quorum queue each requeue
//! spends one of the message's `x-delivery-limit` deliveries, and a queue without a
//! dead-letter exchange drops the message past the limit. Only when the channel goes
//! (shutdown, connection loss) does the broker get the original back.

mod acker;
mod handler;
mod invocation;
mod pause;
pub(crate) mod retry;
mod stats;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lepus_amqp::{ConsumeOptions, ErrorKind as AmqpErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use handler::{Handler, HandlerError, Incoming, IntoOutcome, Outcome};
pub use retry::RetryPolicy;
pub use stats::{ConsumerSnapshot, ConsumerStats};

use crate::backoff::{Backoff, ReconnectPolicy};
use crate::client::{Client, Role};
use crate::error::{Error, ErrorKind, Result};
use crate::failure::{self, REASON_REJECTED, REASON_RETRIES_EXHAUSTED};
use crate::idempotency::IdempotencyStore;
use crate::message::Message;
use crate::observability::metrics::ConsumeMetrics;
use crate::publisher::{Publisher, PublisherOptions};
use acker::Acker;
use invocation::{Invocation, handle_span};
use pause::Pauses;
use retry::{Failure, failure_headers};

/// Unacknowledged deliveries the broker may send ahead.
pub const DEFAULT_PREFETCH: u16 = 100;
/// Handlers running at once.
pub const DEFAULT_CONCURRENCY: usize = 1;
/// How long one handler invocation may run.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for running handlers.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive acks sent as one `basic.ack` with `multiple` (when order allows).
pub const DEFAULT_ACK_BATCH: usize = 50;
/// The longest a finished message waits for its ack to be sent with others.
pub const ACK_LINGER: Duration = Duration::from_millis(5);
/// RabbitMQ's default `consumer_timeout` (30 minutes): a delivery unacked longer closes
/// the channel.
pub const BROKER_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The first pause's ceiling before a failed move to a wait queue or the dead-letter
/// queue is tried again; later ceilings double up to [`MOVE_RETRY_MAX_PAUSE`].
pub const MOVE_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The largest pause between attempts to move a failed message.
pub const MOVE_RETRY_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Builds a [`Consumer`].
#[derive(Clone)]
#[must_use]
pub struct ConsumerBuilder {
    client: Client,
    queue: String,
    name: String,
    prefetch: u16,
    concurrency: usize,
    handler_timeout: Duration,
    shutdown_timeout: Duration,
    ack_batch: usize,
    retry: RetryPolicy,
    declare_retry_queues: bool,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    broker_consumer_timeout: Duration,
}

impl ConsumerBuilder {
    /// The name written into dead-lettered messages' headers and used in consumer tags.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Unacknowledged deliveries the broker may send ahead (default 100).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Handlers running at once (default 1, which also keeps acks in order and batched).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How long one handler invocation may run before it counts as a failure.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// How long shutdown waits for running handlers.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Consecutive acks combined into one `basic.ack` with `multiple`.
    pub fn ack_batch(mut self, batch: usize) -> Self {
        self.ack_batch = batch.max(1);
        self
    }

    /// How failures are retried and where messages are dead-lettered.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether the consumer declares its wait queues and dead-letter queue itself on
    /// every subscribe (default true; turn off if they are declared elsewhere).
    pub fn declare_retry_queues(mut self, declare: bool) -> Self {
        self.declare_retry_queues = declare;
        self
    }

    /// Skips messages whose `message_id` the store has seen, and records handled ones.
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency = Some(Arc::new(store));
        self
    }

    /// Skips seen messages using a store shared with others.
    pub fn idempotency_shared(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(store);
        self
    }

    /// The broker's `consumer_timeout`, if not RabbitMQ's default of 30 minutes: handlers
    /// running close to it are logged.
    pub fn broker_consumer_timeout(mut self, timeout: Duration) -> Self {
        self.broker_consumer_timeout = timeout;
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<Consumer> {
        if self.queue.is_empty() || self.queue.len() > 255 {
            return Err(Error::new(
                ErrorKind::Config,
                "a consumer needs a queue name of 1 to 255 bytes",
            ));
        }
        if self.handler_timeout >= self.broker_consumer_timeout {
            tracing::warn!(
                queue = %self.queue,
                handler_timeout = ?self.handler_timeout,
                broker_consumer_timeout = ?self.broker_consumer_timeout,
                "handler timeout is not below the broker's consumer timeout: the broker may close the channel first"
            );
        }
        let stats = Arc::new(ConsumerStats::new(self.retry.delays.len()));
        Ok(Consumer {
            config: Arc::new(self),
            stats,
        })
    }
}

/// Consumes one queue with a [`Handler`].
///
/// ```no_run
/// # async fn demo(client: lepus::Client) -> lepus::Result<()> {
/// use lepus::{Consumer, HandlerError, Incoming, RetryPolicy};
/// use lepus::CancellationToken;
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// let consumer = Consumer::builder(&client, "orders")
///     .name("inventory")
///     .prefetch(50)
///     .concurrency(8)
///     .retry(RetryPolicy::default())
///     .build()?;
/// let shutdown = CancellationToken::new();
/// consumer
///     .run(
///         |msg: Incoming| async move {
///             let order: Order = msg.json()?;
///             if order.id == 0 {
///                 return Err(HandlerError::permanent("order id 0"));
///             }
///             Ok(())
///         },
///         shutdown,
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consumer {
    config: Arc<ConsumerBuilder>,
    stats: Arc<ConsumerStats>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.config.queue)
            .field("name", &self.config.name)
            .field("stats", &self.stats)
            .finish()
    }
}

enum SessionEnd {
    Shutdown,
    Lost(Error),
    Cancelled(Error),
}

/// What a running handler (or a republish) finished with.
enum Done {
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

type Running = Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

impl Consumer {
    /// Starts building a consumer of `queue` (a name, or a server-named queue's alias) on
    /// `client`'s consuming connection.
    pub fn builder(client: &Client, queue: impl Into<String>) -> ConsumerBuilder {
        let queue = queue.into();
        ConsumerBuilder {
            client: client.clone(),
            name: format!("{queue}-consumer"),
            queue,
            prefetch: DEFAULT_PREFETCH,
            concurrency: DEFAULT_CONCURRENCY,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            ack_batch: DEFAULT_ACK_BATCH,
            retry: RetryPolicy::default(),
            declare_retry_queues: true,
            idempotency: None,
            broker_consumer_timeout: BROKER_CONSUMER_TIMEOUT,
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.config.queue
    }

    /// Runs the consumer until `shutdown` is cancelled (or the client closes): subscribes,
    /// handles, resubscribes after connection losses and server-side cancels. On
    /// shutdown it stops taking deliveries, lets running handlers finish (up to the
    /// shutdown timeout), acks them, and returns the rest to the queue.
    pub async fn run<H: Handler>(&self, handler: H, shutdown: CancellationToken) -> Result<()> {
        let cfg = &self.config;
        let handler = Arc::new(handler);
        let shutdown = shutdown.child_token();
        let client_gone = cfg.client.shutdown_token();
        let publisher = Publisher::new(
            &cfg.client,
            PublisherOptions::default()
                .mandatory(true)
                .window(256)
                .buffer(cfg.prefetch as usize * 2 + 16),
        );
        // Shared with every handler invocation: one reference count per message instead
        // of a copy of each handle.
        let metrics = Arc::new(ConsumeMetrics::new(&cfg.queue, cfg.retry.delays.len()));
        let mut pauses = Pauses::new();
        loop {
            if shutdown.is_cancelled() || client_gone.is_cancelled() {
                break;
            }
            let live = tokio::select! {
                live = cfg.client.connection(Role::Consume, Duration::from_secs(5)) => live,
                _ = shutdown.cancelled() => break,
                _ = client_gone.cancelled() => break,
            };
            let live = match live {
                Ok(live) => live,
                Err(err) if err.kind() == ErrorKind::Timeout => continue,
                Err(err) => {
                    // The client failed or closed for good.
                    self.stats.active.store(false, Ordering::Relaxed);
                    let _ = publisher.close(Duration::from_secs(5)).await;
                    return if err.is_closed() { Ok(()) } else { Err(err) };
                }
            };
            let began = Instant::now();
            let subscriptions = self.stats.subscriptions.load(Ordering::Relaxed);
            let end = self
                .session(&live.connection, &handler, &publisher, &shutdown, &metrics)
                .await;
            self.stats.active.store(false, Ordering::Relaxed);
            let subscribed = (self.stats.subscriptions.load(Ordering::Relaxed) != subscriptions)
                .then(|| began.elapsed());
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(err) => {
                    tracing::warn!(queue = %cfg.queue, error = %err, "consumer lost its channel; resubscribing");
                }
                SessionEnd::Cancelled(err) => {
                    tracing::warn!(queue = %cfg.queue, error = %err, "broker cancelled the consumer; redeclaring and resubscribing");
                    if let Err(e) = cfg.client.redeclare(Role::Consume).await {
                        tracing::warn!(error = %e, "redeclaring the topology failed");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pauses.after(subscribed)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        publisher.close(cfg.shutdown_timeout).await.map_err(|e| {
            Error::new(
                ErrorKind::Timeout,
                format!("retry publisher did not drain: {e}"),
            )
        })
    }

    /// Runs the consumer on its own task.
    pub fn spawn<H: Handler>(
        &self,
        handler: H,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let me = self.clone();
        tokio::spawn(async move { me.run(handler, shutdown).await })
    }

    async fn session<H: Handler>(
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
        // The first handler in flight lives here, unboxed, and the rest (concurrency
        // above 1) and the moves of failed messages in `running`: at concurrency 1,
        // the default, a message costs no allocation and no task node of its own.
        let mut inline = std::pin::pin!(None);
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
                if running.is_empty() && inline.is_none() {
                    break SessionEnd::Shutdown;
                }
                if since.elapsed() >= cfg.shutdown_timeout {
                    let left = running.len() + usize::from(inline.is_some());
                    tracing::warn!(queue = %queue, left, "shutdown deadline passed; unfinished messages go back to the queue");
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
                        tracing::debug!(error = %e, "cancelling the consumer failed");
                    }
                }
                Some(done) = next_done(inline.as_mut(), &mut running), if inline.is_some() || !running.is_empty() => {
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
                        let call = call.run().instrument(span);
                        if inline.is_none() {
                            inline.set(Some(call));
                        } else {
                            running.push(Box::pin(call));
                        }
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
        if !matches!(end, SessionEnd::Shutdown) && (inline.is_some() || !running.is_empty()) {
            // The channel is gone, but handlers already running are let finish (within
            // their timeout): their side effects complete and a success is recorded in
            // the idempotency store (by the invocation), so the broker's redelivery is
            // recognised. Their acks are refused (the channel closed), never applied to
            // another message. A failed message's copy is not moved now (moves still
            // under way are dropped): the original comes back.
            let deadline = crate::deadline::deadline_after(cfg.handler_timeout);
            while handlers_running > 0
                && let Ok(Some(done)) =
                    tokio::time::timeout_at(deadline, next_done(inline.as_mut(), &mut running))
                        .await
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

    /// Applies a finished handler or move; may start a move.
    fn settle(&self, done: Done, s: Settling<'_>) -> Option<Running> {
        let cfg = &self.config;
        match done {
            Done::Skipped { incoming } => {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                s.metrics.deduplicated.increment(1);
                s.acker.ack(incoming.delivery.delivery_tag());
                None
            }
            Done::Handled {
                incoming,
                outcome: Outcome::Ack,
                ..
            } => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                s.metrics.acked.increment(1);
                s.acker.ack(incoming.delivery.delivery_tag());
                None
            }
            Done::Handled {
                incoming,
                outcome,
                failures,
                span,
            } => {
                let headers = incoming.headers();
                let failed_attempts = failure::count(headers, failure::ATTEMPTS_HEADER)
                    .unwrap_or(0)
                    .saturating_add(failures);
                let retries =
                    failure::count(headers, failure::RETRIES_HEADER).unwrap_or(0) as usize;
                let (reason, error, tier) = match &outcome {
                    Outcome::Retry(error) if retries < cfg.retry.delays.len() => {
                        (None, error.clone(), retries)
                    }
                    Outcome::Retry(error) => {
                        (Some(REASON_RETRIES_EXHAUSTED), error.clone(), retries)
                    }
                    Outcome::DeadLetter(error) => (Some(REASON_REJECTED), error.clone(), retries),
                    Outcome::Ack => (None, String::new(), retries),
                };
                let target = match reason {
                    None => cfg.retry.wait_queue(s.queue, tier),
                    Some(_) => cfg.retry.dlq(s.queue),
                };
                let failure = Failure {
                    failed_attempts,
                    retries: u32::try_from(tier + usize::from(reason.is_none()))
                        .unwrap_or(u32::MAX),
                    error: &error,
                    queue: s.queue,
                    exchange: incoming.exchange(),
                    routing_key: incoming.routing_key(),
                    consumer: &cfg.name,
                    dead_letter_reason: reason,
                };
                let mut copy = Message::new("", target, incoming.body().clone());
                *copy.properties_mut() = incoming
                    .properties()
                    .clone()
                    .with_headers(failure_headers(headers, &failure));
                let mv = Move {
                    incoming,
                    dead_lettered: reason.is_some(),
                    tier,
                    pauses: None,
                    span,
                };
                Some(mv.start(s.publisher.clone(), copy, None))
            }
            Done::Moved { result: Ok(()), mv } => {
                if mv.dead_lettered {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    s.metrics.dead_lettered.increment(1);
                    tracing::warn!(message_id = ?mv.incoming.message_id(), "message dead-lettered");
                } else if let Some(counter) = self.stats.retried.get(mv.tier) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = s.metrics.retried.get(mv.tier) {
                        c.increment(1);
                    }
                }
                s.acker.ack(mv.incoming.delivery.delivery_tag());
                None
            }
            Done::Moved {
                result: Err((error, copy)),
                mut mv,
            } => {
                let tag = mv.incoming.delivery.delivery_tag();
                self.stats.move_failures.fetch_add(1, Ordering::Relaxed);
                s.acker.hold(tag);
                if s.shutdown.is_cancelled() {
                    // Held until the channel closes, which gives it back to the queue.
                    tracing::warn!(error = %error, "moving a failed message failed during shutdown; it goes back to the queue");
                    return None;
                }
                let held = s.acker.age(tag).unwrap_or_default();
                if held >= cfg.broker_consumer_timeout / 2 {
                    // Before the broker closes the channel over it (and every other
                    // message on it): one requeue, not a loop of them.
                    tracing::error!(error = %error, ?held, "moving a failed message kept failing; returning it to the queue");
                    s.acker.nack_requeue(tag);
                    return None;
                }
                let pauses = mv.pauses.get_or_insert_with(|| {
                    ReconnectPolicy::default()
                        .initial_delay(MOVE_RETRY_FIRST_PAUSE)
                        .max_delay(MOVE_RETRY_MAX_PAUSE)
                        .delays()
                });
                let pause = pauses.next().unwrap_or(MOVE_RETRY_MAX_PAUSE);
                tracing::warn!(error = %error, ?pause, message_id = ?mv.incoming.message_id(), "moving a failed message failed; holding it and trying again");
                Some(mv.start(
                    s.publisher.clone(),
                    *copy,
                    Some((pause, s.shutdown.clone())),
                ))
            }
        }
    }
}

/// What settling a finished future needs from its session.
struct Settling<'a> {
    acker: &'a mut Acker,
    publisher: &'a Publisher,
    queue: &'a str,
    metrics: &'a ConsumeMetrics,
    shutdown: &'a CancellationToken,
}

/// A failed message on its way to a wait queue or the dead-letter queue.
struct Move {
    incoming: Incoming,
    dead_lettered: bool,
    tier: usize,
    /// The pauses before further attempts, once one failed.
    pauses: Option<Backoff>,
    span: tracing::Span,
}

impl Move {
    /// Publishes `copy` (after `wait`'s pause, unless shutdown comes first), inside the
    /// message's span so the copy continues its trace.
    fn start(
        self,
        publisher: Publisher,
        copy: Message,
        wait: Option<(Duration, CancellationToken)>,
    ) -> Running {
        let span = self.span.clone();
        Box::pin(
            async move {
                if let Some((pause, shutdown)) = wait {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {
                            let stopped = Error::new(ErrorKind::Closed, "consumer shutting down");
                            return Done::Moved { result: Err((stopped, Box::new(copy))), mv: self };
                        }
                    }
                }
                let result = publisher
                    .publish(copy)
                    .await
                    .map_err(|e| (e.error, e.message));
                Done::Moved { result, mv: self }
            }
            .instrument(span),
        )
    }
}

/// The next finished handler or move: the unboxed one in `inline` (emptied when it
/// finishes), else one of `running`; `None` when there is none at all.
fn next_done<'a, F: Future<Output = Done>>(
    mut inline: Pin<&'a mut Option<F>>,
    running: &'a mut FuturesUnordered<Running>,
) -> impl Future<Output = Option<Done>> + 'a {
    std::future::poll_fn(move |cx| {
        if let Some(call) = inline.as_mut().as_pin_mut()
            && let std::task::Poll::Ready(done) = call.poll(cx)
        {
            inline.set(None);
            return std::task::Poll::Ready(Some(done));
        }
        match running.poll_next_unpin(cx) {
            std::task::Poll::Ready(Some(done)) => std::task::Poll::Ready(Some(done)),
            std::task::Poll::Ready(None) if inline.is_some() => std::task::Poll::Pending,
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
