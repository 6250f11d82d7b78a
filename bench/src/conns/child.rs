//! The child process of `--connections`: one client, one shape, N connections.
//!
//! It reads its resident memory, opens N connections (with 10 channels each, and with one
//! of them publishing 10 msg/s, as the shape says), lets them settle, reads its memory
//! again and measures its CPU over an idle window. It prints one JSON line. With
//! `--restart-watch` it then prints `READY`, watches every connection through a broker
//! restart (the parent restarts the broker) and prints a second JSON line with the time
//! each connection was lost and was back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;

use super::{Shape, rss_kb};
use crate::clients::Client;
use crate::cpu::{monotonic_secs, process_cpu};

/// Connections being opened at once.
const PARALLEL_OPENS: usize = 32;
/// Channels per connection in the `channels` and `publishing` shapes.
const CHANNELS: usize = 10;
/// A routing key nothing is bound to: the broker confirms and drops what is sent there.
const NOWHERE: &str = "lepus-bench-connections-nowhere";
const SETUP: Duration = Duration::from_secs(60);

/// What the child was asked to do.
pub struct Order {
    pub client: Client,
    pub shape: Shape,
    pub connections: usize,
    pub url: String,
    pub settle: Duration,
    pub window: Duration,
    pub restart_watch: Option<Duration>,
}

/// One open connection of any client, and what keeps it alive (the channels are held
/// open, and only the publishing shape uses them).
#[allow(dead_code)]
pub enum Held {
    LepusAmqp(lepus_amqp::Connection, Vec<lepus_amqp::Channel>),
    Lepus(
        ::lepus::Client,
        Vec<lepus_amqp::Channel>,
        Option<::lepus::Publisher>,
    ),
    Amqprs(
        amqprs::connection::Connection,
        Vec<amqprs::channel::Channel>,
    ),
    Lapin(lapin::Connection, Vec<lapin::Channel>),
}

pub async fn run(order: Order) -> Result<()> {
    let rss_before = rss_kb()?;
    let t0 = std::time::Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let mut held = Vec::with_capacity(order.connections);
    let mut opening = FuturesUnordered::new();
    let mut next = 0usize;
    while held.len() < order.connections {
        while next < order.connections && opening.len() < PARALLEL_OPENS {
            opening.push(open(order.client, order.shape, &order.url, next));
            next += 1;
        }
        match opening.next().await {
            Some(h) => held.push(h.with_context(|| format!("opening connection {}", held.len()))?),
            None => bail!("nothing left to open"),
        }
    }
    drop(opening);
    let setup_s = t0.elapsed().as_secs_f64();
    let publishers = if order.shape == Shape::Publishing {
        start_publishing(&held, &published)
    } else {
        Vec::new()
    };
    tokio::time::sleep(order.settle).await;
    let rss_after = rss_kb()?;
    let (cpu0, w0, p0) = (
        process_cpu()?,
        std::time::Instant::now(),
        published.load(Ordering::Relaxed),
    );
    tokio::time::sleep(order.window).await;
    let (cpu, wall) = (process_cpu()?.saturating_sub(cpu0), w0.elapsed());
    let sent = published.load(Ordering::Relaxed) - p0;
    let n = order.connections as f64;
    let line = json!({
        "client": order.client.name(),
        "shape": order.shape.name(),
        "connections": order.connections,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_per_connection_kb": (rss_after as f64 - rss_before as f64) / n,
        "cpu_pct": cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        "window_s": wall.as_secs_f64(),
        "setup_s": setup_s,
        "published_msgs_per_s": sent as f64 / wall.as_secs_f64(),
    });
    println!("{line}");
    if let Some(deadline) = order.restart_watch {
        for task in &publishers {
            task.abort();
        }
        println!("READY");
        let watched = super::restart::watch(&held, deadline).await?;
        println!("{watched}");
    }
    for task in publishers {
        task.abort();
    }
    close_all(held).await;
    Ok(())
}

async fn open(client: Client, shape: Shape, url: &str, index: usize) -> Result<Held> {
    let channels = if shape == Shape::Bare { 0 } else { CHANNELS };
    Ok(match client {
        Client::LepusAmqp => {
            let conn = lepus_amqp::Connection::open(url).await?;
            let mut chs = Vec::new();
            for _ in 0..channels {
                chs.push(conn.open_channel().await?);
            }
            Held::LepusAmqp(conn, chs)
        }
        Client::Lepus => {
            let c = ::lepus::Client::builder()
                .endpoint(url)?
                .name(format!("bench-{index}"))
                .build()?;
            c.wait_connected(SETUP).await?;
            let mut chs = Vec::new();
            if channels > 0 {
                let live = c.connection(::lepus::Role::Publish, SETUP).await?;
                for _ in 0..channels {
                    chs.push(live.connection.open_channel().await?);
                }
            }
            let publisher = (shape == Shape::Publishing)
                .then(|| ::lepus::Publisher::new(&c, ::lepus::PublisherOptions::default()));
            Held::Lepus(c, chs, publisher)
        }
        Client::Amqprs => {
            let conn =
                amqprs::connection::Connection::open(&crate::clients::amqprs::open_arguments(url)?)
                    .await?;
            let mut chs = Vec::new();
            for _ in 0..channels {
                chs.push(conn.open_channel(None).await?);
            }
            Held::Amqprs(conn, chs)
        }
        Client::Lapin => {
            let props = lapin::ConnectionProperties::default().enable_auto_recover();
            let conn = lapin::Connection::connect(url, props).await?;
            let mut chs = Vec::new();
            for _ in 0..channels {
                chs.push(conn.create_channel().await?);
            }
            Held::Lapin(conn, chs)
        }
    })
}

