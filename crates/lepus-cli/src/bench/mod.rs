//! `lepus bench`: producers and consumers on one queue, in the spirit of RabbitMQ's
//! PerfTest, through the same `lepus::Client` and `lepus::Publisher` a service uses.
//!
//! A run: declare the queue (as the client's topology, so it is declared again after every
//! reconnect), subscribe the consumers, publish, then drain: consumers go on until the
//! queue has stayed empty for a moment after the producers finished, bounded by a deadline.
//! With `--verify`, every message is accounted for exactly (see [`verify`]).
//!
//! Every wait is bounded by the publish timeout: with no broker the run fails with the
//! reason instead of hanging.

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use lepus::{Client, Queue, QueueType, Role, Topology};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connect::{self, parse_secs};

mod consumer;
mod drain;
mod producer;
mod report;
mod verify;

/// Messages per producer when neither --count nor --duration is given.
const DEFAULT_COUNT: u64 = 100_000;

/// Classic or quorum queue.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A classic queue.
    Classic,
    /// A replicated quorum queue.
    Quorum,
}

/// Options of `lepus bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Producers, each with a publisher of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    producers: u16,
    /// Consumers, each on a channel of its own.
    #[arg(long, default_value_t = 1)]
    consumers: u16,
    /// Message body size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// Unconfirmed messages in flight per producer.
    #[arg(long, value_name = "W", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    confirm: u32,
    /// Unacknowledged deliveries per consumer.
    #[arg(long, value_name = "P", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
    /// Consumers ack with multiple=true every K deliveries.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    multi_ack: u16,
    /// Messages per second across all producers; 0 for unlimited.
    #[arg(long, value_name = "MSGS_PER_S", default_value_t = 0)]
    rate: u64,
    /// Messages per producer [default: 100000].
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Publish for this many seconds instead of a count.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Queue type.
    #[arg(long, value_enum, default_value_t = QueueKind::Classic)]
    queue_type: QueueKind,
    /// Queue name (durable); a fresh name by default.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Keep the queue at the end instead of deleting it.
    #[arg(long)]
    keep_queue: bool,
    /// Count lost (confirmed, never consumed) and duplicated messages exactly; exit
    /// non-zero if any confirmed message was lost.
    #[arg(long)]
    verify: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds a message may take from send to confirm; also bounds connecting and
    /// every wait for the broker.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    publish_timeout: Duration,
}

/// What producers and consumers share.
pub struct Ctx {
    epoch: Instant,
    run: String,
    size: usize,
    verify: bool,
    counters: report::Counters,
    /// Per producer: sequence numbers handed out so far (ids at or past it are not ours).
    bounds: Vec<AtomicU64>,
    /// Cancelled when the run cannot go on (no broker within the timeout).
    abort: CancellationToken,
    abort_reason: Mutex<Option<String>>,
    first_failure: Mutex<Option<String>>,
}

impl Ctx {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Stops the run with `reason` (the first reason wins).
    fn fail(&self, reason: String) {
        self.abort_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
        self.abort.cancel();
    }

    /// Remembers the first failed publish that does not stop the run.
    fn note_failure(&self, reason: String) {
        self.first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
    }

    fn abort_reason(&self) -> Option<String> {
        self.abort_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.multi_ack > args.prefetch {
        bail!(
            "--multi-ack {} is above --prefetch {}: consumers would stall waiting for deliveries the broker may not send",
            args.multi_ack,
            args.prefetch
        );
    }
    if args.size > lepus::amqp::DEFAULT_MAX_BODY_SIZE {
        bail!(
            "--size is over the largest body ({} bytes)",
            lepus::amqp::DEFAULT_MAX_BODY_SIZE
        );
    }
    if args.verify && args.consumers == 0 {
        bail!("--verify needs at least one consumer");
    }
    if args
        .queue
        .as_ref()
        .is_some_and(|q| q.is_empty() || q.len() > 255)
    {
        bail!("--queue must be 1 to 255 bytes");
    }
    Ok(())
}

/// Runs `lepus bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("lepus-bench-{run_id}"));
    let queue_type = match args.queue_type {
        QueueKind::Classic => QueueType::Classic,
        QueueKind::Quorum => QueueType::Quorum,
    };
    let topology = Topology::new().queue(Queue::new(queue.as_str()).queue_type(queue_type));
    let client = connect::global().client("lepus bench", topology, false)?;
    if let Err(err) = client.wait_connected(args.publish_timeout).await {
        let _ = client.close(Duration::from_secs(2)).await;
        return Err(err)
            .with_context(|| format!("cannot connect to {}", connect::global().describe()));
    }
    if let Some(failure) = client.topology_report(Role::Publish).failures.first() {
        let _ = client.close(Duration::from_secs(2)).await;
        bail!("cannot declare the bench queue: {failure}");
    }
    let template = report::latency_histogram()?;
    let ctx = Arc::new(Ctx {
        epoch: Instant::now(),
        run: run_id,
        size: args.size,
        verify: args.verify,
        counters: report::Counters::default(),
        bounds: (0..args.producers).map(|_| AtomicU64::new(0)).collect(),
        abort: CancellationToken::new(),
        abort_reason: Mutex::new(None),
        first_failure: Mutex::new(None),
    });
    eprintln!(
        "lepus bench: {} producer(s), {} consumer(s), {} B messages, {} queue '{queue}' on {}",
        args.producers,
        args.consumers,
        args.size,
        match args.queue_type {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
        },
        connect::global().describe()
    );

