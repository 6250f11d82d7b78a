//! Channels: the state the reader task updates, and the handle callers use.
//!
//! Each opened channel is a fresh [`ChannelShared`] with its own generation, so a delivery
//! or a confirm waiter can never be applied to a later channel that reuses the id. Replies
//! to synchronous methods arrive in the order the methods were sent (AMQP guarantees it),
//! so waiters sit in a FIFO and no lock is held across an await.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, confirm};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, DeliverArgs, Frame, Settle, ShortStr};
use crate::connection::ConnShared;
use crate::channel::consumer::{ConsumerEnd, ConsumerSlot};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Confirmation, Delivery, GetMessage, PublishConfirm, Returned};
use crate::channel::returns::{self, Fingerprint};

/// What a caller waiting on a synchronous method gets back.
pub(crate) enum Reply {
    Method(Box<AMQPClass>),
    Get(Option<Box<GetMessage>>),
}

pub(crate) enum Expect {
    /// A reply method with this (class, method) id.
    Method(u16, u16),
    /// `basic.consume-ok`; the reader registers the consumer before the first delivery.
    Consume(ConsumerSlot),
    /// `basic.get-ok` (with content) or `basic.get-empty`.
    Get,
}

struct Waiter {
    expect: Expect,
    tx: oneshot::Sender<Result<Reply>>,
}

struct PendingConfirm {
    seq: u64,
    tx: oneshot::Sender<Result<Confirmation>>,
    /// For `mandatory` publishes: what a `basic.return` is matched against.
    mandatory: Option<Fingerprint>,
    returned: Option<Box<Returned>>,
}

enum ContentKind {
    Deliver(DeliverArgs),
    Get(DeliverArgs, u32),
    Return(basic::Return),
}

struct Incoming {
    kind: ContentKind,
    /// Kept boxed from the decoder to the delivery: properties are large, and a delivery
    /// is moved several times on its way to the application.
    header: Option<Box<AMQPContentHeader>>,
    size: usize,
    body: Body,
}

/// A channel's consumers, by tag. Channels carry one or a few consumers, so a short
/// list compared by bytes beats hashing the tag of every delivery.
#[derive(Default)]
struct Consumers(Vec<(String, ConsumerSlot)>);

impl Consumers {
    fn get(&self, tag: &str) -> Option<&ConsumerSlot> {
        self.0.iter().find(|(t, _)| t == tag).map(|(_, s)| s)
    }

    fn insert(&mut self, tag: String, slot: ConsumerSlot) {
        self.remove(&tag);
        self.0.push((tag, slot));
    }

    fn remove(&mut self, tag: &str) -> Option<ConsumerSlot> {
        let i = self.0.iter().position(|(t, _)| t == tag)?;
        Some(self.0.swap_remove(i).1)
    }

    fn drain(&mut self) -> impl Iterator<Item = ConsumerSlot> + '_ {
        self.0.drain(..).map(|(_, s)| s)
    }
}

enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
    /// The message was refused (see [`ChannelShared::refuse`]): its body frames are
    /// counted, this many bytes so far, and dropped.
    Skip(usize),
}

pub(crate) struct ChanState {
    closed: Option<Error>,
    closing: bool,
    waiters: VecDeque<Waiter>,
    confirm_mode: bool,
    next_seq: u64,
    pending: VecDeque<PendingConfirm>,
    consumers: Consumers,
    incoming: Option<Incoming>,
    prefetch: u16,
    flow_active: bool,
}

/// One opening of one channel id.
pub(crate) struct ChannelShared {
    pub(crate) id: u16,
    pub(crate) generation: u64,
    pub(crate) conn: Arc<ConnShared>,
    /// True while the connection's channel table holds this channel (the reader caches
    /// the last channel it used and checks this instead of locking the table).
    pub(crate) registered: std::sync::atomic::AtomicBool,
    state: Mutex<ChanState>,
}

