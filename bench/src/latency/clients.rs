//! One publisher and one consumer per client for the latency arm.
//!
//! Every consumer checks each delivery like the throughput arm does (size, order, not
//! redelivered) and records `now - intended send time`. Every publisher sends on a paced
//! thread and hands each confirm to a task that records `confirm time - intended send
//! time` (amqprs has no confirm future: its channel callback does that). Acks are
//! `multiple` every `multi_ack` deliveries, with prefetch `prefetch`, as in the throughput
//! arm; at a rate below the broker's maximum neither limit is reached.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lepus_amqp::{FieldTable, QueueDeclareOptions};
use tokio::sync::{Notify, mpsc};

use super::{Clock, Measured, Plan, histogram, pace, read_stamp, record, stamp};
use crate::clients::{Client, check_delivery};

/// How long connecting, subscribing and closing may take.
const SETUP: Duration = Duration::from_secs(30);

/// Runs `client`'s consumer, waits until the broker counts it, then runs its paced
/// publisher; returns the three distributions.
pub async fn run(
    client: Client,
    url: Arc<str>,
    queue: String,
    plan: Plan,
    clock: Clock,
    admin: &lepus_amqp::Channel,
) -> Result<Measured> {
    let consumer = {
        let (url, queue) = (Arc::clone(&url), queue.clone());
        tokio::spawn(async move {
            let recorder = Recorder::new(client.name(), queue.clone(), plan, clock)?;
            match client {
                Client::LepusAmqp => consume_lepus_amqp(&url, recorder).await,
                Client::Lepus => consume_lepus(&url, recorder).await,
                Client::Amqprs => consume_amqprs(&url, recorder).await,
                Client::Lapin => consume_lapin(&url, recorder).await,
            }
        })
    };
    wait_subscribed(admin, &queue, &consumer).await?;
    let handle = tokio::runtime::Handle::current();
    let publisher = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            match client {
                Client::LepusAmqp => publish_lepus_amqp(&url, &queue, plan, clock).await,
                Client::Lepus => publish_lepus(&url, &queue, plan, clock).await,
                Client::Amqprs => publish_amqprs(&url, &queue, plan, clock).await,
                Client::Lapin => publish_lapin(&url, &queue, plan, clock).await,
            }
        })
    });
    let (confirm, send_lag) = publisher.await.context("the publisher panicked")??;
    let e2e = consumer.await.context("the consumer panicked")??;
    Ok(Measured {
        e2e,
        confirm,
        send_lag,
    })
}

