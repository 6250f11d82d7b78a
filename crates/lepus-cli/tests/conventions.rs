//! Everyday conventions of the `lepus` command: config-file profiles, `publish --lines`
//! with properties and `--json`, replaying a `dlq move --to-file` archive, shell
//! completions and the man page.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use lepus_amqp::{Connection, FieldTable, QueueDeclareOptions};
use serde_json::Value;

use common::lepus;

const T: Duration = Duration::from_secs(60);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn declare(url: &str, queues: &[&str]) {
    rt().block_on(async {
        let conn = Connection::open(url).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        for q in queues {
            ch.queue_declare(q, QueueDeclareOptions::default(), FieldTable::default())
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    });
}

/// Every message of `queue` (taken off it): properties and body.
fn drain(url: &str, queue: &str) -> Vec<(lepus_amqp::BasicProperties, Vec<u8>)> {
    rt().block_on(async {
        let conn = Connection::open(url).await.unwrap();
        let ch = conn.open_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch.basic_get(queue).await.unwrap() {
            m.delivery.ack().unwrap();
            out.push((m.delivery.properties().clone(), m.delivery.body().to_vec()));
        }
        ch.queue_delete(queue, Default::default()).await.unwrap();
        conn.close().await.unwrap();
        out
    })
}

#[test]
fn a_profile_supplies_the_url_and_publish_lines_carry_properties() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let queue = lepus_testkit::unique_name("lines");
    declare(broker.url(), &[&queue]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lepus.conf");
    std::fs::write(
        &config,
        format!(
            "[default]\namqp_url = amqp://guest:guest@127.0.0.1:1/%2f\n\n[test]\namqp_url = {}\n",
            broker.url()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let run = lepus(
        &[
            "--config",
            &config,
            "--profile",
            "test",
            "publish",
            "-k",
            &queue,
            "--lines",
            "--json",
            "--message-id",
            "m",
            "--priority",
            "5",
            "--correlation-id",
            "c-1",
            "--reply-to",
            "answers",
            "--expiration",
            "600000",
            "--transient",
        ],
        b"first\n\nsecond\r\nthird\n",
        T,
    );
    assert!(run.ok, "{}", run.stderr);
    let results: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{}", run.stdout);
    assert_eq!(results[1]["message_id"], "m-2");
    assert!(
        results.iter().all(|r| r["result"] == "confirmed"),
        "{}",
        run.stdout
    );

    let got = drain(broker.url(), &queue);
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, vec![b"first".as_slice(), b"second", b"third"]);
    let (props, _) = &got[0];
    assert_eq!(props.priority(), &Some(5));
    assert_eq!(props.delivery_mode(), &Some(1));
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );
    assert_eq!(
        props.reply_to().as_ref().map(|s| s.as_str()),
        Some("answers")
    );
    assert_eq!(
        props.expiration().as_ref().map(|s| s.as_str()),
        Some("600000")
    );

    // The [default] section applies without --profile; a profile that is not there is an
    // error, never a silent fall back.
    let default = lepus(
        &[
            "--config",
            &config,
            "status",
            "-q",
            &queue,
            "--timeout",
            "1",
        ],
        b"",
        T,
    );
    assert_eq!(default.code, Some(5), "{}", default.stderr);
    let missing = lepus(
        &[
            "--config",
            &config,
            "--profile",
            "prod",
            "status",
            "-q",
            "x",
        ],
        b"",
        T,
    );
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("no profile [prod]"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_dlq_archive_file_replays_to_the_original_queue() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let url = broker.url();
    let queue = lepus_testkit::unique_name("archive");
    let dlq = format!("{queue}.dlq");
    declare(url, &[&queue, &dlq]);
    let origin = format!("x-lepus-original-queue={queue}");
    let publish = lepus(
        &[
            "--amqp-url",
            url,
            "publish",
            "-k",
            &dlq,
            "--body",
            "failed",
            "--count",
            "3",
            "--message-id",
            "a",
            "--header",
            &origin,
            "--header",
            "x-lepus-dead-letter-reason=rejected",
        ],
        b"",
        T,
    );
    assert!(publish.ok, "{}", publish.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl").display().to_string();
    let moved = lepus(
        &[
            "--amqp-url",
            url,
            "dlq",
            "move",
            "-q",
            &queue,
            "--all",
            "--to-file",
            &file,
        ],
        b"",
        T,
    );
    assert!(moved.ok, "{}{}", moved.stdout, moved.stderr);

    let dry = lepus(
        &["--amqp-url", url, "dlq", "replay-file", &file, "--dry-run"],
        b"",
        T,
    );
    assert!(dry.ok, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would replay 3, failed 0"),
        "{}",
        dry.stdout
    );

    let replayed = lepus(&["--amqp-url", url, "dlq", "replay-file", &file], b"", T);
    assert!(replayed.ok, "{}{}", replayed.stdout, replayed.stderr);
    assert!(
        replayed.stdout.contains("replayed 3, failed 0"),
        "{}",
        replayed.stdout
    );
    let got = drain(url, &queue);
    let mut ids: Vec<String> = got
        .iter()
        .map(|(p, _)| p.message_id().as_ref().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a-1", "a-2", "a-3"]);
    let headers = got[0].0.headers().as_ref().unwrap().inner();
    assert!(headers.contains_key("x-lepus-replay-count"), "{headers:?}");
    drain(url, &dlq);
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definition() {
    let bash = lepus(&["completions", "bash"], b"", T);
    assert!(bash.ok, "{}", bash.stderr);
    assert!(bash.stdout.contains("doctor") && bash.stdout.contains("--amqp-url"));
    let man = lepus(&["man"], b"", T);
    assert!(man.ok, "{}", man.stderr);
    assert!(
        man.stdout.contains(".TH lepus") && man.stdout.contains("topology"),
        "{}",
        man.stdout
    );
}
