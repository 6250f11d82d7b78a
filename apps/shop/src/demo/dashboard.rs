//! The demo's dashboard: one HTML page polling `/api/state` once a second.
//!
//! A sampler task builds the state every second from the services' stores (the same
//! figures the report uses), the broker (queue depths by passive declare through the demo
//! client's pooled channels), the breaker, the clients' connection states and the fault
//! log, so the page itself is plain HTML and a little JavaScript, with no build step.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use lepus::amqp::{FieldTable, QueueDeclareOptions};
use lepus::{Client, Role};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::faults::{FaultEvent, FaultLog};
use super::load::LoadStats;
use super::report::{Report, StoreState, read_stores};
use crate::breaker::CircuitBreaker;
use crate::service::{Common, connection_state};
use crate::stock::Warehouse;

const PAGE: &str = include_str!("dashboard.html");
/// Seconds of orders-per-second history kept for the chart.
const HISTORY: usize = 120;

/// One queue's depth.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    /// Its name.
    pub name: String,
    /// `work`, `retry` or `dead-letter`.
    pub kind: &'static str,
    /// Ready messages (none while the broker cannot be asked).
    pub messages: Option<u32>,
    /// Consumers.
    pub consumers: Option<u32>,
}

/// One connection's state.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// The service.
    pub service: &'static str,
    /// `publish`, `consume` or `shared`.
    pub role: &'static str,
    /// `Connected`, `Reconnecting (attempt n)`, ...
    pub state: String,
}

/// Figures from the stores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Orders accepted.
    pub accepted: u64,
    /// Outbox publish attempts.
    pub published: u64,
    /// Outbox rows confirmed.
    pub confirmed: u64,
    /// Outbox rows waiting.
    pub outbox_pending: u64,
    /// Orders reserved.
    pub reserved: u64,
    /// Orders rejected.
    pub rejected: u64,
    /// Decisions from the cached snapshot.
    pub decided_from_cache: u64,
    /// Compensation checks waiting.
    pub compensation_pending: u64,
    /// Customers notified.
    pub notified: u64,
    /// Dead-letter records.
    pub dead_lettered: u64,
    /// Duplicates caught by the stores.
    pub duplicates: u64,
    /// Accepted orders not final yet.
    pub in_flight: u64,
}

/// The breaker as shown.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    /// `closed`, `open`, `half-open`.
    pub state: &'static str,
    /// Trips so far.
    pub trips: u64,
    /// Failed probes so far.
    pub reopens: u64,
}

/// What `/api/state` answers.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardState {
    /// Seconds since the demo's load began.
    pub elapsed_s: f64,
    /// `starting`, `running`, `draining`, `done`.
    pub phase: String,
    /// Orders sent by the load generator.
    pub sent: u64,
    /// Orders the load will send.
    pub total: u64,
    /// The load's rate.
    pub rate: f64,
    /// Orders accepted per second, over the last 5 s.
    pub orders_per_sec: f64,
    /// Notifications per second, over the last 5 s.
    pub notified_per_sec: f64,
    /// Orders per second, one value per second, oldest first.
    pub history: Vec<f64>,
    /// Figures from the stores.
    pub totals: Totals,
    /// Queue depths.
    pub queues: Vec<QueueDepth>,
    /// The stock-check breaker.
    pub breaker: BreakerView,
    /// The stock service's mode.
    pub stock_mode: String,
    /// Every connection's state.
    pub connections: Vec<ConnectionView>,
    /// Recent faults, newest first.
    pub faults: Vec<FaultEvent>,
    /// The final report, once done.
    pub report: Option<Report>,
}

/// A service's client and its connections (role and label) to show.
pub type ServiceClient = (&'static str, Client, Vec<(Role, &'static str)>);

/// What the sampler reads.
pub struct Sources {
    /// Stores and names.
    pub common: Common,
    /// Each service's client and the roles it uses.
    pub clients: Vec<ServiceClient>,
    /// A client for passive declares.
    pub demo_client: Client,
    /// The stock-check breaker.
    pub breaker: Arc<CircuitBreaker>,
    /// The stock service.
    pub warehouse: Arc<Warehouse>,
    /// The load generator's counters.
    pub load: Arc<LoadStats>,
    /// Orders the load will send.
    pub total: u64,
    /// The load's rate.
    pub rate: f64,
    /// The fault log.
    pub faults: Arc<FaultLog>,
    /// When the load began.
    pub started: Instant,
    /// The phase, set by the runner.
    pub phase: Arc<Mutex<String>>,
    /// The report, set by the runner at the end.
    pub report: Arc<Mutex<Option<Report>>>,
}

type Shared = Arc<Mutex<Option<DashboardState>>>;

