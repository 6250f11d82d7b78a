//! The compensator: settles reservations made from the cached stock snapshot.
//!
//! While the stock service is slow or down (the breaker open), the inventory decides from
//! the last stock it saw and reserves on that word; each such reservation puts an
//! `inventory.compensate` message on the compensation queue, in the same transaction as
//! the decision. This consumer takes the units from the stock service for real once it
//! answers again. If it has enough, the check ends `compensated`. If it has not (the
//! snapshot was stale: stock went elsewhere meanwhile), the order is cancelled: the
//! reserved units go back to the ledger, the decision becomes `cancelled`, and an
//! `inventory.cancelled` event tells the notification service to tell the customer. All
//! of it commits together, once per order (the check's status is the guard).
//!
//! While the stock service still does not answer, the message is retried through the
//! compensation queue's delay tiers (about two minutes); after that it waits in the
//! queue's dead-letter queue for an operator (`lepus dlq`), and the check stays
//! `pending`, counted as such.

use std::collections::BTreeMap;

use lepus::{HandlerError, Incoming};

use super::Ctx;
use super::decide::take_all;
use crate::args;
use crate::breaker::CallError;
use crate::db::{DbError, DbResult, now_ms};
use crate::events::{Compensate, INVENTORY_CANCELLED, InventoryDecision, check_lines};
use crate::outbox;
use crate::trace::TraceContext;

/// How a compensation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Settled before (a redelivery).
    Already,
    /// The stock service had the units; they are taken.
    Compensated,
    /// It had not; the order is cancelled, for this reason.
    Cancelled(String),
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::transient(format!("{e:#}"))
}

/// Handles one `inventory.compensate`.
pub(super) async fn handle(ctx: &Ctx, msg: Incoming) -> Result<(), HandlerError> {
    let trace = TraceContext::from_incoming(&msg);
    let event: Compensate = msg.json()?;
    if event.order_id.is_empty() || event.order_id.len() > 100 {
        return Err(HandlerError::permanent(
            "inventory.compensate without a valid order_id",
        ));
    }
    if let Err(why) = check_lines(&event.lines) {
        // Nothing to take: a person must look (the check says why).
        ctx.db
            .execute(
                "UPDATE compensation_checks SET status = 'error', detail = $1, resolved_ms = $2
                 WHERE order_id = $3 AND status = 'pending'",
                args![why.as_str(), now_ms(), event.order_id.as_str()],
            )
            .await
            .map_err(transient)?;
        metrics::counter!("shop_compensation_checks_total", "result" => "error").increment(1);
        return Err(HandlerError::permanent(why));
    }
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for line in &event.lines {
        *wanted.entry(line.sku.clone()).or_default() += line.qty;
    }
    // The stock service must answer (under the breaker) before anything is taken.
    for sku in wanted.keys() {
        ask(ctx, sku)
            .await
            .map_err(|e| transient(format!("stock service still not answering: {e}")))?;
    }
    let settled = settle(ctx, &event, &wanted, &trace.child())
        .await
        .map_err(transient)?;
    let trace_id = trace.trace_id();
    match &settled {
        Settled::Already => {
            tracing::info!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, "compensation already settled");
        }
        Settled::Compensated => {
            metrics::counter!("shop_compensation_checks_total", "result" => "compensated")
                .increment(1);
            tracing::info!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, "reservation from the cached snapshot taken from the stock service");
        }
        Settled::Cancelled(reason) => {
            ctx.wake.notify_one();
            metrics::counter!("shop_compensation_checks_total", "result" => "cancelled")
                .increment(1);
            tracing::warn!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, reason = %reason, "reservation from the cached snapshot not covered: order cancelled");
        }
    }
    Ok(())
}

/// Asks the stock service about `sku`. An open breaker refuses at once, and its open
/// period is short: it is waited out once here rather than sending the message around
/// the delay tiers (seconds to a minute) for it.
async fn ask(ctx: &Ctx, sku: &str) -> Result<i64, String> {
    let mut waited = false;
    loop {
        match ctx.breaker.call(ctx.warehouse.on_hand(sku)).await {
            Ok(n) => return Ok(n),
            Err(CallError::Open) if !waited => {
                waited = true;
                tokio::time::sleep(ctx.breaker.config().open_for).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Takes the order's units, or cancels it, in one transaction.
pub(super) async fn settle(
    ctx: &Ctx,
    event: &Compensate,
    wanted: &BTreeMap<String, i64>,
    trace: &TraceContext,
) -> DbResult<Settled> {
    let for_update = if ctx.db.is_postgres() {
        " FOR UPDATE"
    } else {
        ""
    };
    let order_id = event.order_id.as_str();
    let mut tx = ctx.db.begin().await?;
    let status = tx
        .query_opt(
            &format!("SELECT status FROM compensation_checks WHERE order_id = $1{for_update}"),
            args![order_id],
        )
        .await?;
    match status {
        Some(r) if r.text(0)? == "pending" => {}
        Some(_) => {
            tx.bump("duplicates").await?;
            tx.commit().await?;
            return Ok(Settled::Already);
        }
        None => {
            return Err(DbError::Other(format!(
                "no compensation check for order {order_id}"
            )));
        }
    }
    let now = now_ms();
    let Some(reason) = take_all(&mut tx, wanted).await? else {
        tx.execute(
            "UPDATE compensation_checks SET status = 'compensated', detail = NULL, resolved_ms = $1
             WHERE order_id = $2",
            args![now, order_id],
        )
        .await?;
        tx.log_effect(order_id, "stock-taken").await?;
        tx.commit().await?;
        return Ok(Settled::Compensated);
    };
    for (sku, qty) in wanted {
        tx.execute(
            "UPDATE stock SET available = available + $1 WHERE sku = $2",
            args![*qty, sku],
        )
        .await?;
    }
    tx.execute(
        "UPDATE decisions SET status = 'cancelled', reason = $1 WHERE order_id = $2",
        args![reason.as_str(), order_id],
    )
    .await?;
    tx.execute(
        "UPDATE compensation_checks SET status = 'cancelled', detail = $1, resolved_ms = $2
         WHERE order_id = $3",
        args![reason.as_str(), now, order_id],
    )
    .await?;
    tx.log_effect(order_id, "cancelled").await?;
    let out = InventoryDecision {
        order_id: event.order_id.clone(),
        status: "cancelled".into(),
        reason: Some(reason.clone()),
        customer: event.customer.clone(),
        email: event.email.clone(),
        created_ms: event.created_ms,
        source: "recheck".into(),
    };
    let payload =
        serde_json::to_string(&out).map_err(|e| DbError::Other(format!("encoding JSON: {e}")))?;
    outbox::insert(&mut tx, INVENTORY_CANCELLED, &payload, &trace.header()).await?;
    tx.commit().await?;
    Ok(Settled::Cancelled(reason))
}
