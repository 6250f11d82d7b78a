//! One message's handling: the idempotency check, the handler (retried in process), the
//! record of a success.
//!
//! A handler is user code. It may panic in its synchronous part (a closure that panics
//! before it returns its future) as well as while its future is polled; both are caught
//! and count as a transient failure of that message, like a timeout. A store that may
//! block is called on tokio's blocking pool, so it never stalls the consumer's task.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::session::Done;
use super::{ConsumerStats, Handler, Incoming, Outcome};
use crate::error::{Error, ErrorKind};
use crate::idempotency::IdempotencyStore;
use crate::observability::metrics::ConsumeMetrics;
use crate::observability::trace;

/// The `handle` span of one message, child of the trace in its headers.
pub(super) fn handle_span(queue: &str, incoming: &Incoming) -> tracing::Span {
    let span = tracing::info_span!(
        "handle",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation = "process",
        messaging.source.name = queue,
        messaging.message.id = incoming.message_id().unwrap_or_default(),
        messaging.rabbitmq.destination.routing_key = incoming.routing_key(),
        attempt = incoming.attempt(),
    );
    trace::extract_into(&span, incoming.headers());
    span
}

/// Whether the store has seen `id`; a store that fails is logged and the message handled.
pub(super) async fn seen(store: &Arc<dyn IdempotencyStore>, id: &str) -> bool {
    let result = if store.is_blocking() {
        let (store, id) = (Arc::clone(store), id.to_owned());
        tokio::task::spawn_blocking(move || store.contains(&id))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    } else {
        store.contains(id)
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e.report(), "idempotency store lookup failed; handling the message");
        false
    })
}

/// Records `id` as handled; a failure is logged (the message is still acked: its side
/// effects happened).
pub(super) async fn remember(store: &Arc<dyn IdempotencyStore>, id: &str) {
    let result = if store.is_blocking() {
        let (store, id) = (Arc::clone(store), id.to_owned());
        tokio::task::spawn_blocking(move || store.insert(&id))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    } else {
        store.insert(id)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e.report(), "idempotency store insert failed");
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::with_source(
        ErrorKind::Storage,
        "idempotency store call did not complete",
        e,
    )
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// What every invocation of one session shares: one reference count per message
/// instead of a copy of each handle.
pub(super) struct Calls<H> {
    pub(super) handler: Arc<H>,
    pub(super) immediate: u32,
    pub(super) timeout: Duration,
    pub(super) stats: Arc<ConsumerStats>,
    pub(super) metrics: Arc<ConsumeMetrics>,
    pub(super) store: Option<Arc<dyn IdempotencyStore>>,
}

/// One message's handling.
pub(super) struct Invocation<H> {
    pub(super) calls: Arc<Calls<H>>,
    pub(super) incoming: Incoming,
    pub(super) span: tracing::Span,
    /// When the message was taken: the first attempt's start (a clock read the session
    /// made anyway).
    pub(super) started: Instant,
}

impl<H: Handler> Invocation<H> {
    pub(super) async fn run(self) -> Done {
        let Invocation {
            calls,
            incoming,
            span,
            started,
        } = self;
        let Calls {
            handler,
            immediate,
            timeout,
            stats,
            metrics,
            store,
        } = &*calls;
        let (immediate, timeout) = (*immediate, *timeout);
        let mut started = Some(started);
        if let (Some(store), Some(id)) = (store, incoming.message_id()) {
            if seen(store, id).await {
                return Done::Skipped { incoming };
            }
            // The lookup may have taken a while: the handler's clock starts after it.
            started = None;
        }
        let mut failures = 0u32;
        loop {
            let started = started.take().unwrap_or_else(Instant::now);
            let mut this_attempt = incoming.clone();
            this_attempt.attempt = incoming.attempt.saturating_add(failures);
            // The call itself is user code too: a closure may panic before it returns
            // its future.
            let call = std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(this_attempt)));
            let result = match call {
                Ok(future) => {
                    // Most handlers finish on their first poll: the timer is built only
                    // for one that does not, with the deadline counted from the start.
                    let mut call = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
                    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx)));
                    match first.await {
                        Poll::Ready(done) => Ok(done),
                        Poll::Pending => {
                            let deadline = crate::deadline::deadline_from(started, timeout);
                            tokio::time::timeout_at(deadline, call).await
                        }
                    }
                }
                Err(panic) => Ok(Err(panic)),
            };
            let mut finished = Instant::now();
            metrics
                .duration
                .record(finished.saturating_duration_since(started).as_secs_f64());
            let outcome = match result {
                Ok(Ok(outcome)) => {
                    if outcome != Outcome::Ack {
                        metrics.errors.increment(1);
                    }
                    outcome
                }
                Ok(Err(panic)) => {
                    stats.panics.fetch_add(1, Ordering::Relaxed);
                    metrics.panics.increment(1);
                    let text = panic_text(panic.as_ref());
                    tracing::error!(message_id = ?incoming.message_id(), panic = %text, "handler panicked");
                    Outcome::Retry(format!("handler panicked: {text}"))
                }
                Err(_) => {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics.timeouts.increment(1);
                    tracing::warn!(message_id = ?incoming.message_id(), ?timeout, "handler timed out");
                    Outcome::Retry(format!("handler timed out after {timeout:?}"))
                }
            };
            let last = match &outcome {
                Outcome::Ack => true,
                Outcome::DeadLetter(_) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    true
                }
                Outcome::Retry(_) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    failures > immediate
                }
            };
            if last {
                // Recorded before the ack: a redelivery after a lost ack is recognised.
                if outcome == Outcome::Ack
                    && let (Some(store), Some(id)) = (store, incoming.message_id())
                {
                    remember(store, id).await;
                    // The store may have taken a while: `finished` says when the session
                    // got the message back (the next one's start may reuse it).
                    finished = Instant::now();
                }
                return Done::Handled {
                    incoming,
                    outcome,
                    failures,
                    span,
                    finished,
                };
            }
        }
    }
}
