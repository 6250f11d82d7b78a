//! lepus-amqp: one AMQP 0-9-1 connection over TCP or TLS, and its channels.
//!
//! This is the engine under `lepus`. It speaks the protocol and nothing more: it never
//! reconnects, retries or declares topology on its own (the supervisor above does).
//! What it promises instead:
//!
//! - **Bounded memory.** Frames are checked against `frame_max` before they are buffered,
//!   bodies against a size limit, the write buffer has a high-water mark publishers wait
//!   on, and consumers buffer at most their prefetch.
//! - **A deadline on every wait.** Connecting, every synchronous method, waiting for
//!   buffer space; a silent broker is detected by heartbeats.
//! - **No panic from any input.** Malformed frames, unknown methods, over-long names and
//!   oversized bodies are typed [`Error`]s; the connection (or only the channel, where the
//!   protocol allows) is closed cleanly. A single received message the engine cannot
//!   accept (a body over the limit, properties it cannot decode) is refused on its own:
//!   rejected without requeue and counted on its [`Consumer`]; the connection goes on.
//! - **No misapplied acks.** A [`Delivery`] remembers the channel opening it came on;
//!   acknowledging it after that channel closed is an error, never an ack of another
//!   message.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lepus_amqp::Error> {
//! use lepus_amqp::{BasicProperties, Connection, ConsumeOptions, PublishOptions, QueueDeclareOptions};
//!
//! let conn = Connection::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let ch = conn.open_channel().await?;
//! ch.confirm_select().await?;
//! let q = ch.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default()).await?;
//! let confirm = ch
//!     .basic_publish("", &q.name, PublishOptions::default(), &BasicProperties::default(), b"hello")
//!     .await?;
//! assert!(confirm.await?.is_ack());
//!
//! ch.basic_qos(10, false).await?;
//! let mut consumer = ch.basic_consume(&q.name, ConsumeOptions::default()).await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(&delivery.body()[..], b"hello");
//!     delivery.ack()?;
//! }
//! conn.close().await?;
//! # Ok(()) }
//! ```

// Layout, for whoever changes this crate next:
// - connection/: the `Connection` handle (mod.rs), the handshake, the reader and writer
//   tasks (io.rs), the state they share (shared.rs), the write buffer, TCP and TLS;
// - channel/: the `Channel` handle and its topology methods, the per-channel state the
//   reader updates (state.rs, dispatch.rs), message assembly (content.rs), consumers and
//   deliveries, publisher confirms and returns;
// - codec/: frames in (decode.rs, behind decode_guard.rs) and out (encode.rs);
// - options/: `ConnectionOptions` and the AMQP URI; error.rs and message.rs: the public
//   error and message types.
mod channel;
mod codec;
mod connection;
mod error;
mod message;
mod options;

pub use amq_protocol::protocol::BasicProperties;
pub use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
pub use channel::Consumer;
pub use channel::{
    Arguments, Channel, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueueInfo, short_string,
};
pub use codec::ShortStr;
pub use connection::{Connection, Negotiated};
pub use error::{Error, ErrorKind, Result, TlsFailure};
pub use message::{Confirmation, Delivery, GetMessage, PublishConfirm, Returned};
pub use options::{
    AuthMechanism, ConnectionOptions, DEFAULT_CHANNEL_MAX, DEFAULT_CONNECTION_TIMEOUT,
    DEFAULT_FRAME_MAX, DEFAULT_HEARTBEAT_SECS, DEFAULT_MAX_BODY_SIZE, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_WRITE_BUFFER, TlsOptions, redact_uri,
};

#[doc(hidden)]
pub mod fuzzing;
