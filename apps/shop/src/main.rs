//! `shop`: the reference order system (orders -> inventory -> notifications).
//!
//! Every flag can also be set through an environment variable (`SHOP_...`, shown in
//! `--help`), as containerised services are configured; a flag on the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use shop::demo::DemoOptions;
use shop::demo::faults::{BrokerControl, NodeBroker};
use shop::demo::report::render;
use shop::inventory::{InventoryOptions, InventoryService};
use shop::notify::{NotifyOptions, NotifyService};
use shop::order::OrderService;
use shop::service::Common;
use shop::system::{System, SystemConfig};
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "shop",
    version,
    about = "The lepus reference order system and its demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The order service alone (HTTP API: POST /orders, GET /orders/{id}).
    Order {
        #[command(flatten)]
        common: CommonArgs,
        /// Where the order API listens.
        #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// The inventory service alone (admin API: /admin/stock, /admin/breaker).
    Inventory {
        #[command(flatten)]
        common: CommonArgs,
        /// Where the admin and health API listens.
        #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8082")]
        listen: SocketAddr,
    },
    /// The notification service alone.
    Notify {
        #[command(flatten)]
        common: CommonArgs,
        /// Where the health API listens.
        #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8083")]
        listen: SocketAddr,
    },
    /// All three services in one process, each with its own client and store.
    All {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        ports: PortArgs,
    },
    /// A PostgreSQL cluster of the project's own for replicated runs (Debian's binaries,
    /// scripts/install-postgres): one database per service; prints the URL (with
    /// `{service}` for the database) and runs until Ctrl-C or SIGTERM, then stops it.
    Postgres(PostgresArgs),
    /// The demo: all three services under a load of orders and a schedule of faults,
    /// then a report computed from their stores (exit status 1 if any order was lost).
    Demo(Box<DemoArgs>),
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    ports: PortArgs,
    /// Orders per second (default 25; 50 with --zones).
    #[arg(long, env = "SHOP_DEMO_RATE")]
    rate: Option<f64>,
    /// Orders in all (default 1500, about a minute; 6000 with --zones, two minutes).
    #[arg(long, env = "SHOP_DEMO_COUNT")]
    count: Option<u64>,
    /// Run across this many zones (only 3): a lab of network namespaces with a node
    /// each, two replicas of every service as processes in the zones, PostgreSQL,
    /// HAProxy in front, and the zone drill (needs root, haproxy, PostgreSQL). Without
    /// it, the single-node demo.
    #[arg(long, env = "SHOP_DEMO_ZONES")]
    zones: Option<usize>,
    /// With --zones: seconds the zone stays cut off.
    #[arg(long, env = "SHOP_DEMO_CUT_SECS", default_value_t = 20.0)]
    cut_secs: f64,
    /// With --zones: where HAProxy listens.
    #[arg(long, env = "SHOP_DEMO_FRONT_DOOR", default_value = "127.0.0.1:8090")]
    front_door: SocketAddr,
    /// Inject faults: connection kill, stock outage, malformed event, broker SIGKILL.
    #[arg(long, env = "SHOP_DEMO_FAULTS", default_value = "on", value_parser = ["on", "off"])]
    faults: String,
    /// Seconds the stock service stays slow (default: 12 % of the load, at least 4; with
    /// --zones 15).
    #[arg(long, env = "SHOP_DEMO_OUTAGE_SECS")]
    outage_secs: Option<f64>,
    /// Seconds to wait for the system to drain after the load.
    #[arg(long, env = "SHOP_DEMO_DRAIN_TIMEOUT_SECS", default_value_t = 180)]
    drain_timeout_secs: u64,
    /// Where the dashboard listens.
    #[arg(long, env = "SHOP_DEMO_DASHBOARD", default_value = "127.0.0.1:8080")]
    dashboard: SocketAddr,
    /// Seconds to keep the services and dashboard up after the report.
    #[arg(long, env = "SHOP_DEMO_LINGER_SECS", default_value_t = 0)]
    linger_secs: u64,
    /// The share of notifications the simulated mail gateway fails (retried).
    #[arg(long, env = "SHOP_DEMO_GATEWAY_FAILURE_RATE", default_value_t = 0.02)]
    gateway_failure_rate: f64,
    /// The broker node's directory (as made by scripts/broker, e.g. target/rabbitmq/n1,
    /// holding its lepus-node.state): enables the broker kill and connection close.
    /// Without it those are skipped.
    #[arg(long, env = "SHOP_DEMO_BROKER_NODE_DIR")]
    broker_node_dir: Option<PathBuf>,
}

