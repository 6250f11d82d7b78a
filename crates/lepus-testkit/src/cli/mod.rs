//! `lepus-broker`, the command line behind `scripts/broker`: local RabbitMQ nodes on fixed
//! ports that outlive the command which started them.
//!
//! ```text
//! lepus-broker start [--nodes N] [--tls]   start N nodes (default 1), print one URL per line
//! lepus-broker restart [--node I]          boot node I (default 1) again on its data, print its URL
//! lepus-broker stop                        stop the nodes started under LEPUS_BROKER_DIR
//! lepus-broker status                      show which of them run
//! lepus-broker ctl [--node I] ARGS...      rabbitmqctl ARGS for node I (default 1)
//! lepus-broker certs DIR                   only generate the TLS files into DIR
//! ```
//!
//! It lives in the library, not in the binary, so that it drives nodes with the very code
//! [`Broker`](crate::Broker) uses (configuration, boot, readiness wait, kill, restart,
//! cluster join); the only differences are the directory, the ports and the lifetime.
//! Each invocation is separate: a later one finds the nodes through the state file in
//! each node's directory ([`STATE_FILE`](crate::STATE_FILE)).
//!
//! Node `i` is `<prefix><i>@localhost` in `<dir>/<prefix><i>` and uses AMQP `5662+10*i`,
//! amqps `5661+10*i`, management `15662+10*i` and distribution `25662+10*i`, all plus
//! `LEPUS_BROKER_PORT_OFFSET`, all on 127.0.0.1. Progress goes to stderr; stdout carries
//! only URLs (and `status` lines, and whatever `ctl` prints).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::broker::random_cookie;
use crate::node::{self, Node};
use crate::tls::TlsFiles;

mod settings;

use settings::Settings;

const USAGE: &str = "\
usage:
  scripts/broker install                   install Debian's rabbitmq-server (only if missing)
  scripts/broker start [--nodes N] [--tls] start N nodes (default 1), print one URL per line
  scripts/broker restart [--node I]        boot node I (default 1) again on its data, print its URL
  scripts/broker stop                      stop the nodes this script started
  scripts/broker status                    show which of them run
  scripts/broker ctl [--node I] ARGS...    rabbitmqctl ARGS for node I (default 1)
  scripts/broker certs DIR                 only generate the TLS files into DIR
environment: LEPUS_BROKER_PORT_OFFSET, LEPUS_BROKER_PREFIX, LEPUS_BROKER_DIR,
  LEPUS_BROKER_START_TIMEOUT (seconds)";

const MAX_NODES: u32 = 9;

/// Runs `lepus-broker` with the process's arguments and environment; errors are printed
/// as `broker: error: ...` and give exit code 1, usage mistakes exit code 2.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("broker: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn say(text: impl std::fmt::Display) {
    eprintln!("broker: {text}");
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn run(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let mut args = args.into_iter();
    let Some(cmd) = args.next() else {
        return Ok(usage());
    };
    let cmd = cmd.to_string_lossy().into_owned();
    let rest: Vec<OsString> = args.collect();
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        return Ok(usage());
    }
    let settings = Settings::from_env()?;
    match cmd.as_str() {
        "start" => start(&settings, &strings(rest)?),
        "restart" => restart(&settings, &strings(rest)?),
        "stop" => stop(&settings),
        "status" => status(&settings),
        "ctl" => ctl(&settings, rest),
        "certs" => certs(&strings(rest)?),
        "install" => {
            bail!("install is done by scripts/broker install (apt-get), not by this binary")
        }
        other => {
            bail!("unknown command '{other}' (install, start, restart, stop, status, ctl, certs)")
        }
    }
}

fn strings(args: Vec<OsString>) -> anyhow::Result<Vec<String>> {
    args.into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| anyhow::anyhow!("argument {a:?} is not UTF-8"))
        })
        .collect()
}

/// The value of `--name N` or `--name=N` at `args[*i]`, advancing `*i` past it.
fn number_option(args: &[String], i: &mut usize, name: &str) -> anyhow::Result<Option<u32>> {
    let Some(arg) = args.get(*i) else {
        return Ok(None);
    };
    let value = if arg == name {
        *i += 1;
        args.get(*i)
            .with_context(|| format!("{name} needs a number"))?
            .clone()
    } else if let Some(v) = arg.strip_prefix(&format!("{name}=")) {
        v.to_owned()
    } else {
        return Ok(None);
    };
    *i += 1;
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_NODES).contains(&n) => Ok(Some(n)),
        _ => bail!("{name} must be a number from 1 to {MAX_NODES} (got '{value}')"),
    }
}

