//! The `lepus` binary against a real broker: publish then consume, bench --verify, and
//! failing fast (with the reason) when there is no broker or no queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use lepus_amqp::{Connection, FieldTable, QueueDeclareOptions, QueueDeleteOptions};
use serde_json::Value;

use common::lepus;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn declare(url: &str, queue: &str) {
    rt().block_on(async {
        let conn = Connection::open(url).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        ch.queue_declare(queue, QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
}

/// Ready messages in `queue`, after deleting it if `delete`.
fn ready(url: &str, queue: &str, delete: bool) -> u32 {
    rt().block_on(async {
        let conn = Connection::open(url).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let info = ch
            .queue_declare(queue, passive, FieldTable::default())
            .await
            .unwrap();
        if delete {
            ch.queue_delete(queue, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
        info.message_count
    })
}

const T: Duration = Duration::from_secs(60);

#[test]
fn publish_then_consume_round_trip() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let url = broker.url();
    let queue = lepus_testkit::unique_name("cli-roundtrip");
    declare(url, &queue);

    let text = lepus(
        &[
            "publish",
            "--amqp-url",
            url,
            "-k",
            &queue,
            "--body",
            "hello lepus",
            "--header",
            "tenant=acme",
            "--content-type",
            "text/plain",
            "--message-id",
            "m-1",
            "--mandatory",
        ],
        b"",
        T,
    );
    assert!(text.ok, "publish failed: {}", text.stderr);
    assert_eq!(text.stdout.trim(), "m-1 confirmed");

    // A binary body from stdin, twice.
    let binary = lepus(
        &[
            "publish",
            "--amqp-url",
            url,
            "-k",
            &queue,
            "--message-id",
            "bin",
            "--count",
            "2",
        ],
        &[0, 1, 2, 255],
        T,
    );
    assert!(binary.ok, "publish failed: {}", binary.stderr);
    assert_eq!(binary.stdout, "bin-1 confirmed\nbin-2 confirmed\n");

    let consumed = lepus(
        &[
            "consume",
            "--amqp-url",
            url,
            "--queue",
            &queue,
            "--count",
            "3",
            "--json",
            "--timeout",
            "20",
        ],
        b"",
        T,
    );
    assert!(consumed.ok, "consume failed: {}", consumed.stderr);
    let lines: Vec<Value> = consumed
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", consumed.stdout);
    let first = &lines[0];
    assert_eq!(first["message_id"], "m-1");
    assert_eq!(first["routing_key"], queue.as_str());
    assert_eq!(first["exchange"], "");
    assert_eq!(first["body"], "hello lepus");
    assert_eq!(first["content_type"], "text/plain");
    assert_eq!(first["headers"]["tenant"], "acme");
    assert_eq!(first["redelivered"], false);
    assert_eq!(lines[1]["message_id"], "bin-1");
    assert_eq!(lines[1]["body_base64"], "AAEC/w==");
    assert_eq!(lines[2]["message_id"], "bin-2");

    // Everything was acknowledged: nothing is left.
    assert_eq!(ready(url, &queue, true), 0);
}

#[test]
fn consume_requeue_mode_leaves_messages_in_the_queue() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let url = broker.url();
    let queue = lepus_testkit::unique_name("cli-peek");
    declare(url, &queue);
    let published = lepus(
        &[
            "publish",
            "--amqp-url",
            url,
            "-k",
            &queue,
            "--body",
            "x",
            "--count",
            "3",
        ],
        b"",
        T,
    );
    assert!(published.ok, "{}", published.stderr);
    let peek = lepus(
        &[
            "consume",
            "--amqp-url",
            url,
            "--queue",
            &queue,
            "--count",
            "3",
            "--ack-mode",
            "requeue",
        ],
        b"",
        T,
    );
    assert!(peek.ok, "{}", peek.stderr);
    assert_eq!(peek.stdout.matches("--- #").count(), 3, "{}", peek.stdout);
    assert_eq!(ready(url, &queue, true), 3);
}

/// Requeue mode holds every message shown: with --count above --prefetch the broker
/// would stop delivering once the window is full, and the command would wait for ever.
#[test]
fn consume_requeue_mode_with_a_count_above_the_prefetch_finishes() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let url = broker.url();
    let queue = lepus_testkit::unique_name("cli-peek-many");
    declare(url, &queue);
    let published = lepus(
        &[
            "publish",
            "--amqp-url",
            url,
            "-k",
            &queue,
            "--body",
            "x",
            "--count",
            "5",
        ],
        b"",
        T,
    );
    assert!(published.ok, "{}", published.stderr);
    let quick = Duration::from_secs(20);
    let peek = |extra: &[&str]| {
        let mut args = vec![
            "consume",
            "--amqp-url",
            url,
            "--queue",
            &queue,
            "--ack-mode",
            "requeue",
            "--prefetch",
            "2",
        ];
        args.extend_from_slice(extra);
        lepus(&args, b"", quick)
    };
    let all = peek(&["--count", "5"]);
    assert!(all.ok, "{}", all.stderr);
    assert_eq!(all.stdout.matches("--- #").count(), 5, "{}", all.stdout);
    assert_eq!(ready(url, &queue, false), 5);
    // Without a count the window is what can be shown: it stops there and says why.
    let window = peek(&[]);
    assert!(window.ok, "{}", window.stderr);
    assert_eq!(
        window.stdout.matches("--- #").count(),
        2,
        "{}",
        window.stdout
    );
    assert!(
        window.stderr.contains("prefetch window"),
        "{}",
        window.stderr
    );
    assert_eq!(ready(url, &queue, true), 5);
}

#[test]
fn unroutable_mandatory_publish_fails_with_the_reason() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let queue = lepus_testkit::unique_name("cli-nowhere");
    let run = lepus(
        &[
            "publish",
            "--amqp-url",
            broker.url(),
            "-k",
            &queue,
            "--body",
            "x",
            "--mandatory",
            "--message-id",
            "lost-1",
        ],
        b"",
        T,
    );
    assert!(!run.ok);
    assert!(
        run.stdout.starts_with("lost-1 failed: unroutable"),
        "{}",
        run.stdout
    );
}

#[test]
fn bench_verify_reports_no_loss() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let queue = lepus_testkit::unique_name("cli-bench");
    let run = lepus(
        &[
            "bench",
            "--amqp-url",
            broker.url(),
            "--count",
            "2000",
            "--verify",
            "--json",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--queue",
            &queue,
        ],
        b"",
        T,
    );
    assert!(run.ok, "bench failed:\n{}\n{}", run.stdout, run.stderr);
    let summary: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["sent"], 4000, "{summary}");
    assert_eq!(summary["confirmed"], 4000, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    // Nothing failed and nothing reconnected: every confirmed message was consumed
    // exactly once.
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(summary["consumed"], 4000, "{summary}");
    for key in [
        "unresolved",
        "republished",
        "resubscribes",
        "foreign",
        "ack_errors",
    ] {
        assert_eq!(summary[key], 0, "{key}: {summary}");
    }
    for key in [
        "publish_msgs_per_s",
        "consume_msgs_per_s",
        "confirm_latency_p50_us",
        "confirm_latency_p99_us",
        "e2e_latency_p50_us",
        "e2e_latency_p99_us",
    ] {
        assert!(summary[key].as_f64().unwrap() > 0.0, "{key}: {summary}");
    }
    // The queue was deleted at the end.
    rt().block_on(async {
        let conn = Connection::open(broker.url()).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let gone = ch
            .queue_declare(&queue, passive, FieldTable::default())
            .await;
        assert!(gone.is_err_and(|e| e.is_not_found()));
    });
}

#[test]
fn no_broker_fails_fast_with_the_reason() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let run = lepus(
        &[
            "bench",
            "--amqp-url",
            "amqp://guest:secret@127.0.0.1:1/%2f",
            "--publish-timeout",
            "2",
            "--count",
            "10",
        ],
        b"",
        Duration::from_secs(30),
    );
    assert!(!run.ok);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        run.stderr
            .contains("cannot connect to amqp://guest:***@127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("secret"), "{}", run.stderr);
}

#[test]
fn consuming_a_missing_queue_fails_fast() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let queue = lepus_testkit::unique_name("cli-missing");
    let run = lepus(
        &[
            "consume",
            "--amqp-url",
            broker.url(),
            "--queue",
            &queue,
            "--timeout",
            "20",
        ],
        b"",
        Duration::from_secs(15),
    );
    assert!(!run.ok);
    assert!(run.stderr.contains(&queue), "{}", run.stderr);
}
