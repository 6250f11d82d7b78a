//! `bench`: lepus-amqp and lepus against amqprs and lapin, one workload, one broker (or
//! cluster), one process: throughput, latency at a fixed rate, and many connections.
//!
//! See `bench/README.md` for what is measured and how to read the output.

#![forbid(unsafe_code)]

mod clients;
mod conns;
mod cpu;
mod latency;
mod observability;
mod queues;
mod report;
mod run;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use clients::{Client, Workload};
use observability::{Mode, Observability};
use queues::QueueType;
use report::{Results, Row};
use run::Runner;

/// Publishes, then consumes, the same persistent workload with each client, in rotating
/// order over several rounds, and reports the median of each figure; or, with
/// `--latency`, end-to-end and confirm latency at a fixed rate; or, with `--connections`,
/// memory and idle CPU per connection and a broker restart under many clients.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Args {
    /// The broker. Repeat it for a cluster: queue i then lives on, and its clients talk
    /// to, the (i mod n)-th.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: Vec<String>,
    /// The queues' type: classic, or quorum (replicated; give the cluster's nodes).
    #[arg(long, value_enum, default_value_t = QueueType::Classic)]
    queue_type: QueueType,
    /// Measure end-to-end and confirm latency at a fixed rate (`--rate`) instead of
    /// throughput: one queue, one publisher and one consumer per client.
    #[arg(long, requires = "rate", conflicts_with_all = ["connections", "compare_observability"])]
    latency: bool,
    /// The latency arm's publish rate, msg/s.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// The latency arm: seconds of publishing per run (warm-up included).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// The latency arm: the first seconds of each run are not recorded.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Measure memory and idle CPU of this many connections per client (each client and
    /// shape in a child process of its own).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: Option<u64>,
    /// The connections arm: heartbeat interval asked of the broker, seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u16,
    /// The connections arm: seconds between opening the last connection and reading memory.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// The connections arm: the window over which CPU is measured, seconds.
    #[arg(long, default_value_t = 10.0)]
    window_secs: f64,
    /// The connections arm: a shell command that restarts the broker and returns once it
    /// is up again; `lepus` and `lapin` are then run through it.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// The connections arm: how long a connection may take to come back before it counts
    /// as given up, seconds.
    #[arg(long, default_value_t = 120.0)]
    restart_deadline_secs: f64,
    /// (internal) Run as the child of `--connections` for this client.
    #[arg(long, hide = true, requires = "connections")]
    conn_child: Option<String>,
    /// (internal) The child's shape.
    #[arg(long, hide = true, value_enum)]
    conn_shape: Option<conns::Shape>,
    /// (internal) The child watches its connections through a restart for this long.
    #[arg(long, hide = true)]
    restart_watch_secs: Option<f64>,
    /// Durable queues, each with one publishing and one consuming connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    queues: u64,
    /// Messages per queue.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Body size in bytes (8 or more lets the consumer check the order of every message).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Unconfirmed messages allowed per publishing connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    confirm: u64,
    /// Prefetch (basic.qos) of each consumer.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
    /// Ack with multiple=true every this many messages (and once more for the tail).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    multi_ack: u64,
    /// Rounds; the order of the clients rotates from one round to the next.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Which clients to run, comma-separated, in the order of the first round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lepus-amqp,lepus,amqprs,lapin"
    )]
    clients: Vec<String>,
    /// lepus's metrics (Prometheus recorder) and tracing (OpenTelemetry spans, JSON logs)
    /// for the `lepus` row: `on` installs them before any client runs.
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    observability: Switch,
    /// Run the `lepus` row four times a round, in one process: observability off, metrics
    /// only, metrics and sampled tracing, metrics and tracing of every message (rows
    /// `lepus`, `lepus+metrics`, `lepus+metrics+tracing`, `lepus+metrics+tracing-all`).
    #[arg(long, conflicts_with = "observability")]
    compare_observability: bool,
    /// The share of traces sampled when tracing is on (default: lepus's
    /// `DEFAULT_SAMPLE_RATIO`, or `OTEL_TRACES_SAMPLER` with `--observability on`).
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    sample_ratio: Option<f64>,
    /// Print one JSON object keyed by row name instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write that JSON object to this file (tables still go to stdout).
    #[arg(long, value_name = "PATH")]
    json_file: Option<std::path::PathBuf>,
    /// Give up on a phase (and the whole run) after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// A broker process (beam.smp) whose CPU each phase reports, with the machine's
    /// load; repeat it for a cluster's nodes.
    #[arg(long, value_name = "PID")]
    broker_pid: Vec<u32>,
    /// Seconds to let the broker settle between two client runs.
    #[arg(long, default_value_t = 1.0)]
    pause_secs: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

