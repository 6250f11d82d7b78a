//! shop on PostgreSQL with more than one replica, against a real broker: compensation of
//! reservations made from the cached stock snapshot (taken for real, or the order
//! cancelled and the customer told), and decisions and keyed orders made once across
//! replicas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use shop::args;
use shop::db::Db;
use shop::demo::report;
use shop::inventory::{InventoryOptions, InventoryService};
use shop::notify::NotifyOptions;
use shop::service::Common;
use shop::stock::StockMode;
use shop::system::{System, SystemConfig};
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

fn common_on(broker: &lepus_testkit::SharedBroker, pg: &shop::db::pg_server::PgServer) -> Common {
    let mut common = Common::new(
        vec![broker.url().to_string()],
        Names::new(lepus_testkit::unique_name("shop")),
        std::path::PathBuf::from("unused"),
    );
    common.database_url = Some(pg.url("{service}"));
    common
}

async fn start(common: &Common, cancel: &CancellationToken) -> System {
    let system = System::start(
        SystemConfig {
            common: common.clone(),
            order_listen: common::any_port(),
            inventory_listen: common::any_port(),
            notify_listen: common::any_port(),
            inventory: InventoryOptions::default(),
            notify: NotifyOptions {
                gateway_failure_rate: 0.0,
            },
        },
        cancel,
    )
    .await
    .unwrap();
    system.wait_ready(Duration::from_secs(30)).await.unwrap();
    system
}

