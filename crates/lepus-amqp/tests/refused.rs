//! A delivery the engine cannot accept (a body over `max_body_size`, headers nested past
//! the decoder's depth limit) is refused on its own: rejected to the dead-letter queue,
//! counted on the consumer, and the channel and connection go on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use lepus_amqp::*;
use lepus_testkit::unique_name;

const LIMIT: usize = 1024;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Headers nested `depth` tables deep (a broker stores and delivers them as they are).
fn nested_headers(depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert("leaf".into(), text("x"));
    for _ in 0..depth {
        let mut outer = FieldTable::default();
        outer.insert("n".into(), AMQPValue::FieldTable(table));
        table = outer;
    }
    table
}

async fn message_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_messages_are_dead_lettered_and_the_connection_goes_on() {
    let broker = lepus_testkit::shared_broker().unwrap();
    // The publisher accepts any size; the consumer's connection refuses over LIMIT.
    let publisher = Connection::open(broker.url()).await.unwrap();
    let pch = publisher.open_channel().await.unwrap();
    pch.confirm_select().await.unwrap();
    let (queue, dlx, dlq) = (
        unique_name("refuse"),
        unique_name("refuse-dlx"),
        unique_name("refuse-dlq"),
    );
    pch.exchange_declare(
        &dlx,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    pch.queue_declare(
        &dlq,
        QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    pch.queue_bind(&dlq, &dlx, "", FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), text(&dlx));
    pch.queue_declare(&queue, QueueDeclareOptions::default(), args)
        .await
        .unwrap();

    let opts = ConnectionOptions::from_uri(broker.url())
        .unwrap()
        .max_body_size(LIMIT);
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(10, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(&queue, ConsumeOptions::default())
        .await
        .unwrap();

    let plain = BasicProperties::default();
    let deep = BasicProperties::default().with_headers(nested_headers(40));
    let big = vec![7u8; LIMIT * 4 + 1];
    let sends: [(&BasicProperties, &[u8]); 5] = [
        (&plain, b"first"),
        (&plain, &big),
        (&plain, b"second"),
        (&deep, b"nested"),
        (&plain, b"third"),
    ];
    for (props, body) in sends {
        let confirm = pch
            .basic_publish("", &queue, PublishOptions::default(), props, body)
            .await
            .unwrap();
        assert!(
            confirm
                .wait(Duration::from_secs(10))
                .await
                .unwrap()
                .is_ack()
        );
    }

    for want in ["first", "second", "third"] {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the next good message arrived")
            .expect("the consumer is still running")
            .unwrap();
        assert_eq!(&delivery.body()[..], want.as_bytes());
        delivery.ack().unwrap();
    }
    assert_eq!(consumer.refused(), 2);
    assert!(conn.is_open() && ch.is_open(), "{:?}", conn.close_reason());

    // Both refused messages went to the dead-letter queue, nowhere else.
    lepus_testkit::wait_until(
        "both refused messages in the dead-letter queue",
        Duration::from_secs(10),
        || async { message_count(&pch, &dlq).await >= 2 },
    )
    .await;
    assert_eq!(message_count(&pch, &dlq).await, 2);
    assert_eq!(message_count(&pch, &queue).await, 0);

    // basic.get refuses the same way: the oversized one comes to the connection that takes
    // it, the nested one to nobody; the caller gets the reason and the channel goes on.
    let get = |ch: Channel, q: String| async move { ch.basic_get(&q).await };
    let first = get(pch.clone(), dlq.clone()).await.unwrap().unwrap();
    assert_eq!(first.delivery.body().len(), big.len());
    first.delivery.ack().unwrap();
    let err = get(ch.clone(), dlq.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
    assert!(conn.is_open() && ch.is_open());
    assert_eq!(message_count(&pch, &dlq).await, 0);

    // The connection still works both ways.
    ch.confirm_select().await.unwrap();
    let confirm = ch
        .basic_publish("", &queue, PublishOptions::default(), &plain, b"after")
        .await
        .unwrap();
    assert!(
        confirm
            .wait(Duration::from_secs(10))
            .await
            .unwrap()
            .is_ack()
    );
    let after = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&after.body()[..], b"after");
    after.ack().unwrap();
    pch.queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    pch.queue_delete(&dlq, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
    publisher.close().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_return_still_reports_its_publish_returned() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let deep = BasicProperties::default().with_headers(nested_headers(40));
    let mandatory = PublishOptions { mandatory: true };
    let nowhere = unique_name("nowhere");
    // Our own encoder nests as deep as asked; the broker hands it back as it is, and our
    // decoder refuses it. The publish must not read as delivered.
    let confirm = ch
        .basic_publish("", &nowhere, mandatory, &deep, b"lost?")
        .await
        .unwrap();
    match confirm.wait(Duration::from_secs(10)).await.unwrap() {
        Confirmation::Returned(r) => {
            assert_eq!(r.reply_code, 312);
            assert_eq!(r.routing_key, nowhere);
        }
        other => panic!("expected a return, got {other:?}"),
    }
    assert!(conn.is_open() && ch.is_open(), "{:?}", conn.close_reason());
    let confirm = ch
        .basic_publish("", &nowhere, mandatory, &BasicProperties::default(), b"x")
        .await
        .unwrap();
    let got = confirm.wait(Duration::from_secs(10)).await.unwrap();
    assert!(
        matches!(got, Confirmation::Returned(ref r) if &r.body[..] == b"x"),
        "{got:?}"
    );
    conn.close().await.unwrap();
}
