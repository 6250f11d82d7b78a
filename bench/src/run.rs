//! One client run: fresh queues, the publish phase, the consume phase, the checks.
//!
//! Queues are managed on a separate lepus-amqp connection (idle while a client works),
//! whatever the client under test. Around the two measured phases it checks what the
//! broker holds: empty queues before, exactly `count` ready messages after publishing,
//! none after the consumers have acked and closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lepus_amqp::{Connection, FieldTable, QueueDeclareOptions, QueueDeleteOptions};

use crate::queues::QueueType;
use tokio::task::JoinSet;

use crate::clients::{Client, Phase, Workload};
use crate::cpu::{Load, LoadSnapshot, monotonic_secs, process_cpu};

/// The four figures of one client run, and the broker's CPU and the machine's load
/// during each phase.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub publish_msgs_per_s: f64,
    pub consume_msgs_per_s: f64,
    pub publish_cpu_us_per_msg: f64,
    pub consume_cpu_us_per_msg: f64,
    pub publish_load: Load,
    pub consume_load: Load,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Consume,
}

/// Wall time and process CPU time of one phase, and the load around it.
struct Measured {
    wall: Duration,
    cpu: Duration,
    load: Load,
}

pub struct Runner {
    /// The brokers: queue `i` is declared, published to and consumed from through
    /// `urls[i % urls.len()]`, so each queue (a quorum queue's leader too) lives on the
    /// node its clients talk to.
    urls: Vec<Arc<str>>,
    queue_type: QueueType,
    workload: Workload,
    queues: usize,
    timeout: Duration,
    /// One managing connection per broker in `urls`.
    admin: Vec<Connection>,
    /// Print each phase's CLOCK_MONOTONIC interval (for `perf report --time`).
    marks: bool,
    /// The broker processes whose CPU each phase reports (`--broker-pid`).
    broker_pids: Vec<u32>,
}

impl Runner {
    pub async fn new(
        urls: Vec<Arc<str>>,
        queue_type: QueueType,
        workload: Workload,
        queues: usize,
        timeout: Duration,
        broker_pids: Vec<u32>,
    ) -> Result<Runner> {
        let mut admin = Vec::new();
        for url in &urls {
            admin.push(
                Connection::open(url)
                    .await
                    .context("cannot open the connection that manages the queues")?,
            );
        }
        Ok(Runner {
            urls,
            queue_type,
            workload,
            queues,
            timeout,
            admin,
            marks: std::env::var_os("LEPUS_BENCH_MARKS").is_some(),
            broker_pids,
        })
    }

    pub async fn close(self) {
        for admin in self.admin {
            let _ = admin.close().await;
        }
    }

    /// The URL and the managing connection of queue `i`.
    fn node(&self, i: usize) -> Result<(&Arc<str>, &Connection)> {
        let n = self.urls.len();
        match (self.urls.get(i % n.max(1)), self.admin.get(i % n.max(1))) {
            (Some(url), Some(admin)) => Ok((url, admin)),
            _ => bail!("no broker URL"),
        }
    }

    /// Runs `client` once (`round` is 1-based) and returns its figures; `label` names
    /// the row (the client, or one of its observability arms) in queue names and errors.
    pub async fn run(&self, client: Client, label: &str, round: usize) -> Result<Figures> {
        let names: Vec<String> = (0..self.queues)
            .map(|i| format!("lepus-bench-{label}-r{round}-q{i}-{}", std::process::id()))
            .collect();
        let result = self.run_on(client, label, &names).await;
        if result.is_err() {
            // Best effort: leave no test data behind on the broker.
            for (i, name) in names.iter().enumerate() {
                if let Ok((_, admin)) = self.node(i)
                    && let Ok(ch) = admin.open_channel().await
                {
                    let _ = ch.queue_delete(name, QueueDeleteOptions::default()).await;
                    let _ = ch.close().await;
                }
            }
        }
        result.with_context(|| format!("{label} failed in round {round}"))
    }

    async fn run_on(&self, client: Client, label: &str, names: &[String]) -> Result<Figures> {
        let mut channels = Vec::new();
        for i in 0..names.len().min(self.urls.len()) {
            channels.push(self.node(i)?.1.open_channel().await?);
        }
        let channel = |i: usize| {
            channels
                .get(i % channels.len().max(1))
                .context("no managing channel")
        };
        for (i, name) in names.iter().enumerate() {
            let ch = channel(i)?;
            ch.queue_delete(name, QueueDeleteOptions::default()).await?;
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let info = ch
                .queue_declare(name, durable, self.queue_type.arguments())
                .await?;
            if info.message_count != 0 {
                bail!("queue {name} is not empty after being declared afresh");
            }
        }

        let total = self.workload.count * names.len() as u64;
        let publish = self.phase(client, label, Kind::Publish, names).await?;
        for (i, name) in names.iter().enumerate() {
            let ready = ready_messages(channel(i)?, name).await?;
            if ready != self.workload.count {
                bail!(
                    "queue {name} holds {ready} messages after publishing, expected {}",
                    self.workload.count
                );
            }
        }

        let consume = self.phase(client, label, Kind::Consume, names).await?;
        for (i, name) in names.iter().enumerate() {
            let ch = channel(i)?;
            // The consumers have closed; anything they received but did not ack is back in
            // the queue by now, or very soon.
            let mut ready = ready_messages(ch, name).await?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while ready != 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ready = ready_messages(ch, name).await?;
            }
            if ready != 0 {
                bail!("queue {name} still holds {ready} messages after consuming: acks were lost");
            }
            ch.queue_delete(name, QueueDeleteOptions::default()).await?;
        }
        for ch in channels {
            ch.close().await?;
        }

