//! A single node: kill -9 and restart with durable data, connection closing, pausing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Amqp, connect_tcp, port_accepts};
use lepus_testkit::{Broker, unique_name};

#[test]
fn kill_refuses_the_port_and_restart_brings_back_durable_messages() {
    let broker = Broker::start().expect("start a node");
    assert!(broker.url().starts_with("amqp://guest:guest@127.0.0.1:"));
    assert!(broker.node_name().ends_with("@localhost"));

    let queue = unique_name("testkit-durable");
    let mut amqp = connect_tcp(broker.port());
    amqp.declare_queue(&queue, true);
    amqp.publish_confirmed(&queue, b"survives kill -9");
    drop(amqp);

    broker.kill().expect("kill -9");
    assert!(!broker.is_running());
    assert!(
        !port_accepts(broker.port()),
        "port still accepts after kill"
    );

    let started = Instant::now();
    broker.restart().expect("restart");
    eprintln!("restart took {:?}", started.elapsed());
    assert!(broker.is_running());
    assert!(port_accepts(broker.port()), "port refuses after restart");

    // The node answers before every recovered queue does (after kill -9 the message store
    // is rebuilt, slow on a loaded machine); wait (bounded) until the queue reports its
    // message, so a slow recovery is not mistaken for a loss.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = match broker.rabbitmqctl(&["-q", "list_queues", "name", "messages"]) {
            Ok(listed) => listed,
            Err(err) => format!("rabbitmqctl failed: {err}"),
        };
        let recovered = listed.lines().any(|line| {
            let mut cols = line.split_whitespace();
            cols.next() == Some(queue.as_str()) && cols.next() == Some("1")
        });
        if recovered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} not back with its message after restart: {listed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut amqp = connect_tcp(broker.port());
    assert_eq!(amqp.get(&queue).as_deref(), Some(&b"survives kill -9"[..]));
    assert_eq!(amqp.get(&queue), None);
}

#[test]
fn close_all_connections_pause_resume_and_stop() {
    let broker = Broker::start().expect("start a node");

    // close_all_connections: the client gets connection.close 320 CONNECTION_FORCED.
    let mut amqp = connect_tcp(broker.port());
    broker
        .close_all_connections()
        .expect("close_all_connections");
    let close = amqp.read_method().expect("connection.close");
    assert!(close.is(10, 50), "expected connection.close");
    assert_eq!(u16::from_be_bytes([close.args[0], close.args[1]]), 320);

    // rabbitmqctl passes anything else through.
    let status = broker.rabbitmqctl(&["-q", "list_queues", "name"]).unwrap();
    assert!(!status.contains("error"), "{status}");
    let err = broker.rabbitmqctl(&["no_such_command"]).unwrap_err();
    assert!(err.to_string().contains("no_such_command"), "{err}");

    // pause: the kernel still accepts the connection, but nothing answers until resume.
    broker.pause().expect("pause");
    let mut raw = TcpStream::connect(("127.0.0.1", broker.port())).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    raw.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut byte = [0u8; 1];
    let silent = raw.read(&mut byte).unwrap_err();
    assert!(
        matches!(silent.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{silent}"
    );
    broker.resume().expect("resume");
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut amqp = Amqp::new(raw);
    let start = amqp.read_method().expect("connection.start after resume");
    assert!(start.is(10, 10));
    drop(amqp);

    broker.wait_until_ready(Duration::from_secs(30)).unwrap();
    broker.stop().expect("graceful stop");
    assert!(!broker.is_running());
    assert!(!port_accepts(broker.port()));
    assert!(broker.wait_until_ready(Duration::from_secs(1)).is_err());
}