impl ChannelShared {
    pub(crate) fn new(id: u16, generation: u64, conn: Arc<ConnShared>) -> Self {
        Self {
            id,
            generation,
            conn,
            registered: std::sync::atomic::AtomicBool::new(true),
            state: Mutex::new(ChanState {
                closed: None,
                closing: false,
                waiters: VecDeque::new(),
                confirm_mode: false,
                next_seq: 1,
                pending: VecDeque::new(),
                consumers: Consumers::default(),
                incoming: None,
                prefetch: 0,
                flow_active: true,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self, st: &ChanState) -> Result<()> {
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        if st.closing {
            return Err(Error::new(
                ErrorKind::ChannelClosed,
                format!("channel {} is closing", self.id),
            ));
        }
        Ok(())
    }

    /// Sends a synchronous method and waits for its reply, up to the operation timeout.
    pub(crate) async fn call(&self, method: AMQPClass, expect: Expect) -> Result<Reply> {
        self.call_inner(method, expect, false).await
    }

    /// `channel.close` itself is sent while the channel is marked closing.
    pub(crate) async fn call_method_while_closing(
        &self,
        method: AMQPClass,
    ) -> Result<Box<AMQPClass>> {
        let (class, id) = reply_id(&method);
        match self
            .call_inner(method, Expect::Method(class, id), true)
            .await?
        {
            Reply::Method(m) => Ok(m),
            Reply::Get(_) => Err(Error::protocol("unexpected get reply")),
        }
    }

    async fn call_inner(&self, method: AMQPClass, expect: Expect, closing: bool) -> Result<Reply> {
        let rx = {
            let mut st = self.lock();
            if !(closing && st.closed.is_none()) {
                self.check_open(&st)?;
            }
            let (tx, rx) = oneshot::channel();
            self.conn
                .out
                .push(|out, _| codec::put_method(out, self.id, &method))?;
            st.waiters.push_back(Waiter { expect, tx });
            rx
        };
        let timeout = self.conn.opts.operation_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(Error::timeout(
                &format!("{} on channel {}", method_name(&method), self.id),
                timeout,
            )),
        }
    }

    pub(crate) async fn call_method(&self, method: AMQPClass) -> Result<Box<AMQPClass>> {
        let (class, id) = reply_id(&method);
        match self.call(method, Expect::Method(class, id)).await? {
            Reply::Method(m) => Ok(m),
            Reply::Get(_) => Err(Error::protocol("unexpected get reply")),
        }
    }

    fn closed_error(&self) -> Error {
        self.lock().closed.clone().unwrap_or_else(|| {
            Error::new(
                ErrorKind::ChannelClosed,
                format!("channel {} closed", self.id),
            )
        })
    }

    pub(crate) fn settle(&self, tag: u64, how: Settle) -> Result<()> {
        let st = self.lock();
        if let Some(err) = &st.closed {
            return Err(Error::with_source(
                ErrorKind::StaleDelivery,
                format!(
                    "delivery {tag} came on channel {} (generation {}), which has closed; the broker has requeued it",
                    self.id, self.generation
                ),
                err.clone(),
            ));
        }
        self.conn.out.push(|out, _| {
            codec::put_settle(out, self.id, tag, how);
            Ok(())
        })
    }

    pub(crate) fn set_confirm_mode(&self) {
        self.lock().confirm_mode = true;
    }

    pub(crate) fn set_prefetch(&self, prefetch: u16) {
        self.lock().prefetch = prefetch;
    }

    pub(crate) fn prefetch(&self) -> u16 {
        self.lock().prefetch
    }

    pub(crate) fn is_open(&self) -> bool {
        let st = self.lock();
        st.closed.is_none() && !st.closing
    }

    pub(crate) fn close_reason(&self) -> Option<Error> {
        self.lock().closed.clone()
    }

    pub(crate) fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<PublishConfirm> {
        let mut st = self.lock();
        self.check_open(&st)?;
        if !st.flow_active {
            return Err(Error::new(
                ErrorKind::ChannelClosed,
                format!(
                    "the broker has paused publishing on channel {} (channel.flow)",
                    self.id
                ),
            ));
        }
        let frame_max = self.conn.frame_max;
        let track_return = mandatory && st.confirm_mode;
        let mut fingerprint = None;
        self.conn.out.push(|out, scratch| {
            codec::put_publish(
                out,
                scratch,
                self.id,
                exchange,
                routing_key,
                mandatory,
                properties,
                body,
                frame_max,
            )?;
            // `scratch` still holds the encoded properties.
            if track_return {
                fingerprint = Some(Fingerprint::new(exchange, routing_key, scratch, body));
            }
            Ok(())
        })?;
        if !st.confirm_mode {
            return Ok(PublishConfirm {
                rx: None,
                done: false,
            });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        st.pending.push_back(PendingConfirm {
            seq,
            tx,
            mandatory: fingerprint,
            returned: None,
        });
        Ok(PublishConfirm {
            rx: Some(rx),
            done: false,
        })
    }

    /// Marks the channel closed and fails everything waiting on it.
    pub(crate) fn close_with(&self, err: Error) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(err.clone());
        for w in st.waiters.drain(..) {
            let _ = w.tx.send(Err(err.clone()));
        }
        for p in st.pending.drain(..) {
            let _ = p.tx.send(Err(err.clone()));
        }
        for slot in st.consumers.drain() {
            slot.end(ConsumerEnd::Error(err.clone()));
        }
        st.incoming = None;
    }

    /// Starts a client-initiated close without waiting: used when the last handle drops.
    pub(crate) fn begin_close(&self) {
        let mut st = self.lock();
        if st.closed.is_some() || st.closing {
            return;
        }
        st.closing = true;
        let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: ShortString::from("channel dropped"),
            class_id: 0,
            method_id: 0,
        }));
        let _ = self
            .conn
            .out
            .push(|out, _| codec::put_method(out, self.id, &close));
    }

    pub(crate) fn mark_closing(&self) -> Result<()> {
        let mut st = self.lock();
        self.check_open(&st)?;
        st.closing = true;
        Ok(())
    }

    /// Handles one frame for this channel. An `Err` is a connection-level protocol error.
    pub(crate) fn handle(self: &Arc<Self>, frame: Frame) -> Result<()> {
        match frame {
            Frame::Method(_, method) => self.handle_method(*method),
            Frame::Deliver(_, args) => self.start_content(ContentKind::Deliver(args)),
            Frame::Confirm {
                delivery_tag,
                multiple,
                ack,
                ..
            } => {
                self.handle_confirm(delivery_tag, multiple, ack);
                Ok(())
            }
            Frame::Header(_, header) => self.handle_header(header),
            Frame::BadHeader {
                body_size, error, ..
            } => self.handle_bad_header(body_size, error),
            Frame::Body(_, bytes) => self.handle_body(bytes),
            Frame::Heartbeat => Ok(()),
        }
    }

    fn start_content(&self, kind: ContentKind) -> Result<()> {
        let mut st = self.lock();
        if st.incoming.is_some() {
            return Err(Error::protocol(format!(
                "channel {}: a new content method arrived before the previous body was complete",
                self.id
            )));
        }
        st.incoming = Some(Incoming {
            kind,
            header: None,
            size: 0,
            body: Body::Empty,
        });
        Ok(())
    }

    fn handle_header(self: &Arc<Self>, header: Box<AMQPContentHeader>) -> Result<()> {
        let mut st = self.lock();
        let max = self.conn.opts.max_body_size;
        let Some(incoming) = st.incoming.as_mut() else {
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
        let size = usize::try_from(header.body_size).unwrap_or(usize::MAX);
        if size > max {
            let err = Error::new(
                ErrorKind::FrameTooLarge,
                format!(
                    "channel {}: message body of {size} bytes exceeds the limit of {max}",
                    self.id
                ),
            );
            return self.refuse(st, size, err);
        }
        incoming.size = size;
        incoming.header = Some(header);
        if size == 0 {
            return self.complete_content(st);
        }
        Ok(())
    }

    fn handle_body(self: &Arc<Self>, bytes: Bytes) -> Result<()> {
        let mut st = self.lock();
        let Some(incoming) = st.incoming.as_mut() else {
            return Err(Error::protocol(format!(
                "channel {}: body frame without a content method",
                self.id
            )));
        };
        let size = incoming.size;
        if let Body::Skip(skipped) = &mut incoming.body {
            let total = *skipped + bytes.len();
            if total > size {
                return Err(Error::protocol(format!(
                    "channel {}: body frames carry {total} bytes, the header announced {size}",
                    self.id
                )));
            }
            *skipped = total;
            if total == size {
                st.incoming = None;
            }
            return Ok(());
        }
        if incoming.header.is_none() {
            return Err(Error::protocol(format!(
                "channel {}: body frame before the content header",
                self.id
            )));
        }
        let have = match &incoming.body {
            Body::Empty | Body::Skip(_) => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        };
        let total = have + bytes.len();
        if total > size {
            return Err(Error::protocol(format!(
                "channel {}: body frames carry {total} bytes, the header announced {size}",
                self.id
            )));
        }
        incoming.body = match std::mem::replace(&mut incoming.body, Body::Empty) {
            Body::Empty if total == size => Body::One(bytes),
            Body::Empty => {
                let mut all = BytesMut::with_capacity(size);
                all.extend_from_slice(&bytes);
                Body::Many(all)
            }
            Body::One(first) => {
                let mut all = BytesMut::with_capacity(size);
                all.extend_from_slice(&first);
                all.extend_from_slice(&bytes);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&bytes);
                Body::Many(all)
            }
            Body::Skip(n) => Body::Skip(n),
        };
        if total == size {
            return self.complete_content(st);
        }
        Ok(())
    }

    /// A content header whose properties do not decode: refuse the message.
    fn handle_bad_header(&self, body_size: u64, error: Error) -> Result<()> {
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
            format!(
                "channel {}: message properties cannot be decoded: {error}",
                self.id
            ),
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
    fn refuse(&self, mut st: MutexGuard<'_, ChanState>, size: usize, err: Error) -> Result<()> {
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
                    error = %err,
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
                error = %err,
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

    fn skipped_if_empty(&self, mut st: MutexGuard<'_, ChanState>, size: usize) -> Result<()> {
        if size == 0 {
            st.incoming = None;
        }
        Ok(())
    }

    fn complete_content(self: &Arc<Self>, mut st: MutexGuard<'_, ChanState>) -> Result<()> {
        let Some(Incoming {
            kind,
            header: Some(header),
            body,
            ..
        }) = st.incoming.take()
        else {
            return Err(Error::protocol("content completed without a header"));
        };
        let body = match body {
            Body::Empty | Body::Skip(_) => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        };
        match kind {
            ContentKind::Deliver(args) => self.dispatch_delivery(&mut st, args, header, body),
            ContentKind::Get(args, message_count) => {
                let delivery = self.delivery(args, header, body);
                match st.waiters.pop_front() {
                    Some(Waiter {
                        expect: Expect::Get,
                        tx,
                    }) => {
                        // If the caller gave up waiting, the unacked message returns to
                        // the queue when the channel closes; nothing is lost.
                        let _ = tx.send(Ok(Reply::Get(Some(Box::new(GetMessage {
                            delivery,
                            message_count,
                        })))));
                        Ok(())
                    }
                    _ => Err(Error::protocol("basic.get-ok without a basic.get")),
                }
            }
            ContentKind::Return(ret) => {
                self.handle_return(&mut st, ret, header.properties, body);
                Ok(())
            }
        }
    }

    fn delivery(
        self: &Arc<Self>,
        args: DeliverArgs,
        header: Box<AMQPContentHeader>,
        body: Bytes,
    ) -> Delivery {
        Delivery {
            delivery_tag: args.delivery_tag,
            redelivered: args.redelivered,
            exchange: args.exchange,
            routing_key: args.routing_key,
            header,
            body,
            channel: Arc::clone(self),
        }
    }

    fn dispatch_delivery(
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

    fn handle_return(
        &self,
        st: &mut ChanState,
        ret: basic::Return,
        properties: BasicProperties,
        body: Bytes,
    ) {
        let mut encoded = Vec::new();
        let fingerprint = codec::encode_properties(&properties, &mut encoded)
            .ok()
            .map(|()| {
                Fingerprint::new(
                    ret.exchange.as_str(),
                    ret.routing_key.as_str(),
                    &encoded,
                    &body,
                )
            });
        let returned = Box::new(Returned {
            reply_code: ret.reply_code,
            reply_text: ret.reply_text.to_string(),
            exchange: ret.exchange.to_string(),
            routing_key: ret.routing_key.to_string(),
            properties,
            body,
        });
        // See `returns`: matched by content, in publish order, not by the next ack.
        let index = fingerprint.and_then(|f| {
            returns::owner(
                f,
                st.pending
                    .iter()
                    .map(|p| (p.mandatory, p.returned.is_some())),
            )
        });
        let slot = index.and_then(|i| st.pending.get_mut(i));
        match slot {
            Some(p) => p.returned = Some(returned),
            None => tracing::warn!(
                channel = self.id,
                exchange = %returned.exchange,
                routing_key = %returned.routing_key,
                reply_text = %returned.reply_text,
                "unroutable message returned with no confirm waiting for it; dropped"
            ),
        }
    }

    fn handle_confirm(&self, tag: u64, multiple: bool, ack: bool) {
        let mut st = self.lock();
        let resolve = |p: PendingConfirm| {
            let result = match (ack, p.returned) {
                (true, Some(ret)) => Confirmation::Returned(ret),
                (true, None) => Confirmation::Ack,
                (false, _) => Confirmation::Nack,
            };
            let _ = p.tx.send(Ok(result));
        };
        if multiple {
            while st.pending.front().is_some_and(|p| p.seq <= tag) {
                if let Some(p) = st.pending.pop_front() {
                    resolve(p);
                }
            }
        } else if let Some(p) = st
            .pending
            .binary_search_by_key(&tag, |p| p.seq)
            .ok()
            .and_then(|pos| st.pending.remove(pos))
        {
            resolve(p);
        }
    }

    fn handle_method(self: &Arc<Self>, method: AMQPClass) -> Result<()> {
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                let err =
                    Error::from_reply(close.reply_code, close.reply_text.as_str(), true, false);
                self.close_with(err);
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                // The id is free once close-ok is queued; frames queued before it were
                // discarded by the broker, frames after it belong to the next channel.
                let _ = self
                    .conn
                    .out
                    .push(|out, _| codec::put_method(out, self.id, &ok));
                self.conn.remove_channel(self.id, self.generation);
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                let waiter = self.lock().waiters.pop_front();
                self.close_with(Error::new(
                    ErrorKind::ChannelClosed,
                    format!("channel {} was closed by the application", self.id),
                ));
                self.conn.remove_channel(self.id, self.generation);
                if let Some(w) = waiter {
                    let _ = w.tx.send(Ok(Reply::Method(Box::new(AMQPClass::Channel(
                        channel::AMQPMethod::CloseOk(channel::CloseOk {}),
                    )))));
                }
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                self.lock().flow_active = flow.active;
                let ok = AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: flow.active,
                }));
                self.conn
                    .out
                    .push(|out, _| codec::put_method(out, self.id, &ok))
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                if let Some(slot) = self.lock().consumers.remove(cancel.consumer_tag.as_str()) {
                    slot.end(ConsumerEnd::Error(Error::new(
                        ErrorKind::ConsumerCancelled,
                        format!(
                            "the broker cancelled consumer {} (queue deleted or its node failed)",
                            cancel.consumer_tag
                        ),
                    )));
                }
                if !cancel.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag,
                    }));
                    self.conn
                        .out
                        .push(|out, _| codec::put_method(out, self.id, &ok))?;
                }
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(ret)) => {
                self.start_content(ContentKind::Return(ret))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetOk(get)) => {
                let args = DeliverArgs {
                    consumer_tag: ShortStr::default(),
                    delivery_tag: get.delivery_tag,
                    redelivered: get.redelivered,
                    exchange: short_str(get.exchange.as_str()),
                    routing_key: short_str(get.routing_key.as_str()),
                };
                self.start_content(ContentKind::Get(args, get.message_count))
            }
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => {
                match self.lock().waiters.pop_front() {
                    Some(Waiter {
                        expect: Expect::Get,
                        tx,
                    }) => {
                        let _ = tx.send(Ok(Reply::Get(None)));
                        Ok(())
                    }
                    _ => Err(Error::protocol("basic.get-empty without a basic.get")),
                }
            }
            reply => self.handle_reply(reply),
        }
    }

    fn handle_reply(&self, reply: AMQPClass) -> Result<()> {
        let mut st = self.lock();
        let Some(waiter) = st.waiters.pop_front() else {
            return Err(Error::protocol(format!(
                "channel {}: unexpected method {}",
                self.id,
                method_name(&reply)
            )));
        };
        let got = (reply.get_amqp_class_id(), reply.get_amqp_method_id());
        match waiter.expect {
            Expect::Method(class, method) if (class, method) == got => {
                let _ = waiter.tx.send(Ok(Reply::Method(Box::new(reply))));
                Ok(())
            }
            Expect::Consume(slot) => match reply {
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => {
                    st.consumers.insert(ok.consumer_tag.to_string(), slot);
                    let _ = waiter.tx.send(Ok(Reply::Method(Box::new(AMQPClass::Basic(
                        basic::AMQPMethod::ConsumeOk(ok),
                    )))));
                    Ok(())
                }
                other => Err(Error::protocol(format!(
                    "channel {}: expected basic.consume-ok, got {}",
                    self.id,
                    method_name(&other)
                ))),
            },
            _ => Err(Error::protocol(format!(
                "channel {}: reply {} does not answer the method sent",
                self.id,
                method_name(&reply)
            ))),
        }
    }

    pub(crate) fn insert_consumer(&self, tag: &str, slot: ConsumerSlot) {
        self.lock().consumers.insert(tag.to_owned(), slot);
    }

    pub(crate) fn remove_consumer(&self, tag: &str) {
        if let Some(slot) = self.lock().consumers.remove(tag) {
            slot.end(ConsumerEnd::Cancelled);
        }
    }
}

