//! One supervised connection: connect, declare, watch, and reconnect, single-flight.
//!
//! A single task owns the connection's lifecycle. Callers never reconnect; they wait on
//! the `current` watch for the next live connection, so however many of them notice a
//! failure at once, exactly one reconnect happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lepus_amqp::{Connection, ConnectionOptions};
use rand::seq::SliceRandom;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::ReconnectPolicy;
use crate::error::{Error, ErrorKind, Result};
use crate::observability::metrics::ConnectionMetrics;
use crate::topology::{self, Names, Topology, TopologyReport};

/// Where a supervised connection is in its life.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connect is under way.
    Connecting,
    /// Connected to `host` (`host:port`), topology declared.
    Connected {
        /// The broker address in use.
        host: String,
    },
    /// The connection was lost (or never made); attempt `attempt` is next or under way.
    Reconnecting {
        /// Attempts since the last good connection, starting at 1.
        attempt: u32,
        /// Why the last connection or attempt failed.
        last_error: Error,
    },
    /// Closed by the application.
    Closed,
    /// Gave up: an error retrying cannot fix, or the policy's limits were reached.
    Failed(Error),
}

impl ConnectionState {
    /// The state's name: `Connecting`, `Connected`, `Reconnecting`, `Closed` or `Failed`.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionState::Connecting => "Connecting",
            ConnectionState::Connected { .. } => "Connected",
            ConnectionState::Reconnecting { .. } => "Reconnecting",
            ConnectionState::Closed => "Closed",
            ConnectionState::Failed(_) => "Failed",
        }
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// Whether the supervisor has stopped for good.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ConnectionState::Closed | ConnectionState::Failed(_))
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionState::Connected { host } => write!(f, "Connected to {host}"),
            ConnectionState::Reconnecting {
                attempt,
                last_error,
            } => write!(f, "Reconnecting (attempt {attempt}): {last_error}"),
            ConnectionState::Failed(e) => write!(f, "Failed: {e}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A live connection and which one it is (generations only grow).
#[derive(Clone, Debug)]
pub struct Live {
    /// Increments on every new connection.
    pub generation: u64,
    /// The connection.
    pub connection: Connection,
}

/// Counters of a supervised connection.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) attempts: AtomicU64,
    pub(crate) connects: AtomicU64,
}

pub(crate) struct Supervised {
    pub(crate) role: &'static str,
    metrics: ConnectionMetrics,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) current: watch::Sender<Option<Live>>,
    pub(crate) report: watch::Sender<TopologyReport>,
    pub(crate) stats: Stats,
}

pub(crate) struct Plan {
    pub(crate) endpoints: Vec<ConnectionOptions>,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) topology: Topology,
    pub(crate) names: Names,
    pub(crate) exclusive: bool,
}

impl Supervised {
    pub(crate) fn new(client: &str, role: &'static str) -> Arc<Self> {
        Arc::new(Self {
            role,
            metrics: ConnectionMetrics::new(client, role),
            state: watch::channel(ConnectionState::Connecting).0,
            current: watch::channel(None).0,
            report: watch::channel(TopologyReport::default()).0,
            stats: Stats::default(),
        })
    }

