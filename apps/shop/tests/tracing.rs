//! With tracing on (lepus's OpenTelemetry spans inject their own `traceparent` into what
//! they publish), one order still has one trace id in all three services' stores and
//! logs: the outbox relay publishes inside a span whose parent is the order's trace.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_one_trace_across_services_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("shop.log");
    let _telemetry = shop::telemetry::init_logging("shop-test", Some(&log)).unwrap();
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let common = Common {
        amqp_urls: vec![broker.url().to_string()],
        names: Names::new(lepus_testkit::unique_name("shop")),
        quorum: false,
        data_dir: dir.path().join("data"),
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
                gateway_failure_rate: 0.0,
            },
        },
        &cancel,
    )
    .await
    .unwrap();
    system.wait_ready(Duration::from_secs(30)).await.unwrap();
    let body = serde_json::json!({
        "customer": "Ada", "email": "ada@example.org", "lines": [{"sku": "mug", "qty": 1}]
    });
    let resp = shop::httpc::request(
        system.order.addr,
        "POST",
        "/orders",
        Some(&body),
        &[],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 201, "{}", resp.text());
    let view = resp.json().unwrap();
    let (order_id, trace_id) = (
        view["order_id"].as_str().unwrap().to_string(),
        view["trace_id"].as_str().unwrap().to_string(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let notified: String = loop {
        let found = shop::db::Db::open_read_only(&common.notify_db())
            .unwrap()
            .query_row(
                "SELECT traceparent FROM notifications WHERE order_id = ?1",
                [&order_id],
                |r| r.get(0),
            )
            .ok();
        if let Some(tp) = found {
            break tp;
        }
        assert!(tokio::time::Instant::now() < deadline, "order not notified");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(notified.contains(&trace_id), "{notified} vs {trace_id}");
    system.stop().await;
    // Every service logged the order under its trace id.
    let text = std::fs::read_to_string(&log).unwrap();
    for service in ["order", "inventory", "notify"] {
        let found = text.lines().any(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            v["fields"]["service"] == service && v["fields"]["trace_id"] == trace_id.as_str()
        });
        assert!(found, "no {service} log line with trace id {trace_id}");
    }
    // And lepus's own spans (publish/handle) carry the same trace id.
    let in_span = text.lines().any(|line| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        v["span"]["name"] == "handle" && v["trace_id"] == trace_id.as_str()
    });
    assert!(in_span, "no lepus handle span with trace id {trace_id}");
}
