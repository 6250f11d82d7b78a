//! The lab's network: a private bridge, one network namespace per zone, and the faults
//! that are made with `ip` alone.
//!
//! Everything is named after a random run id (`lz<id>b` for the bridge, `lz<id>h<i>` for a
//! zone's link on the bridge, `lepus-<id>-z<i>` for its namespace), and the subnet
//! `10.213.<n>.0/24` is claimed by a file in [`STATE_DIR`] naming the owning process, so
//! labs of parallel test processes never meet, and a lab whose process died (a crash, a
//! test runner's SIGKILL) is recognised as stale and removed by the next lab or by
//! [`cleanup_stale`].
//!
//! A cut between two places is a pair of `blackhole` routes, one on each side: packets are
//! dropped without an answer, as on a broken network path, and neither iptables nor tc is
//! needed (this machine's kernel has no `netem`; latency and the like come from a TCP
//! proxy instead).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::Error;
use crate::process;

/// Where the lab claims its subnets: one file per claimed `10.213.<n>.0/24`.
pub const STATE_DIR: &str = "/run/lepus-lab";
/// Longest one `ip` call may take.
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// The first three octets' fixed part: every lab lives in `10.213.0.0/16`.
const NET_PREFIX: [u8; 2] = [10, 213];
/// Zone `i` gets `10.213.<n>.<ZONE_HOST_BASE + i>`; the host end of the bridge gets `.1`.
const ZONE_HOST_BASE: u8 = 11;

/// One end of a cut: the test's own process (the root network namespace, on the bridge
/// with its own address), or a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// The process running the test, and any client it runs in-process.
    Host,
    /// Zone `i` (0-based): a node's zone, or a client zone.
    Zone(usize),
}

/// The path of the `ip` program (iproute2).
pub(crate) fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .unwrap_or("ip")
}

/// Runs `ip <args>`; fails with its output.
fn ip(args: &[&str]) -> Result<String, Error> {
    let mut cmd = Command::new(ip_program());
    cmd.args(args);
    let line = format!("ip {}", args.join(" "));
    let out = process::run(&mut cmd, IP_TIMEOUT, &line).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::State("the `ip` program is missing: apt-get install iproute2".to_owned())
        }
        other => other,
    })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            output: out.combined(),
        })
    }
}

/// The bridge, the zones' namespaces and links, and the cuts currently in place. Dropping
/// it kills whatever still runs in the namespaces and removes all of it.
#[derive(Debug)]
pub(crate) struct Network {
    id: String,
    octet: u8,
    zones: usize,
    claim: PathBuf,
    cuts: Mutex<BTreeSet<(Endpoint, Endpoint)>>,
}

impl Network {
    /// Claims a free subnet and creates the bridge and `zones` namespaces.
    pub(crate) fn create(zones: usize) -> Result<Network, Error> {
        cleanup_stale()?;
        let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let (octet, claim) = claim_subnet(&id)?;
        let net = Network {
            id,
            octet,
            zones,
            claim,
            cuts: Mutex::new(BTreeSet::new()),
        };
        // On failure `net` is dropped here, removing whatever was made.
        net.build()?;
        Ok(net)
    }

    fn build(&self) -> Result<(), Error> {
        let bridge = self.bridge();
        let host = format!("{}/24", self.host_ip());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &host, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for zone in 0..self.zones {
            let ns = self.netns(zone);
            let outer = self.link(zone);
            let inner = format!("lz{}n{zone}", self.id);
            let addr = format!("{}/24", self.zone_ip(zone));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn bridge(&self) -> String {
        format!("lz{}b", self.id)
    }

    /// Zone `zone`'s link on the bridge (the host end of its veth pair).
    fn link(&self, zone: usize) -> String {
        format!("lz{}h{zone}", self.id)
    }

    /// The name of zone `zone`'s network namespace.
    pub(crate) fn netns(&self, zone: usize) -> String {
        format!("lepus-{}-z{zone}", self.id)
    }

    /// The number of zones.
    pub(crate) fn zones(&self) -> usize {
        self.zones
    }

    /// The host's address on the bridge.
    pub(crate) fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.octet, 1)
    }