    /// Waits up to `timeout` for a live connection.
    pub(crate) async fn live(&self, timeout: Duration) -> Result<Live> {
        let mut rx = self.current.subscribe();
        let mut state = self.state.subscribe();
        let wait = async {
            loop {
                if let Some(live) = rx.borrow_and_update().clone()
                    && live.connection.is_open()
                {
                    return Ok(live);
                }
                if let ConnectionState::Failed(e) = &*state.borrow_and_update() {
                    return Err(e.clone());
                }
                if matches!(*state.borrow(), ConnectionState::Closed) {
                    return Err(Error::new(ErrorKind::Closed, "the client is closed"));
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(Error::new(ErrorKind::Closed, "the client is closed")) },
                    r = state.changed() => if r.is_err() { return Err(Error::new(ErrorKind::Closed, "the client is closed")) },
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no {} connection within {timeout:?} (state: {})",
                    self.role,
                    *self.state.borrow()
                ),
            )),
        }
    }

    pub(crate) async fn run(self: Arc<Self>, plan: Plan, cancel: CancellationToken) {
        let mut generation = 0;
        let mut attempt: u32 = 0;
        let mut delays = plan.policy.delays();
        let mut since = Instant::now();
        let mut lost_at: Option<Instant> = None;
        // The host of the latest connection: once that connection is lost, the host is
        // tried last.
        let mut suspect: Option<String> = None;
        loop {
            attempt += 1;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            self.metrics.attempts.increment(1);
            let outcome = tokio::select! {
                r = connect_any(&plan.endpoints, suspect.as_deref()) => r,
                _ = cancel.cancelled() => break,
            };
            match outcome {
                Ok((conn, host)) => {
                    let report = tokio::select! {
                        r = topology::declare(&conn, &plan.topology, &plan.names, plan.exclusive) => r,
                        _ = cancel.cancelled() => { let _ = conn.close().await; break }
                    };
                    match report {
                        Ok(report) => {
                            self.report.send_replace(report);
                        }
                        Err(err) => {
                            let err = Error::from(err);
                            // The connection died while declaring: go round again.
                            tracing::warn!(role = self.role, error = %err, "connection lost while declaring topology");
                            self.state.send_replace(ConnectionState::Reconnecting {
                                attempt,
                                last_error: err,
                            });
                            continue;
                        }
                    }
                    generation += 1;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(role = self.role, %host, generation, "connected");
                    suspect = Some(host.clone());
                    // State first: whoever wakes up to the live connection (such as
                    // `Client::wait_connected`) then reads `Connected`, never the state
                    // before it.
                    self.state.send_replace(ConnectionState::Connected { host });
                    self.current.send_replace(Some(Live {
                        generation,
                        connection: conn.clone(),
                    }));
                    self.metrics.connected.set(1.0);
                    if let Some(at) = lost_at.take() {
                        self.metrics.recovery.record(at.elapsed().as_secs_f64());
                    }
                    attempt = 0;
                    delays = plan.policy.delays();
                    let Some(lost) = self.watch(&conn, &cancel).await else {
                        let _ = conn.close().await;
                        break;
                    };
                    self.metrics.connected.set(0.0);
                    self.metrics.blocked.set(0.0);
                    self.metrics.reconnects.increment(1);
                    lost_at = Some(Instant::now());
                    tracing::warn!(role = self.role, error = %lost, "connection lost; reconnecting");
                    self.current.send_replace(None);
                    self.state.send_replace(ConnectionState::Reconnecting {
                        attempt: 1,
                        last_error: Error::from(lost),
                    });
                    since = Instant::now();
                    // The first attempt after a loss is immediate.
                }
                Err(err) => {
                    let give_up = if !err.is_recoverable() && !plan.policy.retry_unrecoverable {
                        Some(err.clone())
                    } else if plan.policy.max_attempts.is_some_and(|max| attempt >= max) {
                        Some(Error::new(
                            ErrorKind::Failed,
                            format!("gave up after {attempt} attempts: {err}"),
                        ))
                    } else if plan
                        .policy
                        .max_elapsed
                        .is_some_and(|max| since.elapsed() >= max)
                    {
                        Some(Error::new(
                            ErrorKind::Failed,
                            format!("gave up after {:?}: {err}", since.elapsed()),
                        ))
                    } else {
                        None
                    };
                    if let Some(reason) = give_up {
                        tracing::error!(role = self.role, error = %reason, "giving up");
                        self.state.send_replace(ConnectionState::Failed(reason));
                        return;
                    }
                    tracing::debug!(role = self.role, attempt, error = %err, "connect attempt failed");
                    self.state.send_replace(ConnectionState::Reconnecting {
                        attempt: attempt + 1,
                        last_error: err,
                    });
                    let delay = delays.next().unwrap_or(plan.policy.max_delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            }
        }
        self.metrics.connected.set(0.0);
        self.current.send_replace(None);
        self.state.send_replace(ConnectionState::Closed);
    }

    /// Waits while connected, keeping the blocked gauge current. `None` on cancel.
    async fn watch(
        &self,
        conn: &Connection,
        cancel: &CancellationToken,
    ) -> Option<lepus_amqp::Error> {
        let mut blocked = conn.blocked();
        let mut watching = true;
        loop {
            tokio::select! {
                err = conn.closed() => return Some(err),
                _ = cancel.cancelled() => return None,
                changed = blocked.changed(), if watching => match changed {
                    Ok(()) => {
                        let on = blocked.borrow_and_update().is_some();
                        self.metrics.blocked.set(if on { 1.0 } else { 0.0 });
                    }
                    Err(_) => watching = false,
                },
            }
        }
    }
}

/// The endpoints in a fresh random order, except that `suspect` (the host whose
/// connection was just lost) comes last: a node that died or went silent usually still
/// is, and trying it first would cost a whole connection timeout (a blackholed host
/// answers nothing) before a healthy node is tried.
fn attempt_order<'a>(
    endpoints: &'a [ConnectionOptions],
    suspect: Option<&str>,
) -> Vec<&'a ConnectionOptions> {
    let mut order: Vec<&ConnectionOptions> = endpoints.iter().collect();
    order.shuffle(&mut rand::rng());
    // Stable: the others keep their random order.
    order.sort_by_key(|opts| suspect.is_some_and(|host| opts.address() == host));
    order
}

/// Tries every endpoint once, in a fresh random order with `suspect` last.
async fn connect_any(
    endpoints: &[ConnectionOptions],
    suspect: Option<&str>,
) -> Result<(Connection, String)> {
    let mut last: Option<Error> = None;
    for opts in attempt_order(endpoints, suspect) {
        match Connection::connect(opts.clone()).await {
            Ok(conn) => return Ok((conn, opts.address())),
            Err(err) => {
                let err = Error::from(err);
                // Wrong credentials are wrong on every node: stop here.
                if !err.is_recoverable() {
                    return Err(err);
                }
                tracing::debug!(host = %opts.address(), error = %err, "endpoint unavailable");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::Config, "no endpoints configured")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_host_just_lost_is_tried_last() {
        let endpoints: Vec<ConnectionOptions> = ["a", "b", "c"]
            .iter()
            .map(|h| ConnectionOptions::from_uri(&format!("amqp://{h}:5672/%2f")).unwrap())
            .collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let order = attempt_order(&endpoints, Some("b:5672"));
            assert_eq!(order.len(), 3);
            assert_eq!(order.last().unwrap().address(), "b:5672");
            firsts.insert(order.first().unwrap().address());
        }
        // The others are still shuffled.
        assert_eq!(firsts.len(), 2);
        let mut anywhere = std::collections::HashSet::new();
        for _ in 0..200 {
            anywhere.insert(attempt_order(&endpoints, None).last().unwrap().address());
        }
        assert_eq!(anywhere.len(), 3);
    }
}
