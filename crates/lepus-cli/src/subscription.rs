//! A consumer on one queue that outlives connections: when its channel or connection dies,
//! it subscribes again on the client's next consuming connection.
//!
//! It runs on the engine directly (`basic.consume` with manual acks on a channel of the
//! client's consuming connection). The commands only see [`Subscription::next`] and
//! [`Subscription::close`], so moving them onto `lepus::Consumer` later touches this file
//! alone. Deliveries from a dead channel cannot be acknowledged (the engine refuses, the
//! broker redelivers them): callers count such errors and carry on.

use std::time::Duration;

use anyhow::bail;
use lepus::amqp::{ConsumeOptions, Consumer, Delivery};
use lepus::{Client, Role};
use tokio::time::Instant;

/// What waiting for a delivery produced.
// Returned and matched at once, never stored: boxing the delivery would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Next {
    /// A message.
    Delivery(Delivery),
    /// Nothing arrived within the idle time given to [`Subscription::next`].
    Idle,
}

/// Subscribing again waits at least this long, so a consumer the broker keeps cancelling
/// does not spin.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(100);
/// A subscription that ended sooner than this after it began doubles the next pause, up
/// to [`MAX_RESUBSCRIBE_PAUSE`]: a broker that cancels every new consumer at once (a queue
/// whose leader cannot be elected, a policy that keeps cancelling) sees a subscription
/// every few seconds, not ten a second. One that lived longer starts the pause over.
const SHORT_LIVED: Duration = Duration::from_secs(10);
const MAX_RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A resubscribing consumer on one queue.
pub(crate) struct Subscription {
    client: Client,
    queue: String,
    prefetch: u16,
    timeout: Duration,
    consumer: Option<Consumer>,
    subscribes: u64,
    no_ack: bool,
    /// When the live consumer subscribed.
    subscribed_at: Instant,
    /// The pause before the next resubscription (see [`SHORT_LIVED`]).
    pause: Duration,
}

impl Subscription {
    /// A subscription to `queue` with `prefetch` unacknowledged deliveries at most;
    /// `timeout` bounds each attempt to (re)subscribe.
    pub(crate) fn new(client: Client, queue: &str, prefetch: u16, timeout: Duration) -> Self {
        Self {
            client,
            queue: queue.to_owned(),
            prefetch,
            timeout,
            consumer: None,
            subscribes: 0,
            no_ack: false,
            subscribed_at: Instant::now(),
            pause: RESUBSCRIBE_PAUSE,
        }
    }

    /// Consume without acknowledgements (the broker forgets a message once sent).
    pub(crate) fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// How many times it subscribed (1 + resubscriptions). Read right after
    /// [`Subscription::next`] returned a delivery, it numbers the subscription (and so the
    /// channel) the delivery came on.
    pub(crate) fn subscribes(&self) -> u64 {
        self.subscribes
    }

    /// Subscribes now if not subscribed. Fails if the queue does not exist, access is
    /// refused, or no consuming connection comes within the timeout.
    pub(crate) async fn start(&mut self) -> anyhow::Result<()> {
        if self.consumer.is_none() {
            self.subscribe().await?;
        }
        Ok(())
    }

    /// The next delivery, subscribing again as needed; [`Next::Idle`] if a live consumer
    /// got nothing for `idle`. Errors only when subscribing again failed for good.
    ///
    /// Cancel-safe while a consumer is live; a cancelled resubscription starts over.
    pub(crate) async fn next(&mut self, idle: Duration) -> anyhow::Result<Next> {
        loop {
            let consumer = match self.consumer.as_mut() {
                Some(consumer) => consumer,
                None => {
                    tokio::time::sleep(self.pause).await;
                    self.subscribe().await?;
                    continue;
                }
            };
            match tokio::time::timeout(idle, consumer.next()).await {
                Err(_) => return Ok(Next::Idle),
                Ok(Some(Ok(delivery))) => return Ok(Next::Delivery(delivery)),
                Ok(Some(Err(err))) => {
                    eprintln!(
                        "lepus: consumer on '{}' stopped: {}; subscribing again",
                        self.queue,
                        lepus::error::report(&err)
                    );
                    self.ended();
                }
                Ok(None) => {
                    eprintln!(
                        "lepus: consumer on '{}' ended; subscribing again",
                        self.queue
                    );
                    self.ended();
                }
            }
        }
    }

    /// The live consumer ended: drop it and set the pause before the next one.
    fn ended(&mut self) {
        self.consumer = None;
        self.pause = next_pause(self.pause, self.subscribed_at.elapsed());
    }

    async fn subscribe(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_subscribe(left).await {
                Ok(consumer) => {
                    self.subscribes += 1;
                    self.consumer = Some(consumer);
                    self.subscribed_at = Instant::now();
                    return Ok(());
                }
                Err(err) if is_final(&err) => {
                    bail!(
                        "cannot consume from '{}': {}",
                        self.queue,
                        lepus::error::report(&err)
                    )
                }
                Err(err) => {
                    if Instant::now() + delay >= deadline {
                        bail!(
                            "could not subscribe to '{}' within {:?}: {}",
                            self.queue,
                            self.timeout,
                            lepus::error::report(&err)
                        );
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    async fn try_subscribe(&self, wait: Duration) -> lepus::Result<Consumer> {
        let live = self.client.connection(Role::Consume, wait).await?;
        let channel = live.connection.open_channel().await?;
        channel.basic_qos(self.prefetch, false).await?;
        let consumer = channel
            .basic_consume(
                &self.queue,
                ConsumeOptions {
                    no_ack: self.no_ack,
                    ..ConsumeOptions::default()
                },
            )
            .await?;
        Ok(consumer)
    }

    /// Cancels the consumer and closes its channel (the broker requeues whatever was not
    /// acknowledged). Bounded; errors are ignored, the broker cleans up either way.
    pub(crate) async fn close(mut self) {
        if let Some(mut consumer) = self.consumer.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, consumer.cancel()).await;
            let channel = consumer.channel().clone();
            drop(consumer);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
        }
    }
}

/// The pause after a subscription that lived `lived`, the last pause having been `last`.
fn next_pause(last: Duration, lived: Duration) -> Duration {
    if lived < SHORT_LIVED {
        last.saturating_mul(2).min(MAX_RESUBSCRIBE_PAUSE)
    } else {
        RESUBSCRIBE_PAUSE
    }
}

/// Errors that subscribing again cannot fix.
fn is_final(err: &lepus::Error) -> bool {
    err.is_not_found()
        || err.is_access_refused()
        || err.is_auth_failure()
        || matches!(
            err.kind(),
            lepus::ErrorKind::Failed | lepus::ErrorKind::Closed
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_cancelled_at_once_again_and_again_waits_longer_each_time_up_to_a_bound() {
        let mut pause = RESUBSCRIBE_PAUSE;
        let mut seen = Vec::new();
        for _ in 0..10 {
            pause = next_pause(pause, Duration::from_millis(5));
            seen.push(pause);
        }
        assert_eq!(seen.first(), Some(&Duration::from_millis(200)));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&MAX_RESUBSCRIBE_PAUSE));
    }

    #[test]
    fn a_consumer_that_lived_starts_the_pause_over() {
        assert_eq!(
            next_pause(MAX_RESUBSCRIBE_PAUSE, SHORT_LIVED + Duration::from_secs(1)),
            RESUBSCRIBE_PAUSE
        );
    }
}
