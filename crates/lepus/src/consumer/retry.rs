//! Retry tiers and the dead-letter queue, as topology and as message headers.
//!
//! A failed message is first retried in process (`immediate` times). If it still fails,
//! the consumer publishes a copy to the next *wait queue* (`<queue>.retry.<n>`, a durable
//! queue whose `x-message-ttl` is the tier's delay and whose dead-letter target is the
//! default exchange with the work queue's name) and acks the original; when the delay
//! runs out the broker moves it back to the work queue. After the last tier the copy goes
//! to the dead-letter queue (`<queue>.dlq`) instead, with headers saying why.
//!
//! Retries never go back through `nack`/`reject` with requeue. That keeps them off a
//! quorum queue's `x-delivery-limit` count (which RabbitMQ advances on requeues, and in
//! recent versions differently for `reject` and `nack`), so the limit remains what it is
//! meant to be: a backstop for messages that crash the consumer process itself.
//!
//! How the broker moves an expired message back is its dead-lettering strategy. By
//! default it is *at most once*: the message is forwarded once, without a confirm, and
//! dropped if the work queue cannot take it at that moment (a quorum work queue without
//! a leader during an election, a full classic one with `reject-publish`, a missing
//! one); such a retry is in no queue any more. Quorum wait queues
//! ([`RetryPolicy::quorum`]) are therefore declared *at least once*
//! ([`DeadLetterStrategy::AtLeastOnce`], with the `reject-publish` overflow it requires;
//! they have no length limit, so it never rejects anything): the message stays in the
//! wait queue until the work queue has confirmed it, and the broker sends it again until
//! then (after `dead_letter_worker_publisher_confirm_timeout`, 3 minutes by default, if
//! the work queue refused it). Classic queues cannot do that, so classic wait queues stay
//! at most once: use quorum retry tiers where a lost retry matters. A wait queue declared
//! by an older lepus (at most once) fails the new declaration with 406
//! PRECONDITION_FAILED; it is left as it is and keeps working, and the failure says how
//! to replace it (stop the consumers, let it empty, delete it, start them again).

use std::time::Duration;

use lepus_amqp::FieldTable;

use crate::clock::now_ms;
use crate::failure::FailureRecord;
use crate::topology::{DeadLetterStrategy, Overflow, Queue, QueueType, Topology};

const MAX_ERROR_TEXT: usize = 1000;

/// How a consumer retries.
///
/// ```
/// use std::time::Duration;
/// use lepus::RetryPolicy;
///
/// // 3 attempts in process, then after 1 s, then after 10 s: 9 attempts in all.
/// let policy = RetryPolicy::default()
///     .immediate(2)
///     .delays([Duration::from_secs(1), Duration::from_secs(10)]);
/// assert_eq!(policy.max_attempts(), 9);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) immediate: u32,
    pub(crate) delays: Vec<Duration>,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) quorum: bool,
}

impl Default for RetryPolicy {
    /// Two immediate retries, then tiers of 1 s, 10 s and 60 s, then `<queue>.dlq`.
    fn default() -> Self {
        Self {
            immediate: 2,
            delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            dead_letter_queue: None,
            quorum: false,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: a failure goes straight to the dead-letter queue.
    pub fn none() -> Self {
        Self {
            immediate: 0,
            delays: Vec::new(),
            dead_letter_queue: None,
            quorum: false,
        }
    }

    /// In-process retries after the first failure of each delivery.
    pub fn immediate(mut self, retries: u32) -> Self {
        self.immediate = retries;
        self
    }

    /// The delay tiers, in order.
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = delays.into_iter().collect();
        self
    }

    /// The dead-letter queue's name (default `<queue>.dlq`).
    pub fn dead_letter_queue(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(name.into());
        self
    }

    /// Declare the wait queues and the dead-letter queue as quorum queues (replicated; for
    /// clusters). Classic by default.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// Handler invocations before a message that always fails is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        let rounds = u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        rounds.saturating_mul(self.immediate.saturating_add(1))
    }

    /// The wait queue of tier `tier` (from 0) for `queue`.
    pub fn wait_queue(&self, queue: &str, tier: usize) -> String {
        format!("{queue}.retry.{}", tier + 1)
    }

