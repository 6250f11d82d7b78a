//! A small pool of channels for short operations (declare, purge, get, one-off publish).
//!
//! Bounded by a semaphore, so a burst waits (with a deadline) instead of opening hundreds
//! of channels; a channel is only handed out from the current connection and only while
//! open; and one held past a threshold is logged, since a leaked channel would otherwise
//! shrink the pool silently until acquire starts timing out.
//!
//! A channel is never handed out twice. Its user may have left it in confirm mode (which
//! AMQP 0-9-1 cannot turn off), with consumers, a prefetch limit, or gets not yet acked;
//! the next user would inherit all of that, and the unacked messages would stay stuck
//! until the connection closes. So a returned channel is closed (which releases its
//! consumers and requeues what it held) and each checkout opens a fresh one: one round
//! trip, small next to the short operation it serves.

use std::sync::Arc;
use std::time::Duration;

use lepus_amqp::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::supervisor::Supervised;

/// Pooled channels per client.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How long [`crate::Client::channel`] waits for a free channel.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A channel held longer than this is logged as a possible leak.
pub const DEFAULT_LEAK_THRESHOLD: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    size: usize,
    pub(crate) acquire_timeout: Duration,
    leak_threshold: Duration,
    conn: Arc<Supervised>,
}

impl Pool {
    pub(crate) fn new(
        conn: Arc<Supervised>,
        size: usize,
        acquire_timeout: Duration,
        leak_threshold: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(size.max(1))),
            size: size.max(1),
            acquire_timeout,
            leak_threshold,
            conn,
        })
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PooledChannel> {
        let deadline = crate::deadline::deadline_after(self.acquire_timeout);
        let permit = match tokio::time::timeout_at(
            deadline,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(Error::new(ErrorKind::Closed, "the channel pool is closed")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "all {} pooled channels stayed in use for {:?}; is one held too long (see leak warnings)?",
                        self.size, self.acquire_timeout
                    ),
                ));
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let live = self.conn.live(remaining).await?;
        let channel = live.connection.open_channel().await?;
        let threshold = self.leak_threshold;
        let id = channel.id();
        let leak_watch = tokio::spawn(async move {
            tokio::time::sleep(threshold).await;
            tracing::warn!(channel = id, held_for = ?threshold, "pooled channel held past the leak threshold");
        });
        Ok(PooledChannel {
            channel,
            generation: live.generation,
            _permit: permit,
            leak_watch,
        })
    }
}

/// A channel borrowed from the client's pool. Dropping it closes the channel (clones and
/// consumers of it included) and frees its place in the pool.
pub struct PooledChannel {
    channel: Channel,
    generation: u64,
    _permit: OwnedSemaphorePermit,
    leak_watch: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for PooledChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.channel
    }
}

impl Drop for PooledChannel {
    fn drop(&mut self) {
        self.leak_watch.abort();
        // Closed even if a clone or a consumer still holds it: what it holds goes back
        // to the broker now, not whenever the last handle happens to drop.
        if self.channel.is_open()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
}

impl std::fmt::Debug for PooledChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledChannel")
            .field("channel", &self.channel)
            .field("generation", &self.generation)
            .finish()
    }
}
