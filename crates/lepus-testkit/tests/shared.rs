//! `shared_broker`: from the environment under scripts/test, else a node of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use lepus_testkit::{AMQP_URL_ENV, shared_broker, unique_name};

#[test]
fn shared_broker_serves_a_round_trip() {
    let broker = shared_broker().expect("a broker");
    assert_eq!(
        broker.is_from_env(),
        std::env::var(AMQP_URL_ENV).is_ok_and(|v| !v.trim().is_empty())
    );
    let port: u16 = broker
        .url()
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("a port in the URL");
    let queue = unique_name("testkit-shared");
    let mut amqp = common::connect_tcp(port);
    amqp.declare_queue(&queue, false);
    amqp.publish_confirmed(&queue, b"hello");
    assert_eq!(amqp.get(&queue).as_deref(), Some(&b"hello"[..]));
}
