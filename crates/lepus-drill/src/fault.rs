//! The faults, each a short script against the lab.
//!
//! "The client's node" is the node the publisher's connection is on when the scenario
//! starts; the queue's leader (quorum) or home (classic) is placed by declaring the
//! queue through a connection to the chosen node.

use std::time::Duration;

use lepus_testkit::Endpoint;
use lepus_testkit::proxy::{Direction, Latency};

use crate::check::Window;
use crate::env::{Env, NODES, blocking};
use crate::record::Recorder;

/// How long the publisher may take from `send` to confirm (lepus's default).
pub const PUBLISH_TIMEOUT: Duration = lepus::defaults::DEFAULT_PUBLISH_TIMEOUT;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the client's node (the queue's leader is elsewhere); started again
    /// after `down`.
    KillClientNode {
        /// How long the node stays dead.
        down: Duration,
    },
    /// `kill -9` of the queue leader's node while the client is on another node.
    KillLeaderNode {
        /// How long the node stays dead.
        down: Duration,
    },
    /// `kill -9` of the node that is both the client's and the leader's.
    KillClientAndLeaderNode {
        /// How long the node stays dead.
        down: Duration,
    },
    /// SIGSTOP of the client's (and leader's) node, SIGCONT after `hold`.
    PauseNode {
        /// How long it stays frozen.
        hold: Duration,
    },
    /// The client and its node's zone cut off from the other two zones: the client
    /// reaches only a node that pauses (pause_minority).
    CutClientZone {
        /// How long the cut lasts.
        hold: Duration,
    },
    /// The client's (and leader's) node's zone link down: the node pauses, the client
    /// must move to the majority.
    IsolateBrokerZone {
        /// How long the zone stays cut off.
        hold: Duration,
    },
    /// The proxy in front of the client's node forwards nothing either way and keeps
    /// the connections open (no FIN, no RST): the client must notice by heartbeats.
    Blackhole {
        /// How long.
        hold: Duration,
    },
    /// Every proxy delays every chunk by `base` plus up to `jitter`, both ways.
    Latency {
        /// The fixed delay.
        base: Duration,
        /// The random extra, up to this.
        jitter: Duration,
        /// How long.
        hold: Duration,
    },
    /// Every proxy limits each direction of each connection to `bytes_per_sec`.
    Bandwidth {
        /// The limit.
        bytes_per_sec: u64,
        /// How long.
        hold: Duration,
    },
    /// Every proxy resets all its connections (RST) every `period`.
    Resets {
        /// Time between resets.
        period: Duration,
        /// How long.
        hold: Duration,
    },
    /// Every node stopped and started again, one after another, each back in the
    /// cluster before the next goes.
    RollingRestart,
    /// All three nodes stopped gracefully, then started again together.
    ClusterStopStart,
}

impl Fault {
    /// The node the queue's leader goes to, given the client's node.
    pub fn leader(self, client: usize) -> usize {
        match self {
            Fault::KillClientNode { .. } | Fault::KillLeaderNode { .. } => (client + 1) % NODES,
            _ => client,
        }
    }

    /// Whether a majority of nodes stays reachable from the client during the fault.
    pub fn majority_reachable(self) -> bool {
        !matches!(self, Fault::CutClientZone { .. } | Fault::ClusterStopStart)
    }

    /// The longest single disruption the fault scripts: a node down, a cut held.
    pub fn nominal(self) -> Duration {
        match self {
            Fault::KillClientNode { down }
            | Fault::KillLeaderNode { down }
            | Fault::KillClientAndLeaderNode { down } => down,
            Fault::PauseNode { hold }
            | Fault::CutClientZone { hold }
            | Fault::IsolateBrokerZone { hold }
            | Fault::Blackhole { hold }
            | Fault::Latency { hold, .. }
            | Fault::Bandwidth { hold, .. } => hold,
            // Each reset is a moment; the connection is back within the period.
            Fault::Resets { period, .. } => period,
            // One node at a time, each down for a graceful stop and a boot.
            Fault::RollingRestart => Duration::from_secs(15),
            Fault::ClusterStopStart => Duration::from_secs(30),
        }
    }

    /// Whether the client goes through the fault proxies (a proxy fault).
    pub fn proxied(self) -> bool {
        matches!(
            self,
            Fault::Blackhole { .. }
                | Fault::Latency { .. }
                | Fault::Bandwidth { .. }
                | Fault::Resets { .. }
        )
    }

    /// Whether failed publishes are acceptable: the majority is out of the client's
    /// reach, or the fault lasts as long as the publish timeout.
    pub fn failures_allowed(self) -> bool {
        !self.majority_reachable() || self.nominal() >= PUBLISH_TIMEOUT
    }

