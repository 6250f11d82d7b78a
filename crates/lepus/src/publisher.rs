//! The reliable publisher: a publish that returns `Ok` means the broker took the message.
//!
//! One task owns the channel. Callers hand it messages through a queue bounded by a
//! semaphore (the outage buffer) and get a future that resolves on the broker's confirm.
//! The task publishes up to `window` unconfirmed messages, keeps each until its confirm,
//! and when the connection dies puts the unconfirmed ones back at the front of the queue,
//! in order, so they go out again (before anything newer) on the next connection. A
//! message therefore reaches the broker at least once; every failure hands it back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lepus_amqp::{Channel, Confirmation, PublishConfirm, PublishOptions};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Role};
use crate::error::{Error, ErrorKind};
use crate::message::Message;
use crate::observability::metrics::{self as m, PublishMetrics};
use crate::observability::trace;
use crate::supervisor::Live;

/// The name of the span of one publish, from `send` to the broker's confirm.
pub(crate) const PUBLISH_SPAN: &str = "publish";
/// The target of the publish span.
pub(crate) const SPAN_TARGET: &str = "lepus::publisher";

/// Unconfirmed messages on the wire at once.
pub const DEFAULT_WINDOW: usize = 1000;
/// Messages that may wait (while disconnected, blocked or the window is full).
pub const DEFAULT_BUFFER: usize = 10_000;
/// How long a message may take from `send` to its confirm.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Publisher`] behaves.
#[derive(Debug, Clone)]
#[must_use]
pub struct PublisherOptions {
    window: usize,
    buffer: usize,
    publish_timeout: Duration,
    mandatory: bool,
    nack_retries: u32,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            buffer: DEFAULT_BUFFER,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            mandatory: false,
            nack_retries: 0,
        }
    }
}

impl PublisherOptions {
    /// Unconfirmed messages in flight at once (backpressure beyond).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Messages that may wait for the connection, the broker's unblock, or window room.
    /// Past it, [`Publisher::send`] waits for room until the publish timeout, then fails
    /// with the message handed back.
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer.max(1);
        self
    }

    /// The most a message may take from `send` to confirm.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Publish as `mandatory` by default: unroutable messages fail with
    /// [`ErrorKind::Unroutable`] instead of vanishing.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Republish a nacked message up to this many times before failing it.
    pub fn nack_retries(mut self, retries: u32) -> Self {
        self.nack_retries = retries;
        self
    }
}

/// A failed publish, with the message handed back.
#[derive(Debug)]
pub struct PublishError {
    /// Why.
    pub error: Error,
    /// The message, untouched.
    pub message: Box<Message>,
}

impl PublishError {
    /// The message, to retry or store elsewhere.
    pub fn into_message(self) -> Message {
        *self.message
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publish to '{}' ({}) failed: {}",
            self.message.exchange, self.message.routing_key, self.error
        )
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The result of one publish.
pub type PublishResult = Result<(), PublishError>;

type Callback = Box<dyn FnOnce(PublishResult) + Send>;

enum Reply {
    Wait(oneshot::Sender<PublishResult>),
    Callback(Callback),
}

struct Job {
    /// Boxed: a job moves through several queues, and a message is large.
    msg: Box<Message>,
    reply: Reply,
    deadline: Instant,
    nacks: u32,
    /// When it was last written to a channel, for the confirm latency.
    sent_at: Option<Instant>,
    /// The publish span of a sampled trace: from `send` to the confirm (held, never read).
    _span: tracing::Span,
    _permit: OwnedSemaphorePermit,
}

/// Counters of a publisher.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Messages written to a channel (republishes included).
    pub published: AtomicU64,
    /// Messages confirmed by the broker.
    pub confirmed: AtomicU64,
    /// Nacks received.
    pub nacked: AtomicU64,
    /// Mandatory messages returned as unroutable.
    pub returned: AtomicU64,
    /// Messages republished after a connection loss or a nack.
    pub republished: AtomicU64,
    /// Messages failed back to the caller.
    pub failed: AtomicU64,
    /// Messages waiting to be published.
    pub buffered: AtomicUsize,
    /// Messages published and not yet confirmed.
    pub in_flight: AtomicUsize,
}

