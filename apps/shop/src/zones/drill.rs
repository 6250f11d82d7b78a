//! The zoned drill's faults, one after the other while the load runs: a zone cut off and
//! healed, a broker node killed (SIGKILL) and started again, one replica of each service
//! SIGKILLed in the middle of its work and started again, and the stock service slow long
//! enough to trip the inventory replicas' breakers.
//!
//! Each fault waits for the system to be whole again before the next (the cluster sees
//! all its nodes, every replica is ready), so their effects stay apart. Each is recorded
//! as a window (from its start until a few seconds after it ended): the report's accept
//! latency is taken outside those windows, where the system is expected to be as fast as
//! ever; inside them it is expected to be available, not fast.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lepus_testkit::Lab;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::replica::{Replica, Service};
use crate::httpc;

/// How long after a fault ended its effects may still show (HAProxy's checks putting a
/// replica back, clients reconnecting, queues catching up).
pub const SETTLE: Duration = Duration::from_secs(5);
/// The longest the cluster may take to see all its nodes again.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest a restarted replica may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// When each fault starts, from the start of the load, and how long the timed ones last.
#[derive(Debug, Clone, Copy)]
pub struct DrillPlan {
    /// The zone cut off.
    pub cut_zone: usize,
    /// When it is cut off...
    pub cut_at: Duration,
    /// ...for this long.
    pub cut_for: Duration,
    /// The node killed and started again.
    pub kill_node: usize,
    /// When.
    pub node_kill_at: Duration,
    /// When one replica of each service is killed.
    pub replica_kill_at: Duration,
    /// When the stock service turns slow...
    pub outage_at: Duration,
    /// ...for this long.
    pub outage_for: Duration,
}

impl DrillPlan {
    /// Faults spread over a load of `load`: the cut at 8 %, the node kill at 35 %, the
    /// replica kills at 55 %, the stock outage at 72 %.
    pub fn for_load(load: Duration, cut_for: Duration, outage_for: Duration) -> Self {
        Self {
            cut_zone: 1,
            cut_at: load.mul_f64(0.08),
            cut_for,
            kill_node: 0,
            node_kill_at: load.mul_f64(0.35),
            replica_kill_at: load.mul_f64(0.55),
            outage_at: load.mul_f64(0.72),
            outage_for,
        }
    }
}

/// What the drill did.
#[derive(Debug, Default)]
pub struct DrillLog {
    /// Zones cut off and healed.
    pub zone_cuts: u64,
    /// Nodes killed and started again.
    pub node_kills: u64,
    /// Replicas killed and started again.
    pub replica_kills: u64,
    /// Stock outages.
    pub stock_outages: u64,
    /// The fault windows (start, end including [`SETTLE`]).
    pub windows: Vec<(Instant, Instant)>,
    /// What happened, as `[seconds] what`.
    pub events: Vec<String>,
    /// The first fault that could not be made or recovered from.
    pub error: Option<String>,
}

/// What the drill acts on.
pub struct Targets {
    /// The lab (nodes, zones).
    pub lab: Arc<Lab>,
    /// Every replica.
    pub replicas: Vec<Arc<Replica>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking step panicked")?
}

fn note(log: &Mutex<DrillLog>, started: Instant, what: String) {
    println!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    log.events
        .push(format!("[{:.1}s] {what}", started.elapsed().as_secs_f64()));
}

fn window(log: &Mutex<DrillLog>, began: Instant) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    log.windows.push((began, Instant::now() + SETTLE));
}

/// Runs `plan` against `targets`, times from `started`; records into `log`. Stops at
/// the first fault that fails (recorded as the log's error).
pub async fn run(
    plan: DrillPlan,
    targets: &Targets,
    log: &Mutex<DrillLog>,
    started: Instant,
    cancel: CancellationToken,
) {
    if let Err(e) = steps(plan, targets, log, started, &cancel).await {
        let text = format!("{e:#}");
        note(log, started, format!("drill failed: {text}"));
        log.lock().unwrap_or_else(|p| p.into_inner()).error = Some(text);
    }
}

async fn at(started: Instant, offset: Duration, cancel: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        _ = cancel.cancelled() => bail!("cancelled"),
        _ = tokio::time::sleep_until(started + offset) => Ok(()),
    }
}

