//! The state of one channel opening, which the reader task updates and callers wait on.
//!
//! Each opened channel is a fresh [`ChannelShared`] with its own generation, so a delivery
//! or a confirm waiter can never be applied to a later channel that reuses the id. Replies
//! to synchronous methods arrive in the order the methods were sent (AMQP guarantees it),
//! so waiters sit in a FIFO and no lock is held across an await.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::protocol::{AMQPClass, channel, confirm};
use amq_protocol::types::ShortString;
use tokio::sync::oneshot;

use super::confirms::PendingConfirm;
use super::consumer::Consumers;
use super::consumer::{ConsumerEnd, ConsumerSlot};
use super::content::Incoming;
use crate::codec::{self, Settle};
use crate::connection::ConnShared;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Confirmation, GetMessage};

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

pub(super) struct Waiter {
    pub(super) expect: Expect,
    pub(super) tx: oneshot::Sender<Result<Reply>>,
}

pub(crate) struct ChanState {
    pub(super) closed: Option<Error>,
    pub(super) closing: bool,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) confirm_mode: bool,
    pub(super) next_seq: u64,
    pub(super) pending: VecDeque<PendingConfirm>,
    pub(super) consumers: Consumers,
    pub(super) incoming: Option<Incoming>,
    pub(super) prefetch: u16,
    pub(super) flow_active: bool,
}

/// One opening of one channel id.
pub(crate) struct ChannelShared {
    pub(crate) id: u16,
    pub(crate) generation: u64,
    pub(crate) conn: Arc<ConnShared>,
    /// True while the connection's channel table holds this channel (the reader caches
    /// the last channel it used and checks this instead of locking the table).
    pub(crate) registered: std::sync::atomic::AtomicBool,
    pub(super) state: Mutex<ChanState>,
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

    pub(super) fn check_open(&self, st: &ChanState) -> Result<()> {
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

    pub(super) async fn call_inner(
        &self,
        method: AMQPClass,
        expect: Expect,
        closing: bool,
    ) -> Result<Reply> {
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

    pub(super) fn closed_error(&self) -> Error {
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
            // The broker returns an unroutable mandatory message before it acks it: one
            // already returned has its outcome (no queue took it), whatever comes next.
            let outcome = match p.returned {
                Some(returned) => Ok(Confirmation::Returned(returned)),
                None => Err(err.clone()),
            };
            let _ = p.tx.send(outcome);
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

    pub(crate) fn insert_consumer(&self, tag: &str, slot: ConsumerSlot) {
        self.lock().consumers.insert(tag.to_owned(), slot);
    }

    pub(crate) fn remove_consumer(&self, tag: &str) {
        if let Some(slot) = self.lock().consumers.remove(tag) {
            slot.end(ConsumerEnd::Cancelled);
        }
    }
}

/// The (class, method) ids of the reply to a synchronous method.
pub(super) fn reply_id(method: &AMQPClass) -> (u16, u16) {
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
