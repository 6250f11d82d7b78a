//! The broker topology: one topic exchange, a durable work queue per consuming service,
//! and lepus's retry tiers and dead-letter queue for each.
//!
//! The queue type is the caller's: classic on a single node (the demo's default, where
//! replication buys nothing), quorum on a cluster. Quorum means every queue, the wait
//! queues and the dead-letter queues too: a dead letter on a classic queue lives on one
//! node and is gone with its disk. Work queues then carry a delivery limit
//! ([`DELIVERY_LIMIT`]) and dead-letter to their DLQ, so that a message that keeps
//! killing its consumer (it is never acked, the broker returns it each time the
//! consumer's channel dies) ends in the DLQ instead of looping forever; quorum queues
//! dead-letter at least once (work queues to their DLQ, wait queues back to their work
//! queue), so a dead letter is not dropped when its target cannot take it at that moment
//! (a leader election after a node kill or a zone cut). lepus's own retries
//! never requeue, so they do not count against the limit. The DLQs carry no limit:
//! `lepus dlq list` reads by holding messages and letting the broker return them, which
//! counts as a delivery, and a DLQ has nowhere further to send them.

use std::time::Duration;

use lepus::topology::{DeadLetterStrategy, Overflow};
use lepus::{Exchange, Queue, QueueType, RetryPolicy, Topology};

use crate::events::{
    INVENTORY_CANCELLED, INVENTORY_COMPENSATE, INVENTORY_REJECTED, INVENTORY_RESERVED,
    ORDER_CREATED,
};

/// Names of the exchange and queues, under a namespace (default `shop`), so two systems
/// (or two tests) can share a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new("shop")
    }
}

impl Names {
    /// Names under `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// The topic exchange every event goes through.
    pub fn exchange(&self) -> &str {
        &self.namespace
    }

    /// The inventory service's work queue (`order.created`).
    pub fn inventory_queue(&self) -> String {
        format!("{}.inventory.order-created", self.namespace)
    }

    /// The notification service's work queue (`inventory.*`).
    pub fn notify_queue(&self) -> String {
        format!("{}.notify.inventory-events", self.namespace)
    }

    /// The compensation queue: reservations made from the cached stock snapshot, until
    /// the stock service confirms or refuses them.
    pub fn compensation_queue(&self) -> String {
        format!("{}.inventory.compensation", self.namespace)
    }

    /// Every queue the system declares: work queues, wait queues, dead-letter queues.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = Vec::new();
        for (work, policy, tiers) in [
            (self.inventory_queue(), retry_policy(), RETRY_DELAYS.len()),
            (self.notify_queue(), retry_policy(), RETRY_DELAYS.len()),
            (
                self.compensation_queue(),
                compensation_policy(),
                COMPENSATION_DELAYS.len(),
            ),
        ] {
            queues.push(work.clone());
            for tier in 0..tiers {
                queues.push(policy.wait_queue(&work, tier));
            }
            queues.push(policy.dlq(&work));
        }
        queues
    }
}

/// The delay tiers: short, so that a demo of a minute shows retries completing.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// Times the broker may hand a quorum work queue's message out again after a consumer
/// died holding it, before it dead-letters it to the DLQ. Generous: a replica killed in
/// the middle of its work, or a node failing over, returns its whole prefetch window once.
pub const DELIVERY_LIMIT: i64 = 20;

/// The retry policy of both consumers: 2 immediate retries, then 1 s and 5 s tiers, then
/// the dead-letter queue. Its queues are declared by the services' topology (see
/// [`inventory_topology`]), so consumers do not declare them again.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::default().immediate(2).delays(RETRY_DELAYS)
}

/// The delay tiers of the compensation queue: the stock service may be out for a while,
/// and a compensation must outlast that (about two minutes in all) before an operator
/// has to look at it in the dead-letter queue.
pub const COMPENSATION_DELAYS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// The compensator's retry policy: one immediate retry, then [`COMPENSATION_DELAYS`].
pub fn compensation_policy() -> RetryPolicy {
    RetryPolicy::default()
        .immediate(1)
        .delays(COMPENSATION_DELAYS)
}

/// The wait and dead-letter queues of `queue` under `policy`, of `queue_type`.
fn retry_topology(policy: RetryPolicy, queue: &str, queue_type: QueueType) -> Topology {
    policy
        .quorum(queue_type == QueueType::Quorum)
        .topology(queue)
}

