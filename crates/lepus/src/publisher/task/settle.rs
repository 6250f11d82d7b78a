//! Settling: what each confirm, nack, return, lost channel or passed deadline means for
//! the messages it concerns.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lepus_amqp::Confirmation;
use rand::Rng;
use tokio::time::Instant;

use super::super::culprit;
use super::super::shared::Job;
use super::{Open, Task};
use crate::error::{Error, ErrorKind};

/// The pause before the first republish of a nacked message; it doubles per nack.
const NACK_BACKOFF_INITIAL: Duration = Duration::from_millis(20);
/// The longest pause between republishes of a nacked message.
const NACK_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A message nacked this many times in a row goes out on a fresh channel: the old one
/// may still point at a queue leader that is gone.
const NACKS_BEFORE_NEW_CHANNEL: u32 = 2;

impl Task {
    /// Resolves every confirm at the front that is already in.
    pub(super) fn settle_ready(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        // One clock read for the confirm latencies of everything settled here (a
        // `multiple` ack settles many).
        let mut now = None;
        while let Some((_, confirm)) = self.inflight.front_mut() {
            let outcome = match Pin::new(confirm).poll(&mut cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => break,
            };
            let Some((job, _)) = self.inflight.pop_front() else {
                break;
            };
            self.shared.stats.sub_in_flight(1);
            let lost = outcome.is_err();
            let now = *now.get_or_insert_with(Instant::now);
            self.settle(job, outcome, now);
            if lost {
                break;
            }
        }
    }

    /// Applies one confirm outcome of `job` (already out of the in-flight queue).
    pub(super) fn settle(
        &mut self,
        job: Job,
        outcome: lepus_amqp::Result<Confirmation>,
        now: Instant,
    ) {
        let outcome = match outcome {
            Ok(confirmation) => confirmation,
            // The channel or connection died before the confirm.
            Err(err) => return self.channel_lost(Some((job, err))),
        };
        self.probe = self.probe.saturating_sub(1);
        self.progress = now;
        self.stalls = 0;
        match outcome {
            Confirmation::Nack => {
                self.shared.stats.count_nacked();
                self.with_metrics(job.metrics, |m| m.nacked.increment(1));
                self.retry_nack(job, now);
            }
            Confirmation::Returned(ret) => {
                self.shared.stats.count_returned();
                self.with_metrics(job.metrics, |m| m.returned.increment(1));
                let error = Error::new(
                    ErrorKind::Unroutable,
                    format!(
                        "unroutable: {} {} (exchange '{}', routing key '{}')",
                        ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key
                    ),
                );
                self.shared.fail(job, error);
            }
            _ => {
                let latency = job
                    .sent_at
                    .map(|at| now.saturating_duration_since(at).as_secs_f64());
                self.with_metrics(job.metrics, |m| {
                    m.confirmed.increment(1);
                    if let Some(latency) = latency {
                        m.latency.record(latency);
                    }
                });
                self.shared.succeed(job);
            }
        }
    }

    /// A nacked message goes again after a pause, while its deadline and `nack_retries`
    /// allow; otherwise it fails as nacked.
    pub(super) fn retry_nack(&mut self, mut job: Job, now: Instant) {
        let at = now + nack_pause(job.nacks);
        if job.nacks >= self.options.nack_retries || at >= job.deadline {
            let error = Error::new(
                ErrorKind::Nacked,
                format!(
                    "the broker refused the message (basic.nack), {} time(s)",
                    job.nacks.saturating_add(1)
                ),
            );
            return self.shared.fail(job, error);
        }
        job.nacks += 1;
        if job.nacks >= NACKS_BEFORE_NEW_CHANNEL && self.channel.is_some() {
            // The channel may hold stale state (a queue leader that moved): once what is
            // in flight on it is settled, the next attempt goes out on a fresh one.
            // Waiting for those confirms first sends nothing twice.
            self.renew.get_or_insert(now);
        }
        self.shared.stats.count_republished();
        self.delayed.push((at, job));
    }

    /// Moves nacked messages whose pause is over to the front of the waiting queue.
    pub(super) fn release_delayed(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut i = self.delayed.len();
        // Back to front, so the earliest nacked ends up first.
        while i > 0 {
            i -= 1;
            if self.delayed.get(i).is_some_and(|(at, _)| *at <= now) {
                let (_, job) = self.delayed.remove(i);
                self.waiting.push_front(job);
            }
        }
    }

