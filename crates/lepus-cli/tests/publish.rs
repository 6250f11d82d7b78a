//! `lepus publish` when the broker refuses the message: it fails at once with the
//! broker's reply, not at the publish timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::lepus;

#[test]
fn publishing_to_a_missing_exchange_fails_fast_with_the_brokers_reply() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let exchange = lepus_testkit::unique_name("no-such-exchange");
    let started = Instant::now();
    let run = lepus(
        &[
            "publish",
            "--amqp-url",
            broker.url(),
            "-e",
            &exchange,
            "-k",
            "x",
            "--body",
            "hi",
            "--message-id",
            "m-1",
            "--timeout",
            "10",
        ],
        b"",
        Duration::from_secs(30),
    );
    let took = started.elapsed();
    println!("lepus publish to a missing exchange failed after {took:?}");
    assert!(!run.ok);
    assert!(
        run.stdout.contains("m-1 failed")
            && run
                .stdout
                .contains(&format!("NOT_FOUND - no exchange '{exchange}'")),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    // The whole run (start, connect, publish, refusal) is measured well under a second;
    // the bound here only needs to be far below the 10 s publish timeout.
    assert!(took < Duration::from_secs(5), "{took:?}");
}
