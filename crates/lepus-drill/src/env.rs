//! The drill's world: one [`Lab`] of three zones for the whole run, brought back to a
//! healthy cluster between scenarios, and the clients each scenario uses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lepus::{Client, ConnectionState, Queue, ReconnectPolicy, Role, Topology};
use lepus_testkit::Lab;
use lepus_testkit::proxy::FaultProxy;

/// Nodes (and zones) in the drill's cluster.
pub const NODES: usize = 3;
/// How long the client waits for one connection attempt (lepus's default is 10 s): a
/// blackholed node then costs a reconnect 3 s, not 10, before the next node is tried.
pub const CONNECT_TIMEOUT_MS: u32 = 3_000;
/// How long a healed cluster may take to see all nodes again before the nodes left out
/// are restarted.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster may take to be whole again between scenarios.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Classic or quorum: the queue a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A durable classic queue: it lives on one node.
    Classic,
    /// A quorum queue replicated on all three nodes.
    Quorum,
}

impl QueueKind {
    /// `classic` or `quorum`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
        }
    }
}

/// The lab, a fault proxy in front of each node, and the client settings of a run.
#[derive(Debug)]
pub struct Env {
    // Dropped first: their connections go before the nodes do.
    proxies: Vec<FaultProxy>,
    lab: Arc<Lab>,
    heartbeat: u16,
}

/// Runs a blocking lab operation off the async runtime.
pub async fn blocking<T: Send + 'static>(
    lab: &Arc<Lab>,
    op: impl FnOnce(&Lab) -> Result<T, lepus_testkit::Error> + Send + 'static,
) -> anyhow::Result<T> {
    let lab = Arc::clone(lab);
    Ok(tokio::task::spawn_blocking(move || op(&lab)).await??)
}

impl Env {
    /// Starts the lab (three zones, a node in each, clustered) and a fault proxy on
    /// 127.0.0.1 in front of each node.
    pub async fn start(heartbeat: u16) -> anyhow::Result<Env> {
        let lab = tokio::task::spawn_blocking(|| Lab::start(NODES))
            .await?
            .context("starting the lab (3 zones)")?;
        let mut proxies = Vec::new();
        for node in 0..NODES {
            let ip = lab
                .zone_ip(node)
                .with_context(|| format!("no zone {node}"))?;
            proxies.push(
                FaultProxy::start((ip, 5672).into())
                    .with_context(|| format!("a proxy in front of node {node}"))?,
            );
        }
        Ok(Env {
            proxies,
            lab: Arc::new(lab),
            heartbeat,
        })
    }

    /// The fault proxy in front of node `node`.
    pub fn proxy(&self, node: usize) -> anyhow::Result<&FaultProxy> {
        self.proxies
            .get(node)
            .with_context(|| format!("no proxy for node {node}"))
    }

    /// Every proxy, in node order.
    pub fn proxies(&self) -> &[FaultProxy] {
        &self.proxies
    }

