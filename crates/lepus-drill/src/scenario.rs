//! The scenarios and how one is run: settle the cluster, connect, place the queue, load,
//! fault, load on, then drain and check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lepus::{CancellationToken, Publisher, Role, Topology};

use crate::check::{Row, check};
use crate::env::{Env, QueueKind};
use crate::fault::Fault;
use crate::load;
use crate::record::Recorder;

/// One scenario: a fault against one kind of queue.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The fault's name, e.g. `kill-leader-node`.
    pub name: &'static str,
    /// What is done.
    pub fault: Fault,
    /// Against which queue.
    pub queue: QueueKind,
}

impl Scenario {
    /// `name/queue`, e.g. `kill-leader-node/quorum`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.name, self.queue.as_str())
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const LATENCY: Fault = Fault::Latency {
    base: Duration::from_millis(500),
    jitter: Duration::from_millis(100),
    hold: secs(20),
};
const BANDWIDTH: Fault = Fault::Bandwidth {
    bytes_per_sec: 100_000,
    hold: secs(15),
};
const RESETS: Fault = Fault::Resets {
    period: secs(2),
    hold: secs(20),
};

/// Every scenario of the full drill, in the order it runs.
///
/// Classic queues live on one node: they are drilled where the fault leaves that node
/// alone or brings the whole cluster back (a classic queue on a dead node cannot take
/// messages, which is RabbitMQ's design, not a client's failure).
pub fn catalog() -> Vec<Scenario> {
    use QueueKind::{Classic, Quorum};
    let s = |name, fault, queue| Scenario { name, fault, queue };
    vec![
        s(
            "kill-client-node",
            Fault::KillClientNode { down: secs(10) },
            Quorum,
        ),
        s(
            "kill-client-node",
            Fault::KillClientNode { down: secs(10) },
            Classic,
        ),
        s(
            "kill-leader-node",
            Fault::KillLeaderNode { down: secs(10) },
            Quorum,
        ),
        s(
            "kill-client-and-leader-node",
            Fault::KillClientAndLeaderNode { down: secs(10) },
            Quorum,
        ),
        s(
            "pause-node-60s",
            Fault::PauseNode { hold: secs(60) },
            Quorum,
        ),
        s(
            "cut-client-zone",
            Fault::CutClientZone { hold: secs(20) },
            Quorum,
        ),
        s(
            "isolate-broker-zone",
            Fault::IsolateBrokerZone { hold: secs(20) },
            Quorum,
        ),
        s("blackhole", Fault::Blackhole { hold: secs(20) }, Quorum),
        s("blackhole", Fault::Blackhole { hold: secs(20) }, Classic),
        s("latency-500ms", LATENCY, Quorum),
        s("latency-500ms", LATENCY, Classic),
        s("bandwidth-100kBps", BANDWIDTH, Quorum),
        s("bandwidth-100kBps", BANDWIDTH, Classic),
        s("reset-every-2s", RESETS, Quorum),
        s("reset-every-2s", RESETS, Classic),
        s("rolling-restart", Fault::RollingRestart, Quorum),
        s("cluster-stop-start", Fault::ClusterStopStart, Quorum),
        s("cluster-stop-start", Fault::ClusterStopStart, Classic),
    ]
}

/// The three scenarios CI runs: a leader failover under a connected client, the
/// client's own node killed (a reconnect elsewhere), and a broker gone silent behind the
/// proxy (noticed only by heartbeats).
pub fn short_set() -> Vec<Scenario> {
    let wanted = [
        "kill-leader-node/quorum",
        "kill-client-node/quorum",
        "blackhole/quorum",
    ];
    catalog()
        .into_iter()
        .filter(|s| wanted.contains(&s.full_name().as_str()))
        .collect()
}

/// How scenarios run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Messages per second.
    pub rate: u32,
    /// Load before the fault.
    pub warmup: Duration,
    /// Load after the fault ends.
    pub tail: Duration,
    /// Where the pictures go.
    pub out_dir: PathBuf,
    /// The publisher's stall timeout; `None` keeps lepus's default.
    pub stall_timeout: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            rate: 2_000,
            warmup: secs(3),
            tail: secs(8),
            out_dir: PathBuf::from("target/drill"),
            stall_timeout: None,
        }
    }
}

