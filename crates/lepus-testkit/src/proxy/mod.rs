//! A TCP fault proxy: a listener in front of a server that forwards every connection and
//! does to its bytes whatever toxics say, switched at run time (the model is Shopify's
//! toxiproxy, without its HTTP API: a test drives it directly).
//!
//! Point any client at [`FaultProxy::addr`] instead of the server. Then, at any moment,
//! per direction ([`Direction::Upstream`] is client to server, [`Direction::Downstream`]
//! the way back):
//!
//! - **latency** with jitter ([`Latency`]), applied per chunk, order preserved;
//! - **bandwidth**, bytes per second;
//! - **blackhole**: nothing forwarded, nothing read, both sockets left open (no FIN, no
//!   RST); clearing it resumes with nothing lost (see [`Toxics::blackhole`] for why it
//!   holds instead of dropping);
//! - **limit data**: close the connection after N bytes;
//! - **slicer**: small writes with pauses between them ([`Slicer`]);
//!
//! and for the whole proxy: **reset** every connection now ([`FaultProxy::reset_all`],
//! an RST through `SO_LINGER` 0) or periodically ([`FaultProxy::reset_every`]), and
//! **disable** it ([`FaultProxy::disable`]: the port refuses connections and current ones
//! are closed, like toxiproxy's `enabled = false`).
//!
//! Changes reach existing connections, not only new ones, within a few milliseconds.
//!
//! # Why threads
//!
//! The test kit has no async runtime and is used from synchronous and asynchronous tests
//! alike, so the proxy runs on its own plain threads: an acceptor, and two per connection
//! (one per direction). At test scale (tens of connections) that costs nothing worth a
//! runtime dependency, and it keeps the proxy independent of whichever runtime the code
//! under test uses: a test that blocks its runtime cannot stall the proxy. Every blocking
//! call has a short timeout, so the threads notice changes and shutdown by themselves, and
//! dropping the proxy ends and joins all of them.
//!
//! ```no_run
//! use std::time::Duration;
//! use lepus_testkit::proxy::{Direction, FaultProxy, Latency};
//!
//! # fn main() -> Result<(), lepus_testkit::Error> {
//! let broker = lepus_testkit::shared_broker()?;
//! let port: u16 = broker.url().rsplit(':').next().and_then(|p| p.split('/').next())
//!     .and_then(|p| p.parse().ok()).unwrap_or(5672);
//! let proxy = FaultProxy::start(([127, 0, 0, 1], port).into())?;
//! let url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
//! // ... connect a client to `url`, then:
//! proxy.set_latency(Direction::Both, Some(Latency::new(Duration::from_millis(50))));
//! proxy.set_blackhole(Direction::Both, true); // the broker goes silent
//! proxy.clear(); // healed
//! proxy.reset_every(Some(Duration::from_secs(2))); // an RST every 2 s
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

mod pump;
mod shared;
mod toxics;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;
use pump::{Conn, End, IDLE, TICK, later};
use shared::{Shared, ThreadGuard};
pub use toxics::{Direction, Latency, ProxyStats, Slicer, Toxics};

