//! The zoned run (`shop demo --zones 3`, `scripts/demo --zones 3`): shop as it would run
//! multi-active across three zones, under a drill.
//!
//! The single-node demo runs the three services in one process on one broker. Here
//! every piece is where a production deployment would put it:
//!
//! - a lab of three zones (network namespaces on a private bridge, from the test kit),
//!   one RabbitMQ node in each, clustered, every queue a quorum queue;
//! - two replicas of each service (order, inventory, notification), each a `shop`
//!   process of its own inside a zone's namespace, connecting to all three nodes and
//!   competing on the same queues ([`replica`]);
//! - PostgreSQL on the lab's host address, reachable from every zone, one database per
//!   service;
//! - HAProxy in the root namespace on loopback, in front of the order replicas
//!   ([`haproxy`]): the stand-in for the global load balancer;
//! - a load of orders through HAProxy, each retried with the same `Idempotency-Key` on
//!   failure, while the drill ([`drill`]) cuts a zone off, kills a node, kills one replica
//!   of each service and makes the stock service slow.
//!
//! The report ([`report`]) says whether the system met its goals: nothing lost, 99.95 %
//! of requests accepted, accept p99 within 200 ms outside the fault windows, every
//! replica did work, every cached decision settled.
//!
//! Needs root (namespaces), `ip`, `haproxy` and PostgreSQL's server binaries
//! (`scripts/install-haproxy`, `scripts/install-postgres`).

pub mod drill;
pub mod haproxy;
pub mod replica;
pub mod report;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lepus::Topology;
use lepus_testkit::Lab;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::pg_server::PgServer;
use crate::demo::load::{self, LoadStats};
use crate::demo::report::StoreState;
use crate::service::Common;
use crate::topology::Names;
use drill::{DrillLog, DrillPlan, Targets};
use replica::{Replica, Service};
use report::ZoneReport;

/// Zones (and nodes) of the run: the only shape offered.
pub const ZONES: usize = 3;
/// Where each replica runs: service, name, zone. The first replica of each service is
/// the one the drill kills; zone 1, which the drill cuts off, holds an order replica.
pub const PLACEMENT: [(Service, &str, usize); 6] = [
    (Service::Order, "order-a", 0),
    (Service::Order, "order-b", 1),
    (Service::Inventory, "inventory-a", 1),
    (Service::Inventory, "inventory-b", 2),
    (Service::Notify, "notify-a", 2),
    (Service::Notify, "notify-b", 0),
];
/// The longest the replicas may take to be ready at the start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest one look at the stores and DLQs may take.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// How a zoned run goes.
#[derive(Debug, Clone)]
pub struct ZoneOptions {
    /// The `shop` program the replicas run.
    pub program: PathBuf,
    /// The run's directory (logs, configuration, SQLite files, PostgreSQL's data).
    pub dir: PathBuf,
    /// Exchange and queue name prefix.
    pub namespace: String,
    /// Orders per second.
    pub rate: f64,
    /// Orders in all.
    pub count: u64,
    /// How long the zone stays cut off.
    pub cut_for: Duration,
    /// How long the stock service stays slow.
    pub outage_for: Duration,
    /// How long to wait for the system to drain after the load.
    pub drain_timeout: Duration,
    /// Where HAProxy listens (port 0: a free one).
    pub front_door: SocketAddr,
}

/// What a zoned run ends with.
#[derive(Debug)]
pub struct ZoneOutcome {
    /// The report.
    pub report: ZoneReport,
    /// The stores' final state.
    pub state: StoreState,
    /// The goals missed (empty: passed).
    pub missed: Vec<String>,
    /// The drill's log.
    pub events: Vec<String>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking step panicked")?
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Everything the run started; stopped in order on [`Parts::stop`].
struct Parts {
    lab: Arc<Lab>,
    pg: Option<PgServer>,
    replicas: Vec<Arc<Replica>>,
    front: Option<haproxy::FrontDoor>,
}

impl Parts {
    async fn stop(mut self) {
        drop(self.front.take());
        for r in &self.replicas {
            let _ = r.kill();
        }
        self.replicas.clear();
        let (lab, pg) = (self.lab, self.pg.take());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(pg) = pg {
                let _ = pg.stop();
            }
            drop(lab);
        })
        .await;
    }
}

