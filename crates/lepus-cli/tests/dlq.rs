//! `lepus dlq` against a real broker and a real `lepus::Consumer`: messages the handler
//! fails on are dead-lettered with their failure headers, listed, shown, replayed (with a
//! dry run first) once the handler works again and then processed with their message
//! ids; others are moved to an archive queue and a JSON-lines file; purge wants --yes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use lepus::amqp::{AMQPValue, FieldTable, QueueDeclareOptions};
use lepus::stats::ConsumerStats;
use lepus::{
    CancellationToken, Client, Consumer, Exchange, HandlerError, Incoming, Message, Publisher,
    PublisherOptions, Queue, ReconnectPolicy, RetryPolicy, Topology,
};
use lepus_testkit::{shared_broker, unique_name, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Runs `lepus` off the async threads; fails the test if it does not end in time.
async fn lepus(args: Vec<String>) -> common::Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::lepus(&args, b"", T)
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn ready(client: &Client, queue: &str) -> u32 {
    let ch = client.channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue, passive, FieldTable::default())
        .await
        .unwrap()
        .message_count
}

fn client(url: &str, topology: Topology) -> Client {
    Client::builder()
        .endpoint(url)
        .unwrap()
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        )
        .topology(topology)
        .build()
        .unwrap()
}

/// What the handler saw succeed: message id, attempt number, replay count header.
type Handled = Arc<Mutex<Vec<(String, u32, Option<i64>)>>>;

/// A work queue behind a direct exchange, its dead-letter queue (a second attempt in
/// process, then dead-lettered), and a consumer whose handler fails until `healthy` is set:
/// transiently (`stock service down`), or permanently for bodies starting with `bad`.
struct Shop {
    client: Client,
    exchange: String,
    queue: String,
    dlq: String,
    healthy: Arc<AtomicBool>,
    handled: Handled,
    stats: Arc<ConsumerStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<lepus::Result<()>>,
}

impl Shop {
    async fn start(url: &str, name: &str) -> Shop {
        let exchange = unique_name(&format!("{name}-ex"));
        let queue = unique_name(name);
        // Two attempts, both in process, then the dead-letter queue.
        let retry = RetryPolicy::none().immediate(1);
        let dlq = retry.dlq(&queue);
        let topology = Topology::new()
            .exchange(Exchange::direct(&exchange).auto_delete(true))
            .queue(Queue::new(&queue))
            .bind(&queue, &exchange, "order.created")
            .merge(retry.topology(&queue));
        let client = client(url, topology);
        client.wait_connected(T).await.unwrap();
        let healthy = Arc::new(AtomicBool::new(false));
        let handled: Handled = Arc::default();
        let consumer = Consumer::builder(&client, &queue)
            .name("inventory")
            .retry(retry)
            .build()
            .unwrap();
        let stats = consumer.stats();
        let stop = CancellationToken::new();
        let task = {
            let (healthy, handled) = (healthy.clone(), handled.clone());
            consumer.spawn(
                move |msg: Incoming| {
                    let (healthy, handled) = (healthy.clone(), handled.clone());
                    async move {
                        if !healthy.load(Ordering::SeqCst) {
                            if msg.text().unwrap_or_default().starts_with("bad") {
                                return Err(HandlerError::permanent("malformed order"));
                            }
                            return Err(HandlerError::transient("stock service down"));
                        }
                        let replays = match msg.header("x-lepus-replay-count") {
                            Some(AMQPValue::LongLongInt(n)) => Some(*n),
                            _ => None,
                        };
                        handled.lock().unwrap().push((
                            msg.message_id().unwrap().to_owned(),
                            msg.attempt(),
                            replays,
                        ));
                        Ok(())
                    }
                },
                stop.clone(),
            )
        };
        Shop {
            client,
            exchange,
            queue,
            dlq,
            healthy,
            handled,
            stats,
            stop,
            task,
        }
    }

    /// Publishes `bodies` as `<prefix>-0`, `<prefix>-1`, ... and waits until all are
    /// dead-lettered.
    async fn dead_letter(&self, prefix: &str, bodies: &[&str]) {
        let before = self.stats.dead_lettered.load(Ordering::SeqCst);
        let queued = ready(&self.client, &self.dlq).await;
        let publisher = Publisher::new(&self.client, PublisherOptions::default());
        for (i, body) in bodies.iter().enumerate() {
            let msg = Message::new(&self.exchange, "order.created", body.to_string())
                .message_id_str(&format!("{prefix}-{i}"))
                .content_type("text/plain");
            publisher.publish(msg).await.unwrap();
        }
        publisher.close(T).await.unwrap();
        let want = before + bodies.len() as u64;
        let stats = self.stats.clone();
        wait_until("messages dead-lettered", T, async || {
            stats.dead_lettered.load(Ordering::SeqCst) == want
        })
        .await;
        self.wait_dlq(queued + bodies.len() as u32).await;
    }

