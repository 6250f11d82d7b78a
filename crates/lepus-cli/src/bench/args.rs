//! The options of `lepus bench` (PerfTest's short flags beside the long ones) and the
//! combinations refused before anything connects.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::connect::parse_secs;

/// Classic or quorum queue.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// A classic queue.
    Classic,
    /// A replicated quorum queue.
    Quorum,
}

/// Options of `lepus bench`. The short flags are PerfTest's.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Producers, each with a publisher of its own.
    #[arg(long, short = 'x', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub producers: u16,
    /// Consumers, each on a channel of its own (spread over the queues).
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: u16,
    /// Message body size in bytes.
    #[arg(long, short = 's', value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// Unconfirmed messages in flight per producer; 0 publishes without confirms
    /// (PerfTest's default).
    #[arg(long, short = 'c', value_name = "W", default_value_t = 1000)]
    pub confirm: u32,
    /// Unacknowledged deliveries per consumer (basic.qos).
    #[arg(long, short = 'q', value_name = "P", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Consumers ack with multiple=true every K deliveries.
    #[arg(long, short = 'A', value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub multi_ack: u16,
    /// Consumers do not acknowledge (the broker forgets a message once sent).
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Messages per second across all producers; 0 for unlimited.
    #[arg(long, short = 'r', value_name = "MSGS_PER_S", default_value_t = 0)]
    pub rate: u64,
    /// Messages per producer [default: 100000].
    #[arg(long, short = 'C', conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Publish for this many seconds instead of a count.
    #[arg(long, short = 'z', value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Queue type.
    #[arg(long, value_enum, default_value_t = QueueKind::Classic)]
    pub queue_type: QueueKind,
    /// Queue name (durable); repeat for several queues. A fresh name by default.
    #[arg(long = "queue", short = 'u', value_name = "NAME")]
    pub queues: Vec<String>,
    /// This many queues with fresh names (when no --queue is given).
    #[arg(long = "queues", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "queues")]
    pub queue_count: u16,
    /// Queue arguments, e.g. x-max-length=1000,x-queue-mode=lazy (numbers become
    /// integers).
    #[arg(long, value_name = "K=V", value_delimiter = ',', value_parser = parse_queue_arg)]
    pub queue_args: Vec<(String, lepus::amqp::AMQPValue)>,
    /// Publish through this exchange (declared, and every queue bound to it with the
    /// routing key). Default: the default exchange, producers spread over the queues.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub exchange: Option<String>,
    /// The exchange's type.
    #[arg(long, short = 't', value_name = "TYPE", default_value = "direct")]
    pub exchange_type: String,
    /// Routing key with --exchange [default: the run's id].
    #[arg(long, short = 'k', value_name = "KEY", requires = "exchange")]
    pub routing_key: Option<String>,
    /// Message flags: `persistent` (the default; see --transient) or `mandatory`.
    #[arg(long = "flag", short = 'f', value_name = "FLAG", value_parser = ["persistent", "mandatory"])]
    pub flags: Vec<String>,
    /// Transient messages (PerfTest's default) instead of persistent ones.
    #[arg(long, conflicts_with = "flags")]
    pub transient: bool,
    /// Keep the queues (and exchange) at the end instead of deleting them.
    #[arg(long)]
    pub keep_queue: bool,
    /// Count lost (confirmed, never consumed) and duplicated messages exactly; exit
    /// non-zero if any confirmed message was lost.
    #[arg(long)]
    pub verify: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics (`lepus_*`) on this address while the run lasts, e.g.
    /// 127.0.0.1:9090 (/metrics, /health).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds a message may take from send to confirm; also bounds connecting and
    /// every wait for the broker.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub publish_timeout: Duration,
}

/// `key=value`: integers and booleans as such, anything else as a string.
fn parse_queue_arg(s: &str) -> Result<(String, lepus::amqp::AMQPValue), String> {
    use lepus::amqp::AMQPValue;
    let (k, v) = s
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    let value = if let Ok(n) = v.parse::<i64>() {
        AMQPValue::LongLongInt(n)
    } else if let Ok(b) = v.parse::<bool>() {
        AMQPValue::Boolean(b)
    } else {
        AMQPValue::LongString(v.into())
    };
    Ok((k.to_owned(), value))
}

/// Refuses combinations that cannot work, before connecting.
pub(super) fn validate(args: &BenchArgs) -> anyhow::Result<()> {
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
    if args.verify && args.confirm == 0 {
        bail!(
            "--verify needs confirms (--confirm above 0): lost is counted against what the broker confirmed"
        );
    }
    if args.verify && args.autoack {
        bail!("--verify needs acknowledgements (not --autoack)");
    }
    if args.verify && (args.queues.len() > 1 || args.queue_count > 1) && args.exchange.is_some() {
        bail!("--verify with --exchange needs a single queue (each bound queue gets a copy)");
    }
    if args.queues.iter().any(|q| q.is_empty() || q.len() > 255) {
        bail!("--queue must be 1 to 255 bytes");
    }
    if args
        .exchange
        .as_ref()
        .is_some_and(|e| e.is_empty() || e.len() > 255)
    {
        bail!("--exchange must be 1 to 255 bytes");
    }
    Ok(())
}
