//! Several nodes joined into one RabbitMQ cluster.

use crate::broker::{Broker, BrokerBuilder, random_cookie};
use crate::error::Error;

/// `n` nodes joined into one cluster, each a [`Broker`] of its own (own directory, own
/// ports, the cluster's shared Erlang cookie), so each can be killed, paused or restarted
/// on its own. Dropping the cluster kills every node.
///
/// ```no_run
/// # fn main() -> Result<(), lepus_testkit::Error> {
/// let cluster = lepus_testkit::Cluster::start(3)?;
/// let urls = cluster.urls(); // one per node, for a client's host list
/// if let Some(first) = cluster.node(0) {
///     first.kill()?;
///     first.restart()?; // rejoins the others
/// }
/// assert_eq!(cluster.running_nodes_seen_by(1)?.len(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Broker>,
}

impl Cluster {
    /// Starts `n` nodes (at least one) with default options and joins them into one
    /// cluster.
    pub fn start(n: usize) -> Result<Cluster, Error> {
        Cluster::start_with(n, Broker::builder())
    }

    /// Like [`Cluster::start`], each node built with `builder`'s options.
    pub fn start_with(n: usize, builder: BrokerBuilder) -> Result<Cluster, Error> {
        if n == 0 {
            return Err(Error::State("a cluster needs at least one node".to_owned()));
        }
        let id = format!("{:08x}", rand::random::<u32>());
        let cookie = random_cookie();
        let name = |i: usize| format!("lepus-{id}-{i}@localhost");
        let nodes = (1..=n).map(|i| (builder.clone(), name(i))).collect();
        Cluster::join(start_all(nodes, &cookie)?)
    }

    /// Joins running standalone nodes (sharing one Erlang cookie) to the first of them.
    pub(crate) fn join(nodes: Vec<Broker>) -> Result<Cluster, Error> {
        let cluster = Cluster { nodes };
        let first = cluster
            .nodes
            .first()
            .map(|node| node.node_name().to_owned())
            .ok_or_else(|| Error::State("a cluster needs at least one node".to_owned()))?;
        // One at a time: concurrent joins contend for the same schema change.
        for node in cluster.nodes.iter().skip(1) {
            node.join_cluster(&first)?;
        }
        Ok(cluster)
    }

    /// The nodes, first one first (the others joined it).
    pub fn nodes(&self) -> &[Broker] {
        &self.nodes
    }

    /// Node `index` (0-based), if there is one.
    pub fn node(&self, index: usize) -> Option<&Broker> {
        self.nodes.get(index)
    }

    /// The AMQP URL of every node, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Broker::url).collect()
    }

    /// The names of the cluster's running nodes as node `index` sees them
    /// (`rabbitmqctl cluster_status`).
    pub fn running_nodes_seen_by(&self, index: usize) -> Result<Vec<String>, Error> {
        let node = self
            .node(index)
            .ok_or_else(|| Error::State(format!("the cluster has no node {index}")))?;
        let json = node.rabbitmqctl(&["-q", "cluster_status", "--formatter", "json"])?;
        running_nodes(&json).ok_or_else(|| {
            Error::State(format!("no running_nodes in cluster_status output: {json}"))
        })
    }
}

/// Boots standalone nodes all at once, each `(options, name)` with the shared `cookie`.
/// Nodes that did start are killed again if any other failed.
pub(crate) fn start_all(
    nodes: Vec<(BrokerBuilder, String)>,
    cookie: &str,
) -> Result<Vec<Broker>, Error> {
    let started: Vec<Result<Broker, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .into_iter()
            .map(|(builder, name)| {
                let cookie = cookie.to_owned();
                scope.spawn(move || builder.start_named(name, cookie))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(Error::State("a node-starting thread panicked".to_owned()))
                })
            })
            .collect()
    });
    started.into_iter().collect()
}

/// The `running_nodes` array of `rabbitmqctl cluster_status --formatter json`.
pub(crate) fn running_nodes(json: &str) -> Option<Vec<String>> {
    let key = "\"running_nodes\":";
    let start = json.find(key)? + key.len();
    let rest = json.get(start..)?.trim_start().strip_prefix('[')?;
    let list = rest.get(..rest.find(']')?)?;
    Some(
        list.split(',')
            .map(|item| item.trim().trim_matches('"').to_owned())
            .filter(|item| !item.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::running_nodes;

    #[test]
    fn reads_running_nodes() {
        let json = r#"{"disk_nodes":["a@localhost"],"running_nodes":["a@localhost", "b@localhost"],"x":[]}"#;
        assert_eq!(
            running_nodes(json),
            Some(vec!["a@localhost".to_owned(), "b@localhost".to_owned()])
        );
        assert_eq!(running_nodes(r#"{"running_nodes":[]}"#), Some(vec![]));
        assert_eq!(running_nodes("{}"), None);
    }
}
