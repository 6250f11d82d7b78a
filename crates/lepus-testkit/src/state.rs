//! The state file in each node's directory: how a process finds a node it did not start.
//!
//! `lepus-broker start` leaves its nodes running after it exits; `status`, `ctl`,
//! `restart` and `stop` are separate runs, and the shop demo kills and restarts a node it
//! was only told the directory of. They all read `lepus-node.state`, written before the
//! boot (and again with the pid once the node is ready): one `key=value` per line, so a
//! shell script can read it with `sed` too.
//!
//! ```text
//! name=n1@localhost
//! dir=/work/lepus/target/rabbitmq/n1
//! home=/work/lepus/target/rabbitmq/n1
//! amqp=5672
//! dist=25672
//! amqps=5671
//! management=15672
//! tls_ca=/work/lepus/target/rabbitmq/tls/ca.pem
//! tls_cert=/work/lepus/target/rabbitmq/tls/server.pem
//! tls_key=/work/lepus/target/rabbitmq/tls/server.key
//! tls_require_client_cert=false
//! pid=12345
//! ```
//!
//! A node in a zone (see [`crate::zones`]) also has `netns=` (its network namespace),
//! `ip=` (its address there) and `erl_args=` (such as `-kernel net_ticktime 5`).
//!
//! The Erlang cookie stays in `home/.erlang.cookie` (mode 600), where the node reads it.
//! The pid line is what the node had when it last became ready; whether it still runs is
//! decided from RabbitMQ's own pid file and `/proc`, never from this line alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::node::{Node, Placement, Ports};
use crate::tls::ServerTls;

/// The state file's name inside a node's directory.
pub const STATE_FILE: &str = "lepus-node.state";

pub(crate) fn render(node: &Node, pid: Option<i32>) -> String {
    let mut out = String::from("# written by lepus-testkit; read by lepus-broker\n");
    let _ = writeln!(out, "name={}", node.name);
    let _ = writeln!(out, "dir={}", node.dir.display());
    let _ = writeln!(out, "home={}", node.dir.display());
    let _ = writeln!(out, "amqp={}", node.ports.amqp);
    let _ = writeln!(out, "dist={}", node.ports.dist);
    if let Some(port) = node.ports.amqps {
        let _ = writeln!(out, "amqps={port}");
    }
    if let Some(port) = node.ports.management {
        let _ = writeln!(out, "management={port}");
    }
    if let Some(tls) = &node.tls {
        let _ = writeln!(out, "tls_ca={}", tls.ca.display());
        let _ = writeln!(out, "tls_cert={}", tls.cert.display());
        let _ = writeln!(out, "tls_key={}", tls.key.display());
        let _ = writeln!(out, "tls_require_client_cert={}", tls.require_client_cert);
    }
    if let Some(placement) = &node.placement {
        let _ = writeln!(out, "netns={}", placement.netns);
        let _ = writeln!(out, "ip={}", placement.ip);
    }
    if !node.erl_args.is_empty() {
        let _ = writeln!(out, "erl_args={}", node.erl_args.join(" "));
    }
    if let Some(pid) = pid {
        let _ = writeln!(out, "pid={pid}");
    }
    out
}

/// Reads the node whose directory is `dir` from its state file.
pub(crate) fn load(dir: &Path) -> Result<Node, Error> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading the node state file {}", path.display()), e))?;
    let get = |key: &str| -> Option<&str> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    };
    let bad = |what: &str| Error::State(format!("{}: {what}", path.display()));
    let port = |key: &str| -> Result<Option<u16>, Error> {
        get(key)
            .map(|v| {
                v.trim()
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("{key} is not a port")))
            })
            .transpose()
    };
    let name = get("name").ok_or_else(|| bad("no name"))?.to_owned();
    let node_dir = PathBuf::from(get("dir").ok_or_else(|| bad("no dir"))?);
    let ports = Ports {
        amqp: port("amqp")?.ok_or_else(|| bad("no amqp port"))?,
        dist: port("dist")?.ok_or_else(|| bad("no dist port"))?,
        amqps: port("amqps")?,
        management: port("management")?,
    };
    let tls = match (get("tls_ca"), get("tls_cert"), get("tls_key")) {
        (Some(ca), Some(cert), Some(key)) => Some(
            ServerTls::new(ca, cert, key)
                .require_client_cert(get("tls_require_client_cert") == Some("true")),
        ),
        _ => None,
    };
    let placement = match (get("netns"), get("ip")) {
        (Some(netns), Some(ip)) => Some(Placement {
            netns: netns.trim().to_owned(),
            ip: ip
                .trim()
                .parse()
                .map_err(|_| bad("ip is not an IPv4 address"))?,
        }),
        _ => None,
    };
    let erl_args = get("erl_args")
        .map(|args| vec![args.trim().to_owned()])
        .unwrap_or_default();
    let cookie = std::fs::read_to_string(node_dir.join(".erlang.cookie")).unwrap_or_default();
    Ok(Node {
        dir: node_dir,
        name,
        cookie,
        ports,
        tls,
        config: Vec::new(),
        erl_args,
        placement,
    })
}