struct Shared {
    stats: PublisherStats,
    buffer_gauge: metrics::Gauge,
    in_flight_gauge: metrics::Gauge,
    outstanding: AtomicUsize,
    idle: Notify,
    closing: AtomicBool,
}

impl Shared {
    fn buffered(&self, delta: isize) {
        if delta >= 0 {
            self.stats
                .buffered
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
            self.buffer_gauge.increment(delta as f64);
        } else {
            self.stats
                .buffered
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            self.buffer_gauge.decrement(delta.unsigned_abs() as f64);
        }
    }

    fn in_flight(&self, delta: isize) {
        if delta >= 0 {
            self.stats
                .in_flight
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
            self.in_flight_gauge.increment(delta as f64);
        } else {
            self.stats
                .in_flight
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            self.in_flight_gauge.decrement(delta.unsigned_abs() as f64);
        }
    }

    fn finish(&self, job: Job, result: PublishResult) {
        if result.is_ok() {
            self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        match job.reply {
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Callback(cb) => cb(result),
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn fail(&self, mut job: Job, error: Error) {
        m::publish_failed(&job.msg.exchange, error.kind());
        let message = std::mem::replace(&mut job.msg, Box::new(Message::new("", "", "")));
        self.finish(job, Err(PublishError { error, message }));
    }

    fn succeed(&self, job: Job) {
        self.finish(job, Ok(()));
    }
}

/// Resolves when the broker confirms one message; on failure the message comes back.
#[must_use = "a confirm does nothing unless awaited"]
pub struct Confirm {
    rx: oneshot::Receiver<PublishResult>,
    message_id: String,
}

impl Confirm {
    /// The message's id (the one given, or the UUIDv7 the publisher assigned).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

impl std::future::Future for Confirm {
    type Output = PublishResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PublishResult> {
        // The publisher task always answers (it fails what it cannot publish before its
        // deadline); a dropped sender means the task is gone, which only a panic in it
        // could cause, and then the message is lost to us: report it plainly.
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(PublishError {
                    error: Error::new(ErrorKind::Closed, "the publisher stopped"),
                    message: Box::new(Message::new("", "", "")),
                })
            })
        })
    }
}