    /// The dead-letter queue for `queue`.
    pub fn dlq(&self, queue: &str) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{queue}.dlq"))
    }

    /// The wait queues and the dead-letter queue for `queue`, as topology (durable
    /// queues, classic unless [`RetryPolicy::quorum`]). Quorum wait queues hand expired
    /// messages back at least once (see the module docs); classic ones at most once.
    pub fn topology(&self, queue: &str) -> Topology {
        let kind = if self.quorum {
            QueueType::Quorum
        } else {
            QueueType::Classic
        };
        let mut topology = Topology::new().queue(Queue::new(self.dlq(queue)).queue_type(kind));
        for (tier, delay) in self.delays.iter().enumerate() {
            let name = self.wait_queue(queue, tier);
            let mut wait = Queue::new(&name)
                .queue_type(kind)
                .message_ttl(*delay)
                .dead_letter_exchange("")
                .dead_letter_routing_key(queue);
            if self.quorum {
                // Reject-publish is what at-least-once needs; with no length limit the
                // wait queue never rejects anything.
                wait = wait
                    .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce)
                    .overflow(Overflow::RejectPublish);
            }
            wait.mismatch_hint = Some(format!(
                "a wait queue declared with other arguments, e.g. by a lepus older than \
                 at-least-once dead-lettering of quorum wait queues; it keeps working as \
                 it was declared. To move it: stop the consumers of '{queue}', wait until \
                 it is empty (at most {delay:?}), delete it \
                 (`rabbitmqctl delete_queue --if-empty {name}`) and start them again"
            ));
            topology = topology.queue(wait);
        }
        topology
    }
}

/// What the consumer knows about a failure, to write into the copy's headers.
pub(crate) struct Failure<'a> {
    pub(crate) failed_attempts: u32,
    pub(crate) retries: u32,
    pub(crate) error: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) dead_letter_reason: Option<&'a str>,
}

/// The headers of a failed message's copy: its old headers, with its failure record
/// updated. Where the message came from and when it first failed are kept from the first
/// failure; the rest describes this one.
pub(crate) fn failure_headers(old: Option<&FieldTable>, f: &Failure<'_>) -> FieldTable {
    let first = FailureRecord::from_headers(old);
    let now = now_ms();
    let update = FailureRecord {
        attempts: Some(f.failed_attempts),
        retries: Some(f.retries),
        first_failure_ms: Some(first.first_failure_ms.unwrap_or(now)),
        last_failure_ms: Some(now),
        last_error: Some(f.error.chars().take(MAX_ERROR_TEXT).collect()),
        original_exchange: Some(first.original_exchange.unwrap_or_else(|| f.exchange.into())),
        original_routing_key: Some(
            first
                .original_routing_key
                .unwrap_or_else(|| f.routing_key.into()),
        ),
        original_queue: Some(f.queue.into()),
        consumer: Some(f.consumer.into()),
        reason: f.dead_letter_reason.map(Into::into),
        replays: None,
        replayed_at_ms: None,
    };
    let mut headers = old.cloned().unwrap_or_default();
    update.write_into(&mut headers);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_multiply_rounds_by_immediate_tries() {
        assert_eq!(RetryPolicy::none().max_attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(), 12);
        assert_eq!(RetryPolicy::none().immediate(3).max_attempts(), 4);
    }

    #[test]
    fn failure_headers_keep_the_first_origin() {
        let f = Failure {
            failed_attempts: 3,
            retries: 1,
            error: "boom",
            queue: "orders",
            exchange: "shop",
            routing_key: "order.created",
            consumer: "inventory",
            dead_letter_reason: None,
        };
        let first = failure_headers(None, &f);
        let again = failure_headers(
            Some(&first),
            &Failure {
                exchange: "",
                routing_key: "orders",
                ..f
            },
        );
        let (first, again) = (
            FailureRecord::from_headers(Some(&first)),
            FailureRecord::from_headers(Some(&again)),
        );
        assert_eq!(again.original_exchange.as_deref(), Some("shop"));
        assert_eq!(again.original_routing_key.as_deref(), Some("order.created"));
        assert_eq!(again.attempts, Some(3));
        assert_eq!(again.reason, None);
        assert!(first.first_failure_ms.is_some());
        assert_eq!(again.first_failure_ms, first.first_failure_ms);
    }

    #[test]
    fn tier_topology() {
        let t = RetryPolicy::default()
            .delays([Duration::from_secs(1)])
            .topology("q");
        let names: Vec<_> = t.queues().map(|q| q.name().to_owned()).collect();
        assert_eq!(names, ["q.dlq", "q.retry.1"]);
    }

    #[test]
    fn quorum_wait_queues_dead_letter_at_least_once() {
        let policy = RetryPolicy::default().delays([Duration::from_secs(1)]);
        for (quorum, strategy, overflow) in [
            (true, Some("at-least-once"), Some("reject-publish")),
            (false, None, None),
        ] {
            let t = policy.clone().quorum(quorum).topology("q");
            let wait = t.queues().find(|q| q.name() == "q.retry.1").unwrap();
            assert_eq!(wait.text_argument("x-dead-letter-strategy"), strategy);
            assert_eq!(wait.text_argument("x-overflow"), overflow);
            assert!(wait.validate().is_ok());
            assert!(wait.mismatch_hint.as_deref().unwrap().contains("q.retry.1"));
        }
    }
}
