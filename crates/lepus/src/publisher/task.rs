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
//!   message at once with the broker's reply, and only that one (see `culprit`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lepus_amqp::{Channel, Confirmation, Connection, PublishConfirm, PublishOptions};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Job, PublisherOptions, Shared, culprit};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics::{self as m, PublishMetrics};
use crate::supervisor::Live;

/// The pause before the first republish of a nacked message; it doubles per nack.
const NACK_BACKOFF_INITIAL: Duration = Duration::from_millis(20);
/// The longest pause between republishes of a nacked message.
const NACK_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A message nacked this many times in a row goes out on a fresh channel: the old one
/// may still point at a queue leader that is gone.
const NACKS_BEFORE_NEW_CHANNEL: u32 = 2;
/// The longest wait for a channel's in-flight confirms before replacing it anyway (its
/// unconfirmed messages then go out again on the new one).
const RENEW_WAIT: Duration = Duration::from_secs(1);
/// Stalls in a row (a fresh channel stalling as well) after which the connection is
/// closed, so the client reconnects, to another node first.
const STALLS_BEFORE_RECONNECT: u32 = 2;

pub(super) struct Task {
    pub(super) rx: mpsc::UnboundedReceiver<Job>,
    pub(super) last_metrics: Option<(String, PublishMetrics)>,
    pub(super) metrics: std::collections::HashMap<String, PublishMetrics>,
    pub(super) waiting: VecDeque<Job>,
    pub(super) inflight: VecDeque<(Job, PublishConfirm)>,
    /// Nacked messages waiting out their pause, with when they may go again.
    pub(super) delayed: Vec<(Instant, Job)>,
    pub(super) channel: Option<Open>,
    pub(super) blocked: Option<watch::Receiver<Option<String>>>,
    pub(super) live: watch::Receiver<Option<Live>>,
    pub(super) shared: Arc<Shared>,
    pub(super) options: PublisherOptions,
    pub(super) stop: CancellationToken,
    /// While above zero, messages go out one at a time, to learn which one of a batch
    /// made the broker close the channel.
    pub(super) probe: usize,
    /// Set (to when) after repeated nacks: publish nothing more on this channel, and
    /// replace it once its in-flight messages are settled, or after [`RENEW_WAIT`].
    pub(super) renew: Option<Instant>,
    /// The last sign of life of the channel: a confirm, the channel opening, the broker
    /// blocking or unblocking. The stall clock runs from it (or from the oldest
    /// unconfirmed publish, if later).
    pub(super) progress: Instant,
    /// Stalls in a row without a confirm in between (see [`Task::check_stall`]).
    pub(super) stalls: u32,
}

/// The channel in use and the connection it is on.
pub(super) struct Open {
    channel: Channel,
    connection: Connection,
}

// Transient: built and matched at once, never stored, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Job(Option<Job>),
    Confirmed(lepus_amqp::Result<Confirmation>),
    Changed,
    Deadline,
    Stop,
}

impl Task {
    pub(super) async fn run(mut self) {
        loop {
            self.settle_ready();
            self.release_delayed();
            self.check_stall();
            self.ensure_channel().await;
            if self.publish_waiting().await {
                // The channel closed under a publish: a new one, now.
                continue;
            }
            self.expire();
            let event = self.next_event().await;
            match event {
                Event::Job(Some(job)) => {
                    self.waiting.push_back(job);
                    // What else is queued already comes along (up to a window's worth):
                    // one turn of this loop per burst, not one per message.
                    while self.waiting.len() < self.options.window.max(1)
                        && let Ok(job) = self.rx.try_recv()
                    {
                        self.waiting.push_back(job);
                    }
                }
                Event::Job(None) | Event::Stop => break,
                Event::Confirmed(outcome) => {
                    if let Some((job, _)) = self.inflight.pop_front() {
                        self.shared.in_flight(-1);
                        self.settle(job, outcome, Instant::now());
                    }
                }
                Event::Changed | Event::Deadline => {}
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
            job = self.rx.recv() => Event::Job(job),
            _ = self.live.changed() => Event::Changed,
            _ = blocked => {
                // Confirms wait while the broker blocks: not a stall.
                self.progress = Instant::now();
                Event::Changed
            }
            _ = deadline => Event::Deadline,
        }
    }

    /// Resolves every confirm at the front that is already in.
    fn settle_ready(&mut self) {
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
            self.shared.in_flight(-1);
            let lost = outcome.is_err();
            let now = *now.get_or_insert_with(Instant::now);
            self.settle(job, outcome, now);
            if lost {
                break;
            }
        }
    }