/// Publishes with confirms, a bounded window, an outage buffer and republish after
/// reconnect. Cheap to clone; all clones feed one task.
///
/// ```no_run
/// # async fn demo(client: lepus::Client) -> Result<(), lepus::PublishError> {
/// use lepus::{Message, Publisher, PublisherOptions};
///
/// let publisher = Publisher::new(&client, PublisherOptions::default().mandatory(true));
/// publisher.publish(Message::new("shop", "order.created", r#"{"id":1}"#)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Job>,
    admit: Arc<Semaphore>,
    shared: Arc<Shared>,
    options: PublisherOptions,
    stop: CancellationToken,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("options", &self.options)
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl Publisher {
    /// Starts a publisher on `client`'s publishing connection.
    pub fn new(client: &Client, options: PublisherOptions) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            stats: PublisherStats::default(),
            buffer_gauge: m::buffer_depth(),
            in_flight_gauge: m::in_flight(),
            outstanding: AtomicUsize::new(0),
            idle: Notify::new(),
            closing: AtomicBool::new(false),
        });
        let stop = client.shutdown_token().child_token();
        let task = Task {
            rx,
            waiting: VecDeque::new(),
            inflight: VecDeque::new(),
            channel: None,
            blocked: None,
            live: client.watch_connection(Role::Publish),
            metrics: std::collections::HashMap::new(),
            last_metrics: None,
            shared: Arc::clone(&shared),
            options: options.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(task.run());
        Publisher {
            tx,
            admit: Arc::new(Semaphore::new(options.buffer)),
            shared,
            options,
            stop,
        }
    }

    /// Queues `message` and returns a future for its confirm. Waits only for room in the
    /// buffer, up to the publish timeout.
    pub async fn send(&self, mut message: Message) -> Result<Confirm, PublishError> {
        message.stamp();
        let (deadline, permit) = match self.admit().await {
            Ok(admitted) => admitted,
            Err(error) => {
                return Err(PublishError {
                    error,
                    message: Box::new(message),
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        let message_id = message.message_id().unwrap_or_default().to_owned();
        self.enqueue(message, Reply::Wait(tx), deadline, permit)?;
        Ok(Confirm { rx, message_id })
    }

    /// Waits for room in the buffer; fails if closed or still full at the deadline.
    async fn admit(&self) -> Result<(Instant, OwnedSemaphorePermit), Error> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the publisher is closed"));
        }
        let deadline = Instant::now() + self.options.publish_timeout;
        match tokio::time::timeout_at(deadline, Arc::clone(&self.admit).acquire_owned()).await {
            Ok(Ok(permit)) => Ok((deadline, permit)),
            Ok(Err(_)) => Err(Error::new(ErrorKind::Closed, "the publisher is closed")),
            Err(_) => Err(Error::new(
                ErrorKind::BufferFull,
                format!(
                    "publish buffer of {} messages stayed full for {:?}",
                    self.options.buffer, self.options.publish_timeout
                ),
            )),
        }
    }

    fn enqueue(
        &self,
        message: Message,
        reply: Reply,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), PublishError> {
        let mut message = message;
        // The attributes are recorded only once the trace is known to be sampled: the
        // span of an unsampled trace goes nowhere, and building them for every message
        // would cost more than the rest of the span.
        let mut span = tracing::info_span!(
            target: SPAN_TARGET,
            PUBLISH_SPAN,
            otel.kind = "producer",
            messaging.system = tracing::field::Empty,
            messaging.operation = tracing::field::Empty,
            messaging.destination.name = tracing::field::Empty,
            messaging.rabbitmq.destination.routing_key = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            // Outside any trace (an outbox relay, say), a message that already carries a
            // `traceparent` continues that trace instead of starting a new one.
            if !trace::in_trace(&tracing::Span::current()) {
                trace::set_parent_from(&span, message.properties.headers().as_ref());
            }
            match trace::injected(&span, message.properties.headers().as_ref()) {
                Some(headers) => {
                    message.properties =
                        std::mem::take(&mut message.properties).with_headers(headers);
                    span.record("messaging.system", "rabbitmq");
                    span.record("messaging.operation", "publish");
                    span.record("messaging.destination.name", message.exchange.as_str());
                    span.record(
                        "messaging.rabbitmq.destination.routing_key",
                        message.routing_key.as_str(),
                    );
                    span.record(
                        "messaging.message.id",
                        message.message_id().unwrap_or_default(),
                    );
                }
                // Not sampled: nobody will see the span, so it ends here, on the thread
                // that made it, instead of living (and being freed elsewhere) until the
                // confirm.
                None => span = tracing::Span::none(),
            }
        }
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        self.shared.buffered(1);
        let job = Job {
            msg: Box::new(message),
            reply,
            deadline,
            nacks: 0,
            sent_at: None,
            _span: span,
            _permit: permit,
        };
        self.tx.send(job).map_err(|mpsc::error::SendError(job)| {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.shared.buffered(-1);
            PublishError {
                error: Error::new(ErrorKind::Closed, "the publisher is closed"),
                message: job.msg,
            }
        })
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(&self, message: Message) -> PublishResult {
        self.send(message).await?.await
    }

    /// Publishes many messages pipelined; one result per message, in order.
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Vec<PublishResult> {
        let mut confirms = Vec::new();
        for message in messages {
            confirms.push(self.send(message).await);
        }
        let mut results = Vec::with_capacity(confirms.len());
        for confirm in confirms {
            results.push(match confirm {
                Ok(c) => c.await,
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Queues `message`; `callback` runs (on the publisher's task: keep it short) with
    /// the outcome. Waits only for room in the buffer.
    pub async fn send_with_callback(
        &self,
        mut message: Message,
        callback: impl FnOnce(PublishResult) + Send + 'static,
    ) -> Result<(), PublishError> {
        message.stamp();
        match self.admit().await {
            Ok((deadline, permit)) => self.enqueue(
                message,
                Reply::Callback(Box::new(callback)),
                deadline,
                permit,
            ),
            Err(error) => Err(PublishError {
                error,
                message: Box::new(message),
            }),
        }
    }

    /// Waits until every message sent so far is confirmed or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            loop {
                let idle = self.shared.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.shared.outstanding.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} messages still unconfirmed after {timeout:?}",
                    self.shared.outstanding.load(Ordering::Acquire)
                ),
            )
        })
    }

    /// Stops taking messages, waits (up to `timeout`) for those in flight, then stops.
    /// Whatever is left is failed back to its caller.
    pub async fn close(&self, timeout: Duration) -> Result<(), Error> {
        self.shared.closing.store(true, Ordering::Release);
        let flushed = self.flush(timeout).await;
        self.stop.cancel();
        flushed
    }

    /// Counters.
    pub fn stats(&self) -> &PublisherStats {
        &self.shared.stats
    }
}

struct Task {
    rx: mpsc::UnboundedReceiver<Job>,
    last_metrics: Option<(String, PublishMetrics)>,
    metrics: std::collections::HashMap<String, PublishMetrics>,
    waiting: VecDeque<Job>,
    inflight: VecDeque<(Job, PublishConfirm)>,
    channel: Option<(u64, Channel)>,
    blocked: Option<watch::Receiver<Option<String>>>,
    live: watch::Receiver<Option<Live>>,
    shared: Arc<Shared>,
    options: PublisherOptions,
    stop: CancellationToken,
}

// Transient: built and matched at once, never stored, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Job(Option<Job>),
    Confirmed(lepus_amqp::Result<Confirmation>),
    Changed,
    Deadline,
    Stop,
}

