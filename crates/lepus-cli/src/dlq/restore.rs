//! `lepus dlq replay-file`: put messages archived by `lepus dlq move --to-file` back to
//! work, as `replay` does for messages still in the dead-letter queue: to the queue each
//! failed on (its `x-lepus-original-queue` header) or `--to-queue`, through the default
//! exchange, with the attempt counters removed and the replay stamped, each confirmed by
//! the broker and `mandatory` (a copy no queue takes is a failure, not a silent drop).
//!
//! The file is not changed: a run that stops half-way can be run again, and the messages
//! replayed twice keep their `message_id`, so an idempotent consumer skips the second
//! copy. Header values come back as the archive wrote them (JSON: numbers as 64-bit
//! integers, text as strings).

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use lepus::amqp::{BasicProperties, FieldTable, ShortString};
use lepus::failure::{self, FailureRecord, now_ms};
use lepus::{Confirm, Message, Publisher, PublisherOptions, Role, Topology};
use serde_json::{Map, Value, json};

use super::out;
use super::record::one_line;
use super::sink::WINDOW;
use crate::connect::{self, parse_secs, wait_for};

/// Options of `lepus dlq replay-file`.
#[derive(Args, Debug)]
pub(super) struct ReplayFileArgs {
    /// The JSON-lines archive written by `lepus dlq move --to-file`.
    file: PathBuf,
    /// Replay into this queue instead of each message's original queue.
    #[arg(long, value_name = "QUEUE")]
    to_queue: Option<String>,
    /// Print what would be done, and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON lines: one object per message, then a summary object.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the broker, and for each publisher confirm.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<ShortString> {
    obj.get(key).and_then(Value::as_str).map(ShortString::from)
}

/// The message of one archive line, bound for its queue; or why it cannot be replayed.
fn copy(
    line: &str,
    to_queue: Option<&str>,
    now: i64,
) -> Result<(String, Option<String>, Message), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let id = v
        .get("message_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = v
        .get("body_base64")
        .and_then(Value::as_str)
        .ok_or("no body_base64")?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("bad body_base64: {e}"))?;
    let empty = Map::new();
    let mut headers = match v.get("headers") {
        Some(Value::Object(h)) => lepus::topology::json_to_table(h),
        _ => FieldTable::default(),
    };
    let queue = match to_queue {
        Some(q) => q.to_owned(),
        None => FailureRecord::from_headers(Some(&headers))
            .original_queue
            .ok_or_else(|| {
                format!(
                    "it has no {} header (give --to-queue)",
                    failure::ORIGINAL_QUEUE_HEADER
                )
            })?,
    };
    FailureRecord::stamp_replay(&mut headers, now);
    let p = v
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut props = BasicProperties::default().with_headers(headers);
    if let Some(s) = text(p, "content_type") {
        props = props.with_content_type(s);
    }
    if let Some(s) = text(p, "content_encoding") {
        props = props.with_content_encoding(s);
    }
    if let Some(s) = text(p, "correlation_id") {
        props = props.with_correlation_id(s);
    }
    if let Some(s) = text(p, "reply_to") {
        props = props.with_reply_to(s);
    }
    if let Some(s) = text(p, "expiration") {
        props = props.with_expiration(s);
    }
    if let Some(s) = text(p, "message_id") {
        props = props.with_message_id(s);
    }
    if let Some(s) = text(p, "type") {
        props = props.with_type(s);
    }
    if let Some(s) = text(p, "app_id") {
        props = props.with_app_id(s);
    }
    if let Some(n) = p
        .get("delivery_mode")
        .and_then(Value::as_u64)
        .and_then(|n| u8::try_from(n).ok())
    {
        props = props.with_delivery_mode(n);
    }
    if let Some(n) = p
        .get("priority")
        .and_then(Value::as_u64)
        .and_then(|n| u8::try_from(n).ok())
    {
        props = props.with_priority(n);
    }
    if let Some(n) = p.get("timestamp").and_then(Value::as_u64) {
        props = props.with_timestamp(n);
    }
    let mut msg = Message::new("", queue.as_str(), body).mandatory(true);
    *msg.properties_mut() = props;
    Ok((queue, id, msg))
}

