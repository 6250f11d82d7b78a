//! One opaque error type for the whole engine.
//!
//! Callers branch on [`Error::kind`] or on the predicates (`is_timeout`, `is_closed`, ...),
//! never on message text. When the broker closed a channel or the connection, the error
//! carries its reply code and text, so a log line says exactly what the broker said.

use std::fmt;
use std::sync::Arc;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, broadly. New kinds may be added, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The socket failed (connect refused, reset, unexpected EOF).
    Io,
    /// The TLS handshake or TLS configuration failed (bad certificate, unknown CA, bad PEM).
    Tls,
    /// An operation did not complete before its deadline.
    Timeout,
    /// The broker refused the credentials (wrong user or password, or certificate login).
    AuthFailure,
    /// The broker refused access (vhost, or a resource the user has no permission for).
    AccessRefused,
    /// The broker refused the connection because a connection limit is reached (the
    /// vhost's `max-connections` or the user's): reply 530 naming a limit. Recoverable: the
    /// limit clears when other connections close or an operator raises it.
    ConnectionLimit,
    /// The named entity (queue, exchange) does not exist (reply code 404).
    NotFound,
    /// A precondition failed, e.g. redeclaring a queue with other arguments (reply code 406).
    PreconditionFailed,
    /// The resource is locked, e.g. an exclusive queue of another connection (reply code 405).
    ResourceLocked,
    /// The broker closed the channel with some other reply code.
    ChannelClosed,
    /// The connection is closed: by the broker, by us, or because the socket failed.
    ConnectionClosed,
    /// No heartbeat or other traffic came from the broker within two heartbeat intervals.
    MissedHeartbeat,
    /// The peer sent bytes that are not valid AMQP 0-9-1, or a frame out of place.
    Protocol,
    /// A frame larger than the negotiated `frame_max`, or a body over the configured limit.
    FrameTooLarge,
    /// A caller passed a value the protocol cannot carry (a name over 255 bytes, ...).
    InvalidArgument,
    /// Bad configuration: an unparsable URI, a missing certificate file, ...
    Config,
    /// Every channel id up to `channel_max` is in use.
    ChannelLimit,
    /// A consumer's delivery buffer overflowed (the consumer has no prefetch limit and
    /// the application does not keep up).
    ConsumerOverflow,
    /// A delivery was acknowledged on a channel that has since closed: the broker has
    /// already requeued it, and acking it elsewhere would ack some other message.
    StaleDelivery,
    /// The broker cancelled the consumer (the queue was deleted, or a node failed).
    ConsumerCancelled,
}

/// Why a TLS handshake failed, for an error of kind [`ErrorKind::Tls`]
/// ([`Error::tls_failure`]).
///
/// None of these goes away by connecting to the same endpoint again (the certificates
/// will be the same), so TLS errors are not [recoverable](Error::is_recoverable); another
/// endpoint, with certificates of its own, may still work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's certificate is not signed by a CA we trust (`ca_file`).
    UnknownIssuer,
    /// The server's certificate does not cover the name we verify it against (the host,
    /// or `server_name`).
    NotValidForName,
    /// The server's certificate has expired.
    Expired,
    /// The server's certificate is not valid yet.
    NotValidYet,
    /// The server's certificate is unusable for another reason (bad signature, revoked,
    /// not meant for a server, unreadable).
    BadCertificate,
    /// The server refused our side of the handshake with an alert: our client certificate
    /// (missing, from a CA it does not trust, or otherwise unacceptable). With TLS 1.3 this
    /// arrives on the first read after the handshake.
    RejectedByPeer,
    /// Some other handshake failure (no common protocol version or cipher suite, a
    /// malformed message).
    Handshake,
}

/// The source of a [`ErrorKind::Tls`] error: the classified reason and what rustls said.
#[derive(Debug)]
pub(crate) struct TlsError {
    pub(crate) failure: TlsFailure,
    pub(crate) source: rustls::Error,
}

/// Transparent: it reads as rustls's error and passes on rustls's own cause, so the
/// chain says what rustls said once. It exists to carry the [`TlsFailure`].
impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.source)
    }
}

