//! Faults on a schedule: a forced close of every connection, a stock-service outage long
//! enough to trip the breaker, a malformed event, and a broker killed with SIGKILL and
//! started again with its data. Each waits for the system to recover from the previous
//! one, so their effects can be told apart in the report and on the dashboard.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerState;
use crate::httpc;
use crate::system::System;

/// Control over the broker the demo runs against. Methods block; the runner calls them
/// on the blocking pool.
pub trait BrokerControl: Send + Sync + 'static {
    /// `kill -9` the broker; returns once the process is gone.
    fn kill(&self) -> anyhow::Result<()>;
    /// Starts the killed broker again with its data and waits until it is ready.
    fn restart(&self) -> anyhow::Result<()>;
    /// Closes every client connection (`rabbitmqctl close_all_connections`).
    fn close_all_connections(&self) -> anyhow::Result<()>;
}

/// A node started by `scripts/broker` (the test kit's `lepus-broker`), found through the
/// state file in its directory: killed with SIGKILL, started again on its data with the
/// same name, ports and cookie, and driven with `rabbitmqctl`, all by the test kit's own
/// node code.
pub struct NodeBroker {
    node: lepus_testkit::Broker,
}

impl NodeBroker {
    /// The node living in `node_dir` (for example `target/rabbitmq/shop-demo-1`).
    pub fn attach(node_dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let node_dir = node_dir.as_ref();
        let node = lepus_testkit::Broker::attach(node_dir)
            .with_context(|| format!("finding the broker node in {}", node_dir.display()))?;
        Ok(Self { node })
    }
}

impl BrokerControl for NodeBroker {
    fn kill(&self) -> anyhow::Result<()> {
        if !self.node.is_running() {
            bail!("broker {} is not running", self.node.node_name());
        }
        Ok(self.node.kill()?)
    }

    fn restart(&self) -> anyhow::Result<()> {
        Ok(self.node.restart()?)
    }

    fn close_all_connections(&self) -> anyhow::Result<()> {
        Ok(self.node.close_all_connections()?)
    }
}

/// When each fault happens, from the start of the load.
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// Every connection closed by the broker.
    pub connection_kill_at: Duration,
    /// The stock service turns slow...
    pub stock_outage_at: Duration,
    /// ...for this long.
    pub stock_outage_for: Duration,
    /// A malformed event published.
    pub poison_at: Duration,
    /// The broker killed with SIGKILL, then started again.
    pub broker_kill_at: Duration,
}

impl FaultPlan {
    /// Faults spread over a load lasting `load`: connections at 15 %, the stock outage at
    /// 30 % (for 12 % of the load, at least 4 s, or `outage`), the malformed event at
    /// 50 %, the broker kill at 60 %.
    pub fn for_load(load: Duration, outage: Option<Duration>) -> Self {
        Self {
            connection_kill_at: load.mul_f64(0.15),
            stock_outage_at: load.mul_f64(0.30),
            stock_outage_for: outage
                .unwrap_or_else(|| load.mul_f64(0.12).max(Duration::from_secs(4))),
            poison_at: load.mul_f64(0.50),
            broker_kill_at: load.mul_f64(0.60),
        }
    }
}

/// One line of the fault log.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Seconds since the start of the load.
    pub at_s: f64,
    /// `connection-kill`, `stock-outage`, `poison`, `broker-kill`, ...
    pub kind: String,
    /// What happened.
    pub detail: String,
}

/// What the fault injector did.
#[derive(Debug)]
pub struct FaultLog {
    started: Instant,
    events: Mutex<Vec<FaultEvent>>,
    /// Broker kills followed by a successful restart.
    pub broker_restarts: AtomicU64,
    /// Forced connection closes.
    pub connection_kills: AtomicU64,
    /// Stock-service outages.
    pub stock_outages: AtomicU64,
    /// Malformed events published.
    pub poison: AtomicU64,
}

impl FaultLog {
    /// An empty log counting time from `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            events: Mutex::new(Vec::new()),
            broker_restarts: AtomicU64::new(0),
            connection_kills: AtomicU64::new(0),
            stock_outages: AtomicU64::new(0),
            poison: AtomicU64::new(0),
        }
    }

    /// Records and prints an event.
    pub fn note(&self, kind: &str, detail: impl Into<String>) {
        let event = FaultEvent {
            at_s: (self.started.elapsed().as_millis() as f64) / 1000.0,
            kind: kind.to_string(),
            detail: detail.into(),
        };
        println!(
            "[{:6.1}s] fault  {:<16} {}",
            event.at_s, event.kind, event.detail
        );
        tracing::warn!(fault = %event.kind, detail = %event.detail, "demo fault");
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// The most recent `n` events, newest first.
    pub fn recent(&self, n: usize) -> Vec<FaultEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().take(n).cloned().collect()
    }
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() >= timeout {
            bail!("{what} did not happen within {timeout:?}");
        }
        tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled while waiting for {what}"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(start.elapsed())
}

async fn blocking(
    broker: &std::sync::Arc<dyn BrokerControl>,
    f: fn(&dyn BrokerControl) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let broker = std::sync::Arc::clone(broker);
    tokio::task::spawn_blocking(move || f(broker.as_ref()))
        .await
        .context("broker control task failed")?
}

/// What the faults act on.
pub struct Targets<'a> {
    /// The services.
    pub system: &'a System,
    /// The broker, if the demo may kill it.
    pub broker: Option<std::sync::Arc<dyn BrokerControl>>,
    /// A publisher of the demo's own, for the malformed event.
    pub publisher: lepus::Publisher,
}

