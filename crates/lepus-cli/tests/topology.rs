//! `lepus topology export | plan | apply` against real nodes with the management plugin.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::lepus;

const T: Duration = Duration::from_secs(60);

fn two_nodes() -> (lepus_testkit::Broker, lepus_testkit::Broker) {
    let start = || {
        std::thread::spawn(|| {
            lepus_testkit::Broker::builder()
                .management(true)
                .start()
                .unwrap()
        })
    };
    let (a, b) = (start(), start());
    (a.join().unwrap(), b.join().unwrap())
}

#[test]
fn export_apply_export_gives_the_same_file_and_plan_names_an_inequivalent_queue() {
    let (a, b) = two_nodes();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();

    // A consumer's ladder written without a broker, plus an exchange and a binding.
    let ladder = lepus(
        &[
            "topology",
            "export",
            "--consumer",
            "orders",
            "--delays",
            "1,5",
            "-o",
            &path("ladder.json"),
        ],
        b"",
        T,
    );
    assert!(ladder.ok, "{}", ladder.stderr);
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("ladder.json")).unwrap()).unwrap();
    doc["exchanges"] = serde_json::json!([{"name": "shop", "vhost": "/", "type": "topic",
        "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]);
    doc["bindings"] = serde_json::json!([{"source": "shop", "vhost": "/", "destination": "orders",
        "destination_type": "queue", "routing_key": "order.*", "arguments": {}}]);
    std::fs::write(path("seed.json"), doc.to_string()).unwrap();

    let a_url = a.url();
    let seeded = lepus(
        &[
            "--amqp-url",
            &a_url,
            "topology",
            "apply",
            &path("seed.json"),
        ],
        b"",
        T,
    );
    assert!(seeded.ok, "{}{}", seeded.stdout, seeded.stderr);
    assert!(seeded.stdout.contains("0 failed"), "{}", seeded.stdout);

    let a_mgmt = a.management_url().unwrap();
    let first = lepus(
        &[
            "--amqp-url",
            &a_url,
            "--management-url",
            &a_mgmt,
            "topology",
            "export",
            "-o",
            &path("a.json"),
        ],
        b"",
        T,
    );
    assert!(first.ok, "{}", first.stderr);
    let exported = std::fs::read_to_string(path("a.json")).unwrap();
    for name in [
        "\"orders\"",
        "\"orders.retry.1\"",
        "\"orders.retry.2\"",
        "\"orders.dlq\"",
        "\"shop\"",
        "order.*",
    ] {
        assert!(exported.contains(name), "{name} missing from\n{exported}");
    }

    // Apply on a fresh node, export again: the same file.
    let b_url = b.url();
    let applied = lepus(
        &["--amqp-url", &b_url, "topology", "apply", &path("a.json")],
        b"",
        T,
    );
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);
    let b_mgmt = b.management_url().unwrap();
    let second = lepus(
        &[
            "--amqp-url",
            &b_url,
            "--management-url",
            &b_mgmt,
            "topology",
            "export",
            "-o",
            &path("b.json"),
        ],
        b"",
        T,
    );
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(std::fs::read_to_string(path("b.json")).unwrap(), exported);

    // In sync: plan changes nothing and says so.
    let in_sync = lepus(
        &[
            "--amqp-url",
            &b_url,
            "--management-url",
            &b_mgmt,
            "topology",
            "plan",
            &path("a.json"),
        ],
        b"",
        T,
    );
    assert_eq!(
        in_sync.code,
        Some(0),
        "{}{}",
        in_sync.stdout,
        in_sync.stderr
    );
    assert!(
        in_sync.stdout.contains("0 to create, 0 would fail"),
        "{}",
        in_sync.stdout
    );

    // A tier with another delay, and a new queue: plan names both, and why.
    let changed = exported
        .replace("\"x-message-ttl\": 5000", "\"x-message-ttl\": 7000")
        .replace("\"name\": \"orders.dlq\"", "\"name\": \"orders.parking\"");
    assert_ne!(changed, exported);
    std::fs::write(path("changed.json"), &changed).unwrap();
    let plan = lepus(
        &[
            "--amqp-url",
            &b_url,
            "topology",
            "plan",
            &path("changed.json"),
        ],
        b"",
        T,
    );
    assert_eq!(plan.code, Some(4), "{}{}", plan.stdout, plan.stderr);
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("queue 'orders.retry.2'"))
        .unwrap_or_else(|| panic!("no line for the tier in\n{}", plan.stdout));
    assert!(
        line.starts_with('!') && line.contains("x-message-ttl"),
        "{line}"
    );
    assert!(
        plan.stdout.contains("+ queue 'orders.parking': create"),
        "{}",
        plan.stdout
    );
    // Plan changed nothing.
    let after = lepus(
        &[
            "--amqp-url",
            &b_url,
            "--management-url",
            &b_mgmt,
            "topology",
            "export",
        ],
        b"",
        T,
    );
    assert_eq!(after.stdout, exported);

    // The management API adds the tiers' delays and the broker's rates to `status`.
    let status = lepus(
        &[
            "--amqp-url",
            &b_url,
            "--management-url",
            &b_mgmt,
            "status",
            "-q",
            "orders",
            "--json",
            "--sample",
            "0.2",
        ],
        b"",
        T,
    );
    assert!(status.ok, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let rows = status["queues"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{status}");
    assert_eq!(rows[1]["delay_ms"], 1000, "{status}");
    assert_eq!(rows[2]["delay_ms"], 5000, "{status}");
    assert!(rows[0]["in_per_s"].is_f64(), "{status}");

    // doctor with the management API: the cluster's nodes, alarms and the clock.
    let doctor = lepus(
        &[
            "--amqp-url",
            &b_url,
            "--management-url",
            &b_mgmt,
            "doctor",
            "--json",
        ],
        b"",
        T,
    );
    let report: serde_json::Value = serde_json::from_str(doctor.stdout.trim()).unwrap();
    assert_eq!(doctor.code, Some(0), "{report:#}");
    let cluster = report["cluster"].as_array().unwrap();
    let status = |name: &str| {
        cluster
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        status("cluster.nodes").as_deref(),
        Some("pass"),
        "{report:#}"
    );
    assert_eq!(
        status("cluster.alarms").as_deref(),
        Some("pass"),
        "{report:#}"
    );
    assert_eq!(status("clock").as_deref(), Some("pass"), "{report:#}");
}
