//! Publishing through a failover: a three-node cluster loses the node that hosts both
//! the client's connection and the quorum queue's leader while messages stream in. With
//! a majority left and the outage shorter than the publish timeout, nothing may fail and
//! nothing confirmed may be missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lepus::amqp::{Connection, ConsumeOptions};
use lepus::{
    Client, ConnectionState, Message, Publisher, PublisherOptions, Queue, ReconnectPolicy, Role,
    Topology,
};
use lepus_testkit::{Cluster, unique_name};

use common::blocking;

const MESSAGES: usize = 3000;
/// One message per this interval: about 400 a second.
const EVERY: Duration = Duration::from_micros(2500);

/// The node name of `queue`'s leader, as node `index` of `cluster` sees it.
fn leader(cluster: &Cluster, index: usize, queue: &str) -> String {
    let out = cluster
        .node(index)
        .unwrap()
        .rabbitmqctl(&["-q", "list_queues", "name", "leader"])
        .unwrap();
    out.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| panic!("{queue} not listed: {out}"))
}

/// Counts, per message id, the copies in `queue` until it stays empty.
async fn count_ids(url: &str, queue: &str) -> HashMap<String, usize> {
    let conn = Connection::open(url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.basic_qos(1000, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(queue, ConsumeOptions::default())
        .await
        .unwrap();
    let mut ids = HashMap::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let d = d.unwrap();
        let id = d.properties().message_id().as_ref().unwrap().to_string();
        *ids.entry(id).or_insert(0) += 1;
        d.ack().unwrap();
    }
    conn.close().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_a_leader_and_connection_failover_fails_nothing() {
    let cluster = Arc::new(blocking(|| Cluster::start(3).unwrap()).await);
    let q = unique_name("failover");
    // One connection, so the queue (declared by it) gets its leader on the client's node:
    // one kill takes both the connection and the leader.
    let mut builder = Client::builder()
        .shared_connection(true)
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        )
        .topology(Topology::new().queue(Queue::new(&q).quorum()));
    for url in cluster.urls() {
        builder = builder.endpoint(&url).unwrap();
    }
    let client = builder.build().unwrap();
    client
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap();
    let ConnectionState::Connected { host } = client.state(Role::Publish) else {
        panic!("{:?}", client.state(Role::Publish))
    };
    let on = cluster
        .nodes()
        .iter()
        .position(|n| host.ends_with(&format!(":{}", n.port())))
        .unwrap();
    let c = cluster.clone();
    let q2 = q.clone();
    let leader_name = blocking(move || leader(&c, on, &q2)).await;
    let victim = cluster
        .nodes()
        .iter()
        .position(|n| n.node_name() == leader_name)
        .unwrap_or_else(|| panic!("leader {leader_name} is no node of the cluster"));
    println!("client on node {on}, leader {leader_name} (node {victim})");
    let publisher = Publisher::new(&client, PublisherOptions::default());
    let started = Instant::now();
    let mut confirms = Vec::with_capacity(MESSAGES);
    let mut ticks = tokio::time::interval(EVERY);
    let mut kill = None;
    for i in 0..MESSAGES {
        ticks.tick().await;
        if i == MESSAGES / 4 {
            let c = cluster.clone();
            kill = Some(tokio::task::spawn_blocking(move || {
                c.node(victim).unwrap().kill().unwrap()
            }));
            println!(
                "killed node {victim} at message {i}, {:?}",
                started.elapsed()
            );
        }
        let msg = Message::new("", &q, "payload").message_id_str(&format!("m-{i}"));
        confirms.push(publisher.send(msg).await.unwrap());
    }
    kill.unwrap().await.unwrap();
    let mut confirmed = Vec::new();
    let mut failed = Vec::new();
    for confirm in confirms {
        let id = confirm.message_id().to_owned();
        match confirm.await {
            Ok(()) => confirmed.push(id),
            Err(err) => failed.push((id, err.error.to_string())),
        }
    }
    let took = started.elapsed();
    let stats = publisher.stats();
    println!(
        "{} confirmed, {} failed in {took:?}; nacked {}, republished {}",
        confirmed.len(),
        failed.len(),
        stats.snapshot().nacked,
        stats.snapshot().republished
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    let survivor = cluster
        .nodes()
        .iter()
        .enumerate()
        .find(|(i, _)| *i != victim)
        .map(|(_, n)| n.url())
        .unwrap();
    let counts = count_ids(&survivor, &q).await;
    let missing: Vec<_> = confirmed
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "queue holds {} distinct ids, {duplicates} duplicates",
        counts.len()
    );
    assert!(missing.is_empty(), "confirmed but missing: {missing:?}");
    client.close(Duration::from_secs(10)).await.unwrap();
}
