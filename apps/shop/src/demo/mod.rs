//! The demo runner: the three services in process, a load of orders through the API,
//! faults on a schedule, a wait for the system to drain, and the report, computed from
//! the services' stores.

pub mod dashboard;
pub mod faults;
pub mod load;
pub mod report;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lepus::{Publisher, PublisherOptions, Role, Topology};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::service::Common;
use crate::system::{System, SystemConfig};
use faults::{BrokerControl, FaultLog, FaultPlan};
use load::LoadStats;
use report::{Report, StoreState};

/// How a demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The services.
    pub system: SystemConfig,
    /// Orders per second.
    pub rate: f64,
    /// Orders in all.
    pub count: u64,
    /// Inject faults.
    pub faults: bool,
    /// How long the stock service stays slow (default: from the load's length).
    pub outage: Option<Duration>,
    /// How long to wait for the system to drain once load and faults are over.
    pub drain_timeout: Duration,
    /// Where the dashboard listens (none: no dashboard).
    pub dashboard: Option<SocketAddr>,
    /// How long to keep the services and dashboard up after the report.
    pub linger: Duration,
    /// Told the dashboard's address once it listens (useful with port 0).
    pub dashboard_bound: Option<tokio::sync::mpsc::UnboundedSender<SocketAddr>>,
}

/// What a demo run ends with.
#[derive(Debug)]
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// The stores' final state.
    pub state: StoreState,
    /// The first fault that could not be injected, if any.
    pub fault_error: Option<String>,
}

fn wipe_stores(common: &Common) -> anyhow::Result<()> {
    for db in [common.order_db(), common.inventory_db(), common.notify_db()] {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = db.clone().into_os_string();
            path.push(suffix);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", db.display()));
                }
            }
        }
    }
    Ok(())
}

async fn read_stores(common: &Common) -> anyhow::Result<StoreState> {
    report::read_stores(common).await
}

/// The stores, and what the dead-letter queues hold (read through `client`, every
/// message put back).
pub async fn observe(common: &Common, client: &lepus::Client) -> anyhow::Result<StoreState> {
    let mut state = read_stores(common).await?;
    let dlqs: Vec<String> = common
        .names
        .all_queues()
        .into_iter()
        .filter(|q| crate::queues::kind(q) == "dead-letter")
        .collect();
    let dead = crate::deadletter::read(client, &dlqs, DLQ_READ_TIMEOUT).await?;
    state.apply_dead_letters(&dead);
    Ok(state)
}

/// The longest one read of the dead-letter queues may take.
const DLQ_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn progress_line(
    started: Instant,
    load: &LoadStats,
    total: u64,
    s: &StoreState,
    breaker: &str,
) -> String {
    format!(
        "[{:6.1}s] orders {}/{} accepted {} | confirmed {}/{} | reserved {} rejected {} | notified {} | dead-lettered {} | in flight {} | breaker {}",
        started.elapsed().as_secs_f64(),
        load.sent.load(Ordering::Relaxed),
        total,
        s.accepted,
        s.confirmed,
        s.published,
        s.reserved,
        s.rejected,
        s.notified,
        s.dead_lettered,
        s.unresolved.len(),
        breaker,
    )
}

