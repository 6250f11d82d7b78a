//! `bench`: lepus-amqp against amqprs and lapin, one workload, one broker, one process.
//!
//! See `bench/README.md` for what is measured and how to read the output.

#![forbid(unsafe_code)]

mod clients;
mod cpu;
mod report;
mod run;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use clients::{Client, Workload};
use report::Results;
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
    #[arg(long, value_delimiter = ',', default_value = "lepus-amqp,amqprs,lapin")]
    clients: Vec<String>,
    /// Print one JSON object keyed by client name instead of tables.
    #[arg(long)]
    json: bool,
    /// Give up on a phase (and the whole run) after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Seconds to let the broker settle between two client runs.
    #[arg(long, default_value_t = 1.0)]
    pause_secs: f64,
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

async fn bench(args: Args, clients: Vec<Client>, workload: Workload) -> Result<()> {
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
    let runner = Runner::new(
        Arc::from(args.amqp_url.as_str()),
        workload,
        args.queues as usize,
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    let pause = Duration::from_secs_f64(args.pause_secs.max(0.0));
    let mut results = Results::new(&clients, workload.count * args.queues);
    for round in 0..args.rounds as usize {
        let mut order = clients.clone();
        order.rotate_left(round % clients.len());
        for client in order {
            let figures = runner.run(client, round + 1).await?;
            eprintln!(
                "round {}/{} {:<10} publish {:>9.0} msg/s {:>6.2} us/msg | consume {:>9.0} msg/s {:>6.2} us/msg",
                round + 1,
                args.rounds,
                client.name(),
                figures.publish_msgs_per_s,
                figures.publish_cpu_us_per_msg,
                figures.consume_msgs_per_s,
                figures.consume_cpu_us_per_msg,
            );
            results.push(client, figures);
            tokio::time::sleep(pause).await;
        }
    }
    runner.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results.json())?);
    } else {
        print!("{}", results.tables());
    }
    Ok(())
}
