//! Publish, confirm, consume and ack through a real broker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use lepus_amqp::*;

fn q(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[tokio::test]
async fn publish_confirm_consume_ack() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let conn = Connection::open(broker.url()).await.unwrap();
    // Kept encoded until asked for; asked for, the broker's properties are all there.
    let product = conn.server_properties().inner().get("product").cloned();
    assert_eq!(
        product,
        Some(AMQPValue::LongString(LongString::from("RabbitMQ")))
    );
    let caps = conn.server_properties().inner().get("capabilities");
    assert!(
        matches!(caps, Some(AMQPValue::FieldTable(t)) if t.inner().contains_key("publisher_confirms")),
        "{caps:?}"
    );
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let name = q("rt");
    let info = ch
        .queue_declare(
            &name,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(info.name, name);
    for size in [0usize, 10, 200_000, 16 * 1024 * 1024] {
        let body = vec![(size % 251) as u8; size];
        let c = ch
            .basic_publish(
                "",
                &name,
                PublishOptions::default(),
                &BasicProperties::default().with_message_id(format!("m{size}").into()),
                &body,
            )
            .await
            .unwrap();
        assert!(c.await.unwrap().is_ack());
    }
    ch.basic_qos(10, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(&name, ConsumeOptions::default())
        .await
        .unwrap();
    for size in [0usize, 10, 200_000, 16 * 1024 * 1024] {
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!(d.body().len(), size);
        assert!(d.body().iter().all(|b| *b == (size % 251) as u8));
        assert_eq!(
            d.properties().message_id().as_ref().unwrap().as_str(),
            format!("m{size}")
        );
        d.ack().unwrap();
    }
    consumer.cancel().await.unwrap();
    ch.close().await.unwrap();
    conn.close().await.unwrap();
}
