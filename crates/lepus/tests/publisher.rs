//! The reliable publisher against real nodes: returns, nacks, a full buffer, outages,
//! and 50,000 messages through kills and forced closes with nothing confirmed lost.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lepus::amqp::{Connection, ConsumeOptions};
use lepus::topology::Overflow;
use lepus::{ErrorKind, Message, Publisher, PublisherOptions, Queue, Topology};
use lepus_testkit::{Broker, shared_broker, unique_name};

use common::{blocking, client};

/// Reads every message id in `queue` (acking as it goes) until it stays empty.
async fn drain_ids(url: &str, queue: &str) -> Vec<String> {
    let conn = Connection::open(url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1000, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(queue, ConsumeOptions::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let d = d.unwrap();
        ids.push(d.properties().message_id().as_ref().unwrap().to_string());
        d.ack().unwrap();
    }
    conn.close().await.unwrap();
    ids
}

#[tokio::test]
async fn an_unroutable_mandatory_message_fails_and_comes_back() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let client = client(broker.url(), Topology::new());
    let publisher = Publisher::new(&client, PublisherOptions::default().mandatory(true));
    let err = publisher
        .publish(Message::new("", unique_name("nobody-home"), "lost?").message_id_str("m-1"))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Unroutable);
    assert!(err.error.to_string().contains("NO_ROUTE"), "{}", err.error);
    assert_eq!(err.message.message_id(), Some("m-1"));
    assert_eq!(&err.message.body()[..], b"lost?");
    assert_eq!(publisher.stats().snapshot().returned, 1);
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_nack_fails_with_the_message() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("one-only");
    let topology = Topology::new().queue(
        Queue::new(&q)
            .durable(false)
            .auto_delete(true)
            .max_length(1)
            .overflow(Overflow::RejectPublish),
    );
    let client = client(broker.url(), topology);
    // No republish after a nack: it fails at once.
    let publisher = Publisher::new(&client, PublisherOptions::default().nack_retries(0));
    publisher
        .publish(Message::new("", &q, "first"))
        .await
        .unwrap();
    let err = publisher
        .publish(Message::new("", &q, "second"))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Nacked);
    assert_eq!(&err.message.body()[..], b"second");
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_hands_the_message_back() {
    // Nothing listens on this port: the client never connects.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = client(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        Topology::new(),
    );
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default()
            .buffer(2)
            .publish_timeout(Duration::from_millis(400)),
    );
    let a = publisher.send(Message::new("", "q", "a")).await.unwrap();
    let b = publisher.send(Message::new("", "q", "b")).await.unwrap();
    let started = tokio::time::Instant::now();
    let full = publisher
        .send(Message::new("", "q", "c"))
        .await
        .err()
        .unwrap();
    assert_eq!(full.error.kind(), ErrorKind::BufferFull);
    assert_eq!(&full.message.body()[..], b"c");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The buffered ones fail at their deadline, handed back too.
    for (confirm, body) in [(a, "a"), (b, "b")] {
        let err = confirm.await.unwrap_err();
        assert_eq!(err.error.kind(), ErrorKind::Timeout, "{}", err.error);
        assert_eq!(&err.message.body()[..], body.as_bytes());
    }
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_during_an_outage_completes_when_the_broker_is_back() {
    let broker = Arc::new(blocking(|| Broker::start().unwrap()).await);
    let q = unique_name("outage");
    let client = client(&broker.url(), Topology::new().queue(Queue::new(&q)));
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::from_secs(60)),
    );
    publisher
        .publish(Message::new("", &q, "before"))
        .await
        .unwrap();
    let b = broker.clone();
    blocking(move || b.kill().unwrap()).await;
    let during = publisher
        .send(Message::new("", &q, "during").message_id_str("during"))
        .await
        .unwrap();
    let b = broker.clone();
    blocking(move || b.restart().unwrap()).await;
    during.await.unwrap();
    let ids = drain_ids(&broker.url(), &q).await;
    assert!(ids.contains(&"during".to_string()), "{ids:?}");
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_confirmed_is_lost_through_kills_and_forced_closes() {
    const TOTAL: usize = 50_000;
    let broker = Arc::new(blocking(|| Broker::start().unwrap()).await);
    let q = unique_name("no-loss");
    let client = client(&broker.url(), Topology::new().queue(Queue::new(&q)));
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default()
            .window(500)
            .buffer(5_000)
            .publish_timeout(Duration::from_secs(120)),
    );
    let confirmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Faults on a schedule driven by progress: kill at 10k, force-close at 25k, kill at 40k.
    let faults = {
        let (broker, confirmed) = (broker.clone(), confirmed.clone());
        tokio::spawn(async move {
            let wait_for = |n: usize| {
                let confirmed = confirmed.clone();
                async move {
                    while confirmed.load(std::sync::atomic::Ordering::Relaxed) < n {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let mut log = Vec::new();
            for (at, kill) in [(10_000, true), (25_000, false), (40_000, true)] {
                tokio::time::timeout(Duration::from_secs(120), wait_for(at))
                    .await
                    .unwrap();
                let b = broker.clone();
                if kill {
                    blocking(move || {
                        b.kill().unwrap();
                        b.restart().unwrap();
                    })
                    .await;
                } else {
                    blocking(move || b.close_all_connections().unwrap()).await;
                }
                log.push(at);
            }
            log
        })
    };

    let mut pending = std::collections::VecDeque::new();
    let mut ok_ids = Vec::with_capacity(TOTAL);
    let mut failed = 0usize;
    let settle =
        |r: lepus::PublishResult, id: String, ok_ids: &mut Vec<String>, failed: &mut usize| match r
        {
            Ok(()) => {
                ok_ids.push(id);
                confirmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("publish {id} failed: {}", e.error);
                *failed += 1;
            }
        };
    for i in 0..TOTAL {
        let id = format!("m-{i}");
        let confirm = publisher
            .send(Message::new("", &q, vec![b'x'; 100]).message_id_str(&id))
            .await
            .unwrap();
        pending.push_back((id, confirm));
        while pending.len() >= 1000 {
            let (id, c) = pending.pop_front().unwrap();
            settle(c.await, id, &mut ok_ids, &mut failed);
        }
    }
    for (id, c) in pending {
        settle(c.await, id, &mut ok_ids, &mut failed);
    }
    let faults_done = tokio::time::timeout(Duration::from_secs(120), faults)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(faults_done.len(), 3);

    let consumed = drain_ids(&broker.url(), &q).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &consumed {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let lost: Vec<_> = ok_ids
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let stats = publisher.stats();
    println!(
        "confirmed {} failed {failed} consumed {} distinct {} duplicates {duplicates} lost {} republished {}",
        ok_ids.len(),
        consumed.len(),
        counts.len(),
        lost.len(),
        stats.snapshot().republished,
    );
    assert!(
        lost.is_empty(),
        "lost {} confirmed messages, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(failed, 0, "every publish eventually confirmed");
    assert_eq!(ok_ids.len(), TOTAL);
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn json_batch_and_callbacks() {
    #[derive(serde::Serialize)]
    struct Order {
        id: u32,
    }
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("batch");
    let client = client(
        broker.url(),
        Topology::new().queue(Queue::new(&q).durable(false).auto_delete(false)),
    );
    let publisher = Publisher::new(&client, PublisherOptions::default());
    let batch: Vec<_> = (0..10)
        .map(|id| Message::json("", &q, &Order { id }).unwrap())
        .collect();
    let results = publisher.publish_batch(batch).await;
    assert!(results.iter().all(Result::is_ok));
    let (tx, rx) = tokio::sync::oneshot::channel();
    publisher
        .send_with_callback(Message::new("", &q, "cb"), move |r| {
            let _ = tx.send(r.is_ok());
        })
        .await
        .unwrap();
    assert!(rx.await.unwrap());
    publisher.flush(Duration::from_secs(5)).await.unwrap();
    let ch = client.channel().await.unwrap();
    let first = ch.basic_get(&client.queue_name(&q)).await.unwrap().unwrap();
    assert_eq!(
        first
            .delivery
            .properties()
            .content_type()
            .as_ref()
            .unwrap()
            .as_str(),
        "application/json"
    );
    assert_eq!(&first.delivery.body()[..], br#"{"id":0}"#);
    assert_eq!(first.message_count, 10);
    assert_eq!(
        first
            .delivery
            .properties()
            .message_id()
            .as_ref()
            .unwrap()
            .as_str()
            .len(),
        36
    );
    ch.queue_delete(&q, Default::default()).await.unwrap();
    drop(ch);
    publisher.close(Duration::from_secs(5)).await.unwrap();
    let closed = publisher
        .publish(Message::new("", &q, "late"))
        .await
        .unwrap_err();
    assert_eq!(closed.error.kind(), ErrorKind::Closed);
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// A publisher from the builder publishes with the options set on it, and its snapshot
/// counts exactly what happened: every message written and confirmed, nothing waiting,
/// nothing failed, no stall.
#[tokio::test]
async fn a_built_publisher_counts_what_it_confirmed() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("built");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::builder(&client)
        .mandatory(true)
        .window(4)
        .publish_timeout(Duration::from_secs(20))
        .stall_timeout(Duration::from_secs(10))
        .build();
    let results = publisher
        .publish_batch((0..20).map(|i| Message::new("", &q, format!("m{i}"))))
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let stats = publisher.stats().snapshot();
    assert_eq!(
        (stats.published, stats.confirmed, stats.failed),
        (20, 20, 0),
        "{stats:?}"
    );
    assert_eq!((stats.buffered, stats.in_flight, stats.stalls), (0, 0, 0));
    // Mandatory came from the builder: an unroutable message comes back.
    let err = publisher
        .publish(Message::new("", unique_name("nobody-home"), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Unroutable);
    assert_eq!(publisher.stats().snapshot().returned, 1);
    assert_eq!(drain_ids(broker.url(), &q).await.len(), 20);
    client.close(Duration::from_secs(5)).await.unwrap();
}
