//! The final report, computed from the services' own stores and the dead-letter queues:
//! what was accepted, what became of each order, and which orders reached no final state
//! (lost).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::db::{Db, DbResult, Location};
use crate::service::Common;

/// The report; its JSON form is the demo's last line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Orders the order API accepted (order store).
    pub accepted: u64,
    /// Outbox publishes attempted, both outboxes (a row retried counts again).
    pub published: u64,
    /// Outbox rows the broker confirmed, both outboxes.
    pub confirmed: u64,
    /// Orders reserved (inventory store).
    pub reserved: u64,
    /// Orders rejected for lack of stock (inventory store).
    pub rejected: u64,
    /// Customers notified, of a reservation or a rejection (notification store).
    pub notified: u64,
    /// Redeliveries and republishes skipped: lepus's idempotency stores plus the
    /// services' unique keys.
    pub duplicates_suppressed: u64,
    /// Distinct messages (by id) in the dead-letter queues at the end, with their reason
    /// in the headers (read from the queues, where they stay for `lepus dlq`).
    pub dead_lettered: u64,
    /// Accepted orders with no final state (notified, or dead-lettered with a reason).
    pub lost: u64,
    /// Broker kills (SIGKILL) followed by a restart.
    pub broker_restarts: u64,
    /// Forced closes of every connection.
    pub connection_kills: u64,
    /// Times the stock-check breaker tripped open (inventory store).
    pub breaker_trips: u64,
    /// Reservations from the cached snapshot settled by taking the stock for real.
    pub compensated: u64,
    /// Reservations from the cached snapshot cancelled because the stock service could
    /// not cover them (the customer was told).
    pub cancelled_after_recheck: u64,
    /// Median time from order accepted to customer notified.
    pub latency_p50_ms: u64,
    /// 99th percentile of the same.
    pub latency_p99_ms: u64,
}

/// What the stores say right now.
#[derive(Debug, Clone, Default)]
pub struct StoreState {
    /// Orders accepted.
    pub accepted: u64,
    /// Outbox publish attempts.
    pub published: u64,
    /// Outbox rows confirmed.
    pub confirmed: u64,
    /// Outbox rows not yet confirmed.
    pub outbox_pending: u64,
    /// Orders reserved.
    pub reserved: u64,
    /// Orders rejected.
    pub rejected: u64,
    /// Decisions taken from the cached snapshot.
    pub decided_from_cache: u64,
    /// Notifications sent.
    pub notified: u64,
    /// Duplicates the stores' unique keys caught.
    pub store_duplicates: u64,
    /// Distinct messages in the dead-letter queues (they stay there, for operators).
    pub dead_lettered: u64,
    /// Each dead letter as `queue: order id: error`, for a reader wondering why.
    pub dead_letter_errors: Vec<String>,
    /// Accepted orders with no final state yet (not notified, no event in a DLQ).
    pub unresolved: Vec<String>,
    /// Compensation checks waiting for the stock service.
    pub compensation_pending: u64,
    /// Reservations from the cached snapshot whose units the compensator took from the
    /// stock service.
    pub compensated: u64,
    /// Reservations from the cached snapshot the stock service could not cover: the
    /// order was cancelled (compensation checks).
    pub cancelled_after_recheck: u64,
    /// Decisions cancelled (must equal `cancelled_after_recheck`).
    pub cancelled_decisions: u64,
    /// Customers told of a cancellation (must equal `cancelled_after_recheck` once
    /// drained).
    pub cancellation_notices: u64,
    /// Compensation checks that could not be evaluated (a person must look).
    pub compensation_errors: u64,
    /// Side effects logged more than once for the same order, as
    /// `service: order id: effect x count` (must be empty: each happens once).
    pub repeated_effects: Vec<String>,
    /// Orders with a stock decision logged in the inventory's effect log.
    pub orders_with_decision_effect: u64,
    /// Orders with a notification logged in the notification service's effect log.
    pub orders_with_notify_effect: u64,
    /// Breaker trips recorded.
    pub breaker_trips: u64,
    /// Order-to-notification latencies, ms, sorted.
    pub latencies_ms: Vec<u64>,
}

