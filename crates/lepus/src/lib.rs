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
//! - [`FailureRecord`]: the `x-lepus-*` headers a failed message carries, written and read
//!   in one place ([`failure`]).
//!
//! The engine underneath is [`lepus_amqp`], re-exported as [`amqp`].
//!
//! # Features
//!
//! Only what a service asks for is built. Without any feature lepus is the client, the
//! publisher, the consumer, the in-memory idempotency store, [`observability::Health`]
//! and metrics through the `metrics` facade (recorded by whatever recorder the
//! application installs).
//!
//! - `otel` (default): W3C trace context through message headers, so a trace crosses the
//!   queue, and `observability::Telemetry`, the one-call log and trace setup. Its items
//!   name `opentelemetry_sdk` types and follow that crate's versions.
//! - `otlp`: `otel`, exporting spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set.
//! - `prometheus`: `observability::install_prometheus`.
//! - `http`: `prometheus`, and `observability::router` and `observability::serve`
//!   (`/metrics`, `/health`) on axum.
//! - `sqlite`: `SqliteStore`, idempotency that survives restarts (bundled SQLite, which
//!   admits one rusqlite version per application).

pub use lepus_amqp as amqp;
/// Cancels consumers and services; re-exported so applications need not depend on
/// `tokio-util` themselves.
pub use tokio_util::sync::CancellationToken;

mod backoff;
mod client;
mod clock;
mod consumer;
mod deadline;
pub mod error;
pub mod failure;
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
    BROKER_CONSUMER_TIMEOUT, Consumer, ConsumerBuilder, ConsumerSnapshot, ConsumerStats,
    DEFAULT_ACK_BATCH, DEFAULT_CONCURRENCY, DEFAULT_HANDLER_TIMEOUT, DEFAULT_PREFETCH,
    DEFAULT_SHUTDOWN_TIMEOUT, Handler, HandlerError, Incoming, IntoOutcome, Outcome, RetryPolicy,
};
pub use failure::FailureRecord;
// The header names live in `failure`; these root names stay for code written before it.
pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use failure::{
    ATTEMPTS_HEADER, CONSUMER_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER, LAST_FAILURE_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_QUEUE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, REASON_HEADER,
    RETRIES_HEADER,
};
#[cfg(feature = "sqlite")]
pub use idempotency::SqliteStore;
pub use idempotency::{DEFAULT_MEMORY_CAPACITY, DEFAULT_TTL, IdempotencyStore, MemoryStore};
pub use message::Message;
pub use pool::{DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_LEAK_THRESHOLD, DEFAULT_POOL_SIZE, PooledChannel};
pub use publisher::{
    Confirm, DEFAULT_BUFFER, DEFAULT_NACK_RETRIES, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_STALL_TIMEOUT,
    DEFAULT_WINDOW, PublishError, PublishResult, Publisher, PublisherBuilder, PublisherOptions,
    PublisherSnapshot, PublisherStats,
};
pub use supervisor::{ConnectionState, Live};
pub use topology::{
    Binding, BindingDef, Definitions, Exchange, ExchangeDef, Overflow, Queue, QueueDef, QueueType,
    Topology, TopologyFailure, TopologyReport, json_to_table, table_to_json,
};
