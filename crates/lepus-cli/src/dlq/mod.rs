//! `lepus dlq`: look into the dead-letter queue of a lepus consumer and repair it.
//!
//! lepus's consumer moves a message that failed for good to `<queue>.dlq`, with
//! `x-lepus-*` headers saying where it came from and why it failed. These commands read
//! those headers back (`list`, `show`), put messages back to work once the cause is fixed
//! (`replay`), archive them (`move`), or drop them (`purge`).
//!
//! Nothing here can lose a message: reading holds messages unacknowledged and lets the
//! broker requeue them ([`scan`]); a message leaves the dead-letter queue only after its
//! copy is confirmed by the broker or synced to disk. A crash in between leaves the
//! message in the dead-letter queue as well as at its destination: a duplicate at worst,
//! which keeps its `message_id`, so an idempotent consumer skips it.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use lepus::{Client, RetryPolicy, Role, Topology};

use crate::connect::{self, parse_secs, wait_for};

mod inspect;
mod pace;
pub(crate) mod record;
mod restore;
mod route;
mod scan;
mod sink;
mod transfer;

/// Options of `lepus dlq`.
#[derive(Args, Debug)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Count the dead-letter queue's messages and show a page of them with their failure
    /// headers. Nothing is removed.
    List(inspect::ListArgs),
    /// Show messages with one message id in full: properties, headers, body. Nothing is
    /// removed.
    Show(inspect::ShowArgs),
    /// Republish messages to the queue they failed on (with a fresh set of attempts),
    /// removing each from the dead-letter queue once the broker confirmed its copy.
    Replay(transfer::ReplayArgs),
    /// Move messages to an archive queue or append them to a JSON-lines file.
    Move(transfer::MoveArgs),
    /// Remove every message from the dead-letter queue (needs --yes).
    Purge(inspect::PurgeArgs),
    /// Replay messages archived by `move --to-file` (one JSON object per line) to the
    /// queues they failed on, or --to-queue.
    #[command(visible_alias = "restore")]
    ReplayFile(restore::ReplayFileArgs),
}

/// Runs `lepus dlq`.
pub(crate) async fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List(args) => inspect::list(args).await,
        DlqCommand::Show(args) => inspect::show(args).await,
        DlqCommand::Replay(args) => transfer::replay(args).await,
        DlqCommand::Move(args) => transfer::move_messages(args).await,
        DlqCommand::Purge(args) => inspect::purge(args).await,
        DlqCommand::ReplayFile(args) => restore::replay_file(args).await,
    }
}

/// Which dead-letter queue, on which broker.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The work queue whose dead-letter queue (`<queue>.dlq`) to use.
    #[arg(
        long,
        short = 'q',
        value_name = "WORK_QUEUE",
        required_unless_present = "dlq"
    )]
    queue: Option<String>,
    /// The dead-letter queue's name, when it is not `<queue>.dlq`.
    #[arg(long, value_name = "NAME")]
    dlq: Option<String>,
    /// Seconds to wait for the broker, and for each publisher confirm.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
}

impl Target {
    /// The dead-letter queue's name: `--dlq`, or the one lepus's consumer uses for
    /// `--queue`.
    fn dlq_name(&self) -> anyhow::Result<String> {
        match (&self.dlq, &self.queue) {
            (Some(dlq), _) => Ok(dlq.clone()),
            (None, Some(queue)) => Ok(RetryPolicy::default().dlq(queue)),
            (None, None) => anyhow::bail!("give --queue WORK_QUEUE or --dlq NAME"),
        }
    }

    /// A client (one connection for everything) that is connected, or an error naming the
    /// broker.
    async fn connect(&self, name: &str) -> anyhow::Result<Client> {
        let client = connect::global().client(name, Topology::new(), true)?;
        if let Err(err) = wait_for(&client, Role::Consume, self.timeout, connect::global()).await {
            close(&client).await;
            return Err(err);
        }
        Ok(client)
    }
}

/// Closes a client, bounded.
async fn close(client: &Client) {
    let _ = client.close(Duration::from_secs(5)).await;
}

/// Prints one line on stdout. A closed stdout (piped into `head`, say) must not stop a
/// replay half-way, so write errors are ignored.
fn out(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