async fn count(db: &Db, sql: &str) -> DbResult<u64> {
    match db.query_opt(sql, &[]).await? {
        Some(r) => Ok(u64::try_from(r.int(0)?).unwrap_or(0)),
        None => Ok(0),
    }
}

async fn texts(db: &Db, sql: &str) -> DbResult<Vec<String>> {
    db.query(sql, &[])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect()
}

async fn ids(db: &Db, sql: &str) -> DbResult<HashSet<String>> {
    Ok(texts(db, sql).await?.into_iter().collect())
}

/// The three stores, as the services' `--database-url` names them (SQLite files or
/// PostgreSQL databases). Opened without migrating: a store not made yet is an error.
pub async fn open_stores(common: &Common) -> anyhow::Result<[Db; 3]> {
    let mut out = Vec::with_capacity(3);
    for service in ["order", "inventory", "notify"] {
        let url = common.database(service);
        if let Location::Sqlite(path) = Location::parse(&url)
            && !path.exists()
        {
            anyhow::bail!("no store at {}", path.display());
        }
        out.push(Db::connect(&url)?);
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("three stores expected"))
}

/// Reads the three stores (the services may be running).
pub async fn read_stores(common: &Common) -> anyhow::Result<StoreState> {
    let [order, inventory, notify] = open_stores(common).await?;
    Ok(read(&order, &inventory, &notify).await?)
}

/// Reads the three stores given.
pub async fn read(order: &Db, inventory: &Db, notify: &Db) -> DbResult<StoreState> {
    let mut s = StoreState {
        accepted: count(order, "SELECT COUNT(*) FROM orders").await?,
        ..StoreState::default()
    };
    for c in [order, inventory] {
        s.published += count(
            c,
            "SELECT CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM outbox",
        )
        .await?;
        s.confirmed += count(c, "SELECT COUNT(*) FROM outbox WHERE sent_ms IS NOT NULL").await?;
        s.outbox_pending += count(c, "SELECT COUNT(*) FROM outbox WHERE sent_ms IS NULL").await?;
    }
    s.reserved = count(
        inventory,
        "SELECT COUNT(*) FROM decisions WHERE status = 'reserved'",
    )
    .await?;
    s.rejected = count(
        inventory,
        "SELECT COUNT(*) FROM decisions WHERE status = 'rejected'",
    )
    .await?;
    s.cancelled_decisions = count(
        inventory,
        "SELECT COUNT(*) FROM decisions WHERE status = 'cancelled'",
    )
    .await?;
    s.decided_from_cache = count(
        inventory,
        "SELECT COUNT(*) FROM decisions WHERE source = 'cache'",
    )
    .await?;
    s.notified = count(notify, "SELECT COUNT(*) FROM notifications").await?;
    s.cancellation_notices = count(notify, "SELECT COUNT(*) FROM cancellations").await?;
    let mut duplicates = 0;
    for c in [inventory, notify] {
        duplicates += c.session().await?.counter("duplicates").await?;
    }
    s.store_duplicates = u64::try_from(duplicates).unwrap_or(0);
    for (field, status) in [
        (&mut s.compensation_pending, "pending"),
        (&mut s.compensated, "compensated"),
        (&mut s.cancelled_after_recheck, "cancelled"),
        (&mut s.compensation_errors, "error"),
    ] {
        *field = count(
            inventory,
            &format!("SELECT COUNT(*) FROM compensation_checks WHERE status = '{status}'"),
        )
        .await?;
    }
    for (service, c) in [("inventory", inventory), ("notify", notify)] {
        for row in texts(
            c,
            "SELECT order_id || ': ' || effect || ' x' || CAST(COUNT(*) AS TEXT) FROM effects
             GROUP BY order_id, effect HAVING COUNT(*) > 1 ORDER BY order_id",
        )
        .await?
        {
            s.repeated_effects.push(format!("{service}: {row}"));
        }
    }
    s.orders_with_decision_effect = count(
        inventory,
        "SELECT COUNT(DISTINCT order_id) FROM effects WHERE effect IN ('stock-reserved', 'rejected')",
    )
    .await?;
    s.orders_with_notify_effect = count(
        notify,
        "SELECT COUNT(DISTINCT order_id) FROM effects WHERE effect = 'customer-notified'",
    )
    .await?;
    s.breaker_trips = count(
        inventory,
        "SELECT COUNT(*) FROM breaker_events WHERE kind = 'trip'",
    )
    .await?;

    // Final states: a notification here; a dead letter is the other one, and the
    // dead-letter queues say which ([`StoreState::apply_dead_letters`]).
    let accepted = ids(order, "SELECT id FROM orders").await?;
    let done = ids(notify, "SELECT order_id FROM notifications").await?;
    let mut unresolved: Vec<String> = accepted.difference(&done).cloned().collect();
    unresolved.sort();
    s.unresolved = unresolved;

    let mut latencies: Vec<u64> = notify
        .query("SELECT sent_ms - order_created_ms FROM notifications", &[])
        .await?
        .iter()
        .map(|r| r.int(0).map(|ms| u64::try_from(ms).unwrap_or(0)))
        .collect::<DbResult<_>>()?;
    latencies.sort_unstable();
    s.latencies_ms = latencies;
    Ok(s)
}

