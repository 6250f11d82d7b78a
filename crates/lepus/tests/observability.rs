//! Exact metric values scraped over HTTP, health endpoints, and passwords kept out of
//! every output.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use lepus::observability::{self, Health, PrometheusHandle};
use lepus::{
    Client, Consumer, Exchange, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue,
    RetryPolicy, Topology,
};
use lepus_testkit::{shared_broker, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

use common::{Captured, blocking, wait_until};

fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| observability::install_prometheus().unwrap())
        .clone()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_after_a_known_sequence_are_exact() {
    let handle = recorder();
    let broker = blocking(|| shared_broker().unwrap()).await;
    let (ex, dead_end, q) = (
        unique_name("orders"),
        unique_name("nowhere"),
        unique_name("work"),
    );
    let retry = RetryPolicy::none();
    let topology = Topology::new()
        .exchange(Exchange::direct(&ex).auto_delete(true))
        .exchange(Exchange::direct(&dead_end).auto_delete(true))
        .queue(Queue::new(&q).auto_delete(true))
        .bind(&q, &ex, "new")
        .merge(retry.topology(&q));
    let client = Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .name("metrics-test")
        .topology(topology)
        .build()
        .unwrap();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default().mandatory(true));
    let health = Health::new(&client);
    health.watch_publisher(&publisher);
    let stop = CancellationToken::new();
    let addr = observability::serve(
        "127.0.0.1:0".parse().unwrap(),
        observability::router(Some(handle), health.clone()),
        stop.clone(),
    )
    .await
    .unwrap();

    for i in 0..10 {
        publisher
            .publish(Message::new(&ex, "new", format!("{i}")))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let err = publisher
            .publish(Message::new(&dead_end, "new", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.error.kind(), lepus::ErrorKind::Unroutable);
    }
    let consumer = Consumer::builder(&client, &q).retry(retry).build().unwrap();
    health.watch_consumer(&consumer);
    let stats = consumer.stats();
    let task = consumer.spawn(
        |msg: Incoming| async move {
            if msg.text() == Some("3") {
                Outcome::DeadLetter("bad order".into())
            } else {
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    wait_until("all handled", Duration::from_secs(10), || {
        stats.acked.load(std::sync::atomic::Ordering::SeqCst) == 9
            && stats
                .dead_lettered
                .load(std::sync::atomic::Ordering::SeqCst)
                == 1
    })
    .await;

    let (status, scrape) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let exact = [
        (format!("lepus_published_total{{exchange=\"{ex}\"}}"), 10.0),
        (format!("lepus_confirmed_total{{exchange=\"{ex}\"}}"), 10.0),
        (
            format!("lepus_published_total{{exchange=\"{dead_end}\"}}"),
            2.0,
        ),
        (
            format!("lepus_returned_total{{exchange=\"{dead_end}\"}}"),
            2.0,
        ),
        (
            format!("lepus_publish_failed_total{{exchange=\"{dead_end}\",reason=\"unroutable\"}}"),
            2.0,
        ),
        (format!("lepus_delivered_total{{queue=\"{q}\"}}"), 10.0),
        (format!("lepus_acked_total{{queue=\"{q}\"}}"), 9.0),
        (format!("lepus_dead_lettered_total{{queue=\"{q}\"}}"), 1.0),
        (
            format!("lepus_handler_failures_total{{queue=\"{q}\",kind=\"error\"}}"),
            1.0,
        ),
        (
            format!("lepus_confirm_latency_seconds_count{{exchange=\"{ex}\"}}"),
            10.0,
        ),
        (
            format!("lepus_handler_duration_seconds_count{{queue=\"{q}\"}}"),
            10.0,
        ),
    ];
    for (series, expected) in exact {
        assert_eq!(
            value(&scrape, &series),
            Some(expected),
            "{series}\n{scrape}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "lepus_connected{client=\"metrics-test\",role=\"publish\"}"
        ),
        Some(1.0)
    );

    let (status, body) = http_get(addr, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["consumers_active"], 1);
    assert_eq!(report["blocked"], false);
    let (status, _) = http_get(addr, "/health/live").await;
    assert_eq!(status, 200);

    stop.cancel();
    task.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
    // Closed: no longer live.
    assert!(!health.report().live);
}

#[tokio::test]
async fn a_password_never_shows_in_debug_errors_or_logs() {
    const SECRET: &str = "s3cr3t-Pw";
    let logs = Captured::default();
    let sink = logs.clone();
    // lepus's own JSON lines, everything down to TRACE.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(lepus::observability::json_log_layer(move || sink.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = blocking(|| shared_broker().unwrap()).await;
    let url = broker
        .url()
        .replace("guest:guest@", &format!("guest:{SECRET}@"));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "amqp://guest:{SECRET}@127.0.0.1:{}/%2f",
            l.local_addr().unwrap().port()
        )
    };
    // A dead endpoint may come back, so the client gives up only at its attempt limit;
    // the error then names both endpoints (and neither password).
    let builder = Client::builder()
        .endpoint(&url)
        .unwrap()
        .endpoint(&dead)
        .unwrap()
        .reconnect(
            lepus::ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(20))
                .max_attempts(2),
        );
    let mut shown = format!("{builder:?}");
    let client = builder.build().unwrap();
    let err = client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        err.report().to_string().contains("ACCESS_REFUSED"),
        "{err:?}"
    );
    assert!(
        err.report().to_string().contains("Connection refused"),
        "{err:?}"
    );
    shown += &format!(
        "{} {err:?} {client:?} {}",
        err.report(),
        client.state(lepus::Role::Publish)
    );
    shown += &format!(
        "{:?}",
        lepus::amqp::ConnectionOptions::from_uri(&url).unwrap()
    );
    let bad = Client::builder()
        .endpoint(&format!("amqp://guest:{SECRET}@[::1"))
        .unwrap_err();
    shown += &format!("{bad} {bad:?}");
    client.close(Duration::from_secs(5)).await.unwrap();
    let logs = logs.text();
    assert!(!logs.is_empty(), "the client logged something");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!logs.contains(SECRET), "{logs}");
}

