//! One proxied connection: two pumps, one per direction, each a thread that reads chunks
//! from one socket, applies its direction's toxics and writes them to the other socket.
//!
//! Every blocking call is bounded (socket timeouts, condvar waits): a pump notices a reset,
//! a close or the proxy's shutdown within [`IDLE`], and toxic changes at once (it reads the
//! toxics again after every read and before every write, and the condvar wakes a
//! blackholed pump). Data waiting for its time is looked at again within [`TICK`].

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::shared::{Shared, ThreadGuard};
use super::toxics::{Direction, Toxics};

/// The longest a write blocks, and so the worst error it adds to a chunk's arrival time.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// The longest an idle thread blocks before it looks at the control state again: short
/// enough for a prompt reset or stop, long enough that idle connections cost nothing.
pub(crate) const IDLE: Duration = Duration::from_millis(50);
/// The largest read from a socket.
const CHUNK: usize = 16 * 1024;
/// Bytes read but not yet written (held by latency or bandwidth) above which a pump stops
/// reading, so a slow toxic pushes back on the sender instead of buffering without bound.
const MAX_QUEUED: usize = 1 << 20;
/// How long a new connection waits for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const RUNNING: u8 = 0;
const CLOSE: u8 = 1;
const RESET: u8 = 2;

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// FIN on both sockets.
    Close,
    /// RST on both sockets (SO_LINGER 0, then close).
    Reset,
}

/// The control block of one connection, shared by its pumps and the proxy.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    end: AtomicU8,
    pumps_left: AtomicU8,
}

impl Conn {
    pub(crate) fn new() -> Arc<Conn> {
        Arc::new(Conn {
            end: AtomicU8::new(RUNNING),
            pumps_left: AtomicU8::new(2),
        })
    }

