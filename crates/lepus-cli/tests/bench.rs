//! `lepus bench` with PerfTest's flags against a real broker: several producers and
//! consumers, percentiles in the progress lines, publishing without confirms through an
//! exchange to several queues, and `--metrics-addr` serving `lepus_` metrics mid-run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::lepus;

const T: Duration = Duration::from_secs(90);

#[test]
fn perftest_flags_run_producers_and_consumers_for_a_time() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let run = lepus(
        &[
            "--amqp-url",
            broker.url(),
            "bench",
            "-x",
            "2",
            "-y",
            "2",
            "-s",
            "1000",
            "-z",
            "3",
            "--json",
        ],
        b"",
        T,
    );
    assert!(run.ok, "{}", run.stderr);
    let summary: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let confirmed = summary["confirmed"].as_u64().unwrap();
    assert!(confirmed > 100, "{summary}");
    assert_eq!(
        summary["consumed"].as_u64().unwrap(),
        confirmed,
        "{summary}"
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    let progress: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!(progress.len() >= 2, "{}", run.stderr);
    assert!(
        progress
            .iter()
            .any(|l| l.contains("latency min/median/75th/95th/99th") && l.ends_with(" ms")),
        "{}",
        run.stderr
    );
}

fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn unconfirmed_transient_messages_fan_out_to_several_queues_with_metrics_served() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let (a, b) = (
        lepus_testkit::unique_name("bench-a"),
        lepus_testkit::unique_name("bench-b"),
    );
    let exchange = lepus_testkit::unique_name("bench-x");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args([
            "--amqp-url",
            broker.url(),
            "bench",
            "-x",
            "1",
            "-y",
            "2",
            "-c",
            "0",
            "--transient",
            "-a",
            "-e",
            &exchange,
            "-t",
            "fanout",
            "-u",
            &a,
            "-u",
            &b,
            "-r",
            "1000",
            "-C",
            "3000",
            "--queue-args",
            "x-max-length=100000",
            "--metrics-addr",
            "127.0.0.1:0",
            "--json",
        ])
        .env_remove("LEPUS_AMQP_URL")
        .env("XDG_CONFIG_HOME", "/nonexistent/lepus-test-config")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    // The address is printed before the run starts; the run lasts about 3 s at 1000/s.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("stderr ended before the metrics address")
            .unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            break rest.trim_end_matches("/metrics").to_owned();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = scrape(&addr);
        if text.contains("lepus_delivered_total") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("lepus_published_total"), "{metrics}");
    assert!(
        metrics.contains(&format!("lepus_delivered_total{{queue=\"{a}\"}}")),
        "{metrics}"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}\n{}", seen.join("\n"), rest.join("\n"));
    let summary: Value = serde_json::from_str(out.join().unwrap().trim()).unwrap();
    assert_eq!(summary["sent"], 3000, "{summary}");
    assert_eq!(summary["confirmed"], 0, "{summary}");
    // Every queue bound to the fanout exchange got its own copy.
    assert_eq!(summary["consumed"], 6000, "{summary}");
    assert!(
        summary["publish_msgs_per_s"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
}
