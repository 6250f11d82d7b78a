//! Where a run's messages go: one or more queues, and an exchange they are bound to or
//! the default exchange.

use lepus::amqp::ExchangeKind;
use lepus::{Exchange, Queue, QueueType, Topology};

use super::{BenchArgs, QueueKind};

/// Where messages go and where they are taken from.
pub(super) struct Layout {
    /// The queues.
    pub queues: Vec<String>,
    /// The exchange, when not the default one.
    pub exchange: Option<String>,
    /// The routing key with an exchange.
    pub routing_key: String,
}

impl Layout {
    /// The layout `args` ask for.
    pub(super) fn new(args: &BenchArgs, run_id: &str) -> Layout {
        let queues = if args.queues.is_empty() {
            if args.queue_count == 1 {
                vec![format!("lepus-bench-{run_id}")]
            } else {
                (1..=args.queue_count)
                    .map(|i| format!("lepus-bench-{run_id}-{i}"))
                    .collect()
            }
        } else {
            args.queues.clone()
        };
        Layout {
            queues,
            exchange: args.exchange.clone(),
            routing_key: args
                .routing_key
                .clone()
                .unwrap_or_else(|| format!("lepus-bench-{run_id}")),
        }
    }

    /// Exchange and routing key of producer `i`.
    pub(super) fn target(&self, i: usize) -> (String, String) {
        match &self.exchange {
            Some(exchange) => (exchange.clone(), self.routing_key.clone()),
            None => {
                let n = self.queues.len().max(1);
                let queue = self.queues.get(i % n).cloned().unwrap_or_default();
                (String::new(), queue)
            }
        }
    }

    /// The queue consumer `i` takes from.
    pub(super) fn source(&self, i: usize) -> String {
        let n = self.queues.len().max(1);
        self.queues.get(i % n).cloned().unwrap_or_default()
    }

    /// The exchange, queues (with their arguments) and bindings to declare.
    pub(super) fn topology(&self, args: &BenchArgs) -> Topology {
        let queue_type = match args.queue_type {
            QueueKind::Classic => QueueType::Classic,
            QueueKind::Quorum => QueueType::Quorum,
        };
        let mut topology = Topology::new();
        if let Some(exchange) = &self.exchange
            && !exchange.starts_with("amq.")
        {
            let kind = match args.exchange_type.as_str() {
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                "topic" => ExchangeKind::Topic,
                "headers" => ExchangeKind::Headers,
                other => ExchangeKind::Custom(other.to_owned()),
            };
            topology = topology.exchange(Exchange::new(exchange.as_str(), kind));
        }
        for name in &self.queues {
            let mut queue = Queue::new(name.as_str()).queue_type(queue_type);
            for (k, v) in &args.queue_args {
                queue = queue.argument(k, v.clone());
            }
            topology = topology.queue(queue);
            if let Some(exchange) = &self.exchange {
                topology = topology.bind(name, exchange, &self.routing_key);
            }
        }
        topology
    }
}
