//! `--connections N`: what many connections cost a process, and how they come back after
//! a broker restart.
//!
//! Each (client, shape) runs in a fresh child process (this binary, re-executed with the
//! hidden `--conn-child` option), so one client's allocations never count against
//! another's: the child reads its resident memory (`VmRSS` of `/proc/self/status`), opens
//! N connections, lets them settle, reads it again, and measures its CPU time
//! (`getrusage`, the kernel's per-process user + system counters that `/proc/self/stat`
//! also shows, at microsecond resolution) over an idle window. `lepus` opens N whole
//! `lepus::Client`s (two connections each, a supervisor per connection, a channel pool):
//! its figures are per client.
//!
//! Shapes: `bare` (connections only), `channels` (10 channels open on each), `publishing`
//! (10 channels, and one message of 1 byte per 100 ms on each connection in confirm mode,
//! to a routing key nothing is bound to, so the broker confirms and drops it).
//!
//! With `--restart-cmd`, `lepus` (N clients, the default reconnect policy) and `lapin`
//! (N connections with `enable_auto_recover`) are then each run once more; when all are
//! up, the command (which must stop the broker and start it again, and return once it is
//! back) is run, and the child reports when each connection was lost and back.

pub mod child;
mod restart;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::clients::Client;
use crate::cpu::monotonic_secs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Bare,
    Channels,
    Publishing,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Bare, Shape::Channels, Shape::Publishing];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Bare => "bare",
            Shape::Channels => "channels",
            Shape::Publishing => "publishing",
        }
    }
}

/// Resident memory of this process in KiB.
pub fn rss_kb() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// Raises the soft limit on open files to the hard limit (a connection is a socket).
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    Ok(hard)
}

/// What the parent runs.
pub struct Plan {
    pub url: String,
    pub connections: usize,
    pub clients: Vec<Client>,
    pub heartbeat: u16,
    pub settle: Duration,
    pub window: Duration,
    pub restart_cmd: Option<String>,
    pub restart_deadline: Duration,
}

/// `url` with `heartbeat=secs` in its query.
pub fn with_heartbeat(url: &str, secs: u16) -> Result<String> {
    let mut parsed = url::Url::parse(url).context("bad --amqp-url")?;
    parsed
        .query_pairs_mut()
        .append_pair("heartbeat", &secs.to_string());
    Ok(parsed.to_string())
}

