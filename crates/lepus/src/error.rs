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
///
/// Its message says what the toolkit was doing; the failure underneath (the engine's
/// error, or an earlier toolkit error given context) comes through
/// [`source`](std::error::Error::source), never repeated in the message. Print the whole
/// chain with [`Error::report`] (or anyhow's `{:#}`).
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    /// The toolkit's own words; `None` for an engine error passed through as it is.
    message: Option<String>,
    cause: Cause,
}

enum Cause {
    None,
    /// The engine's error, shown through `source()`.
    Amqp(lepus_amqp::Error),
    /// The engine's error the message already summarises (such as one endpoint's
    /// failure among several listed in the message): kept for the predicates, not
    /// repeated through `source()`.
    Summarised(lepus_amqp::Error),
    /// An earlier toolkit error this one gives context to.
    Toolkit(Error),
    /// Another library's error (I/O, JSON, the store's).
    Other(Arc<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::build(kind, Some(message.into()), Cause::None)
    }

    /// `message` says what was being done; `amqp` is why it failed (its text is not
    /// repeated in `message`).
    pub(crate) fn with_amqp(
        kind: ErrorKind,
        message: impl Into<String>,
        amqp: lepus_amqp::Error,
    ) -> Self {
        Self::build(kind, Some(message.into()), Cause::Amqp(amqp))
    }

    /// `message` says what was being done; `source` is another library's error saying
    /// why.
    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::build(kind, Some(message.into()), Cause::Other(Arc::new(source)))
    }

    /// `message` already tells `amqp`'s text (with others'); `amqp` answers the
    /// predicates but is not returned by `source()`.
    pub(crate) fn summarising(
        kind: ErrorKind,
        message: impl Into<String>,
        amqp: lepus_amqp::Error,
    ) -> Self {
        Self::build(kind, Some(message.into()), Cause::Summarised(amqp))
    }

    /// The engine's error as it is, told as `kind`: same text, same source.
    pub(crate) fn as_kind(kind: ErrorKind, amqp: lepus_amqp::Error) -> Self {
        Self::build(kind, None, Cause::Amqp(amqp))
    }

    /// This failure, told as `kind` with `message` saying what was being done; this
    /// error becomes the source.
    pub(crate) fn context(&self, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::build(kind, Some(message.into()), Cause::Toolkit(self.clone()))
    }

    fn build(kind: ErrorKind, message: Option<String>, cause: Cause) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message,
                cause,
            }),
        }
    }

    /// The error and its causes, joined by `": "`, for logs and messages that show one
    /// line (`tracing::warn!(error = %err.report(), ..)`).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The engine error underneath, if any.
    pub fn amqp(&self) -> Option<&lepus_amqp::Error> {
        match &self.inner.cause {
            Cause::None | Cause::Other(_) => None,
            Cause::Amqp(e) | Cause::Summarised(e) => Some(e),
            Cause::Toolkit(e) => e.amqp(),
        }
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
    /// the home node of the durable (classic) queue is down or inaccessible, or (the
    /// quorum queue's variant, a leader that does not answer) that an operation on the
    /// queue failed "due to timeout". Publishing
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
            Self::as_kind(ErrorKind::TooLarge, err)
        } else {
            Self::from(err)
        }
    }
}

/// Whether a broker reply (`code`, and the text the engine's message carries) says a
/// queue's home node is down, or that its leader did not answer in time: the one place
/// those replies are recognised. RabbitMQ 3.10 words them "home node '~s' of durable ~s is
/// down or inaccessible" and "failed to perform operation on ~s due to timeout".
pub(crate) fn names_unavailable_queue(code: Option<u16>, text: &str) -> bool {
    code == Some(404)
        && ((text.contains("home node") && text.contains("down or inaccessible"))
            || (text.contains("failed to perform operation on") && text.contains("due to timeout")))
}