/// Runs the demo. `broker` is how faults reach the broker (none: broker faults are
/// skipped). Returns once the system has drained (or the drain timed out) and the
/// services have stopped.
pub async fn run(
    options: DemoOptions,
    broker: Option<Arc<dyn BrokerControl>>,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    let common = options.system.common.clone();
    wipe_stores(&common)?;
    let system = System::start(options.system.clone(), &cancel)
        .await
        .context("starting the services")?;
    let ready = system.wait_ready(Duration::from_secs(120)).await;
    if let Err(e) = ready {
        system.stop().await;
        return Err(e.context("the services never became ready (is the broker running?)"));
    }
    let demo_client = common.client("demo", Topology::new(), true)?;
    let publisher = Publisher::new(&demo_client, PublisherOptions::default().mandatory(true));

    let load_time = Duration::from_secs_f64(options.count as f64 / options.rate.max(0.01));
    println!(
        "shop demo: {} orders at {}/s (~{:.0} s), faults {}",
        options.count,
        options.rate,
        load_time.as_secs_f64(),
        if options.faults { "on" } else { "off" }
    );
    println!("  order API        http://{}/orders", system.order.addr);
    println!(
        "  inventory admin  http://{}/admin/breaker",
        system.inventory.addr
    );
    println!(
        "  notify health    http://{}/health/ready",
        system.notify.addr
    );

    let started = Instant::now();
    let stats = Arc::new(LoadStats::default());
    let fault_log = Arc::new(FaultLog::new(started));
    let phase = Arc::new(Mutex::new("running".to_string()));
    let final_report = Arc::new(Mutex::new(None));
    let set_phase = |p: &str| *phase.lock().unwrap_or_else(|e| e.into_inner()) = p.to_string();
    let dashboard_stop = cancel.child_token();
    if let Some(addr) = options.dashboard {
        let sources = dashboard::Sources {
            common: common.clone(),
            clients: vec![
                (
                    "order",
                    system.order.client.clone(),
                    vec![(Role::Publish, "shared")],
                ),
                (
                    "inventory",
                    system.inventory.client.clone(),
                    vec![(Role::Publish, "publish"), (Role::Consume, "consume")],
                ),
                (
                    "notify",
                    system.notify.client.clone(),
                    vec![(Role::Publish, "publish"), (Role::Consume, "consume")],
                ),
            ],
            demo_client: demo_client.clone(),
            breaker: Arc::clone(&system.inventory.breaker),
            warehouse: Arc::clone(&system.inventory.warehouse),
            load: Arc::clone(&stats),
            total: options.count,
            rate: options.rate,
            faults: Arc::clone(&fault_log),
            started,
            phase: Arc::clone(&phase),
            report: Arc::clone(&final_report),
        };
        match dashboard::start(sources, addr, dashboard_stop.clone()).await {
            Ok(bound) => {
                println!("  dashboard        http://{bound}/");
                if let Some(tx) = &options.dashboard_bound {
                    let _ = tx.send(bound);
                }
            }
            Err(e) => println!("  dashboard        not started: {e:#}"),
        }
    }
    let load_task = tokio::spawn(load::run(
        system.order.addr,
        options.rate,
        options.count,
        Arc::clone(&stats),
        cancel.child_token(),
    ));

    // Progress every 5 s until the load and the faults are over.
    let progress_stop = cancel.child_token();
    let progress = {
        let (common, stats, stop) = (common.clone(), Arc::clone(&stats), progress_stop.clone());
        let client = demo_client.clone();
        let breaker = Arc::clone(&system.inventory.breaker);
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
                    println!(
                        "{}",
                        progress_line(started, &stats, total, &s, breaker.status().state.as_str())
                    );
                }
            }
        })
    };

    let faults = async {
        if !options.faults {
            return Ok(());
        }
        let plan = FaultPlan::for_load(load_time, options.outage);
        let targets = faults::Targets {
            system: &system,
            broker: broker.clone(),
            publisher: publisher.clone(),
        };
        faults::run(plan, targets, &fault_log, started, cancel.child_token()).await
    };
    let (fault_result, load_result) = tokio::join!(faults, load_task);
    if let Err(e) = load_result {
        tracing::error!(error = %e, "the load task failed");
    }
    let fault_error = fault_result.err().map(|e| format!("{e:#}"));
    println!(
        "[{:6.1}s] load and faults done: {} orders sent, {} accepted, {} request retries; draining",
        started.elapsed().as_secs_f64(),
        stats.sent.load(Ordering::Relaxed),
        stats.accepted.load(Ordering::Relaxed),
        stats.retried_requests.load(Ordering::Relaxed),
    );
    // From each order's scheduled send time to the API's answer (bench/shop-ceiling
    // reads this line).
    println!(
        "[{:6.1}s] accept latency: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        started.elapsed().as_secs_f64(),
        stats.accept_ms(50.0),
        stats.accept_ms(99.0),
        stats.accept_ms(99.9),
        stats.accept_ms(100.0),
    );

    set_phase("draining");
    // Drain: every accepted order final, both outboxes empty, cached decisions verified.
    let deadline = Instant::now() + options.drain_timeout;
    let mut state = observe(&common, &demo_client).await?;
    loop {
        let drained = state.unresolved.is_empty()
            && state.outbox_pending == 0
            && state.compensation_pending == 0;
        if drained || Instant::now() >= deadline || cancel.is_cancelled() {
            if !drained {
                println!(
                    "[{:6.1}s] drain timed out after {:?}",
                    started.elapsed().as_secs_f64(),
                    options.drain_timeout
                );
            }
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        state = match observe(&common, &demo_client).await {
            Ok(s) => s,
            // A broker briefly away: the next look decides.
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "demo: cannot read the state");
                continue;
            }
            Err(e) => return Err(e),
        };
    }
    progress_stop.cancel();
    let _ = progress.await;
    println!(
        "{}",
        progress_line(
            started,
            &stats,
            options.count,
            &state,
            system.inventory.breaker.status().state.as_str()
        )
    );

    let lepus_duplicates = system
        .inventory
        .consumer_stats
        .deduplicated
        .load(Ordering::Relaxed)
        + system
            .notify
            .consumer_stats
            .deduplicated
            .load(Ordering::Relaxed);
    let report = state.report(
        fault_log.broker_restarts.load(Ordering::Relaxed),
        fault_log.connection_kills.load(Ordering::Relaxed),
        lepus_duplicates,
    );

    set_phase("done");
    *final_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    if !options.linger.is_zero() {
        println!("services stay up for {:?} (Ctrl-C to stop)", options.linger);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(options.linger) => {}
        }
    }
    dashboard_stop.cancel();
    let _ = publisher.close(Duration::from_secs(5)).await;
    let _ = demo_client.close(Duration::from_secs(5)).await;
    system.stop().await;
    Ok(Outcome {
        report,
        state,
        fault_error,
    })
}
