//! The fault proxy against a local echo server (each toxic, switched on a live
//! connection) and against a real RabbitMQ node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lepus_testkit::proxy::{Direction, FaultProxy, Latency, Slicer, Toxics};
use lepus_testkit::{shared_broker, unique_name};

/// Echoes every connection back; counts the bytes it received.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
}

fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            count.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo { addr, received }
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    stream.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
    start.elapsed()
}

/// Waits for `cond` with a deadline.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forwards_both_ways_and_counts() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    assert_eq!(proxy.upstream(), echo.addr);
    let mut client = connect(&proxy);
    round_trip(&mut client, b"hello");
    // A pump counts right after its write returns, which may be after the echo arrived.
    wait_until("both counters", Duration::from_secs(5), || {
        let stats = proxy.stats();
        (stats.bytes_upstream, stats.bytes_downstream) == (5, 5)
    });
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.active, 1);
}

#[test]
fn latency_on_a_live_connection_delays_every_round_trip_and_keeps_order() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    let before = round_trip(&mut client, b"warm");
    let base = Duration::from_millis(80);
    proxy.set_latency(
        Direction::Downstream,
        Some(Latency::new(base).with_jitter(Duration::from_millis(40))),
    );
    for _ in 0..3 {
        let took = round_trip(&mut client, b"ping");
        assert!(took >= base, "{took:?} < {base:?} (was {before:?})");
        assert!(took < base + Duration::from_millis(40) + Duration::from_secs(1));
    }
    // Many small writes with jitter arrive whole and in order.
    proxy.set_latency(
        Direction::Both,
        Some(Latency::new(Duration::from_millis(1)).with_jitter(Duration::from_millis(20))),
    );
    let sent: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let to_send = sent.clone();
    let w = std::thread::spawn(move || {
        for piece in to_send.chunks(10) {
            writer.write_all(piece).unwrap();
        }
    });
    let mut got = vec![0u8; sent.len()];
    client.read_exact(&mut got).unwrap();
    w.join().unwrap();
    assert_eq!(got, sent);
    proxy.clear();
    assert_eq!(proxy.toxics(), (Toxics::default(), Toxics::default()));
}

#[test]
fn bandwidth_limits_throughput() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"warm");
    let rate = 256 * 1024;
    proxy.set_bandwidth(Direction::Downstream, Some(rate));
    let total = 128 * 1024;
    let mut writer = client.try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&vec![7u8; total]).unwrap());
    let start = Instant::now();
    let mut got = vec![0u8; total];
    client.read_exact(&mut got).unwrap();
    let took = start.elapsed();
    w.join().unwrap();
    let per_sec = total as f64 / took.as_secs_f64();
    // Nominal 0.5 s; the first piece goes at once, so allow 10% above the rate.
    assert!(
        per_sec <= rate as f64 * 1.1,
        "{per_sec:.0} B/s over {rate} B/s"
    );
    assert!(
        per_sec >= rate as f64 * 0.3,
        "{per_sec:.0} B/s far under {rate} B/s"
    );
}

#[test]
fn blackhole_forwards_nothing_keeps_the_connection_open_and_resumes_when_cleared() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"warm");
    let received = echo.received.load(Ordering::SeqCst);
    proxy.set_blackhole(Direction::Both, true);
    client.write_all(b"into the void").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let err = client
        .read(&mut buf)
        .expect_err("nothing comes back, not even EOF");
    // A timeout, not a reset or a close: the connection is silent but open.
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert_eq!(echo.received.load(Ordering::SeqCst), received);
    assert_eq!(proxy.stats().active, 1);
    // Healed: what was held arrives, nothing lost.
    proxy.clear();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = [0u8; 13];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"into the void");
}

#[test]
fn blackhole_blocks_a_writer_once_buffers_fill_and_loses_nothing() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    proxy.set_blackhole(Direction::Both, true);
    client.set_nonblocking(true).unwrap();
    let block = vec![0x5au8; 64 * 1024];
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.write(&block) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write failed instead of blocking: {e}"),
        }
        assert!(
            Instant::now() < deadline && written < 256 << 20,
            "never blocked"
        );
    }
    assert!(written > 0);
    assert_eq!(echo.received.load(Ordering::SeqCst), 0);
    proxy.set_blackhole(Direction::Both, false);
    client.set_nonblocking(false).unwrap();
    let mut reader = client.try_clone().unwrap();
    let r = std::thread::spawn(move || {
        let mut got = vec![0u8; written];
        reader.read_exact(&mut got).unwrap();
        got.iter().all(|&b| b == 0x5a)
    });
    assert!(r.join().unwrap(), "every held byte came back");
    assert_eq!(echo.received.load(Ordering::SeqCst), written as u64);
}

