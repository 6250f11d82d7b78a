//! The drill's short set, as CI runs it: a quorum queue's leader killed, the client's
//! node killed, the client's node blackholed behind the proxy. Not a message may be
//! lost, and no publish may fail: in each a majority stays reachable and the fault is
//! shorter than the publish timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lepus_drill::env::Env;
use lepus_drill::report::{Summary, table};
use lepus_drill::scenario::{self, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_set_loses_nothing_and_fails_nothing() {
    let opts = RunOptions {
        out_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill"),
        ..RunOptions::default()
    };
    let env = Env::start(2).await.expect("start the lab");
    let mut rows = Vec::new();
    for s in scenario::short_set() {
        let row = scenario::run(&env, &s, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.full_name()));
        rows.push(row);
    }
    drop(env);
    eprintln!("{}", table(&rows));
    eprintln!("{}", Summary::new(&rows).json());
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row.sent > 0, "{}: nothing sent", row.name);
        assert_eq!(row.lost, 0, "{}: lost messages", row.name);
        assert_eq!(row.failed, 0, "{}: failed publishes", row.name);
        assert_eq!(row.unanswered, 0, "{}: unanswered publishes", row.name);
        assert!(row.passed());
    }
}
