//! The consumer under faults, as a replicated service sees them: two consumers of one
//! queue sharing a blocking idempotency store (as shop's replicas share a database),
//! handlers that finish on their first poll or later (a yield, a timer, the blocking
//! pool), while the broker closes every connection and one consumer is killed in the
//! middle of its work (its task aborted and its connection dropped, like a process
//! kill) and started again. Every message must be handled to its end at least once: a
//! delivery acked without its handler having finished, or taken and then neither
//! handled nor left for redelivery, shows up as a number never finished.

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

use lepus::amqp::{FieldTable, QueueDeclareOptions};
use lepus::idempotency::IdempotencyStore;
use lepus::{
    Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue, RetryPolicy,
    Topology,
};
use lepus_testkit::{Broker, unique_name};
use tokio_util::sync::CancellationToken;

use common::{blocking, client, wait_until};

/// A store shared by the consumers that blocks a little on every call, as a database does.
#[derive(Default)]
struct SlowStore(Mutex<HashSet<String>>);

impl IdempotencyStore for SlowStore {
    fn contains(&self, id: &str) -> lepus::Result<bool> {
        std::thread::sleep(Duration::from_micros(200));
        Ok(self.0.lock().unwrap().contains(id))
    }
    fn insert(&self, id: &str) -> lepus::Result<()> {
        std::thread::sleep(Duration::from_micros(200));
        self.0.lock().unwrap().insert(id.to_owned());
        Ok(())
    }
    fn is_blocking(&self) -> bool {
        true
    }
}

/// How many times each number's handler ran to its end.
#[derive(Default)]
struct Finished {
    counts: Mutex<HashMap<usize, usize>>,
    /// Numbers whose handler failed once (a transient failure, retried through a wait
    /// queue) when the test asks for it.
    failed: Mutex<HashSet<usize>>,
}

impl Finished {
    fn distinct(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

async fn handle(finished: &Finished, retries: bool, msg: Incoming) -> Outcome {
    let n: usize = msg.text().unwrap().parse().unwrap();
    if retries && n % 10 == 3 && finished.failed.lock().unwrap().insert(n) {
        return Outcome::Retry("the first attempt of every tenth fails".into());
    }
    match n % 6 {
        0 => tokio::task::yield_now().await,
        1 => tokio::time::sleep(Duration::from_millis(1)).await,
        2 => tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_micros(300)))
            .await
            .unwrap(),
        _ => {}
    }
    *finished.counts.lock().unwrap().entry(n).or_default() += 1;
    Outcome::Ack
}

async fn queue_depth(client: &Client, queue: &str) -> (u32, u32) {
    let ch = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let ok = ch
        .queue_declare(&client.queue_name(queue), passive, FieldTable::default())
        .await
        .unwrap();
    (ok.message_count, ok.consumer_count)
}

