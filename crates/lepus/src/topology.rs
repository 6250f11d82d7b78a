//! Topology as data: exchanges, queues and bindings, declared on every (re)connect.
//!
//! A failing declaration (say, a queue that exists with other arguments) is reported with
//! the entity named and the broker's reason (which names the argument), and recovery goes
//! on with the rest: one bad queue must not keep a service from its other queues. The
//! exception is a queue that exists but whose node is down: the supervisor does not use
//! that connection (see `supervisor::not_ready`), since the broker would confirm
//! publishes to the queue and drop them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus_amqp::{
    AMQPValue, Channel, Connection, ExchangeDeclareOptions, ExchangeKind, FieldTable,
    QueueDeclareOptions,
};

use crate::error::{Error, ErrorKind, Result};

mod definitions;

pub use definitions::{
    BindingDef, Definitions, ExchangeDef, QueueDef, json_to_table, table_to_json,
};

/// An exchange to declare.
#[derive(Debug, Clone)]
#[must_use]
pub struct Exchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: FieldTable,
}

impl Exchange {
    /// A durable exchange of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }

    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }

    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }

    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }

    /// A durable headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Headers)
    }

    /// Survives broker restarts (default true).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Deleted when its last binding goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Only reachable through exchange-to-exchange bindings.
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }

    /// Any other argument (e.g. `alternate-exchange`).
    pub fn argument(mut self, key: &str, value: AMQPValue) -> Self {
        self.arguments.insert(key.into(), value);
        self
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Classic or quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue.
    #[default]
    Classic,
    /// A replicated quorum queue (durable, not exclusive).
    Quorum,
}

/// What a full queue does with more messages (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    DropHead,
    /// Refuse new messages (publishers see a nack).
    RejectPublish,
    /// Refuse new messages and dead-letter them.
    RejectPublishDlx,
}

/// A queue to declare.
#[derive(Debug, Clone)]
#[must_use]
pub struct Queue {
    pub(crate) name: String,
    pub(crate) server_named: bool,
    pub(crate) queue_type: QueueType,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
}

impl Queue {
    /// A durable classic queue.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            server_named: false,
            queue_type: QueueType::Classic,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    /// A queue the broker names, exclusive to the consuming connection. `alias` is how
    /// bindings and [`crate::Client::queue_name`] refer to it; its real name changes on
    /// every reconnect and bindings follow it.
    pub fn server_named(alias: impl Into<String>) -> Self {
        Self {
            server_named: true,
            durable: false,
            exclusive: true,
            ..Self::new(alias)
        }
    }

    /// A quorum queue (durable, replicated).
    pub fn quorum(mut self) -> Self {
        self.queue_type = QueueType::Quorum;
        self.durable = true;
        self
    }

    /// Classic or quorum.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Survives broker restarts (default true).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Only the declaring connection may use it; deleted when it closes.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Deleted when its last consumer goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Dead-letter rejected and expired messages to this exchange.
    pub fn dead_letter_exchange(self, exchange: &str) -> Self {
        self.argument("x-dead-letter-exchange", long_string(exchange))
    }

    /// Dead-letter with this routing key instead of the message's own.
    pub fn dead_letter_routing_key(self, routing_key: &str) -> Self {
        self.argument("x-dead-letter-routing-key", long_string(routing_key))
    }

    /// Messages expire after this long in the queue.
    pub fn message_ttl(self, ttl: Duration) -> Self {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.argument("x-message-ttl", AMQPValue::LongLongInt(ms))
    }

    /// At most this many ready messages.
    pub fn max_length(self, messages: i64) -> Self {
        self.argument("x-max-length", AMQPValue::LongLongInt(messages))
    }

    /// At most this many bytes of ready message bodies.
    pub fn max_length_bytes(self, bytes: i64) -> Self {
        self.argument("x-max-length-bytes", AMQPValue::LongLongInt(bytes))
    }

    /// What happens when the queue is full.
    pub fn overflow(self, overflow: Overflow) -> Self {
        let value = match overflow {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        };
        self.argument("x-overflow", long_string(value))
    }

    /// Quorum queues: dead-letter (or drop) a message returned this many times.
    pub fn delivery_limit(self, limit: i64) -> Self {
        self.argument("x-delivery-limit", AMQPValue::LongLongInt(limit))
    }

    /// Any other argument.
    pub fn argument(mut self, key: &str, value: AMQPValue) -> Self {
        self.arguments.insert(key.into(), value);
        self
    }

    /// The queue's name (its alias, if server-named).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<()> {
        if self.queue_type == QueueType::Quorum
            && (!self.durable || self.exclusive || self.auto_delete)
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "quorum queue '{}' must be durable, not exclusive and not auto-delete",
                    self.name
                ),
            ));
        }
        if self.name.len() > 255 {
            return Err(Error::new(
                ErrorKind::Config,
                "queue name longer than 255 bytes",
            ));
        }
        Ok(())
    }
}