/// Starts the lab, PostgreSQL, the replicas and HAProxy; sets `common`'s broker URLs to
/// the lab's nodes. On an error, what was started is stopped.
async fn start_parts(options: &ZoneOptions, common: &mut Common) -> anyhow::Result<Parts> {
    println!("shop zones: starting a lab of {ZONES} zones, one RabbitMQ node each");
    let lab = Arc::new(blocking(|| Ok(Lab::builder(ZONES).start()?)).await?);
    common.amqp_urls = lab.urls();
    let host = lab.host_ip();
    let mut parts = Parts {
        lab: Arc::clone(&lab),
        pg: None,
        replicas: Vec::new(),
        front: None,
    };
    println!("shop zones: starting PostgreSQL on {host} (reachable from every zone)");
    let pg_dir = options.dir.join("postgres");
    let pg = blocking(move || PgServer::start(&pg_dir, &[host.into()], 0)).await;
    let pg = match pg {
        Ok(pg) => pg,
        Err(e) => {
            parts.stop().await;
            return Err(e.context("starting PostgreSQL"));
        }
    };
    let urls: BTreeMap<Service, String> = Service::ALL
        .iter()
        .map(|s| (*s, pg.url_on(host.into(), s.name())))
        .collect();
    // The report reads the same databases, from the root namespace.
    common.database_url = Some(pg.url_on(host.into(), "{service}"));
    parts.pg = Some(pg);
    let result = async {
        let common_args = vec![
            "--amqp-url".to_string(),
            common.amqp_urls.join(","),
            "--namespace".into(),
            common.names.exchange().to_string(),
            "--quorum".into(),
            "--data-dir".into(),
            common.data_dir.display().to_string(),
        ];
        for (service, name, zone) in PLACEMENT {
            let env = vec![(
                "SHOP_DATABASE_URL".to_string(),
                urls.get(&service).cloned().unwrap_or_default(),
            )];
            let launch = replica::Launch {
                program: &options.program,
                common_args: &common_args,
                dir: &options.dir,
            };
            let replica = Replica::new(&lab, (service, name, zone), launch, env)?;
            parts.replicas.push(Arc::new(replica));
        }
        // Consumers first, so their queues exist before orders flow.
        for phase in [[Service::Notify, Service::Inventory], [Service::Order; 2]] {
            for r in parts.replicas.iter().filter(|r| phase.contains(&r.service)) {
                let (lab, r2) = (Arc::clone(&lab), Arc::clone(r));
                blocking(move || r2.start(&lab)).await?;
            }
            for r in parts.replicas.iter().filter(|r| phase.contains(&r.service)) {
                r.wait_ready(START_TIMEOUT).await?;
                println!("  {:<12} zone {} http://{}/", r.name, r.zone, r.addr);
            }
        }
        let mut front = options.front_door;
        if front.port() == 0 {
            front.set_port(free_port()?);
        }
        let backends: Vec<(String, SocketAddr)> = parts
            .replicas
            .iter()
            .filter(|r| r.service == Service::Order)
            .map(|r| (r.name.clone(), r.addr))
            .collect();
        let dir = options.dir.clone();
        let door = blocking(move || haproxy::FrontDoor::start(&dir, front, &backends)).await?;
        println!("  front door   http://{}/orders (HAProxy)", door.addr());
        parts.front = Some(door);
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(parts),
        Err(e) => {
            parts.stop().await;
            Err(e)
        }
    }
}

async fn observe(common: &Common, client: &lepus::Client) -> anyhow::Result<StoreState> {
    tokio::time::timeout(OBSERVE_TIMEOUT, crate::demo::observe(common, client))
        .await
        .context("looking at the stores took too long")?
}

