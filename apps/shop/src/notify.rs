//! The notification service: consumes `inventory.reserved` and `inventory.rejected` and
//! "sends" the customer a message by writing it to its store, once per order; and
//! `inventory.cancelled` (a reservation from the cached stock the recheck could not
//! cover), telling the customer once more, once per order.
//!
//! The simulated mail gateway fails now and then (transient: lepus retries in process,
//! then through the delay tiers) and refuses addresses it cannot deliver to (permanent:
//! straight to the dead-letter queue, where it stays, with the reason in its headers, for
//! an operator to list, fix and replay with `lepus dlq`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lepus::observability::{self, Health};
use lepus::stats::ConsumerStats;
use lepus::{Client, Consumer, HandlerError, Incoming, Role};
use tokio_util::sync::CancellationToken;

use crate::args;
use crate::db::{Db, now_ms};
use crate::events::InventoryDecision;
use crate::service::{Common, join_all, spawn_connection_gauges};
use crate::telemetry::metrics_handle;
use crate::trace::TraceContext;

/// Settings of the notification service.
#[derive(Debug, Clone, Copy)]
pub struct NotifyOptions {
    /// The share of sends that fail transiently (0.0 to 1.0).
    pub gateway_failure_rate: f64,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            gateway_failure_rate: 0.02,
        }
    }
}

/// A running notification service.
pub struct NotifyService {
    /// Its lepus client.
    pub client: Client,
    /// Its database.
    pub db: Db,
    /// Where its health API listens.
    pub addr: SocketAddr,
    /// Its messaging health.
    pub health: Health,
    /// The inventory-events consumer's counters.
    pub consumer_stats: Arc<ConsumerStats>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NotifyService {
    /// Opens the store, connects, starts consuming and the health API on `listen`.
    pub async fn start(
        common: &Common,
        options: NotifyOptions,
        listen: SocketAddr,
        cancel: CancellationToken,
    ) -> anyhow::Result<NotifyService> {
        let db = Db::open(&common.database("notify"), crate::db::migrate::NOTIFY).await?;
        let queue = common.names.notify_queue();
        let client = common.client(
            "notify",
            crate::topology::notify_topology(&common.names, common.queue_type()),
            false,
        )?;
        let consumer = Consumer::builder(&client, &queue)
            .name("notify")
            .prefetch(64)
            .concurrency(4)
            .handler_timeout(Duration::from_secs(20))
            .retry(crate::topology::retry_policy())
            // Declared with the service's topology, of its queue type.
            .declare_retry_queues(false)
            .idempotency_shared(crate::dedupe::for_store(&db))
            .build()?;
        let consumer_stats = consumer.stats();
        let health = Health::new(&client);
        health.watch_consumer(&consumer);
        let mut tasks = Vec::new();
        {
            let db = db.clone();
            let token = cancel.clone();
            let failure_rate = options.gateway_failure_rate.clamp(0.0, 1.0);
            tasks.push(tokio::spawn(async move {
                let handler = move |msg: Incoming| {
                    let db = db.clone();
                    async move { handle(&db, failure_rate, msg).await }
                };
                if let Err(e) = consumer.run(handler, token).await {
                    tracing::error!(service = "notify", error = %e, "notification consumer stopped");
                }
            }));
        }
        tasks.push(spawn_connection_gauges(
            client.clone(),
            "notify",
            &[(Role::Publish, "publish"), (Role::Consume, "consume")],
            cancel.clone(),
        ));
        tasks.push(crate::queues::spawn_gauges(
            client.clone(),
            common.names.all_queues(),
            cancel.clone(),
        ));
        let app = observability::router(Some(metrics_handle()), health.clone());
        let addr = observability::serve(listen, app, cancel.clone()).await?;
        tracing::info!(service = "notify", %addr, "notification service listening");
        Ok(NotifyService {
            client,
            db,
            addr,
            health,
            consumer_stats,
            cancel,
            tasks,
        })
    }

    /// Whether the client is connected and the consumer subscribed.
    pub fn ready(&self) -> bool {
        self.health.report().ready
    }

    /// Stops consuming (running handlers finish) and serving; closes the client.
    pub async fn stop(self) {
        self.cancel.cancel();
        join_all(self.tasks, Duration::from_secs(15)).await;
        let _ = self.client.close(Duration::from_secs(5)).await;
    }
}

/// Whether the simulated gateway can deliver to `email`.
fn deliverable(email: &str) -> bool {
    match email.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }
        None => false,
    }
}

