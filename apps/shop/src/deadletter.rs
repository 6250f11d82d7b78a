//! Recording dead-lettered messages in the service's own store.
//!
//! lepus moves a message that failed for good to `<queue>.dlq` with headers saying why.
//! Each consuming service drains its dead-letter queue into a `dead_letters` table with
//! the reason and last error, so the store knows the fate of every order it was handed
//! (the demo's loss check reads it) and an operator can inspect or replay it from there.

use std::time::Duration;

use crate::args;
use crate::db::{Db, now_ms};
use lepus::{Client, Consumer, HandlerError, Incoming, RetryPolicy};

/// The most of a body kept.
const MAX_BODY: usize = 4096;

/// Starts draining `dlq` into `db` for `service`: builds the consumer, counts it in
/// `health`'s readiness, and runs it on its own task until `cancel`.
pub fn spawn(
    client: &Client,
    dlq: &str,
    service: &'static str,
    db: &Db,
    health: &lepus::observability::Health,
    cancel: &lepus::CancellationToken,
) -> lepus::Result<tokio::task::JoinHandle<()>> {
    let dead_letters = consumer(client, dlq, service)?;
    // At zero from the start, so that its growth can be alerted on from the first one.
    metrics::counter!("shop_dead_letters_total", "service" => service).increment(0);
    health.watch_consumer(&dead_letters);
    let db = db.clone();
    let token = cancel.clone();
    Ok(tokio::spawn(async move {
        let handler = move |msg: Incoming| {
            let db = db.clone();
            async move { record(&db, service, msg).await }
        };
        if let Err(e) = dead_letters.run(handler, token).await {
            tracing::error!(service, error = %e, "dead-letter consumer stopped");
        }
    }))
}

/// A consumer of `dlq` for `service`. A record that cannot be written is tried again
/// (and the message stays in the dead-letter queue meanwhile); nothing is dropped.
pub fn consumer(client: &Client, dlq: &str, service: &str) -> lepus::Result<Consumer> {
    Consumer::builder(client, dlq)
        .name(format!("{service}-dead-letters"))
        .prefetch(50)
        .handler_timeout(Duration::from_secs(30))
        // No tiers and no dead-letter queue of its own: a failure is retried in process,
        // then the message goes back to this queue.
        .retry(RetryPolicy::none().immediate(3))
        .declare_retry_queues(false)
        .build()
}

/// Writes `msg` to the `dead_letters` table (once per message id).
pub async fn record(db: &Db, service: &'static str, msg: Incoming) -> Result<(), HandlerError> {
    let message_id = msg
        .message_id()
        .map(str::to_string)
        .unwrap_or_else(|| format!("no-id-{}", uuid::Uuid::now_v7()));
    let order_id = serde_json::from_slice::<serde_json::Value>(msg.body())
        .ok()
        .and_then(|v| {
            v.get("order_id")
                .and_then(|o| o.as_str())
                .map(str::to_string)
        });
    // lepus reads its failure headers; one missing (or mistyped) reads as unknown.
    let failure = msg.failure();
    let reason = failure.reason.unwrap_or_else(|| "unknown".into());
    let error = failure.last_error.unwrap_or_default();
    let queue = failure.original_queue.unwrap_or_default();
    let body: String = String::from_utf8_lossy(msg.body())
        .chars()
        .take(MAX_BODY)
        .collect();
    let log_order = order_id.clone().unwrap_or_default();
    let (log_reason, log_error) = (reason.clone(), error.clone());
    let inserted = db
        .execute(
            "INSERT INTO dead_letters
             (message_id, order_id, queue, reason, error, body, recorded_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
            args![message_id, order_id, queue, reason, error, body, now_ms()],
        )
        .await
        .map_err(|e| HandlerError::transient(format!("{e:#}")))?;
    if inserted > 0 {
        metrics::counter!("shop_dead_letters_total", "service" => service).increment(1);
        tracing::warn!(service, order_id = %log_order, reason = %log_reason, error = %log_error, "message dead-lettered and recorded");
    }
    Ok(())
}
