//! The transactional outbox: an event is a row written in the same SQLite transaction as
//! the state change it announces, and a relay publishes unsent rows with confirms and
//! marks them sent only once the broker has confirmed them.
//!
//! So a state change and its event are never separated: if the broker is down, rows wait
//! (and the API keeps accepting orders); if the process dies between the confirm and the
//! mark, the row goes out again after restart under the same `message_id`, and consumers
//! drop the duplicate. At least once from the database to the broker, by construction.

use std::sync::Arc;
use std::time::Duration;

use lepus::{Client, Message, Publisher, PublisherOptions};
use rusqlite::{Transaction, params};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::db::{Db, now_ms};
use crate::trace::{TRACEPARENT, relay_span};

/// The outbox table (each service has one in its own database).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    sent_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_ms IS NULL;
";

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
pub fn insert(
    tx: &Transaction<'_>,
    routing_key: &str,
    payload: &str,
    traceparent: &str,
) -> rusqlite::Result<String> {
    let event_id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![event_id, routing_key, payload, traceparent, now_ms()],
    )?;
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
        let rows = self
            .db
            .call(|c| {
                let tx = c.transaction()?;
                let rows = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT seq, event_id, routing_key, payload, traceparent FROM outbox
                         WHERE sent_ms IS NULL ORDER BY seq LIMIT ?1",
                    )?;
                    let rows = stmt
                        .query_map([BATCH as i64], |r| {
                            Ok(Row {
                                seq: r.get(0)?,
                                event_id: r.get(1)?,
                                routing_key: r.get(2)?,
                                payload: r.get(3)?,
                                traceparent: r.get(4)?,
                            })
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    let mut bump = tx.prepare_cached(
                        "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?1",
                    )?;
                    for row in &rows {
                        bump.execute([row.seq])?;
                    }
                    rows
                };
                let backlog = tx.query_row(
                    "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE sent_ms IS NULL",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
                )?;
                tx.commit()?;
                Ok((rows, backlog))
            })
            .await?;
        let (rows, (pending, oldest)) = rows;
        // The backlog as this round found it: how many events wait, and how long the
        // oldest has waited (0 when none does). Alerts watch the age.
        let age = oldest.map_or(0.0, |ms| {
            (now_ms().saturating_sub(ms)).max(0) as f64 / 1000.0
        });
        metrics::gauge!(PENDING, "service" => self.service).set(pending as f64);
        metrics::gauge!(OLDEST_AGE, "service" => self.service).set(age);
        metrics::gauge!("shop_outbox_batch", "service" => self.service).set(rows.len() as f64);
        if rows.is_empty() {
            return Ok((0, 0));
        }
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
        let count = confirmed.len();
        if count > 0 {
            self.db
                .call(move |c| {
                    let tx = c.transaction()?;
                    {
                        let now = now_ms();
                        let mut mark = tx.prepare_cached(
                            "UPDATE outbox SET sent_ms = ?1 WHERE seq = ?2 AND sent_ms IS NULL",
                        )?;
                        for seq in confirmed {
                            mark.execute(params![now, seq])?;
                        }
                    }
                    tx.commit()
                })
                .await?;
            metrics::counter!("shop_outbox_confirmed_total", "service" => self.service)
                .increment(count as u64);
        }
        if failed > 0 {
            metrics::counter!("shop_outbox_failed_total", "service" => self.service)
                .increment(failed as u64);
        }
        Ok((count, failed))
    }
}

/// Rows not yet confirmed.
pub fn pending(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE sent_ms IS NULL",
        [],
        |r| r.get(0),
    )
}
