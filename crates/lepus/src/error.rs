//! The toolkit's error: an engine error with the toolkit's own cases added.

use std::fmt;
use std::sync::Arc;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. New kinds may be added, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The engine reported it; see [`Error::amqp`] for the engine's kind.
    Amqp,
    /// The client was closed.
    Closed,
    /// The client gave up reconnecting (or met an error retrying cannot fix).
    Failed,
    /// No connection (or pooled channel) became available before the deadline.
    Timeout,
    /// Invalid configuration or arguments.
    Config,
    /// A declared entity could not be declared as described.
    Topology,
    /// A mandatory message could not be routed to any queue.
    Unroutable,
    /// The broker refused a message (basic.nack).
    Nacked,
    /// A bounded buffer is full.
    BufferFull,
    /// A message is larger than the broker's `max_message_size` or the client's body
    /// limit; see [`Error::amqp`] for which.
    TooLarge,
    /// A store the toolkit keeps state in (the idempotency store) failed to read or
    /// write; trying again may succeed.
    Storage,
}

/// The toolkit's error. Cheap to clone.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    amqp: Option<lepus_amqp::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                amqp: None,
            }),
        }
    }

    pub(crate) fn with_amqp(
        kind: ErrorKind,
        message: impl Into<String>,
        amqp: lepus_amqp::Error,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                amqp: Some(amqp),
            }),
        }
    }

    /// The same failure underneath, told as `kind` with `message` (which should say what
    /// this error's own message said).
    pub(crate) fn context(&self, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                amqp: self.inner.amqp.clone(),
            }),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The engine error underneath, if any.
    pub fn amqp(&self) -> Option<&lepus_amqp::Error> {
        self.inner.amqp.as_ref()
    }

    /// The broker's reply code, when the broker closed something.
    pub fn reply_code(&self) -> Option<u16> {
        self.amqp().and_then(|e| e.reply_code())
    }

    /// The broker refused our credentials.
    pub fn is_auth_failure(&self) -> bool {
        self.amqp().is_some_and(|e| e.is_auth_failure())
    }

    /// The broker refused access (vhost or resource).
    pub fn is_access_refused(&self) -> bool {
        self.amqp().is_some_and(|e| e.is_access_refused())
    }

    /// A precondition failed (reply code 406).
    pub fn is_precondition_failed(&self) -> bool {
        self.amqp().is_some_and(|e| e.is_precondition_failed())
    }

    /// The entity does not exist (reply code 404).
    pub fn is_not_found(&self) -> bool {
        self.amqp().is_some_and(|e| e.is_not_found())
    }

    /// A queue exists but cannot be used now: the broker answered 404 NOT_FOUND saying
    /// the home node of the durable (classic) queue is down or inaccessible. Publishing
    /// to it then loses messages the broker still confirms, so the supervisor treats a
    /// topology with such a queue as not ready and retries later. Retrying may succeed.
    pub fn is_queue_unavailable(&self) -> bool {
        self.amqp()
            .is_some_and(|e| names_unavailable_queue(e.reply_code(), e.message()))
    }

    /// A message was over the broker's or the client's size limit.
    pub fn is_too_large(&self) -> bool {
        self.kind() == ErrorKind::TooLarge
    }

    /// A deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout || self.amqp().is_some_and(|e| e.is_timeout())
    }

    /// The connection, channel or client is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind(), ErrorKind::Closed | ErrorKind::Failed)
            || self.amqp().is_some_and(|e| e.is_closed())
    }

    /// Whether trying again (on a new connection) may succeed.
    pub fn is_recoverable(&self) -> bool {
        if self.is_queue_unavailable() {
            return true;
        }
        match self.kind() {
            ErrorKind::Amqp => self.amqp().is_none_or(|e| e.is_recoverable()),
            ErrorKind::Timeout | ErrorKind::BufferFull | ErrorKind::Nacked | ErrorKind::Storage => {
                true
            }
            _ => false,
        }
    }
}

impl Error {
    /// A store's failure ([`ErrorKind::Storage`]): for stores kept outside lepus (an
    /// [`IdempotencyStore`](crate::IdempotencyStore) in an application's own database)
    /// to report a read or write that may succeed if tried again.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }

    /// A publish the engine refused before sending it: a body over the client's limit is
    /// [`ErrorKind::TooLarge`], anything else the engine's error as is.
    pub(crate) fn from_publish(err: lepus_amqp::Error) -> Self {
        if err.kind() == lepus_amqp::ErrorKind::FrameTooLarge {
            Self::with_amqp(ErrorKind::TooLarge, err.to_string(), err)
        } else {
            Self::from(err)
        }
    }
}

/// Whether a broker reply (`code`, and the text the engine's message carries) says a
/// queue's home node is down: the one place that reply is recognised.
pub(crate) fn names_unavailable_queue(code: Option<u16>, text: &str) -> bool {
    code == Some(404) && text.contains("home node") && text.contains("down or inaccessible")
}

impl From<lepus_amqp::Error> for Error {
    fn from(err: lepus_amqp::Error) -> Self {
        Self::with_amqp(ErrorKind::Amqp, err.to_string(), err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(amqp) = &self.inner.amqp {
            d.field("amqp", amqp);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .amqp
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::names_unavailable_queue;

    #[test]
    fn a_queue_whose_home_node_is_down_is_unavailable() {
        let down = "broker closed the channel: 404 NOT_FOUND - home node 'rabbit@a' of durable \
                    queue 'orders' in vhost '/' is down or inaccessible";
        assert!(names_unavailable_queue(Some(404), down));
        // Other replies are not: a missing queue, another code, no code at all.
        assert!(!names_unavailable_queue(
            Some(404),
            "broker closed the channel: 404 NOT_FOUND - no queue 'orders' in vhost '/'"
        ));
        assert!(!names_unavailable_queue(Some(406), down));
        assert!(!names_unavailable_queue(None, down));
        assert!(!names_unavailable_queue(
            Some(406),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"
        ));
    }
}
