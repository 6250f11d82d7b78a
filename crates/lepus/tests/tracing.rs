//! One trace from a publisher through a consumer that republishes and the consumer after
//! it. Alone in its binary: tracing's per-callsite interest cache and a thread-scoped
//! subscriber do not mix with other tests running in the same process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::observability;
use lepus::{
    Client, Consumer, Incoming, Message, Outcome, Publisher, PublisherOptions, Queue, Topology,
};
use lepus_testkit::{shared_broker, unique_name};
use opentelemetry::trace::TracerProvider as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn client(url: &str, topology: Topology) -> Client {
    Client::builder()
        .endpoint(url)
        .unwrap()
        .topology(topology)
        .build()
        .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
