//! What a finished handler's message becomes: acked, or copied (with its failure
//! headers) to a wait queue or the dead-letter queue by a confirmed publish and acked
//! once the copy is confirmed. A copy that cannot be published is tried again after a
//! growing pause while the original stays unacknowledged (see the module docs of
//! `consumer` for why it is not requeued).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acker::Acker;
use super::retry::{Failure, failure_headers};
use super::session::{Done, Running};
use super::{Consumer, Incoming, MOVE_RETRY_FIRST_PAUSE, MOVE_RETRY_MAX_PAUSE, Outcome};
use crate::backoff::{Backoff, ReconnectPolicy};
use crate::error::{Error, ErrorKind};
use crate::failure::{self, REASON_REJECTED, REASON_RETRIES_EXHAUSTED};
use crate::message::Message;
use crate::observability::metrics::ConsumeMetrics;
use crate::publisher::Publisher;

impl Consumer {
    /// Applies a finished handler or move; may start a move.
    pub(super) fn settle(&self, done: Done, s: Settling<'_>) -> Option<Running> {
        let cfg = &self.config;
        match done {
            Done::Skipped { incoming } => {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                s.metrics.deduplicated.increment(1);
                s.acker.ack(incoming.delivery.delivery_tag());
                None
            }
            Done::Handled {
                incoming,
                outcome: Outcome::Ack,
                ..
            } => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                s.metrics.acked.increment(1);
                s.acker.ack(incoming.delivery.delivery_tag());
                None
            }
            Done::Handled {
                incoming,
                outcome,
                failures,
                span,
                ..
            } => {
                let headers = incoming.headers();
                let failed_attempts = failure::count(headers, failure::ATTEMPTS_HEADER)
                    .unwrap_or(0)
                    .saturating_add(failures);
                let retries =
                    failure::count(headers, failure::RETRIES_HEADER).unwrap_or(0) as usize;
                let (reason, error, tier) = match &outcome {
                    Outcome::Retry(error) if retries < cfg.retry.delays.len() => {
                        (None, error.clone(), retries)
                    }
                    Outcome::Retry(error) => {
                        (Some(REASON_RETRIES_EXHAUSTED), error.clone(), retries)
                    }
                    Outcome::DeadLetter(error) => (Some(REASON_REJECTED), error.clone(), retries),
                    Outcome::Ack => (None, String::new(), retries),
                };
                let target = match reason {
                    None => cfg.retry.wait_queue(s.queue, tier),
                    Some(_) => cfg.retry.dlq(s.queue),
                };
                let failure = Failure {
                    failed_attempts,
                    retries: u32::try_from(tier + usize::from(reason.is_none()))
                        .unwrap_or(u32::MAX),
                    error: &error,
                    queue: s.queue,
                    exchange: incoming.exchange(),
                    routing_key: incoming.routing_key(),
                    consumer: &cfg.name,
                    dead_letter_reason: reason,
                };
                let mut copy = Message::new("", target, incoming.body().clone());
                *copy.properties_mut() = incoming
                    .properties()
                    .clone()
                    .with_headers(failure_headers(headers, &failure));
                let mv = Move {
                    incoming,
                    dead_lettered: reason.is_some(),
                    tier,
                    pauses: None,
                    span,
                };
                Some(mv.start(s.publisher.clone(), copy, None))
            }
            Done::Moved { result: Ok(()), mv } => {
                if mv.dead_lettered {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    s.metrics.dead_lettered.increment(1);
                    tracing::warn!(message_id = ?mv.incoming.message_id(), "message dead-lettered");
                } else if let Some(counter) = self.stats.retried.get(mv.tier) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = s.metrics.retried.get(mv.tier) {
                        c.increment(1);
                    }
                }
                s.acker.ack(mv.incoming.delivery.delivery_tag());
                None
            }
            Done::Moved {
                result: Err((error, copy)),
                mut mv,
            } => {
                let tag = mv.incoming.delivery.delivery_tag();
                self.stats.move_failures.fetch_add(1, Ordering::Relaxed);
                s.acker.hold(tag);
                if s.shutdown.is_cancelled() {
                    // Held until the channel closes, which gives it back to the queue.
                    tracing::warn!(error = %error.report(), "moving a failed message failed during shutdown; it goes back to the queue");
                    return None;
                }
                let held = s.acker.age(tag).unwrap_or_default();
                if held >= cfg.broker_consumer_timeout / 2 {
                    // Before the broker closes the channel over it (and every other
                    // message on it): one requeue, not a loop of them.
                    tracing::error!(error = %error.report(), ?held, "moving a failed message kept failing; returning it to the queue");
                    s.acker.nack_requeue(tag);
                    return None;
                }
                let pauses = mv.pauses.get_or_insert_with(|| {
                    ReconnectPolicy::default()
                        .initial_delay(MOVE_RETRY_FIRST_PAUSE)
                        .max_delay(MOVE_RETRY_MAX_PAUSE)
                        .delays()
                });
                let pause = pauses.next().unwrap_or(MOVE_RETRY_MAX_PAUSE);
                tracing::warn!(error = %error.report(), ?pause, message_id = ?mv.incoming.message_id(), "moving a failed message failed; holding it and trying again");
                Some(mv.start(
                    s.publisher.clone(),
                    *copy,
                    Some((pause, s.shutdown.clone())),
                ))
            }
        }
    }
}

/// What settling a finished future needs from its session.
pub(super) struct Settling<'a> {
    pub(super) acker: &'a mut Acker,
    pub(super) publisher: &'a Publisher,
    pub(super) queue: &'a str,
    pub(super) metrics: &'a ConsumeMetrics,
    pub(super) shutdown: &'a CancellationToken,
}

/// A failed message on its way to a wait queue or the dead-letter queue.
pub(super) struct Move {
    pub(super) incoming: Incoming,
    pub(super) dead_lettered: bool,
    pub(super) tier: usize,
    /// The pauses before further attempts, once one failed.
    pub(super) pauses: Option<Backoff>,
    pub(super) span: tracing::Span,
}

impl Move {
    /// Publishes `copy` (after `wait`'s pause, unless shutdown comes first), inside the
    /// message's span so the copy continues its trace.
    pub(super) fn start(
        self,
        publisher: Publisher,
        copy: Message,
        wait: Option<(Duration, CancellationToken)>,
    ) -> Running {
        let span = self.span.clone();
        Box::pin(
            async move {
                if let Some((pause, shutdown)) = wait {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => {
                            let stopped = Error::new(ErrorKind::Closed, "consumer shutting down");
                            return Done::Moved { result: Err((stopped, Box::new(copy))), mv: self };
                        }
                    }
                }
                let result = publisher
                    .publish(copy)
                    .await
                    .map_err(|e| (e.error, e.message));
                Done::Moved { result, mv: self }
            }
            .instrument(span),
        )
    }
}
