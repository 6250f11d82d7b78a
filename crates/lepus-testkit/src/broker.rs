//! One RabbitMQ node for one test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::error::Error;
use crate::node::{self, Node, Placement, Ports};
use crate::tls::{ServerTls, TlsFiles};

/// How long [`BrokerBuilder::start`] waits for a node by default. A node starts in about
/// five seconds on an idle two-core machine; the margin is for a machine busy compiling.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);

/// How many times a start is tried with fresh ports when another process took one of the
/// ports between choosing it and the node binding it, or the node died without a word.
const PORT_ATTEMPTS: usize = 4;

/// A RabbitMQ node of its own: free ports on 127.0.0.1, a temporary directory, a unique
/// node name and Erlang cookie. Dropping it kills the node and deletes the directory.
///
/// [`Broker::attach`] instead takes hold of a node another process started (such as
/// `scripts/broker start`) through the state file in its directory; dropping that one
/// leaves the node as it is.
///
/// All methods block; call them from `tokio::task::spawn_blocking` inside async tests if
/// the runtime must keep running meanwhile.
///
/// ```no_run
/// # fn main() -> Result<(), lepus_testkit::Error> {
/// let broker = lepus_testkit::Broker::start()?;
/// println!("connect to {}", broker.url());
/// broker.kill()?; // kill -9
/// broker.restart()?; // same ports, same data
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Broker {
    node: Node,
    start_timeout: Duration,
    tls_files: Option<TlsFiles>,
    owner: Owner,
}

/// Whether dropping the [`Broker`] ends the node.
#[derive(Debug)]
enum Owner {
    /// Started here: killed on drop, then the directory is deleted.
    Temp {
        /// Deleted after `Drop::drop` has killed the node.
        _dir: TempDir,
    },
    /// Found through its state file: left running on drop.
    Attached,
}

/// Options for [`Broker`], from [`Broker::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct BrokerBuilder {
    tls: bool,
    server_tls: Option<ServerTls>,
    require_client_cert: bool,
    management: bool,
    config: Vec<String>,
    start_timeout: Duration,
    net_ticktime: Option<u32>,
    placement: Option<Placement>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        BrokerBuilder {
            tls: false,
            server_tls: None,
            require_client_cert: false,
            management: false,
            config: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            net_ticktime: None,
            placement: None,
        }
    }
}

impl BrokerBuilder {
    /// Also open an amqps listener (TLS 1.2 and 1.3 only) with certificates made by
    /// [`TlsFiles::generate`], EXTERNAL login enabled and a `lepus-client` user for the
    /// client certificate. Default: off.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Open an amqps listener with these files instead of generated ones: a node with an
    /// expired certificate, one for another host, one from a CA the client does not
    /// trust. Implies [`tls`](Self::tls); [`Broker::tls_files`] is then `None`.
    pub fn server_tls(mut self, tls: ServerTls) -> Self {
        self.tls = true;
        self.server_tls = Some(tls);
        self
    }

