//! Three nodes in three zones: a zone cut off pauses its node (pause_minority) and comes
//! back on heal; two zones cut apart; everything removed when the lab is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use lepus_testkit::{Endpoint, Lab};

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn reachable(lab: &Lab, zone: usize) -> bool {
    let addr = SocketAddr::from((lab.zone_ip(zone).unwrap(), 5672));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Waits until `cond` holds, at most `timeout`.
fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cut_off_zone_pauses_and_rejoins_and_the_lab_leaves_nothing_behind() {
    let started = Instant::now();
    let lab = Lab::builder(3)
        .client_zones(1)
        .start()
        .expect("start a lab of 3 zones");
    eprintln!("lab of 3 took {:?}", started.elapsed());
    let ns: Vec<String> = (0..4).map(|z| lab.netns(z).unwrap()).collect();
    let listed = namespaces();
    for name in &ns {
        assert!(listed.contains(name.as_str()), "{name} in {listed}");
    }
    assert_eq!(lab.running_nodes_seen_by(0).unwrap().len(), 3);
    for zone in 0..3 {
        assert!(reachable(&lab, zone), "node {zone} from the host");
        let name = lab.node(zone).unwrap().node_name().to_owned();
        assert_eq!(name, format!("rabbit@{}", lab.zone_ip(zone).unwrap()));
    }

    // A client process in zone 3 reaches node 0 until the two zones are cut apart.
    let client_reaches_node0 = || {
        let target = format!("/dev/tcp/{}/5672", lab.zone_ip(0).unwrap());
        lab.command_in(3, "bash")
            .unwrap()
            .args(["-c", &format!("exec 3<>{target}")])
            .status()
            .unwrap()
            .success()
    };
    assert!(client_reaches_node0());
    lab.cut(Endpoint::Zone(3), Endpoint::Zone(0)).unwrap();
    assert!(!client_reaches_node0());
    lab.heal().unwrap();
    assert!(client_reaches_node0());

    // Zone 2 cut off: the majority sees two nodes; the minority stops serving
    // (pause_minority) although its process runs on.
    let cut = Instant::now();
    lab.isolate(2).unwrap();
    lab.wait_running_nodes(0, 2, Duration::from_secs(30))
        .unwrap();
    eprintln!("majority saw the cut after {:?}", cut.elapsed());
    assert!(!reachable(&lab, 2));
    assert!(lab.node(2).unwrap().is_running());
    lab.wait_running_nodes(2, 0, Duration::from_secs(30))
        .unwrap();
    lab.heal().unwrap();
    // Paused by pause_minority, the node closes its AMQP listener until it sees the
    // majority again.
    lab.wait_running_nodes(0, 3, Duration::from_secs(60))
        .unwrap();
    wait("node 2 serving again", Duration::from_secs(30), || {
        reachable(&lab, 2)
    });

    // Zones 0 and 1 cut apart, both still reach zone 2 (a partial partition, which
    // RabbitMQ turns into a full one, pausing one side); this process cut off from
    // zone 1 only.
    let node1 = lab.node(1).unwrap().node_name().to_owned();
    lab.cut(Endpoint::Zone(0), Endpoint::Zone(1)).unwrap();
    lab.cut(Endpoint::Host, Endpoint::Zone(1)).unwrap();
    assert!(!reachable(&lab, 1), "host cut from zone 1");
    assert!(reachable(&lab, 2));
    wait("node 0 losing node 1", Duration::from_secs(30), || {
        !lab.running_nodes_seen_by(0).unwrap().contains(&node1)
    });
    lab.heal().unwrap();
    lab.wait_running_nodes(0, 3, Duration::from_secs(60))
        .unwrap();
    wait("every node serving again", Duration::from_secs(30), || {
        (0..3).all(|zone| reachable(&lab, zone))
    });

    drop(lab);
    let listed = namespaces();
    for name in &ns {
        assert!(!listed.contains(name.as_str()), "{name} left in {listed}");
    }
    eprintln!("whole test took {:?}", started.elapsed());
}

#[test]
fn a_lab_left_by_a_dead_process_is_removed() {
    // What a killed test run leaves: a claim file naming a process that is gone, and a
    // namespace with a process still running in it.
    std::fs::create_dir_all(lepus_testkit::zones::STATE_DIR).unwrap();
    let id = format!("{:06x}", std::process::id() & 0xff_ffff);
    let ns = format!("lepus-{id}-z0");
    let claim = (1..255)
        .map(|n| format!("{}/10.213.{n}", lepus_testkit::zones::STATE_DIR))
        .find(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .is_ok()
        })
        .unwrap();
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "600"])
        .spawn()
        .unwrap();
    assert!(namespaces().contains(&ns));
    // No process has pid 2^22 + 1 (above the kernel's pid_max limit). From here on any
    // lab starting in another test process may do the cleanup first; the outcome is the
    // same.
    std::fs::write(&claim, format!("4194305 1 {id}\n")).unwrap();

    lepus_testkit::zones::cleanup_stale().unwrap();

    assert!(!namespaces().contains(&ns), "{ns} still listed");
    assert!(!std::path::Path::new(&claim).exists());
    let status = sleeper.wait().unwrap();
    assert!(
        !status.success(),
        "the process in the namespace was killed: {status}"
    );
}