fn main() -> ExitCode {
    match run_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_main() -> Result<()> {
    let args = Args::parse();
    let mut clients = Vec::new();
    for name in &args.clients {
        let client = Client::from_name(name.trim())?;
        if clients.contains(&client) {
            bail!("client {name} is listed twice");
        }
        clients.push(client);
    }
    if clients.is_empty() {
        bail!("no client to run");
    }
    let workload = Workload {
        count: args.count,
        size: args.size,
        confirm: usize::try_from(args.confirm)?,
        prefetch: args.prefetch,
        multi_ack: args.multi_ack,
    };
    // A multi-thread runtime with tokio's default worker count (one per core).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(name) = &args.conn_child {
        return runtime.block_on(conn_child(&args, Client::from_name(name)?));
    }
    if let Some(n) = args.connections {
        return runtime.block_on(connections(&args, clients, usize::try_from(n)?));
    }
    if args.latency {
        return runtime.block_on(latency(&args, clients, workload));
    }
    runtime.block_on(bench(args, clients, workload))
}

/// A publish rate: a positive number of messages per second.
fn parse_rate(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{text:?} is not a positive rate")),
    }
}

/// A sampling ratio: a number from 0 to 1.
fn parse_ratio(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio from 0 to 1")),
    }
}

async fn bench(args: Args, clients: Vec<Client>, workload: Workload) -> Result<()> {
    let mode = match (args.compare_observability, args.observability) {
        (true, _) => Mode::Compare,
        (false, Switch::On) => Mode::On,
        (false, Switch::Off) => Mode::Off,
    };
    if mode != Mode::Off && !clients.contains(&Client::Lepus) {
        bail!("observability is measured on the lepus row: add lepus to --clients");
    }
    let observability = Observability::install(mode, args.sample_ratio)?;
    let rows = Row::all(&clients, mode);
    eprintln!(
        "broker {}; {} {} queue(s) x {} persistent messages of {} bytes; confirm window {}, prefetch {}, ack multiple every {}; {} round(s)",
        args.amqp_url
            .iter()
            .map(|u| report::redact(u))
            .collect::<Vec<_>>()
            .join(", "),
        args.queue_type.name(),
        args.queues,
        workload.count,
        workload.size,
        workload.confirm,
        workload.prefetch,
        workload.multi_ack,
        args.rounds
    );
    if mode != Mode::Off {
        eprintln!(
            "observability {}: lepus's metrics and tracing for the lepus row{}",
            mode.name(),
            if mode == Mode::Compare {
                " (arms: off, metrics, metrics and sampled tracing, metrics and tracing of every message)"
            } else {
                ""
            }
        );
    }
    let runner = Runner::new(
        args.amqp_url
            .iter()
            .map(|u| Arc::from(u.as_str()))
            .collect(),
        args.queue_type,
        workload,
        args.queues as usize,
        Duration::from_secs(args.timeout_secs),
        args.broker_pid.clone(),
    )
    .await?;
    let pause = Duration::from_secs_f64(args.pause_secs.max(0.0));
    let mut results = Results::new(&rows, workload.count * args.queues);
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(10);
    for round in 0..args.rounds as usize {
        let mut order = rows.clone();
        order.rotate_left(round % rows.len());
        for row in order {
            observability.switch(row.arm)?;
            let figures = runner.run(row.client, row.label, round + 1).await?;
            observability.switch(observability::Arm::Off)?;
            let broker = if args.broker_pid.is_empty() {
                String::new()
            } else {
                format!(
                    "broker {:.0}%/{:.0}% of a core, ",
                    figures.publish_load.broker_cpu_pct, figures.consume_load.broker_cpu_pct
                )
            };
            eprintln!(
                "round {}/{} {:<width$} publish {:>9.0} msg/s {:>6.2} us/msg | consume {:>9.0} msg/s {:>6.2} us/msg | {broker}machine {:.0}%/{:.0}% busy",
                round + 1,
                args.rounds,
                row.label,
                figures.publish_msgs_per_s,
                figures.publish_cpu_us_per_msg,
                figures.consume_msgs_per_s,
                figures.consume_cpu_us_per_msg,
                figures.publish_load.machine_busy_pct,
                figures.consume_load.machine_busy_pct,
            );
            results.push(row, figures);
            tokio::time::sleep(pause).await;
        }
    }
    runner.close().await;
    let summary = observability.summary();
    if observability.mode() != Mode::Off {
        eprintln!("observability: recorded {summary}");
    }
    observability.close();
    let json = serde_json::to_string_pretty(&results.json(summary))?;
    if let Some(path) = &args.json_file {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", results.tables());
    }
    Ok(())
}

/// The first broker (the latency and connections arms use one).
fn first_url(args: &Args) -> Result<String> {
    args.amqp_url.first().cloned().context("no --amqp-url")
}

