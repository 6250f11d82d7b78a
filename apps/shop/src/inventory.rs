//! The inventory service: consumes `order.created`, reserves stock, and announces
//! `inventory.reserved` or `inventory.rejected` through its own outbox.
//!
//! - Idempotent by order id: the decision, the stock change and the outgoing event commit
//!   in one transaction keyed by the order id, so a redelivered event finds the decision
//!   and changes nothing (lepus's idempotency store skips most redeliveries earlier; the
//!   database is what makes it exact).
//! - The stock-check dependency is called under a timeout and a circuit breaker. When the
//!   call fails or the breaker is open, the decision uses the last answer cached for that
//!   article and records a compensation check; a reconciler re-verifies those once the
//!   dependency answers again. An article never seen before cannot be decided from cache:
//!   that order is retried through lepus's tiers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lepus::observability::{self, Health};
use lepus::{Client, Consumer, ConsumerStats, HandlerError, Incoming, MemoryStore, Role};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::breaker::{BreakerConfig, BreakerStatus, CallError, CircuitBreaker};
use crate::db::{COUNTERS_SCHEMA, Db, EFFECTS_SCHEMA, bump, log_effect, now_ms};
use crate::events::{
    INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryDecision, OrderCreated, check_lines,
};
use crate::outbox::{self, Relay};
use crate::service::{Common, join_all, spawn_connection_gauges};
use crate::stock::{CATALOG, StockMode, Warehouse};
use crate::telemetry::metrics_handle;
use crate::trace::TraceContext;

/// The inventory service's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS decisions (
    order_id    TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    reason      TEXT,
    source      TEXT NOT NULL,
    lines       TEXT NOT NULL,
    traceparent TEXT NOT NULL,
    decided_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_snapshot (
    sku     TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compensation_checks (
    order_id    TEXT PRIMARY KEY,
    lines       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    detail      TEXT,
    created_ms  INTEGER NOT NULL,
    resolved_ms INTEGER
);
CREATE TABLE IF NOT EXISTS breaker_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,
    at_ms  INTEGER NOT NULL
);
";

/// Settings of the inventory service.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryOptions {
    /// The stock-check breaker.
    pub breaker: BreakerConfig,
}

struct Ctx {
    db: Db,
    breaker: Arc<CircuitBreaker>,
    warehouse: Arc<Warehouse>,
    snapshot: Mutex<HashMap<String, i64>>,
    wake: Arc<Notify>,
}