    let stop_consumers = CancellationToken::new();
    let consumers = start_consumers(&args, &ctx, &client, &queue, &template, &stop_consumers).await;

    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(progress(
        Arc::clone(&ctx),
        client.clone(),
        stop_progress.clone(),
    ));

    let stop_producers = CancellationToken::new();
    let watcher = tokio::spawn(watch_stop(
        args.duration,
        stop_producers.clone(),
        Arc::clone(&ctx),
    ));
    let producing_since = Instant::now();
    let producers: Vec<JoinHandle<producer::Outcome>> = (0..usize::from(args.producers))
        .map(|i| {
            let plan = producer::Plan {
                count: match args.duration {
                    Some(_) => None,
                    None => Some(args.count.unwrap_or(DEFAULT_COUNT)),
                },
                rate: args.rate as f64 / f64::from(args.producers),
                window: usize::try_from(args.confirm).unwrap_or(usize::MAX),
                timeout: args.publish_timeout,
                queue: queue.clone(),
            };
            tokio::spawn(producer::run(
                Arc::clone(&ctx),
                i,
                client.clone(),
                plan,
                template.clone(),
                stop_producers.clone(),
            ))
        })
        .collect();
    let mut produced = Vec::new();
    for handle in producers {
        produced.push(handle.await.context("a producer task failed")?);
    }
    stop_producers.cancel();
    if args.consumers > 0 {
        drain::drain(&ctx, &client, &queue, args.publish_timeout).await;
    }
    stop_consumers.cancel();
    let mut consumed = Vec::new();
    for handle in consumers {
        consumed.push(handle.await.context("a consumer task failed")?);
    }
    stop_progress.cancel();
    let _ = progress.await;
    watcher.abort();

    let duration = ctx.epoch.elapsed();
    if !args.keep_queue {
        drain::delete_queue(&client, &queue).await;
    }
    let reconnects =
        (client.connects(Role::Publish) + client.connects(Role::Consume)).saturating_sub(2);
    let _ = client.close(Duration::from_secs(5)).await;

    let summary = report::summarize(
        &ctx,
        &queue,
        producing_since,
        &produced,
        consumed,
        reconnects,
        duration,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.text());
    }
    let mut ok = true;
    if let Some(lost) = summary.lost.filter(|lost| *lost > 0) {
        eprintln!("lepus bench: {lost} confirmed message(s) were never consumed");
        ok = false;
    }
    if summary.failed > 0 {
        let first = ctx
            .first_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        eprintln!(
            "lepus bench: {} publish(es) failed{}",
            summary.failed,
            first.map(|f| format!(" (first: {f})")).unwrap_or_default()
        );
        ok = false;
    }
    if let Some(reason) = &summary.error {
        eprintln!("lepus bench: stopped early: {reason}");
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn start_consumers(
    args: &BenchArgs,
    ctx: &Arc<Ctx>,
    client: &Client,
    queue: &str,
    template: &hdrhistogram::Histogram<u64>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<consumer::Outcome>> {
    let mut handles = Vec::new();
    let mut readiness = Vec::new();
    for _ in 0..args.consumers {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let plan = consumer::Plan {
            queue: queue.to_owned(),
            prefetch: args.prefetch,
            multi_ack: args.multi_ack,
            timeout: args.publish_timeout,
        };
        handles.push(tokio::spawn(consumer::run(
            Arc::clone(ctx),
            client.clone(),
            plan,
            template.clone(),
            stop.clone(),
            ready,
        )));
        readiness.push(is_ready);
    }
    // Producers start once every consumer is subscribed (or one has failed), so the
    // end-to-end latency measures a running system, not a queue filling up.
    for is_ready in readiness {
        tokio::select! {
            _ = is_ready => {}
            _ = ctx.abort.cancelled() => break,
        }
    }
    handles
}

/// Stops the producers after `duration`, on Ctrl-C, or when the run aborts; a second
/// Ctrl-C aborts the drain too.
async fn watch_stop(duration: Option<Duration>, stop: CancellationToken, ctx: Arc<Ctx>) {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = timer => {}
        _ = tokio::signal::ctrl_c() => {
            eprintln!("lepus bench: interrupted; finishing (Ctrl-C again to stop now)");
            stop.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                ctx.fail("interrupted".into());
            }
            return;
        }
        _ = ctx.abort.cancelled() => {}
    }
    stop.cancel();
}

async fn progress(ctx: Arc<Ctx>, client: Client, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut before = ctx.counters.snapshot();
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = ctx.counters.snapshot();
        let mut note = String::new();
        for role in [Role::Publish, Role::Consume] {
            let state = client.state(role);
            if !state.is_connected() {
                let role = match role {
                    Role::Publish => "publish",
                    Role::Consume => "consume",
                };
                note.push_str(&format!("  [{role}: {}]", state.name()));
            }
        }
        eprintln!(
            "{}",
            report::progress_line(ctx.epoch.elapsed(), now, before, at.elapsed(), &note)
        );
        before = now;
        at = Instant::now();
    }
}
