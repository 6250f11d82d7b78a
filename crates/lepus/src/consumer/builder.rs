//! The consumer's configuration, checked once by [`ConsumerBuilder::build`]; the running
//! consumer shares it read-only with every session.

use std::sync::Arc;
use std::time::Duration;

use super::{Consumer, ConsumerStats, RetryPolicy};
use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::idempotency::IdempotencyStore;

/// Builds a [`Consumer`].
#[derive(Clone)]
#[must_use]
pub struct ConsumerBuilder {
    pub(super) client: Client,
    pub(super) queue: String,
    pub(super) name: String,
    pub(super) prefetch: u16,
    pub(super) concurrency: usize,
    pub(super) handler_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) ack_batch: usize,
    pub(super) retry: RetryPolicy,
    pub(super) declare_retry_queues: bool,
    pub(super) idempotency: Option<Arc<dyn IdempotencyStore>>,
    pub(super) broker_consumer_timeout: Duration,
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
