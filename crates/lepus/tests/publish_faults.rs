//! The publisher when the broker refuses one message: a closed channel fails that message
//! alone, at once, with the broker's reply; nacks and returns that arrived before a lost
//! connection stay nacks and returns; nacks are retried within the publish timeout; and
//! "no timeout" (`Duration::MAX`) is a valid timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lepus::amqp::{Connection, ConsumeOptions};
use lepus::topology::Overflow;
use lepus::{ErrorKind, Message, Publisher, PublisherOptions, Queue, Topology};
use lepus_testkit::{Broker, shared_broker, unique_name};

use common::{blocking, client};

/// Counts, per message id, the copies in `queue` (acking as it goes) until it stays empty.
async fn count_ids(url: &str, queue: &str) -> HashMap<String, usize> {
    let conn = Connection::open(url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1000, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(queue, ConsumeOptions::default())
        .await
        .unwrap();
    let mut ids = HashMap::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
        let d = d.unwrap();
        let id = d.properties().message_id().as_ref().unwrap().to_string();
        *ids.entry(id).or_insert(0) += 1;
        d.ack().unwrap();
    }
    conn.close().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_missing_exchange_fails_alone_and_at_once() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("behind-a-bad-one");
    let missing = unique_name("no-such-exchange");
    let topology = Topology::new().queue(Queue::new(&q).durable(false).auto_delete(false));
    let client = client(broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::from_secs(10)),
    );
    let good = |i: usize| Message::new("", &q, "good").message_id_str(&format!("g-{i}"));
    // Three rounds, so the refused publish lands in the middle of in-flight batches.
    let mut confirms = Vec::new();
    let mut bad = Vec::new();
    for round in 0..3 {
        for i in 0..200 {
            confirms.push(publisher.send(good(round * 1000 + i)).await.unwrap());
        }
        let sent = Instant::now();
        let confirm = publisher
            .send(Message::new(&missing, "x", "bad").message_id_str(&format!("bad-{round}")))
            .await
            .unwrap();
        bad.push((sent, confirm));
        for i in 200..400 {
            confirms.push(publisher.send(good(round * 1000 + i)).await.unwrap());
        }
    }
    for (sent, confirm) in bad {
        let err = confirm.await.unwrap_err();
        let took = sent.elapsed();
        println!("refused publish failed after {took:?}: {}", err.error);
        assert!(err.error.is_not_found(), "{:?}", err.error);
        assert!(
            err.error.to_string().contains("NOT_FOUND - no exchange"),
            "{}",
            err.error
        );
        assert_eq!(err.message.exchange(), missing);
        // Well under the publish timeout (measured: a few milliseconds).
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let good_ids: Vec<String> = confirms.iter().map(|c| c.message_id().to_owned()).collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let counts = count_ids(broker.url(), &q).await;
    let dups: usize = good_ids
        .iter()
        .map(|id| counts.get(id).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    println!(
        "{} good messages, {} distinct in the queue, {dups} duplicates",
        good_ids.len(),
        counts.len()
    );
    for id in &good_ids {
        assert!(counts.get(id).is_some_and(|n| *n >= 1), "{id} missing");
    }
    assert_eq!(counts.len(), good_ids.len(), "only good messages arrive");
    // Those queued behind the last refused publish were discarded unread by the broker
    // and went out once more: exactly one copy each. (Unconfirmed ones before a refused
    // publish are in doubt, since RabbitMQ drops a closing channel's confirms, so they
    // go out again and may be duplicated.)
    for i in 2200..2400 {
        let id = format!("g-{i}");
        assert_eq!(counts.get(&id), Some(&1), "{id}");
    }
    let stats = publisher.stats();
    assert_eq!(stats.snapshot().failed, 3);
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn duration_max_means_never_not_a_panic() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("never");
    let topology = Topology::new().queue(Queue::new(&q).durable(false).auto_delete(true));
    let client = lepus::Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .topology(topology)
        .pool_acquire_timeout(Duration::MAX)
        .build()
        .unwrap();
    client.wait_connected(Duration::MAX).await.unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::MAX),
    );
    publisher.publish(Message::new("", &q, "x")).await.unwrap();
    let ch = client.channel().await.unwrap();
    assert!(ch.is_open());
    drop(ch);
    publisher.flush(Duration::MAX).await.unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_nack_is_retried_until_the_queue_takes_it() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("full-for-a-while");
    let topology = Topology::new().queue(
        Queue::new(&q)
            .durable(false)
            .auto_delete(true)
            .max_length(1)
            .overflow(Overflow::RejectPublish),
    );
    let client = client(broker.url(), topology);
    let publisher = Publisher::new(&client, PublisherOptions::default());
    publisher
        .publish(Message::new("", &q, "first"))
        .await
        .unwrap();
    let second = publisher
        .send(Message::new("", &q, "second"))
        .await
        .unwrap();
    let stats = publisher.stats();
    common::wait_until("two nacks", Duration::from_secs(10), || {
        stats.snapshot().nacked >= 2
    })
    .await;
    // Room in the queue: the next republish is taken.
    let ch = client.channel().await.unwrap();
    assert_eq!(ch.queue_purge(&q).await.unwrap(), 1);
    drop(ch);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_nack_fails_as_nacked_at_the_publish_timeout() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("always-full");
    let topology = Topology::new().queue(
        Queue::new(&q)
            .durable(false)
            .auto_delete(true)
            .max_length(1)
            .overflow(Overflow::RejectPublish),
    );
    let client = client(broker.url(), topology);
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::from_millis(1500)),
    );
    publisher
        .publish(Message::new("", &q, "first"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = publisher
        .publish(Message::new("", &q, "second"))
        .await
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Nacked, "{}", err.error);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(publisher.stats().snapshot().nacked >= 3);
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// Suspends (or resumes) the process of `queue` on `broker`: its confirms wait meanwhile.
fn queue_process(broker: &Broker, queue: &str, call: &str) {
    let expr = format!(
        "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
         sys:{call}(amqqueue:get_pid(Q))."
    );
    broker.rabbitmqctl(&["eval", &expr]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_or_return_before_a_lost_connection_is_not_retried() {
    let broker = std::sync::Arc::new(blocking(|| Broker::start().unwrap()).await);
    let (slow, full, later) = (
        unique_name("slow"),
        unique_name("full"),
        unique_name("later"),
    );
    let topology = Topology::new()
        .queue(Queue::new(&slow).durable(false))
        .queue(
            Queue::new(&full)
                .durable(false)
                .max_length(1)
                .overflow(Overflow::RejectPublish),
        );
    let client = client(&broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default().nack_retries(0));
    publisher
        .publish(Message::new("", &full, "fills it"))
        .await
        .unwrap();
    // The first confirm waits on a suspended queue, so the nack and the return behind it
    // are in, but not yet taken, when the connection goes.
    let b = broker.clone();
    let s = slow.clone();
    blocking(move || queue_process(&b, &s, "suspend")).await;
    let first = publisher
        .send(Message::new("", &slow, "slow"))
        .await
        .unwrap();
    let nacked = publisher
        .send(Message::new("", &full, "nacked"))
        .await
        .unwrap();
    let returned = publisher
        .send(Message::new("", &later, "returned").mandatory(true))
        .await
        .unwrap();
    let stats = publisher.stats();
    // Wait until the broker has answered all but the first (its channel counts what it
    // has not confirmed yet); the answers precede the forced close on the socket.
    let b = broker.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = b.clone();
        let out = blocking(move || {
            b.rabbitmqctl(&["-q", "list_channels", "messages_unconfirmed"])
                .unwrap()
        })
        .await;
        let unconfirmed: u64 = out
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum();
        if unconfirmed == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "unconfirmed: {out}");
    }
    let ch = client.channel().await.unwrap();
    // Now make both of them succeed if they were published again.
    assert_eq!(ch.queue_purge(&full).await.unwrap(), 1);
    ch.queue_declare(&later, Default::default(), Default::default())
        .await
        .unwrap();
    drop(ch);
    let b = broker.clone();
    blocking(move || b.close_all_connections().unwrap()).await;
    let err = tokio::time::timeout(Duration::from_secs(10), nacked)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Nacked, "{}", err.error);
    let err = tokio::time::timeout(Duration::from_secs(10), returned)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Unroutable, "{}", err.error);
    assert_eq!(stats.snapshot().nacked, 1);
    let b = broker.clone();
    blocking(move || queue_process(&b, &slow, "resume")).await;
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_brokers_max_message_size_fails_as_too_large() {
    let broker = blocking(|| {
        Broker::builder()
            .config("max_message_size = 4096")
            .start()
            .unwrap()
    })
    .await;
    let q = unique_name("sized");
    let topology = Topology::new().queue(Queue::new(&q).durable(false));
    let client = client(&broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default());
    let small = |i: usize| Message::new("", &q, "small").message_id_str(&format!("s-{i}"));
    let mut confirms = Vec::new();
    for i in 0..100 {
        confirms.push(publisher.send(small(i)).await.unwrap());
    }
    let sent = Instant::now();
    let big = publisher
        .send(Message::new("", &q, vec![b'x'; 5000]).message_id_str("big"))
        .await
        .unwrap();
    for i in 100..200 {
        confirms.push(publisher.send(small(i)).await.unwrap());
    }
    let err = big.await.unwrap_err();
    println!(
        "oversized publish failed after {:?}: {}",
        sent.elapsed(),
        err.error
    );
    assert!(err.error.is_too_large(), "{:?}", err.error);
    assert_eq!(err.error.kind(), ErrorKind::TooLarge);
    assert!(
        err.error.to_string().contains("message size 5000"),
        "{}",
        err.error
    );
    assert_eq!(err.message.body().len(), 5000);
    assert!(sent.elapsed() < Duration::from_secs(5));
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let counts = count_ids(&broker.url(), &q).await;
    assert_eq!(counts.len(), 200, "every small one, and only those");
    client.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_names_no_exchange_is_found_by_probing() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("probed");
    let topology = Topology::new().queue(Queue::new(&q).durable(false).auto_delete(false));
    let client = client(broker.url(), topology);
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().publish_timeout(Duration::from_secs(10)),
    );
    let good = |i: usize| Message::new("", &q, "good").message_id_str(&format!("g-{i}"));
    let mut confirms = Vec::new();
    for i in 0..100 {
        confirms.push(publisher.send(good(i)).await.unwrap());
    }
    // A user_id other than the login's: 406, and the text names neither exchange nor size.
    let mut impostor = Message::new("", &q, "bad").message_id_str("impostor");
    let props = std::mem::take(impostor.properties_mut()).with_user_id("someone-else".into());
    *impostor.properties_mut() = props;
    let sent = Instant::now();
    let bad = publisher.send(impostor).await.unwrap();
    for i in 100..200 {
        confirms.push(publisher.send(good(i)).await.unwrap());
    }
    let err = bad.await.unwrap_err();
    println!(
        "probed refusal failed after {:?}: {}",
        sent.elapsed(),
        err.error
    );
    assert!(err.error.is_precondition_failed(), "{:?}", err.error);
    assert!(err.error.to_string().contains("user_id"), "{}", err.error);
    assert_eq!(err.message.message_id(), Some("impostor"));
    assert!(sent.elapsed() < Duration::from_secs(5));
    for confirm in confirms {
        confirm.await.unwrap();
    }
    let counts = count_ids(broker.url(), &q).await;
    assert_eq!(counts.len(), 200, "every good one, and only those");
    assert_eq!(publisher.stats().snapshot().failed, 1);
    client.close(Duration::from_secs(5)).await.unwrap();
}
