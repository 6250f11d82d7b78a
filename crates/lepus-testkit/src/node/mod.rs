//! One RabbitMQ node in a directory of its own: its files, its environment, its start.
//!
//! Everything the node writes (database, logs, pid file, crash dump, plugin expansion,
//! Erlang cookie) lives in its directory; nothing lands in `/var/lib/rabbitmq`, so any
//! number of nodes can run side by side. Listeners, including Erlang distribution, bind
//! to 127.0.0.1 only, or, for a node placed in a zone, to the zone's address inside its
//! own network namespace.//!
//! `mod.rs` lays the node out (directory, configuration, ports, environment);
//! `lifecycle.rs` boots it, waits for it, runs `rabbitmqctl` against it and stops or kills
//! it, and explains a failed start from its logs.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::Error;
use crate::process;
use crate::tls::ServerTls;

mod lifecycle;

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// Longest a `rabbitmqctl` call may take before it is killed.
pub(crate) const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a graceful stop may take before SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a process may take to disappear after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// An Erlang VM that has not shown up in `/proc` by then is taken to have failed.
const VM_APPEAR_TIMEOUT: Duration = Duration::from_secs(5);

/// The ports one node listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) amqp: u16,
    pub(crate) dist: u16,
    pub(crate) amqps: Option<u16>,
    pub(crate) management: Option<u16>,
}

impl Ports {
    /// Asks the kernel for distinct free ports. Another process may still take one before
    /// the node binds it; the caller retries with new ports when that happens.
    pub(crate) fn pick(tls: bool, management: bool) -> Result<Ports, Error> {
        let mut held = Vec::new();
        let mut next = || -> Result<u16, Error> {
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .map_err(|e| Error::io("binding 127.0.0.1:0 to find a free port", e))?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::io("reading a bound port", e))?
                .port();
            held.push(listener);
            Ok(port)
        };
        Ok(Ports {
            amqp: next()?,
            dist: next()?,
            amqps: if tls { Some(next()?) } else { None },
            management: if management { Some(next()?) } else { None },
        })
    }

    /// RabbitMQ's usual ports: a node alone in its network namespace has them all.
    pub(crate) fn usual(tls: bool, management: bool) -> Ports {
        Ports {
            amqp: 5672,
            dist: 25672,
            amqps: tls.then_some(5671),
            management: management.then_some(15672),
        }
    }
}

/// A node's own network namespace and its address there (see [`crate::zones`]). Every
/// RabbitMQ program for the node runs inside the namespace (`ip netns exec`), so
/// `rabbitmqctl` still reaches its node while the zone is cut off from everything else.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub(crate) netns: String,
    pub(crate) ip: Ipv4Addr,
}

/// Everything needed to start, watch and stop one node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    pub(crate) cookie: String,
    pub(crate) ports: Ports,
    pub(crate) tls: Option<ServerTls>,
    pub(crate) config: Vec<String>,
    /// Extra arguments for the node's Erlang VM (and for `rabbitmqctl`'s), such as
    /// `-kernel net_ticktime 5`.
    pub(crate) erl_args: Vec<String>,
    /// `None`: loopback of the test's own network namespace.
    pub(crate) placement: Option<Placement>,
}

/// A failed start, and whether it is worth another try.
pub(crate) struct StartFailure {
    pub(crate) error: Error,
    /// Worth another try with fresh ports: a port was taken between choosing it and the
    /// node binding it, or the VM went away leaving nothing to say why (no log line, no
    /// output, no crash dump), which is what a race at startup looks like.
    pub(crate) retry: bool,
}

impl From<Error> for StartFailure {
    fn from(error: Error) -> Self {
        StartFailure {
            error,
            retry: false,
        }
    }
}

pub(crate) fn require_installed() -> Result<(), Error> {
    for program in ["rabbitmq-server", "rabbitmqctl"] {
        let path = Path::new(RABBITMQ_BIN).join(program);
        if !path.is_file() {
            return Err(Error::NotInstalled { path });
        }
    }
    Ok(())
}

