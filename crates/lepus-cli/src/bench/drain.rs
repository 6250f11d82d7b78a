//! The end of a run: let the consumers take what is left, then remove the queues.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lepus::amqp::{FieldTable, QueueDeclareOptions, QueueDeleteOptions};
use lepus::{Client, Role};

use super::Ctx;

/// After the producers finish, the queue counts as drained once nothing arrived for this
/// long and it holds no ready message...
const QUIET: Duration = Duration::from_secs(1);
/// ...or this long while fewer messages were consumed than confirmed.
const QUIET_INCOMPLETE: Duration = Duration::from_secs(3);
/// Short broker operations (the ready count, deleting the queue).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Lets the consumers take what is left: returns once the queue has no ready message and
/// nothing arrived for a moment, when nothing at all arrived for `stall`, or on abort.
pub(super) async fn drain(ctx: &Ctx, client: &Client, queues: &[String], stall: Duration) {
    let started_us = ctx.now_us();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = ctx.abort.cancelled() => return,
        }
        let last = ctx
            .counters
            .last_delivery_us
            .load(Ordering::Relaxed)
            .max(started_us);
        let idle = Duration::from_micros(ctx.now_us().saturating_sub(last));
        if idle >= stall {
            eprintln!("lepus bench: nothing consumed for {stall:?}; ending the drain");
            return;
        }
        let complete = ctx.counters.consumed.load(Ordering::Relaxed)
            >= ctx.counters.confirmed.load(Ordering::Relaxed);
        let quiet = if complete { QUIET } else { QUIET_INCOMPLETE };
        if idle < quiet || !client.state(Role::Consume).is_connected() {
            continue;
        }
        let mut empty = true;
        for queue in queues {
            if ready_messages(client, queue).await != Some(0) {
                empty = false;
                break;
            }
        }
        if empty {
            return;
        }
    }
}

async fn ready_messages(client: &Client, queue: &str) -> Option<u32> {
    let op = async {
        let ch = client.channel().await.ok()?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let info = ch
            .queue_declare(queue, options, FieldTable::default())
            .await
            .ok()?;
        Some(info.message_count)
    };
    tokio::time::timeout(OPERATION_TIMEOUT, op).await.ok()?
}

/// Deletes the run's exchange, bounded; a failure is reported, not fatal.
pub(super) async fn delete_exchange(client: &Client, exchange: &str) {
    let op = async {
        let ch = client.channel().await?;
        ch.exchange_delete(exchange, false)
            .await
            .map_err(lepus::Error::from)
    };
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!(
            "lepus bench: could not delete exchange '{exchange}': {}",
            lepus::error::report(&err)
        ),
        Err(_) => eprintln!("lepus bench: could not delete exchange '{exchange}' in time"),
    }
}

/// Deletes a queue of the run, bounded; a failure is reported, not fatal.
pub(super) async fn delete_queue(client: &Client, queue: &str) {
    if !client.state(Role::Publish).is_connected() {
        eprintln!("lepus bench: queue '{queue}' left in place: no connection to the broker");
        return;
    }
    let op = async {
        let ch = client.channel().await?;
        ch.queue_delete(queue, QueueDeleteOptions::default())
            .await
            .map_err(lepus::Error::from)
    };
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => eprintln!(
            "lepus bench: could not delete queue '{queue}': {}",
            lepus::error::report(&err)
        ),
        Err(_) => eprintln!("lepus bench: could not delete queue '{queue}' in time"),
    }
}
