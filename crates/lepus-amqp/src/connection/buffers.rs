//! How big the socket buffers are: small while a connection idles, as big as the traffic
//! needs during a burst, and small again after it.
//!
//! A connection that only exchanges heartbeats needs a few bytes of buffer; one that
//! streams deliveries wants large reads (one syscall per many frames). Allocating for the
//! second up front cost every idle connection tens of KiB, so the read buffer starts at
//! [`READ_START`], doubles while reads fill it (up to [`READ_MAX`] per read; one frame can
//! still need up to `frame_max`, which the decoder reserves and which bounds growth), and
//! halves back while reads come in small, handing its allocation back once it is empty.
//! The write buffers start empty, grow with what callers queue (bounded by the write
//! buffer's limit) and are given back once nothing large was written for
//! [`WRITE_SHRINK_AFTER`].

use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

/// What a read buffer starts with, and shrinks back to.
pub(super) const READ_START: usize = 8 * 1024;
/// The most one read asks room for. Larger frames still fit: the decoder reserves room
/// for the whole frame it is waiting for, up to `frame_max`.
pub(super) const READ_MAX: usize = 64 * 1024;
/// A write buffer keeps up to this much capacity however long it idles.
pub(super) const WRITE_KEEP: usize = 8 * 1024;
/// How long after the last large batch a write buffer gives its capacity back.
pub(super) const WRITE_SHRINK_AFTER: Duration = Duration::from_secs(1);

/// The reader's buffer and how much room its next read asks for.
pub(super) struct ReadBuffer {
    pub(super) buf: BytesMut,
    want: usize,
}

impl ReadBuffer {
    /// Takes over what the handshake read (and may have buffered beyond its last frame).
    pub(super) fn new(buf: BytesMut) -> Self {
        Self {
            buf,
            want: READ_START,
        }
    }

    /// Makes room for the next read; returns how much there is.
    pub(super) fn prepare(&mut self) -> usize {
        if self.buf.capacity() - self.buf.len() < self.want / 4 {
            self.buf.reserve(self.want);
        }
        self.buf.capacity() - self.buf.len()
    }

    /// Adapts to a read of `n` bytes into `room`: a full buffer asks for more next time,
    /// a read that used a small part of it for less.
    pub(super) fn read(&mut self, n: usize, room: usize) {
        if n >= room {
            self.want = (self.want * 2).min(READ_MAX);
        } else if n < self.want / 8 {
            self.want = (self.want / 2).max(READ_START);
        }
    }

    /// After every whole frame was taken: once the burst is over (reads are small again)
    /// and nothing is left, a large allocation goes back and a small one takes its place.
    /// Frames taken from the old one keep it alive only as long as they live.
    pub(super) fn settle(&mut self) {
        if self.buf.is_empty() && self.want == READ_START && self.buf.capacity() > 2 * READ_START {
            self.buf = BytesMut::with_capacity(READ_START);
        }
    }
}

/// The writer's half of the buffer pair (the other half is in the write buffer; they trade
/// places on every batch): gives the capacity back when bursts are over.
pub(super) struct WriteSpare {
    pub(super) buf: Vec<u8>,
    last_large: Instant,
}

impl WriteSpare {
    pub(super) fn new() -> Self {
        Self {
            buf: Vec::new(),
            last_large: Instant::now(),
        }
    }

    /// Notes a batch about to be written.
    pub(super) fn batch(&mut self, now: Instant) {
        if self.buf.len() > WRITE_KEEP {
            self.last_large = now;
        }
    }

    /// Called when the writer is about to wait: nothing is queued.
    pub(super) fn idle(&mut self) {
        if self.buf.capacity() > WRITE_KEEP && self.last_large.elapsed() >= WRITE_SHRINK_AFTER {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_grows_while_reads_fill_it_and_shrinks_after() {
        let mut rb = ReadBuffer::new(BytesMut::with_capacity(READ_START));
        assert!(rb.buf.capacity() <= READ_START);
        // A burst: every read fills the room it had.
        let mut widest = 0;
        for _ in 0..20 {
            let room = rb.prepare();
            widest = widest.max(room);
            rb.buf.resize(rb.buf.len() + room, 7);
            rb.read(room, room);
            rb.buf.clear();
        }
        assert!(widest > READ_START, "never grew: {widest}");
        assert!(
            widest <= READ_MAX + READ_MAX / 4,
            "grew past the cap: {widest}"
        );
        // Quiet again: heartbeats, eight bytes a read.
        for _ in 0..8 {
            let room = rb.prepare();
            rb.buf.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
            rb.read(8, room);
            rb.buf.clear();
            rb.settle();
        }
        assert!(
            rb.buf.capacity() <= READ_START,
            "kept {}",
            rb.buf.capacity()
        );
    }

    #[test]
    fn a_partial_frame_is_never_dropped_by_settling() {
        let mut rb = ReadBuffer::new(BytesMut::with_capacity(4 * READ_MAX));
        rb.buf.extend_from_slice(&[1, 0, 1]);
        rb.settle();
        assert_eq!(&rb.buf[..], &[1, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_write_spare_gives_its_capacity_back_once_bursts_are_over() {
        let mut spare = WriteSpare::new();
        spare.buf.resize(256 * 1024, 0);
        spare.batch(Instant::now());
        spare.buf.clear();
        spare.idle();
        assert!(
            spare.buf.capacity() >= 256 * 1024,
            "shrank during the burst"
        );
        tokio::time::advance(WRITE_SHRINK_AFTER).await;
        spare.idle();
        assert!(
            spare.buf.capacity() <= WRITE_KEEP,
            "kept {}",
            spare.buf.capacity()
        );
        // Small batches never count as a burst.
        spare.buf.resize(100, 0);
        spare.batch(Instant::now());
        assert!(spare.buf.capacity() <= WRITE_KEEP);
    }
}
