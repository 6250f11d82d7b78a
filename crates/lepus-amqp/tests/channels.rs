//! Channel-level behaviour against a real broker: errors, returns, nacks, get, cancel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use lepus_amqp::*;

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn transient() -> QueueDeclareOptions {
    QueueDeclareOptions {
        auto_delete: false,
        exclusive: false,
        durable: false,
        passive: false,
    }
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) -> Confirmation {
    ch.basic_publish(
        "",
        queue,
        PublishOptions::default(),
        &BasicProperties::default(),
        body,
    )
    .await
    .unwrap()
    .wait(Duration::from_secs(10))
    .await
    .unwrap()
}

#[tokio::test]
async fn precondition_failed_closes_only_that_channel() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let a = conn.open_channel().await.unwrap();
    let b = conn.open_channel().await.unwrap();
    b.confirm_select().await.unwrap();
    let q = unique("pre");
    a.queue_declare(
        &q,
        transient(),
        args(&[("x-max-length", AMQPValue::LongInt(5))]),
    )
    .await
    .unwrap();
    let err = a
        .queue_declare(
            &q,
            transient(),
            args(&[("x-max-length", AMQPValue::LongInt(6))]),
        )
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
    assert_eq!(err.reply_code(), Some(406));
    assert!(err.to_string().contains("x-max-length"), "{err}");
    assert!(!a.is_open());
    // The channel's later calls fail with the same reason, immediately.
    let again = a.queue_purge(&q).await.unwrap_err();
    assert!(again.is_precondition_failed());
    // The other channel and the connection carry on.
    assert!(publish(&b, &q, b"still here").await.is_ack());
    let got = b.basic_get(&q).await.unwrap().unwrap();
    assert_eq!(&got.delivery.body()[..], b"still here");
    got.delivery.ack().unwrap();
    assert!(conn.is_open());
    b.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn names_over_255_bytes_are_refused_before_sending() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let long = "q".repeat(256);
    let err = ch
        .queue_declare(&long, transient(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = ch
        .basic_publish(
            "",
            &long,
            PublishOptions::default(),
            &BasicProperties::default(),
            b"",
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // Nothing was sent: the channel is fine.
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..transient()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name.starts_with("amq.gen-"), "{}", q.name);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn body_over_the_limit_is_refused_and_the_channel_survives() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let opts = ConnectionOptions::from_uri(broker.url())
        .unwrap()
        .max_body_size(1024);
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let err = ch
        .basic_publish(
            "",
            "nowhere",
            PublishOptions::default(),
            &BasicProperties::default(),
            &[0; 1025],
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    assert!(ch.is_open());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn unroutable_mandatory_message_comes_back_with_its_confirm() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let ex = unique("ex");
    ch.exchange_declare(
        &ex,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = unique("routed");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(&q, &ex, "good", FieldTable::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_message_id("m-1".into());
    let mandatory = PublishOptions { mandatory: true };
    let good = ch
        .basic_publish(&ex, "good", mandatory, &props, b"in")
        .await
        .unwrap();
    let bad = ch
        .basic_publish(&ex, "nobody", mandatory, &props, b"out")
        .await
        .unwrap();
    let not_mandatory = ch
        .basic_publish(&ex, "nobody", PublishOptions::default(), &props, b"gone")
        .await
        .unwrap();
    assert!(good.await.unwrap().is_ack());
    match bad.await.unwrap() {
        Confirmation::Returned(r) => {
            assert_eq!(r.reply_code, 312);
            assert_eq!(r.reply_text, "NO_ROUTE");
            assert_eq!(&r.body[..], b"out");
            assert_eq!(r.routing_key, "nobody");
        }
        other => panic!("expected a return, got {other:?}"),
    }
    assert!(not_mandatory.await.unwrap().is_ack());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn full_queue_with_reject_publish_nacks() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let q = unique("full");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ]),
    )
    .await
    .unwrap();
    assert!(matches!(publish(&ch, &q, b"1").await, Confirmation::Ack));
    assert!(matches!(publish(&ch, &q, b"2").await, Confirmation::Nack));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn get_reports_empty_and_counts() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let q = unique("get");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(ch.basic_get(&q).await.unwrap().is_none());
    publish(&ch, &q, b"a").await;
    publish(&ch, &q, b"b").await;
    let first = ch.basic_get(&q).await.unwrap().unwrap();
    assert_eq!(first.message_count, 1);
    assert_eq!(&first.delivery.body()[..], b"a");
    first.delivery.nack(true).unwrap();
    // Requeued at the head: "a" again, now redelivered.
    let again = ch.basic_get(&q).await.unwrap().unwrap();
    assert_eq!(&again.delivery.body()[..], b"a");
    assert!(again.delivery.redelivered());
    again.delivery.ack().unwrap();
    assert_eq!(ch.queue_purge(&q).await.unwrap(), 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn deleting_the_queue_cancels_the_consumer() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = unique("cancel");
    ch.queue_declare(&q, transient(), FieldTable::default())
        .await
        .unwrap();
    ch.basic_qos(5, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, ConsumeOptions::default())
        .await
        .unwrap();
    let other = conn.open_channel().await.unwrap();
    other
        .queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap();
    let err = end.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConsumerCancelled);
    assert!(consumer.next().await.is_none());
    // The channel itself stays open.
    assert!(ch.is_open());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn ack_after_the_channel_closed_is_a_stale_delivery_error() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let setup = conn.open_channel().await.unwrap();
    setup.confirm_select().await.unwrap();
    let q = unique("stale");
    setup
        .queue_declare(&q, transient(), FieldTable::default())
        .await
        .unwrap();
    publish(&setup, &q, b"keep me").await;

    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, ConsumeOptions::default())
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert!(!delivery.redelivered());
    ch.close().await.unwrap();
    let err = delivery.ack().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StaleDelivery);
    assert!(err.to_string().contains("requeued"), "{err}");

    // The broker requeued it; the next channel (maybe with the same id) gets it again.
    let ch2 = conn.open_channel().await.unwrap();
    let again = ch2.basic_get(&q).await.unwrap().unwrap();
    assert_eq!(&again.delivery.body()[..], b"keep me");
    assert!(again.delivery.redelivered());
    assert_ne!(
        again.delivery.channel_generation(),
        delivery.channel_generation()
    );
    again.delivery.ack().unwrap();
    ch2.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let (src, dst) = (unique("src"), unique("dst"));
    let ad = ExchangeDeclareOptions {
        auto_delete: false,
        ..Default::default()
    };
    ch.exchange_declare(&src, ExchangeKind::Topic, ad, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare(&dst, ExchangeKind::Fanout, ad, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_bind(&dst, &src, "orders.#", FieldTable::default())
        .await
        .unwrap();
    let q = unique("e2e");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(&q, &dst, "", FieldTable::default())
        .await
        .unwrap();
    let m = PublishOptions { mandatory: true };
    let p = BasicProperties::default();
    assert!(
        ch.basic_publish(&src, "orders.created", m, &p, b"x")
            .await
            .unwrap()
            .await
            .unwrap()
            .is_ack()
    );
    assert!(matches!(
        ch.basic_publish(&src, "users.created", m, &p, b"y")
            .await
            .unwrap()
            .await
            .unwrap(),
        Confirmation::Returned(_)
    ));
    ch.exchange_unbind(&dst, &src, "orders.#", FieldTable::default())
        .await
        .unwrap();
    assert!(matches!(
        ch.basic_publish(&src, "orders.created", m, &p, b"z")
            .await
            .unwrap()
            .await
            .unwrap(),
        Confirmation::Returned(_)
    ));
    ch.queue_unbind(&q, &dst, "", FieldTable::default())
        .await
        .unwrap();
    assert_eq!(ch.queue_purge(&q).await.unwrap(), 1);
    ch.exchange_delete(&src, false).await.unwrap();
    ch.exchange_delete(&dst, false).await.unwrap();
    // Passive declare of a deleted exchange: 404 on this channel.
    let err = ch
        .exchange_declare(
            &src,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ad
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn closing_the_connection_fails_waiters_and_consumers() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = unique("closing");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_qos(5, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, ConsumeOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
    let end = consumer.next().await.unwrap().unwrap_err();
    assert!(end.is_closed(), "{end:?}");
    let err = ch.queue_purge(&q).await.unwrap_err();
    assert!(err.is_closed());
    assert!(!conn.is_open());
    assert_eq!(
        conn.close_reason().unwrap().kind(),
        ErrorKind::ConnectionClosed
    );
}

#[tokio::test]
async fn wrong_password_is_an_auth_failure() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let opts = ConnectionOptions::from_uri(broker.url())
        .unwrap()
        .credentials("guest", "not-the-password");
    let err = Connection::connect(opts).await.unwrap_err();
    assert!(err.is_auth_failure(), "{err:?}");
    assert!(!err.is_recoverable());
    assert!(!format!("{err:?}{err}").contains("not-the-password"));
}

#[tokio::test]
async fn unknown_vhost_is_access_refused() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let opts = ConnectionOptions::from_uri(broker.url())
        .unwrap()
        .with_vhost("no-such-vhost");
    let err = Connection::connect(opts).await.unwrap_err();
    assert!(err.is_access_refused(), "{err:?}");
}

#[tokio::test]
async fn refused_tcp_connect_is_recoverable_io() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = Connection::connect(ConnectionOptions::new("127.0.0.1", port))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.is_recoverable());
    // The message says what we did; the OS's words come once, through source().
    assert_eq!(
        err.to_string(),
        format!("cannot connect to 127.0.0.1:{port}")
    );
    let cause = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error is the source");
    assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!err.to_string().contains(&cause.to_string()), "{err}");
}

