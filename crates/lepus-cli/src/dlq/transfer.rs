//! `lepus dlq replay` and `lepus dlq move`: one pass over the dead-letter queue that
//! copies the selected messages somewhere and removes each only once its copy is safe (to
//! a queue: confirmed by the broker; to a file: synced to disk; see [`super::sink`]).
//!
//! Messages the selection skips, and those whose copy failed, are never acked: they go
//! back to their places when the pass ends (see [`super::scan`]).
//!
//! Replay goes to the message's original *queue*, through the default exchange, unless
//! told otherwise: republishing to the original exchange with the original routing key
//! would also deliver a copy to every other queue bound to it, whose consumers already
//! handled the message. `--via-exchange` does that on purpose (say, when the original
//! queue was replaced by another one bound the same way).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args};
use lepus::amqp::Delivery;
use lepus::{CancellationToken, Client, Publisher, PublisherOptions};
use serde_json::json;

use super::pace::{Pacer, parse_rate};
use super::record::{DeadLetter, Filter, one_line};
use super::route::{Dest, archive_copy, replay_copy, route};
use super::scan::{self, Scan};
use super::sink::{Archiving, Publishing, Report, Sink, Tally, WINDOW, archive_line};
use super::{Target, close, out};

/// Which messages: `--all`, or filters that must all hold.
#[derive(Args, Debug, Clone)]
#[group(id = "selection", required = true, multiple = true)]
pub(super) struct Select {
    /// Every message.
    #[arg(long, conflicts_with_all = ["message_ids", "filter_reason", "filter_error"])]
    all: bool,
    /// Only messages with these ids (repeat the option or give several).
    #[arg(long = "message-id", value_name = "ID", num_args = 1..)]
    message_ids: Vec<String>,
    /// Only messages dead-lettered for this reason: `rejected` (a permanent failure) or
    /// `retries-exhausted`.
    #[arg(long, value_name = "REASON")]
    filter_reason: Option<String>,
    /// Only messages whose last error contains this text (case-sensitive).
    #[arg(long, value_name = "SUBSTR")]
    filter_error: Option<String>,
}

impl Select {
    fn filter(&self) -> Filter {
        Filter {
            ids: self.message_ids.iter().cloned().collect(),
            reason: self.filter_reason.clone(),
            error: self.filter_error.clone(),
        }
    }
}

/// Options `replay` and `move` share.
#[derive(Args, Debug, Clone)]
pub(super) struct Common {
    /// Act on at most N selected messages (the first ones in the queue).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print what would be done, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON lines: one object per selected message, then a summary object.
    #[arg(long)]
    json: bool,
}

/// Options of `lepus dlq replay`.
#[derive(Args, Debug)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    common: Common,
    /// At most this many messages per second (fractions allowed), evenly spaced.
    #[arg(long, value_name = "MSGS_PER_S", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Replay into this queue instead of each message's original queue.
    #[arg(long, value_name = "QUEUE")]
    to_queue: Option<String>,
    /// Republish to the original exchange with the original routing key (every queue
    /// bound to it gets a copy) instead of straight to the original queue.
    #[arg(long, conflicts_with = "to_queue")]
    via_exchange: bool,
}

/// Options of `lepus dlq move`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("destination").required(true).args(["to_queue", "to_file"])))]
pub(super) struct MoveArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    common: Common,
    /// Move into this queue (it must exist); messages keep their properties and headers.
    #[arg(long, value_name = "QUEUE")]
    to_queue: Option<String>,
    /// Append to this JSON-lines file (created if missing): one object per message with
    /// `properties`, `headers` and `body_base64`.
    #[arg(long, value_name = "PATH")]
    to_file: Option<PathBuf>,
}

/// Runs `lepus dlq replay`.
pub(super) async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let dest = Dest::Replay {
        to_queue: args.to_queue,
        via_exchange: args.via_exchange,
        fallback: args.target.queue.clone(),
    };
    transfer(&args.target, &args.select, &args.common, args.rate, dest).await
}

/// Runs `lepus dlq move`.
pub(super) async fn move_messages(args: MoveArgs) -> anyhow::Result<ExitCode> {
    let dest = match (args.to_queue, args.to_file) {
        (Some(queue), _) => Dest::Queue(queue),
        (None, Some(path)) => Dest::File(path),
        (None, None) => bail!("give --to-queue QUEUE or --to-file PATH"),
    };
    transfer(&args.target, &args.select, &args.common, None, dest).await
}

