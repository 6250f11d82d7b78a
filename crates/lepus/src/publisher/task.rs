//! The task that owns the publisher's channel.
//!
//! It publishes waiting messages up to the window, settles confirms in publish order,
//! and decides what a failure means for each message:
//!
//! - a **nack** (a quorum queue electing a leader, a queue in `reject-publish` overflow)
//!   sends the message again after a short, growing pause, until its publish deadline or
//!   `nack_retries`, whichever comes first;
//! - a **lost channel or connection** puts every unconfirmed message back at the front,
//!   in order, for the next channel; confirms (acks, nacks, returns) that arrived before
//!   the loss still count as what they were;
//! - a **channel the broker closed because of one publish** (404, 403, 406) fails that
//!   message at once with the broker's reply, and only that one (see `culprit`);
//! - a **channel that confirms nothing** for the stall timeout while messages wait on it
//!   costs its connection (see `channel`): the publisher drops it, and the unconfirmed
//!   messages go out again, in order, on the next one.
//!
//! `settle` holds what each outcome means, `channel` the channel's life; this file the
//! loop that drives them.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use lepus_amqp::{Channel, Confirmation, Connection, PublishConfirm};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PublisherOptions;
use super::queue::{Queue, Taken};
use super::shared::{Job, Shared};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics::{self as m, PublishMetrics};
use crate::supervisor::Live;

mod channel;
mod settle;

/// The longest wait for a channel's in-flight confirms before replacing it anyway (its
/// unconfirmed messages then go out again on the new one).
const RENEW_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Task {
    queue: Arc<Queue>,
    /// The metric handles of each exchange published to, in order of first use (a
    /// job keeps its index), with an index by name and the last one used.
    metrics: Vec<PublishMetrics>,
    metrics_by_exchange: HashMap<String, usize>,
    last_metrics: Option<(String, usize)>,
    /// The gauges of messages waiting and in flight, and what this publisher last added
    /// to each: brought up to date once per turn of the loop, not per message.
    buffer_gauge: metrics::Gauge,
    in_flight_gauge: metrics::Gauge,
    reported: (usize, usize),
    waiting: VecDeque<Job>,
    inflight: VecDeque<(Job, PublishConfirm)>,
    /// Nacked messages waiting out their pause, with when they may go again.
    delayed: Vec<(Instant, Job)>,
    channel: Option<Open>,
    blocked: Option<watch::Receiver<Option<String>>>,
    live: watch::Receiver<Option<Live>>,
    shared: Arc<Shared>,
    options: PublisherOptions,
    stop: CancellationToken,
    /// While above zero, messages go out one at a time, to learn which one of a batch
    /// made the broker close the channel.
    probe: usize,
    /// Set (to when) after repeated nacks: publish nothing more on this channel, and
    /// replace it once its in-flight messages are settled, or after [`RENEW_WAIT`].
    renew: Option<Instant>,
    /// The last sign of life of the channel: a confirm, the channel opening, the broker
    /// blocking or unblocking. The stall clock runs from it (or from the oldest
    /// unconfirmed publish, if later).
    progress: Instant,
    /// Stalls in a row without a confirm in between (see [`Task::check_stall`]).
    stalls: u32,
}

/// The channel in use and the connection it is on.
pub(super) struct Open {
    channel: Channel,
    connection: Connection,
}

// Transient: built and matched at once, never stored, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Queued,
    Confirmed(lepus_amqp::Result<Confirmation>),
    Changed,
    Deadline,
    Stop,
}

impl Task {
    pub(super) fn new(
        queue: Arc<Queue>,
        live: watch::Receiver<Option<Live>>,
        shared: Arc<Shared>,
        options: PublisherOptions,
        stop: CancellationToken,
    ) -> Task {
        Task {
            queue,
            metrics: Vec::new(),
            metrics_by_exchange: HashMap::new(),
            last_metrics: None,
            buffer_gauge: m::buffer_depth(),
            in_flight_gauge: m::in_flight(),
            reported: (0, 0),
            waiting: VecDeque::new(),
            inflight: VecDeque::new(),
            delayed: Vec::new(),
            channel: None,
            blocked: None,
            live,
            shared,
            options,
            stop,
            probe: 0,
            renew: None,
            progress: Instant::now(),
            stalls: 0,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            // Everything queued comes along at once: one turn of this loop per burst,
            // not one per message.
            if self.queue.take_into(&mut self.waiting) == Taken::Abandoned {
                break;
            }
            self.settle_ready();
            self.release_delayed();
            self.check_stall();
            self.ensure_channel().await;
            if self.publish_waiting().await {
                // The channel closed under a publish: a new one, now.
                continue;
            }
            self.expire();
            self.report_gauges();
            let event = self.next_event().await;
            match event {
                Event::Stop => break,
                Event::Confirmed(outcome) => {
                    if let Some((job, _)) = self.inflight.pop_front() {
                        self.shared.stats.sub_in_flight(1);
                        self.settle(job, outcome, Instant::now());
                    }
                }
                Event::Queued | Event::Changed | Event::Deadline => {}
            }
        }
        self.shutdown().await;
    }

