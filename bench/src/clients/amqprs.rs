//! amqprs 2: no per-message confirm future, so confirms are counted by a channel callback
//! (`publish_ack`/`publish_nack`) that keeps the same sliding window: publishing stops
//! while `confirm` messages are unconfirmed and resumes when the oldest is confirmed.
//! Deliveries come through `basic_consume_rx`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicPublishArguments,
    BasicQosArguments, Channel, ConfirmSelectArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use percent_encoding::percent_decode_str;
use tokio::sync::Notify;

use super::{Phase, Workload, check_delivery};

const NAME: &str = "amqprs";

/// amqprs reads URIs only with its `urispec` feature, which does not decode `%2f` in the
/// vhost; the address is taken apart here instead.
pub fn open_arguments(url: &str) -> Result<OpenConnectionArguments> {
    let parsed = url::Url::parse(url).with_context(|| format!("amqprs: bad URL {url:?}"))?;
    if parsed.scheme() != "amqp" {
        bail!("amqprs: only amqp:// URLs are supported by this bench");
    }
    let decode = |s: &str| -> Result<String> { Ok(percent_decode_str(s).decode_utf8()?.into()) };
    let host = parsed.host_str().unwrap_or("localhost");
    let port = parsed.port().unwrap_or(5672);
    let user = match parsed.username() {
        "" => "guest".to_owned(),
        u => decode(u)?,
    };
    let password = decode(parsed.password().unwrap_or("guest"))?;
    let vhost = match parsed.path() {
        "" | "/" => "/".to_owned(),
        path => decode(path.trim_start_matches('/'))?,
    };
    let mut args = OpenConnectionArguments::new(host, port, &user, &password);
    args.virtual_host(&vhost);
    if let Some((_, secs)) = parsed.query_pairs().find(|(k, _)| k == "heartbeat") {
        args.heartbeat(secs.parse().context("amqprs: bad heartbeat in the URL")?);
    }
    Ok(args)
}

/// The sliding window of one publishing channel, fed by the channel callback.
#[derive(Default)]
struct Window {
    state: Mutex<WindowState>,
    changed: Notify,
}

#[derive(Default)]
struct WindowState {
    /// Delivery tag of the oldest unconfirmed message (tags start at 1).
    front: u64,
    /// One entry per unconfirmed message from `front` on: confirmed out of order yet?
    confirmed: VecDeque<bool>,
    acked: u64,
    failure: Option<String>,
}

impl Window {
    fn new() -> Arc<Window> {
        let window = Window::default();
        window.lock().front = 1;
        Arc::new(window)
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the next publish; called before sending it, so that its confirm always
    /// finds it.
    fn published(&self) {
        self.lock().confirmed.push_back(false);
    }

    /// Waits until fewer than `limit` messages are unconfirmed.
    async fn wait_below(&self, limit: usize) -> Result<()> {
        loop {
            {
                let st = self.lock();
                if let Some(failure) = &st.failure {
                    bail!("{NAME}: {failure}");
                }
                if st.confirmed.len() < limit {
                    return Ok(());
                }
            }
            // `notify_one` leaves a permit when nobody waits, so no wake-up is lost
            // between the check above and this wait.
            self.changed.notified().await;
        }
    }

    fn confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let mut st = self.lock();
        let end = st.front + st.confirmed.len() as u64;
        if !ack {
            st.failure = Some(format!("the broker nacked delivery tag {tag}"));
        } else if tag >= end {
            st.failure = Some(format!(
                "confirm for delivery tag {tag}, but only {} were published",
                end - 1
            ));
        } else if multiple {
            while st.front <= tag && st.confirmed.pop_front().is_some() {
                st.front += 1;
                st.acked += 1;
            }
        } else if tag < st.front {
            st.failure = Some(format!("delivery tag {tag} confirmed twice"));
        } else {
            let index = (tag - st.front) as usize;
            match st.confirmed.get_mut(index) {
                Some(done) if !*done => *done = true,
                _ => st.failure = Some(format!("delivery tag {tag} confirmed twice")),
            }
        }
        while st.confirmed.front() == Some(&true) {
            st.confirmed.pop_front();
            st.front += 1;
            st.acked += 1;
        }
        drop(st);
        self.changed.notify_one();
    }
}

struct Confirms(Arc<Window>);

#[async_trait]
impl ChannelCallback for Confirms {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.0.lock().failure = Some(format!("the broker closed the channel: {close}"));
        self.0.changed.notify_one();
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.0.confirm(ack.delivery_tag(), ack.mutiple(), true);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.0.confirm(nack.delivery_tag(), nack.multiple(), false);
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        self.0.lock().failure = Some(format!("a message was returned: {ret}"));
        self.0.changed.notify_one();
    }
}

pub async fn publish(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::open(&open_arguments(url)?)
        .await
        .context("amqprs: connecting the publisher")?;
    let ch = conn.open_channel(None).await?;
    let window = Window::new();
    ch.register_callback(Confirms(Arc::clone(&window))).await?;
    ch.confirm_select(ConfirmSelectArguments::default()).await?;
    let properties = BasicProperties::default().with_delivery_mode(2).finish();
    let args = BasicPublishArguments::new("", queue);
    let mut body = workload.body();

    phase.start().await;
    for seq in 0..workload.count {
        window.wait_below(workload.confirm).await?;
        Workload::stamp(&mut body, seq);
        window.published();
        // amqprs takes the properties, body and arguments by value.
        ch.basic_publish(properties.clone(), body.clone(), args.clone())
            .await
            .with_context(|| format!("amqprs: publishing message {seq} to {queue}"))?;
    }
    window.wait_below(1).await?;
    phase.done().await;

    let acked = window.lock().acked;
    ch.close().await?;
    conn.close().await?;
    Ok(acked)
}

pub async fn consume(url: &str, queue: &str, workload: &Workload, phase: &Phase) -> Result<u64> {
    let conn = Connection::open(&open_arguments(url)?)
        .await
        .context("amqprs: connecting the consumer")?;
    let ch = conn.open_channel(None).await?;
    ch.basic_qos(BasicQosArguments::new(0, workload.prefetch, false))
        .await?;
    let mut received = 0u64;

    phase.start().await;
    let args = BasicConsumeArguments::new(queue, &format!("amqprs-bench-{queue}"))
        .manual_ack(true)
        .finish();
    let (tag, mut rx) = ch.basic_consume_rx(args).await?;
    while received < workload.count {
        let Some(message) = rx.recv().await else {
            bail!("{NAME}: the consumer of {queue} ended after {received} messages");
        };
        let (Some(deliver), Some(body)) = (message.deliver, message.content) else {
            bail!("{NAME}: a delivery on {queue} without its method or body");
        };
        check_delivery(
            NAME,
            queue,
            workload,
            received,
            &body,
            deliver.redelivered(),
        )?;
        received += 1;
        if workload.ack_now(received) {
            ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), true))
                .await?;
        }
    }
    phase.done().await;

    ch.basic_cancel(BasicCancelArguments::new(&tag)).await?;
    ch.close().await?;
    conn.close().await?;
    Ok(received)
}