fn child_command(plan: &Plan, client: Client, shape: Shape) -> Result<Command> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--conn-child")
        .arg(client.name())
        .arg("--conn-shape")
        .arg(shape.name())
        .arg("--connections")
        .arg(plan.connections.to_string())
        .arg("--amqp-url")
        .arg(with_heartbeat(&plan.url, plan.heartbeat)?)
        .arg("--settle-secs")
        .arg(plan.settle.as_secs_f64().to_string())
        .arg("--window-secs")
        .arg(plan.window.as_secs_f64().to_string())
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Runs every client in every shape, then the restarts; returns the JSON object.
pub async fn run(plan: &Plan) -> Result<Value> {
    let mut top = Map::new();
    for &client in &plan.clients {
        let mut entry = Map::new();
        let mut shapes = Map::new();
        for shape in Shape::ALL {
            let mut child = child_command(plan, client, shape)?
                .spawn()
                .context("starting a child")?;
            let stdout = child.stdout.take().context("the child's stdout")?;
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.next_line().await?.with_context(|| {
                format!(
                    "{} {}: the child printed nothing",
                    client.name(),
                    shape.name()
                )
            })?;
            let figures: Value = serde_json::from_str(&line)
                .with_context(|| format!("the child printed {line:?}"))?;
            let status = child.wait().await?;
            if !status.success() {
                bail!(
                    "{} {}: the child failed ({status})",
                    client.name(),
                    shape.name()
                );
            }
            eprintln!(
                "{:<11} {:<10} {} connections: {:>7.1} KiB each, CPU {:>6.2}% (setup {:.1} s)",
                client.name(),
                shape.name(),
                plan.connections,
                figures["rss_per_connection_kb"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                figures["cpu_pct"].as_f64().unwrap_or(f64::NAN),
                figures["setup_s"].as_f64().unwrap_or(f64::NAN),
            );
            let (rss_key, cpu_key) = match shape {
                Shape::Bare => ("rss_per_connection_kb", "idle_cpu_pct"),
                Shape::Channels => (
                    "rss_per_connection_kb_10_channels",
                    "idle_cpu_pct_10_channels",
                ),
                Shape::Publishing => ("rss_per_connection_kb_publishing", "publishing_cpu_pct"),
            };
            entry.insert(rss_key.into(), figures["rss_per_connection_kb"].clone());
            entry.insert(cpu_key.into(), figures["cpu_pct"].clone());
            shapes.insert(shape.name().into(), figures);
        }
        entry.insert("shapes".into(), Value::Object(shapes));
        top.insert(client.name().into(), Value::Object(entry));
    }
    top.insert("targets".into(), targets(&top));
    if let Some(cmd) = &plan.restart_cmd {
        let mut restarts = Map::new();
        for client in [Client::Lepus, Client::Lapin] {
            if plan.clients.contains(&client) {
                restarts.insert(client.name().into(), restart_one(plan, client, cmd).await?);
            }
        }
        top.insert("restart".into(), Value::Object(restarts));
    }
    top.insert(
        "plan".into(),
        json!({
            "connections": plan.connections,
            "heartbeat_s": plan.heartbeat,
            "settle_s": plan.settle.as_secs_f64(),
            "window_s": plan.window.as_secs_f64(),
        }),
    );
    Ok(Value::Object(top))
}

fn targets(top: &Map<String, Value>) -> Value {
    let get = |client: &str, key: &str| {
        top.get(client)
            .and_then(|e| e.get(key))
            .and_then(Value::as_f64)
    };
    let leaner = |key: &str| {
        [get("amqprs", key), get("lapin", key)]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    };
    let mut out = Map::new();
    let mut goal = |name: &str, value: Option<f64>, base: Option<f64>, bound: f64| {
        if let (Some(v), Some(b)) = (value, base) {
            let ratio = v / b;
            out.insert(
                name.into(),
                json!({ "ratio": ratio, "bound": bound, "at_least": false, "met": ratio <= bound }),
            );
        }
    };
    for key in ["rss_per_connection_kb", "rss_per_connection_kb_10_channels"] {
        goal(
            &format!("lepus_amqp_{key}_vs_leaner_peer"),
            get("lepus-amqp", key),
            leaner(key),
            0.5,
        );
    }
    goal(
        "lepus_client_rss_vs_one_amqprs_connection",
        get("lepus", "rss_per_connection_kb"),
        get("amqprs", "rss_per_connection_kb"),
        1.0,
    );
    Value::Object(out)
}

/// N clients up, the broker restarted under them, each one's loss and return.
async fn restart_one(plan: &Plan, client: Client, cmd: &str) -> Result<Value> {
    let mut command = child_command(plan, client, Shape::Bare)?;
    command
        .arg("--restart-watch-secs")
        .arg(plan.restart_deadline.as_secs_f64().to_string());
    let mut child = command.spawn().context("starting a child")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut ready = false;
    while let Some(line) = lines.next_line().await? {
        if line == "READY" {
            ready = true;
            break;
        }
    }
    if !ready {
        bail!(
            "{}: the child did not get its connections up",
            client.name()
        );
    }
    eprintln!(
        "{}: {} up; restarting the broker",
        client.name(),
        plan.connections
    );
    let t_restart = monotonic_secs();
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running --restart-cmd")?;
    if !status.success() {
        bail!("--restart-cmd failed ({status})");
    }
    let t_up = monotonic_secs();
    let line = lines
        .next_line()
        .await?
        .context("the child ended without its restart report")?;
    let watched: Value =
        serde_json::from_str(&line).with_context(|| format!("the child printed {line:?}"))?;
    let _ = child.wait().await;
    let floats = |key: &str| -> Vec<Option<f64>> {
        watched[key]
            .as_array()
            .map(|a| a.iter().map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let (lost, back) = (floats("lost"), floats("back"));
    let back_times: Vec<f64> = back.iter().flatten().copied().collect();
    let since_up: Vec<f64> = back_times.iter().map(|t| t - t_up).collect();
    let durations: Vec<f64> = lost
        .iter()
        .zip(&back)
        .filter_map(|(l, b)| Some((*b)? - (*l)?))
        .collect();
    let all_back_s = since_up.iter().copied().fold(f64::NAN, f64::max);
    let histogram = restart::ascii_histogram(&since_up, 0.5, 50);
    eprintln!(
        "{}: broker down and up again in {:.1} s; {} of {} back, all within {:.1} s of the broker being up; {} gave up\n{histogram}",
        client.name(),
        t_up - t_restart,
        back_times.len(),
        plan.connections,
        all_back_s,
        watched["gave_up"],
    );
    Ok(json!({
        "clients": plan.connections,
        "restart_cmd_s": t_up - t_restart,
        "back": back_times.len(),
        "gave_up": watched["gave_up"],
        "never_lost": watched["never_lost"],
        "all_back_after_broker_up_s": all_back_s,
        "reconnect_s_p50": crate::report::median(durations.clone()),
        "reconnect_s_max": durations.iter().copied().fold(f64::NAN, f64::max),
        "peak_accept_per_s": restart::peak_rate(&back_times, 1.0),
        "histogram_since_broker_up_0_5s_bins": restart::bin(&since_up, 0.5),
        "histogram_text": histogram,
    }))
}
