//! The zoned system end to end, with a short drill: three zones with a RabbitMQ node
//! each, two replicas of every service as `shop` processes in the zones, PostgreSQL,
//! HAProxy in front of the order replicas; a short load through HAProxy while a zone is
//! cut off, a node is killed, one replica of each service is killed and the stock service
//! turns slow.
//!
//! Needs root, `ip`, `haproxy` and PostgreSQL (scripts/test installs them); a missing
//! one fails the test. The goals stated as numbers (availability, accept p99) are
//! measured by `scripts/demo --zones 3`, not asserted here; this test asserts what must
//! hold however slow the machine is: every order accepted through the front door,
//! nothing lost, every replica did work, every fault happened and was recovered from,
//! every cached decision settled, and dead letters left in their queues.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use shop::zones::{ZoneOptions, run};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zoned_system_survives_a_short_drill() {
    let dir = tempfile::tempdir().unwrap();
    let count = 500;
    let options = ZoneOptions {
        program: env!("CARGO_BIN_EXE_shop").into(),
        dir: dir.path().join("zones"),
        namespace: lepus_testkit::unique_name("shopz"),
        rate: 20.0,
        count,
        // Longer than the lab's net_ticktime (5 s, a silent peer noticed after 3.75-6.25
        // s): a cut inside that window is noticed by some nodes and not others, and the
        // cluster may then not heal on its own (two CI runs of 5 s cuts waited 90 s for
        // node 1 to see the others again). Past it, the minority pauses and resumes.
        cut_for: Duration::from_secs(10),
        outage_for: Duration::from_secs(4),
        drain_timeout: Duration::from_secs(90),
        front_door: "127.0.0.1:0".parse().unwrap(),
    };
    let outcome = run(options, CancellationToken::new()).await.unwrap();
    let r = &outcome.report;
    let events = &outcome.events;
    println!("{}", serde_json::to_string_pretty(r).unwrap());
    assert_eq!(r.zone_cuts, 1, "drill: {events:#?}");
    assert_eq!(r.node_kills, 1, "drill: {events:#?}");
    assert_eq!(r.replica_kills, 3, "drill: {events:#?}");
    // Every order the client sent was accepted through HAProxy (retried with its
    // Idempotency-Key when a request failed), once.
    assert_eq!(r.base.accepted, count, "drill: {events:#?}");
    assert!(r.attempted >= count);
    assert_eq!(r.base.lost, 0, "unresolved: {:?}", outcome.state.unresolved);
    assert_eq!(
        r.base.reserved + r.base.rejected + r.base.cancelled_after_recheck,
        count
    );
    // Undeliverable addresses stay in the notification DLQ, for `lepus dlq`.
    let undeliverable = count / shop::demo::load::UNDELIVERABLE_EVERY;
    assert!(
        r.base.dead_lettered >= undeliverable,
        "{:#?}",
        outcome.state.dead_letter_errors
    );
    assert_eq!(r.base.notified + undeliverable, count);
    // Both replicas of every service did work.
    for service in ["order", "inventory", "notify"] {
        let replicas = &r.replicas[service];
        assert_eq!(replicas.len(), 2, "{service}: {replicas:?}");
        for (name, handled) in replicas {
            assert!(*handled > 0, "{name} handled nothing: {:?}", r.replicas);
        }
    }
    // Every reservation from the cached snapshot settled; cancellations told.
    assert_eq!(outcome.state.compensation_pending, 0);
    assert_eq!(outcome.state.compensation_errors, 0);
    assert_eq!(
        outcome.state.cancellation_notices,
        r.base.cancelled_after_recheck
    );
    assert!(
        outcome
            .missed
            .iter()
            .all(|m| m.starts_with("availability") || m.starts_with("accept p99")),
        "goals missed: {:#?}\ndrill: {events:#?}",
        outcome.missed
    );
}