#[tokio::test]
async fn many_channels_publish_concurrently() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let q = unique("many");
    let setup = conn.open_channel().await.unwrap();
    setup
        .queue_declare(
            &q,
            QueueDeclareOptions {
                exclusive: true,
                ..transient()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ch = conn.open_channel().await.unwrap();
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            ch.confirm_select().await.unwrap();
            let mut confirms = Vec::new();
            for i in 0..500u32 {
                confirms.push(
                    ch.basic_publish(
                        "",
                        &q,
                        PublishOptions::default(),
                        &BasicProperties::default(),
                        &i.to_be_bytes(),
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let info = setup
        .queue_declare(
            &q,
            QueueDeclareOptions {
                passive: true,
                ..transient()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.message_count, 4000);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn duration_max_as_every_limit_never_panics() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let opts = ConnectionOptions::from_uri(broker.url())
        .unwrap()
        .connection_timeout(Duration::MAX)
        .operation_timeout(Duration::MAX);
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let q = unique("max");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..transient()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let confirm = ch
        .basic_publish(
            "",
            &q,
            PublishOptions::default(),
            &BasicProperties::default(),
            b"x",
        )
        .await
        .unwrap();
    assert!(confirm.wait(Duration::MAX).await.unwrap().is_ack());
    let got = ch.basic_get(&q).await.unwrap().unwrap();
    got.delivery.ack().unwrap();
    ch.close().await.unwrap();
    conn.close().await.unwrap();

    // A refused connect with no time limit fails as I/O, it does not panic or hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = Connection::connect(
        ConnectionOptions::new("127.0.0.1", port)
            .connection_timeout(Duration::MAX)
            .operation_timeout(Duration::MAX),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
}
