//! The channel handle: opening and closing, publishing, consuming and settling, each
//! bounded by a deadline. The topology methods are in `topology`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel};
use amq_protocol::types::ShortString;

use super::consumer::{Consumer, consumer_pair};
use super::options::{ConsumeOptions, PublishOptions};
use super::{self as chan, ChannelShared, Expect, Reply, name};
use crate::connection::Lifeline;
use crate::error::{Error, Result};
use crate::message::{GetMessage, PublishConfirm};

static CONSUMER_SEQ: AtomicU64 = AtomicU64::new(1);

/// An open channel. Cheap to clone; the channel closes when the last clone drops.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Handle>,
}

pub(super) struct Handle {
    shared: Arc<ChannelShared>,
    _life: Arc<Lifeline>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id())
            .field("generation", &self.inner.shared.generation)
            .field("open", &self.is_open())
            .finish()
    }
}

impl Channel {
    pub(crate) fn new(shared: Arc<ChannelShared>, life: Arc<Lifeline>) -> Self {
        Self {
            inner: Arc::new(Handle {
                shared,
                _life: life,
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<ChannelShared> {
        &self.inner.shared
    }

    /// The channel id.
    pub fn id(&self) -> u16 {
        self.inner.shared.id
    }

    /// Whether the channel is open (not closed by either side, connection alive).
    pub fn is_open(&self) -> bool {
        self.inner.shared.is_open()
    }

    /// Why the channel closed, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.inner.shared.close_reason()
    }

    pub(crate) async fn open(&self) -> Result<()> {
        self.shared()
            .call_method(AMQPClass::Channel(channel::AMQPMethod::Open(
                channel::Open {},
            )))
            .await
            .map(drop)
    }

    /// Closes the channel and waits for the broker to confirm.
    pub async fn close(&self) -> Result<()> {
        self.shared().mark_closing()?;
        let method = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: ShortString::from("closed by the application"),
            class_id: 0,
            method_id: 0,
        }));
        self.shared()
            .call_method_while_closing(method)
            .await
            .map(drop)
    }

    /// Limits unacknowledged deliveries per consumer (`global = false`) or per channel.
    /// Set it before [`Channel::basic_consume`]: the consumer's buffer is sized from it.
    pub async fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<()> {
        let method = basic::Qos {
            prefetch_count,
            global,
        };
        self.rpc(AMQPClass::Basic(basic::AMQPMethod::Qos(method)))
            .await?;
        self.shared().set_prefetch(prefetch_count);
        Ok(())
    }

    /// Turns on publisher confirms: from now on every publish returns a confirm to await.
    pub async fn confirm_select(&self) -> Result<()> {
        self.rpc(chan::confirm_select()).await?;
        self.shared().set_confirm_mode();
        Ok(())
    }

    /// Publishes a message. The body is split into frames at `frame_max`.
    ///
    /// Waits (up to the operation timeout) only while the connection's write buffer is
    /// full. With confirms on, await the returned [`PublishConfirm`] to learn whether the
    /// broker took the message; otherwise it resolves at once.
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<PublishConfirm> {
        if exchange.len() > 255 {
            return Err(Error::invalid(format!(
                "exchange name is {} bytes long; AMQP allows at most 255",
                exchange.len()
            )));
        }
        if routing_key.len() > 255 {
            return Err(Error::invalid(format!(
                "routing key is {} bytes long; AMQP allows at most 255",
                routing_key.len()
            )));
        }
        let conn = &self.shared().conn;
        if body.len() > conn.opts.max_body_size {
            return Err(Error::new(
                crate::ErrorKind::FrameTooLarge,
                format!(
                    "message body of {} bytes exceeds the limit of {}",
                    body.len(),
                    conn.opts.max_body_size
                ),
            ));
        }
        conn.out.wait_for_space(conn.opts.operation_timeout).await?;
        self.shared()
            .publish(exchange, routing_key, options.mandatory, properties, body)
    }

    /// Starts a consumer on `queue`. Deliveries come through the returned [`Consumer`],
    /// buffered up to the prefetch set with [`Channel::basic_qos`].
    pub async fn basic_consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let tag = match options.consumer_tag {
            Some(tag) => tag,
            None => format!(
                "lepus-{}-{}",
                std::process::id(),
                CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let method = basic::Consume {
            queue: name("queue name", queue)?,
            consumer_tag: name("consumer tag", &tag)?,
            no_local: false,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            nowait: false,
            arguments: options.arguments,
        };
        let capacity = chan::consumer_buffer(self.shared().prefetch());
        let (slot, rx, end) = consumer_pair(capacity, options.no_ack);
        let reply = self
            .shared()
            .call(
                AMQPClass::Basic(basic::AMQPMethod::Consume(method)),
                Expect::Consume(slot),
            )
            .await?;
        let tag = match reply {
            Reply::Method(m) => match *m {
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => ok.consumer_tag.to_string(),
                _ => tag,
            },
            Reply::Get(_) => tag,
        };
        Ok(Consumer {
            tag,
            rx,
            end,
            channel: self.clone(),
            finished: false,
        })
    }

    /// Fetches one message (`basic.get`, manual ack); `None` when the queue is empty.
    pub async fn basic_get(&self, queue: &str) -> Result<Option<GetMessage>> {
        let method = basic::Get {
            queue: name("queue name", queue)?,
            no_ack: false,
        };
        match self
            .shared()
            .call(
                AMQPClass::Basic(basic::AMQPMethod::Get(method)),
                Expect::Get,
            )
            .await?
        {
            Reply::Get(message) => Ok(message.map(|m| *m)),
            Reply::Method(_) => Err(Error::protocol("basic.get answered by another method")),
        }
    }

    /// Acknowledges delivery `tag` (and all before it with `multiple`) on this channel.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.shared()
            .settle(delivery_tag, crate::codec::Settle::Ack { multiple })
    }

    /// Negatively acknowledges delivery `tag` (and all before it with `multiple`).
    pub fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.shared().settle(
            delivery_tag,
            crate::codec::Settle::Nack { multiple, requeue },
        )
    }

    pub(super) async fn rpc(&self, method: AMQPClass) -> Result<()> {
        self.shared().call_method(method).await.map(drop)
    }
}

#[allow(dead_code)]
pub(super) fn _assert_send_sync() {
    pub(super) fn check<T: Send + Sync>() {}
    check::<Channel>();
    check::<crate::Connection>();
    check::<crate::Delivery>();
}
