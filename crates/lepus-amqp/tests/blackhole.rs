//! A broker that goes silent without closing anything (a blackhole in the test kit's
//! fault proxy: no FIN, no RST, nothing forwarded) is detected by missed heartbeats
//! within two heartbeat intervals, and a publisher writing into it is not left hanging;
//! `Connection::abort` drops such a connection at once, without waiting for the broker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use lepus_amqp::*;
use lepus_testkit::proxy::{Direction, FaultProxy};
use lepus_testkit::{SharedBroker, blocking, shared_broker, unique_name};

/// Heartbeat interval negotiated for these tests, in seconds.
const HEARTBEAT: u16 = 1;
/// Scheduling slack on top of two intervals (a loaded two-core machine).
const SLACK: Duration = Duration::from_millis(750);

/// A broker, a proxy in front of it and a connection through the proxy.
async fn through_proxy() -> (SharedBroker, FaultProxy, Connection) {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let port = ConnectionOptions::from_uri(broker.url()).unwrap().port();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    let opts = ConnectionOptions::new("127.0.0.1", proxy.addr().port()).heartbeat(HEARTBEAT);
    let conn = Connection::connect(opts).await.unwrap();
    assert_eq!(conn.negotiated().heartbeat, HEARTBEAT);
    (broker, proxy, conn)
}

fn two_intervals() -> Duration {
    Duration::from_secs(u64::from(HEARTBEAT) * 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_broker_is_detected_within_two_heartbeat_intervals() {
    let (_broker, proxy, conn) = through_proxy().await;
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(
        &unique_name("blackhole"),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    proxy.set_blackhole(Direction::Both, true);
    let start = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the silence was noticed");
    let took = start.elapsed();
    eprintln!("blackhole detected after {took:?} (heartbeat {HEARTBEAT} s)");
    assert_eq!(reason.kind(), ErrorKind::MissedHeartbeat, "{reason:?}");
    assert!(reason.is_recoverable());
    assert!(
        took <= two_intervals() + SLACK,
        "detected after {took:?}, more than two heartbeat intervals"
    );
    // The proxy never closed anything: the engine found out by itself.
    assert_eq!(proxy.stats().resets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_writing_into_a_blackhole_fails_within_two_heartbeat_intervals() {
    let (_broker, proxy, conn) = through_proxy().await;
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let queue = unique_name("blackhole-pub");
    ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    proxy.set_blackhole(Direction::Both, true);
    let start = Instant::now();
    // Publish until the engine gives up: the socket stops taking bytes once the kernel's
    // buffers are full, so the writer is stuck on a dead socket.
    let publisher = tokio::spawn(async move {
        let body = vec![0u8; 64 * 1024];
        let mut confirms = Vec::new();
        loop {
            match ch
                .basic_publish(
                    "",
                    &queue,
                    PublishOptions::default(),
                    &BasicProperties::default(),
                    &body,
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => return (err, confirms),
            }
        }
    });
    let (err, confirms) = tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .expect("publishing into a blackhole ended")
        .unwrap();
    let took = start.elapsed();
    eprintln!(
        "publisher stopped after {took:?} and {} publishes: {err}",
        confirms.len()
    );
    assert!(err.is_recoverable(), "{err:?}");
    assert!(
        took <= two_intervals() + SLACK,
        "the publisher hung for {took:?}, more than two heartbeat intervals"
    );
    // Every message that went out unconfirmed is failed, none left pending.
    for confirm in confirms {
        let outcome = tokio::time::timeout(Duration::from_secs(1), confirm)
            .await
            .expect("a pending confirm resolved once the connection died");
        assert!(outcome.is_err(), "a confirm from a blackholed broker");
    }
    let reason = conn.close_reason().expect("the connection is closed");
    assert_eq!(reason.kind(), ErrorKind::MissedHeartbeat, "{reason:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_a_connection_the_broker_no_longer_answers_at_once() {
    // Heartbeats far apart, so only the abort can end the connection in this test.
    let broker = blocking(|| shared_broker().unwrap()).await;
    let port = ConnectionOptions::from_uri(broker.url()).unwrap().port();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    let opts = ConnectionOptions::new("127.0.0.1", proxy.addr().port()).heartbeat(60);
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let queue = unique_name("blackhole-abort");
    ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    proxy.set_blackhole(Direction::Both, true);
    let confirm = ch
        .basic_publish(
            "",
            &queue,
            PublishOptions::default(),
            &BasicProperties::default(),
            b"never confirmed",
        )
        .await
        .unwrap();
    let start = Instant::now();
    conn.abort("given up by the test");
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed at once");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "abort took {took:?}; a graceful close would wait for the broker"
    );
    assert_eq!(reason.kind(), ErrorKind::ConnectionClosed, "{reason:?}");
    assert!(
        reason.to_string().contains("given up by the test"),
        "{reason}"
    );
    assert!(reason.is_recoverable(), "{reason:?}");
    assert!(!conn.is_open());
    assert!(!ch.is_open());
    // What was waiting on the connection fails with it, at once.
    let outcome = tokio::time::timeout(Duration::from_secs(1), confirm)
        .await
        .expect("the pending confirm resolved with the abort");
    assert!(outcome.is_err(), "a confirm from an aborted connection");
    // A second abort, or a close, of an aborted connection does nothing.
    conn.abort("again");
    assert!(conn.close().await.is_ok());
    assert!(
        conn.close_reason()
            .unwrap()
            .to_string()
            .contains("given up by the test")
    );
}
