//! The entities a topology declares, as builders: an exchange, a queue (with the
//! arguments RabbitMQ knows by name, such as a quorum queue's delivery limit) and their
//! checks before anything is sent to a broker.

use std::time::Duration;

use lepus_amqp::{AMQPValue, ExchangeKind, FieldTable};

use crate::error::{Error, ErrorKind, Result};

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

/// How the broker hands a queue's dead letters to their target
/// (`x-dead-letter-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterStrategy {
    /// The broker forwards a dead letter once, without waiting for the target to take
    /// it, and forgets it: if the target cannot take it at that moment (a quorum queue
    /// without a leader during an election, a full queue with `reject-publish`, a
    /// missing queue) it is lost. RabbitMQ's default, and the only strategy classic
    /// queues have.
    AtMostOnce,
    /// Quorum queues only (RabbitMQ 3.10+), and only with
    /// [`Overflow::RejectPublish`]: the dead letter stays in the source queue until
    /// every target queue has confirmed it, and the broker sends it again until then
    /// (after `dead_letter_worker_publisher_confirm_timeout`, 3 minutes by default, when
    /// a target refused it). Without reject-publish the broker would quietly fall back
    /// to at-most-once, so [`crate::Client`] refuses such a queue.
    AtLeastOnce,
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
    /// What to tell the user when the queue exists with other arguments (406), after
    /// the broker's reply: how to move it to these.
    pub(crate) mismatch_hint: Option<String>,
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
            mismatch_hint: None,
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
        self.argument(OVERFLOW_ARG, long_string(value))
    }

    /// How dead letters reach the dead-letter exchange; see [`DeadLetterStrategy`]
    /// (at-least-once needs a quorum queue and [`Overflow::RejectPublish`]).
    ///
    /// ```
    /// use lepus::topology::{DeadLetterStrategy, Overflow};
    /// use lepus::Queue;
    ///
    /// let work = Queue::new("orders")
    ///     .quorum()
    ///     .dead_letter_exchange("")
    ///     .dead_letter_routing_key("orders.dlq")
    ///     .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce)
    ///     .overflow(Overflow::RejectPublish);
    /// # let _ = work;
    /// ```
    pub fn dead_letter_strategy(self, strategy: DeadLetterStrategy) -> Self {
        let value = match strategy {
            DeadLetterStrategy::AtMostOnce => "at-most-once",
            DeadLetterStrategy::AtLeastOnce => "at-least-once",
        };
        self.argument(DEAD_LETTER_STRATEGY_ARG, long_string(value))
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

    pub(crate) fn validate(&self) -> Result<()> {
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
        if self.text_argument(DEAD_LETTER_STRATEGY_ARG) == Some("at-least-once")
            && (self.queue_type != QueueType::Quorum
                || self.text_argument(OVERFLOW_ARG) != Some("reject-publish"))
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "queue '{}': at-least-once dead-lettering needs a quorum queue with \
                     reject-publish overflow (RabbitMQ would quietly dead-letter at most once)",
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

    /// The string argument `key`, if the queue has one.
    pub(crate) fn text_argument(&self, key: &str) -> Option<&str> {
        match self.arguments.inner().get(key) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            _ => None,
        }
    }
}

const DEAD_LETTER_STRATEGY_ARG: &str = "x-dead-letter-strategy";
const OVERFLOW_ARG: &str = "x-overflow";

pub(crate) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_once_needs_a_quorum_queue_with_reject_publish() {
        let q = || Queue::new("q").dead_letter_strategy(DeadLetterStrategy::AtLeastOnce);
        assert!(
            q().quorum()
                .overflow(Overflow::RejectPublish)
                .validate()
                .is_ok()
        );
        assert!(q().quorum().validate().is_err());
        assert!(
            q().quorum()
                .overflow(Overflow::DropHead)
                .validate()
                .is_err()
        );
        assert!(q().overflow(Overflow::RejectPublish).validate().is_err());
        let most = Queue::new("q").dead_letter_strategy(DeadLetterStrategy::AtMostOnce);
        assert!(most.validate().is_ok());
    }
}
