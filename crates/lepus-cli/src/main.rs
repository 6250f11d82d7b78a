//! The `lepus` command for operators.

use clap::Parser;

/// Operator tools for RabbitMQ services built with lepus.
#[derive(Parser, Debug)]
#[command(name = "lepus", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
