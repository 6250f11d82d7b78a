//! `lepus status` against a real broker: a consumer's work queue, retry tiers and
//! dead-letter queue with the right depths and consumers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use lepus_amqp::{Connection, ConsumeOptions};
use serde_json::Value;

use common::lepus;

const T: Duration = Duration::from_secs(60);

fn publish(url: &str, queue: &str, count: &str) {
    let run = lepus(
        &[
            "--amqp-url",
            url,
            "publish",
            "-k",
            queue,
            "--body",
            "x",
            "--count",
            count,
        ],
        b"",
        T,
    );
    assert!(run.ok, "{}", run.stderr);
}

#[test]
fn status_shows_each_tier_with_its_depth() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let url = broker.url().to_owned();
    let queue = lepus_testkit::unique_name("status");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ladder.json").display().to_string();
    // Long delays: nothing expires back to work while the test looks.
    let export = lepus(
        &[
            "topology",
            "export",
            "--consumer",
            &queue,
            "--delays",
            "300,600",
            "-o",
            &file,
        ],
        b"",
        T,
    );
    assert!(export.ok, "{}", export.stderr);
    let apply = lepus(&["--amqp-url", &url, "topology", "apply", &file], b"", T);
    assert!(apply.ok, "{}{}", apply.stdout, apply.stderr);

    publish(&url, &queue, "3");
    publish(&url, &format!("{queue}.retry.1"), "2");
    publish(&url, &format!("{queue}.dlq"), "1");

    // A consumer holding one message unacknowledged.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (conn, mut consumer) = rt.block_on(async {
        let conn = Connection::open(&url).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        ch.basic_qos(1, false).await.unwrap();
        let mut consumer = ch
            .basic_consume(&queue, ConsumeOptions::default())
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
        assert!(matches!(first, Ok(Some(Ok(_)))));
        (conn, consumer)
    });

    let run = lepus(
        &[
            "--amqp-url",
            &url,
            "status",
            "-q",
            &queue,
            "--json",
            "--sample",
            "0.2",
        ],
        b"",
        T,
    );
    assert!(run.ok, "{}", run.stderr);
    let status: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let rows = status["queues"].as_array().unwrap();
    let summary: Vec<(String, String, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap().to_owned(),
                r["queue"].as_str().unwrap().to_owned(),
                r["ready"].as_u64().unwrap(),
                r["consumers"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("work".into(), queue.clone(), 2, 1),
            ("retry 1".into(), format!("{queue}.retry.1"), 2, 0),
            ("retry 2".into(), format!("{queue}.retry.2"), 0, 0),
            ("dlq".into(), format!("{queue}.dlq"), 1, 0),
        ]
    );

    let text = lepus(
        &[
            "--amqp-url",
            &url,
            "status",
            "-q",
            &queue,
            "--sample",
            "0.2",
        ],
        b"",
        T,
    );
    assert!(text.ok, "{}", text.stderr);
    eprintln!("{}", text.stdout);
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("retry 1"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().take(5).collect::<Vec<_>>(),
        vec!["retry", "1", format!("{queue}.retry.1").as_str(), "2", "-"]
    );

    rt.block_on(async {
        let _ = consumer.cancel().await;
        let ch = conn.open_channel().await.unwrap();
        for q in [
            queue.clone(),
            format!("{queue}.retry.1"),
            format!("{queue}.retry.2"),
            format!("{queue}.dlq"),
        ] {
            ch.queue_delete(&q, Default::default()).await.unwrap();
        }
        conn.close().await.unwrap();
    });
}

#[test]
fn status_of_a_missing_work_queue_exits_4() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let queue = lepus_testkit::unique_name("nothing");
    let run = lepus(
        &[
            "--amqp-url",
            broker.url(),
            "status",
            "-q",
            &queue,
            "--sample",
            "0.1",
        ],
        b"",
        T,
    );
    assert_eq!(run.code, Some(4), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("(does not exist)"), "{}", run.stdout);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
}

#[test]
fn status_of_an_unreachable_broker_exits_5() {
    let run = lepus(
        &[
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "status",
            "-q",
            "x",
            "--timeout",
            "2",
        ],
        b"",
        T,
    );
    assert_eq!(run.code, Some(5), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
}
