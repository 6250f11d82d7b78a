//! Where `replay` and `move` put copies, and when they let go of the originals.
//!
//! - [`Publishing`]: copies go through a [`lepus::Publisher`] with confirms and
//!   `mandatory`, up to [`WINDOW`] unconfirmed; each original is acked when its copy's
//!   confirm arrives. A copy that fails (unroutable, nacked, timed out) leaves its
//!   original in the dead-letter queue.
//! - [`Archiving`]: lines are appended to a file in batches; a batch is synced to disk
//!   before its originals are acked, and cut off the file again if it cannot be written.
//!
//! An ack that fails after its copy is safe (the channel died) leaves the message in both
//! places: counted as `unsettled`, never lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use lepus::amqp::Delivery;
use lepus::{CancellationToken, Confirm, Message, Publisher};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::out;
use super::pace::Pacer;
use super::record::{DeadLetter, one_line};
use crate::render;

/// Copies awaiting their confirm at once.
pub(super) const WINDOW: usize = 256;
/// Messages per synced batch of a file archive.
const FILE_BATCH: usize = 200;
/// Bytes per synced batch of a file archive.
const FILE_BATCH_BYTES: usize = 4 << 20;
/// How long closing the publisher may wait for copies still unconfirmed.
const PUBLISHER_CLOSE: Duration = Duration::from_secs(5);

/// What a pass did.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Messages the selection took.
    pub matched: u64,
    /// Copied and removed from the dead-letter queue.
    pub done: u64,
    /// Not selected: left in place.
    pub skipped: u64,
    /// Selected but not copied: left in place.
    pub failed: u64,
    /// Copied, but the dead-letter message could not be acked: it is in both places.
    pub unsettled: u64,
}

/// Per-message lines, as text or JSON.
pub(super) struct Report {
    /// JSON lines instead of text.
    pub json: bool,
    /// What a copied message was: `replayed` or `moved`.
    pub verb: &'static str,
}

impl Report {
    fn line(&self, dl: &DeadLetter, result: &str, to: Option<&str>, error: Option<&str>) {
        if self.json {
            out(json!({"message_id": dl.message_id, "result": result, "to": to, "error": error}));
            return;
        }
        let mut line = format!("{} {result}", dl.label());
        if let Some(to) = to {
            line.push_str(&format!(" to {to}"));
        }
        if let Some(error) = error {
            line.push_str(&format!(": {}", one_line(error)));
        }
        out(line);
    }

    fn done(&self, dl: &DeadLetter, to: &str) {
        self.line(dl, self.verb, Some(to), None);
    }

    pub(super) fn dry(&self, dl: &DeadLetter, to: &str) {
        let result = if self.verb == "replayed" {
            "would be replayed"
        } else {
            "would be moved"
        };
        self.line(dl, result, Some(to), None);
    }

    /// A message not copied (to `to`, when it had a destination); it stays.
    pub(super) fn failed(&self, dl: &DeadLetter, to: Option<&str>, error: &str) {
        let result = if self.verb == "replayed" {
            "not replayed"
        } else {
            "not moved"
        };
        self.line(dl, result, to, Some(error));
    }

    fn unsettled(&self, dl: &DeadLetter, to: &str, error: &str) {
        let why = format!(
            "the copy is safe but the message could not be removed from the dead-letter \
             queue ({error}); it stays there too"
        );
        self.line(dl, "unsettled", Some(to), Some(&why));
    }
}

/// A copy on its way to a queue.
struct Pending {
    dl: DeadLetter,
    to: String,
    delivery: Delivery,
    confirm: Confirm,
}

/// Publishes copies, keeping up to [`WINDOW`] unconfirmed, and acks each original once
/// its copy is confirmed.
pub(super) struct Publishing {
    publisher: Publisher,
    pending: VecDeque<Pending>,
    pacer: Option<Pacer>,
}

impl Publishing {
    /// Copies go through `publisher`, spaced by `pacer` if given.
    pub(super) fn new(publisher: Publisher, pacer: Option<Pacer>) -> Self {
        Self {
            publisher,
            pending: VecDeque::new(),
            pacer,
        }
    }

    /// Sends the copy `copy` makes of the message when the rate limit allows (settling
    /// confirms meanwhile; the copy is made then, so its timestamps are the send's).
    /// False if `stop` fired first: then nothing was sent.
    pub(super) async fn put(
        &mut self,
        item: (DeadLetter, String, Delivery),
        copy: impl FnOnce(&Delivery) -> Message,
        tally: &mut Tally,
        report: &Report,
        stop: &CancellationToken,
    ) -> bool {
        let at = match self.pacer.as_mut() {
            Some(pacer) => pacer.slot(Instant::now()),
            None => Instant::now(),
        };
        if !self.settle_until(at, tally, report, stop).await {
            return false;
        }
        let (dl, to, delivery) = item;
        match self.publisher.send(copy(&delivery)).await {
            Ok(confirm) => self.pending.push_back(Pending {
                dl,
                to,
                delivery,
                confirm,
            }),
            Err(err) => {
                tally.failed += 1;
                report.failed(&dl, Some(&to), &err.error.report().to_string());
            }
        }
        while self.pending.len() >= WINDOW {
            self.settle_next(tally, report).await;
        }
        true
    }

