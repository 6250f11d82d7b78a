//! Declaring a topology on a connection, entity by entity: a failure is recorded with
//! the entity named and the rest goes on, on a fresh channel (the broker closes the
//! channel a declaration failed on).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lepus_amqp::{Channel, Connection, ExchangeDeclareOptions, QueueDeclareOptions};

use super::{Binding, QueueType, Topology, long_string};
use crate::error::{Error, ErrorKind};

/// Real names of server-named queues, by alias.
#[derive(Debug, Default, Clone)]
pub(crate) struct Names(Arc<Mutex<HashMap<String, String>>>);

impl Names {
    pub(crate) fn resolve(&self, name: &str) -> String {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }

    pub(crate) fn get(&self, alias: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(alias)
            .cloned()
    }

    fn set(&self, alias: &str, real: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(alias.to_owned(), real);
    }
}

/// One declaration that failed.
#[derive(Debug, Clone)]
pub struct TopologyFailure {
    /// What failed, e.g. `queue 'orders'` or `binding orders -> shop (order.*)`.
    pub entity: String,
    /// Why (the broker's reply, which names the argument at fault).
    pub error: Error,
}

impl std::fmt::Display for TopologyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The error's own message names the entity; the broker's reply follows.
        write!(f, "{}", self.error.report())
    }
}

/// The outcome of declaring the topology once.
#[derive(Debug, Clone, Default)]
pub struct TopologyReport {
    /// Entities declared successfully.
    pub declared: usize,
    /// Entities that failed, each named.
    pub failures: Vec<TopologyFailure>,
}

/// Declares `topology` on `conn`. Exclusive and server-named queues (and their bindings)
/// are declared only where `exclusive` is true: on the connection that consumes them.
pub(crate) async fn declare(
    conn: &Connection,
    topology: &Topology,
    names: &Names,
    exclusive: bool,
) -> lepus_amqp::Result<TopologyReport> {
    if topology.is_empty() {
        // Nothing to declare: no channel either (a round trip per connect saved, and
        // nothing of a closed channel left behind on an idle connection).
        return Ok(TopologyReport::default());
    }
    let channel = conn.open_channel().await?;
    let report = declare_with(channel.clone(), conn, topology, names, exclusive).await?;
    let _ = channel.close().await;
    Ok(report)
}

/// Declares `topology` (no server-named queues) starting on `channel`; returns what failed.
pub(crate) async fn declare_on(
    channel: &Channel,
    conn: &Connection,
    topology: &Topology,
) -> lepus_amqp::Result<Vec<TopologyFailure>> {
    let report = declare_with(channel.clone(), conn, topology, &Names::default(), true).await?;
    Ok(report.failures)
}

async fn declare_with(
    mut channel: Channel,
    conn: &Connection,
    topology: &Topology,
    names: &Names,
    exclusive: bool,
) -> lepus_amqp::Result<TopologyReport> {
    let mut report = TopologyReport::default();
    let record = |report: &mut TopologyReport,
                  entity: String,
                  result: lepus_amqp::Result<()>,
                  mismatch_hint: Option<&str>|
     -> bool {
        match result {
            Ok(()) => {
                report.declared += 1;
                true
            }
            Err(err) => {
                // A queue that exists with other arguments: say how to move it, where
                // the topology knows (the broker's reply only names the argument).
                let message = match mismatch_hint {
                    Some(hint) if err.is_precondition_failed() => format!("{entity} ({hint})"),
                    _ => entity.clone(),
                };
                let error = Error::with_amqp(ErrorKind::Topology, message, err);
                tracing::warn!(%entity, error = %error.report(), "declaration failed; continuing with the rest");
                report.failures.push(TopologyFailure { entity, error });
                false
            }
        }
    };
    for ex in &topology.exchanges {
        let options = ExchangeDeclareOptions {
            passive: false,
            durable: ex.durable,
            auto_delete: ex.auto_delete,
            internal: ex.internal,
        };
        let result = channel
            .exchange_declare(&ex.name, ex.kind.clone(), options, ex.arguments.clone())
            .await;
        if !record(&mut report, format!("exchange '{}'", ex.name), result, None) {
            channel = conn.open_channel().await?;
        }
    }
    let mut skipped: Vec<&str> = Vec::new();
    for q in &topology.queues {
        if q.exclusive && !exclusive {
            skipped.push(&q.name);
            continue;
        }
        let mut arguments = q.arguments.clone();
        if q.queue_type == QueueType::Quorum {
            arguments.insert("x-queue-type".into(), long_string("quorum"));
        }
        let options = QueueDeclareOptions {
            passive: false,
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
        };
        let declared_name = if q.server_named { "" } else { q.name.as_str() };
        let result = channel
            .queue_declare(declared_name, options, arguments)
            .await;
        let result = result.map(|info| {
            if q.server_named {
                names.set(&q.name, info.name);
            }
        });
        let entity = format!("queue '{}'", q.name);
        if !record(&mut report, entity, result, q.mismatch_hint.as_deref()) {
            channel = conn.open_channel().await?;
        }
    }
    for b in &topology.bindings {
        let (entity, result) = match b {
            Binding::Queue {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                if skipped.contains(&queue.as_str()) {
                    continue;
                }
                let real = names.resolve(queue);
                (
                    format!("binding queue '{queue}' -> exchange '{exchange}' ({routing_key})"),
                    channel
                        .queue_bind(&real, exchange, routing_key, arguments.clone())
                        .await,
                )
            }
            Binding::Exchange {
                destination,
                source,
                routing_key,
                arguments,
            } => (
                format!("binding exchange '{destination}' -> exchange '{source}' ({routing_key})"),
                channel
                    .exchange_bind(destination, source, routing_key, arguments.clone())
                    .await,
            ),
        };
        if !record(&mut report, entity, result, None) {
            channel = conn.open_channel().await?;
        }
    }
    Ok(report)
}