/// Runs `lepus dlq replay-file`.
pub(super) async fn replay_file(args: ReplayFileArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let global = connect::global();
    let client = if args.dry_run {
        None
    } else {
        let client = global.client("lepus dlq replay-file", Topology::new(), true)?;
        if let Err(err) = wait_for(&client, Role::Publish, args.timeout, global).await {
            let _ = client.close(Duration::from_secs(2)).await;
            return Err(err);
        }
        Some(client)
    };
    let publisher = client.as_ref().map(|c| {
        Publisher::new(
            c,
            PublisherOptions::default()
                .window(WINDOW)
                .publish_timeout(args.timeout)
                .mandatory(true),
        )
    });
    let (mut done, mut failed) = (0u64, 0u64);
    let report = |id: &Option<String>, line_no: usize, to: Option<&str>, error: Option<&str>| {
        let label = id.clone().unwrap_or_else(|| format!("line {line_no}"));
        if args.json {
            let result = match (error, args.dry_run) {
                (Some(_), _) => "failed",
                (None, true) => "would replay",
                (None, false) => "replayed",
            };
            out(
                json!({"message_id": id, "line": line_no, "result": result, "to": to, "error": error}),
            );
        } else {
            match (error, args.dry_run) {
                (Some(e), _) => out(format!("{} failed: {}", one_line(&label), one_line(e))),
                (None, true) => out(format!(
                    "{} would be replayed to queue '{}'",
                    one_line(&label),
                    to.unwrap_or("")
                )),
                (None, false) => out(format!(
                    "{} replayed to queue '{}'",
                    one_line(&label),
                    to.unwrap_or("")
                )),
            }
        }
    };
    let mut pending: std::collections::VecDeque<(usize, Option<String>, String, Confirm)> =
        std::collections::VecDeque::new();
    let now = now_ms();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("cannot read {}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let (queue, id, msg) = match copy(&line, args.to_queue.as_deref(), now) {
            Ok(c) => c,
            Err(err) => {
                failed += 1;
                report(&None, line_no, None, Some(&err));
                continue;
            }
        };
        let Some(publisher) = &publisher else {
            done += 1;
            report(&id, line_no, Some(&queue), None);
            continue;
        };
        match publisher.send(msg).await {
            Ok(confirm) => pending.push_back((line_no, id, queue, confirm)),
            Err(err) => {
                failed += 1;
                report(
                    &id,
                    line_no,
                    Some(&queue),
                    Some(&err.error.report().to_string()),
                );
            }
        }
        while pending.len() >= WINDOW {
            if let Some((line_no, id, queue, confirm)) = pending.pop_front() {
                match confirm.await {
                    Ok(()) => {
                        done += 1;
                        report(&id, line_no, Some(&queue), None);
                    }
                    Err(err) => {
                        failed += 1;
                        report(
                            &id,
                            line_no,
                            Some(&queue),
                            Some(&err.error.report().to_string()),
                        );
                    }
                }
            }
        }
    }
    while let Some((line_no, id, queue, confirm)) = pending.pop_front() {
        match confirm.await {
            Ok(()) => {
                done += 1;
                report(&id, line_no, Some(&queue), None);
            }
            Err(err) => {
                failed += 1;
                report(
                    &id,
                    line_no,
                    Some(&queue),
                    Some(&err.error.report().to_string()),
                );
            }
        }
    }
    if let Some(publisher) = publisher {
        let _ = publisher.close(Duration::from_secs(5)).await;
    }
    if let Some(client) = client {
        let _ = client.close(Duration::from_secs(5)).await;
    }
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    if args.json {
        out(json!({"summary": true, "done": done, "failed": failed, "dry_run": args.dry_run}));
    } else {
        out(format!("{verb} {done}, failed {failed}"));
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_archive_line_becomes_a_fresh_replay_to_its_queue() {
        let line = r#"{"dlq":"orders.dlq","archived_at_ms":1,"message_id":"m-1","properties":{"message_id":"m-1","content_type":"text/plain","delivery_mode":2,"priority":3},"headers":{"x-lepus-original-queue":"orders","x-lepus-attempts":9,"x-lepus-replay-count":1},"body_base64":"aGk="}"#;
        let (queue, id, msg) = copy(line, None, 42).unwrap();
        assert_eq!((queue.as_str(), id.as_deref()), ("orders", Some("m-1")));
        assert_eq!(msg.body().as_ref(), b"hi");
        assert_eq!(msg.routing_key(), "orders");
        let props = msg.properties();
        assert_eq!(props.priority(), &Some(3));
        assert_eq!(props.message_id().as_ref().map(|m| m.as_str()), Some("m-1"));
        let record = FailureRecord::from_headers(props.headers().as_ref());
        assert_eq!(record.attempts, None);
        assert_eq!((record.replays, record.replayed_at_ms), (Some(2), Some(42)));
        assert_eq!(record.original_queue.as_deref(), Some("orders"));
        assert_eq!(copy(line, Some("other"), 0).unwrap().0, "other");
        assert!(copy(r#"{"body_base64":"aGk="}"#, None, 0).is_err());
        assert!(copy("nonsense", None, 0).is_err());
    }
}
