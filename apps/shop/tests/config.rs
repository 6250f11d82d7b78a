//! Every service flag also reads from a `SHOP_...` environment variable (how containers
//! are configured), and `--help` says which.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Command, Stdio};
use std::time::Duration;

const SHOP: &str = env!("CARGO_BIN_EXE_shop");

fn help(sub: &str) -> String {
    let out = Command::new(SHOP).args([sub, "--help"]).output().unwrap();
    assert!(out.status.success(), "shop {sub} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_names_an_environment_variable_for_every_flag() {
    for sub in ["order", "inventory", "notify", "all", "demo"] {
        let text = help(sub);
        // One block per flag: its line and, when clap puts it there, the description
        // on the lines below.
        let mut flags: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.trim_start().starts_with("--") || line.trim_start().starts_with("-h") {
                flags.push(line.to_string());
            } else if let Some(last) = flags.last_mut() {
                last.push_str(line);
            }
        }
        flags.retain(|f| !f.contains("--help"));
        assert!(flags.len() >= 6, "shop {sub}: too few flags in\n{text}");
        for flag in flags {
            assert!(
                flag.contains("[env: SHOP_"),
                "shop {sub}: no env for {flag}"
            );
        }
    }
    // The broker URL carries a password: its value is never echoed.
    assert!(help("order").contains("[env: SHOP_AMQP_URL]"));
}

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_service_is_configured_from_the_environment_alone() {
    let broker = tokio::task::spawn_blocking(|| lepus_testkit::shared_broker().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("order.log");
    let _child = Running(
        Command::new(SHOP)
            .arg("order")
            .env("SHOP_AMQP_URL", broker.url())
            .env("SHOP_LISTEN", addr.to_string())
            .env("SHOP_DATA_DIR", &data)
            .env("SHOP_NAMESPACE", lepus_testkit::unique_name("shopenv"))
            .env("SHOP_LOG_FILE", &log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready means connected to the broker SHOP_AMQP_URL names, on the port SHOP_LISTEN
    // names.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = shop::httpc::request(
            addr,
            "GET",
            "/health/ready",
            None,
            &[],
            Duration::from_secs(2),
        )
        .await
        .map(|r| r.status)
        .unwrap_or(0);
        if ready == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shop order never became ready on {addr} (last status {ready})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(data.join("order.db").exists(), "SHOP_DATA_DIR was not used");
    assert!(log.exists(), "SHOP_LOG_FILE was not used");
}
