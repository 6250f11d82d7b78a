//! All three services in one process, each with its own lepus client and its own store,
//! talking to each other only through the broker (`shop all`, the demo, the tests).

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::inventory::{InventoryOptions, InventoryService};
use crate::notify::{NotifyOptions, NotifyService};
use crate::order::OrderService;
use crate::service::Common;

/// Where the three services listen and how they behave.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Broker, names, data directory.
    pub common: Common,
    /// The order API.
    pub order_listen: SocketAddr,
    /// The inventory service's admin and health API.
    pub inventory_listen: SocketAddr,
    /// The notification service's health API.
    pub notify_listen: SocketAddr,
    /// Inventory settings.
    pub inventory: InventoryOptions,
    /// Notification settings.
    pub notify: NotifyOptions,
}

/// The three services running.
pub struct System {
    /// The order service.
    pub order: OrderService,
    /// The inventory service.
    pub inventory: InventoryService,
    /// The notification service.
    pub notify: NotifyService,
    /// The configuration it runs with.
    pub config: SystemConfig,
}

impl System {
    /// Starts the services (consumers first, so their queues exist before orders flow).
    pub async fn start(config: SystemConfig, cancel: &CancellationToken) -> anyhow::Result<System> {
        let notify = NotifyService::start(
            &config.common,
            config.notify,
            config.notify_listen,
            cancel.child_token(),
        )
        .await?;
        let inventory = InventoryService::start(
            &config.common,
            config.inventory,
            config.inventory_listen,
            cancel.child_token(),
        )
        .await?;
        let order =
            OrderService::start(&config.common, config.order_listen, cancel.child_token()).await?;
        Ok(System {
            order,
            inventory,
            notify,
            config,
        })
    }

    /// Whether every client is connected and every consumer subscribed.
    pub fn ready(&self) -> bool {
        self.inventory.ready() && self.notify.ready() && self.order.ready()
    }

    /// Successful connects so far of every connection of every service (order's one,
    /// inventory's two, notify's two): each grows by one when its connection comes back.
    pub fn connects(&self) -> Vec<u64> {
        use lepus::Role::{Consume, Publish};
        vec![
            self.order.client.connects(Publish),
            self.inventory.client.connects(Publish),
            self.inventory.client.connects(Consume),
            self.notify.client.connects(Publish),
            self.notify.client.connects(Consume),
        ]
    }

    /// Whether every connection has connected again since `before` (from
    /// [`System::connects`]) and the system is ready.
    pub fn recovered_since(&self, before: &[u64]) -> bool {
        self.ready()
            && self
                .connects()
                .iter()
                .zip(before)
                .all(|(now, was)| now > was)
    }

    /// Waits until [`System::ready`], at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ready() {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("the services were not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the order API first, then the consumers.
    pub async fn stop(self) {
        self.order.stop().await;
        self.inventory.stop().await;
        self.notify.stop().await;
    }
}
