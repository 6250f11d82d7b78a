//! `lepus dlq list`, `show` and `purge`: reading without removing, and the one command
//! that removes without a copy.

use std::process::ExitCode;

use base64::Engine as _;
use clap::Args;
use lepus::amqp::Delivery;
use serde_json::{Value, json};

use super::record::{self, DeadLetter, one_line};
use super::scan::{self, Scan};
use super::{Target, close, out};
use crate::render;

/// Options of `lepus dlq list`.
#[derive(Args, Debug)]
pub(super) struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// Messages to show, from the head of the queue (0: only count them).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// One JSON object: `dlq`, `message_count` and `messages` (each with its failure
    /// headers, `null` when unknown).
    #[arg(long)]
    json: bool,
}

/// Runs `lepus dlq list`.
pub(super) async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let dlq = args.target.dlq_name()?;
    let client = args.target.connect("lepus dlq list").await?;
    let peeked = peek(&client, &dlq, &args).await;
    close(&client).await;
    let (count, rows) = peeked?;
    if args.json {
        let messages: Vec<Value> = rows.iter().map(|r| Value::Object(r.to_json())).collect();
        out(json!({"dlq": dlq, "message_count": count, "messages": messages}));
        return Ok(ExitCode::SUCCESS);
    }
    out(format!(
        "dead-letter queue '{}': {count} message{}",
        one_line(&dlq),
        if count == 1 { "" } else { "s" }
    ));
    let now = lepus::failure::now_ms();
    for (n, row) in (1u64..).zip(&rows) {
        out(row.to_text(n, now));
    }
    if !rows.is_empty() {
        let more = if rows.len() < count as usize {
            " (--limit for more)"
        } else {
            ""
        };
        out(format!(
            "showing {} of {count}{more}; nothing was removed",
            rows.len()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The ready count and the first `limit` messages' records; every message goes back.
async fn peek(
    client: &lepus::Client,
    dlq: &str,
    args: &ListArgs,
) -> anyhow::Result<(u32, Vec<DeadLetter>)> {
    let mut scan = Scan::open(client, dlq, args.target.timeout).await?;
    let count = scan.total();
    let mut rows = Vec::new();
    let result = async {
        while rows.len() < args.limit as usize {
            match scan.next().await? {
                Some(delivery) => rows.push(DeadLetter::from_delivery(&delivery)),
                None => break,
            }
        }
        anyhow::Ok(())
    }
    .await;
    scan.finish().await;
    result.map(|()| (count, rows))
}

/// Options of `lepus dlq show`.
#[derive(Args, Debug)]
pub(super) struct ShowArgs {
    #[command(flatten)]
    target: Target,
    /// The message id to show (every message with it, should there be several).
    #[arg(long, value_name = "ID")]
    message_id: String,
    /// One JSON object per message: its failure record, `properties`, `headers`, and
    /// `body` (text) or `body_base64`.
    #[arg(long)]
    json: bool,
}

/// Runs `lepus dlq show`.
pub(super) async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let dlq = args.target.dlq_name()?;
    let client = args.target.connect("lepus dlq show").await?;
    let found = find(&client, &dlq, &args).await;
    close(&client).await;
    let (total, shown) = found?;
    if shown.is_empty() {
        eprintln!(
            "lepus: no message with id '{}' among the {total} messages of '{}'",
            one_line(&args.message_id),
            one_line(&dlq)
        );
        return Ok(ExitCode::FAILURE);
    }
    for text in shown {
        out(text);
    }
    Ok(ExitCode::SUCCESS)
}

/// Scans the whole queue once; the rendering of every message with the id asked for.
async fn find(
    client: &lepus::Client,
    dlq: &str,
    args: &ShowArgs,
) -> anyhow::Result<(u32, Vec<String>)> {
    let mut scan = Scan::open(client, dlq, args.target.timeout).await?;
    let mut shown = Vec::new();
    let result = async {
        while let Some(delivery) = scan.next().await? {
            let id = delivery
                .properties()
                .message_id()
                .as_ref()
                .map(|m| m.as_str());
            if id == Some(args.message_id.as_str()) {
                let position = (scan.fetched(), scan.total());
                shown.push(if args.json {
                    full_json(dlq, position, &delivery).to_string()
                } else {
                    full_text(dlq, position, &delivery)
                });
            }
        }
        anyhow::Ok(scan.total())
    }
    .await;
    scan.finish().await;
    result.map(|total| (total, shown))
}

fn full_json(dlq: &str, (n, of): (u32, u32), delivery: &Delivery) -> Value {
    let props = delivery.properties();
    let mut obj = DeadLetter::from_delivery(delivery).to_json();
    obj.insert("dlq".into(), json!(dlq));
    obj.insert("position".into(), json!(n));
    obj.insert("of".into(), json!(of));
    obj.insert("properties".into(), render::properties_json(props));
    obj.insert(
        "headers".into(),
        props
            .headers()
            .as_ref()
            .map(render::table_json)
            .unwrap_or_else(|| json!({})),
    );
    let body = delivery.body();
    match render::as_text(body) {
        Some(text) => obj.insert("body".into(), json!(text)),
        None => obj.insert(
            "body_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    };
    Value::Object(obj)
}

fn full_text(dlq: &str, (n, of): (u32, u32), delivery: &Delivery) -> String {
    let dl = DeadLetter::from_delivery(delivery);
    let props = delivery.properties();
    let quoted = |v: &Option<String>| match v {
        Some(s) => format!("'{}'", one_line(s)),
        None => "?".into(),
    };
    let number = |v: Option<u32>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let now = lepus::failure::now_ms();
    let time = |ms: Option<i64>| record::when(ms, now);
    let mut lines = vec![
        format!(
            "--- message {} (position {n} of {of} in '{}'){}",
            dl.label(),
            one_line(dlq),
            if dl.redelivered { ", redelivered" } else { "" }
        ),
        format!("original queue:    {}", quoted(&dl.failure.original_queue)),
        format!(
            "original exchange: {}, routing key {}",
            quoted(&dl.failure.original_exchange),
            quoted(&dl.failure.original_routing_key)
        ),
        format!("reason:            {}", quoted(&dl.failure.reason)),
        format!(
            "attempts:          {} ({} through delay tiers)",
            number(dl.failure.attempts),
            number(dl.failure.retries)
        ),
        format!("first failure:     {}", time(dl.failure.first_failure_ms)),
        format!("last failure:      {}", time(dl.failure.last_failure_ms)),
        format!("consumer:          {}", quoted(&dl.failure.consumer)),
        format!("last error:        {}", quoted(&dl.failure.last_error)),
    ];
    if let Some(count) = dl.failure.replays {
        lines.push(format!(
            "replayed:          {count} times, last at {}",
            time(dl.failure.replayed_at_ms)
        ));
    }
    if let Value::Object(map) = render::properties_json(props) {
        let shown: Vec<String> = map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={}", one_line(s)),
                other => format!("{k}={other}"),
            })
            .collect();
        lines.push(format!("properties:        {}", shown.join(", ")));
    }
    if let Some(headers) = props.headers().as_ref() {
        lines.push(format!(
            "headers:           {}",
            one_line(&render::table_text(headers))
        ));
    }
    let body = delivery.body();
    match render::as_text(body) {
        Some(text) => {
            lines.push(format!("body ({} bytes, text):", body.len()));
            lines.push(text.to_owned());
        }
        None => {
            lines.push(format!("body ({} bytes, base64):", body.len()));
            lines.push(base64::engine::general_purpose::STANDARD.encode(body));
        }
    }
    lines.join("\n")
}

/// Options of `lepus dlq purge`.
#[derive(Args, Debug)]
pub(super) struct PurgeArgs {
    #[command(flatten)]
    target: Target,
    /// Really remove every message: without it, purge refuses and changes nothing.
    #[arg(long)]
    yes: bool,
}

/// Runs `lepus dlq purge`.
pub(super) async fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let dlq = args.target.dlq_name()?;
    if !args.yes {
        eprintln!(
            "lepus: refusing to purge '{}' without --yes: its messages would be gone for good \
             (`lepus dlq list` shows them, `lepus dlq move --to-file` keeps a copy)",
            one_line(&dlq)
        );
        return Ok(ExitCode::FAILURE);
    }
    let client = args.target.connect("lepus dlq purge").await?;
    let purged = async {
        // The count first, so that a missing queue fails with its name.
        scan::ready(&client, &dlq, args.target.timeout).await?;
        let channel = scan::open_channel(&client, args.target.timeout).await?;
        let purged = channel.queue_purge(&dlq).await;
        let _ = channel.close().await;
        anyhow::Ok(purged?)
    }
    .await;
    close(&client).await;
    let purged = purged?;
    out(format!(
        "purged {purged} message{} from '{}'",
        if purged == 1 { "" } else { "s" },
        one_line(&dlq)
    ));
    Ok(ExitCode::SUCCESS)
}
