//! What the handle and the task share: the job a message travels as, and the
//! bookkeeping of outstanding and in-flight messages that the outage buffer, `flush`, the
//! stats and the gauges read.
//!
//! Every message is answered exactly once, through [`Shared::finish`]: that is where the
//! outstanding count drops, a caller waiting for room is let in and `flush` is woken.
//!
//! The costs here are per message and cross threads (the callers' and the task's), so
//! they are kept few: one counter, `outstanding`, is both the outage buffer's bound and
//! what `flush` waits on (a caller takes a slot with one compare-and-swap, the task gives
//! it back with one subtraction); the number waiting is derived from it (outstanding
//! minus in flight) instead of being counted on both sides; the gauges are brought up to
//! date by the task once per turn of its loop, not per message; and a confirmed message
//! travels back to its caller to be freed on the thread that built it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::stats::PublisherStats;
use super::{PublishError, PublishResult};
use crate::error::Error;
use crate::message::Message;
use crate::observability::metrics as m;

type Callback = Box<dyn FnOnce(PublishResult) + Send>;

/// What the task answers a waiting caller: on success the message itself, so that the
/// caller's thread (which allocated it) frees it, not the publisher's task.
pub(super) type Answer = Result<Box<Message>, PublishError>;

/// How the caller wants its answer.
pub(super) enum Reply {
    /// Through the [`Confirm`](super::Confirm) future.
    Wait(oneshot::Sender<Answer>),
    /// By a callback run on the publisher's task.
    Callback(Callback),
}

impl Reply {
    pub(super) fn callback(callback: impl FnOnce(PublishResult) + Send + 'static) -> Reply {
        Reply::Callback(Box::new(callback))
    }
}

/// One message on its way, from `send` to its answer. It holds one slot of the outage
/// buffer (counted in `outstanding`) until answered.
pub(super) struct Job {
    /// Boxed: a job moves through several queues, and a message is large.
    pub(super) msg: Box<Message>,
    pub(super) reply: Reply,
    pub(super) deadline: Instant,
    pub(super) nacks: u32,
    /// The task's metric handles for the message's exchange (an index the task assigns
    /// when it publishes), so settling does not read the message again.
    pub(super) metrics: usize,
    /// When it was last written to a channel, for the confirm latency.
    pub(super) sent_at: Option<Instant>,
    /// The publish span of a sampled trace: from `send` to the confirm (held, never read).
    pub(super) _span: tracing::Span,
}

/// The state the handle (and its clones) and the task share.
pub(super) struct Shared {
    pub(super) stats: PublisherStats,
    /// The outage buffer's size: at most this many messages outstanding.
    capacity: usize,
    /// Woken when a slot of a full buffer is given back.
    room: Notify,
    /// Woken when `outstanding` drops to zero.
    pub(super) idle: Notify,
    pub(super) closing: AtomicBool,
}

impl Shared {
    pub(super) fn new(capacity: usize) -> Shared {
        Shared {
            stats: PublisherStats::default(),
            capacity: capacity.max(1),
            room: Notify::new(),
            idle: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Messages taken and not yet answered.
    pub(super) fn outstanding(&self) -> usize {
        self.stats.outstanding.load(Ordering::Acquire)
    }

    /// Takes a slot of the outage buffer if one is free: the message then counts as
    /// outstanding until answered.
    pub(super) fn try_take(&self) -> bool {
        self.stats
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes a slot, waiting for one until `deadline`; false if none came.
    pub(super) async fn take(&self, deadline: Instant) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.try_take() {
                // Others may be waiting while more slots came free than wake-ups were
                // sent (several answered at once): pass the turn on.
                if self.outstanding() < self.capacity {
                    self.room.notify_one();
                }
                return true;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// Gives back a slot (an answer, or a message that could not be queued after all).
    pub(super) fn give_back(&self) {
        let before = self.stats.outstanding.fetch_sub(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.room.notify_one();
        }
        if before == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Sends the answer; the job's other parts (its span) end here.
    fn finish(&self, reply: Reply, answer: Answer) {
        match reply {
            Reply::Wait(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Callback(cb) => cb(answer.map(drop)),
        }
        self.give_back();
    }

    /// Answers `job` with `error`, handing its message back.
    pub(super) fn fail(&self, job: Job, error: Error) {
        self.stats.count_failed();
        m::publish_failed(&job.msg.exchange, error.kind());
        let Job { msg, reply, .. } = job;
        self.finish(
            reply,
            Err(PublishError {
                error,
                message: msg,
            }),
        );
    }

    /// Answers `job`: the broker confirmed it.
    pub(super) fn succeed(&self, job: Job) {
        self.stats.count_confirmed();
        let Job { msg, reply, .. } = job;
        self.finish(reply, Ok(msg));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Shared;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn the_buffer_admits_up_to_its_size() {
        let shared = Shared::new(3);
        assert!((0..3).all(|_| shared.try_take()));
        assert!(!shared.try_take());
        assert_eq!(shared.outstanding(), 3);
        shared.give_back();
        assert!(shared.try_take());
        assert!(!shared.try_take());
    }

    #[tokio::test]
    async fn a_full_buffer_waits_until_its_deadline() {
        let shared = Shared::new(1);
        assert!(shared.try_take());
        let started = Instant::now();
        assert!(!shared.take(soon(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(shared.outstanding(), 1);
    }

    /// One thread: the waiters all find the buffer full and wait before any slot comes
    /// back, and the slots come back together, so only the first is woken by a give-back;
    /// the others get in because each waiter that gets in passes the turn on.
    #[tokio::test]
    async fn every_waiter_gets_in_when_several_slots_free_at_once() {
        let shared = Arc::new(Shared::new(4));
        assert!((0..4).all(|_| shared.try_take()));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.take(soon(5_000)).await })
            })
            .collect();
        // Let them all run once: they find the buffer full and wait.
        tokio::task::yield_now().await;
        assert_eq!(shared.outstanding(), 4);
        for _ in 0..4 {
            shared.give_back();
        }
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
        assert_eq!(shared.outstanding(), 4);
        assert!(!shared.try_take());
    }

    #[tokio::test]
    async fn waiting_counts_what_is_outstanding_and_not_in_flight() {
        let shared = Shared::new(10);
        assert!((0..5).all(|_| shared.try_take()));
        shared.stats.add_in_flight();
        shared.stats.add_in_flight();
        let snapshot = shared.stats.snapshot();
        assert_eq!((snapshot.buffered, snapshot.in_flight), (3, 2));
        shared.stats.sub_in_flight(2);
        for _ in 0..5 {
            shared.give_back();
        }
        let snapshot = shared.stats.snapshot();
        assert_eq!((snapshot.buffered, snapshot.in_flight), (0, 0));
    }
}
