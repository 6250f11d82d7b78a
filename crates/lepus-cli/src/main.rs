//! The `lepus` command for operators: check a connection end to end (`doctor`), see a
//! consumer's queues (`status`), keep the topology as a file (`topology`), publish,
//! consume, benchmark a RabbitMQ broker and repair dead-letter queues, through the same
//! supervised client services use, so what it measures and what it survives is what a
//! service built on lepus measures and survives.
//!
//! Exit codes are listed in [`exit`].

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

mod bench;
mod connect;
mod consume;
mod dlq;
mod doctor;
mod exit;
mod mgmt;
mod profile;
mod publish;
mod render;
mod status;
mod subscription;
mod topo;

/// Operator tools for RabbitMQ services built with lepus.
#[derive(Parser, Debug)]
#[command(
    name = "lepus",
    version,
    about,
    after_help = "Exit codes: 0 success, 1 error, 2 bad usage, 3 warnings or changes to apply, 4 checks failed, 5 could not connect."
)]
struct Cli {
    #[command(flatten)]
    connect: connect::ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a connection the way a service makes it, check by check: DNS, TCP, TLS and
    /// the certificate, login, the broker, heartbeat and frame size, permissions, alarms,
    /// clock skew.
    #[command(visible_alias = "tls-check")]
    Doctor(doctor::DoctorArgs),
    /// Show a lepus consumer's queues: the work queue, each retry tier and the
    /// dead-letter queue, with depth, consumers and rates.
    Status(status::StatusArgs),
    /// Export, plan and apply the topology (exchanges, queues, bindings) as RabbitMQ
    /// definitions JSON.
    Topology(topo::TopologyArgs),
    /// Publish messages with publisher confirms.
    Publish(publish::PublishArgs),
    /// Tail a queue: print each message, then acknowledge it.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency (PerfTest's flags), and with --verify count lost
    /// and duplicated messages exactly.
    Bench(bench::BenchArgs),
    /// Inspect and repair a lepus consumer's dead-letter queue: list, show, replay, move,
    /// purge.
    Dlq(dlq::DlqArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "lepus", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("lepus: cannot write the man page: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    match cli.connect.resolve() {
        Ok(resolved) => connect::install(resolved),
        Err(err) => {
            eprintln!("lepus: error: {}", describe(&err));
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lepus: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Doctor(args) => doctor::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Topology(args) => topo::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
        }
    });
    // Tasks still waiting on a dead broker must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("lepus: error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ". Each error in the chain says only its own
/// part, so nothing repeats.
fn describe(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_joined_as_it_is() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(inner)
            .context("no connection within 2s")
            .context("cannot connect to amqp://h");
        assert_eq!(
            describe(&err),
            "cannot connect to amqp://h: no connection within 2s: connection refused"
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_options_are_global() {
        let before = Cli::try_parse_from(["lepus", "--amqp-url", "amqp://a", "status", "-q", "q"]);
        let after = Cli::try_parse_from(["lepus", "status", "-q", "q", "--amqp-url", "amqp://a"]);
        for cli in [before, after] {
            let cli = cli.map_err(|e| e.to_string());
            assert_eq!(cli.map(|c| c.connect.urls), Ok(vec!["amqp://a".to_owned()]));
        }
    }
}
