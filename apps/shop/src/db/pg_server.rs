//! A PostgreSQL cluster of the project's own, for replicated runs and their tests.
//!
//! Replicas of a service in different zones share one store, so the store must be a
//! server every zone reaches; SQLite files cannot be. Like the broker (scripts/broker),
//! the cluster lives under `target/` and belongs to whoever started it: Debian's
//! `postgresql` package provides the binaries (scripts/install-postgres), never its own
//! cluster. PostgreSQL refuses to run as root, so as root every server command runs as
//! the `postgres` user through `runuser`, on a directory handed to that user.
//!
//! The server listens on loopback and on any further addresses given (the zoned demo
//! adds the bridge address namespaces reach it by). Connections over TCP need the
//! password of the `shop` role (SCRAM), which is generated once per directory and kept
//! in it; the local socket (for the setup done here) trusts the `postgres` user. Every
//! command runs under a deadline; the server is stopped when the value is dropped.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The role the services log in as.
pub const ROLE: &str = "shop";
/// One database per service.
pub const SERVICE_DATABASES: [&str; 3] = ["order", "inventory", "notify"];

/// How long initdb may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one setup statement may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(15);

/// A running cluster; stopped on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: String,
    as_postgres: bool,
    stopped: bool,
    /// The postmaster's pid, for a last resort when pg_ctl cannot stop it (its directory
    /// was removed under it).
    pid: Option<u32>,
}

/// The directory of the server binaries: `SHOP_PG_BINDIR` if set, else the newest
/// `/usr/lib/postgresql/*/bin` (where Debian puts them, off the PATH).
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHOP_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: run scripts/install-postgres")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries under /usr/lib/postgresql: run scripts/install-postgres",
    )
}

