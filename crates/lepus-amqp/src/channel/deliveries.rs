//! Handing a complete message to its consumer, and refusing the ones the engine cannot
//! accept (a body over the limit, properties that do not decode) without failing the
//! connection.

use std::sync::{Arc, MutexGuard};

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel};
use amq_protocol::types::ShortString;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::consumer::ConsumerEnd;
use super::content::{Body, ContentKind};
use super::returns::{self, Fingerprint};
use super::state::{ChanState, ChannelShared, Expect, Waiter};
use crate::codec::{self, DeliverArgs, Settle};
use crate::error::{Chain, Error, ErrorKind, Result};
use crate::message::Returned;

impl ChannelShared {
    pub(super) fn dispatch_delivery(
        self: &Arc<Self>,
        st: &mut ChanState,
        args: DeliverArgs,
        header: Box<AMQPContentHeader>,
        body: Bytes,
    ) -> Result<()> {
        let tag = args.delivery_tag;
        let ctag = args.consumer_tag.clone();
        let Some(slot) = st.consumers.get(ctag.as_str()) else {
            // A delivery for a consumer we no longer have (cancelled a moment ago): give it
            // back to the queue.
            return self.conn.out.push(|out, _| {
                codec::put_settle(out, self.id, tag, Settle::Reject { requeue: true });
                Ok(())
            });
        };
        let delivery = self.delivery(args, header, body);
        match slot.tx.try_send(delivery) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The application dropped the consumer without cancelling: requeue and
                // cancel, so the broker stops sending.
                if let Some(slot) = st.consumers.remove(ctag.as_str()) {
                    slot.end(ConsumerEnd::Dropped);
                }
                let cancel = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: ShortString::from(ctag.as_str().to_owned()),
                    nowait: true,
                }));
                self.conn.out.push(|out, _| {
                    codec::put_settle(out, self.id, tag, Settle::Reject { requeue: true });
                    codec::put_method(out, self.id, &cancel)
                })
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // More unacknowledged deliveries than the consumer's buffer: only possible
                // without a prefetch limit. Close the channel; the broker requeues them all.
                let err = Error::new(
                    ErrorKind::ConsumerOverflow,
                    format!(
                        "consumer {ctag} on channel {} fell behind by more than its buffer; set a prefetch (basic_qos) below it",
                        self.id
                    ),
                );
                st.closing = true;
                let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: ShortString::from("consumer buffer overflow"),
                    class_id: 0,
                    method_id: 0,
                }));
                for slot in st.consumers.drain() {
                    slot.end(ConsumerEnd::Error(err.clone()));
                }
                self.conn
                    .out
                    .push(|out, _| codec::put_method(out, self.id, &close))
            }
        }
    }

    /// A content header whose properties do not decode: refuse the message.
    pub(super) fn handle_bad_header(&self, body_size: u64, error: Error) -> Result<()> {
        let st = self.lock();
        let Some(incoming) = st.incoming.as_ref() else {
            return Err(Error::protocol(format!(
                "channel {}: content header without a content method",
                self.id
            )));
        };
        if incoming.header.is_some() || matches!(incoming.body, Body::Skip(_)) {
            return Err(Error::protocol(format!(
                "channel {}: two content headers for one message",
                self.id
            )));
        }
        let size = usize::try_from(body_size).unwrap_or(usize::MAX);
        let err = Error::with_source(
            error.kind(),
            format!("channel {}: message properties cannot be decoded", self.id),
            error,
        );
        self.refuse(st, size, err)
    }

    /// Refuses the message being received instead of failing the connection: a broker
    /// would deliver it again after a reconnect, and the connection would fail again, for
    /// ever. A delivery or `basic.get` message is rejected without requeue (so the broker
    /// dead-letters it where the queue has a dead-letter exchange), counted on its
    /// consumer and logged; a `get` caller gets `err`. Its body frames, `size` bytes, are
    /// then skipped without being buffered.
    pub(super) fn refuse(
        &self,
        mut st: MutexGuard<'_, ChanState>,
        size: usize,
        err: Error,
    ) -> Result<()> {
        let Some(incoming) = st.incoming.as_mut() else {
            return Ok(());
        };
        incoming.size = size;
        incoming.body = Body::Skip(0);
        let (tag, consumer, get) = match &incoming.kind {
            ContentKind::Deliver(args) => {
                (args.delivery_tag, Some(args.consumer_tag.clone()), false)
            }
            ContentKind::Get(args, _) => (args.delivery_tag, None, true),
            ContentKind::Return(ret) => {
                tracing::warn!(
                    channel = self.id,
                    exchange = %ret.exchange,
                    routing_key = %ret.routing_key,
                    error = %Chain(&err),
                    "returned message cannot be decoded; its publish is reported returned without it"
                );
                // Its publish must still resolve as returned, not as acked; without the
                // content only the route can say which one it was.
                let returned = Box::new(Returned {
                    reply_code: ret.reply_code,
                    reply_text: ret.reply_text.to_string(),
                    exchange: ret.exchange.to_string(),
                    routing_key: ret.routing_key.to_string(),
                    properties: BasicProperties::default(),
                    body: Bytes::new(),
                });
                let route =
                    Fingerprint::new(&returned.exchange, &returned.routing_key, &[], &[]).route;
                let index = returns::owner_by_route(
                    route,
                    st.pending
                        .iter()
                        .map(|p| (p.mandatory, p.returned.is_some())),
                );
                if let Some(p) = index.and_then(|i| st.pending.get_mut(i)) {
                    p.returned = Some(returned);
                }
                return self.skipped_if_empty(st, size);
            }
        };
        let mut settled = false;
        if let Some(ctag) = &consumer {
            if let Some(slot) = st.consumers.get(ctag.as_str()) {
                slot.count_refused();
                settled = slot.no_ack;
            }
            tracing::warn!(
                channel = self.id,
                consumer_tag = %ctag,
                delivery_tag = tag,
                error = %Chain(&err),
                "delivery refused: rejected without requeue (dead-lettered if the queue has a dead-letter exchange)"
            );
        }
        if get {
            match st.waiters.pop_front() {
                Some(Waiter {
                    expect: Expect::Get,
                    tx,
                }) => {
                    let _ = tx.send(Err(err));
                }
                _ => return Err(Error::protocol("basic.get-ok without a basic.get")),
            }
        }
        if !settled {
            self.conn.out.push(|out, _| {
                codec::put_settle(out, self.id, tag, Settle::Reject { requeue: false });
                Ok(())
            })?;
        }
        self.skipped_if_empty(st, size)
    }

    pub(super) fn skipped_if_empty(
        &self,
        mut st: MutexGuard<'_, ChanState>,
        size: usize,
    ) -> Result<()> {
        if size == 0 {
            st.incoming = None;
        }
        Ok(())
    }
}