fn wipe(dir: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Runs the zoned demo: starts everything, runs the load and the drill, waits for the
/// system to drain, stops everything and reports.
pub async fn run(options: ZoneOptions, cancel: CancellationToken) -> anyhow::Result<ZoneOutcome> {
    if !(options.rate > 0.0 && options.rate.is_finite()) || options.count == 0 {
        anyhow::bail!("the rate must be positive and the count at least 1");
    }
    wipe(&options.dir)?;
    let data_dir = options.dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let mut common = Common {
        amqp_urls: Vec::new(),
        names: Names::new(options.namespace.clone()),
        quorum: true,
        data_dir,
        database_url: None,
    };
    let parts = start_parts(&options, &mut common).await?;
    let outcome = drive(&options, &common, &parts, &cancel).await;
    parts.stop().await;
    outcome
}

fn progress_line(started: Instant, stats: &LoadStats, total: u64, s: &StoreState) -> String {
    format!(
        "[{:6.1}s] orders {}/{} accepted {} (requests {}) | reserved {} rejected {} | notified {} | dead-lettered {} | in flight {} | cached decisions pending {}",
        started.elapsed().as_secs_f64(),
        stats.sent.load(Ordering::Relaxed),
        total,
        s.accepted,
        stats.attempts.load(Ordering::Relaxed),
        s.reserved,
        s.rejected,
        s.notified,
        s.dead_lettered,
        s.unresolved.len(),
        s.compensation_pending,
    )
}

async fn drive(
    options: &ZoneOptions,
    common: &Common,
    parts: &Parts,
    cancel: &CancellationToken,
) -> anyhow::Result<ZoneOutcome> {
    let front = parts
        .front
        .as_ref()
        .map(haproxy::FrontDoor::addr)
        .context("the front door is not running")?;
    let client = common.client("zones-report", Topology::new(), true)?;
    let load_time = Duration::from_secs_f64(options.count as f64 / options.rate);
    println!(
        "shop zones: {} orders at {}/s (~{:.0} s) through HAProxy, with the drill",
        options.count,
        options.rate,
        load_time.as_secs_f64()
    );
    let started = Instant::now();
    let stats = Arc::new(LoadStats::default());
    let stop = cancel.child_token();

    // Every replica's work counter, once a second.
    let scraper = {
        let (replicas, stop) = (parts.replicas.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for r in &replicas {
                    r.scrape().await;
                }
            }
        })
    };
    let progress = {
        let (common, client, stats, stop) = (
            common.clone(),
            client.clone(),
            Arc::clone(&stats),
            stop.clone(),
        );
        let total = options.count;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Ok(s) = observe(&common, &client).await {
                    println!("{}", progress_line(started, &stats, total, &s));
                }
            }
        })
    };
    let load_task = tokio::spawn(load::run(
        front,
        options.rate,
        options.count,
        Arc::clone(&stats),
        cancel.child_token(),
    ));
    let plan = DrillPlan::for_load(load_time, options.cut_for, options.outage_for);
    let targets = Targets {
        lab: Arc::clone(&parts.lab),
        replicas: parts.replicas.clone(),
    };
    let log = Mutex::new(DrillLog::default());
    let (_, load_result) = tokio::join!(
        drill::run(plan, &targets, &log, started, cancel.child_token()),
        load_task
    );
    if let Err(e) = load_result {
        tracing::error!(error = %e, "the load task failed");
    }
    println!(
        "[{:6.1}s] load and drill done: {} orders, {} accepted, {} requests; draining",
        started.elapsed().as_secs_f64(),
        stats.sent.load(Ordering::Relaxed),
        stats.accepted.load(Ordering::Relaxed),
        stats.attempts.load(Ordering::Relaxed),
    );

    let deadline = Instant::now() + options.drain_timeout;
    let mut state = observe(common, &client).await;
    loop {
        let drained = matches!(&state, Ok(s) if s.unresolved.is_empty()
            && s.outbox_pending == 0
            && s.compensation_pending == 0);
        if drained || Instant::now() >= deadline || cancel.is_cancelled() {
            if !drained {
                println!("drain timed out after {:?}", options.drain_timeout);
            }
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        state = observe(common, &client).await;
    }
    stop.cancel();
    let _ = progress.await;
    let _ = scraper.await;
    for r in &parts.replicas {
        r.scrape().await;
    }
    let state = state?;
    println!("{}", progress_line(started, &stats, options.count, &state));
    let _ = client.close(Duration::from_secs(5)).await;

    let log = log.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut replicas: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &parts.replicas {
        replicas
            .entry(r.service.name().to_string())
            .or_default()
            .insert(r.name.clone(), r.handled());
    }
    let attempted = stats.attempts.load(Ordering::Relaxed);
    let accepted_requests = stats.accepted.load(Ordering::Relaxed);
    let samples = stats
        .accept_times
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let report = ZoneReport {
        base: state.report(log.node_kills, 0, 0),
        attempted,
        availability: report::availability(accepted_requests, attempted),
        accept_p99_ms: report::p99_outside(&samples, &log.windows),
        zone_cuts: log.zone_cuts,
        node_kills: log.node_kills,
        replica_kills: log.replica_kills,
        replicas,
    };
    let mut missed = report.missed(&state);
    if let Some(e) = &log.error {
        missed.insert(0, format!("the drill failed: {e}"));
    }
    let abandoned = stats.abandoned.load(Ordering::Relaxed);
    if abandoned > 0 {
        missed.push(format!("{abandoned} orders given up by the client"));
    }
    Ok(ZoneOutcome {
        report,
        state,
        missed,
        events: log.events,
    })
}
