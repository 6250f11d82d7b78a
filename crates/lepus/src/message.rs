//! An outgoing message: where it goes, its properties, its body.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lepus_amqp::{AMQPValue, BasicProperties, FieldTable, ShortString};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

mod id;

/// A message to publish. Persistent by default; [`crate::Publisher`] gives it a
/// `message_id` (UUIDv7) and a timestamp when it has none, so every message can be
/// deduplicated downstream.
///
/// ```
/// let msg = lepus::Message::new("shop", "order.created", "hello")
///     .header("tenant", "acme")
///     .content_type("text/plain");
/// assert_eq!(msg.routing_key(), "order.created");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Bytes,
    pub(crate) properties: BasicProperties,
    pub(crate) mandatory: Option<bool>,
}

impl Message {
    /// A persistent message with `body`.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            properties: BasicProperties::default().with_delivery_mode(2),
            mandatory: None,
        }
    }

    /// A persistent message whose body is `value` as JSON (`content_type` set).
    pub fn json<T: Serialize + ?Sized>(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        value: &T,
    ) -> Result<Self> {
        let body = serde_json::to_vec(value).map_err(|e| {
            Error::with_source(ErrorKind::Config, "cannot encode message as JSON", e)
        })?;
        Ok(Self::new(exchange, routing_key, body).content_type("application/json"))
    }

    /// The exchange.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The properties.
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// The message id, once set (by you or by the publisher).
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|m| m.as_str())
    }

    /// Sets the message id (at most 255 bytes; longer ids are cut at a char boundary).
    pub fn message_id_str(mut self, id: &str) -> Self {
        self.properties = self.properties.with_message_id(short(id));
        self
    }

    /// Sets the content type.
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.properties = self.properties.with_content_type(short(content_type));
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: &str) -> Self {
        self.properties = self.properties.with_correlation_id(short(id));
        self
    }

    /// Sets a string header.
    pub fn header(self, key: &str, value: &str) -> Self {
        self.header_value(key, AMQPValue::LongString(value.into()))
    }

    /// Sets a header of any AMQP type.
    pub fn header_value(mut self, key: &str, value: AMQPValue) -> Self {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert(short(key), value);
        self.properties = self.properties.with_headers(headers);
        self
    }

    /// The headers.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// Persistent (delivery mode 2, the default) or transient.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.properties = self
            .properties
            .with_delivery_mode(if persistent { 2 } else { 1 });
        self
    }

    /// Per-message TTL.
    pub fn expiration(mut self, ttl: std::time::Duration) -> Self {
        self.properties = self
            .properties
            .with_expiration(short(&ttl.as_millis().to_string()));
        self
    }

    /// Replaces all properties.
    pub fn properties_mut(&mut self) -> &mut BasicProperties {
        &mut self.properties
    }

    /// Returned as unroutable instead of dropped when no queue takes it (overrides the
    /// publisher's default).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = Some(mandatory);
        self
    }

    /// Fills in a UUIDv7 message id and a timestamp if missing.
    pub(crate) fn stamp(&mut self) {
        let needs_id = self.properties.message_id().is_none();
        let needs_time = self.properties.timestamp().is_none();
        if !needs_id && !needs_time {
            return;
        }
        // One clock read for both; the id counts up from a random start per millisecond
        // and thread (see `id`), no random draw per message.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // The properties are taken out once and put back once: they are large, and each
        // builder call moves them.
        let mut properties = std::mem::take(&mut self.properties);
        if needs_id {
            let unix_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
            let id = id::next(unix_ms);
            let mut buf = uuid::Uuid::encode_buffer();
            let text = id.hyphenated().encode_lower(&mut buf);
            // A hyphenated UUID is 36 ASCII bytes: always a valid short string.
            properties =
                properties.with_message_id(ShortString::try_new(&*text).unwrap_or_default());
        }
        if needs_time {
            properties = properties.with_timestamp(now.as_secs());
        }
        self.properties = properties;
    }
}

/// A short string, cut at a char boundary if over 255 bytes.
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(s.get(..end).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_keeps_an_existing_id() {
        let mut m = Message::new("", "q", "x").message_id_str("mine");
        m.stamp();
        assert_eq!(m.message_id(), Some("mine"));
        assert!(m.properties().timestamp().is_some());
        let mut n = Message::new("", "q", "x");
        n.stamp();
        assert_eq!(n.message_id().map(str::len), Some(36));
        assert_eq!(*n.properties().delivery_mode(), Some(2));
    }

    #[test]
    fn long_strings_are_cut_at_a_char_boundary() {
        let long = "é".repeat(200);
        assert!(short(&long).as_str().len() <= 255);
        assert!(short(&long).as_str().chars().all(|c| c == 'é'));
    }
}
