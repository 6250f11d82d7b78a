//! The demo's dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `scripts/install-chromium`) loads the page while a short demo runs, and
//! the DOM it renders after the page's JavaScript has run must show the figures.
//!
//! Without `/usr/bin/chromium` the test fails and says how to install it: a browser test
//! that passes without a browser would claim what it never checked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shop::demo::DemoOptions;
use shop::inventory::InventoryOptions;
use shop::notify::NotifyOptions;
use shop::service::Common;
use shop::system::SystemConfig;
use shop::topology::Names;
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The text of the element with `id` in `dom` (up to its first child tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let rest = &dom[start..];
    let open_end = rest.find('>').unwrap() + 1;
    let rest = &rest[open_end..];
    &rest[..rest.find('<').unwrap()]
}

fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("90")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-quic",
            "--no-first-run",
            "--disable-sync",
            "--window-size=1400,1100",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_figures_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-chromium (scripts/test does)"
    );
    let broker = common::blocking(|| lepus_testkit::shared_broker().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let names = Names::new(lepus_testkit::unique_name("shop"));
    let (tx, mut bound) = tokio::sync::mpsc::unbounded_channel();
    let options = DemoOptions {
        system: SystemConfig {
            common: Common {
                amqp_urls: vec![broker.url().to_string()],
                names: names.clone(),
                quorum: false,
                data_dir: dir.path().join("data"),
                database_url: None,
            },
            order_listen: common::any_port(),
            inventory_listen: common::any_port(),
            notify_listen: common::any_port(),
            inventory: InventoryOptions::default(),
            notify: NotifyOptions::default(),
        },
        rate: 40.0,
        count: 120,
        faults: false,
        outage: None,
        drain_timeout: Duration::from_secs(60),
        dashboard: Some(common::any_port()),
        linger: Duration::from_secs(120),
        dashboard_bound: Some(tx),
    };
    let cancel = CancellationToken::new();
    let demo = tokio::spawn(shop::demo::run(options, None, cancel.clone()));
    let addr = tokio::time::timeout(Duration::from_secs(60), bound.recv())
        .await
        .expect("the dashboard did not start")
        .unwrap();

    // Wait until the state has figures (by the API), then let the browser render them.
    let what = "20 accepted orders on the dashboard's API";
    common::wait_until(what, Duration::from_secs(60), async || {
        let state =
            shop::httpc::request(addr, "GET", "/api/state", None, &[], Duration::from_secs(5))
                .await
                .unwrap()
                .json()
                .unwrap();
        state["totals"]["accepted"].as_u64().unwrap_or(0) >= 20
    })
    .await;

    let url = format!("http://{addr}/");
    let profile = dir.path().join("chromium-profile");
    let dump = {
        let (profile, url) = (profile.clone(), url.clone());
        common::blocking(move || chromium(&profile, &["--dump-dom", &url])).await
    };
    assert!(
        dump.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dom = String::from_utf8(dump.stdout).unwrap();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page's script never filled the figures:\n{dom}"
    );
    let accepted: u64 = text_of(&dom, "accepted").trim().parse().unwrap();
    assert!(accepted >= 20, "accepted shows {accepted}");
    let rate: f64 = text_of(&dom, "orders-per-sec").trim().parse().unwrap();
    assert!(rate >= 0.0);
    assert_eq!(text_of(&dom, "breaker-state"), "closed");
    for figure in [
        "confirmed",
        "reserved",
        "notified",
        "dead-lettered",
        "in-flight",
    ] {
        let text = text_of(&dom, figure);
        assert!(
            text.trim().parse::<u64>().is_ok(),
            "#{figure} shows {text:?}"
        );
    }
    for queue in names.all_queues() {
        assert!(
            dom.contains(&format!("<td>{queue}</td>")),
            "queue {queue} missing"
        );
    }
    assert!(
        dom.matches("state-ok\">Connected</td>").count() >= 5,
        "connections not shown"
    );

    // A screenshot, for people (and proof the page renders, not only its DOM).
    let shot = dir.path().join("dashboard.png");
    let arg = format!("--screenshot={}", shot.display());
    let out = common::blocking(move || chromium(&profile, &[&arg, &url])).await;
    assert!(out.status.success());
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    if let Ok(keep) = std::env::var("SHOP_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    cancel.cancel();
    let outcome = demo.await.unwrap().unwrap();
    assert_eq!(outcome.report.accepted, outcome.state.accepted);
}
