//! shop: the reference order system lepus is built for, and its demo.
//!
//! Three services, each with its own store ([`db`]: a SQLite file for one instance, a
//! PostgreSQL database its replicas share), connected only through RabbitMQ:
//!
//! - [`order`]: an HTTP API; an order and its `order.created` event commit together
//!   (transactional [`outbox`]), and a relay publishes with confirms.
//! - [`inventory`]: reserves stock once per order, calls a stock dependency under a
//!   timeout and a [`breaker`], decides from a cached snapshot while it is open and
//!   settles those decisions later from a compensation queue (taking the stock for real,
//!   or cancelling the order); announces the decision through its own outbox.
//! - [`notify`]: tells the customer; retries transient failures and dead-letters
//!   permanent ones; tells them again if a reservation is cancelled. Dead letters stay
//!   in their queues for operators ([`deadletter`] only reads them for the report).
//!
//! The [`demo`] runs them under load while killing the broker, closing connections and
//! failing the stock dependency, then checks from the stores that nothing was lost.

pub mod breaker;
pub mod db;
pub mod deadletter;
pub mod dedupe;
pub mod demo;
pub mod events;
pub mod httpc;
pub mod idempotency;
pub mod inventory;
pub mod notify;
pub mod order;
pub mod outbox;
pub mod queues;
pub mod service;
pub mod stock;
pub mod system;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod zones;
