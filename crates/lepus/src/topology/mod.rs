//! Topology as data: exchanges, queues and bindings, declared on every (re)connect.
//!
//! A failing declaration (say, a queue that exists with other arguments) is reported with
//! the entity named and the broker's reason (which names the argument), and recovery goes
//! on with the rest: one bad queue must not keep a service from its other queues. The
//! exception is a queue that exists but whose node is down: the supervisor does not use
//! that connection (see `supervisor::not_ready`), since the broker would confirm
//! publishes to the queue and drop them.//!
//! `entities.rs` holds what is declared (exchanges, queues and their arguments),
//! `declare.rs` how it is declared on a connection and what failed, `definitions.rs` the
//! RabbitMQ definitions JSON a topology converts to and from.

use lepus_amqp::FieldTable;

use crate::error::Result;

mod declare;
mod definitions;
mod entities;

pub(crate) use declare::{Names, declare, declare_on};
pub use declare::{TopologyFailure, TopologyReport};
pub use definitions::{
    BindingDef, Definitions, ExchangeDef, QueueDef, json_to_table, table_to_json,
};
pub(crate) use entities::long_string;
pub use entities::{DeadLetterStrategy, Exchange, Overflow, Queue, QueueType};

/// A binding to declare.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Binding {
    /// Queue (by name or server-named alias) to exchange.
    Queue {
        /// The queue, or a server-named queue's alias.
        queue: String,
        /// The source exchange.
        exchange: String,
        /// The binding key.
        routing_key: String,
        /// Binding arguments (headers exchanges).
        arguments: FieldTable,
    },
    /// Exchange to exchange.
    Exchange {
        /// The exchange that receives.
        destination: String,
        /// The exchange messages come from.
        source: String,
        /// The binding key.
        routing_key: String,
        /// Binding arguments.
        arguments: FieldTable,
    },
}

/// Everything a service declares, declared again on every reconnect.
///
/// ```
/// use std::time::Duration;
/// use lepus::{Exchange, Queue, Topology};
///
/// let topology = Topology::new()
///     .exchange(Exchange::topic("shop"))
///     .queue(Queue::new("orders").quorum().delivery_limit(5))
///     .bind("orders", "shop", "order.*");
/// assert_eq!(topology.queues().count(), 1);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Topology {
    pub(crate) exchanges: Vec<Exchange>,
    pub(crate) queues: Vec<Queue>,
    pub(crate) bindings: Vec<Binding>,
}

impl Topology {
    /// Nothing declared.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Adds a queue.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Binds a queue (or a server-named queue's alias) to an exchange.
    pub fn bind(mut self, queue: &str, exchange: &str, routing_key: &str) -> Self {
        self.bindings.push(Binding::Queue {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments: FieldTable::default(),
        });
        self
    }

    /// Binds exchange `destination` to exchange `source`.
    pub fn bind_exchange(mut self, destination: &str, source: &str, routing_key: &str) -> Self {
        self.bindings.push(Binding::Exchange {
            destination: destination.into(),
            source: source.into(),
            routing_key: routing_key.into(),
            arguments: FieldTable::default(),
        });
        self
    }

    /// Adds any binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Adds everything from `other`.
    pub fn merge(mut self, other: Topology) -> Self {
        self.exchanges.extend(other.exchanges);
        self.queues.extend(other.queues);
        self.bindings.extend(other.bindings);
        self
    }

    /// The declared queues.
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.iter()
    }

    /// The declared exchanges.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.iter()
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.queues.iter().try_for_each(Queue::validate)
    }
}