/// Runs one scenario on a settled cluster and checks it.
pub async fn run(env: &Env, scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Row> {
    let name = scenario.full_name();
    env.settle().await?;
    let id = lepus_testkit::unique_name(&format!(
        "drill-{}-{}",
        scenario.name,
        scenario.queue.as_str()
    ));
    let urls = env.urls()?;
    let client_urls = if scenario.fault.proxied() {
        env.proxy_urls()
    } else {
        urls.clone()
    };
    // The queue is in the client's topology, as lepus recommends: a connection whose
    // node cannot reach the queue's node is then not used to publish into it.
    let client = env.client(
        "drill",
        &client_urls,
        Topology::new().queue(crate::env::queue_def(&id, scenario.queue)),
    )?;
    client
        .wait_connected(Duration::from_secs(60))
        .await
        .context("the drill client's first connect")?;
    let client_node = env.connected_node(&client, Role::Publish).await?;
    let leader = env
        .declare(&id, scenario.queue, scenario.fault.leader(client_node))
        .await?;
    eprintln!("drill: {name}: client on node {client_node}, queue leader on node {leader}");

    let rec = Arc::new(Recorder::new(id.clone()));
    for role in [Role::Publish, Role::Consume] {
        tokio::spawn(log_states(
            name.clone(),
            client.watch_state(role),
            role,
            Arc::clone(&rec),
            env.hosts(scenario.fault.proxied()),
        ));
    }
    let stop_consumer = CancellationToken::new();
    let consumer = load::spawn_consumer(&client, &id, Arc::clone(&rec), stop_consumer.clone())?;
    let publisher = Publisher::new(&client, load::publisher_options(opts.stall_timeout));
    let stop_load = CancellationToken::new();
    let generator = load::spawn_load(
        publisher.clone(),
        id.clone(),
        opts.rate,
        Arc::clone(&rec),
        stop_load.clone(),
    );

    tokio::time::sleep(opts.warmup).await;
    let fault = scenario
        .fault
        .inject(env, client_node, leader, &rec)
        .await
        .with_context(|| format!("{name}: the fault"));
    if fault.is_ok() {
        tokio::time::sleep(opts.tail).await;
    }
    stop_load.cancel();
    let _ = generator.await;
    // Every publish has a deadline; after it, each message is confirmed or failed.
    let flushed = publisher
        .flush(crate::fault::PUBLISH_TIMEOUT + secs(10))
        .await;
    load::wait_consumed(&rec, secs(3), secs(60)).await;
    stop_consumer.cancel();
    let consumer_end = tokio::time::timeout(secs(40), consumer).await;
    let stalls = publisher.stats().snapshot().stalls;
    if stalls > 0 {
        eprintln!("drill: {name}: the publisher stalled {stalls} time(s) and reconnected");
    }
    let _ = publisher.close(secs(5)).await;
    let _ = client.close(secs(5)).await;
    let window = fault?;
    if let Err(e) = flushed {
        eprintln!("drill: {name}: publisher flush: {}", e.report());
    }
    match consumer_end {
        Ok(Ok(Ok(()))) => {}
        other => eprintln!("drill: {name}: consumer ended with {other:?}"),
    }
    let drained = load::drain(&urls, &id, &rec).await?;
    let snap = rec.snapshot();
    let row = check(&name, &snap, window, scenario.fault.failures_allowed());
    eprintln!(
        "drill: {name}: drained {drained}, {} foreign ids; fault {:?}..{:?}",
        snap.foreign, window.start, window.end
    );
    let file = opts
        .out_dir
        .join(format!("{}-{}.svg", scenario.name, scenario.queue.as_str()));
    crate::chart::write(&file, &name, &snap, window, opts.rate)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(row)
}

/// Prints every state change of one of the client's connections, with the time since the
/// scenario started and the node, until the client closes.
async fn log_states(
    name: String,
    mut states: tokio::sync::watch::Receiver<lepus::ConnectionState>,
    role: Role,
    rec: Arc<Recorder>,
    nodes: Vec<String>,
) {
    loop {
        let line = match &*states.borrow_and_update() {
            lepus::ConnectionState::Connected { host } => {
                let node = nodes
                    .iter()
                    .position(|n| n == host)
                    .map_or_else(|| host.clone(), |i| format!("node {i}"));
                format!("connected to {node}")
            }
            lepus::ConnectionState::Reconnecting {
                attempt,
                last_error,
            } => format!("reconnecting (attempt {attempt}): {last_error}"),
            other => other.name().to_owned(),
        };
        eprintln!(
            "drill: {name}: {:>7.3}s {role:?} {line}",
            rec.now().as_secs_f64()
        );
        if states.changed().await.is_err() {
            return;
        }
    }
}