/// Waits until the node of `zone` (the one the fault hit) sees every node running again,
/// and every replica is ready. Asking that one node is enough (it sees the others only
/// once they see it), and each question starts an Erlang VM for `rabbitmqctl`: on a
/// small machine, asking all three would slow the system under test.
async fn whole_again(targets: &Targets, zone: usize) -> anyhow::Result<()> {
    let lab = Arc::clone(&targets.lab);
    blocking(move || {
        let nodes = lab.cluster().nodes().len();
        Ok(lab.wait_running_nodes(zone, nodes, REJOIN_TIMEOUT)?)
    })
    .await?;
    for replica in &targets.replicas {
        replica.wait_ready(READY_TIMEOUT).await?;
    }
    Ok(())
}

async fn steps(
    plan: DrillPlan,
    targets: &Targets,
    log: &Mutex<DrillLog>,
    started: Instant,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // 1. A zone cut off: its node pauses (pause_minority), its replicas reach nothing.
    at(started, plan.cut_at, cancel).await?;
    let began = Instant::now();
    let (lab, zone) = (Arc::clone(&targets.lab), plan.cut_zone);
    blocking(move || Ok(lab.isolate(zone)?)).await?;
    note(
        log,
        started,
        format!("zone {zone} cut off for {:?}", plan.cut_for),
    );
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(plan.cut_for) => {}
    }
    let lab = Arc::clone(&targets.lab);
    blocking(move || Ok(lab.heal()?)).await?;
    whole_again(targets, zone).await?;
    window(log, began);
    log.lock().unwrap_or_else(|p| p.into_inner()).zone_cuts += 1;
    note(
        log,
        started,
        format!("zone {zone} healed; cluster whole, replicas ready"),
    );

    // 2. A node killed with SIGKILL and started again on its data.
    at(started, plan.node_kill_at, cancel).await?;
    let began = Instant::now();
    let (lab, node) = (Arc::clone(&targets.lab), plan.kill_node);
    blocking(move || Ok(lab.kill(node)?)).await?;
    note(log, started, format!("node {node} killed (SIGKILL)"));
    let lab = Arc::clone(&targets.lab);
    blocking(move || Ok(lab.restart(node)?)).await?;
    whole_again(targets, node).await?;
    window(log, began);
    log.lock().unwrap_or_else(|p| p.into_inner()).node_kills += 1;
    note(log, started, format!("node {node} restarted and rejoined"));

    // 3. One replica of each service killed in the middle of its work, started again.
    at(started, plan.replica_kill_at, cancel).await?;
    let began = Instant::now();
    for service in Service::ALL {
        let Some(replica) = targets.replicas.iter().find(|r| r.service == service) else {
            continue;
        };
        replica.kill()?;
        note(log, started, format!("{} killed (SIGKILL)", replica.name));
        let (lab, r) = (Arc::clone(&targets.lab), Arc::clone(replica));
        blocking(move || r.start(&lab)).await?;
        replica.wait_ready(READY_TIMEOUT).await?;
        log.lock().unwrap_or_else(|p| p.into_inner()).replica_kills += 1;
        note(
            log,
            started,
            format!("{} started again and ready", replica.name),
        );
    }
    window(log, began);

    // 4. The stock service slow: the inventory replicas' breakers trip, decisions come
    //    from the cached snapshot and are settled by the compensator afterwards.
    at(started, plan.outage_at, cancel).await?;
    let began = Instant::now();
    let secs = plan.outage_for.as_secs_f64();
    for replica in targets
        .replicas
        .iter()
        .filter(|r| r.service == Service::Inventory)
    {
        let body = serde_json::json!({ "mode": "slow", "seconds": secs });
        let resp = httpc::request(
            replica.addr,
            "POST",
            "/admin/stock",
            Some(&body),
            &[],
            Duration::from_secs(5),
        )
        .await?;
        if resp.status != 200 {
            bail!("{} answered {}: {}", replica.name, resp.status, resp.text());
        }
    }
    log.lock().unwrap_or_else(|p| p.into_inner()).stock_outages += 1;
    note(log, started, format!("stock service slow for {secs:.0} s"));
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(plan.outage_for) => {}
    }
    window(log, began);
    note(log, started, "stock service back".to_string());
    Ok(())
}
