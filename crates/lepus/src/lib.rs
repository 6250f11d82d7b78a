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
//! - `sqlite`: `idempotency::SqliteStore`, idempotency that survives restarts (bundled
//!   SQLite, which admits one rusqlite version per application).

//! # Where things are
//!
//! The root holds what a service names every day: the client, the publisher, the
//! consumer and its handler types, messages, the topology builders and the error. The
//! rest is grouped: [`defaults`] (every `DEFAULT_*` value), [`failure`] (the failure
//! record and its header names), [`topology`] (definitions JSON, declaration reports),
//! [`idempotency`] (stores), [`stats`] (counters), [`connection`] (a live connection, a
//! pooled channel, backoff delays), [`env`] (the environment variables
//! [`ClientBuilder::from_env`] reads), [`error`] (chains on one line) and
//! [`observability`].

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
pub mod idempotency;
mod message;
pub mod observability;
mod pool;
mod publisher;
mod supervisor;
pub mod topology;

pub use backoff::ReconnectPolicy;
pub use client::{Client, ClientBuilder, Role, env};
pub use consumer::{
    Consumer, ConsumerBuilder, Handler, HandlerError, Incoming, IntoOutcome, Outcome, RetryPolicy,
};
pub use error::{Error, ErrorKind, Result};
pub use failure::FailureRecord;
pub use message::Message;
pub use publisher::{
    Confirm, PublishError, PublishResult, Publisher, PublisherBuilder, PublisherOptions,
};
pub use supervisor::ConnectionState;
pub use topology::{Binding, Exchange, Queue, QueueType, Topology};

/// The default of every setting, in one place: a builder method's documentation names
/// the constant it starts from.
pub mod defaults {
    pub use crate::backoff::{DEFAULT_HEALTHY_AFTER, DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY};
    pub use crate::consumer::{
        BROKER_CONSUMER_TIMEOUT, DEFAULT_ACK_BATCH, DEFAULT_CONCURRENCY, DEFAULT_HANDLER_TIMEOUT,
        DEFAULT_PREFETCH, DEFAULT_SHUTDOWN_TIMEOUT,
    };
    pub use crate::idempotency::{DEFAULT_MEMORY_CAPACITY, DEFAULT_TTL};
    pub use crate::pool::{DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_LEAK_THRESHOLD, DEFAULT_POOL_SIZE};
    pub use crate::publisher::{
        DEFAULT_BUFFER, DEFAULT_NACK_RETRIES, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_STALL_TIMEOUT,
        DEFAULT_WINDOW,
    };
}

/// Counters of a running publisher or consumer, live ([`stats::PublisherStats`],
/// [`stats::ConsumerStats`]) or as plain numbers ([`stats::ConsumerSnapshot`],
/// [`stats::PublisherSnapshot`]).
pub mod stats {
    pub use crate::consumer::{ConsumerSnapshot, ConsumerStats};
    pub use crate::publisher::{PublisherSnapshot, PublisherStats};
}

/// What the client hands out below the publisher and consumer: a live connection
/// ([`Client::connection`]), a pooled channel ([`Client::channel`]) and the delays of a
/// [`ReconnectPolicy`].
pub mod connection {
    pub use crate::backoff::Backoff;
    pub use crate::pool::PooledChannel;
    pub use crate::supervisor::Live;
}