#[derive(Args)]
struct PostgresArgs {
    /// Its directory (data, logs, password); kept across runs.
    #[arg(long, env = "SHOP_PG_DIR", default_value = "target/shop-postgres")]
    dir: PathBuf,
    /// Addresses to listen on besides 127.0.0.1 (e.g. a bridge's address that network
    /// namespaces reach); repeat, or separate with commas in the environment.
    #[arg(long, env = "SHOP_PG_LISTEN", value_delimiter = ',')]
    listen: Vec<std::net::IpAddr>,
    /// Its port (0: a free one).
    #[arg(long, env = "SHOP_PG_PORT", default_value_t = 5433)]
    port: u16,
    /// Write the URL template (loopback) to this file once it accepts connections.
    #[arg(long, env = "SHOP_PG_URL_FILE")]
    url_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// AMQP URL of the broker; repeat for the nodes of a cluster (in the environment,
    /// separate them with commas).
    #[arg(
        long = "amqp-url",
        env = "SHOP_AMQP_URL",
        value_delimiter = ',',
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_urls: Vec<String>,
    /// Directory of the services' SQLite files (when no --database-url is given).
    #[arg(long, env = "SHOP_DATA_DIR", default_value = "shop-data")]
    data_dir: PathBuf,
    /// The service's database: postgres://user:password@host:port/db for a store shared
    /// by replicas, or a SQLite path. `{service}` in it is replaced by the service's name
    /// (order, inventory, notify), so `shop all` takes one URL for its three stores.
    /// Default: SQLite files in --data-dir.
    #[arg(long, env = "SHOP_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Prefix of the exchange and queue names.
    #[arg(long, env = "SHOP_NAMESPACE", default_value = "shop")]
    namespace: String,
    /// Declare every queue as a quorum queue, the retry and dead-letter queues included,
    /// with a delivery limit on the work queues (for a cluster; classic otherwise).
    #[arg(long, env = "SHOP_QUORUM")]
    quorum: bool,
    /// Write JSON logs to this file instead of stdout.
    #[arg(long, env = "SHOP_LOG_FILE")]
    log_file: Option<PathBuf>,
}