/// How long [`FaultProxy::stop`] and [`FaultProxy::disable`] wait for threads.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A TCP proxy in front of one server, with toxics switched at run time.
///
/// Dropping it closes every connection and ends (and joins) all its threads; call
/// [`stop`](FaultProxy::stop) to learn whether they all ended in time.
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use lepus_testkit::proxy::FaultProxy;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = TcpListener::bind("127.0.0.1:0")?;
/// let proxy = FaultProxy::start(server.local_addr()?)?;
/// let mut client = TcpStream::connect(proxy.addr())?;
/// client.write_all(b"ping")?;
/// let (mut behind, _) = server.accept()?;
/// let mut got = [0u8; 4];
/// behind.read_exact(&mut got)?;
/// assert_eq!(&got, b"ping");
/// assert_eq!(proxy.stats().accepted, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    upstream: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to `upstream` listening on a free port of 127.0.0.1.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy, Error> {
        FaultProxy::start_on(([127, 0, 0, 1], 0).into(), upstream)
    }

    /// A proxy to `upstream` listening on `bind` (port 0 for a free one), for instance an
    /// address inside a network namespace.
    pub fn start_on(bind: SocketAddr, upstream: SocketAddr) -> Result<FaultProxy, Error> {
        let listener = listen(bind)?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the proxy's address", e))?;
        let shared = Arc::new(Shared::default());
        shared.lock().listener = Some(Arc::new(listener));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("fpx{id}.a"))
                .spawn(move || accept_loop(&shared, upstream, id))
                .map_err(|e| Error::io("starting the proxy's thread", e))?
        };
        Ok(FaultProxy {
            shared,
            addr,
            upstream,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The toxics in force: (upstream, downstream).
    pub fn toxics(&self) -> (Toxics, Toxics) {
        let state = self.shared.lock();
        (state.upstream, state.downstream)
    }

    /// Changes the toxics of `dir` (both, for [`Direction::Both`]) with `change`; existing
    /// connections follow at once.
    pub fn update(&self, dir: Direction, change: impl Fn(&mut Toxics)) {
        let mut state = self.shared.lock();
        if dir.covers_upstream() {
            change(&mut state.upstream);
        }
        if dir.covers_downstream() {
            change(&mut state.downstream);
        }
        drop(state);
        self.shared.wake_all();
    }

    /// Replaces the toxics of `dir`.
    pub fn set_toxics(&self, dir: Direction, toxics: Toxics) {
        self.update(dir, |t| *t = toxics);
    }

    /// Sets or removes the latency of `dir`.
    pub fn set_latency(&self, dir: Direction, latency: Option<Latency>) {
        self.update(dir, |t| t.latency = latency);
    }

    /// Sets or removes the bandwidth limit of `dir`, in bytes per second.
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        self.update(dir, |t| t.bandwidth = bytes_per_sec);
    }

    /// Starts or ends a blackhole in `dir` (see [`Toxics::blackhole`]).
    pub fn set_blackhole(&self, dir: Direction, on: bool) {
        self.update(dir, |t| t.blackhole = on);
    }

    /// Closes each connection once it has carried `bytes` in `dir` (`None`: no limit).
    pub fn set_limit_data(&self, dir: Direction, bytes: Option<u64>) {
        self.update(dir, |t| t.limit_data = bytes);
    }

    /// Sets or removes the slicer of `dir` (see [`Slicer`]).
    pub fn set_slicer(&self, dir: Direction, slicer: Option<Slicer>) {
        self.update(dir, |t| t.slicer = slicer);
    }

    /// Removes every toxic and the periodic reset: bytes flow freely again, and anything
    /// held by a blackhole is forwarded.
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.upstream = Toxics::default();
        state.downstream = Toxics::default();
        state.reset_every = None;
        drop(state);
        self.shared.wake_all();
    }

    /// Resets every current connection: both its client and its server get an RST
    /// (`SO_LINGER` 0), within a few milliseconds. Returns how many connections it ended.
    /// New connections are accepted as usual.
    pub fn reset_all(&self) -> u64 {
        self.shared.end_all(End::Reset)
    }

    /// Resets every connection each `period` (the first time one period from now), until
    /// called with `None` or [`clear`](FaultProxy::clear).
    pub fn reset_every(&self, period: Option<Duration>) {
        self.shared.lock().reset_every = period.map(|p| (p, later(Instant::now(), p)));
        self.shared.wake_all();
    }

    /// Stops listening (the port refuses connections) and closes every current connection
    /// with a FIN, like a server that went away. [`enable`](FaultProxy::enable) listens
    /// again on the same address.
    pub fn disable(&self) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let Some(listener) = state.listener.take() else {
            return Ok(());
        };
        // The acceptor may be polling with its own reference; wait until it lets go, so
        // that the socket is really closed when this returns.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Arc::strong_count(&listener) > 1 {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the proxy's acceptor to let go of its listener".into(),
                    timeout: STOP_TIMEOUT,
                    detail: String::new(),
                });
            }
            state = self.shared.wait(state, TICK);
        }
        drop(state);
        drop(listener);
        self.shared.end_all(End::Close);
        Ok(())
    }

    /// Listens again after [`disable`](FaultProxy::disable), on the same address.
    pub fn enable(&self) -> Result<(), Error> {
        let mut state = self.shared.lock();
        if state.listener.is_none() {
            state.listener = Some(Arc::new(listen(self.addr)?));
        }
        drop(state);
        self.shared.wake_all();
        Ok(())
    }

    /// False between [`disable`](FaultProxy::disable) and [`enable`](FaultProxy::enable).
    pub fn is_enabled(&self) -> bool {
        self.shared.lock().listener.is_some()
    }

    /// Connections and bytes so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Closes every connection, ends all threads and waits for them; fails if some thread
    /// did not end in time (it is then left to end on its own).
    pub fn stop(mut self) -> Result<(), Error> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), Error> {
        {
            let mut state = self.shared.lock();
            state.shut_down = true;
            state.listener = None;
        }
        self.shared.wake_all();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut left = 0;
        if let Some(acceptor) = self.acceptor.take() {
            left += join_by(&self.shared, acceptor, deadline);
        }
        loop {
            let handles = std::mem::take(&mut self.shared.lock().threads);
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                left += join_by(&self.shared, handle, deadline);
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if left > 0 {
            return Err(Error::Timeout {
                what: "the fault proxy's threads to end".into(),
                timeout: STOP_TIMEOUT,
                detail: format!("{left} threads still running"),
            });
        }
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            let _ = self.shut_down();
        }
    }
}

