//! The three services in process against a real broker, no faults, quorum queues (work,
//! wait and dead-letter): every order placed through the API ends notified (or in the
//! dead-letter queue, for an undeliverable address), once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use shop::inventory::InventoryOptions;
use shop::notify::NotifyOptions;
use shop::service::Common;
use shop::system::{System, SystemConfig};
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

fn count(path: &std::path::Path, sql: &str) -> i64 {
    let c = shop::db::Db::open_read_only(path).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_all_three_services() {
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let common = Common {
        amqp_urls: vec![broker.url().to_string()],
        names: Names::new(lepus_testkit::unique_name("shop")),
        // Quorum queues (what a cluster uses) work on a single node too.
        quorum: true,
        data_dir: dir.path().to_path_buf(),
        database_url: None,
    };
    let cancel = CancellationToken::new();
    let system = System::start(
        SystemConfig {
            common: common.clone(),
            order_listen: common::any_port(),
            inventory_listen: common::any_port(),
            notify_listen: common::any_port(),
            inventory: InventoryOptions::default(),
            notify: NotifyOptions {
                gateway_failure_rate: 0.1,
            },
        },
        &cancel,
    )
    .await
    .unwrap();
    system.wait_ready(Duration::from_secs(30)).await.unwrap();

    let order_addr = system.order.addr;
    let mut ids = Vec::new();
    let mut traces: Vec<String> = Vec::new();
    for i in 0..40 {
        let email = if i == 7 {
            "nobody-at-example.org".to_string()
        } else {
            format!("c{i}@example.org")
        };
        let body = serde_json::json!({
            "customer": format!("customer {i}"),
            "email": email,
            "lines": [{"sku": "lamp", "qty": 1}, {"sku": "vase", "qty": 2}],
        });
        let key = format!("key-{i}");
        let resp = shop::httpc::request(
            order_addr,
            "POST",
            "/orders",
            Some(&body),
            &[("idempotency-key", key.as_str())],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
        let view = resp.json().unwrap();
        ids.push(view["order_id"].as_str().unwrap().to_string());
        traces.push(view["trace_id"].as_str().unwrap().to_string());
    }
    // The same order under the same idempotency key again: the same order, not a new one
    // (tests/api.rs covers the rest of idempotency).
    let again = shop::httpc::request(
        order_addr,
        "POST",
        "/orders",
        Some(&serde_json::json!({
            "customer": "customer 3",
            "email": "c3@example.org",
            "lines": [{"sku": "lamp", "qty": 1}, {"sku": "vase", "qty": 2}],
        })),
        &[("idempotency-key", "key-3")],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(again.status, 201);
    assert_eq!(again.json().unwrap()["order_id"], ids[3].as_str());
    // Invalid orders are refused.
    let bad = shop::httpc::request(
        order_addr,
        "POST",
        "/orders",
        Some(&serde_json::json!({"customer": "x", "email": "x@example.org", "lines": []})),
        &[],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 422);

    // The undeliverable one stays in the notification service's dead-letter queue, with
    // its reason, for an operator (`lepus dlq`); nothing drains it.
    let reader = common
        .client("test-reader", lepus::Topology::new(), true)
        .unwrap();
    let dlqs = vec![
        shop::topology::retry_policy().dlq(&common.names.notify_queue()),
        shop::topology::retry_policy().dlq(&common.names.inventory_queue()),
    ];
    let settled = async || {
        let notified = count(&common.notify_db(), "SELECT COUNT(*) FROM notifications");
        let dead = shop::deadletter::read(&reader, &dlqs, Duration::from_secs(10))
            .await
            .unwrap();
        (notified, dead)
    };
    let what = "40 orders notified or dead-lettered";
    common::wait_until(what, Duration::from_secs(60), async || {
        let (notified, dead) = settled().await;
        notified as u64 + dead.count >= 40
    })
    .await;
    let (notified, dead) = settled().await;
    assert_eq!((notified, dead.count), (39, 1));
    assert_eq!(dead.errors.len(), 1);
    assert!(
        dead.errors[0].contains(": rejected: undeliverable address"),
        "{:?}",
        dead.errors
    );
    // Reading put it back: it is still there.
    let again = shop::deadletter::read(&reader, &dlqs, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.count, 1);
    assert_eq!(again.order_ids, dead.order_ids);
    // 60 vases in stock, 2 per order: the first 30 orders get theirs, the rest are refused.
    assert_eq!(
        count(
            &common.inventory_db(),
            "SELECT COUNT(*) FROM decisions WHERE status = 'reserved'"
        ),
        30
    );
    assert_eq!(
        count(
            &common.inventory_db(),
            "SELECT available FROM stock WHERE sku = 'vase'"
        ),
        0
    );
    // 5000 lamps, one per reserved order: the stock moved once per order.
    assert_eq!(
        count(
            &common.inventory_db(),
            "SELECT available FROM stock WHERE sku = 'lamp'"
        ),
        5000 - 30
    );
    // The effect logs have no unique key, so a duplicate would show: every order decided
    // once, every deliverable one notified once.
    for db in [common.inventory_db(), common.notify_db()] {
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM (SELECT order_id FROM effects
                 GROUP BY order_id, effect HAVING COUNT(*) > 1)"
            ),
            0,
            "an effect repeated in {}",
            db.display()
        );
    }
    assert_eq!(
        count(
            &common.inventory_db(),
            "SELECT COUNT(DISTINCT order_id) FROM effects"
        ),
        40
    );
    assert_eq!(
        count(
            &common.inventory_db(),
            "SELECT COUNT(*) FROM effects WHERE effect = 'stock-reserved'"
        ),
        30
    );
    assert_eq!(
        count(
            &common.notify_db(),
            "SELECT COUNT(*) FROM effects WHERE effect = 'customer-notified'"
        ),
        39
    );
    // One trace per order, across the three services.
    let traceparent = |path: &std::path::Path, table: &str, id: &str| -> String {
        shop::db::Db::open_read_only(path)
            .unwrap()
            .query_row(
                &format!("SELECT traceparent FROM {table} WHERE order_id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    for (id, trace) in ids
        .iter()
        .zip(&traces)
        .filter(|(_, t)| !t.is_empty())
        .take(5)
    {
        assert!(traceparent(&common.inventory_db(), "decisions", id).contains(trace.as_str()));
        assert!(traceparent(&common.notify_db(), "notifications", id).contains(trace.as_str()));
    }
    let view = shop::httpc::request(
        order_addr,
        "GET",
        &format!("/orders/{}", ids[0]),
        None,
        &[],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(view.status, 200);
    assert_eq!(view.json().unwrap()["event"], "published");
    let ready = shop::httpc::request(
        system.inventory.addr,
        "GET",
        "/health/ready",
        None,
        &[],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    system.stop().await;
}
