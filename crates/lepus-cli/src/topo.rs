//! `lepus topology export | plan | apply`: a service's topology as a file in RabbitMQ's
//! definitions JSON (see [`lepus::topology::Definitions`]), so it can be reviewed, diffed and
//! applied like code, and read by `rabbitmqctl import_definitions` too.
//!
//! - `export` reads a vhost's exchanges, queues and bindings from the management API
//!   (AMQP cannot list them), or writes the topology of a lepus consumer (work queue,
//!   retry tiers, dead-letter queue) from its retry ladder, without a broker.
//! - `plan` asks the broker, without changing anything, what applying the file would do:
//!   a passive declare tells whether an exchange or queue exists; an active declare of one
//!   that exists changes nothing and fails exactly when the file's flags or arguments are
//!   inequivalent to the broker's (the broker's reply names the argument). Bindings are
//!   compared with the management API's list when it is given; AMQP alone cannot see them.
//! - `apply` declares the file through [`lepus::Topology`], the same code a service runs
//!   on every reconnect, and reports each failed declaration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use lepus::amqp::{Channel, Connection, ExchangeDeclareOptions, QueueDeclareOptions};
use lepus::topology::{BindingDef, Definitions, ExchangeDef, QueueDef, json_to_table};
use lepus::{RetryPolicy, Role, Topology};
use serde_json::{Value, json};

use crate::connect::{self, parse_secs};
use crate::exit;
use crate::mgmt::{Management, segment};

/// Options of `lepus topology`.
#[derive(Args, Debug)]
pub(crate) struct TopologyArgs {
    #[command(subcommand)]
    command: TopologyCommand,
}

#[derive(Subcommand, Debug)]
enum TopologyCommand {
    /// Write a vhost's exchanges, queues and bindings (from the management API), or a
    /// lepus consumer's queues (from --consumer and its retry ladder), as definitions JSON.
    Export(ExportArgs),
    /// Show what applying FILE would change, and which declarations would fail as
    /// inequivalent and why. Changes nothing. Exit 0: in sync; 3: changes to apply; 4: a
    /// declaration would fail.
    Plan(PlanArgs),
    /// Declare everything in FILE. Exit 0: all declared; 4: some failed (each is named).
    Apply(PlanArgs),
}

/// Options of `lepus topology export`.
#[derive(Args, Debug)]
pub(crate) struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// The vhost to export [default: the AMQP URL's].
    #[arg(long, value_name = "VHOST")]
    vhost: Option<String>,
    /// Instead of asking a broker: the topology a lepus consumer of this work queue
    /// declares (the queue, its retry tiers and its dead-letter queue).
    #[arg(long, value_name = "WORK_QUEUE")]
    consumer: Option<String>,
    /// With --consumer: the retry tiers' delays in seconds [default: 1,10,60].
    #[arg(long, value_name = "SECS", value_delimiter = ',', value_parser = parse_secs, requires = "consumer")]
    delays: Vec<Duration>,
    /// With --consumer: quorum queues (for clusters).
    #[arg(long, requires = "consumer")]
    quorum: bool,
}

/// Options of `lepus topology plan` and `apply`.
#[derive(Args, Debug)]
pub(crate) struct PlanArgs {
    /// The definitions file.
    file: PathBuf,
    /// The vhost whose entries to use [default: the AMQP URL's].
    #[arg(long, value_name = "VHOST")]
    vhost: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the broker.
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    timeout: Duration,
}

/// Runs `lepus topology`.
pub(crate) async fn run(args: TopologyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TopologyCommand::Export(args) => export(args).await,
        TopologyCommand::Plan(args) => plan(args).await,
        TopologyCommand::Apply(args) => apply(args).await,
    }
}