/// Runs `cmd` with its output in `log`, waiting at most `timeout`; an error shows the
/// output's end.
fn run(mut cmd: Command, log: &Path, timeout: Duration, what: &str) -> anyhow::Result<String> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what}: no answer within {timeout:?} (output in {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(text)
}

/// A free TCP port on loopback (the kernel's choice).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl PgServer {
    /// Starts (initialising it the first time) the cluster in `dir`, listening on
    /// loopback and `listen`, on `port` (0: a free one), with [`SERVICE_DATABASES`]
    /// created. Restarting on the same `dir` keeps the data.
    pub fn start(dir: &Path, listen: &[IpAddr], port: u16) -> anyhow::Result<PgServer> {
        Self::start_with(dir, listen, port, &SERVICE_DATABASES)
    }

    /// As [`PgServer::start`], with the given databases.
    pub fn start_with(
        dir: &Path,
        listen: &[IpAddr],
        port: u16,
        databases: &[&str],
    ) -> anyhow::Result<PgServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let as_postgres = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let port = if port == 0 { free_port()? } else { port };
        let mut server = PgServer {
            bindir: bindir()?,
            dir,
            port,
            password: String::new(),
            as_postgres,
            stopped: true,
            pid: None,
        };
        server.init()?;
        server.launch(listen)?;
        server.stopped = false;
        server.pid = std::fs::read_to_string(server.data().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()));
        server.create_databases(databases)?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// A command for server binary `bin`, run as `postgres` when we are root.
    fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn init(&mut self) -> anyhow::Result<()> {
        let password_file = self.dir.join("password");
        if !password_file.exists() {
            let password = format!("{:032x}", rand::random::<u128>());
            std::fs::write(&password_file, &password)?;
        }
        self.password = std::fs::read_to_string(&password_file)?.trim().to_string();
        std::fs::create_dir_all(self.socket_dir())?;
        if self.as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&self.dir);
            run(chown, &self.dir.join("chown.log"), SQL_TIMEOUT, "chown")?;
        }
        if self.data().join("PG_VERSION").exists() {
            return Ok(());
        }
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        run(
            initdb,
            &self.dir.join("initdb.log"),
            INITDB_TIMEOUT,
            "initdb",
        )?;
        // Any address the server listens on, with the password; the socket is local.
        let hba = "local all all trust\n\
                   host all all 0.0.0.0/0 scram-sha-256\n\
                   host all all ::/0 scram-sha-256\n";
        let hba_file = self.data().join("pg_hba.conf");
        std::fs::write(&hba_file, hba)?;
        Ok(())
    }

    fn launch(&self, listen: &[IpAddr]) -> anyhow::Result<()> {
        // A server left running in this directory (a run that was killed) is ours: stop
        // it, so the new one gets the requested addresses and port.
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        let mut addresses = vec!["127.0.0.1".to_string()];
        addresses.extend(listen.iter().map(|a| a.to_string()));
        let options = format!(
            "-c listen_addresses='{}' -p {} -k {} -c max_connections=200",
            addresses.join(","),
            self.port,
            self.socket_dir().display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("start");
        run(
            pg_ctl,
            &self.dir.join("pg_ctl-start.log"),
            START_TIMEOUT + Duration::from_secs(5),
            "pg_ctl start",
        )
        .with_context(|| format!("see {}", self.dir.join("server.log").display()))?;
        Ok(())
    }

    /// Runs statements through psql on the local socket as `postgres`, each on its own
    /// (not one transaction: `CREATE DATABASE` refuses to run in one); returns the rows
    /// they print, unaligned.
    fn psql(&self, statements: &[String]) -> anyhow::Result<String> {
        let mut psql = self.command("psql");
        psql.arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-tA"]);
        for sql in statements {
            psql.args(["-c", sql]);
        }
        let out = run(psql, &self.dir.join("psql.log"), SQL_TIMEOUT, "psql")?;
        Ok(out.trim().to_string())
    }

    /// The `shop` role (once) and `databases` (those missing), in two psql runs.
    fn create_databases(&self, databases: &[&str]) -> anyhow::Result<()> {
        for name in databases {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("database name {name:?}: letters, digits and _ only");
            }
        }
        let existing = self.psql(&[
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') \
                 THEN CREATE ROLE {ROLE} LOGIN PASSWORD '{}'; END IF; END $$",
                self.password
            ),
            "SELECT datname FROM pg_database".to_string(),
        ])?;
        let existing: Vec<&str> = existing.lines().map(str::trim).collect();
        let create: Vec<String> = databases
            .iter()
            .filter(|name| !existing.contains(name))
            .map(|name| format!("CREATE DATABASE \"{name}\" OWNER {ROLE}"))
            .collect();
        if !create.is_empty() {
            self.psql(&create)?;
        }
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on loopback.
    pub fn url(&self, database: &str) -> String {
        self.url_on(IpAddr::V4(Ipv4Addr::LOCALHOST), database)
    }

    /// The URL of `database` through `host` (one of the listen addresses).
    pub fn url_on(&self, host: IpAddr, database: &str) -> String {
        let host = match host {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        format!(
            "postgres://{ROLE}:{}@{host}:{}/{database}",
            self.password, self.port
        )
    }

    /// Its directory (data, logs, password).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("stop");
        run(
            pg_ctl,
            &self.dir.join("pg_ctl-stop.log"),
            START_TIMEOUT + Duration::from_secs(5),
            "pg_ctl stop",
        )
        .map(drop)
    }

    /// Fast shutdown through pg_ctl, else immediate, else (the directory is gone) a
    /// SIGINT (fast shutdown) to the postmaster this value started.
    fn shut_down(&self) -> anyhow::Result<()> {
        let Err(e) = self
            .pg_ctl_stop("fast")
            .or_else(|_| self.pg_ctl_stop("immediate"))
        else {
            return Ok(());
        };
        let Some(pid) = self.pid else {
            return Err(e);
        };
        let log = std::env::temp_dir().join(format!("shop-pg-kill-{pid}.log"));
        let mut kill = Command::new("kill");
        kill.args(["-INT", &pid.to_string()]);
        let result = run(kill, &log, SQL_TIMEOUT, "kill -INT postgres");
        let _ = std::fs::remove_file(&log);
        result.map(drop).context(e)
    }

    /// Stops the server (fast shutdown: sessions are ended, committed data kept).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        self.shut_down()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            if let Err(e) = self.shut_down() {
                tracing::warn!(dir = %self.dir.display(), error = %format!("{e:#}"), "stopping PostgreSQL failed");
            }
        }
    }
}
