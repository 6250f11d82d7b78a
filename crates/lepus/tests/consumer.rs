//! The reliable consumer against real nodes: poison messages through retry tiers to the
//! dead-letter queue (classic and quorum), panics (in a handler's future and in its
//! synchronous call), a dead-letter queue that is missing for a while, a blocking
//! idempotency store, graceful shutdown, and a broker kill during 20,000 messages with
//! duplicates suppressed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::amqp::{AMQPValue, FieldTable, QueueDeclareOptions};
use lepus::failure::{
    ATTEMPTS_HEADER, CONSUMER_HEADER, FIRST_FAILURE_HEADER, LAST_ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, REASON_HEADER,
};
use lepus::idempotency::{IdempotencyStore, MemoryStore, SqliteStore};
use lepus::{
    Client, Consumer, HandlerError, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue,
    RetryPolicy, Topology,
};
use lepus_testkit::{Broker, shared_broker, unique_name};
use tokio_util::sync::CancellationToken;

use common::{blocking, client, wait_until};

async fn message_count(client: &Client, queue: &str) -> u32 {
    let ch = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue, passive, FieldTable::default())
        .await
        .unwrap()
        .message_count
}

fn text(h: &FieldTable, key: &str) -> String {
    match h.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{key}: {other:?}"),
    }
}

