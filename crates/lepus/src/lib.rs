//! lepus: RabbitMQ for services that must not crash, hang or lose messages.
//!
//! - [`Client`]: supervised connections (publish and consume apart), multi-host failover,
//!   exponential backoff with full jitter, fail-fast on errors retrying cannot fix, and a
//!   [`Topology`] declared again after every reconnect.
//! - A channel pool for short operations, with deadlines and leak warnings.
//! - [`Publisher`]: confirms, a bounded window and outage buffer, republish after
//!   reconnect, mandatory returns as errors, and every failure hands the message back.
//! - [`Consumer`]: manual acks, bounded concurrency, panics and timeouts as failures,
//!   immediate retries, delay tiers, a dead-letter queue with failure headers,
//!   idempotency by `message_id`, recovery, and graceful shutdown.
//!
//! The engine underneath is [`lepus_amqp`], re-exported as [`amqp`].

pub use lepus_amqp as amqp;
/// Cancels consumers and services; re-exported so applications need not depend on
/// `tokio-util` themselves.
pub use tokio_util::sync::CancellationToken;

mod backoff;
mod client;
mod consumer;
mod deadline;
mod error;
mod idempotency;
mod message;
pub mod observability;
mod pool;
mod publisher;
mod supervisor;
mod topology;

pub use backoff::{
    Backoff, DEFAULT_HEALTHY_AFTER, DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY, ReconnectPolicy,
};
pub use client::{Client, ClientBuilder, Role};
pub use consumer::{
    ATTEMPTS_HEADER, BROKER_CONSUMER_TIMEOUT, CONSUMER_HEADER, Consumer, ConsumerBuilder,
    ConsumerStats, DEFAULT_ACK_BATCH, DEFAULT_CONCURRENCY, DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_PREFETCH, DEFAULT_SHUTDOWN_TIMEOUT, FIRST_FAILURE_HEADER, Handler, HandlerError,
    Incoming, IntoOutcome, LAST_ERROR_HEADER, LAST_FAILURE_HEADER, ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_QUEUE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, Outcome, REASON_HEADER, RETRIES_HEADER,
    RetryPolicy,
};
pub use error::{Error, ErrorKind, Result};
pub use idempotency::{
    DEFAULT_MEMORY_CAPACITY, DEFAULT_TTL, IdempotencyStore, MemoryStore, SqliteStore,
};
pub use message::Message;
pub use pool::{DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_LEAK_THRESHOLD, DEFAULT_POOL_SIZE, PooledChannel};
pub use publisher::{
    Confirm, DEFAULT_BUFFER, DEFAULT_NACK_RETRIES, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_WINDOW,
    PublishError, PublishResult, Publisher, PublisherOptions, PublisherStats,
};
pub use supervisor::{ConnectionState, Live};
pub use topology::{
    Binding, BindingDef, Definitions, Exchange, ExchangeDef, Overflow, Queue, QueueDef, QueueType,
    Topology, TopologyFailure, TopologyReport, json_to_table, table_to_json,
};
