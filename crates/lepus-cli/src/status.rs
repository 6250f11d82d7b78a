//! `lepus status` (placeholder).
use clap::Args;
use std::process::ExitCode;
/// Options of `lepus status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The work queue.
    #[arg(long, short = 'q')]
    queue: String,
}
/// Runs `lepus status`.
pub async fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
