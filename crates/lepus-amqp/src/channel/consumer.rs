//! A consumer: a stream of deliveries, bounded by the channel's prefetch.
//!
//! The reader task hands each assembled delivery to the consumer's buffer without ever
//! waiting. The buffer holds as many deliveries as the prefetch allows the broker to have
//! unacknowledged, so it cannot overflow while a prefetch is set; without one it has a
//! fixed bound, and overflowing it closes the channel (the broker requeues everything)
//! instead of growing memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::ShortString;
use tokio::sync::mpsc;

use super::Channel;
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

/// What the reader and the application side of a consumer share.
#[derive(Default)]
pub(crate) struct ConsumerShared {
    /// Why the consumer ended, set before the stream ends.
    end: Mutex<Option<Error>>,
    /// Deliveries the engine refused on the consumer's behalf.
    refused: AtomicU64,
}

/// The reader's side of a consumer.
pub(crate) struct ConsumerSlot {
    pub(crate) tx: mpsc::Sender<Delivery>,
    /// The broker considers deliveries settled on sending (nothing to reject).
    pub(crate) no_ack: bool,
    shared: Arc<ConsumerShared>,
}

impl ConsumerSlot {
    pub(crate) fn end(self, why: ConsumerEnd) {
        if let ConsumerEnd::Error(err) = why {
            *self.shared.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        }
        // Dropping `tx` ends the stream once the buffered deliveries are taken.
    }

    /// Counts a delivery the engine refused instead of handing it over.
    pub(crate) fn count_refused(&self) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn consumer_pair(
    capacity: usize,
    no_ack: bool,
) -> (ConsumerSlot, mpsc::Receiver<Delivery>, Arc<ConsumerShared>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(ConsumerShared::default());
    (
        ConsumerSlot {
            tx,
            no_ack,
            shared: Arc::clone(&shared),
        },
        rx,
        shared,
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
    pub(crate) end: Arc<ConsumerShared>,
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

    /// How many deliveries the engine refused for this consumer instead of handing them
    /// over: a body over [`max_body_size`](crate::ConnectionOptions::max_body_size), or
    /// properties it cannot decode (headers nested too deep, an unknown field type).
    ///
    /// Each was rejected without requeue (`basic.reject`), so the broker dead-letters it
    /// where the queue has a dead-letter exchange and drops it otherwise (with `no_ack`
    /// it was already settled and is only dropped). The stream goes on; each refusal is
    /// also logged as a warning. A stream item cannot carry it: an `Err` item ends the
    /// stream.
    pub fn refused(&self) -> u64 {
        self.end.refused.load(Ordering::Relaxed)
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
                let reason = self
                    .end
                    .end
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
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

/// A channel's consumers, by tag. Channels carry one or a few consumers, so a short
/// list compared by bytes beats hashing the tag of every delivery.
#[derive(Default)]
pub(super) struct Consumers(Vec<(String, ConsumerSlot)>);

impl Consumers {
    pub(super) fn get(&self, tag: &str) -> Option<&ConsumerSlot> {
        self.0.iter().find(|(t, _)| t == tag).map(|(_, s)| s)
    }

    pub(super) fn insert(&mut self, tag: String, slot: ConsumerSlot) {
        self.remove(&tag);
        self.0.push((tag, slot));
    }

    pub(super) fn remove(&mut self, tag: &str) -> Option<ConsumerSlot> {
        let i = self.0.iter().position(|(t, _)| t == tag)?;
        Some(self.0.swap_remove(i).1)
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = ConsumerSlot> + '_ {
        self.0.drain(..).map(|(_, s)| s)
    }
}
