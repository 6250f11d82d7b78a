//! `Telemetry::init`: the global subscriber lepus installs. Alone in its binary, since a
//! process has one global subscriber.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use lepus::observability::{self, LogFormat, Telemetry};
use lepus::{
    Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue, Topology,
};
use lepus_testkit::{shared_broker, unique_name};
use tokio_util::sync::CancellationToken;

use common::Captured;

#[tokio::test]
async fn init_installs_json_lines_and_the_sampling_asked_for() {
    let logs = Captured::default();
    let sink = logs.clone();
    let guard = Telemetry::new("telemetry-test")
        .format(LogFormat::Json)
        .sample_ratio(1.0)
        .writer(move || sink.clone())
        .init()
        .unwrap();
    // One global subscriber per process: a second setup is refused, and says why.
    let again = observability::init_telemetry("again", LogFormat::Json).unwrap_err();
    assert!(again.to_string().contains("tracing subscriber"), "{again}");

    let broker = tokio::task::spawn_blocking(|| shared_broker().unwrap())
        .await
        .unwrap();
    let queue = unique_name("telemetry");
    let client = Client::builder()
        .endpoint(broker.url())
        .unwrap()
        .topology(Topology::new().queue(Queue::new(&queue).auto_delete(true)))
        .build()
        .unwrap();
    let publisher = Publisher::new(&client, PublisherOptions::default());
    publisher
        .publish(Message::new("", &queue, "hello"))
        .await
        .unwrap();

    // Every trace is sampled, so the message carries its trace, and the handler's log
    // line names the same trace.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let consumer = Consumer::builder(&client, &queue).build().unwrap().spawn(
        move |msg: Incoming| {
            let tx = tx.clone();
            async move {
                tracing::info!("telemetry test handled a message");
                let header = match msg.header("traceparent") {
                    Some(lepus::amqp::AMQPValue::LongString(s)) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    other => panic!("no traceparent: {other:?}"),
                };
                let _ = tx.send(header);
                Outcome::Ack
            }
        },
        stop.clone(),
    );
    let header = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("the message arrives")
        .unwrap();
    stop.cancel();
    consumer.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();

    let trace = header.split('-').nth(1).unwrap().to_string();
    let text = logs.text();
    let line = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["fields"]["message"] == "telemetry test handled a message")
        .unwrap_or_else(|| panic!("no line from the handler: {text}"));
    assert_eq!(line["trace_id"], trace.as_str(), "{line}");
    assert_eq!(line["span"]["name"], "handle");
    drop(guard);
}