    /// The channel (or its connection) is gone. `cause` is the first message whose confirm
    /// failed and why; every other unconfirmed message is settled if its confirm made it
    /// in before the loss, and otherwise goes back to the front of the queue, in order.
    /// If the broker closed the channel because of one publish, that one fails now.
    pub(super) fn channel_lost(&mut self, cause: Option<(Job, lepus_amqp::Error)>) {
        let open = self.drop_channel();
        let mut suspects: Vec<Job> = Vec::new();
        let mut error = None;
        if let Some((job, err)) = cause {
            suspects.push(job);
            error = Some(err);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let inflight = std::mem::take(&mut self.inflight);
        for (job, mut confirm) in inflight {
            self.shared.stats.sub_in_flight(1);
            match Pin::new(&mut confirm).poll(&mut cx) {
                // A confirm that made it in before the loss still counts for what it
                // was: an ack succeeds, a nack counts against the retries, a return fails.
                Poll::Ready(Ok(confirmation)) => self.settle(job, Ok(confirmation), now),
                Poll::Ready(Err(err)) => {
                    error.get_or_insert(err);
                    suspects.push(job);
                }
                Poll::Pending => suspects.push(job),
            }
        }
        let refused = error.filter(|err| {
            culprit::is_message_fault(err) && open.as_ref().is_some_and(|o| channel_level(o, err))
        });
        if let Some(err) = refused {
            let found = if suspects.len() == 1 {
                Some(0)
            } else {
                culprit::find(&err, suspects.iter().map(|j| &*j.msg))
            };
            match found {
                Some(index) if index < suspects.len() => {
                    let job = suspects.remove(index);
                    self.probe = self.probe.saturating_sub(1);
                    tracing::debug!(error = %err, "the broker refused a publish");
                    self.shared.fail(job, refusal(err));
                }
                // Which one is unknown: send them again one at a time.
                _ => self.probe = suspects.len(),
            }
        }
        for job in suspects.into_iter().rev() {
            self.requeue_front(job);
        }
    }

    pub(super) fn requeue_front(&mut self, job: Job) {
        self.shared.stats.count_republished();
        self.waiting.push_front(job);
    }

    /// Fails waiting messages whose deadline passed, and in-flight ones likewise (their
    /// confirm, if it ever comes, is ignored; the caller may publish again).
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while self.waiting.front().is_some_and(|j| j.deadline <= now) {
            if let Some(job) = self.waiting.pop_front() {
                let reason = if self.channel.is_none() {
                    "no connection to the broker before the publish timeout"
                } else if self.is_blocked() {
                    "the broker blocked publishing until the publish timeout"
                } else {
                    "not published before the publish timeout"
                };
                self.shared
                    .fail(job, Error::new(ErrorKind::Timeout, reason));
            }
        }
        while self
            .inflight
            .front()
            .is_some_and(|(j, _)| j.deadline <= now)
        {
            if let Some((job, _)) = self.inflight.pop_front() {
                self.shared.stats.sub_in_flight(1);
                self.shared.fail(
                    job,
                    Error::new(ErrorKind::Timeout, "no confirm before the publish timeout"),
                );
            }
        }
    }
}

/// Whether `err` closed the channel alone (the connection is up, or went down later for
/// another reason), rather than being the connection's own close.
fn channel_level(open: &Open, err: &lepus_amqp::Error) -> bool {
    open.connection
        .close_reason()
        .is_none_or(|conn| conn.message() != err.message())
}

/// The error a refused publish fails with: the broker's reply, typed.
fn refusal(err: lepus_amqp::Error) -> Error {
    if culprit::is_size_refusal(&err) {
        Error::as_kind(ErrorKind::TooLarge, err)
    } else {
        Error::from(err)
    }
}

/// How long a message nacked `nacks` times before waits to go again: doubling from
/// [`NACK_BACKOFF_INITIAL`] to [`NACK_BACKOFF_MAX`], each drawn from the upper half of
/// its ceiling, so messages nacked together do not all return at once.
fn nack_pause(nacks: u32) -> Duration {
    let ceiling = NACK_BACKOFF_INITIAL
        .saturating_mul(1u32 << nacks.min(16))
        .min(NACK_BACKOFF_MAX);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}
