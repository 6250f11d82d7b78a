//! The transactional outbox: an event is a row written in the same transaction as the
//! state change it announces, and a relay publishes unsent rows with confirms and marks
//! them sent only once the broker has confirmed them.
//!
//! So a state change and its event are never separated: if the broker is down, rows wait
//! (and the API keeps accepting orders); if the process dies between the confirm and the
//! mark, the row goes out again after restart under the same `message_id`, and consumers
//! drop the duplicate. At least once from the database to the broker, by construction.
//!
//! Replicas share one PostgreSQL outbox, so there a relay claims its batch with
//! `SELECT ... FOR UPDATE SKIP LOCKED` and holds the claim (its transaction) until the
//! confirms are in and the rows marked: two relays never take the same row, and a relay
//! that dies releases its claim with its connection, so another relay sends the rows.
//! On SQLite (one instance, one connection) holding a transaction across the publish
//! would stall the service's other writers, so there the batch is read, published and
//! marked in separate steps, as before.

use std::sync::Arc;
use std::time::Duration;

use lepus::{Client, Message, Publisher, PublisherOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::args;
use crate::db::{Db, DbResult, Session, now_ms};
use crate::trace::{TRACEPARENT, relay_span};

/// Events in the outbox not yet confirmed by the broker, by `service`.
pub const PENDING: &str = "shop_outbox_pending";
/// Seconds the oldest unconfirmed event has waited (0 when none waits), by `service`.
pub const OLDEST_AGE: &str = "shop_outbox_oldest_pending_age_seconds";

/// Rows published per round.
const BATCH: usize = 256;
/// How often the relay looks for rows when nobody woke it.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// The longest pause after a failed round.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Adds an event to the outbox inside `tx`. Returns its id (the message id it will be
/// published with).
pub async fn insert(
    tx: &mut Session,
    routing_key: &str,
    payload: &str,
    traceparent: &str,
) -> DbResult<String> {
    let event_id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent, created_ms)
         VALUES ($1, $2, $3, $4, $5)",
        args![
            event_id.as_str(),
            routing_key,
            payload,
            traceparent,
            now_ms()
        ],
    )
    .await?;
    Ok(event_id)
}

struct Row {
    seq: i64,
    event_id: String,
    routing_key: String,
    payload: String,
    traceparent: String,
}

/// Publishes a service's outbox. Wake it after a commit that added rows.
pub struct Relay {
    db: Db,
    publisher: Publisher,
    exchange: String,
    service: &'static str,
    wake: Arc<Notify>,
}

