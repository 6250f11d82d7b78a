//! A retried message must not be lost on its way back from a quorum wait queue.
//!
//! When a wait queue's delay runs out, the broker dead-letters the message to the work
//! queue. With RabbitMQ's default (at-most-once) dead-lettering it forwards it once,
//! without a confirm, and drops it if the work queue cannot take it right then (no
//! leader during an election, full with `reject-publish`, ...). Quorum wait queues are
//! therefore declared with at-least-once dead-lettering: the message stays in the wait
//! queue until the work queue confirms it. The first test makes the work queue refuse
//! the message at the moment it expires and checks that it arrives once the work queue
//! can take it: a work queue that is full (`x-max-length: 1`, `reject-publish`; a
//! classic one, since a quorum queue on RabbitMQ 3.10 takes an unconfirmed dead letter
//! beyond its limit), then a (quorum) work queue that is missing for a while. The second
//! checks what a user sees when a wait queue declared by an older lepus is in the way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lepus::amqp::{BasicProperties, Confirmation, FieldTable, PublishOptions, QueueDeclareOptions};
use lepus::topology::Overflow;
use lepus::{Client, Consumer, HandlerError, Incoming, Queue, RetryPolicy, Role, Topology};
use lepus_testkit::{Broker, shared_broker, unique_name};
use tokio_util::sync::CancellationToken;

use common::{blocking, client};

/// How long the broker's at-least-once dead-letter worker waits before sending again a
/// message the target refused (RabbitMQ's `dead_letter_worker_publisher_confirm_timeout`,
/// 3 minutes by default). Shortened on this test's own node so the test takes seconds.
const RESEND_AFTER_MS: u32 = 300;

async fn ready(client: &Client, queue: &str) -> u32 {
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

async fn publish(client: &Client, queue: &str, body: &[u8]) {
    let ch = client.channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let confirm = ch
        .basic_publish(
            "",
            queue,
            PublishOptions::default(),
            &BasicProperties::default(),
            body,
        )
        .await
        .unwrap();
    assert!(matches!(confirm.await.unwrap(), Confirmation::Ack));
}

/// A client declaring `work` and the wait queue of a quorum retry policy with one
/// 200 ms tier; the wait queue's name.
async fn setup(broker: &Broker, work: Queue) -> (Client, String) {
    let policy = RetryPolicy::none()
        .delays([Duration::from_millis(200)])
        .quorum(true);
    let wait = policy.wait_queue(work.name(), 0);
    let mut topology = Topology::new();
    for q in policy.topology(work.name()).queues() {
        topology = topology.queue(q.clone());
    }
    let client = client(&broker.url(), topology.queue(work));
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let report = client.topology_report(Role::Consume);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    (client, wait)
}

/// Publishes `body` to the wait queue and waits until it has expired out of it.
async fn expire(client: &Client, wait: &str, body: &[u8]) {
    publish(client, wait, body).await;
    lepus_testkit::wait_until(
        "the retried message expired",
        Duration::from_secs(10),
        async || ready(client, wait).await == 0,
    )
    .await;
}

/// Takes the next message of `queue` (waiting up to 10 s for one) and checks its body.
async fn take(client: &Client, queue: &str, body: &[u8]) {
    lepus_testkit::wait_until(
        "a message in the work queue",
        Duration::from_secs(10),
        async || ready(client, queue).await >= 1,
    )
    .await;
    let ch = client.channel().await.unwrap();
    let got = ch.basic_get(queue).await.unwrap().expect("a message");
    assert_eq!(got.delivery.body().as_ref(), body);
    got.delivery.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_the_work_queue_cannot_take_yet_is_kept_until_it_can() {
    // A node of its own: the resend delay is a node-wide setting.
    let broker = blocking(|| {
        let broker = Broker::start().unwrap();
        let setting = format!(
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, {RESEND_AFTER_MS})."
        );
        broker.rabbitmqctl(&["eval", &setting]).unwrap();
        broker
    })
    .await;

    // A full work queue refuses the retried message when it expires.
    let work = unique_name("full");
    let full = Queue::new(&work)
        .max_length(1)
        .overflow(Overflow::RejectPublish);
    let (client, wait) = setup(&broker, full).await;
    publish(&client, &work, b"first").await;
    expire(&client, &wait, b"retried").await;
    assert_eq!(ready(&client, &work).await, 1);
    take(&client, &work, b"first").await;
    take(&client, &work, b"retried").await;
    client.close(Duration::from_secs(5)).await.unwrap();

    // A missing work queue cannot take it either; declared again, it gets it.
    let work = unique_name("missing");
    let (client, wait) = setup(&broker, Queue::new(&work).quorum()).await;
    let ch = client.channel().await.unwrap();
    ch.queue_delete(&work, Default::default()).await.unwrap();
    drop(ch);
    expire(&client, &wait, b"retried").await;
    let report = client.redeclare(Role::Consume).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    take(&client, &work, b"retried").await;
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// A wait queue declared the old way (at-most-once) is left as it is: the declaration
/// failure says how to move it, and a consumer still retries through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_wait_queue_is_kept_and_the_report_says_how_to_move_it() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let work = unique_name("work");
    let policy = RetryPolicy::none()
        .delays([Duration::from_millis(100)])
        .quorum(true);
    let wait = policy.wait_queue(&work, 0);
    let old = Queue::new(&wait)
        .quorum()
        .message_ttl(Duration::from_millis(100))
        .dead_letter_exchange("")
        .dead_letter_routing_key(&work);
    let before = client(broker.url(), Topology::new().queue(old));
    before
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    before.close(Duration::from_secs(5)).await.unwrap();

    let topology = policy.topology(&work).queue(Queue::new(&work).quorum());
    let client = client(broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let report = client.topology_report(Role::Consume);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.entity, format!("queue '{wait}'"));
    assert!(failure.error.is_precondition_failed());
    let text = failure.error.report().to_string();
    assert!(
        text.contains(&format!("rabbitmqctl delete_queue --if-empty {wait}")),
        "{text}"
    );
    assert!(text.contains("inequivalent arg"), "{text}");

    // Still usable: a message failing once comes back through the old wait queue.
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&client, &work)
        .retry(policy.clone())
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let c = calls.clone();
    let task = consumer.spawn(
        move |_: Incoming| {
            let call = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Err(HandlerError::transient("not yet"))
                } else {
                    Ok(())
                }
            }
        },
        stop.clone(),
    );
    publish(&client, &work, b"order").await;
    let stats = consumer.stats();
    common::wait_until("handled after a retry", Duration::from_secs(10), || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(stats.retried_total(), 1);
    stop.cancel();
    task.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}
