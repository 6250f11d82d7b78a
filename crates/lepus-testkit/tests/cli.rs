//! `lepus-broker` (what `scripts/broker` runs): separate invocations start, find, drive,
//! restart and stop the same nodes through their state files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Amqp, Login, connect_tcp, port_accepts};
use lepus_testkit::{Broker, TlsFiles, unique_name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A directory and port range of its own for one test's `lepus-broker` runs; stops
/// whatever they started when dropped.
struct Runs {
    dir: tempfile::TempDir,
    /// Erlang node names are per host: tests running at once need prefixes of their own.
    prefix: String,
    offset: u32,
}

impl Runs {
    /// A fresh directory and a port offset whose ports for `nodes` nodes are all free.
    fn new(nodes: u32) -> Runs {
        let dir = tempfile::Builder::new()
            .prefix("lepus-broker-cli-")
            .tempdir()
            .unwrap();
        for _ in 0..200 {
            // Every port stays below the kernel's ephemeral range (32768 and up), where
            // outgoing connections and the test kit's own nodes take theirs.
            let offset = 1_500 + 10 * (rand::random::<u32>() % 540);
            let ports = (1..=nodes)
                .flat_map(|i| [5661, 5662, 15662, 25662].map(|base| base + 10 * i + offset));
            let clash = |p: u32| p >= 32768 || port_accepts(p as u16);
            if !ports.clone().any(clash) {
                let prefix = format!("t{:06x}-", rand::random::<u32>() & 0xff_ffff);
                return Runs {
                    dir,
                    prefix,
                    offset,
                };
            }
        }
        panic!("no free port range found");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lepus-broker"))
            .args(args)
            .env("LEPUS_BROKER_DIR", self.dir.path())
            .env("LEPUS_BROKER_PREFIX", &self.prefix)
            .env("LEPUS_BROKER_PORT_OFFSET", self.offset.to_string())
            .env("LEPUS_BROKER_START_TIMEOUT", "90")
            .output()
            .unwrap()
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lepus-broker {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn node_dir(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("{}{i}", self.prefix))
    }

    fn amqp_port(&self, i: u32) -> u16 {
        (5662 + 10 * i + self.offset) as u16
    }

    fn amqps_port(&self, i: u32) -> u16 {
        (5661 + 10 * i + self.offset) as u16
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

fn pid_of(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn process_exists(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn tls_external_login(port: u16, files: &TlsFiles) {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(files.ca()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(files.client_cert()).unwrap()];
    let key = PrivateKeyDer::from_pem_file(files.client_key()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut amqp = Amqp::new(StreamOwned::new(conn, tcp));
    amqp.handshake(Login::External);
    amqp.declare_queue(&unique_name("cli-tls"), false);
}

#[test]
fn start_status_ctl_kill_restart_stop_round_trip() {
    let runs = Runs::new(1);
    let t0 = Instant::now();
    let urls = runs.ok(&["start", "--tls"]);
    eprintln!("start --tls took {:?}", t0.elapsed());
    // stdout carries only the URLs: amqp first, then amqps.
    assert_eq!(
        urls.lines().collect::<Vec<_>>(),
        vec![
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", runs.amqp_port(1)),
            format!("amqps://guest:guest@127.0.0.1:{}/%2f", runs.amqps_port(1)),
        ]
    );
    let dir = runs.node_dir(1);
    let state = std::fs::read_to_string(dir.join(lepus_testkit::STATE_FILE)).unwrap();
    let name = format!("{}1@localhost", runs.prefix);
    assert!(state.contains(&format!("name={name}")), "{state}");
    let pid = pid_of(&dir).expect("a pid file");
    assert!(state.contains(&format!("pid={pid}")), "{state}");

    // A second run finds the node; start again leaves it running, prints the same URLs.
    let status = runs.ok(&["status"]);
    assert!(
        status.starts_with(&format!("{name} running pid {pid} amqp://")),
        "{status}"
    );
    assert_eq!(runs.ok(&["start", "--tls"]), urls);
    assert_eq!(pid_of(&dir), Some(pid));

    // ctl passes arguments and the exit code through.
    let queue = unique_name("cli-durable");
    let mut amqp = connect_tcp(runs.amqp_port(1));
    amqp.declare_queue(&queue, true);
    amqp.publish_confirmed(&queue, b"kept across kill -9");
    drop(amqp);
    let listed = runs.ok(&["ctl", "-q", "list_queues", "name", "messages"]);
    assert!(listed.contains(&queue), "{listed}");
    assert!(!runs.run(&["ctl", "no_such_command"]).status.success());

    // The generated chain: rustls trusts the server, the node trusts the client (EXTERNAL).
    let files = TlsFiles::in_dir(runs.dir.path().join("tls")).unwrap();
    tls_external_login(runs.amqps_port(1), &files);

    // RabbitMQ 3.10 came back from a kill on a loaded CI machine without a queue declared
    // seconds before, message and all (its declaration lives in Mnesia, whose
    // transaction log is not synced per declaration). The test syncs that log before the
    // kill, so what follows checks the kill and the restart on the node's data.
    assert_eq!(runs.ok(&["ctl", "eval", "mnesia:sync_log()."]).trim(), "ok");

    // Another process takes hold of the node through its state file and kills it.
    let attached = Broker::attach(&dir).unwrap();
    assert_eq!(attached.node_name(), name);
    assert_eq!(attached.port(), runs.amqp_port(1));
    attached.kill().unwrap();
    drop(attached);
    assert!(!process_exists(pid));
    assert_eq!(runs.ok(&["status"]).trim(), format!("{name} stopped"));

    // restart boots it on its data: same URLs, the durable message is back.
    let t0 = Instant::now();
    assert_eq!(runs.ok(&["restart", "--node", "1"]), urls);
    eprintln!("restart took {:?}", t0.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = runs.ok(&["ctl", "-q", "list_queues", "name", "messages"]);
        if listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "1"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "{queue} not recovered: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut amqp = connect_tcp(runs.amqp_port(1));
    assert_eq!(
        amqp.get(&queue).as_deref(),
        Some(&b"kept across kill -9"[..])
    );
    drop(amqp);

    // stop leaves nothing running.
    let new_pid = pid_of(&dir).unwrap();
    runs.ok(&["stop"]);
    assert!(!process_exists(new_pid));
    assert!(!port_accepts(runs.amqp_port(1)));
    assert_eq!(runs.ok(&["status"]).trim(), format!("{name} stopped"));
}

#[test]
fn start_three_nodes_makes_one_cluster() {
    let runs = Runs::new(3);
    let t0 = Instant::now();
    let urls = runs.ok(&["start", "--nodes", "3"]);
    eprintln!("start --nodes 3 took {:?}", t0.elapsed());
    assert_eq!(urls.lines().count(), 3, "{urls}");
    let status = runs.ok(&["status"]);
    let running: Vec<&str> = status
        .lines()
        .filter(|l| l.contains(" running pid "))
        .collect();
    assert_eq!(running.len(), 3, "{status}");
    let cluster = runs.ok(&[
        "ctl",
        "--node",
        "2",
        "-q",
        "cluster_status",
        "--formatter",
        "json",
    ]);
    let running_nodes = cluster
        .split("\"running_nodes\":")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_default();
    for i in 1..=3 {
        assert!(
            running_nodes.contains(&format!("\"{}{i}@localhost\"", runs.prefix)),
            "{cluster}"
        );
    }
    let pids: Vec<i32> = (1..=3)
        .map(|i| pid_of(&runs.node_dir(i)).unwrap())
        .collect();
    runs.ok(&["stop"]);
    assert!(pids.iter().all(|pid| !process_exists(*pid)));
}

#[test]
fn usage_mistakes_are_refused() {
    let runs = Runs::new(1);
    let out = runs.run(&["start", "--nodes", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("from 1 to 9"));
    assert!(out.stdout.is_empty());
    assert_eq!(runs.run(&[]).status.code(), Some(2));
    let out = runs.run(&["restart"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data"));
    assert_eq!(
        runs.ok(&["status"]).trim(),
        format!("no nodes under {}", runs.dir.path().display())
    );
}
