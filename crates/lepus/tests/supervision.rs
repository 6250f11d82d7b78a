//! Supervision against a real node: backoff and limits on every reconnect path, every
//! endpoint tried before giving up (with each one's failure named), and pooled channels
//! never handed out in the state a previous user left them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::{Duration, Instant};

use lepus::amqp::{ConsumeOptions, ExchangeKind, FieldTable, QueueDeclareOptions};
use lepus::{Client, ConnectionState, Exchange, Queue, ReconnectPolicy, Role, Topology};
use lepus_testkit::{shared_broker, unique_name};

use common::blocking;

/// A topology the broker closes the connection over (503, unknown exchange type).
fn fatal_topology() -> Topology {
    Topology::new().exchange(Exchange::new(
        unique_name("exotic"),
        ExchangeKind::Custom("x-no-such-type".into()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_that_kills_the_connection_backs_off_and_hits_the_attempt_limit() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let policy = ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(300))
        .max_delay(Duration::from_millis(300));
    // Without a limit: attempts are spaced by the policy, not back to back.
    let unlimited = Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .reconnect(policy.clone())
        .topology(fatal_topology())
        .build()
        .unwrap();
    // With one: it ends in `Failed`, naming the broker's reason.
    let limited = Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .reconnect(policy.max_attempts(4))
        .topology(fatal_topology())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = limited
        .wait_connected(Duration::from_secs(20))
        .await
        .unwrap_err();
    println!("limited: Failed after {:?}: {err}", started.elapsed());
    assert!(
        matches!(limited.state(Role::Publish), ConnectionState::Failed(_)),
        "{:?}",
        limited.state(Role::Publish)
    );
    assert!(
        err.report()
            .to_string()
            .contains("gave up after 4 attempts"),
        "{err}"
    );
    assert!(
        err.report().to_string().contains("unknown exchange type"),
        "{err}"
    );
    assert_eq!(limited.connect_attempts(Role::Publish), 4);
    let window = Duration::from_millis(1500);
    tokio::time::sleep_until((started + window).into()).await;
    let attempts = unlimited.connect_attempts(Role::Publish);
    println!(
        "unlimited: {attempts} attempts in {window:?} (delays uniform in 0..300 ms), mean gap {:?}",
        window / u32::try_from(attempts.max(1)).unwrap()
    );
    // Back to back, a loopback connect-and-declare takes milliseconds: hundreds of
    // attempts. With the backoff, about one per 150 ms.
    assert!((2..40).contains(&attempts), "{attempts} attempts");
    assert!(!unlimited.state(Role::Publish).is_connected());
    unlimited.close(Duration::from_secs(5)).await.unwrap();
    limited.close(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_on_some_endpoints_does_not_stop_the_client() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let good = broker.url().to_owned();
    let bad = |user: &str| good.replacen("guest:guest@", &format!("{user}@"), 1);
    // Endpoints are tried in random order; with three bad ones of four, a client that
    // stops at the first refusal fails these three runs together in 63 of 64 cases.
    for _ in 0..3 {
        let client = Client::builder()
            .endpoint(&bad("guest:wrong"))
            .unwrap()
            .endpoint(&bad("nobody:nothing"))
            .unwrap()
            .endpoint(&bad("guest:also-wrong"))
            .unwrap()
            .endpoint(&good)
            .unwrap()
            .reconnect(ReconnectPolicy::default().max_attempts(1))
            .build()
            .unwrap();
        client
            .wait_connected(Duration::from_secs(20))
            .await
            .unwrap();
        client.close(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test]
async fn every_endpoint_refused_fails_naming_each_and_how() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let url = broker.url();
    let first = url.replacen("guest:guest@", "guest:wrong-one@", 1);
    let second = url
        .replacen("guest:guest@", "nobody:wrong-two@", 1)
        .replacen("127.0.0.1", "localhost", 1);
    let client = Client::builder()
        .endpoint(&first)
        .unwrap()
        .endpoint(&second)
        .unwrap()
        .build()
        .unwrap();
    let err = client
        .wait_connected(Duration::from_secs(20))
        .await
        .unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(err.is_auth_failure(), "{err:?}");
    let ConnectionState::Failed(reason) = client.state(Role::Publish) else {
        panic!("{:?}", client.state(Role::Publish))
    };
    for shown in [
        lepus::amqp::redact_uri(&first),
        lepus::amqp::redact_uri(&second),
    ] {
        assert!(reason.to_string().contains(&shown), "{shown} in {reason}");
    }
    assert_eq!(
        reason.to_string().matches("ACCESS_REFUSED").count(),
        2,
        "{reason}"
    );
    assert!(
        !text.contains("wrong-one") && !text.contains("wrong-two"),
        "{text}"
    );
    assert!(
        client
            .last_error(Role::Publish)
            .is_some_and(|e| e.to_string() == reason.to_string())
    );
    // One attempt: both endpoints refused for good.
    assert_eq!(client.connect_attempts(Role::Publish), 1);
}

#[tokio::test]
async fn a_returned_pooled_channel_is_not_handed_out_dirty() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let q = unique_name("pooled");
    let client = Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .pool_size(1)
        .topology(Topology::new().queue(Queue::new(&q).durable(false).auto_delete(false)))
        .build()
        .unwrap();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let ch = client.channel().await.unwrap();
    ch.basic_publish("", &q, Default::default(), &Default::default(), b"one")
        .await
        .unwrap()
        .await
        .unwrap();
    ch.basic_publish("", &q, Default::default(), &Default::default(), b"two")
        .await
        .unwrap()
        .await
        .unwrap();
    // Leave it in confirm mode, with a consumer, prefetch and an unacked get.
    ch.confirm_select().await.unwrap();
    let got = loop {
        if let Some(got) = ch.basic_get(&q).await.unwrap() {
            break got;
        }
    };
    ch.basic_qos(1, false).await.unwrap();
    let _consumer = ch
        .basic_consume(&q, ConsumeOptions::default())
        .await
        .unwrap();
    drop(got);
    drop(ch);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    // The next user's channel is a clean one, and what the old one held is released:
    // no consumer left on the queue, both messages ready again.
    let clean = client.channel().await.unwrap();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = clean
            .queue_declare(&q, passive, FieldTable::default())
            .await
            .unwrap();
        if info.consumer_count == 0 && info.message_count == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{last:?}");
        last = Some((info.consumer_count, info.message_count));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clean.queue_delete(&q, Default::default()).await.unwrap();
    drop(clean);
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// A TCP proxy to `target` that cuts every connection `after` it was accepted.
async fn short_lived_proxy(target: String, after: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tokio::time::timeout(
                    after,
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                )
                .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_soon_after_connecting_is_a_failed_attempt() {
    let broker = blocking(|| shared_broker().unwrap()).await;
    let url = broker.url().to_owned();
    let authority = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let port = short_lived_proxy(authority.to_owned(), Duration::from_secs(1)).await;
    let proxied = url.replacen(authority, &format!("127.0.0.1:{port}"), 1);
    let client = Client::builder()
        .endpoint(&proxied)
        .unwrap()
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(100))
                .max_attempts(3),
        )
        .build()
        .unwrap();
    let mut states = client.watch_state(Role::Publish);
    let started = Instant::now();
    // Each connection lives 1 s, well short of `healthy_after` (5 s): three of them
    // use up the attempts.
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let ConnectionState::Failed(e) = &*states.borrow_and_update() {
                return e.clone();
            }
            states.changed().await.unwrap();
        }
    })
    .await
    .expect("the client gives up");
    println!("Failed after {:?}: {failed}", started.elapsed());
    assert!(
        failed
            .report()
            .to_string()
            .contains("gave up after 3 attempts"),
        "{failed}"
    );
    assert!(
        failed
            .report()
            .to_string()
            .contains("connection lost after"),
        "{failed}"
    );
    assert_eq!(client.connects(Role::Publish), 3);
    assert_eq!(client.connect_attempts(Role::Publish), 3);
}