/// A running inventory service.
pub struct InventoryService {
    /// Its lepus client.
    pub client: Client,
    /// Its database.
    pub db: Db,
    /// Where its admin/health API listens.
    pub addr: SocketAddr,
    /// Its messaging health (connections, consumers, relay buffer).
    pub health: Health,
    /// The stock-check breaker.
    pub breaker: Arc<CircuitBreaker>,
    /// The simulated stock dependency.
    pub warehouse: Arc<Warehouse>,
    /// The `order.created` consumer's counters.
    pub consumer_stats: Arc<ConsumerStats>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InventoryService {
    /// Opens the store, connects, and starts consuming, relaying, reconciling and the
    /// admin API on `listen`.
    pub async fn start(
        common: &Common,
        options: InventoryOptions,
        listen: SocketAddr,
        cancel: CancellationToken,
    ) -> anyhow::Result<InventoryService> {
        let schema = format!(
            "{SCHEMA}{COUNTERS_SCHEMA}{EFFECTS_SCHEMA}{}",
            outbox::SCHEMA
        );
        let db = Db::open(&common.inventory_db(), &schema)?;
        let snapshot = db
            .call(|c| {
                {
                    let mut seed =
                        c.prepare("INSERT OR IGNORE INTO stock (sku, available) VALUES (?1, ?2)")?;
                    for (sku, n) in CATALOG {
                        seed.execute(params![sku, n])?;
                    }
                }
                let mut stmt = c.prepare("SELECT sku, on_hand FROM stock_snapshot")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<rusqlite::Result<HashMap<_, _>>>()?;
                Ok(rows)
            })
            .await?;
        let queue = common.names.inventory_queue();
        let client = common.client(
            "inventory",
            crate::topology::inventory_topology(&common.names, common.queue_type()),
            false,
        )?;
        let relay = Relay::new(db.clone(), &client, common.names.exchange(), "inventory");
        let breaker = Arc::new(CircuitBreaker::new("stock", options.breaker));
        let warehouse = Arc::new(Warehouse::new());
        let ctx = Arc::new(Ctx {
            db: db.clone(),
            breaker: Arc::clone(&breaker),
            warehouse: Arc::clone(&warehouse),
            snapshot: Mutex::new(snapshot),
            wake: relay.waker(),
        });
        let health = Health::new(&client);
        health.watch_publisher(relay.publisher());
        let mut tasks = vec![tokio::spawn(relay.run(cancel.clone()))];

        let consumer = Consumer::builder(&client, &queue)
            .name("inventory")
            .prefetch(64)
            .concurrency(8)
            .handler_timeout(Duration::from_secs(20))
            .retry(crate::topology::retry_policy())
            // Declared with the service's topology, of its queue type.
            .declare_retry_queues(false)
            .idempotency(MemoryStore::default())
            .build()?;
        let consumer_stats = consumer.stats();
        health.watch_consumer(&consumer);
        {
            let ctx = Arc::clone(&ctx);
            let token = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let handler = move |msg: Incoming| {
                    let ctx = Arc::clone(&ctx);
                    async move { handle(&ctx, msg).await }
                };
                if let Err(e) = consumer.run(handler, token).await {
                    tracing::error!(service = "inventory", error = %e, "order consumer stopped");
                }
            }));
        }
        tasks.push(tokio::spawn(crate::reconcile::run(
            db.clone(),
            Arc::clone(&breaker),
            Arc::clone(&warehouse),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(record_breaker(
            db.clone(),
            breaker.subscribe(),
            cancel.clone(),
        )));
        tasks.push(spawn_connection_gauges(
            client.clone(),
            "inventory",
            &[(Role::Publish, "publish"), (Role::Consume, "consume")],
            cancel.clone(),
        ));
        tasks.push(crate::queues::spawn_gauges(
            client.clone(),
            common.names.all_queues(),
            cancel.clone(),
        ));

        let admin = Router::new()
            .route("/admin/stock", get(get_stock_mode).post(set_stock_mode))
            .route("/admin/breaker", get(get_breaker))
            .with_state(Arc::clone(&ctx))
            .merge(observability::router(
                Some(metrics_handle()),
                health.clone(),
            ));
        let addr = observability::serve(listen, admin, cancel.clone()).await?;
        tracing::info!(service = "inventory", %addr, "inventory service listening");
        Ok(InventoryService {
            client,
            db,
            addr,
            health,
            breaker,
            warehouse,
            consumer_stats,
            cancel,
            tasks,
        })
    }

    /// Whether the client is connected and the consumer subscribed.
    pub fn ready(&self) -> bool {
        self.health.report().ready
    }

    /// Stops consuming (running handlers finish), relaying and serving; closes the client.
    pub async fn stop(self) {
        self.cancel.cancel();
        join_all(self.tasks, Duration::from_secs(15)).await;
        let _ = self.client.close(Duration::from_secs(5)).await;
    }
}

/// How a decision came about.
#[derive(Debug)]
enum Decided {
    Duplicate,
    Done {
        status: &'static str,
        reason: Option<String>,
    },
}