fn short_str(s: &str) -> ShortStr {
    ShortStr::copied(s)
}

/// The (class, method) ids of the reply to a synchronous method.
fn reply_id(method: &AMQPClass) -> (u16, u16) {
    let class = method.get_amqp_class_id();
    let id = method.get_amqp_method_id();
    match (class, id) {
        // exchange.unbind (40) is answered by unbind-ok 51, RabbitMQ's extension numbering.
        (40, 40) => (40, 51),
        // Every other synchronous request in 0-9-1 is answered by its id + 1.
        (c, m) => (c, m + 1),
    }
}

pub(crate) fn method_name(method: &AMQPClass) -> String {
    // `Basic(Qos(Qos { .. }))` -> `basic.qos`
    let debug = format!("{method:?}");
    debug
        .split('(')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
        .to_lowercase()
}

/// Builds `confirm.select`.
pub(crate) fn confirm_select() -> AMQPClass {
    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }))
}

/// Validates a name for a short-string field.
pub(crate) fn name(what: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| {
        Error::invalid(format!(
            "{what} is {} bytes long; AMQP allows at most 255",
            value.len()
        ))
    })
}

pub(crate) const DEFAULT_CONSUMER_BUFFER: usize = 10_000;

pub(crate) fn consumer_buffer(prefetch: u16) -> usize {
    if prefetch == 0 {
        DEFAULT_CONSUMER_BUFFER
    } else {
        usize::from(prefetch)
    }
}