/// A durable classic queue whose home node is down is still routed to, and the broker
/// confirms publishes it then drops. Declaring it fails ("home node ... is down or
/// inaccessible"), so a client with the queue in its topology must not count itself
/// connected: its publishes wait until the node is back, then land in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_node_is_down_keeps_the_client_from_connecting() {
    let cluster = std::sync::Arc::new(blocking(|| lepus_testkit::Cluster::start(2).unwrap()).await);
    let queue = unique_name("homeless");
    let topology = Topology::new().queue(Queue::new(&queue));
    // Declared on node 0: its home.
    let admin = common::client(&cluster.urls()[0], topology.clone());
    admin.wait_connected(Duration::from_secs(20)).await.unwrap();
    admin.close(Duration::from_secs(5)).await.unwrap();
    let c = cluster.clone();
    blocking(move || c.node(0).unwrap().stop().unwrap()).await;

    // Node 1 only.
    let client = common::client(&cluster.urls()[1], topology);
    let mut states = client.watch_state(Role::Publish);
    let publisher = lepus::Publisher::new(
        &client,
        lepus::PublisherOptions::default().publish_timeout(Duration::from_secs(60)),
    );
    let p = publisher.clone();
    let body = b"kept".to_vec();
    let q = queue.clone();
    let published =
        tokio::spawn(async move { p.publish(lepus::Message::new("", q.as_str(), body)).await });
    // Several refused attempts, none of them Connected, the last error naming the queue.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = states.borrow_and_update().clone();
        assert!(
            !state.is_connected(),
            "connected while the queue's node is down"
        );
        if let ConnectionState::Reconnecting {
            attempt,
            last_error,
        } = &state
        {
            seen.push(last_error.to_string());
            if *attempt >= 3 {
                assert!(last_error.is_queue_unavailable(), "{last_error}");
                assert!(
                    last_error.report().to_string().contains(&queue),
                    "{last_error}"
                );
                break;
            }
        }
        tokio::time::timeout_at(deadline, states.changed())
            .await
            .unwrap_or_else(|_| panic!("no third attempt; states: {seen:?}"))
            .unwrap();
    }
    assert!(!published.is_finished(), "the publish did not wait");

    let c = cluster.clone();
    blocking(move || c.node(0).unwrap().restart().unwrap()).await;
    client
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), published)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let channel = client.channel().await.unwrap();
    let got = channel
        .basic_get(&queue)
        .await
        .unwrap()
        .expect("the message is in the queue");
    assert_eq!(&got.delivery.body()[..], b"kept");
    drop(channel);
    publisher.close(Duration::from_secs(5)).await.unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}
