//! `basic.return` is matched to exactly the publish it hands back, even when many
//! mandatory publishes share exchange, routing key and message id (or have none).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use lepus_amqp::*;
use lepus_testkit::unique_name;

/// Publishes `pattern` (true = unroutable) as mandatory messages without waiting for
/// confirms, all to the same exchange with the same routing key and message id, then
/// checks that exactly the unroutable ones come back as returned, each with its own body.
async fn check_pattern(ch: &Channel, ex: &str, pattern: &[bool], id: Option<&str>) {
    let mandatory = PublishOptions { mandatory: true };
    let mut confirms = Vec::new();
    for (i, unroutable) in pattern.iter().enumerate() {
        let mut headers = FieldTable::default();
        let route = if *unroutable { "no" } else { "yes" };
        headers.insert("route".into(), AMQPValue::LongString(route.into()));
        let mut props = BasicProperties::default().with_headers(headers);
        if let Some(id) = id {
            props = props.with_message_id(id.into());
        }
        let body = format!("m{i}");
        confirms.push(
            ch.basic_publish(ex, "same-key", mandatory, &props, body.as_bytes())
                .await
                .unwrap(),
        );
    }
    for (i, (confirm, unroutable)) in confirms.into_iter().zip(pattern).enumerate() {
        let got = confirm.wait(Duration::from_secs(10)).await.unwrap();
        match (got, unroutable) {
            (Confirmation::Ack, false) => {}
            (Confirmation::Returned(r), true) => {
                assert_eq!(r.body, format!("m{i}").as_bytes(), "publish {i}");
                assert_eq!(r.reply_code, 312);
            }
            (other, _) => panic!("publish {i} (unroutable: {unroutable}) got {other:?}"),
        }
    }
}

async fn setup(conn: &Connection) -> (Channel, String) {
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let ex = unique_name("ret-ex");
    ch.exchange_declare(
        &ex,
        ExchangeKind::Headers,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = unique_name("ret-q");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
    binding.insert("route".into(), AMQPValue::LongString("yes".into()));
    ch.queue_bind(&q, &ex, "", binding).await.unwrap();
    (ch, ex)
}

#[tokio::test]
async fn only_the_unroutable_publish_is_reported_returned() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    let (ch, ex) = setup(&conn).await;
    // A headers exchange routes on headers alone: routable and unroutable publishes have
    // the same exchange, routing key and message id (or none), so nothing in a return
    // says which publish it was but its place in the frame sequence.
    for id in [None, Some("same-id")] {
        check_pattern(&ch, &ex, &[false, false, true, false], id).await;
        check_pattern(&ch, &ex, &[true, false, true, true, false, false, true], id).await;
        let many: Vec<bool> = (0..200).map(|i| i % 3 == 1 || i % 7 == 0).collect();
        check_pattern(&ch, &ex, &many, id).await;
    }
    conn.close().await.unwrap();
}
