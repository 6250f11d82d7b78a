//! Deciding an order: ask the stock service under the breaker (or fall back to the
//! cached snapshot), then reserve or reject in one transaction keyed by the order id.
//!
//! Replicas may decide the same order at once (a redelivery to another replica while the
//! first still works on it). The `decisions` primary key lets exactly one commit; the
//! other's transaction, stock change included, rolls back on the unique violation and
//! counts as a duplicate. Stock rows are locked while read on PostgreSQL, so two replicas
//! reserving the last units of an article queue instead of both seeing them.

use std::collections::{BTreeMap, HashMap};

use lepus::{HandlerError, Incoming};

use super::Ctx;
use crate::args;
use crate::breaker::CallError;
use crate::db::{DbError, DbResult, Session, now_ms};
use crate::events::{
    Compensate, INVENTORY_COMPENSATE, INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryDecision,
    OrderCreated, check_lines,
};
use crate::trace::TraceContext;
use crate::{outbox, stock};

/// How a decision came about.
#[derive(Debug)]
enum Decided {
    Duplicate,
    Done {
        status: &'static str,
        reason: Option<String>,
    },
}

fn transient(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::transient(format!("{e:#}"))
}

/// Handles one `order.created`.
pub(super) async fn handle(ctx: &Ctx, msg: Incoming) -> Result<(), HandlerError> {
    let trace = TraceContext::from_incoming(&msg);
    let event: OrderCreated = msg.json()?;
    if event.order_id.is_empty() || event.order_id.len() > 100 {
        return Err(HandlerError::permanent(
            "order.created without a valid order_id",
        ));
    }
    check_lines(&event.lines).map_err(HandlerError::permanent)?;
    let trace_id = trace.trace_id();

    // A redelivery of a decided order: skip the stock calls.
    let known = ctx
        .db
        .query_opt(
            "SELECT 1 FROM decisions WHERE order_id = $1",
            args![event.order_id.as_str()],
        )
        .await
        .map_err(transient)?;
    if known.is_some() {
        let mut s = ctx.db.session().await.map_err(transient)?;
        s.bump("duplicates").await.map_err(transient)?;
        metrics::counter!("shop_duplicates_suppressed_total", "service" => "inventory")
            .increment(1);
        tracing::info!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, "duplicate order.created ignored");
        return Ok(());
    }

    // Ask the stock service about each article, under the breaker.
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for line in &event.lines {
        *wanted.entry(line.sku.clone()).or_default() += line.qty;
    }
    let mut on_hand = HashMap::new();
    let mut live = HashMap::new();
    let mut source = "live";
    for sku in wanted.keys() {
        let started = std::time::Instant::now();
        match ctx.breaker.call(ctx.warehouse.on_hand(sku)).await {
            Ok(n) => {
                metrics::histogram!("shop_stock_check_seconds")
                    .record(started.elapsed().as_secs_f64());
                on_hand.insert(sku.clone(), n);
                live.insert(sku.clone(), n);
            }
            Err(err) => {
                source = "cache";
                let cached = ctx
                    .snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(sku)
                    .copied();
                match cached {
                    Some(n) => {
                        on_hand.insert(sku.clone(), n);
                    }
                    None => {
                        return Err(HandlerError::transient(format!(
                            "stock check for {sku} failed ({err}) and no cached stock is known"
                        )));
                    }
                }
                if !matches!(err, CallError::Open) {
                    tracing::warn!(service = "inventory", trace_id = %trace_id, sku = %sku, error = %err, "stock check failed; using the cached snapshot");
                }
            }
        }
    }
    {
        let mut snapshot = ctx.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        for (sku, n) in &live {
            snapshot.insert(sku.clone(), *n);
        }
    }

    let child = trace.child();
    let decided = match decide(ctx, &event, &wanted, &on_hand, &live, source, &child).await {
        Err(e) if e.is_unique_violation() => {
            // Another replica (or delivery) decided this order first.
            let mut s = ctx.db.session().await.map_err(transient)?;
            s.bump("duplicates").await.map_err(transient)?;
            Decided::Duplicate
        }
        other => other.map_err(transient)?,
    };
    match decided {
        Decided::Duplicate => {
            metrics::counter!("shop_duplicates_suppressed_total", "service" => "inventory")
                .increment(1);
            tracing::info!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, "duplicate order.created ignored");
        }
        Decided::Done { status, reason } => {
            ctx.wake.notify_one();
            metrics::counter!("shop_inventory_decisions_total", "status" => status, "source" => source).increment(1);
            tracing::info!(service = "inventory", trace_id = %trace_id, order_id = %event.order_id, status, source, reason = reason.as_deref().unwrap_or(""), "order decided");
        }
    }
    Ok(())
}

