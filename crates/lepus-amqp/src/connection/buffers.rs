//! How big the socket buffers are: small while a connection idles, as big as the traffic
//! needs during a burst, and small again after it.
//!
//! A connection that only exchanges heartbeats needs a few bytes of buffer; one that
//! streams deliveries wants large reads (one syscall per many frames). Allocating for the
//! second up front cost every idle connection tens of KiB, so the read buffer doubles
//! from [`READ_START`] while reads fill it (up to [`READ_MAX`] per read; one frame can
//! still need up to `frame_max`, which the decoder reserves and which bounds growth), and
//! halves back while reads come in small.
//!
//! An idle connection holds no read buffer at all, which is most of what a thousand idle
//! connections would otherwise cost: once reads are small and every frame was taken, the
//! allocation goes back, and the next read goes to an array on the stack of the poll
//! that performs it. A pending read keeps nothing (`AsyncRead` borrows the buffer only for
//! the duration of one poll), so the task waits holding no buffer; what arrives is copied
//! into an allocation of just its size. A heartbeat every few seconds costs a small
//! allocation or two; a busy connection keeps its buffer, since it reads large or always
//! has a partial frame in it.
//! The write buffers start empty, grow with what callers queue (bounded by the write
//! buffer's limit) and are given back once nothing large was written for
//! [`WRITE_SHRINK_AFTER`].

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;

