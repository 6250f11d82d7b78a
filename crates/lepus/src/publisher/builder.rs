//! Building a publisher: the client it publishes through and its options, set one by
//! one, the way a consumer is built.

use std::time::Duration;

use super::{Publisher, PublisherOptions};
use crate::client::Client;

/// Builds a [`Publisher`]: [`Publisher::builder`], the setters, then [`build`](Self::build).
/// Every setter is the [`PublisherOptions`] method of the same name.
///
/// ```no_run
/// # async fn demo(client: lepus::Client) -> Result<(), lepus::PublishError> {
/// use std::time::Duration;
/// use lepus::{Message, Publisher};
///
/// let publisher = Publisher::builder(&client)
///     .mandatory(true)
///     .publish_timeout(Duration::from_secs(10))
///     .build();
/// publisher.publish(Message::new("shop", "order.created", r#"{"id":1}"#)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct PublisherBuilder {
    client: Client,
    options: PublisherOptions,
}

impl PublisherBuilder {
    pub(super) fn new(client: &Client) -> PublisherBuilder {
        PublisherBuilder {
            client: client.clone(),
            options: PublisherOptions::default(),
        }
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: PublisherOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`PublisherOptions::window`].
    pub fn window(mut self, window: usize) -> Self {
        self.options = self.options.window(window);
        self
    }

    /// See [`PublisherOptions::buffer`].
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.options = self.options.buffer(buffer);
        self
    }

    /// See [`PublisherOptions::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.publish_timeout(timeout);
        self
    }

    /// See [`PublisherOptions::mandatory`].
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.options = self.options.mandatory(mandatory);
        self
    }

    /// See [`PublisherOptions::nack_retries`].
    pub fn nack_retries(mut self, retries: u32) -> Self {
        self.options = self.options.nack_retries(retries);
        self
    }

    /// See [`PublisherOptions::stall_timeout`].
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.stall_timeout(timeout);
        self
    }

    /// Starts the publisher on the client's publishing connection.
    pub fn build(self) -> Publisher {
        Publisher::new(&self.client, self.options)
    }
}