    /// Applies the fault and undoes it; returns when it was.
    pub async fn inject(
        self,
        env: &Env,
        client: usize,
        leader: usize,
        rec: &Recorder,
    ) -> anyhow::Result<Window> {
        let lab = env.lab();
        // The fault counts from the moment it is in place (applying it takes a few
        // `ip` or signal calls) to the moment undoing it begins, so that neither
        // confirms that slipped through while it was applied nor those that come while
        // it is undone count as a recovery.
        let mut start = rec.now();
        let mut end = None;
        match self {
            Fault::KillClientNode { down } | Fault::KillClientAndLeaderNode { down } => {
                blocking(lab, move |lab| lab.kill(client)).await?;
                (start, end) = hold_for(rec, down).await;
                blocking(lab, move |lab| lab.restart(client)).await?;
            }
            Fault::KillLeaderNode { down } => {
                blocking(lab, move |lab| lab.kill(leader)).await?;
                (start, end) = hold_for(rec, down).await;
                blocking(lab, move |lab| lab.restart(leader)).await?;
            }
            Fault::PauseNode { hold } => {
                blocking(lab, move |lab| lab.pause(client)).await?;
                (start, end) = hold_for(rec, hold).await;
                blocking(lab, move |lab| lab.resume(client)).await?;
            }
            Fault::CutClientZone { hold } => {
                blocking(lab, move |lab| {
                    for other in (0..NODES).filter(|&n| n != client) {
                        lab.cut(Endpoint::Host, Endpoint::Zone(other))?;
                        lab.cut(Endpoint::Zone(client), Endpoint::Zone(other))?;
                    }
                    Ok(())
                })
                .await?;
                (start, end) = hold_for(rec, hold).await;
                blocking(lab, |lab| lab.heal()).await?;
            }
            Fault::IsolateBrokerZone { hold } => {
                blocking(lab, move |lab| lab.isolate(client)).await?;
                (start, end) = hold_for(rec, hold).await;
                blocking(lab, |lab| lab.heal()).await?;
            }
            Fault::Blackhole { hold } => {
                env.proxy(client)?.set_blackhole(Direction::Both, true);
                (start, end) = hold_for(rec, hold).await;
                env.proxy(client)?.clear();
            }
            Fault::Latency { base, jitter, hold } => {
                let latency = Latency::new(base).with_jitter(jitter);
                for proxy in env.proxies() {
                    proxy.set_latency(Direction::Both, Some(latency));
                }
                (start, end) = hold_for(rec, hold).await;
                env.proxies().iter().for_each(|p| p.clear());
            }
            Fault::Bandwidth {
                bytes_per_sec,
                hold,
            } => {
                for proxy in env.proxies() {
                    proxy.set_bandwidth(Direction::Both, Some(bytes_per_sec));
                }
                (start, end) = hold_for(rec, hold).await;
                env.proxies().iter().for_each(|p| p.clear());
            }
            Fault::Resets { period, hold } => {
                for proxy in env.proxies() {
                    proxy.reset_every(Some(period));
                }
                (start, end) = hold_for(rec, hold).await;
                env.proxies().iter().for_each(|p| p.clear());
            }
            Fault::RollingRestart => {
                // The client's node last, so the client moves at least once before it.
                let order = (1..=NODES).map(|k| (client + k) % NODES);
                for node in order {
                    blocking(lab, move |lab| {
                        lab.restart(node)?;
                        lab.wait_running_nodes(node, NODES, Duration::from_secs(60))
                    })
                    .await?;
                }
            }
            Fault::ClusterStopStart => {
                blocking(lab, |lab| each_node(lab, |lab, node| lab.stop(node))).await?;
                start = rec.now();
                end = Some(start);
                blocking(lab, |lab| each_node(lab, |lab, node| lab.restart(node))).await?;
            }
        }
        let end = end.unwrap_or_else(|| rec.now());
        let recover_from = if self.majority_reachable() {
            start
        } else {
            end
        };
        Ok(Window {
            start,
            end,
            recover_from,
        })
    }
}

/// Waits `hold` with the fault in place; returns when the wait began and ended.
async fn hold_for(rec: &Recorder, hold: Duration) -> (Duration, Option<Duration>) {
    let start = rec.now();
    tokio::time::sleep(hold).await;
    (start, Some(rec.now()))
}

/// Runs `op` for every node at once (stopping or starting a cluster node by node would
/// make each wait for the others).
fn each_node(
    lab: &lepus_testkit::Lab,
    op: impl Fn(&lepus_testkit::Lab, usize) -> Result<(), lepus_testkit::Error> + Sync,
) -> Result<(), lepus_testkit::Error> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..NODES)
            .map(|node| {
                let op = &op;
                scope.spawn(move || op(lab, node))
            })
            .collect();
        handles.into_iter().try_for_each(|handle| {
            handle.join().unwrap_or_else(|_| {
                Err(lepus_testkit::Error::State(
                    "a node operation panicked".to_owned(),
                ))
            })
        })
    })
}
