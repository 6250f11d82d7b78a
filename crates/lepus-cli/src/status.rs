//! `lepus status`: the queues a lepus consumer owns, side by side: the work queue, each
//! retry tier (`<queue>.retry.<n>`) and the dead-letter queue, with depth, consumers and
//! rates.
//!
//! With AMQP alone it uses passive declares, which see ready messages and consumers and
//! change nothing; two samples `--sample` apart give each queue's net rate (what came in
//! minus what went out). With `--management-url` it also shows unacknowledged messages,
//! the tiers' delays, and the broker's own in and out rates (publishes and deliveries; a
//! tier's messages leave by expiring, which only its net rate shows). Tiers are found by probing `<queue>.retry.1`, `.2`, ... up to the first
//! that does not exist.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lepus::amqp::{Channel, Connection, QueueDeclareOptions};
use lepus::{RetryPolicy, Topology};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::connect::{self, parse_secs};
use crate::exit;
use crate::mgmt::{Management, segment};
use crate::topo::url_vhost;

/// More tiers than this are not looked for.
const MAX_TIERS: usize = 32;

/// Options of `lepus status`.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The consumer's work queue.
    #[arg(long, short = 'q', value_name = "WORK_QUEUE")]
    queue: String,
    /// The dead-letter queue's name, when it is not `<queue>.dlq`.
    #[arg(long, value_name = "NAME")]
    dlq: Option<String>,
    /// Seconds between the two samples the rates come from.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    sample: Duration,
    /// One JSON object (per refresh with --watch: one per line).
    #[arg(long)]
    json: bool,
    /// Refresh in place every --sample seconds until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Seconds to wait for the broker.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    timeout: Duration,
}

/// One queue's line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Row {
    /// `work`, `retry N` or `dlq`.
    pub role: String,
    /// The queue's name.
    pub queue: String,
    /// Whether it exists.
    pub exists: bool,
    /// Ready messages.
    pub ready: Option<u64>,
    /// Delivered, not yet acknowledged (management API only).
    pub unacked: Option<u64>,
    /// Consumers.
    pub consumers: Option<u64>,
    /// A retry tier's delay in milliseconds (management API only).
    pub delay_ms: Option<u64>,
    /// Messages in per second (management API only).
    pub in_per_s: Option<f64>,
    /// Messages delivered per second (management API only; a tier's expiries back to
    /// work show in the net rate).
    pub out_per_s: Option<f64>,
    /// Change of ready messages per second over the sample.
    pub net_per_s: Option<f64>,
}

/// What one refresh shows.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    /// The work queue.
    pub queue: String,
    /// The vhost.
    pub vhost: String,
    /// Seconds between the samples.
    pub sample_s: f64,
    /// Work queue, tiers, dead-letter queue.
    pub queues: Vec<Row>,
}

struct Probe {
    conn: Connection,
    channel: Channel,
}

impl Probe {
    /// Ready messages and consumers, or `None` if the queue does not exist.
    async fn depth(&mut self, queue: &str) -> anyhow::Result<Option<(u64, u64)>> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match self
            .channel
            .queue_declare(queue, passive, Default::default())
            .await
        {
            Ok(info) => Ok(Some((
                u64::from(info.message_count),
                u64::from(info.consumer_count),
            ))),
            Err(err) if err.is_not_found() => {
                self.channel = self.conn.open_channel().await?;
                Ok(None)
            }
            Err(err) => Err(err).with_context(|| format!("cannot inspect queue '{queue}'")),
        }
    }
}

fn rate(stats: &Value, key: &str) -> Option<f64> {
    stats.get(key)?.get("rate")?.as_f64()
}

/// Fills the management API's view of one queue into `row`.
async fn enrich(mgmt: &Management, vhost: &str, row: &mut Row) -> anyhow::Result<()> {
    let q = mgmt
        .get(&format!(
            "/queues/{}/{}",
            segment(vhost),
            segment(&row.queue)
        ))
        .await?;
    let n = |k: &str| q.get(k).and_then(Value::as_u64);
    row.unacked = n("messages_unacknowledged");
    if let Some(ready) = n("messages_ready") {
        row.ready = Some(ready);
    }
    row.delay_ms = q
        .get("arguments")
        .and_then(|a| a.get("x-message-ttl"))
        .and_then(Value::as_u64);
    let empty = Value::Null;
    let stats = q.get("message_stats").unwrap_or(&empty);
    row.in_per_s = Some(rate(stats, "publish_details").unwrap_or(0.0));
    row.out_per_s = Some(rate(stats, "deliver_get_details").unwrap_or(0.0));
    Ok(())
}

