//! The `lepus` command for operators: publish, consume, benchmark a RabbitMQ broker and
//! repair dead-letter queues through the same supervised client services use, so what it
//! measures and what it survives is what a service built on lepus measures and survives.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod connect;
mod consume;
mod dlq;
mod publish;
mod render;
mod subscription;

/// Operator tools for RabbitMQ services built with lepus.
#[derive(Parser, Debug)]
#[command(name = "lepus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish messages with publisher confirms; one line per message.
    Publish(publish::PublishArgs),
    /// Tail a queue: print each message, then acknowledge it.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency (in the spirit of RabbitMQ's PerfTest), and with
    /// --verify count lost and duplicated messages exactly.
    Bench(bench::BenchArgs),
    /// Inspect and repair a lepus consumer's dead-letter queue: list, show, replay, move,
    /// purge.
    Dlq(dlq::DlqArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Publish(args) => publish::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
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

/// The error and its causes, each cause shown only if the text so far does not already
/// say it (the toolkit's errors repeat the engine's message they wrap).
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_are_shown_once() {
        let inner = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(inner)
            .context("no connection within 2s: connection refused")
            .context("cannot connect to amqp://h");
        assert_eq!(
            describe(&err),
            "cannot connect to amqp://h: no connection within 2s: connection refused"
        );
    }
}