    /// Asks both pumps to end this way; true if this call decided how it ends.
    pub(crate) fn end(&self, how: End) -> bool {
        let code = match how {
            End::Close => CLOSE,
            End::Reset => RESET,
        };
        self.end
            .compare_exchange(RUNNING, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts a finished pump; true for the second one.
    pub(crate) fn pump_finished(&self) -> bool {
        self.pumps_left.fetch_sub(1, Ordering::AcqRel) == 1
    }

    fn ending(&self) -> Option<End> {
        match self.end.load(Ordering::Acquire) {
            CLOSE => Some(End::Close),
            RESET => Some(End::Reset),
            _ => None,
        }
    }
}

/// The body of a connection's first thread: connects to the server, starts the
/// downstream pump on a second thread and runs the upstream pump itself.
pub(crate) fn serve(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    client: TcpStream,
    upstream: SocketAddr,
    name: String,
) {
    let _guard = ThreadGuard::new(&shared);
    let server = match TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) {
        Ok(server) => server,
        Err(_) => {
            // The server refuses: the client sees a reset, as it would connecting directly.
            conn.end(End::Reset);
            shared.pump_done(&conn);
            shared.pump_done(&conn);
            abort(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let clones = server
        .try_clone()
        .and_then(|s| Ok((s, client.try_clone()?)));
    let Ok((server_read, client_write)) = clones else {
        conn.end(End::Reset);
        shared.pump_done(&conn);
        shared.pump_done(&conn);
        abort(&client);
        abort(&server);
        return;
    };
    let down = {
        let shared = Arc::clone(&shared);
        let conn = Arc::clone(&conn);
        let guard = ThreadGuard::new(&shared);
        std::thread::Builder::new()
            .name(format!("{name}d"))
            .spawn(move || {
                let _guard = guard;
                pump(
                    &shared,
                    &conn,
                    Direction::Downstream,
                    server_read,
                    client_write,
                );
            })
    };
    match down {
        Ok(handle) => shared.keep_thread(handle),
        Err(_) => {
            conn.end(End::Reset);
            shared.pump_done(&conn);
        }
    }
    pump(&shared, &conn, Direction::Upstream, client, server);
}

/// Moves bytes from `src` to `dst` until the connection ends or `src` is at its end.
fn pump(shared: &Shared, conn: &Arc<Conn>, dir: Direction, src: TcpStream, dst: TcpStream) {
    let how = Pump::new(dir).run(shared, conn, &src, &dst);
    if let Some(how) = how {
        if conn.end(how) && how == End::Reset {
            shared.count_reset();
        }
        shared.wake_all();
    }
    match conn.ending() {
        Some(End::Reset) => {
            abort(&src);
            abort(&dst);
        }
        Some(End::Close) => {
            drain(&src);
            drain(&dst);
            let _ = src.shutdown(Shutdown::Both);
            let _ = dst.shutdown(Shutdown::Both);
        }
        None => {}
    }
    shared.pump_done(conn);
}

/// Makes the socket's last close send an RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let no_linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &no_linger);
}

/// Discards what is already readable, so that closing sends a FIN: Linux answers the close
/// of a socket with unread data with an RST.
fn drain(stream: &TcpStream) {
    let mut sink = [0u8; 4096];
    let mut stream = stream;
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    for _ in 0..256 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.set_nonblocking(false);
}

/// Bytes read from the source, waiting for their time to be written.
struct Chunk {
    due: Instant,
    data: Vec<u8>,
    offset: usize,
}

struct Pump {
    dir: Direction,
    queue: VecDeque<Chunk>,
    queued: usize,
    last_due: Instant,
    link_free: Instant,
    sent: u64,
    eof: bool,
    /// The source's read timeout as last set, to skip the syscall when it is the same.
    read_timeout: Option<Duration>,
}

impl Pump {
    fn new(dir: Direction) -> Pump {
        let now = Instant::now();
        Pump {
            dir,
            queue: VecDeque::new(),
            queued: 0,
            last_due: now,
            link_free: now,
            sent: 0,
            eof: false,
            read_timeout: None,
        }
    }

    /// `None` when the source ended and everything was written (a half close); otherwise
    /// how the whole connection should end.
    fn run(
        &mut self,
        shared: &Shared,
        conn: &Conn,
        src: &TcpStream,
        dst: &TcpStream,
    ) -> Option<End> {
        let mut buf = vec![0u8; CHUNK];
        if dst.set_write_timeout(Some(TICK)).is_err() {
            return Some(End::Reset);
        }
        loop {
            if let Some(how) = conn.ending() {
                return Some(how);
            }
            if shared.is_shut_down() {
                return Some(End::Close);
            }
            let toxics = shared.toxics(self.dir);
            if toxics.blackhole {
                shared.wait_for_change(IDLE);
                continue;
            }
            let wait_until = match self.write_due(shared, dst, &toxics) {
                Ok(wait_until) => wait_until,
                Err(how) => return Some(how),
            };
            if self.eof && self.queue.is_empty() {
                let _ = dst.shutdown(Shutdown::Write);
                return None;
            }
            let now = Instant::now();
            let timeout = wait_until
                .map_or(IDLE, |t| t.saturating_duration_since(now))
                .clamp(Duration::from_millis(1), IDLE);
            if self.eof || self.queued >= MAX_QUEUED {
                std::thread::sleep(timeout);
                continue;
            }
            if let Err(how) = self.read_one(shared, src, &mut buf, timeout) {
                return Some(how);
            }
        }
    }

    /// Writes every chunk whose time has come, as far as bandwidth, slicing and the
    /// destination allow. Returns when to look again if something is held back on purpose.
    fn write_due(
        &mut self,
        shared: &Shared,
        dst: &TcpStream,
        toxics: &Toxics,
    ) -> Result<Option<Instant>, End> {
        let mut dst = dst;
        while let Some(front) = self.queue.front_mut() {
            let now = Instant::now();
            if front.due > now {
                return Ok(Some(front.due));
            }
            if (toxics.bandwidth.is_some() || toxics.slicer.is_some()) && self.link_free > now {
                return Ok(Some(self.link_free));
            }
            let mut n = front.data.len().saturating_sub(front.offset);
            if let Some(rate) = toxics.bandwidth {
                // Pieces of about 20 ms of the rate keep the flow smooth.
                let piece = usize::try_from(rate.max(1) / 50)
                    .unwrap_or(CHUNK)
                    .clamp(1, CHUNK);
                n = n.min(piece);
            }
            if let Some(slicer) = toxics.slicer {
                n = n.min(slicer.size.max(1));
            }
            if let Some(limit) = toxics.limit_data {
                let left = limit.saturating_sub(self.sent);
                if left == 0 {
                    return Err(End::Close);
                }
                n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            let Some(bytes) = front.data.get(front.offset..front.offset + n) else {
                return Err(End::Reset);
            };
            match dst.write(bytes) {
                Ok(0) => return Err(End::Reset),
                Ok(written) => {
                    front.offset += written;
                    if front.offset >= front.data.len() {
                        self.queue.pop_front();
                    }
                    self.queued = self.queued.saturating_sub(written);
                    let written = u64::try_from(written).unwrap_or(u64::MAX);
                    self.sent = self.sent.saturating_add(written);
                    shared.count_bytes(self.dir, written);
                    if let Some(rate) = toxics.bandwidth {
                        let secs = written as f64 / rate.max(1) as f64;
                        self.link_free =
                            later(self.link_free.max(now), Duration::from_secs_f64(secs));
                    }
                    if let Some(slicer) = toxics.slicer {
                        self.link_free = self.link_free.max(later(now, slicer.delay));
                    }
                    if toxics.limit_data.is_some_and(|limit| self.sent >= limit) {
                        return Err(End::Close);
                    }
                }
                Err(e) if is_timeout(e.kind()) => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Reset),
            }
        }
        Ok(None)
    }

    /// Reads at most one chunk, waiting up to `timeout` for it.
    fn read_one(
        &mut self,
        shared: &Shared,
        src: &TcpStream,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<(), End> {
        let mut src = src;
        if self.read_timeout != Some(timeout) {
            if src.set_read_timeout(Some(timeout)).is_err() {
                return Err(End::Reset);
            }
            self.read_timeout = Some(timeout);
        }
        match src.read(buf) {
            Ok(0) => self.eof = true,
            Ok(n) => {
                let arrived = Instant::now();
                // The latency in force now, not when the read began: a change made while
                // this pump waited applies to the bytes that ended the wait.
                let latency = shared.toxics(self.dir).latency;
                let due = latency.map_or(arrived, |l| later(arrived, l.sample()));
                // Never before the chunk read earlier: TCP delivers in order.
                let due = due.max(self.last_due);
                self.last_due = due;
                let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                self.queued += data.len();
                self.queue.push_back(Chunk {
                    due,
                    data,
                    offset: 0,
                });
            }
            Err(e) if is_timeout(e.kind()) || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(End::Reset),
        }
        Ok(())
    }
}

/// `t + d`, or a year after `t` when a caller's huge duration would overflow the clock.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    t.checked_add(d)
        .or_else(|| t.checked_add(YEAR))
        .unwrap_or(t)
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_duration_does_not_overflow_the_clock() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(3600));
        assert_eq!(
            later(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
    }

    #[test]
    fn jitter_only_adds() {
        let latency = super::super::Latency::new(Duration::from_millis(10))
            .with_jitter(Duration::from_millis(3));
        for _ in 0..1000 {
            let d = latency.sample();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(13));
        }
        assert_eq!(
            super::super::Latency::new(Duration::MAX)
                .with_jitter(Duration::MAX)
                .sample(),
            Duration::MAX
        );
    }
}
