//! The bounded write buffer between callers and the writer task.
//!
//! Callers encode frames straight into one shared `Vec<u8>` under a short lock; the writer
//! swaps it for an empty one and writes everything with one syscall. Under steady traffic
//! nothing is allocated: the two vectors trade places and keep their capacity (until a
//! quiet second gives it back; see `buffers`). Publishers wait (with a
//! deadline) while more than `limit` bytes are queued, so memory stays bounded when the
//! broker is slow or has blocked us; small control frames (acks, closes) never wait, since
//! they are what frees the broker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};

pub(crate) struct WriteBuffer {
    state: Mutex<State>,
    /// Bytes queued, readable without the lock.
    queued: AtomicUsize,
    wake_writer: Notify,
    space: Notify,
    limit: usize,
}

struct State {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    closed: Option<Error>,
}

impl WriteBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State {
                // Grows with what is queued; see `buffers` for when it shrinks.
                buf: Vec::new(),
                scratch: Vec::new(),
                closed: None,
            }),
            queued: AtomicUsize::new(0),
            wake_writer: Notify::new(),
            space: Notify::new(),
            limit,
        }
    }

    /// Appends frames unless the connection is closed. Never waits.
    pub(crate) fn push(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        let State { buf, scratch, .. } = &mut *st;
        let before = buf.len();
        if let Err(e) = encode(buf, scratch) {
            buf.truncate(before);
            return Err(e);
        }
        self.queued.store(buf.len(), Ordering::Release);
        drop(st);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Waits until fewer than `limit` bytes are queued, up to `timeout`.
    pub(crate) async fn wait_for_space(&self, timeout: Duration) -> Result<()> {
        if self.queued.load(Ordering::Acquire) < self.limit {
            return Ok(());
        }
        let wait = async {
            loop {
                let notified = self.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.queued.load(Ordering::Acquire) < self.limit {
                    return Ok(());
                }
                if let Some(err) = self.closed_reason() {
                    return Err(err);
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "write buffer stayed full ({} bytes) for {timeout:?}: the broker is slow or has blocked the connection",
                    self.limit
                ),
            ))
        })
    }

    /// Writer side: takes everything queued, leaving `spare` (emptied) in its place.
    /// Returns `Err` once closed and drained.
    pub(crate) fn take(&self, spare: &mut Vec<u8>) -> std::result::Result<(), Error> {
        spare.clear();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut st.buf, spare);
        self.queued.store(0, Ordering::Release);
        match &st.closed {
            Some(err) if spare.is_empty() => Err(err.clone()),
            _ => Ok(()),
        }
    }

    /// Writer side: the bytes taken are on the socket; wake waiting publishers.
    pub(crate) fn written(&self) {
        self.space.notify_waiters();
    }

    pub(crate) async fn writer_wait(&self) {
        self.wake_writer.notified().await;
    }

    /// Refuses further frames; what is queued is still written.
    pub(crate) fn close(&self, reason: Error) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        drop(st);
        self.wake_writer.notify_one();
        self.space.notify_waiters();
    }

    /// Drops whatever is queued (the socket is gone).
    pub(crate) fn discard(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.buf.clear();
        self.queued.store(0, Ordering::Release);
        drop(st);
        self.space.notify_waiters();
    }

    pub(crate) fn closed_reason(&self) -> Option<Error> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
            .clone()
    }
}