/// Waits until the broker shows one consumer on `queue` (or the consumer task ends).
async fn wait_subscribed<T>(
    admin: &lepus_amqp::Channel,
    queue: &str,
    consumer: &tokio::task::JoinHandle<T>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SETUP;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let info = admin
            .queue_declare(queue, passive, FieldTable::default())
            .await?;
        if info.consumer_count >= 1 {
            return Ok(());
        }
        if consumer.is_finished() {
            bail!("the consumer of {queue} ended before subscribing");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the consumer of {queue} did not subscribe within {SETUP:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The consumer's side: checks each delivery and records its end-to-end latency.
struct Recorder {
    name: &'static str,
    queue: String,
    plan: Plan,
    clock: Clock,
    received: u64,
    e2e: Histogram<u64>,
}

impl Recorder {
    fn new(name: &'static str, queue: String, plan: Plan, clock: Clock) -> Result<Recorder> {
        Ok(Recorder {
            name,
            queue,
            plan,
            clock,
            received: 0,
            e2e: histogram()?,
        })
    }

    /// Checks and records one delivery; returns whether to ack (with `multiple`) now.
    fn delivered(&mut self, body: &[u8], redelivered: bool) -> Result<bool> {
        let now = self.clock.now_ns();
        check_delivery(
            self.name,
            &self.queue,
            &self.plan.workload,
            self.received,
            body,
            redelivered,
        )?;
        let (seq, intended) =
            read_stamp(body).ok_or_else(|| anyhow!("{}: a body without a stamp", self.name))?;
        if self.plan.recorded(seq) {
            record(&mut self.e2e, now.saturating_sub(intended));
        }
        self.received += 1;
        Ok(self.plan.workload.ack_now(self.received))
    }

    fn done(&self) -> bool {
        self.received >= self.plan.count
    }
}

/// The publisher's side: the send schedule, the body and the send-lag histogram.
struct Sender {
    plan: Plan,
    clock: Clock,
    start_ns: u64,
    body: Vec<u8>,
    lag: Histogram<u64>,
}

impl Sender {
    fn new(plan: Plan, clock: Clock) -> Result<Sender> {
        Ok(Sender {
            plan,
            clock,
            // A little ahead, so that the first message is not already late.
            start_ns: clock.now_ns() + 1_000_000,
            body: plan.workload.body(),
            lag: histogram()?,
        })
    }

    /// Sleeps until message `seq` is due, stamps it, and returns its intended time.
    fn next(&mut self, seq: u64) -> u64 {
        let intended =
            self.start_ns + u64::try_from(self.plan.intended(seq).as_nanos()).unwrap_or(u64::MAX);
        let late = pace(self.clock.at(intended));
        if self.plan.recorded(seq) {
            record(
                &mut self.lag,
                u64::try_from(late.as_nanos()).unwrap_or(u64::MAX),
            );
        }
        stamp(&mut self.body, seq, intended);
        intended
    }
}

/// A message in flight: its sequence number, intended send time and confirm future.
type InFlight<F> = (u64, u64, F);

/// Awaits confirms in publish order and records each one's latency; `settle` turns a
/// confirm's output into success or failure.
fn confirm_task<F, S>(
    plan: Plan,
    clock: Clock,
    settle: S,
) -> (
    mpsc::UnboundedSender<InFlight<F>>,
    tokio::task::JoinHandle<Result<Histogram<u64>>>,
)
where
    F: Future + Send + 'static,
    F::Output: Send,
    S: Fn(F::Output) -> Result<()> + Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<InFlight<F>>();
    let task = tokio::spawn(async move {
        let mut h = histogram()?;
        let mut settled = 0u64;
        while let Some((seq, intended, confirm)) = rx.recv().await {
            settle(confirm.await)?;
            if plan.recorded(seq) {
                record(&mut h, clock.now_ns().saturating_sub(intended));
            }
            settled += 1;
        }
        if settled != plan.count {
            bail!("{settled} of {} messages were confirmed", plan.count);
        }
        Ok(h)
    });
    (tx, task)
}

fn sent<F>(tx: &mpsc::UnboundedSender<InFlight<F>>, item: InFlight<F>) -> Result<()> {
    tx.send(item)
        .map_err(|_| anyhow!("the confirm task ended early"))
}

// lepus-amqp -------------------------------------------------------------------------

async fn publish_lepus_amqp(
    url: &str,
    queue: &str,
    plan: Plan,
    clock: Clock,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    use lepus_amqp::{BasicProperties, Confirmation, Connection, PublishOptions};
    let conn = Connection::open(url).await?;
    let ch = conn.open_channel().await?;
    ch.confirm_select().await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let (tx, task) = confirm_task(
        plan,
        clock,
        |c: lepus_amqp::Result<Confirmation>| match c? {
            Confirmation::Ack => Ok(()),
            other => bail!("lepus-amqp: not acked: {other:?}"),
        },
    );
    let mut sender = Sender::new(plan, clock)?;
    for seq in 0..plan.count {
        let intended = sender.next(seq);
        let confirm = ch
            .basic_publish(
                "",
                queue,
                PublishOptions::default(),
                &properties,
                &sender.body,
            )
            .await?;
        sent(&tx, (seq, intended, confirm))?;
    }
    drop(tx);
    let confirms = task.await??;
    ch.close().await?;
    conn.close().await?;
    Ok((confirms, sender.lag))
}

async fn consume_lepus_amqp(url: &str, mut rec: Recorder) -> Result<Histogram<u64>> {
    use lepus_amqp::{Connection, ConsumeOptions};
    let conn = Connection::open(url).await?;
    let ch = conn.open_channel().await?;
    ch.basic_qos(rec.plan.workload.prefetch, false).await?;
    let mut consumer = ch
        .basic_consume(&rec.queue, ConsumeOptions::default())
        .await?;
    while !rec.done() {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow!("lepus-amqp: the consumer ended early"))??;
        if rec.delivered(delivery.body(), delivery.redelivered())? {
            delivery.ack_multiple()?;
        }
    }
    consumer.cancel().await?;
    ch.close().await?;
    conn.close().await?;
    Ok(rec.e2e)
}

// lepus ------------------------------------------------------------------------------

async fn lepus_client(url: &str) -> Result<::lepus::Client> {
    let client = ::lepus::Client::builder().endpoint(url)?.build()?;
    client.wait_connected(SETUP).await?;
    Ok(client)
}

async fn publish_lepus(
    url: &str,
    queue: &str,
    plan: Plan,
    clock: Clock,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    use ::lepus::{Message, Publisher, PublisherOptions};
    let client = lepus_client(url).await?;
    let window = plan.workload.confirm;
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default().window(window).buffer(window),
    );
    let (tx, task) = confirm_task(plan, clock, |r: ::lepus::PublishResult| {
        r.map_err(|e| anyhow!("lepus: not acked: {}", ::lepus::error::report(&e)))
    });
    let mut sender = Sender::new(plan, clock)?;
    for seq in 0..plan.count {
        let intended = sender.next(seq);
        let confirm = publisher
            .send(Message::new("", queue, sender.body.clone()))
            .await
            .map_err(|e| anyhow!("lepus: publishing {seq}: {}", ::lepus::error::report(&e)))?;
        sent(&tx, (seq, intended, confirm))?;
    }
    drop(tx);
    let confirms = task.await??;
    publisher.close(SETUP).await?;
    client.close(SETUP).await?;
    Ok((confirms, sender.lag))
}