impl Relay {
    /// A relay publishing `db`'s outbox to `exchange` on `client`'s publishing connection.
    pub fn new(db: Db, client: &Client, exchange: &str, service: &'static str) -> Self {
        let publisher = Publisher::new(
            client,
            PublisherOptions::default()
                .mandatory(true)
                .window(512)
                .buffer(BATCH * 2)
                .publish_timeout(Duration::from_secs(15)),
        );
        // Registered at zero, so that a scrape shows them (and rate() works) before the
        // first failure.
        metrics::counter!("shop_outbox_failed_total", "service" => service).increment(0);
        metrics::gauge!(PENDING, "service" => service).set(0.0);
        metrics::gauge!(OLDEST_AGE, "service" => service).set(0.0);
        Self {
            db,
            publisher,
            exchange: exchange.to_string(),
            service,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Its publisher (for health reports).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// What to notify after committing new rows.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Publishes until `cancel`. Never gives up on a row.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let (published, failed) = match self.round().await {
                Ok(counts) => counts,
                Err(e) => {
                    tracing::warn!(service = self.service, error = %format!("{e:#}"), "outbox round failed");
                    (0, 1)
                }
            };
            let pause = if failed > 0 {
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(pause)
            } else {
                backoff = Duration::from_millis(200);
                (published == 0).then_some(IDLE_POLL)
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified(), if failed == 0 => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        let _ = self.publisher.close(Duration::from_secs(5)).await;
    }

    /// One batch: publish, await confirms, mark the confirmed rows. Returns (confirmed,
    /// failed).
    async fn round(&self) -> anyhow::Result<(usize, usize)> {
        self.report_backlog().await?;
        if self.db.is_postgres() {
            self.round_claimed().await
        } else {
            self.round_single().await
        }
    }

    /// The backlog as this round found it: how many events wait, and how long the
    /// oldest has waited (0 when none does). Alerts watch the age.
    async fn report_backlog(&self) -> anyhow::Result<()> {
        let row = self
            .db
            .query_opt(
                "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE sent_ms IS NULL",
                &[],
            )
            .await?;
        let (pending, oldest) = match row {
            Some(r) => (r.int(0)?, r.opt_int(1)?),
            None => (0, None),
        };
        let age = oldest.map_or(0.0, |ms| {
            (now_ms().saturating_sub(ms)).max(0) as f64 / 1000.0
        });
        metrics::gauge!(PENDING, "service" => self.service).set(pending as f64);
        metrics::gauge!(OLDEST_AGE, "service" => self.service).set(age);
        Ok(())
    }

    /// PostgreSQL: claim a batch (row locks other relays skip), publish it, mark what
    /// was confirmed, and only then release the claim.
    async fn round_claimed(&self) -> anyhow::Result<(usize, usize)> {
        let mut tx = self.db.begin().await?;
        let rows = claim(&mut tx, " FOR UPDATE SKIP LOCKED").await?;
        if rows.is_empty() {
            metrics::gauge!("shop_outbox_batch", "service" => self.service).set(0.0);
            return Ok((0, 0));
        }
        let (confirmed, failed) = self.publish(rows).await;
        let count = confirmed.len();
        mark(&mut tx, confirmed).await?;
        tx.commit().await?;
        self.count(count, failed);
        Ok((count, failed))
    }

    /// SQLite: take a batch, publish it, mark what was confirmed.
    async fn round_single(&self) -> anyhow::Result<(usize, usize)> {
        let rows = {
            let mut tx = self.db.begin().await?;
            let rows = claim(&mut tx, "").await?;
            tx.commit().await?;
            rows
        };
        if rows.is_empty() {
            metrics::gauge!("shop_outbox_batch", "service" => self.service).set(0.0);
            return Ok((0, 0));
        }
        let (confirmed, failed) = self.publish(rows).await;
        let count = confirmed.len();
        if count > 0 {
            let mut tx = self.db.begin().await?;
            mark(&mut tx, confirmed).await?;
            tx.commit().await?;
        }
        self.count(count, failed);
        Ok((count, failed))
    }

    fn count(&self, confirmed: usize, failed: usize) {
        if confirmed > 0 {
            metrics::counter!("shop_outbox_confirmed_total", "service" => self.service)
                .increment(confirmed as u64);
        }
        if failed > 0 {
            metrics::counter!("shop_outbox_failed_total", "service" => self.service)
                .increment(failed as u64);
        }
    }

    /// Publishes `rows` and awaits their confirms: the confirmed rows' `seq`, and how
    /// many failed.
    async fn publish(&self, rows: Vec<Row>) -> (Vec<i64>, usize) {
        metrics::gauge!("shop_outbox_batch", "service" => self.service).set(rows.len() as f64);
        let mut confirms = Vec::with_capacity(rows.len());
        let mut failed = 0usize;
        for row in rows {
            let message = Message::new(&self.exchange, row.routing_key.as_str(), row.payload)
                .content_type("application/json")
                .message_id_str(&row.event_id)
                .header(TRACEPARENT, &row.traceparent)
                .mandatory(true);
            metrics::counter!("shop_outbox_published_total", "service" => self.service)
                .increment(1);
            let span = relay_span(&row.traceparent);
            match self.publisher.send(message).instrument(span).await {
                Ok(confirm) => confirms.push((row.seq, confirm)),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(service = self.service, error = %e, "outbox publish refused; will retry");
                }
            }
        }
        let mut confirmed = Vec::with_capacity(confirms.len());
        for (seq, confirm) in confirms {
            match confirm.await {
                Ok(()) => confirmed.push(seq),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(service = self.service, error = %e, "outbox publish not confirmed; will retry");
                }
            }
        }
        (confirmed, failed)
    }
}

/// Takes a batch of unsent rows, oldest first, counting the attempt; `lock` is appended
/// to the inner select (the claim on PostgreSQL).
async fn claim(tx: &mut Session, lock: &str) -> DbResult<Vec<Row>> {
    let sql = format!(
        "UPDATE outbox SET attempts = attempts + 1 WHERE seq IN (
             SELECT seq FROM outbox WHERE sent_ms IS NULL ORDER BY seq LIMIT $1{lock})
         RETURNING seq, event_id, routing_key, payload, traceparent"
    );
    let mut rows = tx
        .query(&sql, args![BATCH as i64])
        .await?
        .into_iter()
        .map(|r| {
            Ok(Row {
                seq: r.int(0)?,
                event_id: r.text(1)?,
                routing_key: r.text(2)?,
                payload: r.text(3)?,
                traceparent: r.text(4)?,
            })
        })
        .collect::<DbResult<Vec<_>>>()?;
    rows.sort_by_key(|r| r.seq);
    Ok(rows)
}

/// Marks the confirmed rows sent (the ids are integers from the table, written into the
/// statement: one statement per batch, not one per row).
async fn mark(tx: &mut Session, confirmed: Vec<i64>) -> DbResult<()> {
    for chunk in confirmed.chunks(BATCH) {
        let ids: Vec<String> = chunk.iter().map(i64::to_string).collect();
        tx.execute(
            &format!(
                "UPDATE outbox SET sent_ms = $1 WHERE sent_ms IS NULL AND seq IN ({})",
                ids.join(",")
            ),
            args![now_ms()],
        )
        .await?;
    }
    Ok(())
}

/// Rows not yet confirmed.
pub async fn pending(db: &Db) -> DbResult<i64> {
    match db
        .query_opt("SELECT COUNT(*) FROM outbox WHERE sent_ms IS NULL", &[])
        .await?
    {
        Some(r) => r.int(0),
        None => Ok(0),
    }
}
