//! `Client`: the supervised connections a service runs on.

pub mod env;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lepus_amqp::{ConnectionOptions, redact_uri};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::ReconnectPolicy;
use crate::error::{Error, ErrorKind, Result};
use crate::pool::{self, Pool, PooledChannel};
use crate::supervisor::{ConnectionState, Endpoint, Live, Plan, Supervised};
use crate::topology::{Names, Topology, TopologyReport};

/// Which of the client's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The connection publishers (and the channel pool) use.
    Publish,
    /// The connection consumers use.
    Consume,
}

/// Builds a [`Client`].
///
/// ```no_run
/// # async fn demo() -> lepus::Result<()> {
/// use std::time::Duration;
/// use lepus::{Client, Queue, ReconnectPolicy, Topology};
///
/// let client = Client::builder()
///     .endpoint("amqp://app:secret@rabbit-1:5672/%2f")?
///     .endpoint("amqp://app:secret@rabbit-2:5672/%2f")?
///     .reconnect(ReconnectPolicy::default().max_delay(Duration::from_secs(5)))
///     .topology(Topology::new().queue(Queue::new("orders")))
///     .build()?;
/// client.wait_connected(Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientBuilder {
    endpoints: Vec<Endpoint>,
    policy: ReconnectPolicy,
    topology: Topology,
    shared_connection: bool,
    pool_size: Option<usize>,
    acquire_timeout: Option<Duration>,
    leak_threshold: Option<Duration>,
    name: Option<String>,
}

impl ClientBuilder {
    /// Adds a broker by AMQP URI. Several endpoints are tried in random order.
    pub fn endpoint(mut self, uri: &str) -> Result<Self> {
        let opts = ConnectionOptions::from_uri(uri).map_err(|e| {
            Error::with_amqp(
                ErrorKind::Config,
                format!("bad endpoint {}", redact_uri(uri)),
                e,
            )
        })?;
        self.endpoints.push(Endpoint {
            options: opts,
            label: redact_uri(uri),
        });
        Ok(self)
    }

    /// Adds every broker of `uris` ([`endpoint`](Self::endpoint) for each), such as the
    /// nodes of a cluster. Several endpoints are tried in random order.
    pub fn endpoints<I>(mut self, uris: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for uri in uris {
            self = self.endpoint(uri.as_ref())?;
        }
        Ok(self)
    }

    /// Adds a broker by options (shared credentials and TLS across hosts, say).
    pub fn endpoint_options(mut self, options: ConnectionOptions) -> Self {
        let label = format!("{}/{}", options.address(), options.vhost());
        self.endpoints.push(Endpoint { options, label });
        self
    }

    /// How to reconnect (also used for the first connect).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// What to declare on every connect. Declare the queues you publish to here: a
    /// connection on which such a queue is unavailable (its node is down, see
    /// [`Error::is_queue_unavailable`]) is not used; the client retries, and publishes
    /// wait, until the queue's node is back. Other failed declarations are reported
    /// ([`Client::topology_report`]) and the connection is used.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// Publish and consume over one connection instead of two. Off by default: with one
    /// connection, a broker blocking publishers also stalls acks and deliveries.
    pub fn shared_connection(mut self, shared: bool) -> Self {
        self.shared_connection = shared;
        self
    }

    /// Channels in the pool (default [`pool::DEFAULT_POOL_SIZE`]).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = Some(size);
        self
    }

    /// How long acquiring a pooled channel may wait.
    pub fn pool_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }

    /// A pooled channel held longer than this is logged as a possible leak.
    pub fn pool_leak_threshold(mut self, threshold: Duration) -> Self {
        self.leak_threshold = Some(threshold);
        self
    }

    /// The name the broker shows for this client's connections (suffixed with the role).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Validates and starts supervising (in the background; this does not wait for a
    /// connection: see [`Client::wait_connected`]). Must be called within a tokio runtime.
    pub fn build(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "a client needs at least one endpoint",
            ));
        }
        self.topology.validate()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let names = Names::default();
        let spawn = |role: &'static str, exclusive: bool| {
            let sup = Supervised::new(self.name.as_deref().unwrap_or("default"), role);
            let endpoints = self
                .endpoints
                .iter()
                .map(|e| match &self.name {
                    Some(name) => Endpoint {
                        options: e
                            .options
                            .clone()
                            .connection_name(format!("{name} ({role})")),
                        label: e.label.clone(),
                    },
                    None => e.clone(),
                })
                .collect();
            let plan = Plan {
                endpoints,
                policy: self.policy.clone(),
                topology: self.topology.clone(),
                names: names.clone(),
                exclusive,
            };
            tracker.spawn(Arc::clone(&sup).run(plan, cancel.clone()));
            sup
        };
        let (publish, consume) = if self.shared_connection {
            let one = spawn("shared", true);
            (Arc::clone(&one), one)
        } else {
            (spawn("publish", false), spawn("consume", true))
        };
        tracker.close();
        let pool = Pool::new(
            Arc::clone(&publish),
            self.pool_size.unwrap_or(pool::DEFAULT_POOL_SIZE),
            self.acquire_timeout
                .unwrap_or(pool::DEFAULT_ACQUIRE_TIMEOUT),
            self.leak_threshold.unwrap_or(pool::DEFAULT_LEAK_THRESHOLD),
        );
        Ok(Client {
            inner: Arc::new(Inner {
                publish,
                consume,
                pool,
                names,
                topology: self.topology,
                cancel,
                tracker,
            }),
        })
    }
}