    /// Settles confirms as they come until `at`; false if `stop` fired first.
    async fn settle_until(
        &mut self,
        at: Instant,
        tally: &mut Tally,
        report: &Report,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            let confirmed = match self.pending.front_mut() {
                Some(front) => tokio::select! {
                    biased;
                    result = &mut front.confirm => Some(result),
                    _ = tokio::time::sleep_until(at) => return true,
                    _ = stop.cancelled() => return false,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep_until(at) => return true,
                    _ = stop.cancelled() => return false,
                },
            };
            if let (Some(result), Some(done)) = (confirmed, self.pending.pop_front()) {
                settle(done, result, tally, report);
            }
        }
    }

    /// Waits for the oldest copy's confirm and settles it.
    async fn settle_next(&mut self, tally: &mut Tally, report: &Report) {
        if let Some(mut next) = self.pending.pop_front() {
            let result = (&mut next.confirm).await;
            settle(next, result, tally, report);
        }
    }

    /// Settles every copy still in flight, then closes the publisher.
    pub(super) async fn finish(mut self, tally: &mut Tally, report: &Report) {
        while !self.pending.is_empty() {
            self.settle_next(tally, report).await;
        }
        let _ = self.publisher.close(PUBLISHER_CLOSE).await;
    }
}

/// Acks the original of a confirmed copy; counts a failed one (its original stays).
fn settle(done: Pending, result: lepus::PublishResult, tally: &mut Tally, report: &Report) {
    match result {
        Ok(()) => match done.delivery.ack() {
            Ok(()) => {
                tally.done += 1;
                report.done(&done.dl, &done.to);
            }
            Err(err) => {
                tally.unsettled += 1;
                report.unsettled(&done.dl, &done.to, &lepus::error::report(&err).to_string());
            }
        },
        Err(err) => {
            tally.failed += 1;
            report.failed(&done.dl, Some(&done.to), &err.error.report().to_string());
        }
    }
}

/// Appends messages to a file in synced batches, acking each batch once it is on disk.
pub(super) struct Archiving {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    batch: Vec<(DeadLetter, Delivery)>,
}

impl Archiving {
    pub(super) fn open(path: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(Self {
            file,
            path,
            buf: Vec::new(),
            batch: Vec::new(),
        })
    }

    pub(super) fn put(
        &mut self,
        dl: DeadLetter,
        line: &Value,
        delivery: Delivery,
        tally: &mut Tally,
        report: &Report,
    ) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.buf, line).context("cannot encode a message as JSON")?;
        self.buf.push(b'\n');
        self.batch.push((dl, delivery));
        if self.batch.len() >= FILE_BATCH || self.buf.len() >= FILE_BATCH_BYTES {
            self.commit(tally, report)?;
        }
        Ok(())
    }

    /// Writes and syncs the batch, then acks its messages. On a failed write the file is
    /// cut back to where the batch began and its messages stay in the dead-letter queue.
    pub(super) fn commit(&mut self, tally: &mut Tally, report: &Report) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let to = format!("file {}", self.path.display());
        let written = self.write_synced();
        self.buf.clear();
        match written {
            Ok(()) => {
                for (dl, delivery) in self.batch.drain(..) {
                    match delivery.ack() {
                        Ok(()) => {
                            tally.done += 1;
                            report.done(&dl, &to);
                        }
                        Err(err) => {
                            tally.unsettled += 1;
                            report.unsettled(&dl, &to, &lepus::error::report(&err).to_string());
                        }
                    }
                }
                Ok(())
            }
            Err(err) => {
                let text = format!("cannot write {}: {err}", self.path.display());
                for (dl, _) in self.batch.drain(..) {
                    tally.failed += 1;
                    report.failed(&dl, Some(&to), &text);
                }
                bail!(text)
            }
        }
    }

    fn write_synced(&mut self) -> std::io::Result<()> {
        let before = self.file.metadata()?.len();
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if result.is_err() {
            let _ = self.file.set_len(before);
        }
        result
    }
}

/// Where copies go in this pass.
pub(super) enum Sink {
    DryRun,
    Publish(Publishing),
    File(Archiving),
}

/// One line of a file archive.
pub(super) fn archive_line(dlq: &str, delivery: &Delivery, now_ms: i64) -> Value {
    let props = delivery.properties();
    json!({
        "dlq": dlq,
        "archived_at_ms": now_ms,
        "message_id": props.message_id().as_ref().map(|m| m.as_str()),
        "properties": render::properties_json(props),
        "headers": props.headers().as_ref().map(render::table_json).unwrap_or_else(|| json!({})),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(delivery.body()),
    })
}
