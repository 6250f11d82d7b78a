//! Three nodes joined into one cluster; one of them killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use lepus_testkit::Cluster;

#[test]
fn three_nodes_form_one_cluster_and_a_killed_node_rejoins() {
    let started = Instant::now();
    let cluster = Cluster::start(3).expect("start a cluster of 3");
    eprintln!("cluster of 3 took {:?}", started.elapsed());
    assert_eq!(cluster.urls().len(), 3);

    let mut names: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.node_name().to_owned())
        .collect();
    names.sort();
    let mut running = cluster.running_nodes_seen_by(0).unwrap();
    running.sort();
    assert_eq!(running, names);
    let status = cluster
        .node(0)
        .unwrap()
        .rabbitmqctl(&["cluster_status"])
        .unwrap();
    for name in &names {
        assert!(status.contains(name.as_str()), "{status}");
    }

    let third = cluster.node(2).unwrap();
    third.kill().unwrap();
    assert!(!common::port_accepts(third.port()));
    // The others notice the lost distribution connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.running_nodes_seen_by(0).unwrap().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "node 0 still sees 3 running nodes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    third.restart().unwrap();
    assert_eq!(cluster.running_nodes_seen_by(1).unwrap().len(), 3);
}
