//! One trace from a publisher through a consumer that republishes and the consumer after
//! it. Alone in its binary: tracing's per-callsite interest cache and a thread-scoped
//! subscriber do not mix with other tests running in the same process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::observability;
use lepus::{Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue, Topology};
use lepus_testkit::{shared_broker, unique_name};
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use common::{Captured, blocking, client, wait_until};

#[tokio::test]
async fn one_trace_runs_from_the_publisher_through_a_republishing_consumer() {
    // Spans only (no export): the OpenTelemetry layer gives them ids.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = blocking(|| shared_broker().unwrap()).await;
    let (first, second) = (unique_name("hop1"), unique_name("hop2"));
    let client = client(
        broker.url(),
        Topology::new()
            .queue(Queue::new(&first).auto_delete(true))
            .queue(Queue::new(&second).auto_delete(true)),
    );
    let publisher = Publisher::new(&client, PublisherOptions::default());

    let root = tracing::info_span!("place-order");
    let origin = observability::trace_id(&root).expect("tracing is on");
    publisher
        .publish(Message::new("", &first, "order"))
        .instrument(root)
        .await
        .unwrap();

    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = CancellationToken::new();
    let hop1 = {
        let (seen, publisher, second) = (seen.clone(), publisher.clone(), second.clone());
        Consumer::builder(&client, &first).build().unwrap().spawn(
            move |msg: Incoming| {
                let (seen, publisher, second) = (seen.clone(), publisher.clone(), second.clone());
                async move {
                    let id = observability::trace_id(&tracing::Span::current()).unwrap_or_default();
                    seen.lock().unwrap().push(("hop1".into(), id));
                    // Republish from inside the handler: the trace goes on.
                    publisher
                        .publish(Message::new("", &second, msg.body().clone()))
                        .await
                        .map_err(lepus::HandlerError::transient)?;
                    Ok(())
                }
            },
            stop.clone(),
        )
    };
    let hop2 = {
        let seen = seen.clone();
        Consumer::builder(&client, &second).build().unwrap().spawn(
            move |_msg: Incoming| {
                let seen = seen.clone();
                async move {
                    let id = observability::trace_id(&tracing::Span::current()).unwrap_or_default();
                    seen.lock().unwrap().push(("hop2".into(), id));
                    Outcome::Ack
                }
            },
            stop.clone(),
        )
    };
    wait_until("both hops", Duration::from_secs(15), || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("hop1".to_string(), origin.clone()),
            ("hop2".to_string(), origin)
        ]
    );
    stop.cancel();
    hop1.await.unwrap().unwrap();
    hop2.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();
}

/// The `traceparent` header of a delivery, if any.
fn traceparent(msg: &Incoming) -> Option<String> {
    match msg.header("traceparent")? {
        lepus::amqp::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        other => panic!("traceparent is not a long string: {other:?}"),
    }
}

#[tokio::test]
async fn only_sampled_traces_travel_and_every_json_line_names_its_trace() {
    // Sample no new trace: only a trace that arrives sampled is recorded and travels.
    let provider =
        observability::tracer_provider_with("test", observability::ratio_sampler(0.0)).unwrap();
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(observability::otel_layer(provider.tracer("test")))
        .with(observability::json_log_layer(move || sink.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = blocking(|| shared_broker().unwrap()).await;
    let queue = unique_name("sampling");
    let client = client(
        broker.url(),
        Topology::new().queue(Queue::new(&queue).auto_delete(true)),
    );
    let publisher = Publisher::new(&client, PublisherOptions::default());

    // A new trace, not sampled: no header.
    publisher
        .publish(Message::new("", &queue, "unsampled").message_id_str("m-unsampled"))
        .await
        .unwrap();
    // Inside a trace that arrived sampled (from an HTTP request, say): it goes on.
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = tracing::info_span!("request");
    let carrier = std::collections::HashMap::from([("traceparent".to_string(), upstream.into())]);
    let parent = opentelemetry::propagation::TextMapPropagator::extract(
        &opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        &carrier,
    );
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&request, parent);
    publisher
        .publish(Message::new("", &queue, "sampled").message_id_str("m-sampled"))
        .instrument(request)
        .await
        .unwrap();

    // (body, traceparent header) of each delivery.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let stop = CancellationToken::new();
    let consumer = {
        let seen = seen.clone();
        Consumer::builder(&client, &queue).build().unwrap().spawn(
            move |msg: Incoming| {
                let seen = seen.clone();
                async move {
                    let body = String::from_utf8_lossy(msg.body()).into_owned();
                    tracing::info!(body = %body, "handled \"quoted\"\n");
                    seen.lock().unwrap().push((body, traceparent(&msg)));
                    Outcome::Ack
                }
            },
            stop.clone(),
        )
    };
    wait_until("both messages", Duration::from_secs(15), || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    stop.cancel();
    consumer.await.unwrap().unwrap();
    client.close(Duration::from_secs(5)).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], ("unsampled".to_string(), None));
    assert_eq!(seen[1].0, "sampled");
    let header = seen[1].1.clone().expect("a sampled trace travels");
    assert!(
        header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-01"),
        "{header}"
    );

    // Every line is one JSON object; the handler's lines name the handle span, its
    // fields and its trace: the upstream trace for the sampled message, and ids of its
    // own (for log correlation) for the unsampled one.
    let text = logs.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let handled = |body: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["body"] == body)
            .unwrap_or_else(|| panic!("no line for {body}: {text}"))
            .clone()
    };
    let sampled = handled("sampled");
    assert_eq!(sampled["fields"]["message"], "handled \"quoted\"\n");
    assert_eq!(sampled["level"], "INFO");
    assert_eq!(sampled["span"]["name"], "handle");
    assert_eq!(sampled["span"]["messaging.source.name"], queue.as_str());
    assert_eq!(sampled["span"]["messaging.message.id"], "m-sampled");
    assert_eq!(sampled["span"]["attempt"], 1);
    assert!(sampled["span"].get("otel.kind").is_none(), "{sampled}");
    assert_eq!(sampled["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(sampled["span_id"].as_str().unwrap().len(), 16);
    let unsampled = handled("unsampled");
    assert_eq!(unsampled["span"]["messaging.message.id"], "m-unsampled");
    let own = unsampled["trace_id"].as_str().unwrap();
    assert_eq!(own.len(), 32);
    assert_ne!(own, "4bf92f3577b34da6a3ce929d0e0e4736");
}