/// The waiting and in-flight gauges are brought up to date by the publisher's task, once
/// per turn of its loop rather than per message: they still show messages waiting for a
/// connection, and fall back to zero once those are answered.
#[tokio::test]
async fn the_publish_gauges_follow_the_messages_waiting() {
    let handle = recorder();
    // Nothing listens there: the messages wait for a connection.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::builder()
        .endpoint(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .unwrap()
        .build()
        .unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::from_secs(30)),
    );
    let health = Health::new(&client);
    health.watch_publisher(&publisher);
    let mut confirms = Vec::new();
    for i in 0..3 {
        confirms.push(
            publisher
                .send(Message::new("", "q", format!("{i}")))
                .await
                .unwrap(),
        );
    }
    let gauge = |name: &str| value(&handle.render(), name);
    wait_until(
        "three messages counted as waiting",
        Duration::from_secs(10),
        || gauge("lepus_publish_buffer_depth") == Some(3.0),
    )
    .await;
    assert_eq!(gauge("lepus_publish_in_flight"), Some(0.0));
    assert_eq!(publisher.stats().snapshot().buffered, 3);
    assert_eq!(health.report().publish_buffer_depth, 3);

    // Closing fails what waits, each message handed back; the gauges go back to zero.
    assert!(publisher.close(Duration::from_millis(100)).await.is_err());
    for (i, confirm) in confirms.into_iter().enumerate() {
        let err = confirm.await.unwrap_err();
        assert_eq!(err.error.kind(), lepus::ErrorKind::Closed);
        assert_eq!(&err.message.body()[..], format!("{i}").as_bytes());
    }
    wait_until(
        "no message counted as waiting",
        Duration::from_secs(10),
        || gauge("lepus_publish_buffer_depth") == Some(0.0),
    )
    .await;
    assert_eq!(publisher.stats().snapshot().buffered, 0);
    let _ = client.close(Duration::from_secs(1)).await;
}
