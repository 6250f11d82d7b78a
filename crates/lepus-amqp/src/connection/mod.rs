//! One AMQP connection: a cheap clonable handle over state shared with two socket tasks.
//!
//! The pieces, in the order a connection lives through them:
//!
//! - [`transport`] opens TCP (and TLS) and types TLS failures;
//! - [`handshake`] runs the opening exchange as straight-line code on the socket;
//! - [`shared`] is what the handles and the tasks share: the channel table, the
//!   [`write_buffer`] callers encode frames into, and how the connection fails;
//! - [`io`] holds the reader and writer tasks that own the socket from then on.
//!
//! Either task failing fails the whole connection: every waiter, confirm and consumer
//! learns why. The connection never reconnects; that is the supervisor's job one layer up.

mod buffers;
mod handshake;
mod io;
mod server_properties;
mod shared;
mod transport;
mod write_buffer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use amq_protocol::types::FieldTable;
use tokio::sync::watch;

use crate::channel::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ConnectionOptions;

pub(crate) use shared::ConnShared;

/// Values settled with the broker during `tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest frame in bytes.
    pub frame_max: u32,
    /// Most channels.
    pub channel_max: u16,
    /// Heartbeat interval in seconds; 0 means none.
    pub heartbeat: u16,
}

/// Held by every user-facing handle; when the last one drops, the connection closes.
pub(crate) struct Lifeline {
    shared: Arc<ConnShared>,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.shared.begin_close(200, "connection dropped");
        // Nobody waits for the close-ok now. If it does not come within the operation
        // timeout (a frozen broker, no heartbeats), fail the connection so that its
        // socket tasks end instead of waiting on the peer for ever.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                let limit = shared.opts.operation_timeout;
                let mut closed = shared.closed.subscribe();
                let done = tokio::time::timeout(limit, closed.wait_for(|c| c.is_some())).await;
                if done.is_err() {
                    shared.fail(Error::timeout(
                        "connection.close after the last handle dropped",
                        limit,
                    ));
                }
            });
        }
    }
}

/// An open AMQP connection. Cheap to clone; closes when the last clone and the last
/// channel are dropped, or on [`Connection::close`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lepus_amqp::Error> {
/// use lepus_amqp::{Connection, ConnectionOptions};
///
/// let conn = Connection::connect(ConnectionOptions::from_uri("amqp://127.0.0.1:5672/%2f")?).await?;
/// let channel = conn.open_channel().await?;
/// channel.close().await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnShared>,
    life: Arc<Lifeline>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.shared.opts.address())
            .field("vhost", &self.shared.opts.vhost)
            .field("negotiated", &self.shared.negotiated)
            .field("open", &self.is_open())
            .finish()
    }
}

impl Connection {
    /// Connects, logs in and opens the vhost, all within the connection timeout.
    pub async fn connect(opts: ConnectionOptions) -> Result<Connection> {
        opts.validate()?;
        let limit = opts.connection_timeout;
        let address = opts.address();
        let opened = match tokio::time::timeout(limit, handshake::handshake(opts)).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::timeout(&format!("connecting to {address}"), limit)),
        };
        let shared = ConnShared::new(opened.negotiated, opened.server_properties, opened.opts);
        io::spawn(&shared, opened.rd, opened.wr, opened.buf);
        let life = Arc::new(Lifeline {
            shared: Arc::clone(&shared),
        });
        Ok(Connection { shared, life })
    }

    /// Parses `uri` and connects.
    pub async fn open(uri: &str) -> Result<Connection> {
        Self::connect(ConnectionOptions::from_uri(uri)?).await
    }

    /// Opens a new channel.
    pub async fn open_channel(&self) -> Result<Channel> {
        let shared = self.shared.allocate_channel()?;
        let channel = Channel::new(Arc::clone(&shared), Arc::clone(&self.life));
        if let Err(err) = channel.open().await {
            shared.close_with(err.clone());
            self.shared.remove_channel(shared.id, shared.generation);
            return Err(err);
        }
        Ok(channel)
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        self.shared.close_reason().is_none()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.close_reason()
    }

    /// Resolves when the connection closes, with the reason.
    pub async fn closed(&self) -> Error {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(err) = rx.borrow_and_update().clone() {
                return err;
            }
            if rx.changed().await.is_err() {
                return Error::new(ErrorKind::ConnectionClosed, "connection dropped");
            }
        }
    }

    /// Watches `connection.blocked`: `Some(reason)` while the broker blocks publishing
    /// (memory or disk alarm), `None` otherwise.
    pub fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.shared.blocked.subscribe()
    }

    /// How many of the connection's socket tasks (reader, writer) still run: 2 while
    /// open, 0 once the connection has failed or closed and its socket is gone. For tests.
    #[doc(hidden)]
    pub fn io_tasks_alive(&self) -> usize {
        self.shared.io_tasks.load(Ordering::Acquire)
    }

    /// The live count behind [`Connection::io_tasks_alive`], readable after the
    /// connection's handles are gone. For tests.
    #[doc(hidden)]
    pub fn io_task_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.shared.io_tasks)
    }

    /// What was settled during `tune`.
    pub fn negotiated(&self) -> Negotiated {
        self.shared.negotiated
    }

    /// The broker's `server-properties` (product, version, capabilities, ...).
    pub fn server_properties(&self) -> &FieldTable {
        self.shared.server_properties.get()
    }

    /// The options this connection was opened with.
    pub fn options(&self) -> &ConnectionOptions {
        &self.shared.opts
    }

    /// Drops the connection at once, without the `connection.close` handshake: for a
    /// connection the broker no longer serves (it stopped reading, or answers nothing)
    /// while its heartbeats still arrive, where a graceful close would wait the whole
    /// operation timeout. Everything waiting on it fails with `reason`; the broker sees
    /// the socket close. Does nothing if the connection is already closed.
    pub fn abort(&self, reason: &str) {
        if self.shared.close_reason().is_some() {
            return;
        }
        // The reason first: the I/O task, woken by the kill, records its own
        // ("connection shut down") if it gets there first, and the first reason stays.
        self.shared
            .fail(Error::new(ErrorKind::ConnectionClosed, reason.to_owned()));
        self.shared.kill();
    }

    /// Closes gracefully: `connection.close`, then waits (up to the operation timeout) for
    /// the broker's `close-ok`; past the deadline the socket is dropped.
    pub async fn close(&self) -> Result<()> {
        if self.shared.close_reason().is_some() {
            return Ok(());
        }
        self.shared.begin_close(200, "closed by the application");
        let limit = self.shared.opts.operation_timeout;
        let done = tokio::time::timeout(limit, self.closed()).await;
        match done {
            Ok(_) => {
                self.shared.kill();
                Ok(())
            }
            Err(_) => {
                // The timeout is the reason, recorded before the kill (see `abort`).
                let err = Error::timeout("connection.close", limit);
                self.shared.fail(err.clone());
                self.shared.kill();
                Err(err)
            }
        }
    }
}
