//! The inventory service: consumes `order.created`, reserves stock, and announces
//! `inventory.reserved` or `inventory.rejected` through its own outbox.
//!
//! - Idempotent by order id: the decision, the stock change and the outgoing event commit
//!   in one transaction keyed by the order id, so a redelivered event finds the decision
//!   and changes nothing (lepus's idempotency store skips most redeliveries earlier; the
//!   database is what makes it exact).
//! - The stock-check dependency is called under a timeout and a circuit breaker. A live
//!   reservation takes the units from it with the decision. When the call fails or the
//!   breaker is open, the decision uses the last answer cached for that article, and a
//!   reservation so made goes to the compensation queue, where the [`compensate`]or
//!   takes the units for real once the dependency answers again, or cancels the order.
//!   An article never seen before cannot be decided from cache: that order is retried
//!   through lepus's tiers.
//! - Replicas share the store (PostgreSQL): decisions, compensations and handled message
//!   ids are keyed in it, never in a process's memory.
//!
//! The seams: [`decide`] (an order's decision), [`compensate`] (settling cached
//! decisions), `admin` (the admin API and the breaker's history).

mod admin;
pub mod compensate;
pub mod decide;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use lepus::observability::{self, Health};
use lepus::stats::ConsumerStats;
use lepus::{Client, Consumer, Incoming, Role};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::args;
use crate::breaker::{BreakerConfig, CircuitBreaker};
use crate::db::Db;
use crate::outbox::Relay;
use crate::service::{Common, join_all, spawn_connection_gauges};
use crate::stock::{CATALOG, Warehouse};
use crate::telemetry::metrics_handle;

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
        let db = Db::open(&common.database("inventory"), crate::db::migrate::INVENTORY).await?;
        let snapshot = seed(&db).await?;
        let queue = common.names.inventory_queue();
        let client = common.client(
            "inventory",
            crate::topology::inventory_topology(&common.names, common.queue_type()),
            false,
        )?;
        let relay = Relay::new(db.clone(), &client, common.names.exchange(), "inventory");
        let breaker = Arc::new(CircuitBreaker::new("stock", options.breaker));
        // The stock service answers under the breaker's short timeout: on SQLite it gets
        // a connection of its own, so that it never queues behind the service's writes
        // (WAL lets it read meanwhile).
        let warehouse_db = Db::connect(&common.database("inventory"))?;
        let warehouse = Arc::new(Warehouse::open(warehouse_db).await?);
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
            .idempotency_shared(crate::dedupe::for_store(&db))
            .build()?;
        let consumer_stats = consumer.stats();
        health.watch_consumer(&consumer);
        {
            let ctx = Arc::clone(&ctx);
            let token = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let handler = move |msg: Incoming| {
                    let ctx = Arc::clone(&ctx);
                    async move { decide::handle(&ctx, msg).await }
                };
                if let Err(e) = consumer.run(handler, token).await {
                    tracing::error!(service = "inventory", error = %e, "order consumer stopped");
                }
            }));
        }
        let compensation_queue = common.names.compensation_queue();
        let compensator = Consumer::builder(&client, &compensation_queue)
            .name("inventory-compensator")
            .prefetch(16)
            .concurrency(4)
            .handler_timeout(Duration::from_secs(20))
            .retry(crate::topology::compensation_policy())
            // Declared with the service's topology, of its queue type.
            .declare_retry_queues(false)
            .idempotency_shared(crate::dedupe::for_store(&db))
            .build()?;
        health.watch_consumer(&compensator);
        {
            let ctx = Arc::clone(&ctx);
            let token = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let handler = move |msg: Incoming| {
                    let ctx = Arc::clone(&ctx);
                    async move { compensate::handle(&ctx, msg).await }
                };
                if let Err(e) = compensator.run(handler, token).await {
                    tracing::error!(service = "inventory", error = %e, "compensator stopped");
                }
            }));
        }
        tasks.push(tokio::spawn(admin::record_breaker(
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
            .route(
                "/admin/stock",
                get(admin::get_stock_mode).post(admin::set_stock_mode),
            )
            .route("/admin/breaker", get(admin::get_breaker))
            .route("/admin/warehouse", post(admin::set_warehouse_stock))
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

/// Seeds the stock of [`CATALOG`] (once: replicas starting together all try) and reads
/// the cached snapshot.
async fn seed(db: &Db) -> anyhow::Result<HashMap<String, i64>> {
    for (sku, n) in CATALOG {
        db.execute(
            "INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING",
            args![*sku, *n],
        )
        .await?;
    }
    let mut snapshot = HashMap::new();
    for r in db
        .query("SELECT sku, on_hand FROM stock_snapshot", &[])
        .await?
    {
        snapshot.insert(r.text(0)?, r.int(1)?);
    }
    Ok(snapshot)
}