        let per_s = |m: &Measured| total as f64 / m.wall.as_secs_f64();
        let cpu_us = |m: &Measured| m.cpu.as_secs_f64() * 1e6 / total as f64;
        Ok(Figures {
            publish_msgs_per_s: per_s(&publish),
            consume_msgs_per_s: per_s(&consume),
            publish_cpu_us_per_msg: cpu_us(&publish),
            consume_cpu_us_per_msg: cpu_us(&consume),
            publish_load: publish.load,
            consume_load: consume.load,
        })
    }

    /// Starts one task per queue, measures from the moment all are set up to the moment
    /// all have finished their work, and checks each task's count.
    async fn phase(
        &self,
        client: Client,
        label: &str,
        kind: Kind,
        names: &[String],
    ) -> Result<Measured> {
        let phase = Phase::new(names.len());
        let mut tasks = JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let (url, name, workload, phase) = (
                Arc::clone(self.node(i)?.0),
                name.clone(),
                self.workload,
                Arc::clone(&phase),
            );
            tasks.spawn(async move {
                let count = match kind {
                    Kind::Publish => client.publish(url, name.clone(), workload, phase).await,
                    Kind::Consume => client.consume(url, name.clone(), workload, phase).await,
                }?;
                Ok::<_, anyhow::Error>((name, count))
            });
        }
        let what = match kind {
            Kind::Publish => "publish",
            Kind::Consume => "consume",
        };
        let deadline = tokio::time::Instant::now() + self.timeout;

        let mut finished = Vec::new();
        meet(&mut tasks, phase.start(), deadline, what, &mut finished).await?;
        let (cpu0, t0) = (process_cpu()?, Instant::now());
        let load0 = LoadSnapshot::take(&self.broker_pids);
        let mark_start = monotonic_secs();
        meet(&mut tasks, phase.done(), deadline, what, &mut finished).await?;
        let (wall, cpu) = (t0.elapsed(), process_cpu()?.saturating_sub(cpu0));
        let load = load0.until(
            &LoadSnapshot::take(&self.broker_pids),
            wall,
            self.workload.count * names.len() as u64,
        );
        if self.marks {
            eprintln!(
                "mark {label} {what} {mark_start:.6},{:.6}",
                monotonic_secs()
            );
        }

        while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .with_context(|| format!("{what} phase: closing connections timed out"))?
        {
            finished.push(joined.context("a client task panicked")??);
        }
        if finished.len() != names.len() {
            bail!(
                "{what} phase: {} of {} tasks reported",
                finished.len(),
                names.len()
            );
        }
        for (name, count) in finished {
            if count != self.workload.count {
                bail!(
                    "{what} phase on {name} counted {count} messages, expected {}",
                    self.workload.count
                );
            }
        }
        Ok(Measured { wall, cpu, load })
    }
}

/// Waits at a meeting point, unless a task fails first or the deadline passes. A task
/// that ends well has passed both meeting points, so the point is reached (its wake-up
/// may just not have been seen yet): its result goes to `finished` and the wait goes on.
async fn meet(
    tasks: &mut JoinSet<Result<(String, u64)>>,
    point: impl Future<Output = ()>,
    deadline: tokio::time::Instant,
    what: &str,
    finished: &mut Vec<(String, u64)>,
) -> Result<()> {
    tokio::pin!(point);
    loop {
        tokio::select! {
            biased;
            () = &mut point => return Ok(()),
            Some(joined) = tasks.join_next() => match joined {
                Ok(Err(err)) => return Err(err.context(format!("{what} phase"))),
                Err(join) => {
                    return Err(anyhow::Error::new(join)
                        .context(format!("{what} phase: a client task panicked")));
                }
                Ok(Ok(done)) => finished.push(done),
            },
            () = tokio::time::sleep_until(deadline) => bail!("{what} phase timed out"),
        }
    }
}

/// Ready messages in `queue` (passive declare).
async fn ready_messages(ch: &lepus_amqp::Channel, queue: &str) -> Result<u64> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let info = ch
        .queue_declare(queue, passive, FieldTable::default())
        .await?;
    Ok(u64::from(info.message_count))
}
