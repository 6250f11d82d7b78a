//! The demo, shorter: a few hundred orders through a forced close of every connection, a
//! stock-service outage that trips the breaker, a malformed event, and a broker killed
//! with SIGKILL and restarted; then nothing may be lost, by the services' own stores.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use lepus_testkit::Broker;
use shop::demo::DemoOptions;
use shop::demo::faults::BrokerControl;
use shop::inventory::InventoryOptions;
use shop::notify::NotifyOptions;
use shop::service::Common;
use shop::system::SystemConfig;
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

/// The testkit's node as the demo's broker.
struct TestBroker(Broker);

impl BrokerControl for TestBroker {
    fn kill(&self) -> anyhow::Result<()> {
        Ok(self.0.kill()?)
    }

    fn restart(&self) -> anyhow::Result<()> {
        Ok(self.0.restart()?)
    }

    fn close_all_connections(&self) -> anyhow::Result<()> {
        Ok(self.0.close_all_connections()?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_broker_kill_connection_kill_and_stock_outage() {
    let broker = common::blocking(|| Broker::start().unwrap()).await;
    let url = broker.url();
    let control = Arc::new(TestBroker(broker));
    let dir = tempfile::tempdir().unwrap();
    let count = 300;
    let options = DemoOptions {
        system: SystemConfig {
            common: Common {
                amqp_urls: vec![url],
                names: Names::default(),
                quorum: false,
                data_dir: dir.path().to_path_buf(),
                database_url: None,
            },
            order_listen: common::any_port(),
            inventory_listen: common::any_port(),
            notify_listen: common::any_port(),
            inventory: InventoryOptions::default(),
            notify: NotifyOptions::default(),
        },
        rate: 30.0,
        count,
        faults: true,
        outage: None,
        drain_timeout: Duration::from_secs(90),
        dashboard: None,
        linger: Duration::ZERO,
        dashboard_bound: None,
    };
    let started = std::time::Instant::now();
    let outcome = shop::demo::run(
        options,
        Some(Arc::clone(&control) as Arc<dyn BrokerControl>),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    println!("demo took {:.1} s", started.elapsed().as_secs_f64());
    let r = &outcome.report;
    println!("{}", serde_json::to_string(r).unwrap());
    assert_eq!(outcome.fault_error, None);
    assert_eq!(
        r.lost, 0,
        "unresolved orders: {:?}",
        outcome.state.unresolved
    );
    assert_eq!(r.accepted, count);
    assert_eq!(r.broker_restarts, 1);
    assert_eq!(r.connection_kills, 1);
    assert!(r.breaker_trips >= 1, "the breaker never tripped");
    // Every order decided once, every decision announced once and confirmed.
    let cancelled = r.cancelled_after_recheck;
    assert_eq!(r.reserved + r.rejected + cancelled, count);
    // order.created and the decision of each order, a compensation event for each
    // reservation from the cached snapshot, a cancellation for each it could not cover.
    assert_eq!(
        r.confirmed,
        2 * count + r.compensated + cancelled + cancelled,
        "{:?}",
        outcome.state
    );
    assert_eq!(outcome.state.cancellation_notices, cancelled);
    assert!(r.published >= r.confirmed);
    // Every order ends notified or dead-lettered (undeliverable addresses), plus the
    // malformed event the demo injects.
    let undeliverable = count / shop::demo::load::UNDELIVERABLE_EVERY;
    let errors = &outcome.state.dead_letter_errors;
    assert_eq!(
        r.notified,
        count - undeliverable,
        "dead letters: {errors:#?}"
    );
    assert_eq!(
        r.dead_lettered,
        undeliverable + 1,
        "dead letters: {errors:#?}"
    );
    // Counted per order in the append-only effect logs (rows keyed by order id would
    // hide a duplicate): each order's stock decision and each notification happened
    // exactly once, whatever the broker restart and the connection kill redelivered.
    let state = &outcome.state;
    assert!(
        state.repeated_effects.is_empty(),
        "effects repeated: {:#?}",
        state.repeated_effects
    );
    assert_eq!(state.orders_with_decision_effect, count);
    assert_eq!(state.orders_with_notify_effect, count - undeliverable);
    // Reservations from the cached snapshot were all settled (taken for real, or
    // cancelled) once the stock service came back.
    assert_eq!(outcome.state.compensation_pending, 0);
    assert_eq!(outcome.state.compensation_errors, 0);
    assert!(outcome.state.decided_from_cache > 0);
    drop(control);
}
