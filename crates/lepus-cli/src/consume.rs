//! `lepus consume`: tail a queue, printing each message before settling it.
//!
//! A message is acknowledged only after it was printed, so a `lepus consume | head` that
//! loses its stdout leaves the unprinted message in the queue. Ctrl-C cancels the
//! consumer and closes cleanly; the broker requeues whatever was not settled.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use lepus::{Role, Topology};

use crate::connect::{self, parse_secs, wait_for};
use crate::render;
use crate::subscription::{Next, Subscription};

/// What happens to a message once printed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMode {
    /// Acknowledge it: it leaves the queue.
    Ack,
    /// Leave it in the queue: held unacknowledged, requeued when the command stops. The
    /// broker sends no more than the prefetch window of unacknowledged messages, so the
    /// window is raised to --count (up to 65,535), and the command stops when the window
    /// is full.
    Requeue,
    /// Reject it without requeue: the broker dead-letters or drops it.
    Reject,
}

/// Options of `lepus consume`.
#[derive(Args, Debug)]
pub(crate) struct ConsumeArgs {
    /// The queue to consume from (it must exist).
    #[arg(long, short = 'q')]
    queue: String,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Unacknowledged messages the broker may send ahead.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
    /// What to do with each message after printing it.
    #[arg(long, value_enum, default_value_t = AckMode::Ack)]
    ack_mode: AckMode,
    /// One JSON object per message and line (body as text, or body_base64 when binary).
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the broker (at start, and after each connection loss).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
}

fn print(args: &ConsumeArgs, n: u64, delivery: &lepus::amqp::Delivery) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", render::delivery_json(delivery))?;
    } else {
        writeln!(out, "{}", render::delivery_text(n, delivery))?;
    }
    out.flush()
}

fn settle(mode: AckMode, delivery: &lepus::amqp::Delivery) -> lepus::amqp::Result<()> {
    match mode {
        AckMode::Ack => delivery.ack(),
        AckMode::Reject => delivery.reject(false),
        // Held until the consumer closes: the broker then requeues it.
        AckMode::Requeue => Ok(()),
    }
}

/// The prefetch window to ask for: in requeue mode every message shown stays
/// unacknowledged, so a window smaller than --count would stop deliveries for good.
fn window(args: &ConsumeArgs) -> u16 {
    match (args.ack_mode, args.count) {
        (AckMode::Requeue, Some(count)) => {
            args.prefetch.max(u16::try_from(count).unwrap_or(u16::MAX))
        }
        _ => args.prefetch,
    }
}

/// Runs `lepus consume`.
pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let client = connect::global().client("lepus consume", Topology::new(), true)?;
    let window = window(&args);
    let mut sub = Subscription::new(client.clone(), &args.queue, window, args.timeout);
    let started = match wait_for(&client, Role::Consume, args.timeout, connect::global()).await {
        Ok(()) => sub.start().await,
        Err(err) => Err(err),
    };
    if let Err(err) = started {
        let _ = client.close(Duration::from_secs(2)).await;
        return Err(err);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut seen = 0u64;
    let mut held = Vec::new();
    let mut failure = None;
    while args.count.is_none_or(|count| seen < count) {
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            next = sub.next(Duration::from_secs(3600)) => next,
        };
        let delivery = match next {
            Ok(Next::Delivery(d)) => d,
            Ok(Next::Idle) => continue,
            Err(err) => {
                failure = Some(err);
                break;
            }
        };
        seen += 1;
        if print(&args, seen, &delivery).is_err() {
            // Nobody reads our output any more: give the message back and stop.
            let _ = delivery.nack(true);
            break;
        }
        if let Err(err) = settle(args.ack_mode, &delivery) {
            eprintln!(
                "lepus: could not settle message #{seen}: {} (the broker will redeliver it)",
                lepus::error::report(&err)
            );
        }
        if args.ack_mode == AckMode::Requeue {
            held.push(delivery);
            if held.len() >= usize::from(window) && args.count.is_none_or(|count| seen < count) {
                eprintln!(
                    "lepus: {} messages are held unacknowledged, the whole prefetch window \
                     ({window}); in requeue mode no more can arrive, stopping",
                    held.len()
                );
                break;
            }
        }
    }
    if let Some(last) = held.last() {
        let _ = last.nack_multiple(true);
    }
    drop(held);
    sub.close().await;
    let _ = client.close(Duration::from_secs(5)).await;
    match failure {
        Some(err) => Err(err),
        None => Ok(ExitCode::SUCCESS),
    }
}
