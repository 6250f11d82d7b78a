//! The order API's contract with its callers: an `Idempotency-Key` makes a retried POST
//! one order answered the same way (also when the retries race), and a `traceparent`
//! from the caller is continued, not replaced.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use shop::inventory::InventoryOptions;
use shop::notify::NotifyOptions;
use shop::service::Common;
use shop::system::{System, SystemConfig};
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The running system, and what must live as long as it (the broker guard: a node of
/// the test's own is killed when it drops).
struct Running {
    system: System,
    _broker: lepus_testkit::SharedBroker,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let broker = tokio::task::spawn_blocking(|| lepus_testkit::shared_broker().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common = Common {
        amqp_urls: vec![broker.url().to_string()],
        names: Names::new(lepus_testkit::unique_name("shop")),
        quorum: false,
        data_dir: dir.path().to_path_buf(),
        database_url: None,
    };
    let cancel = CancellationToken::new();
    let system = System::start(
        SystemConfig {
            common,
            order_listen: any_port(),
            inventory_listen: any_port(),
            notify_listen: any_port(),
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
    drop(cancel);
    Running {
        system,
        _broker: broker,
        _dir: dir,
    }
}

fn order(customer: &str) -> serde_json::Value {
    serde_json::json!({
        "customer": customer, "email": "ada@example.org", "lines": [{"sku": "mug", "qty": 1}]
    })
}

async fn post(
    system: &System,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> shop::httpc::Response {
    shop::httpc::request(
        system.order.addr,
        "POST",
        "/orders",
        Some(body),
        headers,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

fn count(system: &System, sql: &str, key: &str) -> i64 {
    shop::db::Db::open_read_only(&system.config.common.order_db())
        .unwrap()
        .query_row(sql, [key], |r| r.get(0))
        .unwrap()
}

/// Orders and outbox events made under `key`.
fn orders_and_events(system: &System, key: &str) -> (i64, i64) {
    (
        count(
            system,
            "SELECT COUNT(*) FROM orders WHERE idempotency_key = ?1",
            key,
        ),
        count(
            system,
            "SELECT COUNT(*) FROM outbox x JOIN orders o ON o.event_id = x.event_id
             WHERE o.idempotency_key = ?1",
            key,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_is_one_order_answered_the_same_way() {
    let running = start().await;
    let system = running.system;
    let all_events = || count(&system, "SELECT COUNT(*) FROM outbox WHERE ?1 = ?1", "");

    // Sequential retries: one order, one event, the same status and body each time (even
    // after the relay has published the event, which changes GET's view).
    let first = post(&system, &order("Ada"), &[("Idempotency-Key", "retry-1")]).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(
        &system,
        "SELECT COUNT(*) FROM outbox WHERE sent_ms IS NOT NULL AND ?1 = ?1",
        "",
    ) == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "event never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = post(&system, &order("Ada"), &[("Idempotency-Key", "retry-1")]).await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body, "a replay is answered byte for byte");
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(orders_and_events(&system, "retry-1"), (1, 1));

    // The same key with another order is refused, and makes nothing.
    let other = post(&system, &order("Bob"), &[("Idempotency-Key", "retry-1")]).await;
    assert_eq!(other.status, 422, "{}", other.text());
    assert!(other.text().contains("Idempotency-Key"), "{}", other.text());
    assert_eq!(orders_and_events(&system, "retry-1"), (1, 1));

    // An unusable key is a bad request, not a silent truncation into some other key.
    let long = "k".repeat(201);
    let bad = post(
        &system,
        &order("Ada"),
        &[("Idempotency-Key", long.as_str())],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    // Racing duplicates (a client and a front door retrying at once): one order.
    let mut racers = Vec::new();
    for _ in 0..8 {
        let addr = system.order.addr;
        racers.push(tokio::spawn(async move {
            shop::httpc::request(
                addr,
                "POST",
                "/orders",
                Some(&order("Cy")),
                &[("Idempotency-Key", "race-1")],
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        }));
    }
    let mut answers = Vec::new();
    for racer in racers {
        answers.push(racer.await.unwrap());
    }
    for answer in &answers {
        assert_eq!(answer.status, 201, "{}", answer.text());
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(orders_and_events(&system, "race-1"), (1, 1));
    // Two keys, two orders, two events: nothing else was written.
    assert_eq!(all_events(), 2);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_continued_through_every_service() {
    let running = start().await;
    let system = running.system;
    let gateway_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let gateway_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{gateway_trace}-{gateway_span}-01");
    let resp = post(
        &system,
        &order("Ada"),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let view = resp.json().unwrap();
    assert_eq!(view["trace_id"], gateway_trace);
    let order_id = view["order_id"].as_str().unwrap().to_string();

    // The event the order service published carries the gateway's trace id, under a
    // span of its own.
    let published: String = shop::db::Db::open_read_only(&system.config.common.order_db())
        .unwrap()
        .query_row(
            "SELECT x.traceparent FROM outbox x JOIN orders o ON o.event_id = x.event_id
             WHERE o.id = ?1",
            [&order_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(published.contains(gateway_trace), "{published}");
    assert!(!published.contains(gateway_span), "{published}");

    // And the notification service, two hops later, received it under that trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let notified: String = loop {
        let found = shop::db::Db::open_read_only(&system.config.common.notify_db())
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
    assert!(notified.contains(gateway_trace), "{notified}");

    // A malformed traceparent starts a new trace rather than failing the order.
    let resp = post(&system, &order("Bob"), &[("traceparent", "00-nonsense")]).await;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let trace = resp.json().unwrap()["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, gateway_trace);
    system.stop().await;
}