impl CommonArgs {
    fn common(&self) -> Common {
        Common {
            amqp_urls: self.amqp_urls.clone(),
            names: Names::new(self.namespace.clone()),
            quorum: self.quorum,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct PortArgs {
    /// Where the order API listens.
    #[arg(long, env = "SHOP_ORDER_LISTEN", default_value = "127.0.0.1:8081")]
    order_listen: SocketAddr,
    /// Where the inventory admin API listens.
    #[arg(long, env = "SHOP_INVENTORY_LISTEN", default_value = "127.0.0.1:8082")]
    inventory_listen: SocketAddr,
    /// Where the notification health API listens.
    #[arg(long, env = "SHOP_NOTIFY_LISTEN", default_value = "127.0.0.1:8083")]
    notify_listen: SocketAddr,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shop: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shop: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let cancel = CancellationToken::new();
    cancel_on_signal(cancel.clone());
    match cli.command {
        Command::Order { common, listen } => {
            let _telemetry =
                shop::telemetry::init_logging("shop-order", common.log_file.as_deref())?;
            shop::telemetry::metrics_handle(); // lepus's recorder, with its upkeep thread
            let service =
                OrderService::start(&common.common(), listen, cancel.child_token()).await?;
            cancel.cancelled().await;
            service.stop().await;
        }
        Command::Inventory { common, listen } => {
            let _telemetry =
                shop::telemetry::init_logging("shop-inventory", common.log_file.as_deref())?;
            shop::telemetry::metrics_handle(); // lepus's recorder, with its upkeep thread
            let service = InventoryService::start(
                &common.common(),
                InventoryOptions::default(),
                listen,
                cancel.child_token(),
            )
            .await?;
            cancel.cancelled().await;
            service.stop().await;
        }
        Command::Notify { common, listen } => {
            let _telemetry =
                shop::telemetry::init_logging("shop-notify", common.log_file.as_deref())?;
            shop::telemetry::metrics_handle(); // lepus's recorder, with its upkeep thread
            let service = NotifyService::start(
                &common.common(),
                NotifyOptions::default(),
                listen,
                cancel.child_token(),
            )
            .await?;
            cancel.cancelled().await;
            service.stop().await;
        }
        Command::All { common, ports } => {
            let _telemetry = shop::telemetry::init_logging("shop", common.log_file.as_deref())?;
            shop::telemetry::metrics_handle(); // lepus's recorder, with its upkeep thread
            let system = System::start(
                SystemConfig {
                    common: common.common(),
                    order_listen: ports.order_listen,
                    inventory_listen: ports.inventory_listen,
                    notify_listen: ports.notify_listen,
                    inventory: InventoryOptions::default(),
                    notify: NotifyOptions::default(),
                },
                &cancel,
            )
            .await
            .context("starting the services")?;
            cancel.cancelled().await;
            system.stop().await;
        }
        Command::Demo(args) => return demo(*args, cancel).await,
        Command::Postgres(args) => {
            let server = tokio::task::spawn_blocking(move || {
                shop::db::pg_server::PgServer::start(&args.dir, &args.listen, args.port)
                    .map(|s| (s, args))
            })
            .await
            .context("starting PostgreSQL")??;
            let (server, args) = server;
            let url = server.url("{service}");
            for address in &args.listen {
                println!("{}", server.url_on(*address, "{service}"));
            }
            println!("{url}");
            if let Some(file) = &args.url_file {
                std::fs::write(file, format!("{url}\n"))
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            cancel.cancelled().await;
            tokio::task::spawn_blocking(move || server.stop())
                .await
                .context("stopping PostgreSQL")??;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn demo(args: DemoArgs, cancel: CancellationToken) -> anyhow::Result<std::process::ExitCode> {
    if let Some(zones) = args.zones {
        return zoned_demo(args, zones, cancel).await;
    }
    let (rate, count) = (args.rate.unwrap_or(25.0), args.count.unwrap_or(1500));
    if !(rate > 0.0 && rate.is_finite()) || count == 0 {
        anyhow::bail!("--rate must be positive and --count at least 1");
    }
    let log_file = args
        .common
        .log_file
        .clone()
        .unwrap_or_else(|| args.common.data_dir.join("shop.log"));
    let _telemetry = shop::telemetry::init_logging("shop-demo", Some(&log_file))?;
    shop::telemetry::metrics_handle(); // lepus's recorder, with its upkeep thread
    println!("logs (JSON): {}", log_file.display());
    let broker: Option<Arc<dyn BrokerControl>> = match &args.broker_node_dir {
        Some(dir) => Some(Arc::new(NodeBroker::attach(dir)?) as Arc<dyn BrokerControl>),
        None => None,
    };
    let options = DemoOptions {
        system: SystemConfig {
            common: args.common.common(),
            order_listen: args.ports.order_listen,
            inventory_listen: args.ports.inventory_listen,
            notify_listen: args.ports.notify_listen,
            inventory: InventoryOptions::default(),
            notify: NotifyOptions {
                gateway_failure_rate: args.gateway_failure_rate,
            },
        },
        rate,
        count,
        faults: args.faults == "on",
        outage: args
            .outage_secs
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        dashboard: Some(args.dashboard),
        linger: Duration::from_secs(args.linger_secs),
        dashboard_bound: None,
    };
    let outcome = shop::demo::run(options, broker, cancel).await?;
    println!();
    println!("shop demo report (from the services' stores)");
    print!("{}", render(&outcome.report, &outcome.state));
    let mut code = std::process::ExitCode::SUCCESS;
    if let Some(e) = &outcome.fault_error {
        println!("  a fault could not be injected: {e}");
        code = std::process::ExitCode::from(2);
    }
    if outcome.report.lost > 0 {
        code = std::process::ExitCode::from(1);
    }
    println!("{}", serde_json::to_string(&outcome.report)?);
    Ok(code)
}

async fn zoned_demo(
    args: DemoArgs,
    zones: usize,
    cancel: CancellationToken,
) -> anyhow::Result<std::process::ExitCode> {
    if zones != shop::zones::ZONES {
        anyhow::bail!("--zones {zones}: only {} is offered", shop::zones::ZONES);
    }
    let log_file = args
        .common
        .log_file
        .clone()
        .unwrap_or_else(|| args.common.data_dir.join("shop-zones.log"));
    std::fs::create_dir_all(&args.common.data_dir)?;
    let _telemetry = shop::telemetry::init_logging("shop-zones", Some(&log_file))?;
    println!(
        "logs (JSON): {} and the replicas' beside it",
        log_file.display()
    );
    let secs = |s: f64, what: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!(
                "{what} must be a positive number of seconds"
            ))
        }
    };
    let options = shop::zones::ZoneOptions {
        program: std::env::current_exe().context("finding the shop program")?,
        dir: args.common.data_dir.join("zones"),
        namespace: args.common.namespace.clone(),
        rate: args.rate.unwrap_or(50.0),
        count: args.count.unwrap_or(6000),
        cut_for: secs(args.cut_secs, "--cut-secs")?,
        outage_for: secs(args.outage_secs.unwrap_or(15.0), "--outage-secs")?,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        front_door: args.front_door,
    };
    let outcome = shop::zones::run(options, cancel).await?;
    println!();
    println!("shop zones report (from the services' stores, the DLQs and the load)");
    print!("{}", render(&outcome.report.base, &outcome.state));
    let r = &outcome.report;
    let line = |label: &str, value: String| println!("  {label:<34} {value}");
    line("requests through HAProxy", r.attempted.to_string());
    line("availability", format!("{:.5}", r.availability));
    line(
        "accept p99 outside fault windows",
        format!("{} ms", r.accept_p99_ms),
    );
    line(
        "faults",
        format!(
            "{} zone cuts, {} node kills, {} replica kills",
            r.zone_cuts, r.node_kills, r.replica_kills
        ),
    );
    for (service, replicas) in &r.replicas {
        let each: Vec<String> = replicas.iter().map(|(n, h)| format!("{n} {h}")).collect();
        line(&format!("{service} replicas handled"), each.join(", "));
    }
    for event in &outcome.events {
        println!("  drill {event}");
    }
    let code = if outcome.missed.is_empty() {
        println!("  all goals met");
        std::process::ExitCode::SUCCESS
    } else {
        for m in &outcome.missed {
            println!("  GOAL MISSED: {m}");
        }
        std::process::ExitCode::from(1)
    };
    println!("{}", serde_json::to_string(&outcome.report)?);
    Ok(code)
}