    /// Runs `f` with the metric handles of `exchange`, registering them on first use.
    /// The last exchange's handles are kept at hand: most publishers use one or two.
    fn with_metrics(&mut self, exchange: &str, f: impl FnOnce(&PublishMetrics)) {
        if let Some((last, handles)) = &self.last_metrics
            && last == exchange
        {
            return f(handles);
        }
        if let Some(handles) = self.metrics.get(exchange) {
            self.last_metrics = Some((exchange.to_owned(), handles.clone()));
        }
        match self.metrics.get(exchange) {
            Some(handles) => f(handles),
            None => {
                let handles = PublishMetrics::new(exchange);
                f(&handles);
                self.metrics.insert(exchange.to_owned(), handles);
            }
        }
    }

    /// Applies one confirm outcome of `job` (already out of the in-flight queue).
    fn settle(&mut self, job: Job, outcome: lepus_amqp::Result<Confirmation>, now: Instant) {
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
                self.shared.stats.nacked.fetch_add(1, Ordering::Relaxed);
                self.with_metrics(&job.msg.exchange, |m| m.nacked.increment(1));
                self.retry_nack(job, now);
            }
            Confirmation::Returned(ret) => {
                self.shared.stats.returned.fetch_add(1, Ordering::Relaxed);
                self.with_metrics(&job.msg.exchange, |m| m.returned.increment(1));
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
                self.with_metrics(&job.msg.exchange, |m| {
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
    fn retry_nack(&mut self, mut job: Job, now: Instant) {
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
        self.shared
            .stats
            .republished
            .fetch_add(1, Ordering::Relaxed);
        self.shared.buffered(1);
        self.delayed.push((at, job));
    }

    /// Moves nacked messages whose pause is over to the front of the waiting queue.
    fn release_delayed(&mut self) {
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
    fn channel_lost(&mut self, cause: Option<(Job, lepus_amqp::Error)>) {
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
            self.shared.in_flight(-1);
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

    /// When the channel counts as stalled if no confirm arrives before: the stall
    /// timeout after the later of the last sign of life and the oldest unconfirmed
    /// publish. `None` while nothing is in flight, there is no channel, the broker
    /// blocks the connection, or the channel is being replaced anyway.
    fn stall_at(&self) -> Option<Instant> {
        if self.channel.is_none() || self.renew.is_some() || self.is_blocked() {
            return None;
        }
        let (oldest, _) = self.inflight.front()?;
        let since = oldest.sent_at.map_or(self.progress, |at| at.max(self.progress));
        since.checked_add(self.options.stall_timeout)
    }

    /// Gives up on a channel that confirmed nothing for the stall timeout while
    /// messages waited on it: RabbitMQ keeps a quorum queue's leader per channel, and a
    /// channel that still points at a leader cut off from the cluster neither confirms
    /// nor nacks until that node is back. Everything unconfirmed goes out again, in
    /// order, on a fresh channel (which asks for the current leader); if the fresh one
    /// stalls as well, the connection is closed so the client reconnects, to another
    /// node first.
    fn check_stall(&mut self) {
        let Some(at) = self.stall_at() else { return };
        let now = Instant::now();
        if at > now {
            return;
        }
        self.stalls = self.stalls.saturating_add(1);
        self.shared.stats.stalls.fetch_add(1, Ordering::Relaxed);
        m::publish_stalled();
        let waited = now.saturating_duration_since(self.progress);
        let move_node = self.stalls >= STALLS_BEFORE_RECONNECT;
        tracing::warn!(
            in_flight = self.inflight.len(),
            waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            stalls = self.stalls,
            reconnect = move_node,
            "no confirm within the stall timeout; publishing the unconfirmed messages again on a new channel"
        );
        if move_node && let Some(open) = &self.channel {
            self.stalls = 0;
            let connection = open.connection.clone();
            // The close waits for the broker's reply (bounded by the connection's
            // operation timeout); the supervisor reconnects once it is done.
            tokio::spawn(async move {
                let _ = connection.close().await;
            });
        }
        self.channel_lost(None);
    }

    fn drop_channel(&mut self) -> Option<Open> {
        self.blocked = None;
        self.renew = None;
        self.channel.take()
    }

    fn requeue_front(&mut self, job: Job) {
        self.shared
            .stats
            .republished
            .fetch_add(1, Ordering::Relaxed);
        self.shared.buffered(1);
        self.waiting.push_front(job);
    }

    async fn ensure_channel(&mut self) {
        if let Some(since) = self.renew
            && self.channel.is_some()
            && (self.inflight.is_empty() || since.elapsed() >= RENEW_WAIT)
        {
            tracing::debug!("repeated nacks; publishing on a new channel");
            self.channel_lost(None);
        }
        if let Some(open) = &self.channel {
            if open.channel.is_open() {
                return;
            }
            // Confirms failed by the close say which publish (if any) caused it.
            self.settle_ready();
            if self.channel.is_some() {
                self.channel_lost(None);
            }
        }
        let live = self.live.borrow_and_update().clone();
        let Some(live) = live else { return };
        if !live.connection.is_open() {
            return;
        }
        let opened = async {
            let ch = live.connection.open_channel().await?;
            ch.confirm_select().await?;
            Ok::<_, lepus_amqp::Error>(ch)
        };
        match opened.await {
            Ok(channel) => {
                tracing::debug!(generation = live.generation, "publisher channel open");
                self.blocked = Some(live.connection.blocked());
                self.progress = Instant::now();
                self.channel = Some(Open {
                    channel,
                    connection: live.connection,
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "publisher could not open a channel; waiting for the next connection")
            }
        }
    }

    /// Publishes waiting messages while the window and the broker allow. True if the
    /// channel was found closed (and dropped) on the way.
    async fn publish_waiting(&mut self) -> bool {
        loop {
            let window = if self.probe > 0 {
                1
            } else {
                self.options.window
            };
            if self.inflight.len() >= window || self.is_blocked() {
                return false;
            }
            if self.renew.is_some() {
                // Nothing more on this channel; `ensure_channel` replaces it once what
                // is in flight on it is settled.
                return false;
            }
            let Some(open) = &self.channel else {
                return false;
            };
            let Some(job) = self.waiting.pop_front() else {
                return false;
            };
            self.shared.buffered(-1);
            // One clock read serves the deadline and the confirm latency's start.
            let now = Instant::now();
            if job.deadline <= now {
                let error = Error::new(
                    ErrorKind::Timeout,
                    "not published before the publish timeout",
                );
                self.shared.fail(job, error);
                continue;
            }
            let options = PublishOptions {
                mandatory: job.msg.mandatory.unwrap_or(self.options.mandatory),
            };
            let m = &job.msg;
            match open
                .channel
                .basic_publish(&m.exchange, &m.routing_key, options, &m.properties, &m.body)
                .await
            {
                Ok(confirm) => {
                    let mut job = job;
                    job.sent_at = Some(now);
                    self.shared.stats.published.fetch_add(1, Ordering::Relaxed);
                    self.with_metrics(&job.msg.exchange, |m| m.published.increment(1));
                    self.shared.in_flight(1);
                    self.inflight.push_back((job, confirm));
                }
                Err(err) if err.is_recoverable() => {
                    // Not written: it goes out on the next channel, first. The confirms
                    // the close failed say whether a publish caused it.
                    tracing::debug!(error = %err, "publish failed; will retry on a new channel");
                    self.shared.buffered(1);
                    self.waiting.push_front(job);
                    self.settle_ready();
                    if self.channel.is_some() {
                        self.channel_lost(None);
                    }
                    return true;
                }
                Err(err) => self.shared.fail(job, Error::from_publish(err)),
            }
        }
    }

    /// Fails waiting messages whose deadline passed, and in-flight ones likewise (their
    /// confirm, if it ever comes, is ignored; the caller may publish again).
    fn expire(&mut self) {
        let now = Instant::now();
        while self.waiting.front().is_some_and(|j| j.deadline <= now) {
            if let Some(job) = self.waiting.pop_front() {
                self.shared.buffered(-1);
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
                self.shared.in_flight(-1);
                self.shared.fail(
                    job,
                    Error::new(ErrorKind::Timeout, "no confirm before the publish timeout"),
                );
            }
        }
    }

    async fn shutdown(mut self) {
        self.settle_ready();
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            self.waiting.push_back(job);
        }
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
        Error::with_amqp(ErrorKind::TooLarge, err.to_string(), err)
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
