//! One replica: a `shop order|inventory|notify` process inside a zone's network
//! namespace, which the drill can SIGKILL in the middle of its work and start again.
//!
//! Replicas share nothing in the process: each has its own connections (to every node of
//! the cluster) and reaches the stores over the network. How much work each one did is
//! read from its own `/metrics` (the counter of what that service does: orders accepted,
//! stock decisions, notifications sent); a SIGKILL resets the process's counters, so the
//! total carries what the previous lives of the replica had handled (as last scraped).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lepus_testkit::Lab;

use crate::httpc;

/// The three services, and the counter that says how much work a replica did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// The order API.
    Order,
    /// The inventory service.
    Inventory,
    /// The notification service.
    Notify,
}

impl Service {
    /// All three.
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Notify];

    /// The `shop` subcommand, and the name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Notify => "notify",
        }
    }

    /// The port it listens on inside its zone.
    pub fn port(self) -> u16 {
        match self {
            Service::Order => 8081,
            Service::Inventory => 8082,
            Service::Notify => 8083,
        }
    }

    /// The metric counting the work one process of this service did.
    pub fn work_metric(self) -> &'static str {
        match self {
            Service::Order => "shop_orders_accepted_total",
            Service::Inventory => "shop_inventory_decisions_total",
            Service::Notify => "shop_notifications_sent_total",
        }
    }
}

/// The sum of every sample of `metric` in a Prometheus text exposition.
pub fn sum_metric(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[derive(Debug, Default)]
struct Life {
    child: Option<Child>,
    /// Work handled by earlier lives of this replica.
    earlier: u64,
    /// Work handled by this life, as last scraped.
    current: u64,
    /// Times started.
    starts: u32,
}

/// How replica processes are launched: the program, the arguments every replica gets
/// (broker URLs, namespace, ...), and the directory of their logs.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The `shop` program.
    pub program: &'a Path,
    /// Arguments after the subcommand, for every replica.
    pub common_args: &'a [String],
    /// Where `<name>.log` goes.
    pub dir: &'a Path,
}

/// A replica process in a zone.
#[derive(Debug)]
pub struct Replica {
    /// Which service.
    pub service: Service,
    /// Its name, e.g. `order-a`.
    pub name: String,
    /// Its zone.
    pub zone: usize,
    /// Where it listens (its zone's address).
    pub addr: SocketAddr,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    life: Mutex<Life>,
}

impl Replica {
    /// A replica of `service` named `name` in `zone` of `lab`, launched as `launch` says
    /// with `env`, logging to `<dir>/<name>.log`. Not started yet.
    pub fn new(
        lab: &Lab,
        (service, name, zone): (Service, &str, usize),
        launch: Launch<'_>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Replica> {
        let (program, common_args, dir) = (launch.program, launch.common_args, launch.dir);
        let name = name.to_string();
        let ip = lab
            .zone_ip(zone)
            .with_context(|| format!("the lab has no zone {zone}"))?;
        let addr = SocketAddr::from((ip, service.port()));
        let log = dir.join(format!("{name}.log"));
        let mut args = vec![service.name().to_string()];
        args.extend(common_args.iter().cloned());
        args.push("--listen".into());
        args.push(addr.to_string());
        args.push("--log-file".into());
        args.push(log.display().to_string());
        Ok(Replica {
            service,
            name,
            zone,
            addr,
            program: program.to_path_buf(),
            args,
            env,
            log,
            life: Mutex::new(Life::default()),
        })
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the process in its zone (blocking; returns once spawned).
    pub fn start(&self, lab: &Lab) -> anyhow::Result<()> {
        let mut life = self.life();
        if life.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let program = self.program.to_string_lossy();
        let mut cmd = lab.command_in(self.zone, &program)?;
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log.with_extension("stderr"))
                    .with_context(|| format!("opening the stderr file of {}", self.name))?,
            );
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        life.earlier += life.current;
        life.current = 0;
        life.starts += 1;
        life.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&self) -> anyhow::Result<()> {
        let mut life = self.life();
        let Some(mut child) = life.child.take() else {
            bail!("{} is not running", self.name);
        };
        child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        child
            .wait()
            .with_context(|| format!("waiting on {}", self.name))?;
        Ok(())
    }

    /// Whether the process runs (it may have exited by itself).
    pub fn running(&self) -> bool {
        let mut life = self.life();
        match life.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                life.child = None;
                false
            }
            None => false,
        }
    }

    /// Whether it answers `GET /health/ready` with 200 within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        matches!(
            httpc::request(self.addr, "GET", "/health/ready", None, &[], timeout).await,
            Ok(r) if r.status == 200
        )
    }

    /// Waits until [`Replica::ready`], at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.ready(Duration::from_secs(1)).await {
                return Ok(());
            }
            if !self.running() {
                bail!(
                    "{} exited while starting; see {} (and .stderr)",
                    self.name,
                    self.log.display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} was not ready within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads its work counter from `/metrics` (a failed read keeps the last value).
    pub async fn scrape(&self) {
        let Ok(r) = httpc::request(
            self.addr,
            "GET",
            "/metrics",
            None,
            &[],
            Duration::from_secs(2),
        )
        .await
        else {
            return;
        };
        if r.status != 200 {
            return;
        }
        if let Some(v) = sum_metric(&r.text(), self.service.work_metric()) {
            let mut life = self.life();
            life.current = life.current.max(v.max(0.0) as u64);
        }
    }

    /// Work handled in all its lives, as last scraped.
    pub fn handled(&self) -> u64 {
        let life = self.life();
        life.earlier + life.current
    }

    /// Times started.
    pub fn starts(&self) -> u32 {
        self.life().starts
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let life = self.life.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = life.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sum_metric;

    #[test]
    fn sums_every_sample_of_a_metric() {
        let text = "# TYPE shop_inventory_decisions_total counter
shop_inventory_decisions_total{status=\"reserved\",source=\"live\"} 7
shop_inventory_decisions_total{status=\"rejected\",source=\"cache\"} 2
shop_inventory_decisions_total_other 100
shop_orders_accepted_total 3
";
        assert_eq!(
            sum_metric(text, "shop_inventory_decisions_total"),
            Some(9.0)
        );
        assert_eq!(sum_metric(text, "shop_orders_accepted_total"), Some(3.0));
        assert_eq!(sum_metric(text, "shop_notifications_sent_total"), None);
    }
}