impl Task {
    async fn run(mut self) {
        loop {
            self.settle_ready();
            self.ensure_channel().await;
            self.publish_waiting().await;
            self.expire();
            let event = self.next_event().await;
            match event {
                Event::Job(Some(job)) => self.waiting.push_back(job),
                Event::Job(None) | Event::Stop => break,
                Event::Confirmed(outcome) => {
                    if let Some((job, _)) = self.inflight.pop_front() {
                        self.shared.in_flight(-1);
                        if let Some(lost) = self.settle(job, outcome, Instant::now()) {
                            self.requeue_inflight(Some(lost));
                        }
                    }
                }
                Event::Changed | Event::Deadline => {}
            }
        }
        self.shutdown().await;
    }

    fn is_blocked(&self) -> bool {
        self.blocked.as_ref().is_some_and(|b| b.borrow().is_some())
    }

    async fn next_event(&mut self) -> Event {
        let next_deadline = self
            .waiting
            .front()
            .map(|j| j.deadline)
            .into_iter()
            .chain(self.inflight.front().map(|(j, _)| j.deadline))
            .min();
        let inflight = &mut self.inflight;
        let front_confirm = std::future::poll_fn(|cx| match inflight.front_mut() {
            Some((_, confirm)) => Pin::new(confirm).poll(cx),
            None => Poll::Pending,
        });
        let blocked = async {
            match self.blocked.as_mut() {
                Some(b) => {
                    let _ = b.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Event::Stop,
            outcome = front_confirm => Event::Confirmed(outcome),
            job = self.rx.recv() => Event::Job(job),
            _ = self.live.changed() => Event::Changed,
            _ = blocked => Event::Changed,
            _ = deadline => Event::Deadline,
        }
    }

    /// Resolves every confirm at the front that is already in.
    fn settle_ready(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        // One clock read for the confirm latencies of everything settled here (a
        // `multiple` ack settles many).
        let mut now = None;
        while let Some((_, confirm)) = self.inflight.front_mut() {
            let outcome = match Pin::new(confirm).poll(&mut cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => break,
            };
            let Some((job, _)) = self.inflight.pop_front() else {
                break;
            };
            self.shared.in_flight(-1);
            let now = *now.get_or_insert_with(Instant::now);
            if let Some(lost) = self.settle(job, outcome, now) {
                self.requeue_inflight(Some(lost));
                break;
            }
        }
    }

    /// Applies one confirm outcome; hands the job back if the channel was lost.
    /// Runs `f` with the metric handles of `exchange`, registering them on first use.
    /// The last exchange's handles are kept at hand: most publishers use one or two.
    fn with_metrics(&mut self, exchange: &str, f: impl FnOnce(&PublishMetrics)) {
        if let Some((last, handles)) = &self.last_metrics
            && last == exchange
        {
            return f(handles);
        }
        if let Some(handles) = self.metrics.get(exchange) {
            self.last_metrics = Some((exchange.to_owned(), handles.clone()));
        }
        match self.metrics.get(exchange) {
            Some(handles) => f(handles),
            None => {
                let handles = PublishMetrics::new(exchange);
                f(&handles);
                self.metrics.insert(exchange.to_owned(), handles);
            }
        }
    }

    fn settle(
        &mut self,
        job: Job,
        outcome: lepus_amqp::Result<Confirmation>,
        now: Instant,
    ) -> Option<Job> {
        match outcome {
            Ok(Confirmation::Nack) => {
                self.shared.stats.nacked.fetch_add(1, Ordering::Relaxed);
                self.with_metrics(&job.msg.exchange, |m| m.nacked.increment(1));
                self.retry_nack(job);
            }
            Ok(Confirmation::Returned(ret)) => {
                self.shared.stats.returned.fetch_add(1, Ordering::Relaxed);
                self.with_metrics(&job.msg.exchange, |m| m.returned.increment(1));
                let error = Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "unroutable: {} {} (exchange '{}', routing key '{}')",
                        ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key
                    ),
                );
                self.shared.fail(job, error);
            }
            Ok(_) => {
                let latency = job
                    .sent_at
                    .map(|at| now.saturating_duration_since(at).as_secs_f64());
                self.with_metrics(&job.msg.exchange, |m| {
                    m.confirmed.increment(1);
                    if let Some(latency) = latency {
                        m.latency.record(latency);
                    }
                });
                self.shared.succeed(job);
            }
            // The channel or connection died before the confirm: this one and everything
            // after it goes out again.
            Err(_) => return Some(job),
        }
        None
    }

