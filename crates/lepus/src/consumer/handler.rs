//! What a handler gets and what it decides.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use lepus_amqp::{AMQPValue, BasicProperties, Delivery, FieldTable};
use serde::de::DeserializeOwned;

use crate::failure::{self, ATTEMPTS_HEADER, FailureRecord};

/// What to do with a message after handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge it.
    Ack,
    /// A transient failure: try again (immediately, then through the delay tiers, then
    /// the dead-letter queue), with this reason recorded.
    Retry(String),
    /// A permanent failure (the message itself is bad): straight to the dead-letter
    /// queue, with this reason recorded.
    DeadLetter(String),
}

/// A handler's error, classified.
///
/// ```
/// use lepus::HandlerError;
/// let e = HandlerError::permanent("order has no lines");
/// assert!(e.is_permanent());
/// ```
#[derive(Debug, Clone)]
pub struct HandlerError {
    permanent: bool,
    message: String,
}

impl HandlerError {
    /// Worth retrying (a dependency timed out, a lock was busy, ...).
    pub fn transient(err: impl std::fmt::Display) -> Self {
        Self {
            permanent: false,
            message: err.to_string(),
        }
    }

    /// Not worth retrying (the message cannot be parsed, it violates a rule, ...).
    pub fn permanent(err: impl std::fmt::Display) -> Self {
        Self {
            permanent: true,
            message: err.to_string(),
        }
    }

    /// Whether this error sends the message to the dead-letter queue at once.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Anything a handler may return: an [`Outcome`], or a `Result` whose error is a
/// [`HandlerError`] (classified by its kind).
pub trait IntoOutcome {
    /// The decision.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl<T> IntoOutcome for Result<T, HandlerError> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(_) => Outcome::Ack,
            Err(e) if e.permanent => Outcome::DeadLetter(e.message),
            Err(e) => Outcome::Retry(e.message),
        }
    }
}

/// A message as a handler sees it. Cheap to clone.
#[derive(Clone)]
pub struct Incoming {
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) attempt: u32,
}

impl Incoming {
    pub(crate) fn new(delivery: Delivery) -> Self {
        let failed = failure::count(delivery.properties().headers().as_ref(), ATTEMPTS_HEADER);
        let attempt = failed.unwrap_or(0).saturating_add(1);
        Self {
            delivery: Arc::new(delivery),
            attempt,
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        self.delivery.body()
    }

    /// The body as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(self.delivery.body()).ok()
    }

    /// The body decoded from JSON. A body that does not decode is a permanent failure:
    /// `let order: Order = msg.json()?;` dead-letters it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(self.delivery.body())
            .map_err(|e| HandlerError::permanent(format!("body is not the expected JSON: {e}")))
    }

    /// The properties.
    pub fn properties(&self) -> &BasicProperties {
        self.delivery.properties()
    }

    /// The headers (empty if none).
    pub fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties().headers().as_ref()
    }

    /// The failure record in the headers: how often and why this message failed before
    /// (empty on a first delivery). A dead-letter queue's handler reads it here.
    pub fn failure(&self) -> FailureRecord {
        FailureRecord::from_headers(self.headers())
    }

    /// One header's value.
    pub fn header(&self, key: &str) -> Option<&AMQPValue> {
        self.headers().and_then(|h| h.inner().get(key))
    }

    /// The message id.
    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties()
            .message_id()
            .as_ref()
            .map(|m| m.as_str())
    }

    /// The routing key it arrived with.
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key()
    }

    /// The exchange it arrived through.
    pub fn exchange(&self) -> &str {
        self.delivery.exchange()
    }

    /// Whether the broker delivered it before (the earlier consumer did not ack).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered()
    }

    /// This attempt's number, from 1: every failed invocation so far (in process and
    /// through the delay tiers, as recorded in its headers) plus one. See
    /// [`crate::RetryPolicy::max_attempts`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("message_id", &self.message_id())
            .field("routing_key", &self.routing_key())
            .field("attempt", &self.attempt)
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// Handles one message. Implemented for every `Fn(Incoming) -> impl Future<Output = O>`
/// where `O` is an [`Outcome`] or a `Result<_, HandlerError>`.
pub trait Handler: Send + Sync + 'static {
    /// Handles `msg` and decides its fate.
    fn handle(&self, msg: Incoming) -> impl Future<Output = Outcome> + Send;
}

impl<F, Fut, O> Handler for F
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send,
    O: IntoOutcome,
{
    fn handle(&self, msg: Incoming) -> impl Future<Output = Outcome> + Send {
        let fut = self(msg);
        async move { fut.await.into_outcome() }
    }
}