async fn place(system: &System, i: usize, sku: &str, key: Option<&str>) -> String {
    let body = serde_json::json!({
        "customer": format!("customer {i}"),
        "email": format!("c{i}@example.org"),
        "lines": [{"sku": sku, "qty": 1}],
    });
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    let resp = shop::httpc::request(
        system.order.addr,
        "POST",
        "/orders",
        Some(&body),
        &headers,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(resp.status == 201, "{}", resp.text());
    resp.json().unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn state(common: &Common) -> report::StoreState {
    report::read_stores(common).await.unwrap()
}

/// Five orders reserved from the cached snapshot while the stock service is down, after
/// its stock of the article fell to 3 behind the inventory's back: when it is back, the
/// compensator takes 3 for real and cancels 2, whose customers are told. The counts
/// agree across the stores. (Before, a check only marked a "mismatch" and nobody acted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reservations_are_taken_for_real_or_cancelled_and_told() {
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let pg = common::postgres().await;
    let common = common_on(&broker, &pg.server);
    let cancel = CancellationToken::new();
    let system = start(&common, &cancel).await;

    // One live order: the snapshot learns the vase's stock (60, one taken).
    place(&system, 0, "vase", None).await;
    common::wait_until(
        "the live order notified",
        Duration::from_secs(30),
        async || state(&common).await.notified == 1,
    )
    .await;

    let warehouse = &system.inventory.warehouse;
    warehouse.set_mode(StockMode::Failing, None);
    warehouse.set_on_hand("vase", 3).await.unwrap();
    for i in 1..=5 {
        place(&system, i, "vase", None).await;
    }
    common::wait_until(
        "five decisions from the cached snapshot",
        Duration::from_secs(30),
        async || state(&common).await.decided_from_cache == 5,
    )
    .await;
    let s = state(&common).await;
    assert_eq!((s.reserved, s.compensation_pending), (6, 5), "{s:?}");
    warehouse.set_mode(StockMode::Healthy, None);

    common::wait_until(
        "every compensation settled and every customer told",
        Duration::from_secs(60),
        async || {
            let s = state(&common).await;
            s.compensation_pending == 0 && s.cancellation_notices == 2 && s.notified == 6
        },
    )
    .await;
    let s = state(&common).await;
    assert_eq!(s.compensated, 3, "{s:?}");
    assert_eq!(s.cancelled_after_recheck, 2, "{s:?}");
    assert_eq!(s.cancelled_decisions, 2, "{s:?}");
    assert_eq!(s.reserved, 4, "{s:?}");
    assert_eq!(s.compensation_errors, 0, "{s:?}");
    assert!(s.repeated_effects.is_empty(), "{:?}", s.repeated_effects);
    let report = s.report(0, 0, 0);
    assert_eq!((report.compensated, report.cancelled_after_recheck), (3, 2));
    // The warehouse gave out all it had; the ledger got the cancelled units back.
    let inventory = Db::connect(&common.database("inventory")).unwrap();
    let on_hand = inventory
        .query_opt(
            "SELECT on_hand FROM warehouse_stock WHERE sku = $1",
            args!["vase"],
        )
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(on_hand, 0);
    let available = inventory
        .query_opt("SELECT available FROM stock WHERE sku = $1", args!["vase"])
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(available, 60 - 6 + 2);

    // Every compensation event again, under new message ids (no dedupe store can tell):
    // each is recognised as settled, and nothing is taken or cancelled twice.
    let before = state(&common).await.store_duplicates;
    inventory
        .execute(
            "INSERT INTO outbox (event_id, routing_key, payload, traceparent, created_ms)
             SELECT event_id || '-again', routing_key, payload, traceparent, created_ms
             FROM outbox WHERE routing_key = $1",
            args!["inventory.compensate"],
        )
        .await
        .unwrap();
    common::wait_until(
        "the repeated compensations recognised",
        Duration::from_secs(30),
        async || state(&common).await.store_duplicates >= before + 5,
    )
    .await;
    let s = state(&common).await;
    assert_eq!(
        (
            s.compensated,
            s.cancelled_after_recheck,
            s.cancellation_notices
        ),
        (3, 2, 2),
        "{s:?}"
    );
    assert!(s.repeated_effects.is_empty(), "{:?}", s.repeated_effects);
    cancel.cancel();
    system.stop().await;
}

/// A second inventory replica on the same store and queue, every order.created
/// published twice under different message ids (so no dedupe store can tell): each order
/// is decided once and its stock taken once, whichever replica saw which copy. The same
/// Idempotency-Key sent to two order replicas at once makes one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_decide_each_order_once_and_keyed_orders_once() {
    const ORDERS: usize = 40;
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let pg = common::postgres().await;
    let common = common_on(&broker, &pg.server);
    let cancel = CancellationToken::new();
    let system = start(&common, &cancel).await;
    let second = InventoryService::start(
        &common,
        InventoryOptions::default(),
        common::any_port(),
        cancel.child_token(),
    )
    .await
    .unwrap();
    let second_order =
        shop::order::OrderService::start(&common, common::any_port(), cancel.child_token())
            .await
            .unwrap();

    // Every order's event twice: copy the outbox row under a new event id.
    let order_db = Db::connect(&common.database("order")).unwrap();
    for i in 0..ORDERS {
        place(&system, i, "lamp", None).await;
    }
    order_db
        .execute(
            "INSERT INTO outbox (event_id, routing_key, payload, traceparent, created_ms)
             SELECT event_id || '-again', routing_key, payload, traceparent, created_ms FROM outbox",
            &[],
        )
        .await
        .unwrap();
    common::wait_until(
        "every order decided and notified, every copy consumed",
        Duration::from_secs(60),
        async || {
            let s = state(&common).await;
            s.notified == ORDERS as u64
                && s.outbox_pending == 0
                && s.store_duplicates >= ORDERS as u64
        },
    )
    .await;
    let s = state(&common).await;
    assert_eq!(s.reserved, ORDERS as u64, "{s:?}");
    assert!(s.repeated_effects.is_empty(), "{:?}", s.repeated_effects);
    assert_eq!(s.orders_with_decision_effect, ORDERS as u64);
    let inventory = Db::connect(&common.database("inventory")).unwrap();
    let lamps = |sql: &'static str| {
        let inventory = inventory.clone();
        async move {
            inventory
                .query_opt(sql, args!["lamp"])
                .await
                .unwrap()
                .unwrap()
                .int(0)
                .unwrap()
        }
    };
    assert_eq!(
        lamps("SELECT available FROM stock WHERE sku = $1").await,
        5000 - ORDERS as i64
    );
    assert_eq!(
        lamps("SELECT on_hand FROM warehouse_stock WHERE sku = $1").await,
        5000 - ORDERS as i64
    );

    // One key, two order replicas, at once: one order, both answered with it.
    let body = serde_json::json!({
        "customer": "racer",
        "email": "racer@example.org",
        "lines": [{"sku": "mug", "qty": 1}],
    });
    let post = |addr| {
        let body = body.clone();
        async move {
            shop::httpc::request(
                addr,
                "POST",
                "/orders",
                Some(&body),
                &[("idempotency-key", "race-1")],
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        }
    };
    let (a, b) = tokio::join!(post(system.order.addr), post(second_order.addr));
    assert_eq!(
        (a.status, b.status),
        (201, 201),
        "{} / {}",
        a.text(),
        b.text()
    );
    assert_eq!(a.json().unwrap()["order_id"], b.json().unwrap()["order_id"]);
    let keyed = order_db
        .query_opt(
            "SELECT COUNT(*) FROM orders WHERE idempotency_key = $1",
            args!["race-1"],
        )
        .await
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    assert_eq!(keyed, 1);

    cancel.cancel();
    second.stop().await;
    second_order.stop().await;
    system.stop().await;
}
