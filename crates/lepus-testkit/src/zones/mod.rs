//! Zones: a RabbitMQ cluster whose nodes live in separate network namespaces, so that
//! network faults (a zone cut off, two zones that no longer see each other) can be made
//! for real, not only process faults.
//!
//! Real deployments spread a cluster over zones, and the faults that hurt them are
//! partitions: a node that still runs but cannot reach the others. On one machine a zone
//! is a Linux network namespace with its own address on a private bridge made for the
//! lab (`10.213.<n>.0/24`, never any other address). The test process itself stays in the
//! root namespace and sits on the bridge with an address of its own
//! ([`Lab::host_ip`]): a client it runs in-process connects to the nodes across the
//! bridge, so it can be cut off from them like a zone ([`Endpoint::Host`]). Client
//! processes can also get zones of their own ([`LabBuilder::client_zones`],
//! [`Lab::command_in`]).
//!
//! Nodes let `guest` log in from the bridge (`loopback_users.guest = false`), and run
//! with `cluster_partition_handling = pause_minority` and a short Erlang
//! `net_ticktime` (default [`DEFAULT_NET_TICKTIME`] seconds), so a node cut off from the
//! majority notices within seconds and stops serving clients until it sees the majority
//! again.
//!
//! Needs root (namespaces, links) and `ip` from iproute2. Dropping the [`Lab`] kills
//! the nodes and every process left in its namespaces and removes namespaces, links and
//! routes, also when a test fails; a lab left by a killed process is removed by the next
//! one (or [`cleanup_stale`]).

mod net;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

pub(crate) use net::ip_program;
pub use net::{Endpoint, STATE_DIR, cleanup_stale};

use crate::broker::{Broker, BrokerBuilder, random_cookie};
use crate::cluster::{self, Cluster};
use crate::error::Error;
use crate::node::Placement;

/// Erlang's `net_ticktime` for lab nodes unless set otherwise: a cut-off node is seen as
/// down after 5 to 6.25 seconds (RabbitMQ's default, 60 s, would make every partition
/// test wait a minute).
pub const DEFAULT_NET_TICKTIME: u32 = 5;

/// A cluster with one node per zone, each zone its own network namespace on a private
/// bridge. Dropping it removes everything it made.
///
/// All methods block; call them from `tokio::task::spawn_blocking` inside async tests.
///
/// ```no_run
/// # fn main() -> Result<(), lepus_testkit::Error> {
/// use lepus_testkit::{Endpoint, Lab};
/// let lab = Lab::start(3)?;
/// let urls = lab.urls(); // amqp://guest:guest@10.213.n.11:5672/%2f, ...
/// lab.isolate(2)?; // zone 2's link down: node 2 pauses (pause_minority)
/// lab.heal()?;
/// lab.cut(Endpoint::Host, Endpoint::Zone(0))?; // this process no longer reaches node 0
/// lab.heal()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Lab {
    // Dropped first: the nodes are killed before their namespaces go.
    cluster: Cluster,
    net: net::Network,
}

/// Options for a [`Lab`], from [`Lab::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LabBuilder {
    nodes: usize,
    client_zones: usize,
    broker: BrokerBuilder,
    net_ticktime: u32,
}

impl LabBuilder {
    /// Adds `n` zones without a node, for client processes ([`Lab::command_in`]); they
    /// come after the nodes' zones. Default: none.
    pub fn client_zones(mut self, n: usize) -> Self {
        self.client_zones = n;
        self
    }

    /// Options for every node (configuration lines, management, start timeout). TLS is
    /// not offered in zones.
    pub fn broker(mut self, builder: BrokerBuilder) -> Self {
        self.broker = builder;
        self
    }

    /// Erlang's `net_ticktime` in seconds. Default: [`DEFAULT_NET_TICKTIME`].
    pub fn net_ticktime(mut self, seconds: u32) -> Self {
        self.net_ticktime = seconds;
        self
    }

    /// Makes the network, boots one node per node zone and joins them into a cluster.
    pub fn start(self) -> Result<Lab, Error> {
        if self.nodes == 0 {
            return Err(Error::State("a lab needs at least one node".to_owned()));
        }
        crate::node::require_installed()?;
        let net = net::Network::create(self.nodes + self.client_zones)?;
        let cookie = random_cookie();
        let nodes = (0..self.nodes)
            .map(|zone| {
                let ip = net.zone_ip(zone);
                let builder = self
                    .broker
                    .clone()
                    .tls(false)
                    .config("cluster_partition_handling = pause_minority")
                    // Clients come across the bridge, not from loopback.
                    .config("loopback_users.guest = false")
                    .net_ticktime(self.net_ticktime)
                    .placement(Placement {
                        netns: net.netns(zone),
                        ip,
                    });
                (builder, format!("rabbit@{ip}"))
            })
            .collect();
        // On an error, started nodes are killed first, then `net` removes the rest.
        let cluster = Cluster::join(cluster::start_all(nodes, &cookie)?)?;
        Ok(Lab { cluster, net })
    }
}

impl Lab {
    /// A lab of `nodes` zones with one node each, default options.
    pub fn start(nodes: usize) -> Result<Lab, Error> {
        Lab::builder(nodes).start()
    }

