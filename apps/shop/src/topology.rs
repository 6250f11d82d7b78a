//! The broker topology: one topic exchange, a durable work queue per consuming service
//! (quorum on a cluster), and lepus's retry tiers and dead-letter queue for each.

use std::time::Duration;

use lepus::{Exchange, Queue, RetryPolicy, Topology};

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

/// The retry policy of both consumers: 2 immediate retries, then 1 s and 5 s tiers, then
/// the dead-letter queue.
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

fn work_queue(name: &str, quorum: bool) -> Queue {
    let queue = Queue::new(name);
    if quorum { queue.quorum() } else { queue }
}

/// What the order service declares: the exchange (it only publishes).
pub fn order_topology(names: &Names) -> Topology {
    Topology::new().exchange(Exchange::topic(names.exchange()))
}

/// What the inventory service declares.
pub fn inventory_topology(names: &Names, quorum: bool) -> Topology {
    let queue = names.inventory_queue();
    let compensation = names.compensation_queue();
    Topology::new()
        .exchange(Exchange::topic(names.exchange()))
        .queue(work_queue(&queue, quorum))
        .bind(&queue, names.exchange(), ORDER_CREATED)
        .merge(retry_policy().topology(&queue))
        .queue(work_queue(&compensation, quorum))
        .bind(&compensation, names.exchange(), INVENTORY_COMPENSATE)
        .merge(compensation_policy().topology(&compensation))
}

/// What the notification service declares.
pub fn notify_topology(names: &Names, quorum: bool) -> Topology {
    let queue = names.notify_queue();
    Topology::new()
        .exchange(Exchange::topic(names.exchange()))
        .queue(work_queue(&queue, quorum))
        .bind(&queue, names.exchange(), INVENTORY_RESERVED)
        .bind(&queue, names.exchange(), INVENTORY_REJECTED)
        .bind(&queue, names.exchange(), INVENTORY_CANCELLED)
        .merge(retry_policy().topology(&queue))
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
        let declared: Vec<String> = inventory_topology(&names, false)
            .queues()
            .chain(notify_topology(&names, true).queues())
            .map(|q| q.name().to_string())
            .collect();
        for q in &all {
            assert!(declared.contains(q), "{q} is not declared");
        }
    }
}
