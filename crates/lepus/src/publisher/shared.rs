//! What the handle and the task share: the job a message travels as, and the
//! bookkeeping of outstanding, buffered and in-flight messages that `flush`, the stats
//! and the gauges read.
//!
//! Every message is answered exactly once, through [`Shared::finish`]: that is where the
//! outstanding count drops and `flush` is woken.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::stats::PublisherStats;
use super::{PublishError, PublishResult};
use crate::error::Error;
use crate::message::Message;
use crate::observability::metrics as m;

type Callback = Box<dyn FnOnce(PublishResult) + Send>;

/// How the caller wants its answer.
pub(super) enum Reply {
    /// Through the [`Confirm`](super::Confirm) future.
    Wait(oneshot::Sender<PublishResult>),
    /// By a callback run on the publisher's task.
    Callback(Callback),
}

impl Reply {
    pub(super) fn callback(callback: impl FnOnce(PublishResult) + Send + 'static) -> Reply {
        Reply::Callback(Box::new(callback))
    }
}

/// One message on its way, from `send` to its answer.
pub(super) struct Job {
    /// Boxed: a job moves through several queues, and a message is large.
    pub(super) msg: Box<Message>,
    pub(super) reply: Reply,
    pub(super) deadline: Instant,
    pub(super) nacks: u32,
    /// When it was last written to a channel, for the confirm latency.
    pub(super) sent_at: Option<Instant>,
    /// The publish span of a sampled trace: from `send` to the confirm (held, never read).
    pub(super) _span: tracing::Span,
    /// Its room in the outage buffer, given back when the job is dropped.
    pub(super) _permit: OwnedSemaphorePermit,
}

/// The state the handle (and its clones) and the task share.
pub(super) struct Shared {
    pub(super) stats: PublisherStats,
    buffer_gauge: metrics::Gauge,
    in_flight_gauge: metrics::Gauge,
    /// Messages taken and not yet answered.
    pub(super) outstanding: AtomicUsize,
    /// Woken when `outstanding` drops to zero.
    pub(super) idle: Notify,
    pub(super) closing: AtomicBool,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            stats: PublisherStats::default(),
            buffer_gauge: m::buffer_depth(),
            in_flight_gauge: m::in_flight(),
            outstanding: AtomicUsize::new(0),
            idle: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Messages waiting to be published went up or down by `delta`.
    pub(super) fn buffered(&self, delta: isize) {
        self.stats.add_buffered(delta);
        if delta >= 0 {
            self.buffer_gauge.increment(delta as f64);
        } else {
            self.buffer_gauge.decrement(delta.unsigned_abs() as f64);
        }
    }

    /// Messages published and not yet confirmed went up or down by `delta`.
    pub(super) fn in_flight(&self, delta: isize) {
        self.stats.add_in_flight(delta);
        if delta >= 0 {
            self.in_flight_gauge.increment(delta as f64);
        } else {
            self.in_flight_gauge.decrement(delta.unsigned_abs() as f64);
        }
    }

    /// A message was taken: it counts as outstanding (and waiting) until answered.
    pub(super) fn taken(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.buffered(1);
    }

    /// A message taken could not be queued after all (the task is gone).
    pub(super) fn untaken(&self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.buffered(-1);
    }

    fn finish(&self, job: Job, result: PublishResult) {
        if result.is_ok() {
            self.stats.count_confirmed();
        } else {
            self.stats.count_failed();
        }
        match job.reply {
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Callback(cb) => cb(result),
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Answers `job` with `error`, handing its message back.
    pub(super) fn fail(&self, mut job: Job, error: Error) {
        m::publish_failed(&job.msg.exchange, error.kind());
        let message = std::mem::replace(&mut job.msg, Box::new(Message::new("", "", "")));
        self.finish(job, Err(PublishError { error, message }));
    }

    /// Answers `job`: the broker confirmed it.
    pub(super) fn succeed(&self, job: Job) {
        self.finish(job, Ok(()));
    }
}