/// The vhost of the first AMQP URL.
pub(crate) fn url_vhost() -> anyhow::Result<String> {
    let urls = connect::global().endpoints()?;
    let first = urls.first().context("no AMQP URL")?;
    Ok(lepus::amqp::ConnectionOptions::from_uri(first)?
        .vhost()
        .to_owned())
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let vhost = match args.vhost {
        Some(v) => v,
        None => url_vhost()?,
    };
    let defs = match &args.consumer {
        Some(queue) => {
            let mut policy = RetryPolicy::default().quorum(args.quorum);
            if !args.delays.is_empty() {
                policy = policy.delays(args.delays.clone());
            }
            let work = lepus::Queue::new(queue.as_str()).queue_type(if args.quorum {
                lepus::QueueType::Quorum
            } else {
                lepus::QueueType::Classic
            });
            Topology::new()
                .queue(work)
                .merge(policy.topology(queue))
                .to_definitions()
        }
        None => {
            let Some(url) = &connect::global().management_url else {
                bail!(
                    "export from a broker needs --management-url (AMQP cannot list queues); or give --consumer WORK_QUEUE"
                );
            };
            let mgmt = Management::new(url, connect::global())?;
            let doc = mgmt
                .get(&format!("/definitions/{}", segment(&vhost)))
                .await?;
            Definitions::from_json(&doc.to_string())?.for_vhost(&vhost)
        }
    };
    let text = defs.with_vhost(&vhost).to_json();
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_file(args: &PlanArgs) -> anyhow::Result<(String, Definitions)> {
    let vhost = match &args.vhost {
        Some(v) => v.clone(),
        None => url_vhost()?,
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let defs = Definitions::from_json(&text)
        .with_context(|| format!("in {}", args.file.display()))?
        .for_vhost(&vhost);
    if defs.exchanges.is_empty() && defs.queues.is_empty() && defs.bindings.is_empty() {
        bail!("{} has nothing for vhost '{vhost}'", args.file.display());
    }
    Ok((vhost, defs))
}

/// What applying one entry would do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// It is there, equivalent.
    Same,
    /// It would be created.
    Create,
    /// Declaring it would fail; the broker's reason.
    Fail(String),
    /// Cannot be told (a binding without the management API).
    Unknown,
}

impl Change {
    fn sign(&self) -> &'static str {
        match self {
            Change::Same => "=",
            Change::Create => "+",
            Change::Fail(_) => "!",
            Change::Unknown => "?",
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Change::Same => "unchanged",
            Change::Create => "create",
            Change::Fail(_) => "would fail",
            Change::Unknown => "unknown",
        }
    }
}

struct Prober {
    conn: Connection,
    channel: Channel,
}

impl Prober {
    async fn fresh(&mut self) -> anyhow::Result<()> {
        self.channel = self.conn.open_channel().await?;
        Ok(())
    }

    /// What declaring `e` would do. A failed declaration closes the channel: a new one
    /// replaces it.
    async fn exchange(&mut self, e: &ExchangeDef) -> anyhow::Result<Change> {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let kind = exchange_kind(&e.kind);
        match self
            .channel
            .exchange_declare(&e.name, kind.clone(), passive, Default::default())
            .await
        {
            Ok(()) => {}
            Err(err) if err.is_not_found() => {
                self.fresh().await?;
                return Ok(Change::Create);
            }
            Err(err) => {
                self.fresh().await?;
                return Ok(Change::Fail(err.message().to_owned()));
            }
        }
        let options = ExchangeDeclareOptions {
            passive: false,
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
        };
        match self
            .channel
            .exchange_declare(&e.name, kind, options, json_to_table(&e.arguments))
            .await
        {
            Ok(()) => Ok(Change::Same),
            Err(err) => {
                self.fresh().await?;
                Ok(Change::Fail(err.message().to_owned()))
            }
        }
    }

    async fn queue(&mut self, q: &QueueDef) -> anyhow::Result<(Change, Option<u32>)> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match self
            .channel
            .queue_declare(&q.name, passive, Default::default())
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {
                self.fresh().await?;
                return Ok((Change::Create, None));
            }
            Err(err) => {
                self.fresh().await?;
                return Ok((Change::Fail(err.message().to_owned()), None));
            }
        }
        let options = QueueDeclareOptions {
            passive: false,
            durable: q.durable,
            exclusive: false,
            auto_delete: q.auto_delete,
        };
        match self
            .channel
            .queue_declare(&q.name, options, json_to_table(&q.arguments))
            .await
        {
            Ok(info) => Ok((Change::Same, Some(info.message_count))),
            Err(err) => {
                self.fresh().await?;
                Ok((Change::Fail(err.message().to_owned()), None))
            }
        }
    }
}