    async fn wait_dlq(&self, want: u32) {
        let (client, dlq) = (&self.client, &self.dlq);
        wait_until(&format!("{want} messages in {dlq}"), T, async || {
            ready(client, dlq).await == want
        })
        .await;
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.client.close(Duration::from_secs(5)).await.unwrap();
    }
}

/// `lepus dlq list --json`, once the queue holds `want` messages.
async fn list(shop: &Shop, url: &str, want: u32) -> Value {
    shop.wait_dlq(want).await;
    let run = lepus(args(&[
        "dlq",
        "list",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--json",
    ]))
    .await;
    assert!(run.ok, "list failed: {}", run.stderr);
    let listed: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(listed["message_count"], want, "{listed}");
    listed
}

fn ids(listed: &Value) -> Vec<String> {
    listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_back_to_work() {
    let broker = tokio::task::spawn_blocking(|| shared_broker().unwrap())
        .await
        .unwrap();
    let url = broker.url();
    let shop = Shop::start(url, "dlq-replay").await;
    shop.dead_letter("m", &["order 0", "order 1", "bad 2", "order 3", "order 4"])
        .await;
    assert_eq!(shop.stats.acked.load(Ordering::SeqCst), 0);

    // list: the failure headers of every message, in queue order.
    let listed = list(&shop, url, 5).await;
    assert_eq!(ids(&listed), ["m-0", "m-1", "m-2", "m-3", "m-4"]);
    let first = &listed["messages"][0];
    assert_eq!(first["original_queue"], shop.queue.as_str());
    assert_eq!(first["original_exchange"], shop.exchange.as_str());
    assert_eq!(first["original_routing_key"], "order.created");
    assert_eq!(first["attempts"], 2);
    assert_eq!(first["reason"], "retries-exhausted");
    assert_eq!(first["last_error"], "stock service down");
    assert_eq!(first["consumer"], "inventory");
    assert_eq!(first["body_size"], 7);
    assert!(first["first_failure_ms"].as_i64().unwrap() > 0);
    assert!(first["last_failure"].as_str().unwrap().ends_with('Z'));
    let bad = &listed["messages"][2];
    assert_eq!(bad["reason"], "rejected");
    assert_eq!(bad["last_error"], "malformed order");

    // The text form, and a page smaller than the queue.
    let text = lepus(args(&[
        "dlq",
        "list",
        "--amqp-url",
        url,
        "--dlq",
        &shop.dlq,
        "--limit",
        "2",
    ]))
    .await;
    assert!(text.ok, "{}", text.stderr);
    assert!(text.stdout.contains("5 messages"), "{}", text.stdout);
    assert!(text.stdout.contains("last error: stock service down"));
    assert!(text.stdout.contains("showing 2 of 5"), "{}", text.stdout);

    // show: one message in full, left in place.
    let shown = lepus(args(&[
        "dlq",
        "show",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--message-id",
        "m-2",
        "--json",
    ]))
    .await;
    assert!(shown.ok, "{}", shown.stderr);
    let shown = json_lines(&shown.stdout);
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["body"], "bad 2");
    assert_eq!(shown[0]["position"], 3);
    assert_eq!(shown[0]["properties"]["content_type"], "text/plain");
    assert_eq!(
        shown[0]["headers"]["x-lepus-dead-letter-reason"],
        "rejected"
    );
    let missing = lepus(args(&[
        "dlq",
        "show",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--message-id",
        "nope",
    ]))
    .await;
    assert!(!missing.ok);
    assert!(missing.stderr.contains("no message with id 'nope'"));

    // A dry run reports and changes nothing: same messages, same order, nothing handled.
    let dry = lepus(args(&[
        "dlq",
        "replay",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--all",
        "--dry-run",
        "--json",
    ]))
    .await;
    assert!(dry.ok, "{}", dry.stderr);
    let lines = json_lines(&dry.stdout);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["result"], "would be replayed");
    assert_eq!(lines[0]["to"], format!("queue '{}'", shop.queue));
    let summary = &lines[5];
    assert_eq!(
        (&summary["matched"], &summary["replayed"]),
        (&Value::from(5), &Value::from(0))
    );
    assert_eq!(ids(&list(&shop, url, 5).await), ids(&listed));
    assert_eq!(shop.stats.acked.load(Ordering::SeqCst), 0);

    // The handler works again. Replay the permanent failure alone, rate-limited...
    shop.healthy.store(true, Ordering::SeqCst);
    let one = lepus(args(&[
        "dlq",
        "replay",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--filter-reason",
        "rejected",
        "--rate",
        "20",
        "--json",
    ]))
    .await;
    assert!(one.ok, "{}", one.stderr);
    let summary = json_lines(&one.stdout).pop().unwrap();
    assert_eq!(summary["matched"], 1);
    assert_eq!(summary["replayed"], 1);
    assert_eq!(summary["skipped"], 4);
    assert_eq!(summary["failed"], 0);
    // ...the others stay, in order.
    assert_eq!(
        ids(&list(&shop, url, 4).await),
        ["m-0", "m-1", "m-3", "m-4"]
    );

    // ...then all the rest: they are processed, with their ids and a fresh count of
    // attempts (the first, not the third).
    let all = lepus(args(&[
        "dlq",
        "replay",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--all",
    ]))
    .await;
    assert!(all.ok, "{}", all.stderr);
    assert!(
        all.stdout
            .contains("matched 4, replayed 4, skipped 0, failed 0"),
        "{}",
        all.stdout
    );
    let stats = shop.stats.clone();
    wait_until("replayed messages handled", T, async || {
        stats.acked.load(Ordering::SeqCst) == 5
    })
    .await;
    let mut handled = shop.handled.lock().unwrap().clone();
    handled.sort();
    let expected: Vec<_> = (0..5).map(|i| (format!("m-{i}"), 1, Some(1))).collect();
    assert_eq!(handled, expected);
    shop.wait_dlq(0).await;
    assert_eq!(ready(&shop.client, &shop.queue).await, 0);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_move_to_an_archive_queue_and_a_file_and_purge_wants_yes() {
    let broker = tokio::task::spawn_blocking(|| shared_broker().unwrap())
        .await
        .unwrap();
    let url = broker.url();
    let shop = Shop::start(url, "dlq-move").await;
    shop.dead_letter("f", &["bad 0", "order 1", "order 2", "order 3"])
        .await;

    // To an archive queue (which must exist), unchanged.
    let archive = unique_name("dlq-archive");
    shop.client
        .channel()
        .await
        .unwrap()
        .queue_declare(
            &archive,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let moved = lepus(args(&[
        "dlq",
        "move",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--message-id",
        "f-0",
        "--to-queue",
        &archive,
    ]))
    .await;
    assert!(moved.ok, "{}", moved.stderr);
    assert!(
        moved.stdout.contains("f-0 moved to queue"),
        "{}",
        moved.stdout
    );
    let ch = shop.client.channel().await.unwrap();
    let got = ch.basic_get(&archive).await.unwrap().unwrap().delivery;
    assert_eq!(
        got.properties().message_id().as_ref().unwrap().as_str(),
        "f-0"
    );
    let headers = got.properties().headers().clone().unwrap();
    assert!(headers.contains_key(lepus::failure::REASON_HEADER));
    got.ack().unwrap();
    drop(ch);

    // To a file, the first two and then the rest; each line a whole message.
    let dir = std::env::temp_dir().join(unique_name("lepus-dlq"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("archive.jsonl");
    let path_arg = path.to_str().unwrap();
    for limit in ["2", "5"] {
        let run = lepus(args(&[
            "dlq",
            "move",
            "--amqp-url",
            url,
            "-q",
            &shop.queue,
            "--all",
            "--limit",
            limit,
            "--to-file",
            path_arg,
            "--json",
        ]))
        .await;
        assert!(run.ok, "{}", run.stderr);
    }
    let lines = json_lines(&std::fs::read_to_string(&path).unwrap());
    let ids: Vec<_> = lines
        .iter()
        .map(|l| l["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["f-1", "f-2", "f-3"]);
    let body = base64::engine::general_purpose::STANDARD
        .decode(lines[0]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"order 1");
    assert_eq!(
        lines[0]["headers"]["x-lepus-last-error"],
        "stock service down"
    );
    assert_eq!(lines[0]["properties"]["message_id"], "f-1");
    assert_eq!(lines[0]["dlq"], shop.dlq.as_str());
    shop.wait_dlq(0).await;
    std::fs::remove_dir_all(&dir).unwrap();

    // Purge refuses without --yes, and leaves the queue alone.
    shop.dead_letter("p", &["order 0"]).await;
    let refused = lepus(args(&[
        "dlq",
        "purge",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
    ]))
    .await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("without --yes"),
        "{}",
        refused.stderr
    );
    assert_eq!(ready(&shop.client, &shop.dlq).await, 1);
    let purged = lepus(args(&[
        "dlq",
        "purge",
        "--amqp-url",
        url,
        "-q",
        &shop.queue,
        "--yes",
    ]))
    .await;
    assert!(purged.ok, "{}", purged.stderr);
    assert!(
        purged.stdout.contains("purged 1 message"),
        "{}",
        purged.stdout
    );
    shop.wait_dlq(0).await;
    shop.stop().await;
}