    /// Refuse TLS clients that present no certificate the node's CA signed
    /// (`ssl_options.fail_if_no_peer_cert = true`). Default: off (a client certificate is
    /// optional, and verified when sent).
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }

    /// Enable the management plugin (HTTP API on 127.0.0.1). Default: off, which starts
    /// faster.
    pub fn management(mut self, on: bool) -> Self {
        self.management = on;
        self
    }

    /// Add a line to the node's `rabbitmq.conf`, such as `"heartbeat = 5"`.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config.push(line.into());
        self
    }

    /// How long to wait for the node to be ready. Default: [`DEFAULT_START_TIMEOUT`].
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Erlang's `net_ticktime` in seconds (default 60): how long a silent peer takes to
    /// be declared down. A few seconds make a network partition visible quickly.
    pub fn net_ticktime(mut self, seconds: u32) -> Self {
        self.net_ticktime = Some(seconds);
        self
    }

    /// Runs the node inside a network namespace, listening on `placement.ip` with
    /// RabbitMQ's usual ports.
    pub(crate) fn placement(mut self, placement: Placement) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Starts the node and waits until it is ready.
    pub fn start(self) -> Result<Broker, Error> {
        let name = format!("lepus-{:08x}@localhost", rand::random::<u32>());
        self.start_named(name, random_cookie())
    }

    /// Starts a node called `name` with Erlang cookie `cookie` in a new temporary
    /// directory, retrying with new ports when one was taken meanwhile.
    pub(crate) fn start_named(self, name: String, cookie: String) -> Result<Broker, Error> {
        node::require_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("lepus-node-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory for a node", e))?;
        let tls_files = match (&self.server_tls, self.tls) {
            (None, true) => Some(TlsFiles::generate(dir.path().join("tls"))?),
            _ => None,
        };
        let tls = self
            .server_tls
            .clone()
            .or_else(|| tls_files.as_ref().map(TlsFiles::server_tls))
            .map(|tls| {
                let required = tls.require_client_cert || self.require_client_cert;
                tls.require_client_cert(required)
            });
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = match self.placement {
                Some(_) => Ports::usual(self.tls, self.management),
                None => Ports::pick(self.tls, self.management)?,
            };
            let node = Node {
                dir: dir.path().to_path_buf(),
                name: name.clone(),
                cookie: cookie.clone(),
                ports,
                tls: tls.clone(),
                config: self.config.clone(),
                erl_args: self
                    .net_ticktime
                    .map(|secs| format!("-kernel net_ticktime {secs}"))
                    .into_iter()
                    .collect(),
                placement: self.placement.clone(),
            };
            node.wipe_state()?;
            node.write_files()?;
            match node.boot(self.start_timeout) {
                Ok(()) => {
                    return Ok(Broker {
                        node,
                        start_timeout: self.start_timeout,
                        tls_files,
                        owner: Owner::Temp { _dir: dir },
                    });
                }
                Err(failure) if failure.retry && attempt < PORT_ATTEMPTS => {
                    eprintln!(
                        "lepus-testkit: starting {name} again with fresh ports (attempt {attempt} failed: {})",
                        failure.error
                    );
                    continue;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }
}

pub(crate) fn random_cookie() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

impl Broker {
    /// Starts a node with default options: plain AMQP only, no management plugin.
    pub fn start() -> Result<Broker, Error> {
        Broker::builder().start()
    }

    /// Options for a node: TLS, management, extra configuration.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The node whose directory is `dir`, started by another process (`scripts/broker
    /// start`, i.e. `lepus-broker`, or another test kit), found through its state file
    /// (see [`STATE_FILE`](crate::STATE_FILE)). It may be running or not; [`kill`],
    /// [`restart`] and [`rabbitmqctl`] act on it as on a node of one's own. Dropping the
    /// returned value leaves the node as it is.
    ///
    /// [`kill`]: Broker::kill
    /// [`restart`]: Broker::restart
    /// [`rabbitmqctl`]: Broker::rabbitmqctl
    pub fn attach(dir: impl AsRef<Path>) -> Result<Broker, Error> {
        let node = crate::state::load(dir.as_ref())?;
        let tls_files = node
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.parent())
            .and_then(|tls_dir| TlsFiles::in_dir(tls_dir).ok());
        Ok(Broker {
            node,
            start_timeout: DEFAULT_START_TIMEOUT,
            tls_files,
            owner: Owner::Attached,
        })
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (a node in a zone: its zone's address).
    pub fn url(&self) -> String {
        format!(
            "amqp://guest:guest@{}:{}/%2f",
            self.node.ip(),
            self.node.ports.amqp
        )
    }

    /// The address the node listens on: 127.0.0.1, or its zone's address.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.node.ip()
    }

    /// The AMQP port on [`Broker::ip`].
    pub fn port(&self) -> u16 {
        self.node.ports.amqp
    }

    /// `amqps://guest:guest@127.0.0.1:PORT/%2f` if the node was built with TLS. The server
    /// certificate is valid for `127.0.0.1` and `localhost`.
    pub fn amqps_url(&self) -> Option<String> {
        self.node
            .ports
            .amqps
            .map(|port| format!("amqps://guest:guest@127.0.0.1:{port}/%2f"))
    }

    /// The amqps port on 127.0.0.1 if the node was built with TLS.
    pub fn amqps_port(&self) -> Option<u16> {
        self.node.ports.amqps
    }

    /// `http://127.0.0.1:PORT/` of the management API if the plugin is enabled.
    pub fn management_url(&self) -> Option<String> {
        self.node
            .ports
            .management
            .map(|port| format!("http://127.0.0.1:{port}/"))
    }