/// What a read asks room for at first, and shrinks back to; also the size of the stack
/// array an idle connection reads into.
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

    /// After every whole frame was taken: once reads are small again and nothing is
    /// left, the allocation goes back (the next read goes to the stack, see [`Self::fill`]).
    /// Frames taken from it keep it alive only as long as they live.
    pub(super) fn settle(&mut self) {
        if self.buf.is_empty() && self.want == READ_START && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` means the peer closed it.
    ///
    /// While idle (nothing buffered, reads small; see [`Self::settle`]) the read goes to a
    /// stack array, afresh on every poll, and only what arrived is copied into a new
    /// allocation of its size; otherwise straight into the buffer, with room as
    /// [`Self::prepare`] says.
    pub(super) async fn fill<R>(&mut self, rd: &mut R) -> std::io::Result<usize>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        // Not by capacity: a buffer whose bytes were all taken shows none left, yet
        // `prepare` gets its allocation back for a busy connection.
        if !self.buf.is_empty() || self.want > READ_START {
            let room = self.prepare();
            let n = rd.read_buf(&mut self.buf).await?;
            self.read(n, room);
            return Ok(n);
        }
        let buf = &mut self.buf;
        let n = poll_fn(|cx| {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_START];
            let mut read = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *rd).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(read.filled());
                    Poll::Ready(Ok(read.filled().len()))
                }
            }
        })
        .await?;
        self.read(n, READ_START);
        Ok(n)
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

    /// A body frame on channel 1 with `len` bytes of payload.
    fn body_frame(len: usize) -> Vec<u8> {
        let mut f = vec![3, 0, 1];
        f.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        f.extend((0..len).map(|i| (i % 251) as u8));
        f.push(0xCE);
        f
    }

    const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

    /// Every whole frame in the buffer, as the reader takes them.
    fn frames(rb: &mut ReadBuffer) -> Vec<crate::codec::Frame> {
        let mut out = Vec::new();
        while let Some(f) = crate::codec::decode_frame(&mut rb.buf, 1 << 20).unwrap() {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut broker, mut rd) = tokio::io::duplex(1 << 20);
        // What the handshake leaves: an empty buffer of the start size.
        let mut rb = ReadBuffer::new(BytesMut::with_capacity(READ_START));
        rb.settle();
        assert_eq!(rb.buf.capacity(), 0, "an empty buffer was kept");
        // Waiting for the next read holds no buffer either.
        {
            let mut waiting = std::pin::pin!(rb.fill(&mut rd));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(rb.buf.capacity(), 0, "waiting allocated a buffer");
        // A heartbeat arrives: one small allocation, given back once it is decoded.
        broker.write_all(&HEARTBEAT).await.unwrap();
        assert_eq!(rb.fill(&mut rd).await.unwrap(), 8);
        assert!(
            rb.buf.capacity() < READ_START,
            "a heartbeat took {} bytes",
            rb.buf.capacity()
        );
        assert!(matches!(
            frames(&mut rb).as_slice(),
            [crate::codec::Frame::Heartbeat]
        ));
        rb.settle();
        assert_eq!(rb.buf.capacity(), 0, "kept after the heartbeat");
        // The broker closing the socket still reads as 0.
        drop(broker);
        assert_eq!(rb.fill(&mut rd).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_still_decodes() {
        use tokio::io::AsyncWriteExt;
        let (mut broker, mut rd) = tokio::io::duplex(1 << 20);
        let mut rb = ReadBuffer::new(BytesMut::new());
        // A small frame in two pieces: the first read goes to the stack, and its partial
        // frame must stay through settling.
        let small = body_frame(20);
        let (head, tail) = small.split_at(5);
        broker.write_all(head).await.unwrap();
        assert_eq!(rb.fill(&mut rd).await.unwrap(), 5);
        assert!(frames(&mut rb).is_empty());
        rb.settle();
        assert_eq!(&rb.buf[..], head, "the partial frame was lost");
        broker.write_all(tail).await.unwrap();
        rb.fill(&mut rd).await.unwrap();
        let got = frames(&mut rb);
        assert!(
            matches!(got.as_slice(), [crate::codec::Frame::Body(1, b)] if b[..] == small[7..27]),
            "{got:?}"
        );
        rb.settle();
        assert_eq!(rb.buf.capacity(), 0);
        // A frame several times the stack array, in pieces of odd sizes, then a heartbeat
        // in the same read as its end.
        let large = body_frame(5 * READ_START + 123);
        let mut rest = &large[..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let (piece, more) = rest.split_at(rest.len().min(3000));
            broker.write_all(piece).await.unwrap();
            if more.is_empty() {
                broker.write_all(&HEARTBEAT).await.unwrap();
            }
            rest = more;
            while rb.buf.len() < large.len() - rest.len() && decoded.is_empty() {
                rb.fill(&mut rd).await.unwrap();
                decoded.extend(frames(&mut rb));
                rb.settle();
            }
        }
        while decoded.len() < 2 {
            rb.fill(&mut rd).await.unwrap();
            decoded.extend(frames(&mut rb));
        }
        match decoded.as_slice() {
            [
                crate::codec::Frame::Body(1, b),
                crate::codec::Frame::Heartbeat,
            ] => {
                assert_eq!(b[..], large[7..large.len() - 1]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_busy_connection_keeps_its_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut broker, mut rd) = tokio::io::duplex(1 << 20);
        let mut rb = ReadBuffer::new(BytesMut::new());
        // A burst of heartbeats, far more than one read takes.
        let burst: Vec<u8> = HEARTBEAT.repeat(READ_MAX / 8 * 4);
        broker.write_all(&burst).await.unwrap();
        let (mut taken, mut widest) = (0, 0);
        while taken < burst.len() {
            let n = rb.fill(&mut rd).await.unwrap();
            taken += n;
            widest = widest.max(n);
            frames(&mut rb);
            rb.settle();
            // Reads fill their room: the buffer is not given back between them.
            assert!(rb.want > READ_START, "went idle mid-burst after {taken}");
        }
        assert!(
            widest > READ_START,
            "the burst was read in pieces of at most {widest}"
        );
        // Quiet again: the reads are small, the buffer goes back.
        for _ in 0..8 {
            broker.write_all(&HEARTBEAT).await.unwrap();
            rb.fill(&mut rd).await.unwrap();
            frames(&mut rb);
            rb.settle();
        }
        assert_eq!(rb.buf.capacity(), 0, "kept {}", rb.buf.capacity());
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
