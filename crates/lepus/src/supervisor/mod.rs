//! One supervised connection: connect, declare, watch, and reconnect, single-flight.
//!
//! A single task owns the connection's lifecycle. Callers never reconnect; they wait on
//! the `current` watch for the next live connection, so however many of them notice a
//! failure at once, exactly one reconnect happens.//!
//! `state.rs` holds what callers see of it ([`ConnectionState`], [`Live`]);
//! `endpoints.rs` the order endpoints are tried in and one round of attempts.

mod endpoints;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lepus_amqp::Connection;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::ReconnectPolicy;
use crate::error::{Error, ErrorKind, Result};
use crate::observability::metrics::ConnectionMetrics;
use crate::topology::{self, Names, Topology, TopologyReport};
pub(crate) use endpoints::Endpoint;
use endpoints::connect_any;
pub use state::{ConnectionState, Live};

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
    /// The outcome of the latest declaration (a lock, not a watch: nobody waits on it).
    pub(crate) report: std::sync::Mutex<TopologyReport>,
    pub(crate) stats: Stats,
    /// The last failure, kept after a reconnect succeeds.
    pub(crate) last_error: std::sync::Mutex<Option<Error>>,
}

pub(crate) struct Plan {
    pub(crate) endpoints: Vec<Endpoint>,
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
            report: std::sync::Mutex::new(TopologyReport::default()),
            stats: Stats::default(),
            last_error: std::sync::Mutex::new(None),
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
        // Failed attempts in a row; the backoff and the limits apply to all of them.
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
            // Boxed, like the declaration below: a connect is a large future (the TLS and
            // AMQP handshakes), and unboxed it would size the task that idles here for the
            // whole life of the connection.
            let outcome = tokio::select! {
                r = Box::pin(connect_any(&plan.endpoints, suspect.as_deref())) => r,
                _ = cancel.cancelled() => break,
            };
            let err = match outcome {
                Err(err) => err,
                Ok((conn, endpoint)) => {
                    let report = tokio::select! {
                        r = Box::pin(topology::declare(&conn, &plan.topology, &plan.names, plan.exclusive)) => r,
                        _ = cancel.cancelled() => { let _ = conn.close().await; break }
                    };
                    match report {
                        Ok(report) => {
                            let unavailable = not_ready(&report, &endpoint.label);
                            self.set_report(report);
                            if let Some(err) = unavailable {
                                // A queue of the topology is there but its node is down:
                                // the broker would confirm publishes to it and drop them.
                                // Not connected yet; try again (maybe another node) later.
                                let _ = conn.close().await;
                                tracing::warn!(role = self.role, error = %err.report(), "topology not ready; retrying");
                                if self
                                    .give_up_or_wait(
                                        &plan,
                                        &cancel,
                                        attempt,
                                        since,
                                        &mut delays,
                                        err,
                                    )
                                    .await
                                {
                                    break;
                                }
                                continue;
                            }
                        }
                        Err(err) => {
                            // The connection died while declaring (say, an exchange type
                            // the broker lacks): a failed attempt like any other.
                            let _ = conn.close().await;
                            let err = Error::with_amqp(
                                ErrorKind::Amqp,
                                format!(
                                    "{}: connected, then lost while declaring the topology",
                                    endpoint.label
                                ),
                                err,
                            );
                            tracing::warn!(role = self.role, error = %err.report(), "connection lost while declaring topology");
                            if self
                                .give_up_or_wait(&plan, &cancel, attempt, since, &mut delays, err)
                                .await
                            {
                                break;
                            }
                            continue;
                        }
                    }
                    generation += 1;
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    let host = endpoint.address;
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
                    let connected_at = Instant::now();
                    let Some(lost) = self.watch(&conn, &cancel).await else {
                        let _ = conn.close().await;
                        break;
                    };
                    self.metrics.connected.set(0.0);
                    self.metrics.blocked.set(0.0);
                    self.metrics.reconnects.increment(1);
                    lost_at = Some(Instant::now());
                    self.current.send_replace(None);
                    let uptime = connected_at.elapsed();
                    let err = Error::with_amqp(
                        ErrorKind::Amqp,
                        format!("{}: connection lost after {uptime:?}", endpoint.label),
                        lost,
                    );
                    tracing::warn!(role = self.role, error = %err.report(), "connection lost; reconnecting");
                    if uptime >= plan.policy.healthy_after {
                        // A connection that stayed up a while ends the outage: the
                        // backoff and the limits start over, and the first attempt after
                        // the loss is immediate.
                        attempt = 0;
                        delays = plan.policy.delays();
                        since = Instant::now();
                        self.set_last_error(&err);
                        self.state.send_replace(ConnectionState::Reconnecting {
                            attempt: 1,
                            last_error: err,
                        });
                        continue;
                    }
                    // Lost right after connecting: a failed attempt, with its delay.
                    err
                }
            };
            if self
                .give_up_or_wait(&plan, &cancel, attempt, since, &mut delays, err)
                .await
            {
                break;
            }
        }
        self.metrics.connected.set(0.0);
        self.current.send_replace(None);
        // `Failed` stays: only a cancel (the application closing) gets here otherwise.
        if !matches!(*self.state.borrow(), ConnectionState::Failed(_)) {
            self.state.send_replace(ConnectionState::Closed);
        }
    }

    pub(crate) fn set_report(&self, report: TopologyReport) {
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }

    fn set_last_error(&self, err: &Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
    }

    /// After failed attempt `attempt`: gives up (state `Failed`, returns true) if the
    /// policy says so, else shows `Reconnecting` and sleeps the next delay (true if
    /// cancelled meanwhile).
    async fn give_up_or_wait(
        &self,
        plan: &Plan,
        cancel: &CancellationToken,
        attempt: u32,
        since: Instant,
        delays: &mut crate::backoff::Backoff,
        err: Error,
    ) -> bool {
        self.set_last_error(&err);
        let policy = &plan.policy;
        let give_up = if !err.is_recoverable() && !policy.retry_unrecoverable {
            Some(err.clone())
        } else if policy.max_attempts.is_some_and(|max| attempt >= max) {
            Some(err.context(
                ErrorKind::Failed,
                format!("gave up after {attempt} attempts"),
            ))
        } else if policy.max_elapsed.is_some_and(|max| since.elapsed() >= max) {
            Some(err.context(
                ErrorKind::Failed,
                format!("gave up after {:?}", since.elapsed()),
            ))
        } else {
            None
        };
        if let Some(reason) = give_up {
            tracing::error!(role = self.role, error = %reason.report(), "giving up");
            self.state.send_replace(ConnectionState::Failed(reason));
            return true;
        }
        tracing::debug!(role = self.role, attempt, error = %err.report(), "connect attempt failed");
        self.state.send_replace(ConnectionState::Reconnecting {
            attempt: attempt.saturating_add(1),
            last_error: err,
        });
        let delay = delays.next().unwrap_or(policy.max_delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = cancel.cancelled() => true,
        }
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

/// The failure that keeps a declared topology from being ready, if any: a queue that
/// exists but whose node is down ([`Error::is_queue_unavailable`]). Other failures
/// (inequivalent arguments, say) are reported and recovery goes on.
fn not_ready(report: &TopologyReport, label: &str) -> Option<Error> {
    let failure = report
        .failures
        .iter()
        .find(|f| f.error.is_queue_unavailable())?;
    let text = format!("{label}: topology not ready");
    Some(failure.error.context(ErrorKind::Topology, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor's task lives as long as the client and mostly waits on a live
    /// connection; a connect (TLS and AMQP handshakes) is a future of several KiB, so it
    /// is boxed for its short life instead of sizing the task for good. Unboxed, this
    /// future was 4.2 KiB.
    #[test]
    fn the_supervisor_task_is_small() {
        let sup = Supervised::new("x", "publish");
        let plan = Plan {
            endpoints: Vec::new(),
            policy: ReconnectPolicy::default(),
            topology: Topology::new(),
            names: Names::default(),
            exclusive: false,
        };
        let run = Arc::clone(&sup).run(plan, CancellationToken::new());
        let size = std::mem::size_of_val(&run);
        assert!(size <= 2048, "the supervisor future is {size} bytes");
    }
}