fn exchange_kind(kind: &str) -> lepus::amqp::ExchangeKind {
    use lepus::amqp::ExchangeKind;
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

fn binding_label(b: &BindingDef) -> String {
    format!(
        "binding {} '{}' -> exchange '{}' ({})",
        b.destination_type, b.destination, b.source, b.routing_key
    )
}

fn same_binding(a: &BindingDef, b: &BindingDef) -> bool {
    a.source == b.source
        && a.destination == b.destination
        && a.destination_type == b.destination_type
        && a.routing_key == b.routing_key
        && a.arguments == b.arguments
}

async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let (vhost, defs) = read_file(&args)?;
    let global = connect::global();
    let client = global.client("lepus topology plan", Topology::new(), true)?;
    let live = match connect::inspecting_connection(&client, args.timeout).await {
        Ok(live) => live,
        Err(code) => return Ok(code),
    };
    let channel = live.connection.open_channel().await?;
    let mut prober = Prober {
        conn: live.connection.clone(),
        channel,
    };
    let mut rows: Vec<(String, Change)> = Vec::new();
    let mut created: Vec<String> = Vec::new();
    for e in &defs.exchanges {
        let change = prober.exchange(e).await?;
        if change == Change::Create {
            created.push(e.name.clone());
        }
        rows.push((format!("exchange '{}' ({})", e.name, e.kind), change));
    }
    for q in &defs.queues {
        let (change, _) = prober.queue(q).await?;
        if change == Change::Create {
            created.push(q.name.clone());
        }
        rows.push((format!("queue '{}'", q.name), change));
    }
    let existing: Option<Vec<BindingDef>> = match &global.management_url {
        Some(url) => {
            let mgmt = Management::new(url, global)?;
            let doc = mgmt
                .get(&format!("/definitions/{}", segment(&vhost)))
                .await?;
            Some(
                Definitions::from_json(&doc.to_string())?
                    .for_vhost(&vhost)
                    .bindings,
            )
        }
        None => None,
    };
    for b in &defs.bindings {
        let change = if created.contains(&b.source) || created.contains(&b.destination) {
            Change::Create
        } else {
            match &existing {
                Some(list) if list.iter().any(|x| same_binding(x, b)) => Change::Same,
                Some(_) => Change::Create,
                None => Change::Unknown,
            }
        };
        rows.push((binding_label(b), change));
    }
    let _ = prober.channel.close().await;
    let _ = client.close(Duration::from_secs(5)).await;

    let failures = rows
        .iter()
        .filter(|(_, c)| matches!(c, Change::Fail(_)))
        .count();
    let changes = rows
        .iter()
        .filter(|(_, c)| matches!(c, Change::Create))
        .count();
    if args.json {
        let entries: Vec<Value> = rows
            .iter()
            .map(|(what, change)| {
                json!({
                    "entity": what,
                    "change": change.name(),
                    "reason": match change { Change::Fail(r) => Some(r.clone()), _ => None },
                })
            })
            .collect();
        println!(
            "{}",
            json!({"vhost": vhost, "changes": changes, "failures": failures, "entries": entries})
        );
    } else {
        let mut out = std::io::stdout().lock();
        for (what, change) in &rows {
            let _ = match change {
                Change::Fail(reason) => {
                    writeln!(out, "{} {what}: would fail: {reason}", change.sign())
                }
                Change::Unknown => writeln!(
                    out,
                    "{} {what}: declared by apply (give --management-url to see whether it exists)",
                    change.sign()
                ),
                other => writeln!(out, "{} {what}: {}", other.sign(), other.name()),
            };
        }
        let _ = writeln!(
            out,
            "plan for vhost '{vhost}': {changes} to create, {failures} would fail, {} unchanged",
            rows.iter().filter(|(_, c)| *c == Change::Same).count()
        );
    }
    Ok(if failures > 0 {
        ExitCode::from(exit::FAILED)
    } else if changes > 0 {
        ExitCode::from(exit::ATTENTION)
    } else {
        ExitCode::SUCCESS
    })
}

async fn apply(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let (vhost, defs) = read_file(&args)?;
    let topology = Topology::from_definitions(&defs)?;
    let global = connect::global();
    let client = global.client("lepus topology apply", topology, true)?;
    if let Err(code) = connect::inspecting_connection(&client, args.timeout).await {
        return Ok(code);
    }
    let report = client.topology_report(Role::Consume);
    let _ = client.close(Duration::from_secs(5)).await;
    if args.json {
        let failures: Vec<Value> = report
            .failures
            .iter()
            .map(|f| json!({"entity": f.entity, "error": f.error.to_string()}))
            .collect();
        println!(
            "{}",
            json!({"vhost": vhost, "declared": report.declared, "failures": failures})
        );
    } else {
        for f in &report.failures {
            println!("! {f}");
        }
        println!(
            "applied to vhost '{vhost}': {} declared, {} failed",
            report.declared,
            report.failures.len()
        );
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILED)
    })
}