/// The queue's messages, ready and unacknowledged, as the broker counts them.
async fn messages_in(broker: &Arc<Broker>, queue: &str) -> u64 {
    let b = Arc::clone(broker);
    let listed = blocking(move || {
        b.rabbitmqctl(&[
            "-q",
            "list_queues",
            "name",
            "messages",
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

struct Replica {
    client: Client,
    task: tokio::task::JoinHandle<lepus::Result<()>>,
}

/// How the consumers are set up.
#[derive(Clone, Copy)]
struct Setup {
    concurrency: usize,
    /// Quorum queues, and a tenth of the messages failing once and retried through a
    /// wait queue (as shop's inventory consumer does when a stock check fails).
    retries: bool,
}

impl Setup {
    fn topology(self, queue: &str) -> Topology {
        if self.retries {
            Topology::new().queue(Queue::new(queue).quorum())
        } else {
            Topology::new().queue(Queue::new(queue))
        }
    }
}

fn start_replica(
    url: &str,
    queue: &str,
    setup: Setup,
    store: &Arc<SlowStore>,
    finished: &Arc<Finished>,
    stop: &CancellationToken,
) -> Replica {
    let client = client(url, setup.topology(queue));
    let retry = if setup.retries {
        RetryPolicy::none()
            .delays([Duration::from_millis(100)])
            .quorum(true)
    } else {
        RetryPolicy::none()
    };
    let consumer = Consumer::builder(&client, queue)
        .prefetch(64)
        .concurrency(setup.concurrency)
        .retry(retry)
        .declare_retry_queues(setup.retries)
        .idempotency_shared(Arc::clone(store) as Arc<dyn IdempotencyStore>)
        .build()
        .unwrap();
    let handler = {
        let finished = Arc::clone(finished);
        let retries = setup.retries;
        move |msg: Incoming| {
            let finished = Arc::clone(&finished);
            async move { handle(&finished, retries, msg).await }
        }
    };
    let task = consumer.spawn(handler, stop.clone());
    Replica { client, task }
}

async fn every_message_is_handled_through_faults(setup: Setup) {
    let broker = Arc::new(blocking(|| Broker::start().unwrap()).await);
    let q = unique_name("faults");
    let admin = client(&broker.url(), setup.topology(&q));

    let store = Arc::new(SlowStore::default());
    let finished = Arc::new(Finished::default());
    let stop = CancellationToken::new();
    let url = broker.url();
    let a = start_replica(&url, &q, setup, &store, &finished, &stop);
    let mut b = start_replica(&url, &q, setup, &store, &finished, &stop);

    // A steady load (about 2,000 a second, confirmed) until the faults are over, so they
    // land while deliveries flow.
    let published = Arc::new(AtomicUsize::new(0));
    let faults_done = CancellationToken::new();
    let load = {
        let (admin, q) = (admin.clone(), q.clone());
        let (published, faults_done) = (Arc::clone(&published), faults_done.clone());
        tokio::spawn(async move {
            let publisher = Publisher::new(&admin, PublisherOptions::default());
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0;
            while !faults_done.is_cancelled() || next < 2_000 {
                pace.tick().await;
                let batch: Vec<Message> = (next..next + 20)
                    .map(|i| Message::new("", &q, i.to_string()))
                    .collect();
                for result in publisher.publish_batch(batch).await {
                    result.unwrap();
                }
                next += 20;
                published.store(next, Ordering::SeqCst);
            }
            publisher.close(Duration::from_secs(10)).await.unwrap();
            next
        })
    };

    for (i, at) in [500, 1_000, 1_500, 2_000].into_iter().enumerate() {
        wait_until("the load under way", Duration::from_secs(60), || {
            published.load(Ordering::SeqCst) >= at
        })
        .await;
        if i % 2 == 0 {
            let broker = Arc::clone(&broker);
            blocking(move || broker.close_all_connections().unwrap()).await;
        } else {
            // A replica killed in the middle of its work: its task stops where it is
            // and its connection goes, then it starts again.
            b.task.abort();
            let _ = b.task.await;
            let _ = b.client.close(Duration::from_millis(200)).await;
            b = start_replica(&url, &q, setup, &store, &finished, &stop);
        }
    }
    faults_done.cancel();
    let n = load.await.unwrap();

    // Every number handled to its end (waited for with a deadline, then named).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finished.distinct() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing: Vec<usize> = {
        let counts = finished.counts.lock().unwrap();
        (0..n).filter(|i| !counts.contains_key(i)).collect()
    };
    assert!(missing.is_empty(), "never handled to its end: {missing:?}");
    // Redeliveries of messages already handled (their acks went with a lost connection or
    // the killed consumer) may still be on their way: while the consumers run, every
    // delivery gets acked, so the queue empties, ready and unacknowledged alike.
    let name = admin.queue_name(&q);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = messages_in(&broker, &name).await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} messages ready or unacknowledged while the consumers run"
        );
    }
    // And every delivery acked: once the consumers have stopped (their channels closed,
    // anything unacknowledged requeued), the queue is empty.
    stop.cancel();
    a.task.await.unwrap().unwrap();
    b.task.await.unwrap().unwrap();
    let probe = admin.clone();
    let qn = q.clone();
    lepus_testkit::wait_until(
        "the consumers gone from the queue",
        Duration::from_secs(10),
        async || queue_depth(&probe, &qn).await.1 == 0,
    )
    .await;
    assert_eq!(queue_depth(&admin, &q).await.0, 0, "every delivery acked");
    for c in [a.client, b.client, admin] {
        let _ = c.close(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_one_every_message_is_handled_through_connection_losses_and_a_kill() {
    every_message_is_handled_through_faults(Setup {
        concurrency: 1,
        retries: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_eight_every_message_is_handled_through_connection_losses_and_a_kill() {
    every_message_is_handled_through_faults(Setup {
        concurrency: 8,
        retries: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_quorum_queues_with_retries_every_message_is_handled_through_connection_losses_and_a_kill()
 {
    every_message_is_handled_through_faults(Setup {
        concurrency: 8,
        retries: true,
    })
    .await;
}