    fn retry_nack(&mut self, mut job: Job) {
        if job.nacks < self.options.nack_retries {
            job.nacks += 1;
            self.shared
                .stats
                .republished
                .fetch_add(1, Ordering::Relaxed);
            self.shared.buffered(1);
            self.waiting.push_back(job);
        } else {
            self.shared.fail(
                job,
                Error::new(
                    ErrorKind::Nacked,
                    "the broker refused the message (basic.nack)",
                ),
            );
        }
    }

    /// Puts `first` and every unconfirmed message back in front of the waiting ones, in
    /// publish order, and drops the channel.
    fn requeue_inflight(&mut self, first: Option<Job>) {
        self.channel = None;
        self.blocked = None;
        let mut cx = Context::from_waker(Waker::noop());
        let mut back: Vec<Job> = first.into_iter().collect();
        while let Some((job, mut confirm)) = self.inflight.pop_front() {
            self.shared.in_flight(-1);
            // A confirm that made it in before the loss still counts.
            match Pin::new(&mut confirm).poll(&mut cx) {
                Poll::Ready(Ok(Confirmation::Ack)) => self.shared.succeed(job),
                _ => back.push(job),
            }
        }
        for job in back.into_iter().rev() {
            self.requeue_front(job);
        }
    }

    fn requeue_front(&mut self, job: Job) {
        self.shared
            .stats
            .republished
            .fetch_add(1, Ordering::Relaxed);
        self.shared.buffered(1);
        self.waiting.push_front(job);
    }

