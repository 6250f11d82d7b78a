//! What a [`FaultProxy`](super::FaultProxy) does to the bytes of one direction.
//!
//! Toxics are plain data: a [`Toxics`] value per direction, copied by each connection's
//! pump every time it moves a chunk, so a change reaches existing connections within one
//! poll tick (a few milliseconds), not only new ones.

use std::time::Duration;

/// Which way bytes travel through the proxy, as seen from the client.
///
/// Names follow toxiproxy: *upstream* is what the client sends to the server, *downstream*
/// is what the server sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
    /// Both directions (for setters; a pump is always one or the other).
    Both,
}

impl Direction {
    pub(crate) fn covers_upstream(self) -> bool {
        matches!(self, Direction::Upstream | Direction::Both)
    }

    pub(crate) fn covers_downstream(self) -> bool {
        matches!(self, Direction::Downstream | Direction::Both)
    }
}

/// A delay added to every chunk: `base` plus a uniformly random extra in `0..=jitter`.
///
/// The jitter only ever adds, so a test may assert that a round trip took at least
/// `base`. Chunks keep their order: a chunk never leaves before the one read before it,
/// even when its own random delay is shorter (as on a real link, where TCP delivers in
/// order).
///
/// ```
/// use std::time::Duration;
/// use lepus_testkit::proxy::Latency;
///
/// let wan = Latency::new(Duration::from_millis(40)).with_jitter(Duration::from_millis(10));
/// assert_eq!(wan.base, Duration::from_millis(40));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// The fixed part of the delay.
    pub base: Duration,
    /// The upper bound of the random extra.
    pub jitter: Duration,
}

impl Latency {
    /// A fixed delay without jitter.
    pub fn new(base: Duration) -> Self {
        Latency {
            base,
            jitter: Duration::ZERO,
        }
    }

    /// The same delay with a random extra of up to `jitter` per chunk.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    pub(crate) fn sample(&self) -> Duration {
        let extra = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if extra == 0 {
            return self.base;
        }
        self.base
            .saturating_add(Duration::from_nanos(rand::random_range(0..=extra)))
    }
}

/// The toxics of one direction. The default forwards everything at once.
///
/// ```
/// use std::time::Duration;
/// use lepus_testkit::proxy::{Latency, Toxics};
///
/// let slow_link = Toxics {
///     latency: Some(Latency::new(Duration::from_millis(50))),
///     bandwidth: Some(64 * 1024),
///     ..Toxics::default()
/// };
/// assert!(!slow_link.blackhole);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Toxics {
    /// Delay each chunk (see [`Latency`]).
    pub latency: Option<Latency>,
    /// Forward at most this many bytes per second (a rate of 0 is treated as 1).
    pub bandwidth: Option<u64>,
    /// Forward nothing and read nothing, but keep both sockets open: no FIN, no RST.
    ///
    /// Data is **held, not dropped**: while blackholed the proxy stops reading, so the
    /// sender's bytes pile up in socket buffers and, once those are full, its writes block,
    /// exactly as when a real link goes silent and TCP stops receiving ACKs. Clearing the
    /// blackhole resumes forwarding from where it stopped, with nothing lost, like a healed
    /// network after TCP retransmits. (toxiproxy's `timeout` toxic instead reads and
    /// discards, which acknowledges the data at the TCP level: the sender never blocks, so
    /// it cannot reproduce a writer stuck on a dead socket.)
    pub blackhole: bool,
    /// Close the connection (both directions, with FIN) once this many bytes have gone
    /// this way on it; the chunk that crosses the limit is cut to fit.
    pub limit_data: Option<u64>,
    /// Cut what goes this way into small writes with a pause between them (see
    /// [`Slicer`]).
    pub slicer: Option<Slicer>,
}

/// Writes at most `size` bytes at a time and waits `delay` before the next piece, so the
/// receiver gets frames in fragments, as over a congested or lossy path.
///
/// ```
/// use std::time::Duration;
/// use lepus_testkit::proxy::Slicer;
///
/// let crumbs = Slicer { size: 3, delay: Duration::from_millis(1) };
/// assert_eq!(crumbs.size, 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slicer {
    /// The largest piece written at once (0 is treated as 1).
    pub size: usize,
    /// The pause after each piece.
    pub delay: Duration,
}

/// Counters of a proxy since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Connections whose pumps are still running.
    pub active: u64,
    /// Connections ended with an RST (by [`reset_all`](super::FaultProxy::reset_all), a
    /// periodic reset, or a peer's reset passed on).
    pub resets: u64,
    /// Bytes written to the server.
    pub bytes_upstream: u64,
    /// Bytes written to clients.
    pub bytes_downstream: u64,
    /// Threads of this proxy still running (the acceptor and two per connection).
    pub threads: u64,
}
