//! The state every handle and both socket tasks share: the write buffer, the channel
//! table, and how the connection fails, closes and routes incoming frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, ShortString};
use tokio::sync::watch;

use super::Negotiated;
use super::server_properties::ServerProperties;
use super::write_buffer::WriteBuffer;
use crate::channel::ChannelShared;
use crate::codec::{self, Frame};
use crate::error::{Chain, Error, ErrorKind, Result};
use crate::options::ConnectionOptions;

pub(crate) struct ConnShared {
    pub(crate) out: WriteBuffer,
    pub(crate) frame_max: usize,
    pub(crate) opts: ConnectionOptions,
    pub(super) negotiated: Negotiated,
    channels: Mutex<Channels>,
    pub(super) closed: watch::Sender<Option<Error>>,
    pub(super) blocked: watch::Sender<Option<String>>,
    /// Set (and `kill_notify` woken) when the socket tasks must stop at once. Not a
    /// watch: only the two socket tasks wait on it, and a watch is an allocation of its
    /// own on every connection.
    killed: AtomicBool,
    kill_notify: tokio::sync::Notify,
    pub(super) closing: AtomicBool,
    pub(super) server_properties: ServerProperties,
    /// Socket tasks (reader, writer) still running.
    pub(super) io_tasks: Arc<AtomicUsize>,
}

struct Channels {
    map: HashMap<u16, Arc<ChannelShared>>,
    last: u16,
}

