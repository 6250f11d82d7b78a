//! What arrives: deliveries, messages from `basic.get`, returned messages, confirmations.

use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;

use crate::channel::ChannelShared;
use crate::codec::{Settle, ShortStr};
use crate::error::{Error, ErrorKind, Result};

/// A message delivered to a consumer or fetched with `basic.get`.
///
/// It remembers the channel it came on. Acknowledging it after that channel closed is an
/// error ([`ErrorKind::StaleDelivery`]): the broker has already requeued it, and its
/// delivery tag may by now name another message on a new channel.
pub struct Delivery {
    pub(crate) delivery_tag: u64,
    pub(crate) redelivered: bool,
    pub(crate) exchange: ShortStr,
    pub(crate) routing_key: ShortStr,
    pub(crate) header: Box<AMQPContentHeader>,
    pub(crate) body: Bytes,
    pub(crate) channel: Arc<ChannelShared>,
}

impl Delivery {
    /// The broker's tag for this delivery, unique on its channel.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }

    /// Whether the broker delivered this message before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Its properties (headers, message id, content type, ...).
    pub fn properties(&self) -> &BasicProperties {
        &self.header.properties
    }

    /// Its body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The id of the channel it arrived on.
    pub fn channel_id(&self) -> u16 {
        self.channel.id
    }

    /// Which channel opening it arrived on: unique in the process (ids are reused across
    /// channels and connections; generations never are).
    pub fn channel_generation(&self) -> u64 {
        self.channel.generation
    }

    /// Acknowledges this delivery.
    pub fn ack(&self) -> Result<()> {
        self.settle(Settle::Ack { multiple: false })
    }

    /// Acknowledges this delivery and every earlier unacknowledged one on its channel.
    pub fn ack_multiple(&self) -> Result<()> {
        self.settle(Settle::Ack { multiple: true })
    }

    /// Rejects this delivery; `requeue` puts it back in the queue, otherwise the broker
    /// dead-letters or drops it.
    pub fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(Settle::Nack {
            multiple: false,
            requeue,
        })
    }

    /// Rejects this and every earlier unacknowledged delivery on its channel.
    pub fn nack_multiple(&self, requeue: bool) -> Result<()> {
        self.settle(Settle::Nack {
            multiple: true,
            requeue,
        })
    }

    /// `basic.reject`: like [`Delivery::nack`] for one message. RabbitMQ counts it
    /// differently towards a quorum queue's delivery limit than a nack with requeue.
    pub fn reject(&self, requeue: bool) -> Result<()> {
        self.settle(Settle::Reject { requeue })
    }

    fn settle(&self, how: Settle) -> Result<()> {
        self.channel.settle(self.delivery_tag, how)
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("channel", &(self.channel.id, self.channel.generation))
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("properties", &self.header.properties)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A message from `basic.get`, with the number of messages left in the queue.
#[derive(Debug)]
pub struct GetMessage {
    /// The message; acknowledge it like any delivery.
    pub delivery: Delivery,
    /// Messages left in the queue after this one.
    pub message_count: u32,
}

/// A `mandatory` message the broker could not route, handed back whole.
#[derive(Debug, Clone)]
pub struct Returned {
    /// The broker's reply code (312 NO_ROUTE).
    pub reply_code: u16,
    /// The broker's reason.
    pub reply_text: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
}

/// How the broker settled a published message.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Confirmation {
    /// The broker took responsibility for the message.
    Ack,
    /// The broker refused it (e.g. a full queue with `reject-publish` overflow).
    Nack,
    /// The message was `mandatory` and unroutable; the broker handed it back.
    Returned(Box<Returned>),
    /// The channel is not in confirm mode: nothing to wait for.
    NotRequested,
}

impl Confirmation {
    /// True only for [`Confirmation::Ack`].
    pub fn is_ack(&self) -> bool {
        matches!(self, Confirmation::Ack)
    }
}

/// Resolves when the broker confirms (or refuses) one published message.
///
/// It always resolves: if the channel or connection closes first, with that error (the
/// message may or may not have reached the broker, so publish it again if it matters).
#[must_use = "a confirm does nothing unless awaited"]
pub struct PublishConfirm {
    pub(crate) rx: Option<tokio::sync::oneshot::Receiver<Result<Confirmation>>>,
    pub(crate) done: bool,
}

impl PublishConfirm {
    /// Waits at most `timeout` for the confirmation.
    pub async fn wait(self, timeout: std::time::Duration) -> Result<Confirmation> {
        tokio::time::timeout(timeout, self)
            .await
            .unwrap_or_else(|_| Err(Error::timeout("publisher confirm", timeout)))
    }
}

impl std::future::Future for PublishConfirm {
    type Output = Result<Confirmation>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.done {
            return std::task::Poll::Ready(Err(Error::invalid(
                "a publish confirm was polled again after it completed",
            )));
        }
        let Some(rx) = self.rx.as_mut() else {
            self.done = true;
            return std::task::Poll::Ready(Ok(Confirmation::NotRequested));
        };
        let poll = std::pin::Pin::new(rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::ConnectionClosed,
                    "connection closed before the broker confirmed the message",
                ))
            })
        });
        if poll.is_ready() {
            self.done = true;
        }
        poll
    }
}