async fn handle(db: &Db, failure_rate: f64, msg: Incoming) -> Result<(), HandlerError> {
    let trace = TraceContext::from_incoming(&msg);
    let event: InventoryDecision = msg.json()?;
    if event.order_id.is_empty() || event.order_id.len() > 100 {
        return Err(HandlerError::permanent(
            "inventory event without a valid order_id",
        ));
    }
    let kind = match event.status.as_str() {
        "reserved" | "rejected" | "cancelled" => event.status.clone(),
        other => return Err(HandlerError::permanent(format!("unknown status {other:?}"))),
    };
    if !deliverable(&event.email) {
        return Err(HandlerError::permanent(format!(
            "undeliverable address {:?}",
            event.email
        )));
    }
    if failure_rate > 0.0 && rand::random::<f64>() < failure_rate {
        return Err(HandlerError::transient("mail gateway timed out"));
    }
    let message = match kind.as_str() {
        "reserved" => format!(
            "Dear {}, your order {} is confirmed.",
            event.customer, event.order_id
        ),
        "cancelled" => format!(
            "Dear {}, sorry: your order {} had to be cancelled after all ({}); nothing will be charged.",
            event.customer,
            event.order_id,
            event.reason.as_deref().unwrap_or("no stock")
        ),
        _ => format!(
            "Dear {}, sorry: your order {} could not be filled ({}).",
            event.customer,
            event.order_id,
            event.reason.as_deref().unwrap_or("no stock")
        ),
    };
    let trace_id = trace.trace_id();
    let order_id = event.order_id.clone();
    let (email, created_ms, header) = (event.email.clone(), event.created_ms, trace.header());
    let kind_db = kind.clone();
    let sent_ms = now_ms();
    let inserted = async {
        let mut tx = db.begin().await?;
        let n = if kind_db == "cancelled" {
            // A second message to a customer told "confirmed" before: its own table.
            tx.execute(
                "INSERT INTO cancellations (order_id, email, message, sent_ms, traceparent)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
                args![order_id.as_str(), email, message, sent_ms, header],
            )
            .await?
        } else {
            tx.execute(
                "INSERT INTO notifications
                 (order_id, kind, email, message, order_created_ms, sent_ms, traceparent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
                args![
                    order_id.as_str(),
                    kind_db.as_str(),
                    email,
                    message,
                    created_ms,
                    sent_ms,
                    header
                ],
            )
            .await?
        };
        if n == 0 {
            tx.bump("duplicates").await?;
        } else if kind_db == "cancelled" {
            tx.log_effect(&order_id, "customer-told-cancelled").await?;
        } else {
            tx.log_effect(&order_id, "customer-notified").await?;
        }
        tx.commit().await?;
        Ok::<_, crate::db::DbError>(n)
    }
    .await
    .map_err(|e| HandlerError::transient(format!("{e:#}")))?;
    if inserted == 0 {
        metrics::counter!("shop_duplicates_suppressed_total", "service" => "notify").increment(1);
        tracing::info!(service = "notify", trace_id = %trace_id, order_id = %event.order_id, "duplicate notification suppressed");
        return Ok(());
    }
    let latency = (sent_ms - event.created_ms).max(0) as f64 / 1000.0;
    metrics::histogram!("shop_order_to_notification_seconds").record(latency);
    metrics::counter!("shop_notifications_sent_total", "kind" => kind.clone()).increment(1);
    tracing::info!(service = "notify", trace_id = %trace_id, order_id = %event.order_id, kind = %kind, latency_ms = sent_ms - event.created_ms, "customer notified");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::deliverable;

    #[test]
    fn addresses() {
        assert!(deliverable("ada@example.org"));
        assert!(!deliverable("ada.example.org"));
        assert!(!deliverable("@example.org"));
        assert!(!deliverable("ada@localhost"));
    }
}
