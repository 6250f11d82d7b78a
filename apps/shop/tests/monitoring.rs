//! The monitoring that ships with shop (apps/shop/deploy): the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), and every query of
//! the Grafana dashboard names metrics that a real scrape of the three services, run as
//! separate processes against a real broker, contains.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SHOP: &str = env!("CARGO_BIN_EXE_shop");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): install it with scripts/install-promtool")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every failure the system has is covered by a rule, and every rule by a test.
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy().join("prometheus/alerts_test.yml")).unwrap();
    for alert in [
        "ShopPublishFailures",
        "ShopOutboxPublishFailing",
        "ShopConfirmLatencyHigh",
        "ShopOutboxBacklogOld",
        "ShopDeadLettersGrowing",
        "ShopQueueHasNoConsumers",
        "ShopQueueGrowing",
        "ShopBreakerOpen",
        "ShopReconnectsFlapping",
        "ShopBrokerConnectionDown",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "no rule {alert}"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no test of {alert}"
        );
    }
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// aggregations, keywords, label names (in `{...}`, `by (...)` and the like), strings,
/// durations or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop strings, label matchers and range/subquery brackets first.
    let mut plain = String::new();
    let (mut quote, mut depth_brace, mut depth_bracket) = (None, 0u32, 0u32);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace = depth_brace.saturating_sub(1),
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket = depth_bracket.saturating_sub(1),
            (None, c) if depth_brace == 0 && depth_bracket == 0 => plain.push(c),
            _ => {}
        }
        if quote.is_none() && depth_brace == 0 && depth_bracket == 0 && c != ']' && c != '}' {
            continue;
        }
        plain.push(' ');
    }
    // Tokens: identifiers, and everything else as single characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut ident = String::new();
    for c in plain.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || (c == '.' && !ident.is_empty()) {
            ident.push(c);
        } else {
            if !ident.is_empty() {
                tokens.push(std::mem::take(&mut ident));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    if !ident.is_empty() {
        tokens.push(ident);
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        let next = tokens.get(i + 1).map(String::as_str);
        if LABEL_LISTS.contains(&token.as_str()) && next == Some("(") {
            // Skip the label list.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if matches!(next, Some("(" | "by" | "without")) {
            // A function or aggregation (`sum by (x) (...)` has its clause first).
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !KEYWORDS.contains(&token.to_ascii_lowercase().as_str())
            && !token.starts_with('$')
        {
            names.insert(token.clone());
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (exchange, le) (rate(lepus_confirm_latency_seconds_bucket{kind=\"work\", a=~\"x|y\"}[$__rate_interval]))) > 0.5 and on (queue) max by (queue) (shop_queue_messages) / ignoring (x) group_left (y) foo:bar offset 5m",
    );
    let expected: BTreeSet<String> = [
        "lepus_confirm_latency_seconds_bucket",
        "shop_queue_messages",
        "foo:bar",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
}

/// The dashboard's queries, as (panel title, expr).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("grafana/shop.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<serde_json::Value> = dashboard["panels"].as_array().unwrap().clone();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default().to_string();
            queries.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    queries
}

/// Kills the child when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> Option<shop::httpc::Response> {
    shop::httpc::request(addr, "GET", path, None, &[], Duration::from_secs(5))
        .await
        .ok()
}

async fn wait_ready(addr: SocketAddr, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while get(addr, "/health/ready").await.map(|r| r.status) != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "{what} not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Metric names in a Prometheus text scrape.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_metrics_the_services_export() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "only {} queries", queries.len());
    let mut wanted = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title}: no metric in {expr}");
        wanted.extend(names);
    }

    let broker = tokio::task::spawn_blocking(|| lepus_testkit::shared_broker().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let namespace = lepus_testkit::unique_name("shopmon");
    let spawn = |service: &str, addr: SocketAddr| {
        Running(
            Command::new(SHOP)
                .arg(service)
                .env("SHOP_AMQP_URL", broker.url())
                .env("SHOP_LISTEN", addr.to_string())
                .env("SHOP_DATA_DIR", dir.path().join("data"))
                .env("SHOP_NAMESPACE", &namespace)
                .env("SHOP_LOG_FILE", dir.path().join(format!("{service}.log")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // Consumers first, so that their queues exist before orders flow.
    let (notify_addr, inventory_addr, order_addr) = (free_addr(), free_addr(), free_addr());
    let _notify = spawn("notify", notify_addr);
    let _inventory = spawn("inventory", inventory_addr);
    wait_ready(notify_addr, "notify").await;
    wait_ready(inventory_addr, "inventory").await;
    let _order = spawn("order", order_addr);
    wait_ready(order_addr, "order").await;

    for i in 0..5 {
        let body = serde_json::json!({
            "customer": format!("customer {i}"),
            "email": format!("c{i}@example.org"),
            "lines": [{"sku": "mug", "qty": 1}],
        });
        let resp = shop::httpc::request(
            order_addr,
            "POST",
            "/orders",
            Some(&body),
            &[],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
    }

    // Scrape until every name is there (the queue gauges appear on the first poll after
    // the queues exist, the histograms after the first notifications), or the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut scraped = BTreeSet::new();
        for addr in [order_addr, inventory_addr, notify_addr] {
            if let Some(resp) = get(addr, "/metrics").await {
                assert_eq!(resp.status, 200);
                scraped.extend(scraped_names(&resp.text()));
            }
        }
        let missing: Vec<&String> = wanted.difference(&scraped).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard reads metrics no service exports: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
