//! Health: is the service alive, is it ready, and if not, why.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::client::{Client, Role};
use crate::consumer::{Consumer, ConsumerStats};
use crate::publisher::Publisher;
use crate::supervisor::ConnectionState;

/// A snapshot of a service's messaging health.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthReport {
    /// False only once the client has given up (`Failed`) or closed: restart me.
    pub live: bool,
    /// Both connections up and every watched consumer subscribed: send me work.
    pub ready: bool,
    /// The publishing connection's state.
    pub publish_connection: String,
    /// The consuming connection's state.
    pub consume_connection: String,
    /// Watched consumers currently subscribed.
    pub consumers_active: usize,
    /// Watched consumers.
    pub consumers_expected: usize,
    /// Whether the broker blocks the publishing connection (memory or disk alarm).
    pub blocked: bool,
    /// Messages waiting in watched publishers' buffers.
    pub publish_buffer_depth: usize,
    /// The last connection error, while not connected.
    pub last_error: Option<String>,
}

/// Watches a client and the consumers and publishers built on it.
#[derive(Clone)]
pub struct Health {
    client: Client,
    consumers: Arc<Mutex<Vec<Arc<ConsumerStats>>>>,
    publishers: Arc<Mutex<Vec<Publisher>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("report", &self.report())
            .finish()
    }
}

impl Health {
    /// Health of `client`.
    pub fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            consumers: Arc::default(),
            publishers: Arc::default(),
        }
    }

    /// Counts `consumer` among those that must be subscribed for readiness.
    pub fn watch_consumer(&self, consumer: &Consumer) -> &Self {
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer.stats());
        self
    }

    /// Reports `publisher`'s buffer depth.
    pub fn watch_publisher(&self, publisher: &Publisher) -> &Self {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(publisher.clone());
        self
    }

    /// The current report.
    pub fn report(&self) -> HealthReport {
        let publish = self.client.state(Role::Publish);
        let consume = self.client.state(Role::Consume);
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        let active = consumers
            .iter()
            .filter(|c| c.active.load(Ordering::Relaxed))
            .count();
        let depth = self
            .publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.stats().snapshot().buffered)
            .sum();
        let blocked = self
            .client
            .watch_connection(Role::Publish)
            .borrow()
            .as_ref()
            .is_some_and(|live| live.connection.blocked().borrow().is_some());
        let last_error = [&publish, &consume].into_iter().find_map(|s| match s {
            ConnectionState::Reconnecting { last_error, .. } => Some(last_error.to_string()),
            ConnectionState::Failed(e) => Some(e.to_string()),
            _ => None,
        });
        HealthReport {
            live: !publish.is_terminal() && !consume.is_terminal(),
            ready: publish.is_connected() && consume.is_connected() && active == consumers.len(),
            publish_connection: publish.name().to_owned(),
            consume_connection: consume.name().to_owned(),
            consumers_active: active,
            consumers_expected: consumers.len(),
            blocked,
            publish_buffer_depth: depth,
            last_error,
        }
    }
}
