//! lepus-amqp, our engine: per-message confirm futures, deliveries as a stream.

use std::collections::VecDeque;

use anyhow::{Context, Result, bail};
use lepus_amqp::{
    BasicProperties, Confirmation, Connection, ConsumeOptions, PublishConfirm, PublishOptions,
};

use super::{Phase, Workload, check_delivery};

const NAME: &str = "lepus-amqp";

pub async fn publish(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::open(url)
        .await
        .context("lepus-amqp: connecting the publisher")?;
    let ch = conn.open_channel().await?;
    ch.confirm_select().await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut body = workload.body();
    let mut window: VecDeque<PublishConfirm> = VecDeque::with_capacity(workload.confirm);
    let mut acked = 0u64;

    phase.start().await;
    for seq in 0..workload.count {
        if window.len() >= workload.confirm
            && let Some(oldest) = window.pop_front()
        {
            acked += settle(oldest.await?, queue)?;
        }
        Workload::stamp(&mut body, seq);
        let confirm = ch
            .basic_publish("", queue, PublishOptions::default(), &properties, &body)
            .await
            .with_context(|| format!("lepus-amqp: publishing message {seq} to {queue}"))?;
        window.push_back(confirm);
    }
    for confirm in window {
        acked += settle(confirm.await?, queue)?;
    }
    phase.done().await;

    ch.close().await?;
    conn.close().await?;
    Ok(acked)
}

fn settle(confirmation: Confirmation, queue: &str) -> Result<u64> {
    match confirmation {
        Confirmation::Ack => Ok(1),
        other => bail!("{NAME}: the broker did not ack a message to {queue}: {other:?}"),
    }
}

pub async fn consume(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::open(url)
        .await
        .context("lepus-amqp: connecting the consumer")?;
    let ch = conn.open_channel().await?;
    ch.basic_qos(workload.prefetch, false).await?;
    let mut received = 0u64;

    phase.start().await;
    let mut consumer = ch.basic_consume(queue, ConsumeOptions::default()).await?;
    while received < workload.count {
        let Some(delivery) = consumer.next().await else {
            bail!("{NAME}: the consumer of {queue} ended after {received} messages");
        };
        let delivery = delivery?;
        check_delivery(
            NAME,
            queue,
            workload,
            received,
            delivery.body(),
            delivery.redelivered(),
        )?;
        received += 1;
        if workload.ack_now(received) {
            delivery.ack_multiple()?;
        }
    }
    phase.done().await;

    consumer.cancel().await?;
    ch.close().await?;
    conn.close().await?;
    Ok(received)
}
