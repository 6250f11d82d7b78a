//! `lepus doctor` (placeholder).
use clap::Args;
use std::process::ExitCode;
/// Options of `lepus doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {}
/// Runs `lepus doctor`.
pub async fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