    fn is_blocked(&self) -> bool {
        self.blocked.as_ref().is_some_and(|b| b.borrow().is_some())
    }

    async fn next_event(&mut self) -> Event {
        let next_deadline = self
            .waiting
            .front()
            .map(|j| j.deadline)
            .into_iter()
            .chain(self.inflight.front().map(|(j, _)| j.deadline))
            .chain(self.delayed.iter().map(|(at, _)| *at))
            .chain(self.renew.map(|since| since + RENEW_WAIT))
            .chain(self.stall_at())
            .min();
        let inflight = &mut self.inflight;
        let front_confirm = std::future::poll_fn(|cx| match inflight.front_mut() {
            Some((_, confirm)) => Pin::new(confirm).poll(cx),
            None => Poll::Pending,
        });
        let blocked = async {
            match self.blocked.as_mut() {
                Some(b) => {
                    let _ = b.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match next_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Event::Stop,
            outcome = front_confirm => Event::Confirmed(outcome),
            _ = self.queue.ready() => Event::Queued,
            _ = self.live.changed() => Event::Changed,
            _ = blocked => {
                // Confirms wait while the broker blocks: not a stall.
                self.progress = Instant::now();
                Event::Changed
            }
            _ = deadline => Event::Deadline,
        }
    }

    /// The index of `exchange`'s metric handles, registering them on first use. The last
    /// exchange's is checked first: most publishers use one or two.
    fn metrics_slot(&mut self, exchange: &str) -> usize {
        if let Some((last, slot)) = &self.last_metrics
            && same_name(last, exchange)
        {
            return *slot;
        }
        let slot = match self.metrics_by_exchange.get(exchange) {
            Some(slot) => *slot,
            None => {
                let slot = self.metrics.len();
                self.metrics.push(PublishMetrics::new(exchange));
                self.metrics_by_exchange.insert(exchange.to_owned(), slot);
                slot
            }
        };
        self.last_metrics = Some((exchange.to_owned(), slot));
        slot
    }

    /// Runs `f` with the metric handles at `slot` (from [`Task::metrics_slot`]).
    fn with_metrics(&self, slot: usize, f: impl FnOnce(&PublishMetrics)) {
        if let Some(handles) = self.metrics.get(slot) {
            f(handles);
        }
    }

    /// Adds to the gauges what changed since they were last brought up to date.
    fn report_gauges(&mut self) {
        let now = (self.shared.stats.buffered(), self.shared.stats.in_flight());
        move_gauge(&self.buffer_gauge, self.reported.0, now.0);
        move_gauge(&self.in_flight_gauge, self.reported.1, now.1);
        self.reported = now;
    }

    async fn shutdown(mut self) {
        self.settle_ready();
        self.queue.close(&mut self.waiting);
        let closed = || {
            Error::new(
                ErrorKind::Closed,
                "the publisher closed before this message was confirmed",
            )
        };
        for (job, _) in self.inflight.drain(..) {
            self.shared.fail(job, closed());
        }
        for (_, job) in std::mem::take(&mut self.delayed) {
            self.shared.fail(job, closed());
        }
        for job in self.waiting.drain(..) {
            self.shared.fail(job, closed());
        }
        if let Some(open) = self.channel.take() {
            let _ = open.channel.close().await;
        }
        self.report_gauges();
    }
}

/// Moves `gauge` by what one publisher's share of it went from, `from`, to `to`.
fn move_gauge(gauge: &metrics::Gauge, from: usize, to: usize) {
    if to > from {
        gauge.increment((to - from) as f64);
    } else if from > to {
        gauge.decrement((from - to) as f64);
    }
}

/// `a == b` for exchange names, with the default exchange's empty name answered without
/// calling `memcmp`. An empty `String`'s pointer is dangling, and glibc's AVX-512 `memcmp`
/// reads its operands with a masked load even for zero bytes; a masked load of a page
/// that is not mapped is completed by a microcode assist, hundreds of cycles. That was
/// 11% of the publisher's CPU at four queues on the default exchange (perf).
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

#[cfg(test)]
mod tests {
    use super::same_name;

    #[test]
    fn exchange_names_compare_like_strings() {
        assert!(same_name("", ""));
        assert!(same_name("orders", "orders"));
        assert!(!same_name("", "orders"));
        assert!(!same_name("orders", ""));
        assert!(!same_name("orders", "ordersx"));
        assert!(!same_name("orders", "Orders"));
    }
}
