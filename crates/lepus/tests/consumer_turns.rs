//! The consumer's loop at concurrency 1: a handler that finishes on its first poll is
//! settled at once and the next buffered delivery taken in the same turn, one that awaits
//! is polled again on its wake-up, in the one slot the session reuses for every message;
//! shutdown is seen between two deliveries of the same turn. And the consumer's future
//! stays `Send` for a handler whose future borrows the handler's state. A partial ack
//! batch goes out when deliveries pause, and within a bound while they keep coming.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::amqp::{FieldTable, QueueDeclareOptions};
use lepus::{
    Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue, RetryPolicy,
    Topology,
};
use lepus_testkit::{Broker, shared_broker, unique_name};
use tokio_util::sync::CancellationToken;

use common::{blocking, client, wait_until};

async fn ready_messages(client: &Client, queue: &str) -> u32 {
    let ch = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(&client.queue_name(queue), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count
}

async fn publish_numbered(client: &Client, queue: &str, n: usize) {
    let publisher = Publisher::new(client, PublisherOptions::default());
    let results = publisher
        .publish_batch((0..n).map(|i| Message::new("", queue, i.to_string())))
        .await;
    assert_eq!(results.len(), n);
    for result in results {
        result.unwrap();
    }
    publisher.close(Duration::from_secs(5)).await.unwrap();
}

/// The numbers seen, in order.
#[derive(Default)]
struct Seen(Mutex<Vec<usize>>);

/// A handler body that borrows its state across an await (as shop's handlers do): the
/// future it makes names a higher-ranked lifetime.
async fn record(seen: &Seen, msg: Incoming) -> Outcome {
    let n: usize = msg.text().unwrap().parse().unwrap();
    if n.is_multiple_of(3) {
        tokio::task::yield_now().await;
    }
    if n.is_multiple_of(7) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seen.0.lock().unwrap().push(n);
    Outcome::Ack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_finish_at_once_or_later_each_see_every_message_once_in_order() {
    const N: usize = 300;
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("turns");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    publish_numbered(&client, &q, N).await;

    let consumer = Consumer::builder(&client, &q)
        .prefetch(50)
        .ack_batch(10)
        .concurrency(1)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .build()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let stop = CancellationToken::new();
    let handler = {
        let seen = Arc::clone(&seen);
        move |msg: Incoming| {
            let seen = Arc::clone(&seen);
            async move { record(&seen, msg).await }
        }
    };
    // `tokio::spawn` needs the consumer's future to be `Send` with this handler.
    let task = {
        let (consumer, stop) = (consumer.clone(), stop.clone());
        tokio::spawn(async move { consumer.run(handler, stop).await })
    };
    wait_until("every message handled", Duration::from_secs(30), || {
        seen.0.lock().unwrap().len() >= N
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "once each, in order");
    let stats = consumer.stats().snapshot();
    assert_eq!((stats.delivered, stats.acked), (N as u64, N as u64));
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.stale_settles, 0);
    assert_eq!(
        ready_messages(&client, &q).await,
        0,
        "every ack reached the broker"
    );
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_handler_that_cancels_shutdown_is_the_last_to_run() {
    const N: usize = 100;
    const STOP_AT: usize = 10;
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("turns-stop");
    let client = client(broker.url(), Topology::new().queue(Queue::new(&q)));
    publish_numbered(&client, &q, N).await;

    let consumer = Consumer::builder(&client, &q)
        .prefetch(N as u16)
        .concurrency(1)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (stop, handled) = (stop.clone(), Arc::clone(&handled));
        move |_msg: Incoming| {
            let (stop, handled) = (stop.clone(), Arc::clone(&handled));
            async move {
                let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    // Meanwhile the whole prefetch window arrives: the next messages are
                    // taken one after the other in one turn of the consumer's loop.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if n == STOP_AT {
                    stop.cancel();
                }
                Outcome::Ack
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), consumer.run(handler, stop))
        .await
        .expect("the consumer stopped")
        .unwrap();

    assert_eq!(handled.load(Ordering::SeqCst), STOP_AT);
    let stats = consumer.stats().snapshot();
    assert_eq!(stats.acked, STOP_AT as u64);
    assert_eq!(stats.in_flight, 0);
    // The rest went back to the queue with the consumer's channel.
    let expected = (N - STOP_AT) as u32;
    let probe = client.clone();
    let qn = q.clone();
    lepus_testkit::wait_until(
        "the untaken messages back in the queue",
        Duration::from_secs(10),
        async || ready_messages(&probe, &qn).await == expected,
    )
    .await;
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// The broker's count of the queue's delivered, unacknowledged messages.
async fn unacked(broker: &Arc<Broker>, queue: &str) -> u64 {
    let b = Arc::clone(broker);
    let listed = blocking(move || {
        b.rabbitmqctl(&[
            "-q",
            "list_queues",
            "name",
            "messages_unacknowledged",
            "--no-table-headers",
        ])
        .unwrap()
    })
    .await;
    listed
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{queue} not listed in {listed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_ack_batch_goes_out_within_the_bound_while_deliveries_keep_coming() {
    const N: usize = 6000;
    let broker = Arc::new(blocking(|| Broker::start().unwrap()).await);
    let q = unique_name("turns-linger");
    let client = client(&broker.url(), Topology::new().queue(Queue::new(&q)));
    publish_numbered(&client, &q, N).await;
    // The batch (5,000) does not fill before the check below: only the linger sends acks.
    let consumer = Consumer::builder(&client, &q)
        .prefetch(10_000)
        .ack_batch(5_000)
        .concurrency(1)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .build()
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let task = {
        let (consumer, stop, handled) = (consumer.clone(), stop.clone(), Arc::clone(&handled));
        tokio::spawn(async move {
            consumer
                .run(
                    move |_msg: Incoming| {
                        // A little work per message: a handler finishes (and its ack is
                        // added) about every half millisecond, never pausing 5 ms.
                        std::thread::sleep(Duration::from_micros(400));
                        handled.fetch_add(1, Ordering::SeqCst);
                        async { Outcome::Ack }
                    },
                    stop,
                )
                .await
        })
    };
    let queue = client.queue_name(&q);
    wait_until("300 handled", Duration::from_secs(30), || {
        handled.load(Ordering::SeqCst) >= 300
    })
    .await;
    // While messages keep being handled, what is unacknowledged is about what was handled
    // in the last few milliseconds (ACK_LINGER_MAX) plus the buffered deliveries, far from
    // everything handled.
    let open = unacked(&broker, &queue).await;
    let now = handled.load(Ordering::SeqCst);
    assert!(
        now < N,
        "the check came after the last message ({now} handled)"
    );
    let buffered = N - now;
    assert!(
        open < buffered as u64 + 500,
        "{open} unacknowledged with {buffered} not yet handled"
    );
    wait_until("every message handled", Duration::from_secs(60), || {
        handled.load(Ordering::SeqCst) >= N
    })
    .await;
    // Once deliveries stop, the rest is acked (the consumer still runs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = unacked(&broker, &queue).await;
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} still unacknowledged after deliveries stopped"
        );
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), N);
    client.close(Duration::from_secs(5)).await.unwrap();
}