async fn transfer(
    target: &Target,
    select: &Select,
    common: &Common,
    rate: Option<f64>,
    dest: Dest,
) -> anyhow::Result<ExitCode> {
    let dlq = target.dlq_name()?;
    if dest.fixed_queue() == Some(dlq.as_str()) {
        bail!("'{}' is the dead-letter queue itself", one_line(&dlq));
    }
    let report = Report {
        json: common.json,
        verb: dest.verb(),
    };
    // A file that cannot be opened fails before anything is read.
    let archive = match (&dest, common.dry_run) {
        (Dest::File(path), false) => Some(Archiving::open(path.clone())?),
        _ => None,
    };
    let client = target.connect("lepus dlq").await?;
    let scan = match prepare(&client, &dlq, target, &dest).await {
        Ok(scan) => scan,
        Err(err) => {
            close(&client).await;
            return Err(err);
        }
    };
    let sink = match (archive, common.dry_run) {
        (_, true) => Sink::DryRun,
        (Some(archive), false) => Sink::File(archive),
        (None, false) => Sink::Publish(Publishing::new(
            Publisher::new(
                &client,
                PublisherOptions::default()
                    .publish_timeout(target.timeout)
                    .mandatory(true)
                    .window(WINDOW)
                    .buffer(WINDOW * 2),
            ),
            rate.map(Pacer::new),
        )),
    };
    let mut tally = Tally::default();
    let ran = pass(
        scan,
        sink,
        &dlq,
        (select, common),
        &dest,
        &mut tally,
        &report,
    )
    .await;
    close(&client).await;
    let (interrupted, error) = match ran {
        Ok(interrupted) => (interrupted, None),
        Err(err) => (false, Some(err)),
    };
    summary(&dlq, common, &report, &tally, interrupted, error.as_ref());
    if let Some(err) = error {
        return Err(err);
    }
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    if tally.failed > 0 || tally.unsettled > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the destination queue, if there is one, and starts the pass.
async fn prepare(client: &Client, dlq: &str, target: &Target, dest: &Dest) -> anyhow::Result<Scan> {
    if let Some(queue) = dest.fixed_queue() {
        scan::ready(client, queue, target.timeout)
            .await
            .context("the destination must exist")?;
    }
    Scan::open(client, dlq, target.timeout)
        .await
        .context("cannot read the dead-letter queue")
}

/// The pass itself; true if Ctrl-C cut it short.
async fn pass(
    mut scan: Scan,
    mut sink: Sink,
    dlq: &str,
    (select, common): (&Select, &Common),
    dest: &Dest,
    tally: &mut Tally,
    report: &Report,
) -> anyhow::Result<bool> {
    let stop = CancellationToken::new();
    let _ctrl_c = CtrlC::cancels(stop.clone());
    let filter = select.filter();
    let mut failure = None;
    let mut interrupted = false;
    while common.limit.is_none_or(|limit| tally.matched < limit) {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                interrupted = true;
                break;
            }
            next = scan.next() => next,
        };
        let delivery = match next {
            Ok(Some(delivery)) => delivery,
            Ok(None) => break,
            Err(err) => {
                failure = Some(err);
                break;
            }
        };
        let dl = DeadLetter::from_delivery(&delivery);
        if !(select.all || filter.matches(&dl)) {
            tally.skipped += 1;
            continue;
        }
        tally.matched += 1;
        let route = match route(dest, &dl) {
            Ok(route) => route,
            Err(why) => {
                tally.failed += 1;
                report.failed(&dl, None, &why);
                continue;
            }
        };
        match &mut sink {
            Sink::DryRun => report.dry(&dl, &route.to),
            Sink::Publish(publishing) => {
                let replay = matches!(dest, Dest::Replay { .. });
                let copy = |delivery: &Delivery| {
                    if replay {
                        replay_copy(delivery, &route, lepus::failure::now_ms())
                    } else {
                        archive_copy(delivery, &route)
                    }
                };
                let item = (dl, route.to.clone(), delivery);
                // `put` waits for the rate limit's next slot; interrupted there, the
                // message was never copied and stays in the dead-letter queue (unacked,
                // it goes back when the scan ends), so it is not counted as handled.
                if !publishing.put(item, copy, tally, report, &stop).await {
                    tally.matched -= 1;
                    interrupted = true;
                    break;
                }
            }
            Sink::File(archive) => {
                // Acked only once the file is synced (`commit`, per batch), never here.
                let line = archive_line(dlq, &delivery, lepus::failure::now_ms());
                if let Err(err) = archive.put(dl, &line, delivery, tally, report) {
                    failure = Some(err);
                    break;
                }
            }
        }
    }
    match sink {
        Sink::DryRun => {}
        Sink::Publish(publishing) => publishing.finish(tally, report).await,
        Sink::File(mut archive) => {
            if let Err(err) = archive.commit(tally, report) {
                failure.get_or_insert(err);
            }
        }
    }
    // Skipped and failed messages go back to their places now.
    scan.finish().await;
    match failure {
        Some(err) => Err(err),
        None => Ok(interrupted),
    }
}

/// Prints what the pass did.
fn summary(
    dlq: &str,
    common: &Common,
    report: &Report,
    tally: &Tally,
    interrupted: bool,
    error: Option<&anyhow::Error>,
) {
    if report.json {
        out(json!({
            "dlq": dlq,
            "dry_run": common.dry_run,
            "matched": tally.matched,
            report.verb: tally.done,
            "skipped": tally.skipped,
            "failed": tally.failed,
            "unsettled": tally.unsettled,
            "interrupted": interrupted,
            "error": error.map(|e| format!("{e:#}")),
        }));
        return;
    }
    let mut line = format!(
        "{}matched {}, {} {}, skipped {}, failed {}",
        if common.dry_run { "dry run: " } else { "" },
        tally.matched,
        report.verb,
        tally.done,
        tally.skipped,
        tally.failed
    );
    if tally.unsettled > 0 {
        line.push_str(&format!(
            ", {} copied but still in the dead-letter queue",
            tally.unsettled
        ));
    }
    if interrupted {
        line.push_str(" (interrupted)");
    }
    out(line);
}

/// Cancels a token on Ctrl-C for as long as it lives.
struct CtrlC(tokio::task::JoinHandle<()>);

impl CtrlC {
    fn cancels(token: CancellationToken) -> Self {
        Self(tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                token.cancel();
            }
        }))
    }
}

impl Drop for CtrlC {
    fn drop(&mut self) {
        self.0.abort();
    }
}
