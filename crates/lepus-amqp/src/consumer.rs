//! A consumer: a stream of deliveries, bounded by the channel's prefetch.
//!
//! The reader task hands each assembled delivery to the consumer's buffer without ever
//! waiting. The buffer holds as many deliveries as the prefetch allows the broker to have
//! unacknowledged, so it cannot overflow while a prefetch is set; without one it has a
//! fixed bound, and overflowing it closes the channel (the broker requeues everything)
//! instead of growing memory.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::ShortString;
use tokio::sync::mpsc;

use crate::api::Channel;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Delivery;

/// Why a consumer's stream ended.
pub(crate) enum ConsumerEnd {
    /// We cancelled it.
    Cancelled,
    /// The application dropped it.
    Dropped,
    /// The broker cancelled it, or the channel or connection closed.
    Error(Error),
}

/// The reader's side of a consumer.
pub(crate) struct ConsumerSlot {
    pub(crate) tx: mpsc::Sender<Delivery>,
    end: Arc<Mutex<Option<Error>>>,
}

impl ConsumerSlot {
    pub(crate) fn end(self, why: ConsumerEnd) {
        if let ConsumerEnd::Error(err) = why {
            *self.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        }
        // Dropping `tx` ends the stream once the buffered deliveries are taken.
    }
}

pub(crate) fn consumer_pair(
    capacity: usize,
) -> (
    ConsumerSlot,
    mpsc::Receiver<Delivery>,
    Arc<Mutex<Option<Error>>>,
) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let end = Arc::new(Mutex::new(None));
    (
        ConsumerSlot {
            tx,
            end: Arc::clone(&end),
        },
        rx,
        end,
    )
}

/// Deliveries for one `basic.consume`, in order.
///
/// Read it with [`Consumer::next`] or as a [`futures_core::Stream`]. When the broker
/// cancels the consumer or the channel closes, the remaining buffered deliveries come
/// first, then one `Err` with the reason, then the end.
pub struct Consumer {
    pub(crate) tag: String,
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) end: Arc<Mutex<Option<Error>>>,
    pub(crate) channel: Channel,
    pub(crate) finished: bool,
}

impl Consumer {
    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Deliveries received and not yet taken with [`Consumer::next`].
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// The channel this consumer runs on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next delivery; `None` after the consumer has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(d)) => Poll::Ready(Some(Ok(d))),
            Poll::Ready(None) => {
                self.finished = true;
                let reason = self.end.lock().unwrap_or_else(|p| p.into_inner()).take();
                Poll::Ready(reason.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Stops the consumer (`basic.cancel`) and waits for the broker to confirm. Deliveries
    /// already buffered can still be read from this consumer afterwards.
    pub async fn cancel(&mut self) -> Result<()> {
        let tag = ShortString::try_new(self.tag.clone())
            .map_err(|_| Error::new(ErrorKind::InvalidArgument, "consumer tag too long"))?;
        let method = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: tag,
            nowait: false,
        }));
        self.channel.shared().call_method(method).await?;
        self.channel.shared().remove_consumer(&self.tag);
        Ok(())
    }
}

impl futures_core::Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("channel", &self.channel.id())
            .field("finished", &self.finished)
            .finish()
    }
}
