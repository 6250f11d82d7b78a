//! What the three services share: where the broker is, where the stores are, and how a
//! service gets its own lepus client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lepus::{Client, ConnectionState, ReconnectPolicy, Role, Topology};

use crate::topology::Names;

/// Settings common to every service.
#[derive(Debug, Clone)]
pub struct Common {
    /// AMQP URLs of the broker (several for a cluster).
    pub amqp_urls: Vec<String>,
    /// Exchange and queue names.
    pub names: Names,
    /// Declare every queue (work, wait and dead-letter queues) as a quorum queue (use on
    /// a cluster); classic otherwise.
    pub quorum: bool,
    /// Where the services' SQLite files live (`order.db`, `inventory.db`, `notify.db`)
    /// when no database URL is given.
    pub data_dir: PathBuf,
    /// The services' database (`--database-url`): a PostgreSQL URL or a SQLite path;
    /// `{service}` in it stands for the service's name (`order`, `inventory`,
    /// `notify`), so one URL serves several services. None: SQLite files in `data_dir`.
    pub database_url: Option<String>,
}

impl Common {
    /// The type of every queue the services declare: quorum when [`Common::quorum`].
    pub fn queue_type(&self) -> lepus::QueueType {
        if self.quorum {
            lepus::QueueType::Quorum
        } else {
            lepus::QueueType::Classic
        }
    }

    /// Settings for a broker at `amqp_urls`, stores in SQLite files under `data_dir`.
    pub fn new(amqp_urls: Vec<String>, names: Names, data_dir: PathBuf) -> Common {
        Common {
            amqp_urls,
            names,
            quorum: false,
            data_dir,
            database_url: None,
        }
    }

    /// Where service `service` keeps its store (a URL or a SQLite path, see
    /// [`crate::db::Location`]).
    pub fn database(&self, service: &str) -> String {
        match &self.database_url {
            Some(url) => url.replace("{service}", service),
            None => self
                .data_dir
                .join(format!("{service}.db"))
                .display()
                .to_string(),
        }
    }

    /// The order service's database file.
    pub fn order_db(&self) -> PathBuf {
        self.data_dir.join("order.db")
    }

    /// The inventory service's database file.
    pub fn inventory_db(&self) -> PathBuf {
        self.data_dir.join("inventory.db")
    }

    /// The notification service's database file.
    pub fn notify_db(&self) -> PathBuf {
        self.data_dir.join("notify.db")
    }

    /// A lepus client of its own for service `name`: reconnects forever with a short
    /// backoff (a broker restart should cost seconds, not minutes) and declares
    /// `topology` on every connect.
    pub fn client(&self, name: &str, topology: Topology, shared: bool) -> anyhow::Result<Client> {
        let mut builder = Client::builder()
            .name(format!("shop-{name}"))
            .reconnect(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(2)),
            )
            .topology(topology)
            .shared_connection(shared);
        for url in &self.amqp_urls {
            builder = builder
                .endpoint(url)
                .with_context(|| format!("bad AMQP URL for {name}"))?;
        }
        builder
            .build()
            .with_context(|| format!("building the lepus client of {name}"))
    }
}

/// One connection's state as the dashboard and health pages show it.
pub fn connection_state(client: &Client, role: Role) -> String {
    match client.state(role) {
        ConnectionState::Reconnecting { attempt, .. } => {
            format!("Reconnecting (attempt {attempt})")
        }
        other => other.name().to_string(),
    }
}

/// Publishes `shop_connection_up{service,role}` (1 while connected) until `cancel`.
pub fn spawn_connection_gauges(
    client: Client,
    service: &'static str,
    roles: &'static [(Role, &'static str)],
    cancel: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    for (role, label) in roles {
                        let up = if client.state(*role).is_connected() { 1.0 } else { 0.0 };
                        metrics::gauge!("shop_connection_up", "service" => service, "role" => *label).set(up);
                    }
                }
            }
        }
    })
}

/// Waits for `tasks` to end, at most `timeout` in all; the rest are aborted.
pub async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}
