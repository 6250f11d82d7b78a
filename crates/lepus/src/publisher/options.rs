//! How a publisher behaves.

use std::time::Duration;

/// Unconfirmed messages on the wire at once.
pub const DEFAULT_WINDOW: usize = 1000;
/// Messages that may wait (while disconnected, blocked or the window is full).
pub const DEFAULT_BUFFER: usize = 10_000;
/// How long a message may take from `send` to its confirm.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Nacks a message may get before it fails: no count, only the publish timeout bounds
/// them.
pub const DEFAULT_NACK_RETRIES: u32 = u32::MAX;
/// How long the oldest unconfirmed message may go without any confirm arriving before
/// the publisher gives up on the channel and sends what is outstanding again on a new one.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How a [`Publisher`](super::Publisher) behaves.
#[derive(Debug, Clone)]
#[must_use]
pub struct PublisherOptions {
    pub(super) window: usize,
    pub(super) buffer: usize,
    pub(super) publish_timeout: Duration,
    pub(super) mandatory: bool,
    pub(super) nack_retries: u32,
    pub(super) stall_timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            buffer: DEFAULT_BUFFER,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            mandatory: false,
            nack_retries: DEFAULT_NACK_RETRIES,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

impl PublisherOptions {
    /// Unconfirmed messages in flight at once (backpressure beyond).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Messages that may wait for the connection, the broker's unblock, or window room.
    /// Past it, [`Publisher::send`](super::Publisher::send) waits for room until the
    /// publish timeout, then fails with the message handed back.
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer.max(1);
        self
    }

    /// The most a message may take from `send` to confirm, republishes after nacks and
    /// reconnects included. `Duration::MAX` means no limit.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Publish as `mandatory` by default: unroutable messages fail with
    /// [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable) instead of vanishing.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Republish a nacked message up to this many times before failing it with
    /// [`ErrorKind::Nacked`](crate::ErrorKind::Nacked); by default
    /// ([`DEFAULT_NACK_RETRIES`]) only the publish timeout limits them.
    ///
    /// RabbitMQ nacks when it cannot take a message *now*: a quorum queue electing a new
    /// leader after a node failed, a queue in `reject-publish` overflow. Each republish
    /// waits a little longer (20 ms doubling to 1 s) and, after two nacks in a row, goes
    /// out on a fresh channel. A nack never extends the publish timeout: a message still
    /// refused when its timeout is near fails as nacked. Set 0 to fail a nack at once
    /// (a full queue that should push back on its producers, say).
    pub fn nack_retries(mut self, retries: u32) -> Self {
        self.nack_retries = retries;
        self
    }

    /// How long a channel may go without a single confirm while messages wait on it
    /// (and the broker does not block the connection) before the publisher stops
    /// trusting the connection: it drops it (the client reconnects, to another node
    /// first) and sends every unconfirmed message again, in order, on the next one.
    /// Opening a channel and waiting for room to write are bounded by it too. Default
    /// [`DEFAULT_STALL_TIMEOUT`] (3 s).
    ///
    /// This is for a quorum queue whose leader's node is cut off or paused while the
    /// client moves to another node: RabbitMQ's channel there still sends to the old
    /// leader and blocks, the broker stops reading the whole connection, and nothing is
    /// confirmed or nacked until the old node is back, however long that takes (the
    /// heartbeats go on, so the connection looks alive). A new connection, once the
    /// cluster has a new leader, publishes at once.
    ///
    /// Sending again is at-least-once: a message the broker did take before the stall
    /// may be queued twice, so consumers must be idempotent (lepus's idempotency store
    /// does this). Each stall is logged (warn) and counted in
    /// [`PublisherStats`](super::PublisherStats) and the `lepus_publish_stalls_total`
    /// metric. Set it well above the confirm latency under load; `Duration::MAX`
    /// turns the check off.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }
}