pub(crate) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

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

/// Real names of server-named queues, by alias.
#[derive(Debug, Default, Clone)]
pub(crate) struct Names(Arc<Mutex<HashMap<String, String>>>);

impl Names {
    pub(crate) fn resolve(&self, name: &str) -> String {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    pub(crate) fn get(&self, alias: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(alias)
            .cloned()
    }

    fn set(&self, alias: &str, real: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(alias.to_owned(), real);
    }
}

/// One declaration that failed.
#[derive(Debug, Clone)]
pub struct TopologyFailure {
    /// What failed, e.g. `queue 'orders'` or `binding orders -> shop (order.*)`.
    pub entity: String,
    /// Why (the broker's reply, which names the argument at fault).
    pub error: Error,
}

impl std::fmt::Display for TopologyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The error's own message names the entity; the broker's reply follows.
        write!(f, "{}", self.error.report())
    }
}

/// The outcome of declaring the topology once.
#[derive(Debug, Clone, Default)]
pub struct TopologyReport {
    /// Entities declared successfully.
    pub declared: usize,
    /// Entities that failed, each named.
    pub failures: Vec<TopologyFailure>,
}

/// Declares `topology` on `conn`. Exclusive and server-named queues (and their bindings)
/// are declared only where `exclusive` is true: on the connection that consumes them.
pub(crate) async fn declare(
    conn: &Connection,
    topology: &Topology,
    names: &Names,
    exclusive: bool,
) -> lepus_amqp::Result<TopologyReport> {
    let channel = conn.open_channel().await?;
    let report = declare_with(channel.clone(), conn, topology, names, exclusive).await?;
    let _ = channel.close().await;
    Ok(report)
}

/// Declares `topology` (no server-named queues) starting on `channel`; returns what failed.
pub(crate) async fn declare_on(
    channel: &Channel,
    conn: &Connection,
    topology: &Topology,
) -> lepus_amqp::Result<Vec<TopologyFailure>> {
    let report = declare_with(channel.clone(), conn, topology, &Names::default(), true).await?;
    Ok(report.failures)
}

async fn declare_with(
    mut channel: Channel,
    conn: &Connection,
    topology: &Topology,
    names: &Names,
    exclusive: bool,
) -> lepus_amqp::Result<TopologyReport> {
    let mut report = TopologyReport::default();
    let record = |report: &mut TopologyReport,
                  entity: String,
                  result: lepus_amqp::Result<()>|
     -> bool {
        match result {
            Ok(()) => {
                report.declared += 1;
                true
            }
            Err(err) => {
                tracing::warn!(%entity, error = %crate::error::report(&err), "declaration failed; continuing with the rest");
                report.failures.push(TopologyFailure {
                    entity: entity.clone(),
                    error: Error::with_amqp(ErrorKind::Topology, entity.clone(), err),
                });
                false
            }
        }
    };
    for ex in &topology.exchanges {
        let options = ExchangeDeclareOptions {
            passive: false,
            durable: ex.durable,
            auto_delete: ex.auto_delete,
            internal: ex.internal,
        };
        let result = channel
            .exchange_declare(&ex.name, ex.kind.clone(), options, ex.arguments.clone())
            .await;
        if !record(&mut report, format!("exchange '{}'", ex.name), result) {
            channel = conn.open_channel().await?;
        }
    }
    let mut skipped: Vec<&str> = Vec::new();
    for q in &topology.queues {
        if q.exclusive && !exclusive {
            skipped.push(&q.name);
            continue;
        }
        let mut arguments = q.arguments.clone();
        if q.queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), long_string("quorum"));
        }
        let options = QueueDeclareOptions {
            passive: false,
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
        };
        let declared_name = if q.server_named { "" } else { q.name.as_str() };
        let result = channel
            .queue_declare(declared_name, options, arguments)
            .await;
        let result = result.map(|info| {
            if q.server_named {
                names.set(&q.name, info.name);
            }
        });
        if !record(&mut report, format!("queue '{}'", q.name), result) {
            channel = conn.open_channel().await?;
        }
    }
    for b in &topology.bindings {
        let (entity, result) = match b {
            Binding::Queue {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                if skipped.contains(&queue.as_str()) {
                    continue;
                }
                let real = names.resolve(queue);
                (
                    format!("binding queue '{queue}' -> exchange '{exchange}' ({routing_key})"),
                    channel
                        .queue_bind(&real, exchange, routing_key, arguments.clone())
                        .await,
                )
            }
            Binding::Exchange {
                destination,
                source,
                routing_key,
                arguments,
            } => (
                format!("binding exchange '{destination}' -> exchange '{source}' ({routing_key})"),
                channel
                    .exchange_bind(destination, source, routing_key, arguments.clone())
                    .await,
            ),
        };
        if !record(&mut report, entity, result) {
            channel = conn.open_channel().await?;
        }
    }
    Ok(report)
}
