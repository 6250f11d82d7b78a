//! Publish orders and handle them with retries and a dead-letter queue.
//!
//! ```text
//! scripts/broker start
//! cargo run -p lepus --example quickstart -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! Order 3 always fails: it is retried in process, then after 1 s and 5 s, then lands in
//! `quickstart.orders.dlq` with headers saying why. The others are acked.

use std::time::Duration;

use lepus::{
    CancellationToken, Client, Consumer, Exchange, HandlerError, Incoming, Message, Publisher,
    PublisherOptions, Queue, RetryPolicy, Topology,
};

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let retry = RetryPolicy::default()
        .immediate(1)
        .delays([Duration::from_secs(1), Duration::from_secs(5)]);
    let topology = Topology::new()
        .exchange(Exchange::topic("quickstart"))
        .queue(Queue::new("quickstart.orders"))
        .bind("quickstart.orders", "quickstart", "order.*")
        .merge(retry.topology("quickstart.orders"));
    let client = Client::builder()
        .endpoint(&url)?
        .name("quickstart")
        .topology(topology)
        .build()?;
    client.wait_connected(Duration::from_secs(30)).await?;

    let publisher = Publisher::new(&client, PublisherOptions::default().mandatory(true));
    for id in 1..=5 {
        publisher
            .publish(Message::json("quickstart", "order.created", &Order { id })?)
            .await?;
        println!("published order {id} (confirmed)");
    }

    let shutdown = CancellationToken::new();
    let consumer = Consumer::builder(&client, "quickstart.orders")
        .name("quickstart")
        .retry(retry)
        .build()?;
    let stats = consumer.stats();
    let running = consumer.spawn(
        |msg: Incoming| async move {
            let order: Order = msg.json()?;
            if order.id == 3 {
                println!("order 3 failed (attempt {})", msg.attempt());
                return Err(HandlerError::transient("inventory service unavailable"));
            }
            println!("order {} handled", order.id);
            Ok(())
        },
        shutdown.clone(),
    );
    // Wait until every order is acked or dead-lettered, then stop gracefully.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().acked < 4 || stats.snapshot().dead_lettered < 1 {
        if tokio::time::Instant::now() > deadline {
            eprintln!("timed out waiting for the orders");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await??;
    let done = stats.snapshot();
    println!(
        "acked {}, dead-lettered {} (see quickstart.orders.dlq)",
        done.acked, done.dead_lettered
    );
    client.close(Duration::from_secs(5)).await?;
    Ok(())
}
