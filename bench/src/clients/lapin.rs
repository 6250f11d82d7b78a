//! lapin 4 on the tokio runtime (`Connection::connect` with the `tokio` feature uses the
//! current tokio runtime for its tasks; its I/O loop runs on a thread of its own, as lapin
//! always does). Per-message confirm futures, deliveries as a stream.

use std::collections::VecDeque;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, PublisherConfirm};

use super::{Phase, Workload, check_delivery};

const NAME: &str = "lapin";

pub async fn publish(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("lapin: connecting the publisher")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let exchange = ShortString::from("");
    let routing_key = ShortString::from(queue);
    let mut body = workload.body();
    let mut window: VecDeque<PublisherConfirm> = VecDeque::with_capacity(workload.confirm);
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
            .basic_publish(
                exchange.clone(),
                routing_key.clone(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await
            .with_context(|| format!("lapin: publishing message {seq} to {queue}"))?;
        window.push_back(confirm);
    }
    for confirm in window {
        acked += settle(confirm.await?, queue)?;
    }
    phase.done().await;

    ch.close(200, ShortString::from("done")).await?;
    conn.close(200, ShortString::from("done")).await?;
    Ok(acked)
}

fn settle(confirmation: Confirmation, queue: &str) -> Result<u64> {
    match confirmation {
        Confirmation::Ack(None) => Ok(1),
        other => bail!("{NAME}: the broker did not ack a message to {queue}: {other:?}"),
    }
}

pub async fn consume(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("lapin: connecting the consumer")?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(workload.prefetch, BasicQosOptions::default())
        .await?;
    let tag = ShortString::from(format!("lapin-bench-{queue}"));
    let mut received = 0u64;

    phase.start().await;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue),
            tag.clone(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
            &delivery.data,
            delivery.redelivered,
        )?;
        received += 1;
        if workload.ack_now(received) {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    phase.done().await;

    ch.basic_cancel(tag, BasicCancelOptions::default()).await?;
    ch.close(200, ShortString::from("done")).await?;
    conn.close(200, ShortString::from("done")).await?;
    Ok(received)
}
