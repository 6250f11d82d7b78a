//! How to reach a broker: address, credentials, TLS, and the limits we negotiate.
//!
//! Options come from an AMQP URI (`amqp://user:pass@host:port/vhost?heartbeat=10`), from
//! setters, or both (a URI, then setters to override). The password is kept out of every
//! `Debug` print and error message.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod uri;

pub use uri::redact_uri;

use crate::error::{Error, ErrorKind, Result};

/// Heartbeat interval we propose, in seconds (the broker's, if smaller and non-zero, wins).
pub const DEFAULT_HEARTBEAT_SECS: u16 = 30;
/// Largest frame we propose, in bytes (the smaller of ours and the broker's wins).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Most channels we propose per connection.
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// How long TCP connect, TLS and the AMQP handshake together may take.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any other operation that waits for the broker may take.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message body accepted in either direction (RabbitMQ's default `max_message_size`).
pub const DEFAULT_MAX_BODY_SIZE: usize = 128 * 1024 * 1024;
/// Bytes queued for the socket beyond which publishers wait (bounded write buffer).
pub const DEFAULT_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// How we log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// User name and password.
    #[default]
    Plain,
    /// The TLS client certificate identifies us (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
    External,
}

/// TLS settings for `amqps`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificates to trust; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM file with our certificate chain, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file with our private key, for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against; the host when unset.
    pub server_name: Option<String>,
}

/// A password that never prints.
#[derive(Clone, Default)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Everything needed to open one connection. Build with [`ConnectionOptions::from_uri`] or
/// [`ConnectionOptions::new`] and the setters.
///
/// ```
/// use std::time::Duration;
/// use lepus_amqp::ConnectionOptions;
///
/// let opts = ConnectionOptions::from_uri("amqp://app:s3cret@127.0.0.1:5672/orders?heartbeat=10")?
///     .connection_name("billing")
///     .operation_timeout(Duration::from_secs(5));
/// assert_eq!(opts.vhost(), "orders");
/// assert!(!format!("{opts:?}").contains("s3cret"));
/// # Ok::<(), lepus_amqp::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ConnectionOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) vhost: String,
    pub(crate) username: String,
    pub(crate) password: Secret,
    pub(crate) auth: AuthMechanism,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) heartbeat: u16,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) connection_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_body_size: usize,
    pub(crate) write_buffer: usize,
    pub(crate) name: Option<String>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self::new("127.0.0.1", 5672)
    }
}

impl ConnectionOptions {
    /// Plain AMQP to `host:port`, vhost `/`, user `guest`, and the documented defaults.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            vhost: "/".into(),
            username: "guest".into(),
            password: Secret("guest".into()),
            auth: AuthMechanism::Plain,
            tls: None,
            heartbeat: DEFAULT_HEARTBEAT_SECS,
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            write_buffer: DEFAULT_WRITE_BUFFER,
            name: None,
        }
    }
    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for logs and metrics.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sets the virtual host.
    pub fn with_vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }

    /// Sets user name and password (PLAIN).
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = username.into();
        self.password = Secret(password.into());
        self
    }

    /// Sets the login mechanism.
    pub fn auth_mechanism(mut self, auth: AuthMechanism) -> Self {
        self.auth = auth;
        self
    }

    /// Uses TLS with these settings.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Proposes a heartbeat interval in seconds (0 proposes none; the broker's non-zero
    /// value then applies).
    pub fn heartbeat(mut self, secs: u16) -> Self {
        self.heartbeat = secs;
        self
    }

    /// Proposes a largest frame size in bytes (at least 4096).
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = bytes;
        self
    }

    /// Proposes a most-channels limit.
    pub fn channel_max(mut self, channels: u16) -> Self {
        self.channel_max = channels;
        self
    }

    /// Bounds TCP connect, TLS and the AMQP handshake together.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Bounds every other operation that waits for the broker.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Largest message body accepted, sent or received.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Bytes queued for the socket beyond which publishers wait.
    pub fn write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes.max(64 * 1024);
        self
    }

    /// A name shown in the broker's management UI for this connection.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let config = |m: String| Err(Error::new(ErrorKind::Config, m));
        if self.frame_max != 0 && self.frame_max < 4096 {
            return config(format!(
                "frame_max {} is below the minimum 4096",
                self.frame_max
            ));
        }
        if self.vhost.len() > 255 {
            return config("vhost name is longer than 255 bytes".into());
        }
        if self.auth == AuthMechanism::External
            && self
                .tls
                .as_ref()
                .and_then(|t| t.cert_file.as_ref())
                .is_none()
        {
            return config("EXTERNAL login needs TLS with a client certificate".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_options_hides_the_password() {
        let opts = ConnectionOptions::from_uri("amqp://app:p%40ss%2Fw%3Fd%23x@broker/vh")
            .unwrap()
            .connection_name("n");
        assert_eq!(opts.password.0, "p@ss/w?d#x");
        let text = format!("{opts:?}");
        assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
        let opts = ConnectionOptions::new("h", 1).credentials("u", "Hunter2Secret");
        assert!(!format!("{opts:?}").contains("Hunter2Secret"));
    }
}