async fn snapshot(
    probe: &mut Probe,
    args: &StatusArgs,
    mgmt: Option<&Management>,
    vhost: &str,
) -> anyhow::Result<Status> {
    let policy = RetryPolicy::default();
    let dlq = args.dlq.clone().unwrap_or_else(|| policy.dlq(&args.queue));
    let mut names = vec![("work".to_owned(), args.queue.clone())];
    for tier in 0..MAX_TIERS {
        let name = policy.wait_queue(&args.queue, tier);
        if probe.depth(&name).await?.is_none() {
            break;
        }
        names.push((format!("retry {}", tier + 1), name));
    }
    names.push(("dlq".to_owned(), dlq));

    let first = sample(probe, &names).await?;
    let started = Instant::now();
    tokio::time::sleep(args.sample).await;
    let second = sample(probe, &names).await?;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let mut rows = Vec::new();
    for ((role, queue), (a, b)) in names.into_iter().zip(first.into_iter().zip(second)) {
        let mut row = Row {
            role,
            queue,
            exists: b.is_some(),
            ready: b.map(|(ready, _)| ready),
            unacked: None,
            consumers: b.map(|(_, consumers)| consumers),
            delay_ms: None,
            in_per_s: None,
            out_per_s: None,
            net_per_s: match (a, b) {
                (Some((x, _)), Some((y, _))) => {
                    Some(((y as f64 - x as f64) / secs * 10.0).round() / 10.0)
                }
                _ => None,
            },
        };
        if let (Some(mgmt), true) = (mgmt, row.exists) {
            enrich(mgmt, vhost, &mut row).await?;
        }
        rows.push(row);
    }
    Ok(Status {
        queue: args.queue.clone(),
        vhost: vhost.to_owned(),
        sample_s: args.sample.as_secs_f64(),
        queues: rows,
    })
}

async fn sample(
    probe: &mut Probe,
    names: &[(String, String)],
) -> anyhow::Result<Vec<Option<(u64, u64)>>> {
    let mut out = Vec::new();
    for (_, name) in names {
        out.push(probe.depth(name).await?);
    }
    Ok(out)
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn per_s(v: Option<f64>, signed: bool) -> String {
    match v {
        Some(v) if signed && v > 0.0 => format!("+{v:.1}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

/// The status as a table.
pub(crate) fn table(status: &Status) -> String {
    let width = status
        .queues
        .iter()
        .map(|r| r.queue.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<8}  {:<width$}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}\n",
        "ROLE", "QUEUE", "READY", "UNACKED", "CONSUMERS", "DELAY", "IN/S", "OUT/S", "NET/S"
    );
    for r in &status.queues {
        if !r.exists {
            out.push_str(&format!(
                "{:<8}  {:<width$}  (does not exist)\n",
                r.role, r.queue
            ));
            continue;
        }
        let delay = r.delay_ms.map(|ms| {
            if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        });
        out.push_str(&format!(
            "{:<8}  {:<width$}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}\n",
            r.role,
            r.queue,
            cell(r.ready),
            cell(r.unacked),
            cell(r.consumers),
            cell(delay),
            per_s(r.in_per_s, false),
            per_s(r.out_per_s, false),
            per_s(r.net_per_s, true),
        ));
    }
    out.push_str(&format!(
        "vhost '{}', rates over {:.1} s{}\n",
        status.vhost,
        status.sample_s,
        if status.queues.iter().any(|r| r.in_per_s.is_some()) {
            " (in/out from the management API)"
        } else {
            " (give --management-url for unacked, delays and in/out rates)"
        }
    ));
    out
}

/// Runs `lepus status`.
pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let global = connect::global();
    let vhost = url_vhost()?;
    let mgmt = match &global.management_url {
        Some(url) => Some(Management::new(url, global)?),
        None => None,
    };
    let client = global.client("lepus status", Topology::new(), true)?;
    let live = match connect::inspecting_connection(&client, args.timeout).await {
        Ok(live) => live,
        Err(code) => return Ok(code),
    };
    let channel = live.connection.open_channel().await?;
    let mut probe = Probe {
        conn: live.connection.clone(),
        channel,
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut work_missing = false;
    let result = loop {
        let status = tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            status = snapshot(&mut probe, &args, mgmt.as_ref(), &vhost) => status,
        };
        let status = match status {
            Ok(status) => status,
            Err(err) => break Err(err),
        };
        work_missing = status.queues.first().is_some_and(|r| !r.exists);
        let text = if args.json {
            format!("{}\n", serde_json::to_string(&status)?)
        } else if args.watch {
            // Home and clear, so the table refreshes in place.
            format!("\x1b[H\x1b[2J{}", table(&status))
        } else {
            table(&status)
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
            || !args.watch
        {
            break Ok(());
        }
    };
    let _ = probe.channel.close().await;
    let _ = client.close(Duration::from_secs(5)).await;
    result?;
    if work_missing {
        eprintln!("lepus: work queue '{}' does not exist", args.queue);
        return Ok(ExitCode::from(exit::FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
