//! The queue from the handles to the task.
//!
//! A plain deque under a mutex rather than a channel: a caller appends one job (one
//! uncontended lock), and the task takes everything queued at once, swapping its empty
//! deque for the full one, so neither side allocates per message (an unbounded channel
//! allocates a block every 32 messages and counts each one on both sides). The task is
//! woken only when the queue goes from empty to not empty.
//!
//! It is bounded by the outage buffer: a job is queued only after taking a slot of it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::shared::Job;

/// Jobs on their way from the handles to the task.
#[derive(Default)]
pub(super) struct Queue {
    inner: Mutex<Inner>,
    /// Woken when the first job is queued after the task took them all, and when the last
    /// handle goes.
    ready: Notify,
}

#[derive(Default)]
struct Inner {
    jobs: VecDeque<Job>,
    /// The task stopped taking jobs: pushes fail.
    closed: bool,
    /// Every handle is gone: nothing more will come.
    abandoned: bool,
}

/// What [`Queue::take_into`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Some jobs (or none yet); more may come.
    Open,
    /// Nothing queued and every handle gone.
    Abandoned,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds a valid deque.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for the task; gives it back if the task stopped taking jobs.
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(job);
        }
        let was_empty = inner.jobs.is_empty();
        inner.jobs.push_back(job);
        drop(inner);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued to the back of `into`, in order.
    pub(super) fn take_into(&self, into: &mut VecDeque<Job>) -> Taken {
        let mut inner = self.lock();
        if inner.jobs.is_empty() {
            return if inner.abandoned {
                Taken::Abandoned
            } else {
                Taken::Open
            };
        }
        if into.is_empty() {
            // Swap the buffers: the queue keeps the task's (empty, already grown) one.
            std::mem::swap(into, &mut inner.jobs);
        } else {
            into.extend(inner.jobs.drain(..));
        }
        Taken::Open
    }

    /// Resolves when a job may have been queued (or the last handle went) since the task
    /// last took them all.
    pub(super) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes no more jobs; what is queued goes to the back of `into`.
    pub(super) fn close(&self, into: &mut VecDeque<Job>) {
        let mut inner = self.lock();
        inner.closed = true;
        into.extend(inner.jobs.drain(..));
    }

    fn abandon(&self) {
        self.lock().abandoned = true;
        self.ready.notify_one();
    }
}

/// The handles' side of the queue, shared by every clone of a publisher: when the last
/// one is dropped, the task is told, finishes what it holds and stops.
pub(super) struct Sender(Arc<Queue>);

impl Sender {
    pub(super) fn new(queue: Arc<Queue>) -> Sender {
        Sender(queue)
    }

    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        self.0.push(job)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::{Queue, Sender, Taken};
    use crate::message::Message;
    use crate::publisher::shared::{Job, Reply};

    fn job(id: &str) -> Job {
        let (tx, _rx) = oneshot::channel();
        Job {
            msg: Box::new(Message::new("", "q", "x").message_id_str(id)),
            reply: Reply::Wait(tx),
            deadline: Instant::now(),
            nacks: 0,
            metrics: 0,
            sent_at: None,
            _span: tracing::Span::none(),
        }
    }

    fn ids(jobs: &VecDeque<Job>) -> Vec<&str> {
        jobs.iter()
            .map(|j| j.msg.message_id().unwrap_or_default())
            .collect()
    }

    #[test]
    fn jobs_come_out_in_the_order_they_went_in() {
        let queue = Queue::default();
        let mut taken = VecDeque::new();
        for id in ["a", "b"] {
            assert!(queue.push(job(id)).is_ok());
        }
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        // Taken into a deque that already holds some: appended behind them.
        for id in ["c", "d"] {
            assert!(queue.push(job(id)).is_ok());
        }
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        assert_eq!(ids(&taken), ["a", "b", "c", "d"]);
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        assert_eq!(taken.len(), 4);
    }

    #[tokio::test]
    async fn the_task_is_woken_by_the_first_job_after_it_took_them_all() {
        let queue = Arc::new(Queue::default());
        let mut taken = VecDeque::new();
        assert!(queue.push(job("a")).is_ok());
        tokio::time::timeout(Duration::from_secs(5), queue.ready())
            .await
            .unwrap();
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        let pusher = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { queue.push(job("b")).is_ok() })
        };
        tokio::time::timeout(Duration::from_secs(5), queue.ready())
            .await
            .unwrap();
        assert!(pusher.await.unwrap());
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        assert_eq!(ids(&taken), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_closed_queue_hands_jobs_back_and_a_dropped_sender_ends_it() {
        let queue = Arc::new(Queue::default());
        let sender = Sender::new(Arc::clone(&queue));
        assert!(sender.push(job("a")).is_ok());
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), queue.ready())
            .await
            .unwrap();
        let mut taken = VecDeque::new();
        // What was queued still comes out first; then the end.
        assert_eq!(queue.take_into(&mut taken), Taken::Open);
        assert_eq!(queue.take_into(&mut taken), Taken::Abandoned);
        queue.close(&mut taken);
        let back = queue.push(job("late")).err().unwrap();
        assert_eq!(back.msg.message_id(), Some("late"));
        assert_eq!(ids(&taken), ["a"]);
    }
}
