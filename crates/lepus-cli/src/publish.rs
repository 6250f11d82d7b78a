//! `lepus publish`: send messages through the reliable publisher and report, per message,
//! whether the broker confirmed it.

use std::collections::VecDeque;
use std::io::{BufRead as _, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use lepus::{Confirm, Message, Publisher, PublisherOptions, Role, Topology};

use crate::connect::{self, parse_secs, wait_for};

/// Confirms awaited at once; beyond it, sending waits for the oldest.
const PIPELINE: usize = 1000;
/// The largest body read from a file or stdin (the engine's default body limit).
const MAX_BODY: u64 = lepus::amqp::DEFAULT_MAX_BODY_SIZE as u64;

/// Options of `lepus publish`.
#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// Exchange to publish to (the default exchange routes by queue name).
    #[arg(long, short = 'e', default_value = "")]
    exchange: String,
    /// Routing key (for the default exchange: the queue name).
    #[arg(long, short = 'k')]
    routing_key: String,
    /// The body as text. Without --body or --file, the body is read from stdin.
    #[arg(long, conflicts_with = "file")]
    body: Option<String>,
    /// Read the body from this file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A string header; repeat for more.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Content type, e.g. application/json.
    #[arg(long)]
    content_type: Option<String>,
    /// Message id (with --count above 1, suffixed with -1, -2, ...). A UUIDv7 otherwise.
    #[arg(long)]
    message_id: Option<String>,
    /// Fail messages no queue takes instead of letting the broker drop them.
    #[arg(long)]
    mandatory: bool,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "lines")]
    count: u64,
    /// One message per line of stdin (or --file); empty lines are skipped.
    #[arg(long, conflicts_with = "body")]
    lines: bool,
    /// One JSON object per message on stdout: message_id, result, error.
    #[arg(long)]
    json: bool,
    /// Priority (0-255; queues honour up to their x-max-priority).
    #[arg(long)]
    priority: Option<u8>,
    /// Per-message TTL in milliseconds.
    #[arg(long, value_name = "MS")]
    expiration: Option<u64>,
    /// Correlation id.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Reply-to queue.
    #[arg(long)]
    reply_to: Option<String>,
    /// Transient (delivery mode 1) instead of persistent.
    #[arg(long)]
    transient: bool,
    /// Seconds to wait for the broker, and for each confirm.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    timeout: Duration,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && k.len() <= 255 => Ok((k.to_owned(), v.to_owned())),
        Some((k, _)) if !k.is_empty() => Err("header names are at most 255 bytes".into()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn read_body(args: &PublishArgs) -> anyhow::Result<Bytes> {
    if let Some(body) = &args.body {
        return Ok(Bytes::from(body.clone()));
    }
    let (name, reader): (String, Box<dyn Read>) = match &args.file {
        Some(path) => (
            path.display().to_string(),
            Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
        ),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("lepus: reading the body from stdin (end with Ctrl-D)");
            }
            ("stdin".into(), Box::new(stdin))
        }
    };
    let mut body = Vec::new();
    reader
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("cannot read {name}"))?;
    if body.len() as u64 > MAX_BODY {
        bail!("the body from {name} is over {MAX_BODY} bytes");
    }
    Ok(Bytes::from(body))
}

/// The bodies to publish: `--count` copies of one body, or one per line with `--lines`.
fn bodies(args: &PublishArgs) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Bytes>>>> {
    if !args.lines {
        let body = read_body(args)?;
        return Ok(Box::new((0..args.count).map(move |_| Ok(body.clone()))));
    }
    let reader: Box<dyn Read> = match &args.file {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    let reader = std::io::BufReader::new(reader);
    Ok(Box::new(reader.split(b'\n').filter_map(
        |line| match line {
            Ok(mut line) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() as u64 > MAX_BODY {
                    return Some(Err(anyhow::anyhow!("a line is over {MAX_BODY} bytes")));
                }
                (!line.is_empty()).then(|| Ok(Bytes::from(line)))
            }
            Err(err) => Some(Err(anyhow::Error::new(err).context("cannot read a line"))),
        },
    )))
}

fn message(args: &PublishArgs, body: &Bytes, n: u64) -> (String, Message) {
    let id = match &args.message_id {
        Some(id) if args.count > 1 || args.lines => format!("{id}-{n}"),
        Some(id) => id.clone(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    let mut msg = Message::new(
        args.exchange.as_str(),
        args.routing_key.as_str(),
        body.clone(),
    )
    .message_id_str(&id)
    .mandatory(args.mandatory);
    if let Some(ct) = &args.content_type {
        msg = msg.content_type(ct);
    }
    for (k, v) in &args.headers {
        msg = msg.header(k, v);
    }
    if let Some(cid) = &args.correlation_id {
        msg = msg.correlation_id(cid);
    }
    if let Some(ms) = args.expiration {
        msg = msg.expiration(Duration::from_millis(ms));
    }
    if args.transient {
        msg = msg.persistent(false);
    }
    let props = msg.properties_mut();
    if let Some(priority) = args.priority {
        *props = props.clone().with_priority(priority);
    }
    if let Some(reply_to) = &args.reply_to {
        *props = props.clone().with_reply_to(reply_to.as_str().into());
    }
    (id, msg)
}

/// Prints the outcome of one publish; true if it was confirmed.
fn report(json: bool, id: &str, outcome: lepus::PublishResult) -> bool {
    let line = match (&outcome, json) {
        (Ok(()), false) => format!("{id} confirmed"),
        (Err(err), false) => format!("{id} failed: {}", err.error.report()),
        (Ok(()), true) => serde_json::json!({"message_id": id, "result": "confirmed"}).to_string(),
        (Err(err), true) => serde_json::json!({"message_id": id, "result": "failed", "error": err.error.report().to_string()}).to_string(),
    };
    // A closed stdout (say, piped into `head`) must not turn into a panic.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    outcome.is_ok()
}

/// Runs `lepus publish`.
pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let bodies = bodies(&args)?;
    let client = connect::global().client("lepus publish", Topology::new(), true)?;
    wait_for(&client, Role::Publish, args.timeout, connect::global()).await?;
    let publisher = Publisher::new(
        &client,
        PublisherOptions::default()
            .publish_timeout(args.timeout)
            .mandatory(args.mandatory),
    );
    let mut pending: VecDeque<(String, Confirm)> = VecDeque::new();
    let mut failed = 0u64;
    let mut total = 0u64;
    for (n, body) in (1..).zip(bodies) {
        let body = body?;
        total = n;
        let (id, msg) = message(&args, &body, n);
        match publisher.send(msg).await {
            Ok(confirm) => pending.push_back((id, confirm)),
            Err(err) => {
                failed += u64::from(!report(args.json, &id, Err(err)));
            }
        }
        while pending.len() >= PIPELINE {
            if let Some((id, confirm)) = pending.pop_front() {
                failed += u64::from(!report(args.json, &id, confirm.await));
            }
        }
    }
    while let Some((id, confirm)) = pending.pop_front() {
        failed += u64::from(!report(args.json, &id, confirm.await));
    }
    let _ = publisher.close(Duration::from_secs(5)).await;
    let _ = client.close(Duration::from_secs(5)).await;
    if failed > 0 {
        eprintln!("lepus: {failed} of {total} messages failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("k="), Ok(("k".into(), String::new())));
        assert!(parse_header("=v").is_err());
        assert!(parse_header("novalue").is_err());
        assert!(parse_header(&format!("{}=v", "k".repeat(256))).is_err());
    }
}