async fn consume_lepus(url: &str, rec: Recorder) -> Result<Histogram<u64>> {
    use ::lepus::{CancellationToken, Consumer, Incoming, Outcome, RetryPolicy};
    let client = lepus_client(url).await?;
    let workload = rec.plan.workload;
    let consumer = Consumer::builder(&client, &rec.queue)
        .prefetch(workload.prefetch)
        .ack_batch(usize::try_from(workload.multi_ack).unwrap_or(usize::MAX))
        .concurrency(1)
        .retry(RetryPolicy::none())
        .declare_retry_queues(false)
        .build()?;
    let stop = CancellationToken::new();
    let shared: Arc<Mutex<(Recorder, Option<anyhow::Error>)>> = Arc::new(Mutex::new((rec, None)));
    let handler = {
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        move |msg: Incoming| {
            if let Ok(mut guard) = shared.lock() {
                let (rec, failure) = &mut *guard;
                if let Err(err) = rec.delivered(msg.body(), msg.redelivered()) {
                    failure.get_or_insert(err);
                    stop.cancel();
                }
                if rec.done() {
                    stop.cancel();
                }
            }
            std::future::ready(Outcome::Ack)
        }
    };
    consumer.run(handler, stop).await?;
    client.close(SETUP).await?;
    let mut guard = shared
        .lock()
        .map_err(|_| anyhow!("lepus: the recorder's lock was poisoned"))?;
    if let Some(err) = guard.1.take() {
        return Err(err);
    }
    if !guard.0.done() {
        bail!(
            "lepus: the consumer stopped after {} messages",
            guard.0.received
        );
    }
    Ok(guard.0.e2e.clone())
}

// amqprs -----------------------------------------------------------------------------

/// amqprs' confirms, by delivery tag, with each message's sequence number and intended
/// send time: the channel callback records their latency.
struct AmqprsConfirms {
    plan: Plan,
    clock: Clock,
    state: Mutex<AmqprsState>,
    changed: Notify,
}

struct AmqprsState {
    /// Delivery tag of `pending`'s front (tags start at 1).
    front: u64,
    /// `(seq, intended)` per message from `front` on; `None` once confirmed.
    pending: VecDeque<Option<(u64, u64)>>,
    acked: u64,
    failure: Option<String>,
    h: Histogram<u64>,
}

impl AmqprsConfirms {
    fn lock(&self) -> std::sync::MutexGuard<'_, AmqprsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let now = self.clock.now_ns();
        let mut st = self.lock();
        let st = &mut *st;
        if !ack {
            st.failure = Some(format!("delivery tag {tag} was nacked"));
        }
        let first = if multiple { st.front } else { tag };
        for t in first..=tag {
            let slot = t
                .checked_sub(st.front)
                .and_then(|i| st.pending.get_mut(usize::try_from(i).ok()?));
            if let Some(slot) = slot
                && let Some((seq, intended)) = slot.take()
            {
                st.acked += 1;
                if self.plan.recorded(seq) {
                    record(&mut st.h, now.saturating_sub(intended));
                }
            }
        }
        while st.pending.front() == Some(&None) {
            st.pending.pop_front();
            st.front += 1;
        }
        self.changed.notify_one();
    }
}