    /// Options for a lab of `nodes` node zones.
    pub fn builder(nodes: usize) -> LabBuilder {
        LabBuilder {
            nodes,
            client_zones: 0,
            broker: Broker::builder(),
            net_ticktime: DEFAULT_NET_TICKTIME,
        }
    }

    /// The cluster: node `i` lives in zone `i`.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The node of zone `zone`, if that zone has one.
    pub fn node(&self, zone: usize) -> Option<&Broker> {
        self.cluster.node(zone)
    }

    fn broker(&self, zone: usize) -> Result<&Broker, Error> {
        self.node(zone)
            .ok_or_else(|| Error::State(format!("zone {zone} has no node")))
    }

    /// The AMQP URL of every node, in zone order; reachable from this process.
    pub fn urls(&self) -> Vec<String> {
        self.cluster.urls()
    }

    /// This process's address on the lab's bridge (what nodes see a client come from).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.net.host_ip()
    }

    /// Zone `zone`'s address, if the lab has that zone.
    pub fn zone_ip(&self, zone: usize) -> Option<Ipv4Addr> {
        (zone < self.net.zones()).then(|| self.net.zone_ip(zone))
    }

    /// The name of zone `zone`'s network namespace (for `ip netns exec`).
    pub fn netns(&self, zone: usize) -> Option<String> {
        (zone < self.net.zones()).then(|| self.net.netns(zone))
    }

    /// The number of zones, node zones and client zones together.
    pub fn zones(&self) -> usize {
        self.net.zones()
    }

    /// A command running `program` inside zone `zone` (`ip netns exec <ns> program`):
    /// a client process placed in a zone of its own.
    pub fn command_in(&self, zone: usize, program: &str) -> Result<Command, Error> {
        self.net.command_in(zone, program)
    }

    /// `kill -9` of zone `zone`'s node.
    pub fn kill(&self, zone: usize) -> Result<(), Error> {
        self.broker(zone)?.kill()
    }

    /// Graceful stop of zone `zone`'s node.
    pub fn stop(&self, zone: usize) -> Result<(), Error> {
        self.broker(zone)?.stop()
    }

    /// Freezes zone `zone`'s node (SIGSTOP).
    pub fn pause(&self, zone: usize) -> Result<(), Error> {
        self.broker(zone)?.pause()
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, zone: usize) -> Result<(), Error> {
        self.broker(zone)?.resume()
    }

    /// Starts zone `zone`'s node again on its data (stopping it first if it runs) and
    /// waits until it is ready; it rejoins the cluster.
    pub fn restart(&self, zone: usize) -> Result<(), Error> {
        self.broker(zone)?.restart()
    }

    /// Cuts zone `zone` off: its link goes down, nothing reaches it and it reaches
    /// nothing, while its node keeps running. Undo with [`Lab::heal`].
    pub fn isolate(&self, zone: usize) -> Result<(), Error> {
        self.net.link_down(zone)
    }

    /// Drops all traffic between `a` and `b` (both directions, no answer), leaving
    /// their other paths alone. Undo with [`Lab::heal`].
    pub fn cut(&self, a: Endpoint, b: Endpoint) -> Result<(), Error> {
        self.net.cut(a, b)
    }

    /// Every link up and every cut removed. Paused nodes stay paused.
    pub fn heal(&self) -> Result<(), Error> {
        self.net.heal()
    }

    /// The running nodes as zone `zone`'s node sees them (`rabbit_nodes:all_running()`,
    /// which answers at once; `cluster_status` waits on unreachable nodes for many
    /// seconds). Empty while the node is paused by `pause_minority`.
    pub fn running_nodes_seen_by(&self, zone: usize) -> Result<Vec<String>, Error> {
        let out = self
            .broker(zone)?
            .rabbitmqctl(&["-q", "eval", "rabbit_nodes:all_running()."])?;
        erlang_atoms(&out).ok_or_else(|| Error::State(format!("not a list of node names: {out}")))
    }

    /// Waits until zone `zone`'s node sees `count` running nodes, at most `timeout`.
    pub fn wait_running_nodes(
        &self,
        zone: usize,
        count: usize,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = match self.running_nodes_seen_by(zone) {
                Ok(nodes) if nodes.len() == count => return Ok(()),
                Ok(nodes) => format!("{nodes:?}"),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("node {zone} seeing {count} running nodes"),
                    timeout,
                    detail: last,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `['rabbit@10.213.1.11','rabbit@10.213.1.12']` as printed by `rabbitmqctl eval`.
fn erlang_atoms(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|atom| atom.trim().trim_matches('\'').to_owned())
            .filter(|atom| !atom.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::erlang_atoms;

    #[test]
    fn reads_a_list_of_atoms() {
        assert_eq!(
            erlang_atoms("['rabbit@10.213.1.11','rabbit@10.213.1.12']\n"),
            Some(vec![
                "rabbit@10.213.1.11".to_owned(),
                "rabbit@10.213.1.12".to_owned()
            ])
        );
        assert_eq!(erlang_atoms("[]"), Some(vec![]));
        assert_eq!(erlang_atoms("{error,nodedown}"), None);
    }
}