    /// Every node's URL through its proxy, in node order.
    pub fn proxy_urls(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|p| {
                format!(
                    "amqp://guest:guest@{}/%2f?heartbeat={}&connection_timeout={CONNECT_TIMEOUT_MS}",
                    p.addr(),
                    self.heartbeat
                )
            })
            .collect()
    }

    /// The lab.
    pub fn lab(&self) -> &Arc<Lab> {
        &self.lab
    }

    /// Node `i`'s URL with the drill's heartbeat, straight across the bridge.
    pub fn url(&self, node: usize) -> anyhow::Result<String> {
        let ip = self
            .lab
            .zone_ip(node)
            .with_context(|| format!("no zone {node}"))?;
        Ok(format!(
            "amqp://guest:guest@{ip}:5672/%2f?heartbeat={}&connection_timeout={CONNECT_TIMEOUT_MS}",
            self.heartbeat
        ))
    }

    /// Every node's URL, in node order.
    pub fn urls(&self) -> anyhow::Result<Vec<String>> {
        (0..NODES).map(|i| self.url(i)).collect()
    }

    /// A client on `urls` declaring `topology`, reconnecting quickly (at most half a
    /// second apart).
    pub fn client(
        &self,
        name: &str,
        urls: &[String],
        topology: Topology,
    ) -> anyhow::Result<Client> {
        let mut builder = Client::builder().name(name).topology(topology).reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        );
        for url in urls {
            builder = builder.endpoint(url)?;
        }
        Ok(builder.build()?)
    }

    /// The `ip:port` the client connects to for each node, in node order: the node's
    /// own address, or its proxy's.
    pub fn hosts(&self, proxied: bool) -> Vec<String> {
        (0..NODES)
            .map(
                |i| match (proxied, self.proxies.get(i), self.lab.zone_ip(i)) {
                    (true, Some(proxy), _) => proxy.addr().to_string(),
                    (_, _, Some(ip)) => format!("{ip}:5672"),
                    _ => String::new(),
                },
            )
            .collect()
    }

    /// The node a connected `host` (`ip:port`, a node's or its proxy's) belongs to.
    pub fn node_of(&self, host: &str) -> Option<usize> {
        (0..NODES).find(|&i| {
            let direct = self
                .lab
                .zone_ip(i)
                .is_some_and(|ip| host.starts_with(&format!("{ip}:")));
            let proxied = self
                .proxies
                .get(i)
                .is_some_and(|p| host == p.addr().to_string());
            direct || proxied
        })
    }

    /// The node `client`'s `role` connection is on, once connected.
    pub async fn connected_node(&self, client: &Client, role: Role) -> anyhow::Result<usize> {
        let live = client.connection(role, Duration::from_secs(60)).await?;
        drop(live);
        match client.state(role) {
            ConnectionState::Connected { host } => self
                .node_of(&host)
                .with_context(|| format!("{host} is none of the lab's nodes")),
            other => bail!("{role:?} connection is {}", other.name()),
        }
    }

    /// Declares `queue` through a connection to node `leader` only, so that its leader
    /// (quorum) or its home (classic) is that node: the queue is deleted first, since
    /// the drill client's own topology has declared it already on whichever node it
    /// connected to. Returns the leader reported by the broker for a quorum queue.
    pub async fn declare(
        &self,
        queue: &str,
        kind: QueueKind,
        leader: usize,
    ) -> anyhow::Result<usize> {
        let url = self.url(leader)?;
        let mut builder = Client::builder()
            .name("drill-admin")
            .topology(Topology::new().queue(queue_def(queue, kind)));
        builder = builder.endpoint(&url)?;
        let admin = builder.build()?;
        let up = async {
            admin.wait_connected(Duration::from_secs(60)).await?;
            let channel = admin.channel().await?;
            channel.queue_delete(queue, Default::default()).await?;
            drop(channel);
            let report = admin.redeclare(Role::Publish).await?;
            if let Some(failure) = report.failures.first() {
                bail!("{failure}");
            }
            anyhow::Ok(())
        }
        .await;
        let _ = admin.close(Duration::from_secs(5)).await;
        up.with_context(|| format!("declaring {queue} on node {leader}"))?;
        if kind == QueueKind::Classic {
            return Ok(leader);
        }
        let name = queue.to_owned();
        let out = blocking(&self.lab, move |lab| {
            lab.node(leader)
                .ok_or_else(|| lepus_testkit::Error::State("no such node".into()))?
                .rabbitmqctl(&["-q", "list_queues", "name", "leader", "--no-table-headers"])
        })
        .await?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("{queue} not listed: {out}"))?;
        let node = line.split_whitespace().nth(1).unwrap_or_default();
        (0..NODES)
            .find(|&i| self.lab.node(i).is_some_and(|n| n.node_name() == node))
            .with_context(|| format!("leader {node} of {queue} is none of the lab's nodes"))
    }

    /// Back to a whole cluster: every proxy cleared, every cut healed, every node resumed and running, each
    /// seeing all three, each accepting connections.
    pub async fn settle(&self) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            proxy.clear();
        }
        blocking(&self.lab, |lab| {
            lab.heal()?;
            for zone in 0..NODES {
                let running = lab.node(zone).is_some_and(|n| n.is_running());
                if running {
                    lab.resume(zone)?;
                } else {
                    lab.restart(zone)?;
                }
            }
            if (0..NODES).all(|zone| lab.wait_running_nodes(zone, NODES, REJOIN_TIMEOUT).is_ok()) {
                return Ok(());
            }
            // A node frozen for longer than the tick time may stay outside the cluster
            // after it runs again; the majority's view says which: restart those.
            let majority = (0..NODES)
                .filter_map(|zone| lab.running_nodes_seen_by(zone).ok())
                .max_by_key(Vec::len)
                .unwrap_or_default();
            for zone in 0..NODES {
                let name = lab.node(zone).map(|n| n.node_name().to_owned());
                if name.is_some_and(|name| !majority.contains(&name)) {
                    eprintln!("drill: node {zone} did not rejoin; restarting it");
                    lab.restart(zone)?;
                }
            }
            for zone in 0..NODES {
                lab.wait_running_nodes(zone, NODES, SETTLE_TIMEOUT)?;
            }
            Ok(())
        })
        .await
        .context("bringing the cluster back to three running nodes")
    }
}

/// The queue a scenario publishes to and consumes from, as its clients declare it.
pub fn queue_def(queue: &str, kind: QueueKind) -> Queue {
    match kind {
        QueueKind::Classic => Queue::new(queue),
        QueueKind::Quorum => Queue::new(queue).quorum(),
    }
}