    /// Zone `zone`'s address.
    pub(crate) fn zone_ip(&self, zone: usize) -> Ipv4Addr {
        let host = u8::try_from(zone)
            .ok()
            .and_then(|z| z.checked_add(ZONE_HOST_BASE))
            .unwrap_or(u8::MAX);
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.octet, host)
    }

    fn check(&self, endpoint: Endpoint) -> Result<(), Error> {
        match endpoint {
            Endpoint::Zone(zone) if zone >= self.zones => Err(Error::State(format!(
                "the lab has {} zones, there is no zone {zone}",
                self.zones
            ))),
            _ => Ok(()),
        }
    }

    fn address(&self, endpoint: Endpoint) -> Ipv4Addr {
        match endpoint {
            Endpoint::Host => self.host_ip(),
            Endpoint::Zone(zone) => self.zone_ip(zone),
        }
    }

    /// `ip` arguments that act inside `endpoint`'s namespace.
    fn route(&self, endpoint: Endpoint, verb: &str, to: Ipv4Addr) -> Result<(), Error> {
        let to = format!("{to}/32");
        match endpoint {
            Endpoint::Host => ip(&["route", verb, "blackhole", &to]).map(drop),
            Endpoint::Zone(zone) => {
                let ns = self.netns(zone);
                ip(&["-n", &ns, "route", verb, "blackhole", &to]).map(drop)
            }
        }
    }

    /// Takes zone `zone`'s link down: the zone reaches nothing and nothing reaches it.
    pub(crate) fn link_down(&self, zone: usize) -> Result<(), Error> {
        self.check(Endpoint::Zone(zone))?;
        ip(&["link", "set", &self.link(zone), "down"]).map(drop)
    }

    /// Drops all traffic between `a` and `b`, both ways, silently.
    pub(crate) fn cut(&self, a: Endpoint, b: Endpoint) -> Result<(), Error> {
        self.check(a)?;
        self.check(b)?;
        if a == b {
            return Err(Error::State(format!("cannot cut {a:?} off from itself")));
        }
        let pair = (a.min(b), a.max(b));
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        if cuts.contains(&pair) {
            return Ok(());
        }
        self.route(a, "add", self.address(b))?;
        cuts.insert(pair);
        self.route(b, "add", self.address(a))
    }

    /// Every link up, every cut removed.
    pub(crate) fn heal(&self) -> Result<(), Error> {
        for zone in 0..self.zones {
            ip(&["link", "set", &self.link(zone), "up"])?;
        }
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((a, b)) = cuts.pop_first() {
            for (from, to) in [(a, b), (b, a)] {
                // A half-made cut has only one of its two routes.
                if let Err(e) = self.route(from, "del", self.address(to))
                    && !e.to_string().contains("No such process")
                {
                    cuts.insert((a, b));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A command that runs `program` inside zone `zone`'s namespace.
    pub(crate) fn command_in(&self, zone: usize, program: &str) -> Result<Command, Error> {
        self.check(Endpoint::Zone(zone))?;
        let mut cmd = Command::new(ip_program());
        cmd.args(["netns", "exec", &self.netns(zone), program]);
        Ok(cmd)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        remove(&self.id, self.octet);
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// Kills every process in the namespaces of lab `id` and removes its namespaces, links,
/// bridge and host routes. Best effort: what is already gone is skipped.
fn remove(id: &str, octet: u8) {
    let prefix = format!("lepus-{id}-z");
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    for ns in namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
    {
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<i32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
        for pid in &pids {
            let _ = process::send(*pid, Signal::SIGKILL);
        }
        for pid in &pids {
            let _ = process::wait_gone(*pid, Duration::from_secs(10));
        }
        let _ = ip(&["netns", "del", ns]);
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    let link_prefix = format!("lz{id}");
    for link in links
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|name| name.starts_with(&link_prefix))
    {
        let _ = ip(&["link", "del", &link]);
    }
    let subnet = format!("{}.{}.{octet}.", NET_PREFIX[0], NET_PREFIX[1]);
    let routes = ip(&["route", "show", "type", "blackhole"]).unwrap_or_default();
    for route in routes
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|to| to.starts_with(&subnet))
    {
        let _ = ip(&["route", "del", "blackhole", route]);
    }
}

/// What a claim file says: the owning process (pid and start time, so a recycled pid is
/// not mistaken for the owner) and the lab's id.
fn claim_text(id: &str) -> String {
    let pid = std::process::id();
    format!("{pid} {} {id}\n", start_time(pid).unwrap_or_default())
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Takes a free `10.213.<n>.0/24` by creating its claim file.
fn claim_subnet(id: &str) -> Result<(u8, PathBuf), Error> {
    std::fs::create_dir_all(STATE_DIR)
        .map_err(|e| Error::io(format!("creating {STATE_DIR}"), e))?;
    let first = rand::random::<u8>();
    for step in 0..=u8::MAX {
        let octet = first.wrapping_add(step);
        if octet == 0 || octet == u8::MAX {
            continue;
        }
        let path = Path::new(STATE_DIR).join(format!("10.213.{octet}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        match file {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(claim_text(id).as_bytes())
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                return Ok((octet, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
    Err(Error::State(format!(
        "every 10.213.<n>.0/24 is claimed in {STATE_DIR}"
    )))
}

/// Removes the labs (namespaces with their processes, links, routes, claim files) left by
/// processes that are gone, e.g. a test run killed by its runner. Labs of live processes
/// are left alone. Called by every new lab; also safe to call on its own.
pub fn cleanup_stale() -> Result<(), Error> {
    let entries = match std::fs::read_dir(STATE_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {STATE_DIR}"), e)),
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(octet) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("10.213."))
            .and_then(|n| n.parse::<u8>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        let (Some(pid), Some(started), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            // Being written right now by its owner; a crash between create and write
            // leaves an empty file, which an old enough one is taken to be.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        };
        let owner_alive = pid
            .parse::<u32>()
            .ok()
            .and_then(start_time)
            .is_some_and(|t| t.to_string() == started);
        if !owner_alive {
            remove(id, octet);
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}
