//! The handlers in flight, and how a session learns of shutdown without a lock per turn.
//!
//! At concurrency 1 (the default) one handler runs at a time, so its future does not need
//! a box and a task node of its own per message: it is built in place in one slot that
//! the session allocates once and reuses for every message. At higher concurrency the
//! futures go through a `FuturesUnordered`, which wakes only the ones that can progress.
//!
//! The slot's future type is erased behind a trait object made in a generic function,
//! never stored by its concrete type in the session's own future: a handler's future may
//! name higher-ranked lifetimes (a closure over borrowed state), and the compiler then
//! cannot prove the session's future `Send` for it ("implementation of `Send` is not
//! general enough"). Erased here, the proof is made once, generically, as the boxed
//! `FuturesUnordered` entries always made it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use super::Handler;
use super::invocation::Invocation;
use super::session::{Done, Running};

/// One handler future, rebuilt in place for each message.
trait Slot<H>: Send {
    /// Starts `call` (the slot is empty).
    fn start(&mut self, call: Invocation<H>);
    /// Polls the running call; `Ready(None)` when there is none.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>>;
}

struct Reused<F, M> {
    make: M,
    future: Pin<Box<Option<F>>>,
}

impl<H, F, M> Slot<H> for Reused<F, M>
where
    M: Fn(Invocation<H>) -> F + Send,
    F: Future<Output = Done> + Send,
{
    fn start(&mut self, call: Invocation<H>) {
        self.future.set(Some((self.make)(call)));
    }

    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        let Some(running) = self.future.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let done = std::task::ready!(running.poll(cx));
        self.future.set(None);
        Poll::Ready(Some(done))
    }
}

fn reused<H, F, M>(make: M) -> Reused<F, M>
where
    M: Fn(Invocation<H>) -> F,
{
    Reused {
        make,
        future: Box::pin(None),
    }
}

/// The invocation as one future, inside the message's span.
fn instrumented<H: Handler>(call: Invocation<H>) -> impl Future<Output = Done> + Send {
    let span = call.span.clone();
    call.run().instrument(span)
}

enum Kind<H> {
    One(Box<dyn Slot<H>>),
    Many(FuturesUnordered<Running>),
}

/// The handlers running now.
pub(super) struct InFlight<H> {
    kind: Kind<H>,
    len: usize,
}

impl<H: Handler> InFlight<H> {
    pub(super) fn new(concurrency: usize) -> Self {
        let kind = if concurrency <= 1 {
            Kind::One(Box::new(reused(instrumented::<H>)))
        } else {
            Kind::Many(FuturesUnordered::new())
        };
        Self { kind, len: 0 }
    }

    /// Starts a handler; the caller keeps to the concurrency (one at a time for a
    /// consumer built with concurrency 1).
    pub(super) fn start(&mut self, call: Invocation<H>) {
        match &mut self.kind {
            Kind::One(slot) => slot.start(call),
            Kind::Many(running) => running.push(Box::pin(instrumented(call))),
        }
        self.len += 1;
    }

    /// Handlers running.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The next handler to finish; `Ready(None)` when none runs.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        let done = match &mut self.kind {
            Kind::One(slot) => std::task::ready!(slot.poll_done(cx)),
            Kind::Many(running) => std::task::ready!(running.poll_next_unpin(cx)),
        };
        if done.is_some() {
            self.len -= 1;
        }
        Poll::Ready(done)
    }

    /// Waits for the next handler to finish.
    pub(super) async fn next(&mut self) -> Option<Done> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls the handlers once: what finished now, without waiting.
    pub(super) async fn ready(&mut self) -> Option<Done> {
        std::future::poll_fn(|cx| match self.poll_next(cx) {
            Poll::Ready(done) => Poll::Ready(done),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}

/// Whether the shutdown token was cancelled, readable every turn of the session's loop
/// for the price of an atomic load (`CancellationToken::is_cancelled` takes a lock).
///
/// The token's wait is polled once with a waker of its own, which raises a flag before
/// it wakes the session's task. Cancelling a token wakes its waiters before `cancel`
/// returns, so a handler that cancels the token sees the session stop taking deliveries
/// right after it.
pub(super) struct CancelWatch {
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    signal: Arc<Signal>,
    waker: Option<Waker>,
    fired: bool,
}

#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

impl CancelWatch {
    pub(super) fn new(token: &CancellationToken) -> Self {
        Self {
            wait: Box::pin(token.clone().cancelled_owned()),
            signal: Arc::new(Signal::default()),
            waker: None,
            fired: false,
        }
    }

    /// Whether cancellation has been seen (an atomic load; no waker registered).
    pub(super) fn is_cancelled(&self) -> bool {
        self.fired || self.signal.raised.load(Ordering::Acquire)
    }

    /// Ready once the token is cancelled; wakes the polling task when it is.
    pub(super) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        let first = self.waker.is_none();
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *self.signal.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            self.waker = Some(cx.waker().clone());
        }
        // A load first: the swap (a locked instruction) only once the flag is up.
        if first
            || (self.signal.raised.load(Ordering::Acquire)
                && self.signal.raised.swap(false, Ordering::AcqRel))
        {
            let waker = Waker::from(Arc::clone(&self.signal));
            if self
                .wait
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                self.fired = true;
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Waits for the token's cancellation.
    pub(super) async fn cancelled(&mut self) {
        std::future::poll_fn(|cx| self.poll_cancelled(cx)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn noop_context() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn a_cancel_watch_sees_cancellation_before_cancel_returns_and_stays_ready() {
        let token = CancellationToken::new();
        let child = token.child_token();
        let mut watch = CancelWatch::new(&child);
        let mut cx = noop_context();
        assert!(watch.poll_cancelled(&mut cx).is_pending());
        assert!(!watch.is_cancelled());
        // Polled again with no cancellation: still pending, still not cancelled.
        assert!(watch.poll_cancelled(&mut cx).is_pending());
        assert!(!watch.is_cancelled());
        token.cancel();
        // Seen at once, without polling: the flag is raised by the token's wake-up.
        assert!(watch.is_cancelled());
        assert!(watch.poll_cancelled(&mut cx).is_ready());
        assert!(watch.poll_cancelled(&mut cx).is_ready());
        assert!(watch.is_cancelled());
    }

    #[test]
    fn a_cancel_watch_wakes_the_task_that_polled_it_last() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let token = CancellationToken::new();
        let mut watch = CancelWatch::new(&token);
        let first = Arc::new(Count(Default::default()));
        let second = Arc::new(Count(Default::default()));
        let w1 = Waker::from(Arc::clone(&first));
        let w2 = Waker::from(Arc::clone(&second));
        assert!(
            watch
                .poll_cancelled(&mut Context::from_waker(&w1))
                .is_pending()
        );
        assert!(
            watch
                .poll_cancelled(&mut Context::from_waker(&w2))
                .is_pending()
        );
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_already_cancelled_token_is_ready_on_the_first_poll() {
        let token = CancellationToken::new();
        token.cancel();
        let mut watch = CancelWatch::new(&token);
        assert!(watch.poll_cancelled(&mut noop_context()).is_ready());
        assert!(watch.is_cancelled());
    }
}
