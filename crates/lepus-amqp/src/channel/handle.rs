//! The channel handle: every AMQP method a client sends, each bounded by a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, exchange, queue};
use amq_protocol::types::{FieldTable, ShortString};

use crate::channel::{self as chan, ChannelShared, Expect, Reply, name};
use crate::connection::Lifeline;
use crate::channel::consumer::{Consumer, consumer_pair};
use crate::error::{Error, Result};
use crate::message::{GetMessage, PublishConfirm};

/// The type of an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routes by exact routing key.
    #[default]
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern (`orders.*`, `#`).
    Topic,
    /// Routes by header values.
    Headers,
    /// A plugin's exchange type, e.g. `x-consistent-hash`.
    Custom(String),
}

impl ExchangeKind {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Custom(s) => s,
        }
    }
}

/// Flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists.
    pub passive: bool,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
}

/// Flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists.
    pub passive: bool,
    /// Survives a broker restart.
    pub durable: bool,
    /// Used by this connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
}

/// Flags of `queue.delete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only delete if it has no consumers.
    pub if_unused: bool,
    /// Only delete if it has no messages.
    pub if_empty: bool,
}

/// Options of `basic.consume`.
#[derive(Debug, Clone, Default)]
pub struct ConsumeOptions {
    /// The consumer tag; one is generated when unset.
    pub consumer_tag: Option<String>,
    /// The broker considers messages acknowledged once sent (at-most-once). Off by default.
    pub no_ack: bool,
    /// No other consumer may consume from the queue.
    pub exclusive: bool,
    /// Consumer arguments (e.g. `x-priority`).
    pub arguments: FieldTable,
}

/// Options of `basic.publish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message if no queue is bound to take it. In confirm mode the publish's
    /// confirm then resolves to [`Confirmation::Returned`](crate::Confirmation::Returned)
    /// with the message, matched to exactly this publish even when others share its
    /// exchange, routing key and message id. Without confirm mode there is nothing to
    /// resolve: returns are logged and dropped.
    pub mandatory: bool,
}

/// What `queue.declare` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's name (the server-chosen one for a server-named queue).
    pub name: String,
    /// Ready messages in the queue.
    pub message_count: u32,
    /// Active consumers on the queue.
    pub consumer_count: u32,
}

static CONSUMER_SEQ: AtomicU64 = AtomicU64::new(1);

/// An open channel. Cheap to clone; the channel closes when the last clone drops.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Handle>,
}

struct Handle {
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

    /// Declares an exchange.
    pub async fn exchange_declare(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Declare {
            exchange: name("exchange name", exchange)?,
            kind: name("exchange type", kind.as_str())?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Declare(method)))
            .await
    }

    /// Deletes an exchange.
    pub async fn exchange_delete(&self, exchange: &str, if_unused: bool) -> Result<()> {
        let method = exchange::Delete {
            exchange: name("exchange name", exchange)?,
            if_unused,
            nowait: false,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Delete(method)))
            .await
    }

    /// Binds exchange `destination` to exchange `source` (RabbitMQ's extension).
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Bind {
            destination: name("exchange name", destination)?,
            source: name("exchange name", source)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Bind(method)))
            .await
    }

    /// Removes an exchange-to-exchange binding.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = exchange::Unbind {
            destination: name("exchange name", destination)?,
            source: name("exchange name", source)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Exchange(exchange::AMQPMethod::Unbind(method)))
            .await
    }

    /// Declares a queue. An empty name asks the broker to choose one; the returned
    /// [`QueueInfo`] carries it.
    pub async fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueInfo> {
        let method = queue::Declare {
            queue: name("queue name", queue)?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: false,
            arguments,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Declare(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(QueueInfo {
                name: ok.queue.to_string(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            _ => Err(Error::protocol("queue.declare answered by another method")),
        }
    }

    /// Binds a queue to an exchange.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = queue::Bind {
            queue: name("queue name", queue)?,
            exchange: name("exchange name", exchange)?,
            routing_key: name("routing key", routing_key)?,
            nowait: false,
            arguments,
        };
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Bind(method)))
            .await
    }

    /// Removes a queue binding.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        let method = queue::Unbind {
            queue: name("queue name", queue)?,
            exchange: name("exchange name", exchange)?,
            routing_key: name("routing key", routing_key)?,
            arguments,
        };
        self.rpc(AMQPClass::Queue(queue::AMQPMethod::Unbind(method)))
            .await
    }

    /// Removes every ready message from a queue; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32> {
        let method = queue::Purge {
            queue: name("queue name", queue)?,
            nowait: false,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Purge(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(ok)) => Ok(ok.message_count),
            _ => Err(Error::protocol("queue.purge answered by another method")),
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32> {
        let method = queue::Delete {
            queue: name("queue name", queue)?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            nowait: false,
        };
        let reply = self
            .shared()
            .call_method(AMQPClass::Queue(queue::AMQPMethod::Delete(method)))
            .await?;
        match *reply {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            _ => Err(Error::protocol("queue.delete answered by another method")),
        }
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

    async fn rpc(&self, method: AMQPClass) -> Result<()> {
        self.shared().call_method(method).await.map(drop)
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Channel>();
    check::<crate::Connection>();
    check::<crate::Delivery>();
}

/// Re-exported for building argument tables.
pub type Arguments = FieldTable;

/// Checks a string for a short-string field (names, routing keys): at most 255 bytes.
pub fn short_string(value: &str) -> Result<ShortString> {
    name("value", value)
}
