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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lepus_amqp::{AMQPValue, FieldTable};

use crate::message::short;
use crate::topology::{Queue, QueueType, Topology};

/// Failed handler invocations so far (all tiers).
pub const ATTEMPTS_HEADER: &str = "x-lepus-attempts";
/// Delay tiers passed so far.
pub const RETRIES_HEADER: &str = "x-lepus-retries";
/// When the first failure happened (ms since the Unix epoch).
pub const FIRST_FAILURE_HEADER: &str = "x-lepus-first-failure-ms";
/// When the last failure happened (ms since the Unix epoch).
pub const LAST_FAILURE_HEADER: &str = "x-lepus-last-failure-ms";
/// The last failure's text.
pub const LAST_ERROR_HEADER: &str = "x-lepus-last-error";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-lepus-original-exchange";
/// The routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-lepus-original-routing-key";
/// The work queue it failed on.
pub const ORIGINAL_QUEUE_HEADER: &str = "x-lepus-original-queue";
/// The consumer that gave up on it.
pub const CONSUMER_HEADER: &str = "x-lepus-consumer";
/// Why it was dead-lettered: `rejected` (a permanent failure) or `retries-exhausted`.
pub const REASON_HEADER: &str = "x-lepus-dead-letter-reason";

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
    /// queues, classic unless [`RetryPolicy::quorum`]).
    pub fn topology(&self, queue: &str) -> Topology {
        let kind = if self.quorum {
            QueueType::Quorum
        } else {
            QueueType::Classic
        };
        let mut topology = Topology::new().queue(Queue::new(self.dlq(queue)).queue_type(kind));
        for (tier, delay) in self.delays.iter().enumerate() {
            topology = topology.queue(
                Queue::new(self.wait_queue(queue, tier))
                    .queue_type(kind)
                    .message_ttl(*delay)
                    .dead_letter_exchange("")
                    .dead_letter_routing_key(queue),
            );
        }
        topology
    }
}

pub(crate) fn header_u32(headers: Option<&FieldTable>, key: &str) -> u32 {
    let Some(value) = headers.and_then(|h| h.inner().get(key)) else {
        return 0;
    };
    let n: i128 = match value {
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
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

/// The headers of a failed message's copy: its old headers, updated.
pub(crate) fn failure_headers(old: Option<&FieldTable>, f: &Failure<'_>) -> FieldTable {
    let mut headers = old.cloned().unwrap_or_default();
    let now = now_ms();
    let text = |s: &str| AMQPValue::LongString(s.into());
    let set_once = |h: &mut FieldTable, key: &str, value: AMQPValue| {
        if !h.inner().contains_key(key) {
            h.insert(short(key), value);
        }
    };
    headers.insert(
        short(ATTEMPTS_HEADER),
        AMQPValue::LongLongInt(f.failed_attempts.into()),
    );
    headers.insert(
        short(RETRIES_HEADER),
        AMQPValue::LongLongInt(f.retries.into()),
    );
    set_once(
        &mut headers,
        FIRST_FAILURE_HEADER,
        AMQPValue::LongLongInt(now),
    );
    headers.insert(short(LAST_FAILURE_HEADER), AMQPValue::LongLongInt(now));
    let error: String = f.error.chars().take(MAX_ERROR_TEXT).collect();
    headers.insert(short(LAST_ERROR_HEADER), text(&error));
    set_once(&mut headers, ORIGINAL_EXCHANGE_HEADER, text(f.exchange));
    set_once(
        &mut headers,
        ORIGINAL_ROUTING_KEY_HEADER,
        text(f.routing_key),
    );
    headers.insert(short(ORIGINAL_QUEUE_HEADER), text(f.queue));
    headers.insert(short(CONSUMER_HEADER), text(f.consumer));
    if let Some(reason) = f.dead_letter_reason {
        headers.insert(short(REASON_HEADER), text(reason));
    }
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
        let get = |k: &str| again.inner().get(k).cloned();
        assert_eq!(
            get(ORIGINAL_EXCHANGE_HEADER),
            Some(AMQPValue::LongString("shop".into()))
        );
        assert_eq!(
            get(ORIGINAL_ROUTING_KEY_HEADER),
            Some(AMQPValue::LongString("order.created".into()))
        );
        assert_eq!(header_u32(Some(&again), ATTEMPTS_HEADER), 3);
        assert_eq!(
            get(FIRST_FAILURE_HEADER),
            first.inner().get(FIRST_FAILURE_HEADER).cloned()
        );
    }

    #[test]
    fn tier_topology() {
        let t = RetryPolicy::default()
            .delays([Duration::from_secs(1)])
            .topology("q");
        let names: Vec<_> = t.queues().map(|q| q.name().to_owned()).collect();
        assert_eq!(names, ["q.dlq", "q.retry.1"]);
    }
}
