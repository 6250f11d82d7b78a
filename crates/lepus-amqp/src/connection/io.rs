//! The two socket tasks: the reader, which decodes frames and applies each to its
//! channel's state directly (no per-frame message passing), and the writer, which drains
//! the [`WriteBuffer`](super::write_buffer::WriteBuffer) with one syscall per batch and
//! sends heartbeats when idle.
//!
//! Either task failing fails the whole connection. Both end, at the latest,
//! [`CLOSE_LINGER`] after the connection failed, so a peer that stopped reading cannot
//! keep a socket (and its buffers) alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::buffers::{ReadBuffer, WriteSpare};
use super::shared::ConnShared;
use super::transport::{ReadHalf, WriteHalf};
use crate::codec;
use crate::error::{Error, ErrorKind, Result};

/// How long the socket tasks outlive a failed connection to flush its last frames (a
/// `close-ok`, a `connection.close`). A writer blocked on a frozen peer is cut off here,
/// and the socket goes with it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Counts a socket task as alive until it ends, whichever way it ends.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the reader and the writer for an opened connection.
pub(super) fn spawn(shared: &Arc<ConnShared>, rd: ReadHalf, wr: WriteHalf, buf: BytesMut) {
    let heartbeat = Duration::from_secs(u64::from(shared.negotiated.heartbeat));
    let alive = Alive::new(&shared.io_tasks);
    tokio::spawn(read_loop(Arc::clone(shared), rd, buf, heartbeat, alive));
    let alive = Alive::new(&shared.io_tasks);
    tokio::spawn(write_loop(Arc::clone(shared), wr, heartbeat, alive));
}

async fn read_loop(
    shared: Arc<ConnShared>,
    mut rd: ReadHalf,
    buf: BytesMut,
    heartbeat: Duration,
    _alive: Alive,
) {
    let dead = failed_a_while_ago(&shared);
    let result = tokio::select! {
        r = read_frames(&shared, &mut rd, ReadBuffer::new(buf), heartbeat) => r,
        () = shared.killed() => Err(Error::new(ErrorKind::ConnectionClosed, "connection shut down")),
        () = dead => Err(Error::new(ErrorKind::ConnectionClosed, "connection shut down")),
    };
    if let Err(err) = result {
        if err.kind() == ErrorKind::Protocol || err.kind() == ErrorKind::FrameTooLarge {
            // Tell the broker why before hanging up (501 FRAME_ERROR / 505 UNEXPECTED_FRAME).
            let code = if err.kind() == ErrorKind::FrameTooLarge {
                501
            } else {
                505
            };
            let text: String = err.message().chars().take(200).collect();
            shared.begin_close(code, &text);
        }
        shared.fail(err);
    }
}

/// Reads and applies frames until the connection closes or fails.
///
/// Frames are applied as soon as they are decoded and before the next read, which is what
/// keeps every channel's state in the order the broker sent it. The silence limit counts
/// any traffic, not only heartbeat frames: a busy broker need not send them.
async fn read_frames(
    shared: &Arc<ConnShared>,
    rd: &mut ReadHalf,
    mut buf: ReadBuffer,
    heartbeat: Duration,
) -> Result<()> {
    let silence_limit = heartbeat * 2;
    let mut last = None;
    loop {
        while let Some(frame) = codec::decode_frame(&mut buf.buf, shared.frame_max)? {
            shared.dispatch(frame, &mut last)?;
        }
        if shared.close_reason().is_some() {
            return Ok(());
        }
        buf.settle();
        // A channel that closed since is no longer worth keeping alive for the next frame.
        if last
            .as_ref()
            .is_some_and(|c| !c.registered.load(Ordering::Acquire))
        {
            last = None;
        }
        let n = if heartbeat.is_zero() {
            buf.fill(rd).await
        } else {
            match tokio::time::timeout(silence_limit, buf.fill(rd)).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::MissedHeartbeat,
                        format!("no traffic from the broker for {silence_limit:?} (two heartbeat intervals)"),
                    ));
                }
            }
        }
        .map_err(|e| Error::io("read failed", e))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Io,
                "the broker closed the socket without connection.close",
            ));
        }
    }
}

/// Resolves [`CLOSE_LINGER`] after the connection failed: the socket tasks end then,
/// whatever they are waiting on (a write to a peer that stopped reading never returns).
fn failed_a_while_ago(shared: &ConnShared) -> impl std::future::Future<Output = ()> + use<> {
    let mut closed = shared.closed.subscribe();
    async move {
        if closed.wait_for(|c| c.is_some()).await.is_ok() {
            tokio::time::sleep(CLOSE_LINGER).await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Drains the write buffer onto the socket until the connection ends.
///
/// Long because every wait in it races the same three ends: the connection killed (we
/// closed it), the close linger elapsing (the peer stopped reading, so a pending write
/// would never return), and, while idle, the heartbeat deadline. Heartbeats are only
/// sent when nothing else was written for half the interval: any frame tells the broker
/// we are alive.
async fn write_loop(
    shared: Arc<ConnShared>,
    mut wr: WriteHalf,
    heartbeat: Duration,
    _alive: Alive,
) {
    let dead = failed_a_while_ago(&shared);
    tokio::pin!(dead);
    let mut spare = WriteSpare::new();
    let idle_limit = heartbeat / 2;
    let mut last_write = Instant::now();
    loop {
        // `take` swaps the queued bytes into `spare`; it fails only once the buffer is
        // closed *and* empty, so the last frames (a close-ok, a connection.close) still go.
        if shared.out.take(&mut spare.buf).is_err() {
            let _ = wr.shutdown().await;
            return;
        }
        if spare.buf.is_empty() {
            spare.idle();
            let beat = async {
                if heartbeat.is_zero() {
                    std::future::pending::<()>().await;
                }
                // Saturating: no deadline arithmetic may panic, whatever the limits.
                match last_write.checked_add(idle_limit) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shared.out.writer_wait() => continue,
                _ = beat => codec::put_heartbeat(&mut spare.buf),
                () = shared.killed() => return,
                () = &mut dead => {
                    shared.out.discard();
                    return;
                }
            }
        }
        let write = async {
            wr.write_all(&spare.buf).await?;
            wr.flush().await
        };
        let result = tokio::select! {
            r = write => r,
            () = shared.killed() => return,
            () = &mut dead => {
                // Blocked on a peer that stopped reading: drop the socket mid-write.
                shared.out.discard();
                return;
            }
        };
        if let Err(e) = result {
            shared.fail(Error::io("write failed", e));
            shared.out.discard();
            return;
        }
        last_write = Instant::now();
        spare.batch(last_write);
        shared.out.written();
    }
}