struct Inner {
    publish: Arc<Supervised>,
    consume: Arc<Supervised>,
    pool: Arc<Pool>,
    names: Names,
    topology: Topology,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Supervisor tasks see this and close their connections; none outlives the client.
        self.cancel.cancel();
    }
}

/// Supervised connections to one broker or cluster: reconnects with backoff and jitter,
/// fails fast on errors retrying cannot fix, redeclares the topology on every connect.
/// Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("publish", &*self.inner.publish.state.borrow())
            .field("consume", &*self.inner.consume.state.borrow())
            .finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn sup(&self, role: Role) -> &Arc<Supervised> {
        match role {
            Role::Publish => &self.inner.publish,
            Role::Consume => &self.inner.consume,
        }
    }

    /// The current state of one connection.
    pub fn state(&self, role: Role) -> ConnectionState {
        self.sup(role).state.borrow().clone()
    }

    /// The last failure of `role`'s connection (a refused connect, naming each endpoint
    /// and how it failed, or a lost connection), kept after it reconnects; `None` if it
    /// never failed.
    pub fn last_error(&self, role: Role) -> Option<Error> {
        self.sup(role)
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Watches one connection's state.
    pub fn watch_state(&self, role: Role) -> watch::Receiver<ConnectionState> {
        self.sup(role).state.subscribe()
    }

    /// Waits until both connections are up, or fails if either gives up.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let deadline = crate::deadline::deadline_after(timeout);
        for role in [Role::Publish, Role::Consume] {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.sup(role).live(left).await?;
        }
        Ok(())
    }

    /// The live connection for `role`, waiting up to `timeout` for one.
    pub async fn connection(&self, role: Role, timeout: Duration) -> Result<Live> {
        self.sup(role).live(timeout).await
    }

    /// Watches the live connection for `role` (`None` while reconnecting).
    pub fn watch_connection(&self, role: Role) -> watch::Receiver<Option<Live>> {
        self.sup(role).current.subscribe()
    }

    /// A channel from the pool, for short operations. Waits up to the pool's acquire
    /// timeout for a free channel and a live connection.
    pub async fn channel(&self) -> Result<PooledChannel> {
        self.inner.pool.acquire().await
    }

    /// The real name of a queue: for a server-named queue, the name the broker gave it on
    /// the current connection; otherwise the name itself.
    pub fn queue_name(&self, name: &str) -> String {
        self.inner.names.resolve(name)
    }

    /// Whether a server-named queue `alias` has been declared yet.
    pub fn has_queue_name(&self, alias: &str) -> bool {
        self.inner.names.get(alias).is_some()
    }

    /// The outcome of the last topology declaration on `role`'s connection.
    pub fn topology_report(&self, role: Role) -> TopologyReport {
        self.sup(role)
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Declares the topology again on `role`'s current connection (after a server-side
    /// cancel, say, when a queue was deleted under a consumer).
    pub async fn redeclare(&self, role: Role) -> Result<TopologyReport> {
        let sup = self.sup(role);
        let live = sup.live(self.inner.pool.acquire_timeout).await?;
        let exclusive =
            role == Role::Consume || Arc::ptr_eq(&self.inner.publish, &self.inner.consume);
        let report = crate::topology::declare(
            &live.connection,
            &self.inner.topology,
            &self.inner.names,
            exclusive,
        )
        .await?;
        sup.set_report(report.clone());
        Ok(report)
    }

    /// The declared topology.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Connection attempts made so far on `role`'s connection (successful or not).
    pub fn connect_attempts(&self, role: Role) -> u64 {
        self.sup(role).stats.attempts.load(Ordering::Relaxed)
    }

    /// Successful connects so far on `role`'s connection.
    pub fn connects(&self, role: Role) -> u64 {
        self.sup(role).stats.connects.load(Ordering::Relaxed)
    }

    /// A token cancelled when the client closes; tasks built on the client stop with it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// Closes both connections gracefully and waits (up to `timeout`) for the
    /// supervisors to stop.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        self.inner.cancel.cancel();
        match tokio::time::timeout(timeout, self.inner.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("the client did not close within {timeout:?}"),
            )),
        }
    }
}