async fn poison_goes_to_the_dead_letter_queue(quorum: bool) {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let (ex, q) = (unique_name("shop"), unique_name("work"));
    let work = if quorum {
        Queue::new(&q).quorum()
    } else {
        Queue::new(&q)
    };
    let retry = RetryPolicy::default()
        .immediate(1)
        .delays([Duration::from_millis(200), Duration::from_millis(400)]);
    assert_eq!(retry.max_attempts(), 6);
    let topology = Topology::new()
        .exchange(lepus::Exchange::topic(&ex))
        .queue(work)
        .bind(&q, &ex, "order.*")
        .merge(retry.topology(&q));
    let client = client(broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default());
    for i in 0..20 {
        let body = if i == 7 {
            "poison".to_string()
        } else {
            format!("good-{i}")
        };
        publisher
            .publish(Message::new(&ex, "order.created", body))
            .await
            .unwrap();
    }
    let poison_calls = Arc::new(AtomicUsize::new(0));
    let good = Arc::new(Mutex::new(HashSet::new()));
    let consumer = Consumer::builder(&client, &q)
        .name("inventory")
        .retry(retry.clone())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = {
        let (poison_calls, good) = (poison_calls.clone(), good.clone());
        consumer.spawn(
            move |msg: Incoming| {
                let (poison_calls, good) = (poison_calls.clone(), good.clone());
                async move {
                    if msg.text() == Some("poison") {
                        poison_calls.fetch_add(1, Ordering::SeqCst);
                        return Err(HandlerError::transient("stock service unavailable"));
                    }
                    good.lock().unwrap().insert(msg.text().unwrap().to_owned());
                    Ok(())
                }
            },
            stop.clone(),
        )
    };
    let stats = consumer.stats();
    wait_until("good messages handled", Duration::from_secs(20), || {
        good.lock().unwrap().len() == 19
    })
    .await;
    wait_until("poison dead-lettered", Duration::from_secs(20), || {
        stats.dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        poison_calls.load(Ordering::SeqCst),
        6,
        "exactly the configured attempts"
    );
    assert_eq!(stats.retried[0].load(Ordering::SeqCst), 1);
    assert_eq!(stats.retried[1].load(Ordering::SeqCst), 1);
    let dlq = retry.dlq(&q);
    let ch = client.channel().await.unwrap();
    let dead = ch
        .basic_get(&dlq)
        .await
        .unwrap()
        .expect("a message in the dead-letter queue");
    assert_eq!(&dead.delivery.body()[..], b"poison");
    let h = dead.delivery.properties().headers().clone().unwrap();
    assert_eq!(lepus_header(&h, ATTEMPTS_HEADER), 6);
    assert_eq!(text(&h, ORIGINAL_EXCHANGE_HEADER), ex);
    assert_eq!(text(&h, ORIGINAL_ROUTING_KEY_HEADER), "order.created");
    assert_eq!(text(&h, LAST_ERROR_HEADER), "stock service unavailable");
    assert_eq!(text(&h, CONSUMER_HEADER), "inventory");
    assert_eq!(text(&h, REASON_HEADER), "retries-exhausted");
    assert!(h.inner().contains_key(FIRST_FAILURE_HEADER));
    dead.delivery.ack().unwrap();
    drop(ch);
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(message_count(&client, &q).await, 0);
    client.close(Duration::from_secs(5)).await.unwrap();
}

fn lepus_header(h: &FieldTable, key: &str) -> i64 {
    match h.inner().get(key) {
        Some(AMQPValue::LongLongInt(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_exactly_the_configured_attempts() {
    poison_goes_to_the_dead_letter_queue(false).await;
}

#[tokio::test]
async fn the_same_on_a_quorum_queue() {
    poison_goes_to_the_dead_letter_queue(true).await;
}

#[tokio::test]
async fn a_permanent_failure_skips_the_retries() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("permanent");
    let retry = RetryPolicy::default();
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    publisher
        .publish(Message::new("", &q, "{not json"))
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&client, &q)
        .retry(retry.clone())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let c = calls.clone();
    let task = consumer.spawn(
        move |msg: Incoming| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                let _: HashMap<String, String> = msg.json()?;
                Ok::<_, HandlerError>(())
            }
        },
        stop.clone(),
    );
    let stats = consumer.stats();
    wait_until("dead-lettered", Duration::from_secs(10), || {
        stats.dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let ch = client.channel().await.unwrap();
    let dead = ch.basic_get(&retry.dlq(&q)).await.unwrap().unwrap();
    let h = dead.delivery.properties().headers().clone().unwrap();
    assert_eq!(text(&h, REASON_HEADER), "rejected");
    assert!(text(&h, LAST_ERROR_HEADER).contains("JSON"));
    dead.delivery.ack().unwrap();
    drop(ch);
    stop.cancel();
    task.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_does_not_take_the_consumer_down() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("panics");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    for body in ["a", "boom", "c"] {
        publisher.publish(Message::new("", &q, body)).await.unwrap();
    }
    let handled = Arc::new(Mutex::new(Vec::new()));
    let booms = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&client, &q)
        .retry(
            RetryPolicy::none()
                .immediate(1)
                .delays([Duration::from_millis(100)]),
        )
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (h, b) = (handled.clone(), booms.clone());
    let task = consumer.spawn(
        move |msg: Incoming| {
            let (h, b) = (h.clone(), b.clone());
            async move {
                let body = msg.text().unwrap().to_owned();
                // Panics on its first two attempts (the in-process retry included), then
                // succeeds when it comes back from the wait queue.
                if body == "boom" && b.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("handler bug on {body}");
                }
                h.lock().unwrap().push((body, msg.attempt()));
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    wait_until("all handled", Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 3
    })
    .await;
    let stats = consumer.stats();
    assert_eq!(stats.panics.load(Ordering::SeqCst), 2);
    assert_eq!(stats.retried_total(), 1);
    let boom = handled
        .lock()
        .unwrap()
        .iter()
        .find(|(b, _)| b == "boom")
        .cloned()
        .unwrap();
    assert_eq!(
        boom.1, 3,
        "third attempt: two panics (one in process), then from the wait queue"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_handler_that_panics_before_returning_its_future_fails_only_that_message() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("sync-panic");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    for body in ["a", "boom", "c", "d"] {
        publisher.publish(Message::new("", &q, body)).await.unwrap();
    }
    let handled = Arc::new(Mutex::new(Vec::new()));
    let retry = RetryPolicy::none().immediate(1);
    let consumer = Consumer::builder(&client, &q)
        .retry(retry.clone())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let h = handled.clone();
    let task = consumer.spawn(
        move |msg: Incoming| {
            let body = msg.text().unwrap().to_owned();
            // The closure itself panics: no future is ever returned for this message.
            if body == "boom" {
                panic!("bug before the async block on {body}");
            }
            let h = h.clone();
            async move {
                h.lock().unwrap().push(body);
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    let stats = consumer.stats();
    wait_until("the others handled", Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 3
    })
    .await;
    wait_until(
        "the panicking one dead-lettered",
        Duration::from_secs(10),
        || stats.dead_lettered.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(*handled.lock().unwrap(), ["a", "c", "d"]);
    assert_eq!(
        stats.panics.load(Ordering::SeqCst),
        2,
        "two attempts (one immediate retry), each a failure"
    );
    assert_eq!(stats.subscriptions.load(Ordering::SeqCst), 1, "one session");
    let ch = client.channel().await.unwrap();
    let dead = ch.basic_get(&retry.dlq(&q)).await.unwrap().unwrap();
    assert_eq!(&dead.delivery.body()[..], b"boom");
    let h = dead.delivery.properties().headers().clone().unwrap();
    assert!(text(&h, LAST_ERROR_HEADER).contains("bug before the async block"));
    dead.delivery.ack().unwrap();
    drop(ch);
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(message_count(&client, &q).await, 0);
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// A quorum queue that drops a message on its second requeue, and a dead-letter queue
/// that is missing while the message fails: the consumer holds the message and tries the
/// move again until the dead-letter queue is back, instead of requeueing it (which would
/// spend the delivery limit and lose it).
#[tokio::test]
async fn a_failing_move_is_retried_and_never_spends_the_delivery_limit() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("limit");
    let retry = RetryPolicy::none();
    let client = client(
        broker.url(),
        Topology::new().queue(Queue::new(&q).quorum().delivery_limit(1)),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    // A window of two: the held message takes one place, so the others only keep
    // flowing if their acks are not held back behind it.
    let consumer = Consumer::builder(&client, &q)
        .prefetch(2)
        .retry(retry.clone())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let c = calls.clone();
    let task = consumer.spawn(
        move |msg: Incoming| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if msg.text() == Some("poison") {
                    return Err(HandlerError::permanent("cannot be handled"));
                }
                Ok(())
            }
        },
        stop.clone(),
    );
    let stats = consumer.stats();
    wait_until("subscribed", Duration::from_secs(10), || {
        stats.active.load(Ordering::SeqCst)
    })
    .await;
    // The consumer declared its dead-letter queue when it subscribed; take it away.
    let dlq = retry.dlq(&q);
    let ch = client.channel().await.unwrap();
    ch.queue_delete(&dlq, Default::default()).await.unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default());
    publisher
        .publish(Message::new("", &q, "poison"))
        .await
        .unwrap();
    wait_until("several failed moves", Duration::from_secs(20), || {
        stats.move_failures.load(Ordering::SeqCst) >= 4
    })
    .await;
    // Other messages are handled meanwhile: the held one does not stall the consumer.
    for _ in 0..3 {
        publisher
            .publish(Message::new("", &q, "fine"))
            .await
            .unwrap();
    }
    wait_until("the next messages handled", Duration::from_secs(10), || {
        stats.acked.load(Ordering::SeqCst) == 3
    })
    .await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&dlq, durable, FieldTable::default())
        .await
        .unwrap();
    wait_until(
        "dead-lettered once the queue is back",
        Duration::from_secs(20),
        || stats.dead_lettered.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the poison message was delivered once, not requeued"
    );
    let dead = ch.basic_get(&dlq).await.unwrap().expect("in the DLQ");
    assert_eq!(&dead.delivery.body()[..], b"poison");
    dead.delivery.ack().unwrap();
    drop(ch);
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(message_count(&client, &q).await, 0);
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// On a current-thread runtime a blocking call on the consumer's task stops everything:
/// the SQLite store's insert waits on a lock another connection holds, and a ticker on
/// the same runtime must keep ticking.
#[tokio::test]
async fn a_blocking_idempotency_store_does_not_stall_the_runtime() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("sqlite");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seen.db");
    let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (handled_tx, handled_rx) = std::sync::mpsc::channel::<()>();
    // The lock is held for a while after the handler ran, while the store records it.
    let release = std::thread::spawn(move || {
        handled_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        locker.execute_batch("COMMIT").unwrap();
    });
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    publisher
        .publish(Message::new("", &q, "x").message_id_str("m-1"))
        .await
        .unwrap();
    let consumer = Consumer::builder(&client, &q)
        .idempotency(store)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handled_tx = Mutex::new(Some(handled_tx));
    let task = consumer.spawn(
        move |_msg: Incoming| {
            if let Some(tx) = handled_tx.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
            async { Outcome::Ack }
        },
        stop.clone(),
    );
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let ticking = CancellationToken::new();
    let ticker = {
        let (worst, ticking) = (worst.clone(), ticking.clone());
        tokio::spawn(async move {
            while !ticking.is_cancelled() {
                let at = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let gap = at.elapsed();
                let mut w = worst.lock().unwrap();
                *w = (*w).max(gap);
            }
        })
    };
    let stats = consumer.stats();
    wait_until(
        "acked after the store recorded it",
        Duration::from_secs(15),
        || stats.acked.load(Ordering::SeqCst) == 1,
    )
    .await;
    ticking.cancel();
    ticker.await.unwrap();
    blocking(move || release.join().unwrap()).await;
    let worst = *worst.lock().unwrap();
    assert!(
        worst < Duration::from_millis(750),
        "the runtime stalled for {worst:?}"
    );
    let check = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
    assert!(IdempotencyStore::contains(&check, "m-1").unwrap());
    stop.cancel();
    task.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_slow_handlers_finish_and_acks_them() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("shutdown");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    for i in 0..15 {
        publisher
            .publish(Message::new("", &q, format!("{i}")))
            .await
            .unwrap();
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&client, &q)
        .prefetch(15)
        .concurrency(10)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let f = finished.clone();
    let task = consumer.spawn(
        move |_msg: Incoming| {
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    let stats = consumer.stats();
    wait_until("10 handlers running", Duration::from_secs(10), || {
        stats.in_flight.load(Ordering::SeqCst) == 10
    })
    .await;
    let started = tokio::time::Instant::now();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        finished.load(Ordering::SeqCst),
        10,
        "all 10 running handlers finished"
    );
    assert_eq!(stats.acked.load(Ordering::SeqCst), 10);
    // The 5 that never started went back to the queue; nothing is left unacked.
    let ch = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let info = ch
        .queue_declare(&client.queue_name(&q), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(info.message_count, 5);
    assert_eq!(info.consumer_count, 0);
    drop(ch);
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_kill_during_20000_messages_loses_none_and_duplicates_are_suppressed() {
    const TOTAL: usize = 20_000;
    let broker = Arc::new(blocking(|| Broker::start().unwrap()).await);
    let q = unique_name("kill");
    let client = client(&broker.url(), Topology::new().queue(Queue::new(&q)));
    let publisher = Publisher::new(&client, PublisherOptions::default());
    let batch: Vec<_> = (0..TOTAL)
        .map(|i| Message::new("", &q, "x").message_id_str(&format!("m-{i}")))
        .collect();
    assert!(
        publisher
            .publish_batch(batch)
            .await
            .iter()
            .all(Result::is_ok)
    );

    // Every handler invocation, per message id: a duplicate that got past the store
    // shows as a count of 2.
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let invocations = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&client, &q)
        .prefetch(200)
        .concurrency(4)
        .idempotency(MemoryStore::default())
        .retry(RetryPolicy::none().immediate(3))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (s, n) = (seen.clone(), invocations.clone());
    let task = consumer.spawn(
        move |msg: Incoming| {
            let (s, n) = (s.clone(), n.clone());
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                // A little work, so the kill lands mid-stream.
                tokio::time::sleep(Duration::from_micros(200)).await;
                *s.lock()
                    .unwrap()
                    .entry(msg.message_id().unwrap().to_owned())
                    .or_default() += 1;
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    wait_until("a quarter handled", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= TOTAL / 4
    })
    .await;
    let b = broker.clone();
    blocking(move || {
        b.kill().unwrap();
        b.restart().unwrap();
    })
    .await;
    wait_until("all handled", Duration::from_secs(120), || {
        seen.lock().unwrap().len() == TOTAL
    })
    .await;
    let stats = consumer.stats();
    // Redeliveries of handled messages the kill causes depend on where it lands; these
    // copies are certain: the first 1,000 ids again, all handled before the kill.
    const AGAIN: usize = 1_000;
    let before = stats.deduplicated.load(Ordering::SeqCst);
    let again: Vec<_> = (0..AGAIN)
        .map(|i| Message::new("", &q, "x").message_id_str(&format!("m-{i}")))
        .collect();
    assert!(
        publisher
            .publish_batch(again)
            .await
            .iter()
            .all(Result::is_ok)
    );
    wait_until("the copies suppressed", Duration::from_secs(30), || {
        stats.deduplicated.load(Ordering::SeqCst) >= before + AGAIN as u64
    })
    .await;
    wait_until("queue drained", Duration::from_secs(30), || {
        stats.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let deduplicated = stats.deduplicated.load(Ordering::SeqCst);
    let delivered = stats.delivered.load(Ordering::SeqCst);
    let invoked = invocations.load(Ordering::SeqCst);
    println!(
        "handled {} distinct, {invoked} invocations, {delivered} deliveries, {deduplicated} suppressed, {} subscriptions, {} stale acks",
        seen.lock().unwrap().len(),
        stats.subscriptions.load(Ordering::SeqCst),
        stats.stale_settles.load(Ordering::SeqCst),
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), TOTAL, "none lost");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(invoked, TOTAL, "the handler ran once per message");
    assert!(
        deduplicated >= AGAIN as u64,
        "every republished copy was suppressed ({deduplicated})"
    );
    // Every delivery was handled, suppressed, or returned unstarted when the channel
    // died (and delivered again): never more handled-or-suppressed than delivered.
    assert!(
        delivered >= TOTAL as u64 + deduplicated,
        "{delivered} deliveries < {TOTAL} handled + {deduplicated} suppressed"
    );
    assert!(
        stats.subscriptions.load(Ordering::SeqCst) >= 2,
        "resubscribed after the kill"
    );
    assert_eq!(message_count(&client, &q).await, 0);
    client.close(Duration::from_secs(5)).await.unwrap();
}