#[test]
fn reset_all_gives_the_client_a_connection_reset() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"warm");
    assert_eq!(proxy.reset_all(), 1);
    let mut buf = [0u8; 8];
    let err = client.read(&mut buf).expect_err("a reset, not EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    wait_until("the connection to go", Duration::from_secs(5), || {
        proxy.stats().active == 0
    });
    assert_eq!(proxy.stats().resets, 1);
    // The proxy itself still works.
    let mut again = connect(&proxy);
    round_trip(&mut again, b"again");
}

#[test]
fn reset_every_resets_each_connection_periodically() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.reset_every(Some(Duration::from_millis(200)));
    for _ in 0..2 {
        let mut client = connect(&proxy);
        round_trip(&mut client, b"x");
        let start = Instant::now();
        let err = client.read(&mut [0u8; 8]).expect_err("a reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    assert!(proxy.stats().resets >= 2);
    proxy.reset_every(None);
    let mut client = connect(&proxy);
    round_trip(&mut client, b"calm");
}

#[test]
fn slicer_delivers_in_small_pieces_with_pauses() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"warm");
    let delay = Duration::from_millis(5);
    proxy.set_slicer(Direction::Downstream, Some(Slicer { size: 10, delay }));
    let msg: Vec<u8> = (0..100u8).collect();
    client.write_all(&msg).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut reads = Vec::new();
    while got.len() < msg.len() {
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        reads.push(n);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, msg);
    assert!(reads.iter().all(|&n| n <= 10), "pieces {reads:?}");
    // Ten pieces, nine pauses.
    assert!(start.elapsed() >= delay * 9, "{:?}", start.elapsed());
}

#[test]
fn limit_data_closes_after_n_bytes() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.set_limit_data(Direction::Downstream, Some(1000));
    let mut client = connect(&proxy);
    client.write_all(&[1u8; 5000]).unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .expect("a clean close, not a reset");
    assert_eq!(got.len(), 1000);
    assert_eq!(proxy.stats().bytes_downstream, 1000);
}

#[test]
fn disable_refuses_and_closes_and_enable_listens_again() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"warm");
    proxy.disable().unwrap();
    assert!(!proxy.is_enabled());
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "closed with a FIN");
    let refused = TcpStream::connect(proxy.addr()).expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    proxy.enable().unwrap();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"back");
}

#[test]
fn a_refusing_server_resets_the_client() {
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let proxy = FaultProxy::start(addr).unwrap();
    let mut client = connect(&proxy);
    let err = client.read(&mut [0u8; 8]).expect_err("a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
}

#[test]
fn stop_ends_every_thread_even_with_blackholed_connections() {
    let echo = echo();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&proxy)).collect();
    for client in &mut clients {
        round_trip(client, b"up");
    }
    proxy.set_blackhole(Direction::Both, true);
    clients[0].write_all(b"stuck").unwrap();
    wait_until(
        "an acceptor and two threads per connection",
        Duration::from_secs(5),
        || proxy.stats().threads == 7,
    );
    let start = Instant::now();
    proxy.stop().expect("every thread ended");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for client in &mut clients {
        let mut buf = [0u8; 8];
        match client.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("the client saw {other:?}, not a closed connection"),
        }
    }
}

#[test]
fn amqp_through_the_proxy_with_latency_and_fragments() {
    let broker = shared_broker().expect("a broker");
    let port: u16 = broker
        .url()
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("a port in the URL");
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    proxy.set_latency(
        Direction::Both,
        Some(Latency::new(Duration::from_millis(5)).with_jitter(Duration::from_millis(5))),
    );
    // Frames cut in pieces of 7 bytes each way: both ends must reassemble them.
    proxy.set_slicer(
        Direction::Both,
        Some(Slicer {
            size: 7,
            delay: Duration::from_micros(200),
        }),
    );
    let queue = unique_name("testkit-proxy");
    let mut amqp = common::connect_tcp(proxy.addr().port());
    amqp.declare_queue(&queue, false);
    amqp.publish_confirmed(&queue, b"through");
    assert_eq!(amqp.get(&queue).as_deref(), Some(&b"through"[..]));
    let stats = proxy.stats();
    assert!(stats.bytes_upstream > 0 && stats.bytes_downstream > 0);
}

#[test]
fn a_proxy_can_be_shared_across_threads_and_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<FaultProxy>();
    send_sync::<Toxics>();
}