/// `--latency --rate R`: each client in rotating order, `--rounds` times.
async fn latency(args: &Args, clients: Vec<Client>, workload: Workload) -> Result<()> {
    let rate = args.rate.context("--latency needs --rate")?;
    if workload.size < latency::MIN_SIZE {
        bail!("--latency needs --size {} or more", latency::MIN_SIZE);
    }
    let count = (rate * args.duration_secs).ceil().max(1.0) as u64;
    let warmup = ((rate * args.warmup_secs).ceil() as u64).min(count.saturating_sub(1));
    let plan = latency::Plan {
        rate,
        count,
        warmup,
        workload: Workload { count, ..workload },
    };
    let url = first_url(args)?;
    eprintln!(
        "latency: broker {}, one {} queue, {rate:.0} msg/s for {:.1} s ({count} messages, the first {warmup} not recorded), {} bytes, persistent, confirms on; {} round(s)",
        report::redact(&url),
        args.queue_type.name(),
        args.duration_secs,
        workload.size,
        args.rounds
    );
    let runner = latency::LatencyRunner::new(
        Arc::from(url.as_str()),
        args.queue_type,
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    let mut results = latency::LatencyResults::new(&clients, rate, count - warmup);
    let pause = Duration::from_secs_f64(args.pause_secs.max(0.0));
    for round in 0..args.rounds as usize {
        let mut order = clients.clone();
        order.rotate_left(round % clients.len());
        for client in order {
            let measured = runner.run(client, plan, round + 1).await?;
            let f = results.push(client, &measured);
            eprintln!(
                "round {}/{} {:<10} e2e p50 {:>7.0} p99 {:>7.0} p99.9 {:>7.0} max {:>7.0} | confirm p50 {:>7.0} p99 {:>7.0} | send lag p99 {:>5.0} (us)",
                round + 1,
                args.rounds,
                client.name(),
                f[0],
                f[1],
                f[2],
                f[3],
                f[4],
                f[5],
                f[7]
            );
            tokio::time::sleep(pause).await;
        }
    }
    runner.close().await;
    emit(args, &results.json(), &results.tables())
}

/// Prints the JSON object or the tables, and writes the JSON file if asked.
fn emit(args: &Args, json: &serde_json::Value, tables: &str) -> Result<()> {
    let text = serde_json::to_string_pretty(json)?;
    if let Some(path) = &args.json_file {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{text}");
    } else {
        print!("{tables}");
    }
    Ok(())
}

/// `--connections N`: every client in a child of its own, then the restarts.
async fn connections(args: &Args, clients: Vec<Client>, n: usize) -> Result<()> {
    let plan = conns::Plan {
        url: first_url(args)?,
        connections: n,
        clients,
        heartbeat: args.heartbeat_secs,
        settle: Duration::from_secs_f64(args.settle_secs.max(0.0)),
        window: Duration::from_secs_f64(args.window_secs.max(0.1)),
        restart_cmd: args.restart_cmd.clone(),
        restart_deadline: Duration::from_secs_f64(args.restart_deadline_secs.max(1.0)),
    };
    let json = conns::run(&plan).await?;
    let mut tables = String::new();
    for (client, entry) in json.as_object().into_iter().flatten() {
        if entry.get("shapes").is_some() {
            tables.push_str(&format!(
                "{client:<11} KiB/conn bare {:>7.1} channels {:>7.1} publishing {:>7.1} | CPU% idle {:>5.2} channels {:>5.2} publishing {:>5.2}\n",
                entry["rss_per_connection_kb"].as_f64().unwrap_or(f64::NAN),
                entry["rss_per_connection_kb_10_channels"].as_f64().unwrap_or(f64::NAN),
                entry["rss_per_connection_kb_publishing"].as_f64().unwrap_or(f64::NAN),
                entry["idle_cpu_pct"].as_f64().unwrap_or(f64::NAN),
                entry["idle_cpu_pct_10_channels"].as_f64().unwrap_or(f64::NAN),
                entry["publishing_cpu_pct"].as_f64().unwrap_or(f64::NAN),
            ));
        }
    }
    tables.push_str(&format!(
        "targets: {}\n",
        serde_json::to_string_pretty(&json["targets"])?
    ));
    if let Some(restart) = json.get("restart") {
        for (client, r) in restart.as_object().into_iter().flatten() {
            tables.push_str(&format!(
                "restart {client}: {} back, {} gave up, all back {:.1} s after the broker was up, peak {:.0} connects/s\n{}",
                r["back"], r["gave_up"],
                r["all_back_after_broker_up_s"].as_f64().unwrap_or(f64::NAN),
                r["peak_accept_per_s"].as_f64().unwrap_or(f64::NAN),
                r["histogram_text"].as_str().unwrap_or(""),
            ));
        }
    }
    emit(args, &json, &tables)
}

/// The hidden child of `--connections`.
async fn conn_child(args: &Args, client: Client) -> Result<()> {
    conns::raise_nofile()?;
    let order = conns::child::Order {
        client,
        shape: args.conn_shape.context("--conn-child needs --conn-shape")?,
        connections: usize::try_from(
            args.connections
                .context("--conn-child needs --connections")?,
        )?,
        url: first_url(args)?,
        settle: Duration::from_secs_f64(args.settle_secs.max(0.0)),
        window: Duration::from_secs_f64(args.window_secs.max(0.1)),
        restart_watch: args
            .restart_watch_secs
            .map(|s| Duration::from_secs_f64(s.max(1.0))),
    };
    conns::child::run(order).await
}
