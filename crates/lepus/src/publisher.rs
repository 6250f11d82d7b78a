//! The reliable publisher: a publish that returns `Ok` means the broker took the message.
//!
//! One task owns the channel. Callers hand it messages through a queue bounded by a
//! count of the messages not yet answered (the outage buffer) and get a future that resolves on the broker's confirm.
//! The task publishes up to `window` unconfirmed messages, keeps each until its confirm,
//! and when the connection dies puts the unconfirmed ones back at the front of the queue,
//! in order, so they go out again (before anything newer) on the next connection. A
//! message therefore reaches the broker at least once; every failure hands it back.
//!
//! What counts as a failure is decided per cause (see `task`): a nack is retried with a
//! growing pause until the publish timeout, a lost channel or connection is not a failure
//! at all, a channel that confirms nothing for the stall timeout is given up like a lost
//! one, and a publish the broker refuses (closing the channel over it) fails alone and at
//! once, with the broker's reply.
//!
//! The files: this one is the handle callers hold; `builder` and `options` say how it
//! behaves; `shared` is the bookkeeping the handle and the task share; `task` drives the
//! channel; `confirm`, `error` and `stats` are what callers get back; `span` is the
//! publish span; `culprit` finds the publish a channel close was about.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Role};
use crate::error::{Error, ErrorKind};
use crate::message::Message;

mod builder;
mod confirm;
mod culprit;
mod error;
mod options;
mod queue;
mod shared;
mod span;
mod stats;
mod task;

pub use builder::PublisherBuilder;
pub use confirm::Confirm;
pub use error::{PublishError, PublishResult};
pub use options::{
    DEFAULT_BUFFER, DEFAULT_NACK_RETRIES, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_STALL_TIMEOUT,
    DEFAULT_WINDOW, PublisherOptions,
};
pub use stats::{PublisherSnapshot, PublisherStats};

use queue::{Queue, Sender};
use shared::{Job, Reply, Shared};
use task::Task;

/// Publishes with confirms, a bounded window, an outage buffer and republish after
/// reconnect. Cheap to clone; all clones feed one task.
///
/// ```no_run
/// # async fn demo(client: lepus::Client) -> Result<(), lepus::PublishError> {
/// use lepus::{Message, Publisher};
///
/// let publisher = Publisher::builder(&client).mandatory(true).build();
/// publisher.publish(Message::new("shop", "order.created", r#"{"id":1}"#)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    queue: Arc<Sender>,
    shared: Arc<Shared>,
    options: PublisherOptions,
    stop: CancellationToken,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("options", &self.options)
            .field("stats", &self.shared.stats.snapshot())
            .finish()
    }
}

impl Publisher {
    /// A builder for a publisher on `client`'s publishing connection, with the default
    /// options until set.
    pub fn builder(client: &Client) -> PublisherBuilder {
        PublisherBuilder::new(client)
    }

    /// Starts a publisher on `client`'s publishing connection with `options` (the same
    /// as [`Publisher::builder`] with [`PublisherBuilder::options`]).
    pub fn new(client: &Client, options: PublisherOptions) -> Publisher {
        let queue = Arc::new(Queue::default());
        let shared = Arc::new(Shared::new(options.buffer));
        let stop = client.shutdown_token().child_token();
        let task = Task::new(
            Arc::clone(&queue),
            client.watch_connection(Role::Publish),
            Arc::clone(&shared),
            options.clone(),
            stop.clone(),
        );
        tokio::spawn(task.run());
        Publisher {
            queue: Arc::new(Sender::new(queue)),
            shared,
            options,
            stop,
        }
    }

    /// Queues `message` and returns a future for its confirm. Waits only for room in the
    /// buffer, up to the publish timeout.
    pub async fn send(&self, mut message: Message) -> Result<Confirm, PublishError> {
        message.stamp();
        let deadline = match self.admit().await {
            Ok(deadline) => deadline,
            Err(error) => {
                return Err(PublishError {
                    error,
                    message: Box::new(message),
                });
            }
        };
        let (tx, rx) = oneshot::channel();
        let confirm = Confirm::new(rx, message.message_id().unwrap_or_default());
        self.enqueue(message, Reply::Wait(tx), deadline)?;
        Ok(confirm)
    }

    /// Takes a slot of the buffer, waiting for one if it is full; fails if closed or
    /// still full at the deadline. The message then counts as outstanding.
    async fn admit(&self) -> Result<Instant, Error> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the publisher is closed"));
        }
        let deadline = crate::deadline::deadline_after(self.options.publish_timeout);
        // Room in the buffer is the usual case: take it without building a timer.
        if self.shared.try_take() || self.shared.take(deadline).await {
            return Ok(deadline);
        }
        Err(Error::new(
            ErrorKind::BufferFull,
            format!(
                "publish buffer of {} messages stayed full for {:?}",
                self.options.buffer, self.options.publish_timeout
            ),
        ))
    }

    /// Hands the admitted `message` to the task.
    fn enqueue(
        &self,
        mut message: Message,
        reply: Reply,
        deadline: Instant,
    ) -> Result<(), PublishError> {
        let span = span::publish_span(&mut message);
        let job = Job {
            msg: Box::new(message),
            reply,
            deadline,
            nacks: 0,
            metrics: 0,
            sent_at: None,
            _span: span,
        };
        self.queue.push(job).map_err(|job| {
            self.shared.give_back();
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
            Ok(deadline) => self.enqueue(message, Reply::callback(callback), deadline),
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
                if self.shared.outstanding() == 0 {
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
                    self.shared.outstanding()
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

    /// Counters; [`PublisherStats::snapshot`] reads them.
    pub fn stats(&self) -> &PublisherStats {
        &self.shared.stats
    }
}