/// Why `wanted` cannot be reserved, if it cannot: checks the stock ledger (locking its
/// rows on PostgreSQL) and what the warehouse said.
async fn shortage(
    tx: &mut Session,
    for_update: &str,
    wanted: &BTreeMap<String, i64>,
    on_hand: &HashMap<String, i64>,
) -> DbResult<Option<String>> {
    let select = format!("SELECT available FROM stock WHERE sku = $1{for_update}");
    for (sku, qty) in wanted {
        let available = match tx.query_opt(&select, args![sku]).await? {
            Some(r) => Some(r.int(0)?),
            None => None,
        };
        let warehouse = on_hand.get(sku).copied().unwrap_or(0);
        let reason = match available {
            None => Some(format!("unknown article {sku}")),
            Some(n) if n < *qty => Some(format!("only {n} of {sku} left, {qty} wanted")),
            Some(_) if warehouse < *qty => {
                Some(format!("warehouse has {warehouse} of {sku}, {qty} wanted"))
            }
            Some(_) => None,
        };
        if reason.is_some() {
            return Ok(reason);
        }
    }
    Ok(None)
}

/// Takes every line from the warehouse, or none (a savepoint undoes the lines taken
/// before the one it lacks): why not, if not.
pub(super) async fn take_all(
    tx: &mut Session,
    wanted: &BTreeMap<String, i64>,
) -> DbResult<Option<String>> {
    tx.batch("SAVEPOINT take").await?;
    for (sku, qty) in wanted {
        if !stock::take(tx, sku, *qty).await? {
            tx.batch("ROLLBACK TO SAVEPOINT take").await?;
            return Ok(Some(format!("the warehouse has fewer than {qty} of {sku}")));
        }
    }
    tx.batch("RELEASE SAVEPOINT take").await?;
    Ok(None)
}

async fn decide(
    ctx: &Ctx,
    event: &OrderCreated,
    wanted: &BTreeMap<String, i64>,
    on_hand: &HashMap<String, i64>,
    live: &HashMap<String, i64>,
    source: &'static str,
    trace: &TraceContext,
) -> DbResult<Decided> {
    let json = |e: serde_json::Error| DbError::Other(format!("encoding JSON: {e}"));
    let for_update = if ctx.db.is_postgres() {
        " FOR UPDATE"
    } else {
        ""
    };
    let mut tx = ctx.db.begin().await?;
    let seen = tx
        .query_opt(
            "SELECT 1 FROM decisions WHERE order_id = $1",
            args![event.order_id.as_str()],
        )
        .await?;
    if seen.is_some() {
        tx.bump("duplicates").await?;
        tx.commit().await?;
        return Ok(Decided::Duplicate);
    }
    let mut reason = shortage(&mut tx, for_update, wanted, on_hand).await?;
    if reason.is_none() && source == "live" {
        // The stock service answered for every article: take the units from it now, with
        // the decision. It may have fewer than it said a moment ago (another replica took
        // them): then none is taken and the order is rejected.
        reason = take_all(&mut tx, wanted).await?;
    }
    let status = if reason.is_none() {
        for (sku, qty) in wanted {
            tx.execute(
                "UPDATE stock SET available = available - $1 WHERE sku = $2",
                args![*qty, sku],
            )
            .await?;
        }
        tx.log_effect(&event.order_id, "stock-reserved").await?;
        "reserved"
    } else {
        tx.log_effect(&event.order_id, "rejected").await?;
        "rejected"
    };
    let lines = serde_json::to_string(&event.lines).map_err(json)?;
    let now = now_ms();
    tx.execute(
        "INSERT INTO decisions (order_id, status, reason, source, lines, traceparent, decided_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        args![
            event.order_id.as_str(),
            status,
            reason.clone(),
            source,
            lines.as_str(),
            trace.header(),
            now
        ],
    )
    .await?;
    if source == "cache" && status == "reserved" {
        // Reserved on the word of the cached snapshot: the compensator takes the units
        // from the stock service once it answers, or cancels the order.
        tx.execute(
            "INSERT INTO compensation_checks (order_id, lines, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (order_id) DO NOTHING",
            args![event.order_id.as_str(), lines.as_str(), now],
        )
        .await?;
        let compensate = Compensate {
            order_id: event.order_id.clone(),
            lines: event.lines.clone(),
            customer: event.customer.clone(),
            email: event.email.clone(),
            created_ms: event.created_ms,
        };
        let payload = serde_json::to_string(&compensate).map_err(json)?;
        outbox::insert(&mut tx, INVENTORY_COMPENSATE, &payload, &trace.header()).await?;
    }
    for (sku, n) in live {
        tx.execute(
            "INSERT INTO stock_snapshot (sku, on_hand, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, at_ms = excluded.at_ms",
            args![sku, *n, now],
        )
        .await?;
    }
    let out = InventoryDecision {
        order_id: event.order_id.clone(),
        status: status.into(),
        reason: reason.clone(),
        customer: event.customer.clone(),
        email: event.email.clone(),
        created_ms: event.created_ms,
        source: source.into(),
    };
    let payload = serde_json::to_string(&out).map_err(json)?;
    let key = if status == "reserved" {
        INVENTORY_RESERVED
    } else {
        INVENTORY_REJECTED
    };
    outbox::insert(&mut tx, key, &payload, &trace.header()).await?;
    tx.commit().await?;
    Ok(Decided::Done { status, reason })
}