struct AmqprsCallback(Arc<AmqprsConfirms>);

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for AmqprsCallback {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        close: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.0.lock().failure = Some(format!("channel closed: {close}"));
        self.0.changed.notify_one();
        Ok(())
    }
    async fn cancel(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _: &amqprs::channel::Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, ack: amqprs::Ack) {
        self.0.confirm(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, nack: amqprs::Nack) {
        self.0.confirm(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        ret: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
        self.0.lock().failure = Some(format!("returned: {ret}"));
        self.0.changed.notify_one();
    }
}

async fn publish_amqprs(
    url: &str,
    queue: &str,
    plan: Plan,
    clock: Clock,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    use amqprs::channel::{BasicPublishArguments, ConfirmSelectArguments};
    use amqprs::connection::Connection;
    let conn = Connection::open(&crate::clients::amqprs::open_arguments(url)?).await?;
    let ch = conn.open_channel(None).await?;
    let confirms = Arc::new(AmqprsConfirms {
        plan,
        clock,
        state: Mutex::new(AmqprsState {
            front: 1,
            pending: VecDeque::new(),
            acked: 0,
            failure: None,
            h: histogram()?,
        }),
        changed: Notify::new(),
    });
    ch.register_callback(AmqprsCallback(Arc::clone(&confirms)))
        .await?;
    ch.confirm_select(ConfirmSelectArguments::default()).await?;
    let properties = amqprs::BasicProperties::default()
        .with_delivery_mode(2)
        .finish();
    let args = BasicPublishArguments::new("", queue);
    let mut sender = Sender::new(plan, clock)?;
    for seq in 0..plan.count {
        let intended = sender.next(seq);
        confirms.lock().pending.push_back(Some((seq, intended)));
        ch.basic_publish(properties.clone(), sender.body.clone(), args.clone())
            .await?;
    }
    let deadline = tokio::time::Instant::now() + SETUP;
    loop {
        {
            let st = confirms.lock();
            if let Some(failure) = &st.failure {
                bail!("amqprs: {failure}");
            }
            if st.acked >= plan.count {
                break;
            }
        }
        tokio::time::timeout_at(deadline, confirms.changed.notified())
            .await
            .context("amqprs: waiting for the last confirms")?;
    }
    let h = confirms.lock().h.clone();
    ch.close().await?;
    conn.close().await?;
    Ok((h, sender.lag))
}

async fn consume_amqprs(url: &str, mut rec: Recorder) -> Result<Histogram<u64>> {
    use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};
    use amqprs::connection::Connection;
    let conn = Connection::open(&crate::clients::amqprs::open_arguments(url)?).await?;
    let ch = conn.open_channel(None).await?;
    ch.basic_qos(BasicQosArguments::new(0, rec.plan.workload.prefetch, false))
        .await?;
    let args = BasicConsumeArguments::new(&rec.queue, "amqprs-latency")
        .manual_ack(true)
        .finish();
    let (_tag, mut rx) = ch.basic_consume_rx(args).await?;
    while !rec.done() {
        let message = rx
            .recv()
            .await
            .ok_or_else(|| anyhow!("amqprs: the consumer ended early"))?;
        let (Some(deliver), Some(body)) = (message.deliver, message.content) else {
            bail!("amqprs: a delivery without its method or body");
        };
        if rec.delivered(&body, deliver.redelivered())? {
            ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), true))
                .await?;
        }
    }
    ch.close().await?;
    conn.close().await?;
    Ok(rec.e2e)
}

// lapin ------------------------------------------------------------------------------

async fn publish_lapin(
    url: &str,
    queue: &str,
    plan: Plan,
    clock: Clock,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::ShortString;
    use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let (exchange, routing_key) = (ShortString::from(""), ShortString::from(queue));
    let (tx, task) = confirm_task(plan, clock, |c: lapin::Result<Confirmation>| match c? {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("lapin: not acked: {other:?}"),
    });
    let mut sender = Sender::new(plan, clock)?;
    for seq in 0..plan.count {
        let intended = sender.next(seq);
        let confirm = ch
            .basic_publish(
                exchange.clone(),
                routing_key.clone(),
                BasicPublishOptions::default(),
                &sender.body,
                properties.clone(),
            )
            .await?;
        sent(&tx, (seq, intended, confirm))?;
    }
    drop(tx);
    let confirms = task.await??;
    ch.close(200, ShortString::from("done")).await?;
    conn.close(200, ShortString::from("done")).await?;
    Ok((confirms, sender.lag))
}

async fn consume_lapin(url: &str, mut rec: Recorder) -> Result<Histogram<u64>> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{FieldTable, ShortString};
    use lapin::{Connection, ConnectionProperties};
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(rec.plan.workload.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(rec.queue.as_str()),
            ShortString::from("lapin-latency"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while !rec.done() {
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow!("lapin: the consumer ended early"))??;
        if rec.delivered(&delivery.data, delivery.redelivered)? {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    ch.close(200, ShortString::from("done")).await?;
    conn.close(200, ShortString::from("done")).await?;
    Ok(rec.e2e)
}