    async fn ensure_channel(&mut self) {
        if let Some((_, ch)) = &self.channel {
            if ch.is_open() {
                return;
            }
            self.requeue_inflight(None);
        }
        let live = self.live.borrow_and_update().clone();
        let Some(live) = live else { return };
        if !live.connection.is_open() {
            return;
        }
        let opened = async {
            let ch = live.connection.open_channel().await?;
            ch.confirm_select().await?;
            Ok::<_, lepus_amqp::Error>(ch)
        };
        match opened.await {
            Ok(ch) => {
                tracing::debug!(generation = live.generation, "publisher channel open");
                self.blocked = Some(live.connection.blocked());
                self.channel = Some((live.generation, ch));
            }
            Err(err) => {
                tracing::warn!(error = %err, "publisher could not open a channel; waiting for the next connection")
            }
        }
    }

    async fn publish_waiting(&mut self) {
        while self.inflight.len() < self.options.window && !self.is_blocked() {
            let Some((_, ch)) = &self.channel else { return };
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            self.shared.buffered(-1);
            // One clock read serves the deadline and the confirm latency's start.
            let now = Instant::now();
            if job.deadline <= now {
                let error = Error::new(
                    ErrorKind::Timeout,
                    "not published before the publish timeout",
                );
                self.shared.fail(job, error);
                continue;
            }
            let options = PublishOptions {
                mandatory: job.msg.mandatory.unwrap_or(self.options.mandatory),
            };
            let m = &job.msg;
            match ch
                .basic_publish(&m.exchange, &m.routing_key, options, &m.properties, &m.body)
                .await
            {
                Ok(confirm) => {
                    let mut job = job;
                    job.sent_at = Some(now);
                    self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    self.with_metrics(&job.msg.exchange, |m| m.published.increment(1));
                    self.shared.in_flight(1);
                    self.inflight.push_back((job, confirm));
                }
                Err(err) if err.is_recoverable() => {
                    // Not written: it goes out on the next channel, first.
                    tracing::debug!(error = %err, "publish failed; will retry on a new channel");
                    self.shared.buffered(1);
                    self.waiting.push_front(job);
                    self.requeue_inflight(None);
                    return;
                }
                Err(err) => self.shared.fail(job, Error::from(err)),
            }
        }
    }

    /// Fails waiting messages whose deadline passed, and in-flight ones likewise (their
    /// confirm, if it ever comes, is ignored; the caller may publish again).
    fn expire(&mut self) {
        let now = Instant::now();
        while self.waiting.front().is_some_and(|j| j.deadline <= now) {
            if let Some(job) = self.waiting.pop_front() {
                self.shared.buffered(-1);
                let reason = if self.channel.is_none() {
                    "no connection to the broker before the publish timeout"
                } else if self.is_blocked() {
                    "the broker blocked publishing until the publish timeout"
                } else {
                    "not published before the publish timeout"
                };
                self.shared
                    .fail(job, Error::new(ErrorKind::Timeout, reason));
            }
        }
        while self
            .inflight
            .front()
            .is_some_and(|(j, _)| j.deadline <= now)
        {
            if let Some((job, _)) = self.inflight.pop_front() {
                self.shared.in_flight(-1);
                self.shared.fail(
                    job,
                    Error::new(ErrorKind::Timeout, "no confirm before the publish timeout"),
                );
            }
        }
    }

    async fn shutdown(mut self) {
        self.settle_ready();
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            self.waiting.push_back(job);
        }
        let closed = || {
            Error::new(
                ErrorKind::Closed,
                "the publisher closed before this message was confirmed",
            )
        };
        for (job, _) in self.inflight.drain(..) {
            self.shared.fail(job, closed());
        }
        for job in self.waiting.drain(..) {
            self.shared.fail(job, closed());
        }
        if let Some((_, ch)) = self.channel.take() {
            let _ = ch.close().await;
        }
    }
}
