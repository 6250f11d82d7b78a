//! The inventory's reconciler: re-verifies decisions made from the cached stock snapshot
//! once the stock service answers again.
//!
//! Each pending compensation check ends `verified` (the warehouse covers the order, or
//! the order was rejected anyway), `mismatch` (a reservation the warehouse does not
//! cover: someone must compensate), or `error` (the check itself cannot be evaluated,
//! e.g. its stored lines do not parse). A check that cannot be evaluated is never counted
//! as verified: that would hide exactly the orders that need a person to look.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::args;
use crate::breaker::CircuitBreaker;
use crate::db::{Db, now_ms};
use crate::events::OrderLine;
use crate::stock::Warehouse;

/// Checks taken per pass.
const BATCH: usize = 50;

/// Runs passes every 500 ms until `cancel`.
pub async fn run(
    db: Db,
    breaker: Arc<CircuitBreaker>,
    warehouse: Arc<Warehouse>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&db, &breaker, &warehouse).await {
            tracing::warn!(service = "inventory", error = %format!("{e:#}"), "reconciling compensation checks failed");
        }
    }
}

/// The stored lines of a check, or why they cannot be checked.
fn parse_lines(lines: &str) -> Result<Vec<OrderLine>, String> {
    match serde_json::from_str::<Vec<OrderLine>>(lines) {
        Ok(lines) if lines.is_empty() => Err("the stored order has no lines".into()),
        Ok(lines) => Ok(lines),
        Err(e) => Err(format!("the stored order lines do not parse: {e}")),
    }
}

/// One pass over pending checks; returns how many were resolved. Stops early (leaving
/// the rest pending) when the stock service does not answer.
pub async fn pass(
    db: &Db,
    breaker: &CircuitBreaker,
    warehouse: &Warehouse,
) -> anyhow::Result<usize> {
    // An open breaker refuses at once below; after its open period the first call here
    // may be the probe that closes it.
    let pending = db
        .query(
            "SELECT k.order_id, k.lines, d.status FROM compensation_checks k
             JOIN decisions d ON d.order_id = k.order_id
             WHERE k.status = 'pending' ORDER BY k.created_ms LIMIT $1",
            args![BATCH as i64],
        )
        .await?
        .into_iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)))
        .collect::<crate::db::DbResult<Vec<_>>>()?;
    let mut resolved = 0;
    'checks: for (order_id, lines, status) in pending {
        let (verdict, detail) = match parse_lines(&lines) {
            Err(why) => ("error", why),
            Ok(lines) => {
                let mut short = Vec::new();
                for line in &lines {
                    match breaker.call(warehouse.on_hand(&line.sku)).await {
                        Ok(n) if n < line.qty => {
                            short.push(format!("{} has {n}, {} reserved", line.sku, line.qty));
                        }
                        Ok(_) => {}
                        // Still down: try again later.
                        Err(_) => break 'checks,
                    }
                }
                if status == "reserved" && !short.is_empty() {
                    ("mismatch", short.join("; "))
                } else {
                    ("verified", String::new())
                }
            }
        };
        let id = order_id.clone();
        let text = detail.clone();
        db.execute(
            "UPDATE compensation_checks SET status = $1, detail = $2, resolved_ms = $3
             WHERE order_id = $4 AND status = 'pending'",
            args![verdict, text, now_ms(), id],
        )
        .await?;
        resolved += 1;
        metrics::counter!("shop_compensation_checks_total", "result" => verdict).increment(1);
        match verdict {
            "mismatch" => {
                tracing::warn!(service = "inventory", order_id = %order_id, "reservation made from the cached snapshot is not covered by the warehouse: needs compensation");
            }
            "error" => {
                tracing::error!(service = "inventory", order_id = %order_id, detail = %detail, "a compensation check cannot be evaluated: needs a person");
            }
            _ => {
                tracing::info!(service = "inventory", order_id = %order_id, "cached decision verified");
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::breaker::BreakerConfig;

    async fn store(dir: &std::path::Path) -> Db {
        let db = Db::open_path(&dir.join("inventory.db"), crate::db::migrate::INVENTORY)
            .await
            .unwrap();
        for (order, lines) in [
            ("o-good", r#"[{"sku":"lamp","qty":1}]"#),
            ("o-garbled", "{not json"),
            ("o-empty", "[]"),
        ] {
            db.execute(
                "INSERT INTO decisions (order_id, status, source, lines, traceparent, decided_ms)
                 VALUES ($1, 'reserved', 'snapshot', $2, '', 0)",
                args![order, lines],
            )
            .await
            .unwrap();
            db.execute(
                "INSERT INTO compensation_checks (order_id, lines, created_ms) VALUES ($1, $2, 0)",
                args![order, lines],
            )
            .await
            .unwrap();
        }
        db
    }

    #[tokio::test]
    async fn unparsable_lines_are_an_error_never_verified() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(dir.path()).await;
        let breaker = CircuitBreaker::new("test", BreakerConfig::default());
        let warehouse = Warehouse::new();
        assert_eq!(pass(&db, &breaker, &warehouse).await.unwrap(), 3);
        let rows: Vec<(String, String, String)> = db
            .query(
                "SELECT order_id, status, COALESCE(detail, '') FROM compensation_checks ORDER BY order_id",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.text(0).unwrap(), r.text(1).unwrap(), r.text(2).unwrap()))
            .collect();
        let status: Vec<(&str, &str)> = rows
            .iter()
            .map(|(o, s, _)| (o.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            status,
            [
                ("o-empty", "error"),
                ("o-garbled", "error"),
                ("o-good", "verified")
            ]
        );
        assert!(rows[1].2.contains("do not parse"), "{rows:?}");
    }
}