/// Joins `handle` if it ends by `deadline`; 1 if it did not.
fn join_by(shared: &Shared, handle: JoinHandle<()>, deadline: Instant) -> usize {
    while !handle.is_finished() && Instant::now() < deadline {
        shared.wait_for_change(TICK);
    }
    if handle.is_finished() {
        let _ = handle.join();
        0
    } else {
        1
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::io(format!("fault proxy: listening on {addr}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("fault proxy: a non-blocking listener", e))?;
    Ok(listener)
}

/// The acceptor: takes connections while enabled, fires periodic resets, ends on shutdown.
fn accept_loop(shared: &Arc<Shared>, upstream: SocketAddr, id: u64) {
    let _guard = ThreadGuard::new(shared);
    let mut serial = 0u64;
    loop {
        let (listener, fire) = {
            let mut state = shared.lock();
            if state.shut_down {
                return;
            }
            let now = Instant::now();
            let mut fire = false;
            if let Some((period, next)) = state.reset_every.as_mut()
                && now >= *next
            {
                *next = later(*next, *period).max(now);
                fire = true;
            }
            (state.listener.clone(), fire)
        };
        if fire {
            shared.end_all(End::Reset);
        }
        let Some(listener) = listener else {
            shared.wait_for_change(IDLE);
            continue;
        };
        if readable(&listener) {
            match listener.accept() {
                Ok((client, _)) => {
                    serial += 1;
                    admit(shared, client, upstream, format!("fpx{id}.{serial}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Out of descriptors or the like: try again a little later.
                Err(_) => std::thread::sleep(TICK),
            }
        }
        // `disable` waits for this reference to go (it looks every tick).
        drop(listener);
    }
}

/// True once `listener` has a connection waiting (false after [`IDLE`] without one).
fn readable(listener: &TcpListener) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let millis = u16::try_from(IDLE.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(millis)), Ok(n) if n > 0)
}

/// Registers a new connection and starts its threads.
fn admit(shared: &Arc<Shared>, client: TcpStream, upstream: SocketAddr, name: String) {
    shared.count_accept();
    if client.set_nonblocking(false).is_err() {
        return;
    }
    let conn = Conn::new();
    shared.lock().conns.push(Arc::clone(&conn));
    let spawned = {
        let shared = Arc::clone(shared);
        let conn = Arc::clone(&conn);
        let thread_name = format!("{name}u");
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || pump::serve(shared, conn, client, upstream, name))
    };
    match spawned {
        Ok(handle) => shared.keep_thread(handle),
        Err(_) => {
            // The client socket went with the closure: it is closed already.
            shared.pump_done(&conn);
            shared.pump_done(&conn);
        }
    }
}