/// One task per connection that publishes 10 msg/s on its first channel (confirm mode),
/// each waiting for its confirm.
fn start_publishing(held: &[Held], published: &Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (i, h) in held.iter().enumerate() {
        let published = Arc::clone(published);
        // Spread the connections over the 100 ms period.
        let phase =
            Duration::from_micros((i as u64 * 100_000 / held.len().max(1) as u64) % 100_000);
        let work: std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>> = match h {
            Held::LepusAmqp(_, chs) => {
                let Some(ch) = chs.first().cloned() else {
                    continue;
                };
                Box::pin(async move {
                    use lepus_amqp::{BasicProperties, PublishOptions};
                    ch.confirm_select().await?;
                    let props = BasicProperties::default().with_delivery_mode(2);
                    tick(phase, &published, || async {
                        ch.basic_publish("", NOWHERE, PublishOptions::default(), &props, b"x")
                            .await?
                            .await?;
                        Ok(())
                    })
                    .await
                })
            }
            Held::Lepus(_, _, Some(publisher)) => {
                let publisher = publisher.clone();
                Box::pin(async move {
                    tick(phase, &published, || async {
                        publisher
                            .publish(::lepus::Message::new("", NOWHERE, b"x".to_vec()))
                            .await
                            .map_err(|e| anyhow!("{}", ::lepus::error::report(&e)))
                    })
                    .await
                })
            }
            Held::Lepus(_, _, None) => continue,
            Held::Amqprs(_, chs) => {
                let Some(ch) = chs.first().cloned() else {
                    continue;
                };
                Box::pin(async move {
                    use amqprs::channel::{BasicPublishArguments, ConfirmSelectArguments};
                    // No confirm future in amqprs: confirm mode, with the library's default
                    // callback taking the confirms, and no waiting for them.
                    ch.register_callback(amqprs::callbacks::DefaultChannelCallback)
                        .await?;
                    ch.confirm_select(ConfirmSelectArguments::default()).await?;
                    let props = amqprs::BasicProperties::default()
                        .with_delivery_mode(2)
                        .finish();
                    let args = BasicPublishArguments::new("", NOWHERE);
                    tick(phase, &published, || async {
                        ch.basic_publish(props.clone(), b"x".to_vec(), args.clone())
                            .await?;
                        Ok(())
                    })
                    .await
                })
            }
            Held::Lapin(_, chs) => {
                let Some(ch) = chs.first().cloned() else {
                    continue;
                };
                Box::pin(async move {
                    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
                    ch.confirm_select(ConfirmSelectOptions::default()).await?;
                    let props = lapin::BasicProperties::default().with_delivery_mode(2);
                    tick(phase, &published, || async {
                        ch.basic_publish(
                            "".into(),
                            NOWHERE.into(),
                            BasicPublishOptions::default(),
                            b"x",
                            props.clone(),
                        )
                        .await?
                        .await?;
                        Ok(())
                    })
                    .await
                })
            }
        };
        tasks.push(tokio::spawn(async move {
            if let Err(err) = work.await {
                eprintln!("a publishing connection failed: {err:#}");
            }
        }));
    }
    tasks
}

/// Calls `send` every 100 ms (after `phase`), counting what it sent.
async fn tick<F, Fut>(phase: Duration, published: &AtomicU64, send: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    tokio::time::sleep(phase).await;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        send().await?;
        published.fetch_add(1, Ordering::Relaxed);
    }
}

async fn close_all(held: Vec<Held>) {
    let mut closing = FuturesUnordered::new();
    for h in held {
        closing.push(async move {
            match h {
                Held::LepusAmqp(c, _) => drop(c.close().await),
                Held::Lepus(c, _, p) => {
                    if let Some(p) = p {
                        let _ = p.close(Duration::from_secs(5)).await;
                    }
                    drop(c.close(Duration::from_secs(5)).await);
                }
                Held::Amqprs(c, _) => drop(c.close().await),
                Held::Lapin(c, _) => drop(c.close(200, "done".into()).await),
            }
        });
        if closing.len() >= PARALLEL_OPENS {
            closing.next().await;
        }
    }
    while closing.next().await.is_some() {}
}

/// When a connection's state changed, on CLOCK_MONOTONIC (shared with the parent).
pub fn now() -> f64 {
    monotonic_secs()
}

/// The lepus `Client`s, lapin connections etc. the restart watcher looks at.
pub use self::Held as Connection;