/// A work queue of `queue_type`; a quorum one gets the delivery limit and dead-letters
/// to its DLQ at least once: a message past the limit stays in the work queue until the
/// DLQ has confirmed it, instead of being dropped if the DLQ cannot take it then (no
/// leader during an election, say). At-least-once needs `reject-publish` overflow; the
/// work queues have no length limit, so it never refuses a publish.
fn work_queue(name: &str, queue_type: QueueType) -> Queue {
    let queue = Queue::new(name).queue_type(queue_type);
    match queue_type {
        QueueType::Quorum => queue
            .delivery_limit(DELIVERY_LIMIT)
            .dead_letter_exchange("")
            .dead_letter_routing_key(&retry_policy().dlq(name))
            .dead_letter_strategy(DeadLetterStrategy::AtLeastOnce)
            .overflow(Overflow::RejectPublish),
        _ => queue,
    }
}

/// What the order service declares: the exchange (it only publishes).
pub fn order_topology(names: &Names) -> Topology {
    Topology::new().exchange(Exchange::topic(names.exchange()))
}

/// What the inventory service declares: its work queue, wait queues and DLQ, all of
/// `queue_type`.
pub fn inventory_topology(names: &Names, queue_type: QueueType) -> Topology {
    let queue = names.inventory_queue();
    let compensation = names.compensation_queue();
    Topology::new()
        .exchange(Exchange::topic(names.exchange()))
        .queue(work_queue(&queue, queue_type))
        .bind(&queue, names.exchange(), ORDER_CREATED)
        .merge(retry_topology(retry_policy(), &queue, queue_type))
        .queue(work_queue(&compensation, queue_type))
        .bind(&compensation, names.exchange(), INVENTORY_COMPENSATE)
        .merge(retry_topology(
            compensation_policy(),
            &compensation,
            queue_type,
        ))
}

/// What the notification service declares: its work queue, wait queues and DLQ, all of
/// `queue_type`.
pub fn notify_topology(names: &Names, queue_type: QueueType) -> Topology {
    let queue = names.notify_queue();
    Topology::new()
        .exchange(Exchange::topic(names.exchange()))
        .queue(work_queue(&queue, queue_type))
        .bind(&queue, names.exchange(), INVENTORY_RESERVED)
        .bind(&queue, names.exchange(), INVENTORY_REJECTED)
        .bind(&queue, names.exchange(), INVENTORY_CANCELLED)
        .merge(retry_topology(retry_policy(), &queue, queue_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_is_listed_once() {
        let names = Names::new("t");
        let all = names.all_queues();
        assert_eq!(all.len(), 14);
        assert!(all.contains(&"t.inventory.order-created.retry.2".to_string()));
        assert!(all.contains(&"t.notify.inventory-events.dlq".to_string()));
        let declared: Vec<String> = inventory_topology(&names, QueueType::Classic)
            .queues()
            .chain(notify_topology(&names, QueueType::Quorum).queues())
            .map(|q| q.name().to_string())
            .collect();
        for q in &all {
            assert!(declared.contains(q), "{q} is not declared");
        }
    }

    #[test]
    fn clustered_runs_declare_every_queue_quorum_with_limits_on_work_queues() {
        let names = Names::new("t");
        let defs = inventory_topology(&names, QueueType::Quorum)
            .merge(notify_topology(&names, QueueType::Quorum))
            .to_definitions();
        assert_eq!(defs.queues.len(), names.all_queues().len());
        for q in &defs.queues {
            assert_eq!(
                q.arguments.get("x-queue-type").and_then(|v| v.as_str()),
                Some("quorum"),
                "{} is not quorum",
                q.name
            );
            let limit = q.arguments.get("x-delivery-limit").and_then(|v| v.as_i64());
            match kind_of(&q.name) {
                "work" => {
                    assert_eq!(limit, Some(DELIVERY_LIMIT), "{}", q.name);
                    let text = |key: &str| q.arguments.get(key).and_then(|v| v.as_str());
                    assert_eq!(text("x-dead-letter-strategy"), Some("at-least-once"));
                    assert_eq!(text("x-overflow"), Some("reject-publish"));
                    assert!(q.arguments.get("x-max-length").is_none());
                    assert!(q.arguments.get("x-max-length-bytes").is_none());
                    assert_eq!(
                        q.arguments
                            .get("x-dead-letter-routing-key")
                            .and_then(|v| v.as_str()),
                        Some(format!("{}.dlq", q.name).as_str())
                    );
                }
                _ => assert_eq!(limit, None, "{} must carry no delivery limit", q.name),
            }
        }
        let single = inventory_topology(&names, QueueType::Classic).to_definitions();
        for q in &single.queues {
            assert_ne!(
                q.arguments.get("x-queue-type").and_then(|v| v.as_str()),
                Some("quorum")
            );
            assert!(q.arguments.get("x-delivery-limit").is_none());
        }
    }

    fn kind_of(name: &str) -> &'static str {
        crate::queues::kind(name)
    }
}