/// Serves the dashboard on `addr` and samples every second until `cancel`. Returns the
/// bound address.
pub async fn start(
    sources: Sources,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let shared: Shared = Arc::new(Mutex::new(None));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/state", get(api_state))
        .with_state(Arc::clone(&shared));
    let bound = lepus::observability::serve(addr, app, cancel.clone()).await?;
    tokio::spawn(sample(sources, shared, cancel));
    Ok(bound)
}

async fn api_state(State(shared): State<Shared>) -> axum::Json<serde_json::Value> {
    let state = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
    axum::Json(match state {
        Some(s) => serde_json::to_value(s).unwrap_or_default(),
        None => serde_json::json!({ "phase": "starting" }),
    })
}

fn queue_kind(name: &str) -> &'static str {
    if name.ends_with(".dlq") {
        "dead-letter"
    } else if name.contains(".retry.") {
        "retry"
    } else {
        "work"
    }
}

async fn depths(client: &Client, names: &[String]) -> Vec<QueueDepth> {
    let mut out: Vec<QueueDepth> = names
        .iter()
        .map(|n| QueueDepth {
            name: n.clone(),
            kind: queue_kind(n),
            messages: None,
            consumers: None,
        })
        .collect();
    let ask = async {
        for q in out.iter_mut() {
            let Ok(ch) = client.channel().await else {
                return;
            };
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(info) = ch
                .queue_declare(&q.name, passive, FieldTable::default())
                .await
            {
                q.messages = Some(info.message_count);
                q.consumers = Some(info.consumer_count);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), ask).await;
    out
}

fn per_sec(history: &VecDeque<(Instant, u64, u64)>, pick: fn(&(Instant, u64, u64)) -> u64) -> f64 {
    let (Some(first), Some(last)) = (history.front(), history.back()) else {
        return 0.0;
    };
    let dt = last.0.duration_since(first.0).as_secs_f64();
    if dt <= 0.0 {
        return 0.0;
    }
    pick(last).saturating_sub(pick(first)) as f64 / dt
}

async fn sample(sources: Sources, shared: Shared, cancel: CancellationToken) {
    let queues = sources.common.names.all_queues();
    let mut window: VecDeque<(Instant, u64, u64)> = VecDeque::new();
    let mut history: VecDeque<f64> = VecDeque::new();
    let mut totals = Totals::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Ok(s) = read_stores(&sources.common).await {
            totals = totals_of(&s);
        }
        let now = Instant::now();
        window.push_back((now, totals.accepted, totals.notified));
        while window
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(5))
        {
            window.pop_front();
        }
        let orders_per_sec = per_sec(&window, |s| s.1);
        history.push_back((orders_per_sec * 10.0).round() / 10.0);
        while history.len() > HISTORY {
            history.pop_front();
        }
        let status = sources.breaker.status();
        let connections = sources
            .clients
            .iter()
            .flat_map(|(service, client, roles)| {
                roles.iter().map(move |(role, label)| ConnectionView {
                    service,
                    role: label,
                    state: connection_state(client, *role),
                })
            })
            .collect();
        let queue_depths = depths(&sources.demo_client, &queues).await;
        // Dead letters stay in their queues: the count is what they hold.
        let in_dlqs: Vec<u32> = queue_depths
            .iter()
            .filter(|q| q.kind == "dead-letter")
            .filter_map(|q| q.messages)
            .collect();
        if !in_dlqs.is_empty() {
            totals.dead_lettered = in_dlqs.iter().map(|n| u64::from(*n)).sum();
        }
        let phase = sources
            .phase
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let report = sources
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let state = DashboardState {
            elapsed_s: (sources.started.elapsed().as_millis() as f64) / 1000.0,
            phase,
            sent: sources.load.sent.load(Ordering::Relaxed),
            total: sources.total,
            rate: sources.rate,
            orders_per_sec,
            notified_per_sec: per_sec(&window, |s| s.2),
            history: history.iter().copied().collect(),
            totals: totals.clone(),
            queues: queue_depths,
            breaker: BreakerView {
                state: status.state.as_str(),
                trips: status.trips,
                reopens: status.reopens,
            },
            stock_mode: format!("{:?}", sources.warehouse.mode()).to_lowercase(),
            connections,
            faults: sources.faults.recent(20),
            report,
        };
        *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }
}

fn totals_of(s: &StoreState) -> Totals {
    Totals {
        accepted: s.accepted,
        published: s.published,
        confirmed: s.confirmed,
        outbox_pending: s.outbox_pending,
        reserved: s.reserved,
        rejected: s.rejected,
        decided_from_cache: s.decided_from_cache,
        compensation_pending: s.compensation_pending,
        notified: s.notified,
        dead_lettered: s.dead_lettered,
        duplicates: s.store_duplicates,
        in_flight: s.unresolved.len() as u64,
    }
}
