//! The option structs of the channel's methods and what `queue.declare` reports.

use amq_protocol::types::{FieldTable, ShortString};

use super::name;
use crate::error::Result;

/// The type of an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    #[default]
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern (`orders.*`, `#`).
    Topic,
    /// Routes by header values.
    Headers,
    /// A plugin's exchange type, e.g. `x-consistent-hash`.
    Custom(String),
}

impl ExchangeKind {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(s) => s,
        }
    }
}

/// Flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists.
    pub passive: bool,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
}

/// Flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists.
    pub passive: bool,
    /// Survives a broker restart.
    pub durable: bool,
    /// Used by this connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
}

/// Flags of `queue.delete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only delete if it has no consumers.
    pub if_unused: bool,
    /// Only delete if it has no messages.
    pub if_empty: bool,
}

/// Options of `basic.consume`.
#[derive(Debug, Clone, Default)]
pub struct ConsumeOptions {
    /// The consumer tag; one is generated when unset.
    pub consumer_tag: Option<String>,
    /// The broker considers messages acknowledged once sent (at-most-once). Off by default.
    pub no_ack: bool,
    /// No other consumer may consume from the queue.
    pub exclusive: bool,
    /// Consumer arguments (e.g. `x-priority`).
    pub arguments: FieldTable,
}

/// Options of `basic.publish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message if no queue is bound to take it. In confirm mode the publish's
    /// confirm then resolves to [`Confirmation::Returned`](crate::Confirmation::Returned)
    /// with the message, matched to exactly this publish even when others share its
    /// exchange, routing key and message id. Without confirm mode there is nothing to
    /// resolve: returns are logged and dropped.
    pub mandatory: bool,
}

/// What `queue.declare` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name (the server-chosen one for a server-named queue).
    pub name: String,
    /// Ready messages in the queue.
    pub message_count: u32,
    /// Active consumers on the queue.
    pub consumer_count: u32,
}

/// Re-exported for building argument tables.
pub type Arguments = FieldTable;

/// Checks a string for a short-string field (names, routing keys): at most 255 bytes.
pub fn short_string(value: &str) -> Result<ShortString> {
    name("value", value)
}
