//! `bench`: lepus-amqp and lepus against amqprs and lapin, one workload, one broker, one
//! process.
//!
//! See `bench/README.md` for what is measured and how to read the output.

#![forbid(unsafe_code)]

mod clients;
mod cpu;
mod observability;
mod report;
mod run;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use clients::{Client, Workload};
use observability::{Mode, Observability};
use report::{Results, Row};
use run::Runner;

/// Publishes, then consumes, the same persistent workload with each client, in rotating
/// order over several rounds, and reports the median of each figure.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Args {
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
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
    runtime.block_on(bench(args, clients, workload))
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
        "broker {}; {} queue(s) x {} persistent messages of {} bytes; confirm window {}, prefetch {}, ack multiple every {}; {} round(s)",
        report::redact(&args.amqp_url),
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
        Arc::from(args.amqp_url.as_str()),
        workload,
        args.queues as usize,
        Duration::from_secs(args.timeout_secs),
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
            eprintln!(
                "round {}/{} {:<width$} publish {:>9.0} msg/s {:>6.2} us/msg | consume {:>9.0} msg/s {:>6.2} us/msg",
                round + 1,
                args.rounds,
                row.label,
                figures.publish_msgs_per_s,
                figures.publish_cpu_us_per_msg,
                figures.consume_msgs_per_s,
                figures.consume_cpu_us_per_msg,
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