/// The `p`-th percentile (nearest rank) of sorted `values`, 0 if empty.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values
        .get(rank.clamp(1, values.len()) - 1)
        .copied()
        .unwrap_or(0)
}

impl StoreState {
    /// Adds what the dead-letter queues hold: their count, and the orders whose event
    /// ended there, which have a final state.
    pub fn apply_dead_letters(&mut self, dead: &crate::deadletter::DeadLetters) {
        self.dead_lettered = dead.distinct;
        self.dead_letter_errors = dead.errors.clone();
        self.unresolved.retain(|id| !dead.order_ids.contains(id));
    }

    /// The report, with the fault counts and lepus's own duplicate count added.
    pub fn report(
        &self,
        broker_restarts: u64,
        connection_kills: u64,
        lepus_duplicates: u64,
    ) -> Report {
        Report {
            accepted: self.accepted,
            published: self.published,
            confirmed: self.confirmed,
            reserved: self.reserved,
            rejected: self.rejected,
            notified: self.notified,
            duplicates_suppressed: self.store_duplicates + lepus_duplicates,
            dead_lettered: self.dead_lettered,
            lost: self.unresolved.len() as u64,
            broker_restarts,
            connection_kills,
            breaker_trips: self.breaker_trips,
            compensated: self.compensated,
            cancelled_after_recheck: self.cancelled_after_recheck,
            latency_p50_ms: percentile(&self.latencies_ms, 50.0),
            latency_p99_ms: percentile(&self.latencies_ms, 99.0),
        }
    }
}

/// The report as text for a person.
pub fn render(report: &Report, state: &StoreState) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("  {label:<34} {value}\n"));
    };
    line("orders accepted", report.accepted.to_string());
    line("events published (attempts)", report.published.to_string());
    line(
        "events confirmed by the broker",
        report.confirmed.to_string(),
    );
    line("reserved", report.reserved.to_string());
    line("rejected (out of stock)", report.rejected.to_string());
    line(
        "decided from the cached snapshot",
        format!(
            "{} (compensated {}, cancelled after recheck {}, pending {})",
            state.decided_from_cache,
            state.compensated,
            state.cancelled_after_recheck,
            state.compensation_pending
        ),
    );
    line("customers notified", report.notified.to_string());
    line(
        "duplicates suppressed",
        report.duplicates_suppressed.to_string(),
    );
    line(
        "dead-lettered (with reason)",
        report.dead_lettered.to_string(),
    );
    line("LOST", report.lost.to_string());
    line(
        "broker restarts (SIGKILL)",
        report.broker_restarts.to_string(),
    );
    line("connection kills", report.connection_kills.to_string());
    line("breaker trips", report.breaker_trips.to_string());
    line(
        "order -> notification latency",
        format!(
            "p50 {} ms, p99 {} ms",
            report.latency_p50_ms, report.latency_p99_ms
        ),
    );
    if !state.unresolved.is_empty() {
        let some: Vec<&str> = state
            .unresolved
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        line("lost orders (first 10)", some.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.0), 7);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
    }
}
