//! The reliable publisher: a publish that returns `Ok` means the broker took the message.
//!
//! One task owns the channel. Callers hand it messages through a queue bounded by a
//! semaphore (the outage buffer) and get a future that resolves on the broker's confirm.
//! The task publishes up to `window` unconfirmed messages, keeps each until its confirm,
//! and when the connection dies puts the unconfirmed ones back at the front of the queue,
//! in order, so they go out again (before anything newer) on the next connection. A
//! message therefore reaches the broker at least once; every failure hands it back.
//!
//! What counts as a failure is decided per cause (see `task`): a nack is retried with a
//! growing pause until the publish timeout, a lost channel or connection is not a failure
//! at all, and a publish the broker refuses (closing the channel over it) fails alone and
//! at once, with the broker's reply.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Role};
use crate::error::{Error, ErrorKind};
use crate::message::Message;
use crate::observability::metrics as m;
use crate::observability::trace;

mod culprit;
mod options;
mod task;

pub use options::{
    DEFAULT_BUFFER, DEFAULT_NACK_RETRIES, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_WINDOW, PublishError,
    PublishResult, PublisherOptions,
};

use task::Task;

/// The name of the span of one publish, from `send` to the broker's confirm.
pub(crate) const PUBLISH_SPAN: &str = "publish";
/// The target of the publish span.
pub(crate) const SPAN_TARGET: &str = "lepus::publisher";

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
    /// Channels given up because nothing was confirmed for the stall timeout.
    pub stalls: AtomicU64,
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
    message_id: IdText,
}

impl Confirm {
    /// The message's id (the one given, or the UUIDv7 the publisher assigned).
    pub fn message_id(&self) -> &str {
        self.message_id.as_str()
    }
}

/// The bytes of a hyphenated UUID, the id the publisher assigns.
const INLINE_ID: usize = 36;

/// A copy of a message id, kept without an allocation when it is no longer than a UUID
/// (every id the publisher assigns): one less allocation, and free on another thread,
/// per message.
enum IdText {
    Inline { bytes: [u8; INLINE_ID], len: u8 },
    Heap(String),
}

impl IdText {
    fn new(id: &str) -> IdText {
        let mut bytes = [0u8; INLINE_ID];
        match (bytes.get_mut(..id.len()), u8::try_from(id.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(id.as_bytes());
                IdText::Inline { bytes, len }
            }
            _ => IdText::Heap(id.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so always valid UTF-8.
            IdText::Inline { bytes, len } => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            IdText::Heap(id) => id,
        }
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
            delayed: Vec::new(),
            probe: 0,
            renew: None,
            progress: Instant::now(),
            stalls: 0,
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
        let message_id = IdText::new(message.message_id().unwrap_or_default());
        self.enqueue(message, Reply::Wait(tx), deadline, permit)?;
        Ok(Confirm { rx, message_id })
    }

    /// Waits for room in the buffer; fails if closed or still full at the deadline.
    async fn admit(&self) -> Result<(Instant, OwnedSemaphorePermit), Error> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the publisher is closed"));
        }
        let deadline = crate::deadline::deadline_after(self.options.publish_timeout);
        // Room in the buffer is the usual case: take it without building a timer.
        if let Ok(permit) = Arc::clone(&self.admit).try_acquire_owned() {
            return Ok((deadline, permit));
        }
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

#[cfg(test)]
mod tests {
    use super::IdText;

    #[test]
    fn a_message_id_reads_back_whatever_its_length() {
        let uuid = "0192f0c1-7d3a-7b8e-9a4f-2c1d5e6f7a8b";
        let long = "é".repeat(100);
        for id in ["", "mine", uuid, &format!("{uuid}x"), &long] {
            assert_eq!(IdText::new(id).as_str(), id);
        }
        assert!(matches!(IdText::new(uuid), IdText::Inline { .. }));
        assert!(matches!(IdText::new(&long), IdText::Heap(_)));
    }
}