async fn handle(ctx: &Ctx, msg: Incoming) -> Result<(), HandlerError> {
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
    let order_id = event.order_id.clone();
    let known = ctx
        .db
        .call(move |c| {
            c.query_row(
                "SELECT 1 FROM decisions WHERE order_id = ?1",
                [&order_id],
                |_| Ok(()),
            )
            .optional()
        })
        .await
        .map_err(|e| HandlerError::transient(format!("{e:#}")))?;
    if known.is_some() {
        ctx.db
            .call(|c| bump(c, "duplicates"))
            .await
            .map_err(|e| HandlerError::transient(format!("{e:#}")))?;
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
    let decided = {
        let event = event.clone();
        ctx.db
            .call(move |c| decide(c, &event, &wanted, &on_hand, &live, source, &child))
            .await
            .map_err(|e| HandlerError::transient(format!("{e:#}")))?
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

fn decide(
    c: &mut rusqlite::Connection,
    event: &OrderCreated,
    wanted: &BTreeMap<String, i64>,
    on_hand: &HashMap<String, i64>,
    live: &HashMap<String, i64>,
    source: &'static str,
    trace: &TraceContext,
) -> rusqlite::Result<Decided> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seen: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM decisions WHERE order_id = ?1",
            [&event.order_id],
            |r| r.get(0),
        )
        .optional()?;
    if seen.is_some() {
        bump(&tx, "duplicates")?;
        tx.commit()?;
        return Ok(Decided::Duplicate);
    }
    let mut reason = None;
    for (sku, qty) in wanted {
        let available: Option<i64> = tx
            .query_row("SELECT available FROM stock WHERE sku = ?1", [sku], |r| {
                r.get(0)
            })
            .optional()?;
        let warehouse = on_hand.get(sku).copied().unwrap_or(0);
        reason = match available {
            None => Some(format!("unknown article {sku}")),
            Some(n) if n < *qty => Some(format!("only {n} of {sku} left, {qty} wanted")),
            Some(_) if warehouse < *qty => {
                Some(format!("warehouse has {warehouse} of {sku}, {qty} wanted"))
            }
            Some(_) => None,
        };
        if reason.is_some() {
            break;
        }
    }
    let status = if reason.is_none() {
        for (sku, qty) in wanted {
            tx.execute(
                "UPDATE stock SET available = available - ?1 WHERE sku = ?2",
                params![qty, sku],
            )?;
        }
        log_effect(&tx, &event.order_id, "stock-reserved")?;
        "reserved"
    } else {
        log_effect(&tx, &event.order_id, "rejected")?;
        "rejected"
    };
    let lines = serde_json::to_string(&event.lines)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let now = now_ms();
    tx.execute(
        "INSERT INTO decisions (order_id, status, reason, source, lines, traceparent, decided_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            event.order_id,
            status,
            reason,
            source,
            lines,
            trace.header(),
            now
        ],
    )?;
    if source == "cache" {
        tx.execute(
            "INSERT OR IGNORE INTO compensation_checks (order_id, lines, created_ms) VALUES (?1, ?2, ?3)",
            params![event.order_id, lines, now],
        )?;
    }
    for (sku, n) in live {
        tx.execute(
            "INSERT INTO stock_snapshot (sku, on_hand, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, at_ms = excluded.at_ms",
            params![sku, n, now],
        )?;
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
    let payload = serde_json::to_string(&out)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let key = if status == "reserved" {
        INVENTORY_RESERVED
    } else {
        INVENTORY_REJECTED
    };
    outbox::insert(&tx, key, &payload, &trace.header())?;
    tx.commit()?;
    Ok(Decided::Done { status, reason })
}

/// Writes every breaker state change to the store.
async fn record_breaker(
    db: Db,
    mut changes: tokio::sync::watch::Receiver<BreakerStatus>,
    cancel: CancellationToken,
) {
    let mut last = *changes.borrow_and_update();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
        let now = *changes.borrow_and_update();
        let mut events = Vec::new();
        for _ in last.trips..now.trips {
            events.push(("trip", "open"));
        }
        for _ in last.reopens..now.reopens {
            events.push(("reopen", "open"));
        }
        if events.is_empty() || now.state != crate::breaker::BreakerState::Open {
            events.push(("change", now.state.as_str()));
        }
        last = now;
        let result = db
            .call(move |c| {
                for (kind, state) in events {
                    c.execute(
                        "INSERT INTO breaker_events (kind, state, at_ms) VALUES (?1, ?2, ?3)",
                        params![kind, state, now_ms()],
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(service = "inventory", error = %format!("{e:#}"), "recording a breaker change failed");
        }
    }
}

#[derive(Debug, Deserialize)]
struct StockModeRequest {
    mode: StockMode,
    #[serde(default)]
    seconds: Option<f64>,
}

async fn get_stock_mode(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "mode": ctx.warehouse.mode() }))
}

async fn set_stock_mode(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<StockModeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let Json(req) = body.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    let duration = match req.seconds {
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "seconds must be in (0, 3600]".into(),
            ));
        }
        None => None,
    };
    ctx.warehouse.set_mode(req.mode, duration);
    Ok(Json(
        serde_json::json!({ "mode": req.mode, "seconds": req.seconds }),
    ))
}

async fn get_breaker(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    let s = ctx.breaker.status();
    Json(serde_json::json!({ "state": s.state.as_str(), "trips": s.trips, "reopens": s.reopens }))
}
