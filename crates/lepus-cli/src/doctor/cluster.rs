//! The cluster-wide checks, from the management API: the nodes, their alarms, and how far
//! this machine's clock is from the broker's (the API's `Date` header; AMQP carries no
//! time).

use serde_json::Value;

use super::tls::now_secs;
use super::{Check, DoctorArgs, MAX_SKEW_SECS};
use crate::mgmt::Management;

/// The cluster's nodes, their alarms, and the clock, from the management API.
pub(super) async fn management(url: &str, args: &DoctorArgs) -> Vec<Check> {
    let _ = args;
    let mgmt = match Management::new(url, crate::connect::global()) {
        Ok(m) => m,
        Err(err) => {
            return vec![Check::fail(
                "management",
                format!("{err:#}"),
                "fix --management-url",
            )];
        }
    };
    let (nodes, date) = match mgmt.get_dated("/nodes").await {
        Ok(r) => r,
        Err(err) => {
            return vec![Check::fail(
                "management",
                format!("{err:#}"),
                "is the management plugin enabled (rabbitmq-plugins enable rabbitmq_management) and the URL's user a monitoring user?",
            )];
        }
    };
    let mut checks = Vec::new();
    let list = nodes.as_array().cloned().unwrap_or_default();
    let mut names = Vec::new();
    let mut down = Vec::new();
    let mut alarms = Vec::new();
    for node in &list {
        let name = node
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        if node.get("running").and_then(Value::as_bool) == Some(false) {
            down.push(name.clone());
        }
        if node.get("mem_alarm").and_then(Value::as_bool) == Some(true) {
            alarms.push(format!("{name}: memory alarm"));
        }
        if node.get("disk_free_alarm").and_then(Value::as_bool) == Some(true) {
            alarms.push(format!("{name}: disk alarm"));
        }
        names.push(name);
    }
    checks.push(if down.is_empty() {
        Check::pass(
            "cluster.nodes",
            format!("{} node(s) running: {}", names.len(), names.join(", ")),
        )
    } else {
        Check::warn(
            "cluster.nodes",
            format!(
                "{} of {} node(s) not running: {}",
                down.len(),
                names.len(),
                down.join(", ")
            ),
            "start the nodes, or remove them from the cluster (rabbitmqctl forget_cluster_node)",
        )
    });
    checks.push(if alarms.is_empty() {
        Check::pass("cluster.alarms", "no memory or disk alarm on any node")
    } else {
        Check::fail(
            "cluster.alarms",
            alarms.join("; "),
            "publishers are blocked: free memory or disk, or raise the limits",
        )
    });
    checks.push(match date {
        Some(server) => {
            let skew = now_secs() - server;
            if skew.abs() > MAX_SKEW_SECS {
                Check::warn(
                    "clock",
                    format!("this machine's clock is {skew:+} s off the broker's"),
                    "run NTP (chrony, systemd-timesyncd) on both: failure timestamps and TTL reasoning depend on it",
                )
            } else {
                Check::pass("clock", format!("within {MAX_SKEW_SECS} s of the broker's ({skew:+} s)"))
            }
        }
        None => Check::skip("clock", "the management API sent no Date header"),
    });
    checks
}