fn start(settings: &Settings, args: &[String]) -> anyhow::Result<ExitCode> {
    let (mut nodes, mut tls) = (1, false);
    let mut i = 0;
    while i < args.len() {
        if let Some(n) = number_option(args, &mut i, "--nodes")? {
            nodes = n;
            continue;
        }
        match args.get(i).map(String::as_str) {
            Some("--tls") => tls = true,
            Some("-h" | "--help") => return Ok(usage()),
            Some(other) => bail!("unknown option for start: {other}"),
            None => {}
        }
        i += 1;
    }
    node::require_installed()?;
    std::fs::create_dir_all(&settings.base)
        .with_context(|| format!("creating {}", settings.base.display()))?;
    let files = if tls {
        Some(generate_certs(&settings.tls_dir())?)
    } else {
        None
    };
    // All nodes of one cluster share a cookie; a running node 1 decides which.
    let first = settings.node(1)?;
    let cookie = match first.pid() {
        Some(_) if !first.cookie.trim().is_empty() => first.cookie.trim().to_owned(),
        _ => random_cookie(),
    };
    // (node, booted here): nodes already running are kept as they are.
    let mut all: Vec<(Node, bool)> = Vec::new();
    for i in 1..=nodes {
        let existing = settings.node(i)?;
        if let Some(pid) = existing.pid() {
            if tls && existing.tls.is_none() {
                bail!(
                    "{} is already running without TLS; run scripts/broker stop first",
                    existing.name
                );
            }
            say(format!(
                "{} is already running (pid {pid}); not restarting it",
                existing.name
            ));
            all.push((existing, false));
            continue;
        }
        let node = Node {
            dir: settings.dir(i),
            name: settings.name(i),
            cookie: cookie.clone(),
            ports: settings.ports(i, tls)?,
            tls: files.as_ref().map(TlsFiles::server_tls),
            config: Vec::new(),
            erl_args: Vec::new(),
            placement: None,
        };
        node.require_free_ports()?;
        // A stopped node starts from empty data: one that was part of another cluster
        // shape would otherwise wait minutes for peers that will not come.
        if node.dir.exists() {
            std::fs::remove_dir_all(&node.dir)
                .with_context(|| format!("removing {}", node.dir.display()))?;
        }
        node.write_files()?;
        all.push((node, true));
    }
    // Boot the new nodes at once (each is standalone until it joins node 1), then join
    // them one at a time: concurrent joins contend for the same schema change.
    let booted: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = all
            .iter()
            .filter(|(_, new)| *new)
            .map(|(node, _)| {
                let ports = &node.ports;
                let amqps = ports
                    .amqps
                    .map(|p| format!(", amqps {p}"))
                    .unwrap_or_default();
                let mgmt = ports
                    .management
                    .map(|p| format!(", management {p}"))
                    .unwrap_or_default();
                say(format!(
                    "starting {} (amqp {}{amqps}{mgmt}, dist {})",
                    node.name, ports.amqp, ports.dist
                ));
                scope.spawn(move || boot(settings, node))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a node-starting thread panicked")))
            })
            .collect()
    });
    for result in booted {
        result?;
    }
    let first = settings.name(1);
    for (node, new) in all.iter().skip(1) {
        if *new {
            say(format!("joining {} to {first}", node.name));
            node.join(&first)
                .with_context(|| format!("could not join {} to {first}", node.name))?;
        }
    }
    let started: Vec<&Node> = all.iter().map(|(node, _)| node).collect();
    for node in &started {
        println!("{}", amqp_url(node));
    }
    for node in &started {
        if let Some(url) = amqps_url(node) {
            println!("{url}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn boot(settings: &Settings, node: &Node) -> anyhow::Result<()> {
    let t0 = Instant::now();
    node.boot(settings.start_timeout)
        .map_err(|failure| failure.error)?;
    say(format!(
        "{} is ready ({} s)",
        node.name,
        t0.elapsed().as_secs()
    ));
    Ok(())
}

fn amqp_url(node: &Node) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.ports.amqp)
}

fn amqps_url(node: &Node) -> Option<String> {
    node.ports
        .amqps
        .map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
}

