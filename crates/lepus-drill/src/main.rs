//! `lepus-drill`: runs fault scenarios against a three-zone lab and checks every message.
//!
//! ```text
//! lepus-drill [--json] [--short] [--scenario NAME ...] [--rate N] [--out DIR]
//! lepus-drill --list
//! lepus-drill --cleanup
//! ```
//!
//! Prints one table row per scenario (and, with `--json`, one JSON object as the last
//! line), writes one SVG per scenario under `--out`, and exits non-zero if a message was
//! lost, left unanswered, or failed where it must not. Needs root (network namespaces).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use lepus_drill::env::Env;
use lepus_drill::report::{Summary, table};
use lepus_drill::scenario::{self, RunOptions, Scenario};

/// Fault drills: fixed-rate load through lepus against a three-zone RabbitMQ cluster.
#[derive(Debug, Parser)]
#[command(name = "lepus-drill")]
struct Args {
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Only the three scenarios CI runs.
    #[arg(long)]
    short: bool,
    /// Run only these scenarios (`name` for all its queue types, or `name/quorum`).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Messages per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Heartbeat the client asks for, in seconds (a dead connection is noticed after two).
    #[arg(long, default_value_t = 2)]
    heartbeat: u16,
    /// Seconds of load before the fault.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of load after the fault ends.
    #[arg(long, default_value_t = 8)]
    tail: u64,
    /// The publisher's stall timeout in milliseconds (0 turns the check off, to compare
    /// with a publisher that waits on a stalled channel); lepus's default if not given.
    #[arg(long, value_name = "MS")]
    stall_timeout_ms: Option<u64>,
    /// Where the pictures go.
    #[arg(long, default_value = "target/drill")]
    out: PathBuf,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Remove labs left by drills or tests that were killed, and exit.
    #[arg(long)]
    cleanup: bool,
}

fn select(args: &Args) -> anyhow::Result<Vec<Scenario>> {
    let all = if args.short {
        scenario::short_set()
    } else {
        scenario::catalog()
    };
    if args.scenarios.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for wanted in &args.scenarios {
        let found: Vec<Scenario> = all
            .iter()
            .filter(|s| s.name == wanted.as_str() || s.full_name() == *wanted)
            .copied()
            .collect();
        if found.is_empty() {
            bail!("no scenario {wanted} (see --list)");
        }
        chosen.extend(found);
    }
    Ok(chosen)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    // lepus's own warnings (a lost connection, a stalled publishing channel) go to
    // stderr with the scenario's lines; `LEPUS_DRILL_LOG` (an `EnvFilter`) says more or
    // less.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEPUS_DRILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("lepus=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if args.cleanup {
        lepus_testkit::zones::cleanup_stale()?;
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = select(&args)?;
    if args.list {
        for s in &chosen {
            println!("{}", s.full_name());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunOptions {
        rate: args.rate,
        warmup: Duration::from_secs(args.warmup),
        tail: Duration::from_secs(args.tail),
        out_dir: args.out.clone(),
        stall_timeout: args.stall_timeout_ms.map(|ms| match ms {
            0 => Duration::MAX,
            ms => Duration::from_millis(ms),
        }),
    };
    eprintln!("drill: starting a lab of three zones");
    let env = Env::start(args.heartbeat).await?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for s in &chosen {
        eprintln!("drill: {} ...", s.full_name());
        match scenario::run(&env, s, &opts).await {
            Ok(row) => {
                eprint!("{}", table(std::slice::from_ref(&row)));
                rows.push(row);
            }
            Err(e) => {
                eprintln!("drill: {}: could not run: {e:#}", s.full_name());
                errors.push(s.full_name());
            }
        }
    }
    drop(env);
    println!("{}", table(&rows));
    println!("pictures: {}", args.out.display());
    if !errors.is_empty() {
        println!("could not run: {}", errors.join(", "));
    }
    if args.json {
        println!("{}", Summary::new(&rows).json());
    }
    let passed = errors.is_empty() && rows.iter().all(lepus_drill::check::Row::passed);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