/// The engine's error: a kind, a message, and the broker's reply code and text when the
/// broker closed something.
///
/// Cheap to clone (one `Arc`), so a single close reason can fail many waiting calls.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    reply_code: Option<u16>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                reply_code: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                reply_code: None,
                source: Some(Box::new(source)),
            }),
        }
    }

    /// An error from a `channel.close` or `connection.close` the broker sent.
    pub(crate) fn from_reply(code: u16, text: &str, on_channel: bool, during_login: bool) -> Self {
        let kind = match code {
            403 if during_login => ErrorKind::AuthFailure,
            // 530 NOT_ALLOWED covers both a refused vhost and a reached connection limit;
            // only the reply text tells them apart, and only the limit can clear by itself.
            530 if !on_channel && names_a_limit(text) => ErrorKind::ConnectionLimit,
            403 | 530 => ErrorKind::AccessRefused,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::ResourceLocked,
            406 => ErrorKind::PreconditionFailed,
            _ if on_channel => ErrorKind::ChannelClosed,
            _ => ErrorKind::ConnectionClosed,
        };
        let scope = if on_channel { "channel" } else { "connection" };
        Self {
            inner: Arc::new(Inner {
                kind,
                message: format!("broker closed the {scope}: {code} {text}"),
                reply_code: Some(code),
                source: None,
            }),
        }
    }

    pub(crate) fn io(context: &str, err: std::io::Error) -> Self {
        let kind = if err.kind() == std::io::ErrorKind::TimedOut {
            ErrorKind::Timeout
        } else {
            ErrorKind::Io
        };
        // The message says what we were doing; what the OS said comes through `source()`.
        Self::with_source(kind, context, err)
    }

    pub(crate) fn timeout(what: &str, after: std::time::Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("{what} did not complete within {after:?}"),
        )
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Why the TLS handshake failed, for an error of kind [`ErrorKind::Tls`] that came
    /// from the handshake (not from reading certificate files).
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        let source = self.inner.source.as_deref()?;
        source.downcast_ref::<TlsError>().map(|tls| tls.failure)
    }

    /// The reply code the broker sent when it closed the channel or connection, if it did.
    pub fn reply_code(&self) -> Option<u16> {
        self.inner.reply_code
    }

    /// The human-readable message (for a broker close, it includes the reply text).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The broker refused our credentials.
    pub fn is_auth_failure(&self) -> bool {
        self.kind() == ErrorKind::AuthFailure
    }

    /// The broker refused access to a vhost or resource.
    pub fn is_access_refused(&self) -> bool {
        self.kind() == ErrorKind::AccessRefused
    }

    /// The broker refused the connection a connection because of a connection limit.
    pub fn is_connection_limit(&self) -> bool {
        self.kind() == ErrorKind::ConnectionLimit
    }

    /// A precondition failed (reply code 406), e.g. inequivalent queue arguments.
    pub fn is_precondition_failed(&self) -> bool {
        self.kind() == ErrorKind::PreconditionFailed
    }

    /// The entity does not exist (reply code 404).
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// The operation hit its deadline.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// The channel or connection this operation needed is closed.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::ConnectionClosed
                | ErrorKind::ChannelClosed
                | ErrorKind::Io
                | ErrorKind::MissedHeartbeat
                | ErrorKind::StaleDelivery
        ) || self.inner.reply_code.is_some()
    }

    /// Whether a new connection (or channel) may succeed where this one failed.
    ///
    /// Network failures (a socket closed in the middle of the handshake included),
    /// timeouts, broker shutdowns, reached connection limits and channel-level errors are
    /// recoverable; wrong credentials, refused access, bad configuration and invalid
    /// arguments are not: retrying them only hammers the broker.
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self.kind(),
            ErrorKind::AuthFailure
                | ErrorKind::AccessRefused
                | ErrorKind::Config
                | ErrorKind::InvalidArgument
                | ErrorKind::Tls
                | ErrorKind::FrameTooLarge
                | ErrorKind::Protocol
        )
    }
}

/// RabbitMQ's texts: "access to vhost 'v' refused for user 'u': connection limit (0) is
/// reached", "Connection refused for user 'u': user connection limit (0) is reached".
fn names_a_limit(text: &str) -> bool {
    text.to_ascii_lowercase().contains("connection limit")
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(code) = self.inner.reply_code {
            d.field("reply_code", &code);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// The error's own message only: its cause, if any, comes through
/// [`source()`](std::error::Error::source), so a printer that walks the chain (`anyhow`'s
/// `{:#}`, `lepus`'s reports) says each thing once.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

/// An error and its causes on one line (`message: cause: cause`), for our own log lines,
/// which print a single value.
pub(crate) struct Chain<'a>(pub(crate) &'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.message())?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Fails if any error in `err`'s chain repeats the text of its cause.
    pub(crate) fn assert_causes_not_repeated(err: &(dyn std::error::Error + 'static)) {
        let mut current = err;
        while let Some(cause) = current.source() {
            let (text, cause_text) = (current.to_string(), cause.to_string());
            assert!(
                !text.contains(&cause_text),
                "{text:?} repeats its cause {cause_text:?}"
            );
            current = cause;
        }
    }

    #[test]
    fn an_io_error_keeps_its_cause_out_of_its_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by peer");
        let err = Error::io("cannot connect to h:1", io);
        assert_eq!(err.to_string(), "cannot connect to h:1");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("refused by peer"));
        assert_causes_not_repeated(&err);
        assert_eq!(
            Chain(&err).to_string(),
            "cannot connect to h:1: refused by peer"
        );
        let timed_out = Error::io("read failed", std::io::ErrorKind::TimedOut.into());
        assert!(timed_out.is_timeout());
        assert_causes_not_repeated(&timed_out);
    }

    #[test]
    fn reply_codes_map_to_kinds() {
        assert!(
            Error::from_reply(406, "PRECONDITION_FAILED", true, false).is_precondition_failed()
        );
        assert!(Error::from_reply(404, "NOT_FOUND", true, false).is_not_found());
        assert!(Error::from_reply(403, "ACCESS_REFUSED", false, true).is_auth_failure());
        assert!(Error::from_reply(530, "NOT_ALLOWED", false, false).is_access_refused());
        let limit = Error::from_reply(
            530,
            "NOT_ALLOWED - access to vhost 'v' refused for user 'u': connection limit (0) is reached",
            false,
            false,
        );
        assert!(limit.is_connection_limit() && limit.is_recoverable());
        assert!(!limit.is_access_refused() && !limit.is_auth_failure());
        let user_limit = Error::from_reply(
            530,
            "NOT_ALLOWED - Connection refused for user 'u': user connection limit (0) is reached",
            false,
            false,
        );
        assert!(user_limit.is_connection_limit() && user_limit.is_recoverable());
        let forced = Error::from_reply(320, "CONNECTION_FORCED", false, false);
        assert_eq!(forced.kind(), ErrorKind::ConnectionClosed);
        assert!(forced.is_recoverable());
        assert_eq!(forced.reply_code(), Some(320));
        assert!(!Error::from_reply(403, "x", false, true).is_recoverable());
    }
}