/// Boots node I again on its existing data: same name, ports, cookie and configuration.
/// A node of a cluster rejoins its running peers; one whose peers are all down may wait
/// for them (RabbitMQ's own rule: the last node stopped boots first).
fn restart(settings: &Settings, args: &[String]) -> anyhow::Result<ExitCode> {
    let mut index = 1;
    let mut i = 0;
    while i < args.len() {
        if let Some(n) = number_option(args, &mut i, "--node")? {
            index = n;
            continue;
        }
        match args.get(i).map(String::as_str) {
            Some("-h" | "--help") => return Ok(usage()),
            Some(other) => bail!("unknown option for restart: {other}"),
            None => {}
        }
        i += 1;
    }
    node::require_installed()?;
    let node = settings.node(index)?;
    if !node.dir.join("rabbitmq.conf").is_file() || !node.dir.join("mnesia").is_dir() {
        bail!(
            "{} has no data under {} to restart from (scripts/broker start boots a new node)",
            node.name,
            node.dir.display()
        );
    }
    if let Some(pid) = node.pid() {
        say(format!(
            "{} is already running (pid {pid}); not restarting it",
            node.name
        ));
    } else {
        node.require_free_ports()?;
        say(format!(
            "restarting {} on its data in {}",
            node.name,
            node.dir.display()
        ));
        boot(settings, &node)?;
    }
    println!("{}", amqp_url(&node));
    if let Some(url) = amqps_url(&node) {
        println!("{url}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops every node under the base at once: SIGTERM (RabbitMQ shuts down in order), then
/// SIGKILL for whatever still runs after 30 s.
fn stop(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut running = Vec::new();
    for i in settings.known() {
        let node = settings.node(i)?;
        if let Some(pid) = node.pid() {
            say(format!("stopping {} (pid {pid})", node.name));
            running.push(node);
        }
    }
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = running
            .iter()
            .map(|node| scope.spawn(move || node.stop()))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(result) => result.map_err(anyhow::Error::from),
                Err(_) => Err(anyhow::anyhow!("a stopping thread panicked")),
            })
            .collect()
    });
    for result in results {
        result?;
    }
    if running.is_empty() {
        say(format!(
            "no node under {} was running",
            settings.base.display()
        ));
    } else {
        let names: Vec<&str> = running.iter().map(|n| n.name.as_str()).collect();
        say(format!("stopped {}", names.join(" ")));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(settings: &Settings) -> anyhow::Result<ExitCode> {
    let known = settings.known();
    if known.is_empty() {
        println!("no nodes under {}", settings.base.display());
    }
    for i in known {
        let node = settings.node(i)?;
        match node.pid() {
            Some(pid) => {
                let mgmt = node
                    .ports
                    .management
                    .map(|p| format!(" management http://127.0.0.1:{p}/"))
                    .unwrap_or_default();
                println!("{} running pid {pid} {}{mgmt}", node.name, amqp_url(&node));
            }
            None => println!("{} stopped", node.name),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// rabbitmqctl for one of the nodes, with its cookie and environment; the terminal and
/// the exit code are rabbitmqctl's.
fn ctl(settings: &Settings, args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let mut args = args.into_iter().peekable();
    let mut index = 1;
    if args.peek().is_some_and(|a| a == "--node") {
        args.next();
        let value = args.next().context("--node needs a number")?;
        let value = value.to_string_lossy();
        index = value
            .parse()
            .ok()
            .filter(|n| (1..=MAX_NODES).contains(n))
            .with_context(|| {
                format!("--node needs a number from 1 to {MAX_NODES} (got '{value}')")
            })?;
    }
    node::require_installed()?;
    if !settings.dir(index).is_dir() {
        bail!(
            "no node {} under {} (scripts/broker start first)",
            settings.name(index),
            settings.base.display()
        );
    }
    let node = settings.node(index)?;
    let status = node
        .ctl_command(args)
        .status()
        .context("running rabbitmqctl")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

fn certs(args: &[String]) -> anyhow::Result<ExitCode> {
    let [dir] = args else {
        bail!("usage: scripts/broker certs DIR");
    };
    generate_certs(Path::new(dir))?;
    Ok(ExitCode::SUCCESS)
}

fn generate_certs(dir: &Path) -> anyhow::Result<TlsFiles> {
    if let Ok(files) = TlsFiles::in_dir(dir) {
        say(format!("reusing TLS files in {}", dir.display()));
        return Ok(files);
    }
    let files = TlsFiles::generate(dir)?;
    say(format!(
        "generated CA, server (CN=localhost) and client (CN={}) certificates in {}",
        crate::CLIENT_CERT_USER,
        dir.display()
    ));
    Ok(files)
}