/// Channel generations are unique in the process, not only per connection, so a delivery
/// can always tell which channel opening it came from, across reconnects too.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ConnShared {
    pub(crate) fn channel(&self, id: u16) -> Option<Arc<ChannelShared>> {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(&id)
            .cloned()
    }

    pub(crate) fn remove_channel(&self, id: u16, generation: u64) {
        let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if t.map.get(&id).is_some_and(|c| c.generation == generation)
            && let Some(c) = t.map.remove(&id)
        {
            c.registered.store(false, Ordering::Release);
        }
    }

    pub(super) fn allocate_channel(self: &Arc<Self>) -> Result<Arc<ChannelShared>> {
        if let Some(err) = self.close_reason() {
            return Err(err);
        }
        let max = self.negotiated.channel_max.max(1);
        let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..max {
            t.last = if t.last >= max { 1 } else { t.last + 1 };
            let id = t.last;
            if let std::collections::hash_map::Entry::Vacant(slot) = t.map.entry(id) {
                let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
                let shared = Arc::new(ChannelShared::new(id, generation, Arc::clone(self)));
                slot.insert(Arc::clone(&shared));
                return Ok(shared);
            }
        }
        Err(Error::new(
            ErrorKind::ChannelLimit,
            format!("all {max} channels of the connection are in use"),
        ))
    }

    pub(super) fn close_reason(&self) -> Option<Error> {
        self.closed.borrow().clone()
    }

    /// Fails the connection: every channel, waiter, confirm and consumer gets `err`.
    pub(super) fn fail(&self, err: Error) {
        let first = self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(err.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::debug!(error = %Chain(&err), "connection closed");
        }
        self.out.close(err.clone());
        let channels: Vec<_> = {
            let mut t = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            t.map.drain().map(|(_, c)| c).collect()
        };
        for c in &channels {
            c.registered.store(false, Ordering::Release);
        }
        for c in channels {
            c.close_with(err.clone());
        }
        let _ = self.blocked.send(None);
    }

    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill_notify.notify_waiters();
    }

    /// Resolves once [`Self::kill`] was called.
    pub(super) async fn killed(&self) {
        loop {
            let notified = self.kill_notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a kill in between still wakes us.
            notified.as_mut().enable();
            if self.killed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Sends `connection.close` once; the reader finishes on `close-ok`.
    pub(super) fn begin_close(&self, code: u16, text: &str) {
        if self.close_reason().is_some() || self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: code,
            reply_text: ShortString::try_new(text).unwrap_or_default(),
            class_id: 0,
            method_id: 0,
        }));
        if self
            .out
            .push(|out, _| codec::put_method(out, 0, &close))
            .is_err()
        {
            self.kill();
        }
    }

    /// The shared state of a connection that has settled `negotiated`.
    pub(super) fn new(
        negotiated: Negotiated,
        server_properties: FieldTable,
        opts: ConnectionOptions,
    ) -> Arc<Self> {
        let (closed, _) = watch::channel(None);
        let (blocked, _) = watch::channel(None);
        Arc::new(ConnShared {
            out: WriteBuffer::new(opts.write_buffer),
            frame_max: negotiated.frame_max as usize,
            negotiated,
            channels: Mutex::new(Channels {
                map: HashMap::new(),
                last: 0,
            }),
            closed,
            blocked,
            killed: AtomicBool::new(false),
            kill_notify: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            server_properties: ServerProperties::new(&server_properties),
            io_tasks: Arc::default(),
            opts,
        })
    }

    /// A connection with no socket, for feeding frames by hand (see `fuzzing`).
    pub(crate) fn detached(frame_max: usize, max_body_size: usize) -> Arc<Self> {
        let negotiated = Negotiated {
            frame_max: frame_max as u32,
            channel_max: 8,
            heartbeat: 0,
        };
        let opts = ConnectionOptions::default()
            .max_body_size(max_body_size)
            .write_buffer(1 << 20);
        Self::new(negotiated, FieldTable::default(), opts)
    }

    /// Channel 1 with a consumer tagged `c`, channel 2 in confirm mode.
    /// Returns the consumer's receiving end, which the caller keeps alive.
    pub(crate) fn open_fuzz_channels(
        self: &Arc<Self>,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::Delivery>> {
        let (one, two) = (self.allocate_channel().ok()?, self.allocate_channel().ok()?);
        let (slot, rx, _) = crate::channel::consumer::consumer_pair(16, false);
        one.insert_consumer("c", slot);
        two.set_confirm_mode();
        Some(rx)
    }

    pub(crate) fn dispatch_frame(self: Arc<Self>, frame: Frame) -> Result<()> {
        self.dispatch(frame, &mut None)
    }

    /// Applies a frame. `last` caches the channel of the previous frame: a delivery is
    /// three frames on one channel, and the table lock need not be taken for each.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        frame: Frame,
        last: &mut Option<Arc<ChannelShared>>,
    ) -> Result<()> {
        let id = frame.channel();
        if id == 0 {
            return self.dispatch_connection(frame);
        }
        if let Some(c) = last
            .as_ref()
            .filter(|c| c.id == id && c.registered.load(Ordering::Acquire))
        {
            return c.handle(frame);
        }
        *last = self.channel(id);
        match last {
            Some(c) => c.handle(frame),
            // Frames for a channel we already finished closing: nothing waits for them.
            None => {
                tracing::debug!(channel = id, "frame for a closed channel ignored");
                Ok(())
            }
        }
    }

    fn dispatch_connection(&self, frame: Frame) -> Result<()> {
        let method = match frame {
            Frame::Heartbeat => return Ok(()),
            Frame::Method(_, method) => *method,
            other => {
                return Err(Error::protocol(format!(
                    "unexpected {} frame on channel 0",
                    other.name()
                )));
            }
        };
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                let err =
                    Error::from_reply(close.reply_code, close.reply_text.as_str(), false, false);
                let ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                let _ = self.out.push(|out, _| codec::put_method(out, 0, &ok));
                self.fail(err);
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                self.fail(Error::new(
                    ErrorKind::ConnectionClosed,
                    "connection closed by the application",
                ));
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                tracing::warn!(reason = %b.reason, "broker blocked the connection");
                let _ = self.blocked.send(Some(b.reason.to_string()));
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                tracing::info!("broker unblocked the connection");
                let _ = self.blocked.send(None);
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(_)) => Ok(()),
            other => Err(Error::protocol(format!(
                "unexpected method {} on channel 0",
                crate::channel::method_name(&other)
            ))),
        }
    }
}
