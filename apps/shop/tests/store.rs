//! The store layer on both backends (SQLite files, a real PostgreSQL) and what lets
//! replicas share one PostgreSQL store: migrations applied once, unique keys recognised,
//! two outbox relays on one outbox publishing each row exactly once (FOR UPDATE SKIP
//! LOCKED), the dedupe store shared between replicas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use lepus::amqp::{FieldTable, QueueDeclareOptions};
use lepus::idempotency::IdempotencyStore as _;
use shop::args;
use shop::db::{Db, migrate};
use shop::dedupe::SharedStore;
use shop::outbox::{self, Relay};
use shop::service::Common;
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

/// Migrations apply once and are recorded; statements written once run on both
/// backends; a unique key's refusal is recognised on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_api_and_versioned_migrations_on_sqlite_and_postgres() {
    let pg = common::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = [
        dir.path().join("inventory.db").display().to_string(),
        pg.url("inventory"),
    ];
    let versions: Vec<i64> = migrate::INVENTORY.iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    for url in &urls {
        let db = Db::open(url, migrate::INVENTORY).await.unwrap();
        assert_eq!(migrate::applied(&db).await.unwrap(), versions, "{url}");
        db.execute(
            "INSERT INTO decisions (order_id, status, reason, source, lines, traceparent, decided_ms)
             VALUES ($1, 'reserved', $2, 'live', '[]', '', $3)",
            args!["o-1", None::<String>, 7_i64],
        )
        .await
        .unwrap();
        let again = db
            .execute(
                "INSERT INTO decisions (order_id, status, source, lines, traceparent, decided_ms)
                 VALUES ($1, 'reserved', 'live', '[]', '', 0)",
                args!["o-1"],
            )
            .await
            .unwrap_err();
        assert!(again.is_unique_violation(), "{url}: {again}");
        // Opening again applies nothing twice.
        drop(db);
        let db = Db::open(url, migrate::INVENTORY).await.unwrap();
        assert_eq!(migrate::applied(&db).await.unwrap(), versions, "{url}");
        let row = db
            .query_opt(
                "SELECT order_id, reason, decided_ms FROM decisions WHERE order_id = $1",
                args!["o-1"],
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.text(0).unwrap(), "o-1");
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.int(2).unwrap(), 7);
        // A transaction dropped uncommitted leaves nothing behind.
        {
            let mut tx = db.begin().await.unwrap();
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', 1)",
                &[],
            )
            .await
            .unwrap();
        }
        let mut s = db.session().await.unwrap();
        assert_eq!(s.counter("dropped").await.unwrap(), 0, "{url}");
    }
}

/// The migrations of every service apply to a fresh database of each backend, and a
/// program older than its store refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_migrates_and_a_newer_store_is_refused() {
    let pg = common::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    for (service, migrations) in [
        ("order", migrate::ORDER),
        ("inventory", migrate::INVENTORY),
        ("notify", migrate::NOTIFY),
    ] {
        for url in [
            dir.path()
                .join(format!("{service}.db"))
                .display()
                .to_string(),
            pg.url(service),
        ] {
            Db::open(&url, migrations).await.unwrap();
            let older = &migrations[..1];
            if migrations.len() > 1 {
                let err = Db::open(&url, older).await.unwrap_err();
                assert!(format!("{err:#}").contains("newer"), "{url}: {err:#}");
            }
        }
    }
}

async fn queue_depth(client: &lepus::Client, queue: &str) -> u32 {
    let channel = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, passive, FieldTable::default())
        .await
        .unwrap()
        .message_count
}

/// Two relays on one PostgreSQL outbox (two replicas of a service): every row reaches
/// the broker exactly once. Without the SKIP LOCKED claim both relays read the same
/// unsent rows and publish them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_each_row_exactly_once() {
    const ROWS: usize = 600;
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let pg = common::postgres().await;
    let db = Db::open(&pg.url("order"), migrate::ORDER).await.unwrap();
    let mut common = Common::new(
        vec![broker.url().to_string()],
        Names::new(lepus_testkit::unique_name("relay")),
        std::path::PathBuf::from("unused"),
    );
    common.quorum = false;
    // The inventory's queue is where order.created goes; nobody consumes it here.
    let observer = common
        .client(
            "observer",
            shop::topology::inventory_topology(&common.names, lepus::QueueType::Classic),
            true,
        )
        .unwrap();
    observer
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        for i in 0..ROWS {
            outbox::insert(&mut tx, "order.created", &format!("{{\"n\":{i}}}"), "")
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let cancel = CancellationToken::new();
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for replica in 0..2 {
        let client = common
            .client(
                &format!("order-{replica}"),
                shop::topology::order_topology(&common.names),
                true,
            )
            .unwrap();
        let relay = Relay::new(db.clone(), &client, common.names.exchange(), "order");
        tasks.push(tokio::spawn(relay.run(cancel.clone())));
        clients.push(client);
    }
    let queue = common.names.inventory_queue();
    common::wait_until("every row confirmed", Duration::from_secs(60), async || {
        outbox::pending(&db).await.unwrap() == 0
    })
    .await;
    cancel.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
    }
    let depth = queue_depth(&observer, &queue).await;
    assert_eq!(depth as usize, ROWS, "messages in the queue, one per row");
    // Each row was attempted once: no relay took a row another had claimed.
    let attempts = db
        .query_opt("SELECT SUM(attempts)::BIGINT, COUNT(*) FROM outbox", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.int(0).unwrap() as usize, ROWS);
    for client in clients {
        let _ = client.close(Duration::from_secs(5)).await;
    }
    let _ = observer.close(Duration::from_secs(5)).await;
}

/// The dedupe store: an id one replica handled is known to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_store_is_shared_by_replicas() {
    let pg = common::postgres().await;
    let a = Arc::new(SharedStore::new(
        Db::open(&pg.url("notify"), migrate::NOTIFY).await.unwrap(),
    ));
    let b = Arc::new(SharedStore::new(
        Db::open(&pg.url("notify"), migrate::NOTIFY).await.unwrap(),
    ));
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let seen = tokio::task::spawn_blocking(move || {
        assert!(!b2.contains("m-1").unwrap());
        a2.insert("m-1").unwrap();
        a2.insert("m-1").unwrap();
        (b2.contains("m-1").unwrap(), b2.contains("m-2").unwrap())
    })
    .await
    .unwrap();
    assert_eq!(seen, (true, false));
}