impl Node {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.name))
    }

    fn startup_log(&self) -> PathBuf {
        self.dir.join("startup.log")
    }

    fn crash_dump(&self) -> PathBuf {
        self.dir.join("erl_crash.dump")
    }

    /// The address the node listens on: 127.0.0.1, or its zone's address.
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.placement
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |placement| placement.ip)
    }

    /// A command for one of RabbitMQ's programs with this node's environment, inside the
    /// node's network namespace if it has one.
    fn command(&self, program: &str) -> Command {
        let program = Path::new(RABBITMQ_BIN).join(program);
        let mut cmd = match &self.placement {
            Some(placement) => {
                let mut cmd = Command::new(crate::zones::ip_program());
                cmd.args(["netns", "exec", &placement.netns]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"RABBITMQ_") {
                cmd.env_remove(key);
            }
        }
        let dir = &self.dir;
        let ip = self.ip();
        let mut erl_args = format!(
            "-kernel inet_dist_use_interface {{{}}}",
            ip.octets().map(|o| o.to_string()).join(",")
        );
        for arg in &self.erl_args {
            erl_args.push(' ');
            erl_args.push_str(arg);
        }
        if self.placement.is_some() {
            // Nodes in zones reach each other by address: rabbit@10.213.7.11.
            cmd.env("RABBITMQ_USE_LONGNAME", "true");
        }
        cmd.current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", ip.to_string())
            .env("RABBITMQ_NODE_PORT", self.ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", self.ports.dist.to_string())
            .env("RABBITMQ_BASE", dir)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", &erl_args)
            .env("RABBITMQ_CTL_ERL_ARGS", &erl_args)
            // Many rabbitmqctl calls may run at once across test processes; the default
            // range for their own distribution ports has only eleven.
            .env("RABBITMQ_CTL_DIST_PORT_MIN", "35672")
            .env("RABBITMQ_CTL_DIST_PORT_MAX", "35971")
            // epmd also listens on loopback; in a zone it must answer the other zones.
            .env("ERL_EPMD_ADDRESS", ip.to_string())
            .env("ERL_CRASH_DUMP", self.crash_dump());
        cmd
    }

    /// Writes the state file, the cookie, rabbitmq.conf, enabled_plugins and, with TLS,
    /// the definitions.
    pub(crate) fn write_files(&self) -> Result<(), Error> {
        std::fs::create_dir_all(self.dir.join("log"))
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        write_private(&self.dir.join(".erlang.cookie"), self.cookie.as_bytes())?;
        let mut conf = String::from("# written by lepus-testkit\n");
        let ip = self.ip();
        let _ = writeln!(conf, "listeners.tcp.1 = {ip}:{}", self.ports.amqp);
        let mut plugins = Vec::new();
        if let Some(port) = self.ports.management {
            let _ = writeln!(conf, "management.tcp.ip = {ip}");
            let _ = writeln!(conf, "management.tcp.port = {port}");
            plugins.push("rabbitmq_management");
        }
        if let (Some(tls), Some(port)) = (&self.tls, self.ports.amqps) {
            conf.push_str(&tls.rabbitmq_conf(port));
            let definitions = self.dir.join("definitions.json");
            write_file(&definitions, crate::tls::DEFINITIONS.as_bytes())?;
            let _ = writeln!(conf, "load_definitions = {}", definitions.display());
            plugins.push("rabbitmq_auth_mechanism_ssl");
        }
        for line in &self.config {
            conf.push_str(line);
            conf.push('\n');
        }
        write_file(&self.dir.join("rabbitmq.conf"), conf.as_bytes())?;
        let plugins = format!("[{}].\n", plugins.join(","));
        write_file(&self.dir.join("enabled_plugins"), plugins.as_bytes())?;
        self.save_state(None)
    }

    /// Joins this running node to the cluster of node `first`: `stop_app`,
    /// `join_cluster`, `start_app`.
    pub(crate) fn join(&self, first: &str) -> Result<(), Error> {
        self.ctl(&["-q", "stop_app"])?;
        self.ctl(&["-q", "join_cluster", first])?;
        self.ctl(&["-q", "start_app"]).map(drop)
    }

    /// Fails, naming the port and who holds it, unless every port of the node is free
    /// on 127.0.0.1. For fixed ports, where a taken one is a setup mistake to report,
    /// not a race to retry.
    pub(crate) fn require_free_ports(&self) -> Result<(), Error> {
        let ports = [
            ("amqp", Some(self.ports.amqp)),
            ("management", self.ports.management),
            ("dist", Some(self.ports.dist)),
            ("amqps", self.ports.amqps),
        ];
        for (what, port) in ports {
            let Some(port) = port else { continue };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                let owner = port_owner(port)
                    .map(|owner| format!(" by {owner}"))
                    .unwrap_or_default();
                return Err(Error::State(format!(
                    "cannot start {}: port {port} ({what}) on 127.0.0.1 is already in use{owner}; \
                     stop that process or set LEPUS_BROKER_PORT_OFFSET",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// `rabbitmqctl -n <node> <args>` with the node's environment, not yet run: for a
    /// caller that hands the terminal to it.
    pub(crate) fn ctl_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command("rabbitmqctl");
        cmd.arg("-n").arg(&self.name).args(args);
        cmd
    }

    /// Writes the state file: what a later process needs to find, watch and restart
    /// this node (see [`crate::state`]).
    pub(crate) fn save_state(&self, pid: Option<i32>) -> Result<(), Error> {
        let text = crate::state::render(self, pid);
        let path = self.dir.join(crate::state::STATE_FILE);
        let staged = self.dir.join(format!("{}.tmp", crate::state::STATE_FILE));
        write_file(&staged, text.as_bytes())?;
        std::fs::rename(&staged, &path)
            .map_err(|e| Error::io(format!("renaming into {}", path.display()), e))
    }

    /// Removes what a previous failed attempt left, so the next start is from scratch.
    pub(crate) fn wipe_state(&self) -> Result<(), Error> {
        for sub in ["mnesia", "log"] {
            let path = self.dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
            }
        }
        self.clear_run_files();
        Ok(())
    }

    fn clear_run_files(&self) {
        for file in [self.pid_file(), self.crash_dump(), self.startup_log()] {
            let _ = std::fs::remove_file(file);
        }
    }

    /// The node's pid, if its pid file names a live Erlang VM running in its directory.
    pub(crate) fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let pid = text.trim().parse::<i32>().ok()?;
        (process::alive(pid) && process::runs_in(pid, &self.dir)).then_some(pid)
    }
}

/// Who listens on `port`, as `ss` tells it (`"beam.smp",pid=123,fd=4`), if it can.
fn port_owner(port: u16) -> Option<String> {
    let mut cmd = Command::new("ss");
    cmd.args(["-Hltnp", &format!("sport = :{port}")]);
    let out = process::run(&mut cmd, Duration::from_secs(5), "ss").ok()?;
    let line = out.stdout.lines().next()?.to_owned();
    let users = line.split("users:((").nth(1)?;
    Some(users.trim_end().trim_end_matches("))").to_owned()).filter(|u| !u.is_empty())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