    /// The CA and client certificate files if the node was built with generated TLS
    /// files (not with [`BrokerBuilder::server_tls`]).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls_files.as_ref()
    }

    /// What the amqps listener uses (certificate, key, CA, client certificate required),
    /// if the node has one.
    pub fn server_tls(&self) -> Option<&ServerTls> {
        self.node.tls.as_ref()
    }

    /// The Erlang node name, such as `lepus-1a2b3c4d@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node.name
    }

    /// The node's directory (database, logs, configuration).
    pub fn dir(&self) -> &Path {
        &self.node.dir
    }

    /// The node's main log file.
    pub fn log_file(&self) -> PathBuf {
        self.node
            .dir
            .join("log")
            .join(format!("{}.log", self.node.name))
    }

    /// The operating-system pid of the node, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid().and_then(|pid| u32::try_from(pid).ok())
    }

    /// True while the node's process exists (also while paused).
    pub fn is_running(&self) -> bool {
        self.node.pid().is_some()
    }

    /// `kill -9`: the node dies without closing connections or flushing anything. Returns
    /// once the process is gone. A stopped node is left as it is.
    pub fn kill(&self) -> Result<(), Error> {
        self.node.kill()?;
        self.wait_port_closed(Duration::from_secs(10))
    }

    /// Waits until the AMQP port refuses connections: the kernel closes a killed
    /// process's sockets only once its last thread is gone.
    fn wait_port_closed(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + timeout;
        let addr = std::net::SocketAddr::from((self.node.ip(), self.port()));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if std::time::Instant::now() >= deadline {
                return Err(Error::State(format!(
                    "port {} still accepts connections {timeout:?} after the node was killed",
                    self.port()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Graceful shutdown (SIGTERM; SIGKILL if it takes longer than 30 s). Returns once the
    /// process is gone.
    pub fn stop(&self) -> Result<(), Error> {
        self.node.stop()
    }

    /// Joins this node to the cluster of the running node `first` (its Erlang name):
    /// `rabbitmqctl stop_app`, `join_cluster`, `start_app`. Both must share the cookie.
    pub fn join_cluster(&self, first: &str) -> Result<(), Error> {
        self.node.join(first)
    }

    /// Starts the node again on the same directory, name and ports, after stopping it
    /// gracefully if it still runs, and waits until it is ready. Durable queues and
    /// persistent messages survive.
    pub fn restart(&self) -> Result<(), Error> {
        self.node.stop()?;
        self.node
            .boot(self.start_timeout)
            .map_err(|failure| failure.error)
    }

    /// Freezes the node (SIGSTOP): its sockets stay open but nothing answers, which is
    /// what a missed heartbeat looks like. Undo with [`Broker::resume`].
    pub fn pause(&self) -> Result<(), Error> {
        self.node.signal(Signal::SIGSTOP)
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self) -> Result<(), Error> {
        self.node.signal(Signal::SIGCONT)
    }

    /// Closes every client connection on this node (`rabbitmqctl close_all_connections`);
    /// clients see `connection.close` with reply code 320 (CONNECTION_FORCED).
    pub fn close_all_connections(&self) -> Result<(), Error> {
        self.node
            .ctl(&[
                "-q",
                "close_all_connections",
                "--global",
                "closed by lepus-testkit",
            ])
            .map(drop)
    }

    /// Runs `rabbitmqctl -n <this node> <args>` and returns its standard output, e.g.
    /// `broker.rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"])`. Fails with the
    /// command's output if it exits with an error, or after 60 s.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, Error> {
        self.node.ctl(args)
    }

    /// Waits until the node runs its applications, at most `timeout`.
    pub fn wait_until_ready(&self, timeout: Duration) -> Result<(), Error> {
        if self.node.pid().is_none() {
            return Err(Error::State(format!(
                "node {} is not running",
                self.node.name
            )));
        }
        self.node.ctl_wait(timeout)
    }
}

impl Drop for Broker {
    /// Kills a node started here (its data is deleted right after, so a graceful stop
    /// would only cost time) and waits until the process is gone. An attached node is
    /// left running.
    fn drop(&mut self) {
        if let Owner::Temp { .. } = self.owner {
            self.node.kill_leftovers();
        }
    }
}