/// Runs `plan` from `start`. A fault that fails is logged and the rest go on; the
/// returned error names the first failure.
pub async fn run(
    plan: FaultPlan,
    targets: Targets<'_>,
    log: &FaultLog,
    start: Instant,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let recover = Duration::from_secs(120);
    let system = targets.system;
    let mut first_error: Option<anyhow::Error> = None;
    let mut fail = |log: &FaultLog, kind: &str, e: anyhow::Error| {
        log.note(kind, format!("FAILED: {e:#}"));
        if first_error.is_none() {
            first_error = Some(e.context(format!("fault {kind}")));
        }
    };
    let cancelled = &cancel;
    let at = |offset: Duration| async move {
        tokio::select! {
            _ = cancelled.cancelled() => false,
            _ = tokio::time::sleep_until(start + offset) => true,
        }
    };

    // 1. Every connection closed by the broker.
    if !at(plan.connection_kill_at).await {
        return Ok(());
    }
    match &targets.broker {
        Some(broker) => {
            let result = async {
                let before = system.connects();
                blocking(broker, |b| b.close_all_connections()).await?;
                log.connection_kills.fetch_add(1, Ordering::Relaxed);
                log.note(
                    "connection-kill",
                    "broker closed every connection (320 CONNECTION_FORCED)",
                );
                wait_until("reconnection", recover, &cancel, || {
                    system.recovered_since(&before)
                })
                .await
            }
            .await;
            match result {
                Ok(took) => log.note(
                    "recovered",
                    format!(
                        "all clients reconnected and consumers resubscribed in {:.1} s",
                        took.as_secs_f64()
                    ),
                ),
                Err(e) => fail(log, "connection-kill", e),
            }
        }
        None => log.note(
            "connection-kill",
            "skipped: no broker control (--broker-node-dir)",
        ),
    }

    // 2. The stock service slow for a while: the breaker trips.
    if !at(plan.stock_outage_at).await {
        return Ok(());
    }
    let trips_before = system.inventory.breaker.status().trips;
    let secs = plan.stock_outage_for.as_secs_f64();
    let result = async {
        let body = serde_json::json!({ "mode": "slow", "seconds": secs });
        let resp = httpc::request(
            system.inventory.addr,
            "POST",
            "/admin/stock",
            Some(&body),
            &[],
            Duration::from_secs(10),
        )
        .await?;
        if resp.status != 200 {
            bail!("admin endpoint answered {}: {}", resp.status, resp.text());
        }
        let outage_began = Instant::now();
        log.stock_outages.fetch_add(1, Ordering::Relaxed);
        log.note(
            "stock-outage",
            format!("stock service answers after 2 s for {secs:.0} s (timeout 200 ms)"),
        );
        let breaker = &system.inventory.breaker;
        let tripped = wait_until("a breaker trip", plan.stock_outage_for, &cancel, || {
            breaker.status().trips > trips_before
        })
        .await;
        match tripped {
            Ok(took) => log.note(
                "breaker-open",
                format!(
                    "breaker tripped after {:.1} s; deciding from the cached stock snapshot",
                    took.as_secs_f64()
                ),
            ),
            Err(_) => log.note(
                "breaker",
                "did not trip during the outage (no orders flowing?)",
            ),
        }
        wait_until(
            "the breaker closing",
            plan.stock_outage_for + recover,
            &cancel,
            || breaker.status().state == BreakerState::Closed,
        )
        .await?;
        log.note(
            "breaker-closed",
            format!(
                "stock service back; breaker closed {:.1} s after the outage began",
                outage_began.elapsed().as_secs_f64()
            ),
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        fail(log, "stock-outage", e);
    }

    // 3. A malformed event, straight onto the exchange.
    if !at(plan.poison_at).await {
        return Ok(());
    }
    let names = &system.config.common.names;
    let poison = lepus::Message::new(
        names.exchange(),
        crate::events::INVENTORY_RESERVED,
        "{\"order_id\": 42, this is not json",
    )
    .content_type("application/json")
    .message_id_str(&format!("poison-{}", uuid::Uuid::now_v7()))
    .mandatory(true);
    match targets.publisher.publish(poison).await {
        Ok(()) => {
            log.poison.fetch_add(1, Ordering::Relaxed);
            log.note(
                "poison",
                "malformed inventory.reserved published; expect it dead-lettered",
            );
        }
        Err(e) => fail(log, "poison", anyhow::anyhow!("{e}")),
    }

    // 4. The broker killed with SIGKILL, then started again with its data.
    if !at(plan.broker_kill_at).await {
        return Ok(());
    }
    match &targets.broker {
        Some(broker) => {
            let result = async {
                let before = system.connects();
                blocking(broker, |b| b.kill()).await?;
                log.note("broker-kill", "broker killed with SIGKILL");
                let t0 = Instant::now();
                blocking(broker, |b| b.restart()).await?;
                log.note(
                    "broker-restart",
                    format!(
                        "broker running again after {:.1} s (same data)",
                        t0.elapsed().as_secs_f64()
                    ),
                );
                wait_until("reconnection", recover, &cancel, || {
                    system.recovered_since(&before)
                })
                .await
            }
            .await;
            match result {
                Ok(took) => {
                    log.broker_restarts.fetch_add(1, Ordering::Relaxed);
                    log.note("recovered", format!("all clients reconnected and consumers resubscribed {:.1} s after the restart", took.as_secs_f64()));
                }
                Err(e) => fail(log, "broker-kill", e),
            }
        }
        None => log.note(
            "broker-kill",
            "skipped: no broker control (--broker-node-dir)",
        ),
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
