//! `lepus bench`: producers and consumers on one or more queues, with RabbitMQ PerfTest's
//! flags (`-x 2 -y 2 -s 1000 -z 10`), through the same `lepus::Client` and
//! `lepus::Publisher` a service uses.
//!
//! A run: declare the queues (and an exchange with `-e`, each queue bound with `-k`) as the
//! client's topology, so they are declared again after every reconnect; subscribe the
//! consumers (spread over the queues), publish (without `-e`, producers are spread over
//! the queues through the default exchange), then drain: consumers go on until the queues
//! have stayed empty for a moment after the producers finished, bounded by a deadline.
//! With `--verify`, every message is accounted for exactly (see [`verify`]).
//!
//! Defaults differ from PerfTest's where lepus's purpose does: messages are persistent
//! and confirmed unless `--transient` and `-c 0` ask for PerfTest's defaults.
//!
//! Every wait is bounded by the publish timeout: with no broker the run fails with the
//! reason instead of hanging.

use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use lepus::{Client, Role};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connect;
use args::validate;
pub(crate) use args::{BenchArgs, QueueKind};
use layout::Layout;

mod args;
mod consumer;
mod drain;
mod layout;
mod producer;
mod report;
mod verify;

/// Messages per producer when neither --count nor --duration is given.
const DEFAULT_COUNT: u64 = 100_000;

/// What producers and consumers share.
pub(crate) struct Ctx {
    epoch: Instant,
    run: String,
    size: usize,
    verify: bool,
    counters: report::Counters,
    /// End-to-end latencies since the last progress line.
    interval_latency: Mutex<hdrhistogram::Histogram<u64>>,
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

/// Serves `/metrics` while the run lasts.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    client: &Client,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    use lepus::observability;
    let handle = observability::install_prometheus()?;
    let router = observability::router(Some(handle), observability::Health::new(client));
    let bound = observability::serve(addr, router, stop.clone()).await?;
    eprintln!("lepus bench: metrics on http://{bound}/metrics");
    Ok(())
}

/// Runs `lepus bench`.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let layout = Layout::new(&args, &run_id);
    let client = connect::global().client("lepus bench", layout.topology(&args), false)?;
    let stop_metrics = CancellationToken::new();
    if let Some(addr) = args.metrics_addr
        && let Err(err) = serve_metrics(addr, &client, &stop_metrics).await
    {
        let _ = client.close(Duration::from_secs(2)).await;
        return Err(err);
    }
    if let Err(err) = client.wait_connected(args.publish_timeout).await {
        let _ = client.close(Duration::from_secs(2)).await;
        return Err(err)
            .with_context(|| format!("cannot connect to {}", connect::global().describe()));
    }
    if let Some(failure) = client.topology_report(Role::Publish).failures.first() {
        let _ = client.close(Duration::from_secs(2)).await;
        bail!("cannot declare the bench topology: {failure}");
    }
    let template = report::latency_histogram()?;
    let ctx = Arc::new(Ctx {
        epoch: Instant::now(),
        run: run_id,
        size: args.size,
        verify: args.verify,
        counters: report::Counters::default(),
        interval_latency: Mutex::new(template.clone()),
        bounds: (0..args.producers).map(|_| AtomicU64::new(0)).collect(),
        abort: CancellationToken::new(),
        abort_reason: Mutex::new(None),
        first_failure: Mutex::new(None),
    });
    eprintln!(
        "lepus bench: {} producer(s), {} consumer(s), {} B {} messages, {}, {} {} queue(s) {}{} on {}",
        args.producers,
        args.consumers,
        args.size,
        if args.transient {
            "transient"
        } else {
            "persistent"
        },
        if args.confirm == 0 {
            "no confirms".to_owned()
        } else {
            format!("confirm window {}", args.confirm)
        },
        layout.queues.len(),
        match args.queue_type {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
        },
        layout.queues.join(", "),
        layout
            .exchange
            .as_ref()
            .map(|e| format!(" via exchange '{e}' ({})", layout.routing_key))
            .unwrap_or_default(),
        connect::global().describe()
    );

    let stop_consumers = CancellationToken::new();
    let consumers =
        start_consumers(&args, &layout, &ctx, &client, &template, &stop_consumers).await;

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
            let (exchange, routing_key) = layout.target(i);
            let plan = producer::Plan {
                count: match args.duration {
                    Some(_) => None,
                    None => Some(args.count.unwrap_or(DEFAULT_COUNT)),
                },
                rate: args.rate as f64 / f64::from(args.producers),
                window: usize::try_from(args.confirm).unwrap_or(usize::MAX),
                timeout: args.publish_timeout,
                exchange,
                routing_key,
                persistent: !args.transient,
                mandatory: args.flags.iter().any(|f| f == "mandatory"),
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
        drain::drain(&ctx, &client, &layout.queues, args.publish_timeout).await;
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
        for queue in &layout.queues {
            drain::delete_queue(&client, queue).await;
        }
        if let Some(exchange) = layout.exchange.as_ref().filter(|e| !e.starts_with("amq.")) {
            drain::delete_exchange(&client, exchange).await;
        }
    }
    let reconnects =
        (client.connects(Role::Publish) + client.connects(Role::Consume)).saturating_sub(2);
    stop_metrics.cancel();
    let _ = client.close(Duration::from_secs(5)).await;

    let summary = report::summarize(
        &ctx,
        &layout.queues.join(","),
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
    layout: &Layout,
    ctx: &Arc<Ctx>,
    client: &Client,
    template: &hdrhistogram::Histogram<u64>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<consumer::Outcome>> {
    let mut handles = Vec::new();
    let mut readiness = Vec::new();
    for i in 0..usize::from(args.consumers) {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let plan = consumer::Plan {
            queue: layout.source(i),
            prefetch: args.prefetch,
            multi_ack: args.multi_ack,
            autoack: args.autoack,
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
        let latency = {
            let mut h = ctx
                .interval_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let line = report::latency_line(&h);
            h.reset();
            line
        };
        eprintln!(
            "{}{latency}",
            report::progress_line(ctx.epoch.elapsed(), now, before, at.elapsed(), &note)
        );
        before = now;
        at = Instant::now();
    }
}
