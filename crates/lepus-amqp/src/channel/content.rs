//! Assembling a received message: a content method (`basic.deliver`, `basic.get-ok`,
//! `basic.return`), then a content header, then body frames until the announced size.
//!
//! The three arrive as separate frames and may be interleaved with frames of other
//! channels, so each channel keeps the message it is assembling in [`ChanState::incoming`].
//! A body that fits one frame is kept as the received slice (no copy); a larger one is
//! gathered into a buffer of exactly the announced size.

use std::sync::{Arc, MutexGuard};

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic;
use bytes::{Bytes, BytesMut};

use super::state::{ChanState, ChannelShared, Expect, Reply, Waiter};
use crate::codec::DeliverArgs;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Delivery, GetMessage};

pub(super) enum ContentKind {
    Deliver(DeliverArgs),
    Get(DeliverArgs, u32),
    Return(basic::Return),
}

pub(super) struct Incoming {
    pub(super) kind: ContentKind,
    /// Kept boxed from the decoder to the delivery: properties are large, and a delivery
    /// is moved several times on its way to the application.
    pub(super) header: Option<Box<AMQPContentHeader>>,
    pub(super) size: usize,
    pub(super) body: Body,
}

pub(super) enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
    /// The message was refused (see [`ChannelShared::refuse`]): its body frames are
    /// counted, this many bytes so far, and dropped.
    Skip(usize),
}

impl ChannelShared {
    pub(super) fn start_content(&self, kind: ContentKind) -> Result<()> {
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

    pub(super) fn handle_header(self: &Arc<Self>, header: Box<AMQPContentHeader>) -> Result<()> {
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

    /// Adds one body frame to the message being assembled.
    ///
    /// The size check comes first, whichever state the body is in: the header announced
    /// the size, and a broker that sends more is out of step with us, a connection error.
    /// A refused message's frames only count towards its size (`Body::Skip`), and the
    /// common single-frame body stays the received slice (`Body::One`) without a copy.
    pub(super) fn handle_body(self: &Arc<Self>, bytes: Bytes) -> Result<()> {
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

    pub(super) fn complete_content(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, ChanState>,
    ) -> Result<()> {
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

    pub(super) fn delivery(
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
}