impl From<lepus_amqp::Error> for Error {
    /// The engine's error passed through: the same text and the same source.
    fn from(err: lepus_amqp::Error) -> Self {
        Self::as_kind(ErrorKind::Amqp, err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        match &self.inner.cause {
            Cause::None => {}
            Cause::Amqp(e) | Cause::Summarised(e) => {
                d.field("amqp", e);
            }
            Cause::Toolkit(e) => {
                d.field("source", e);
            }
            Cause::Other(e) => {
                d.field("source", e);
            }
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.inner.message, &self.inner.cause) {
            (Some(message), _) => f.write_str(message),
            // An engine error passed through shows as itself.
            (None, Cause::Amqp(e) | Cause::Summarised(e)) => fmt::Display::fmt(e, f),
            (None, Cause::Toolkit(e)) => fmt::Display::fmt(e, f),
            (None, Cause::Other(e)) => fmt::Display::fmt(e, f),
            (None, Cause::None) => f.write_str("error"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match (&self.inner.message, &self.inner.cause) {
            (_, Cause::None | Cause::Summarised(_)) => None,
            // Passed through: the engine error's own text is this one's, so its source
            // comes next.
            (None, Cause::Amqp(e)) => std::error::Error::source(e),
            (None, Cause::Toolkit(e)) => std::error::Error::source(e),
            (Some(_), Cause::Amqp(e)) => Some(e),
            (Some(_), Cause::Toolkit(e)) => Some(e),
            (None, Cause::Other(e)) => e.source(),
            (Some(_), Cause::Other(e)) => Some(e.as_ref()),
        }
    }
}

/// An error and its causes on one line, joined by `": "`: see [`Error::report`] and
/// [`report`].
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

/// Any error and its causes on one line, joined by `": "` (what anyhow's `{:#}` shows).
pub fn report<'a>(err: &'a (dyn std::error::Error + 'static)) -> Report<'a> {
    Report(err)
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_error() -> lepus_amqp::Error {
        lepus_amqp::ConnectionOptions::from_uri("nonsense://h").unwrap_err()
    }

    /// Every error's text appears once in its chain: what a reader of the whole chain
    /// (the CLI, anyhow's `{:#}`) sees.
    #[test]
    fn causes_come_through_source_and_are_never_repeated() {
        let engine = engine_error();
        let engine_text = report(&engine).to_string();
        // Passed through: the same text and the same source as the engine's error.
        let passed = Error::from(engine.clone());
        assert_eq!(passed.report().to_string(), engine_text);
        // Given context: the context, then the engine's error once.
        let wrapped = Error::with_amqp(ErrorKind::Config, "bad endpoint amqp://h", engine);
        assert_eq!(wrapped.to_string(), "bad endpoint amqp://h");
        assert_eq!(
            wrapped.report().to_string(),
            format!("bad endpoint amqp://h: {engine_text}")
        );
        let gave_up = wrapped.context(ErrorKind::Failed, "gave up after 3 attempts");
        assert_eq!(
            gave_up.report().to_string(),
            format!("gave up after 3 attempts: bad endpoint amqp://h: {engine_text}")
        );
        // The predicates still see the engine error underneath.
        assert!(gave_up.amqp().is_some());
        // A message that already lists the engine's text does not return it again.
        let listed = Error::summarising(
            ErrorKind::Amqp,
            format!("every endpoint failed: a: {engine_text}"),
            engine_error(),
        );
        assert!(std::error::Error::source(&listed).is_none());
        assert!(listed.amqp().is_some());
        let io = Error::with_source(
            ErrorKind::Config,
            "cannot listen on :1",
            std::io::Error::other("in use"),
        );
        assert_eq!(io.report().to_string(), "cannot listen on :1: in use");
    }

    #[test]
    fn a_queue_whose_home_node_is_down_is_unavailable() {
        let down = "broker closed the channel: 404 NOT_FOUND - home node 'rabbit@a' of durable \
                    queue 'orders' in vhost '/' is down or inaccessible";
        assert!(names_unavailable_queue(Some(404), down));
        let no_leader = "broker closed the channel: 404 NOT_FOUND - failed to perform operation \
                         on queue 'orders' in vhost '/' due to timeout";
        assert!(names_unavailable_queue(Some(404), no_leader));
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
