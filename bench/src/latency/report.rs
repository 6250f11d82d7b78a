//! The latency arm's medians, ratios, table and JSON object.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use super::Measured;
use crate::clients::Client;

/// The figures of one run, in microseconds; keys are the JSON keys.
const KEYS: [&str; 8] = [
    "e2e_p50_us",
    "e2e_p99_us",
    "e2e_p999_us",
    "e2e_max_us",
    "confirm_p50_us",
    "confirm_p99_us",
    "confirm_p999_us",
    "send_lag_p99_us",
];

fn figures(m: &Measured) -> [f64; 8] {
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64;
    [
        q(&m.e2e, 0.5),
        q(&m.e2e, 0.99),
        q(&m.e2e, 0.999),
        m.e2e.max() as f64,
        q(&m.confirm, 0.5),
        q(&m.confirm, 0.99),
        q(&m.confirm, 0.999),
        q(&m.send_lag, 0.99),
    ]
}

pub struct LatencyResults {
    rate: f64,
    recorded: u64,
    rows: Vec<(Client, Vec<[f64; 8]>)>,
}

impl LatencyResults {
    pub fn new(clients: &[Client], rate: f64, recorded: u64) -> Self {
        LatencyResults {
            rate,
            recorded,
            rows: clients.iter().map(|&c| (c, Vec::new())).collect(),
        }
    }

    /// Adds one run's figures; returns them for the progress line.
    pub fn push(&mut self, client: Client, m: &Measured) -> [f64; 8] {
        let f = figures(m);
        if let Some((_, rounds)) = self.rows.iter_mut().find(|(c, _)| *c == client) {
            rounds.push(f);
        }
        f
    }

    fn median(&self, client: Client, index: usize) -> Option<f64> {
        let (_, rounds) = self.rows.iter().find(|(c, _)| *c == client)?;
        crate::report::median(
            rounds
                .iter()
                .filter_map(|f| f.get(index).copied())
                .collect(),
        )
    }

    /// The peer (amqprs or lapin) with the lowest median of figure `index`.
    fn best_peer(&self, index: usize) -> Option<(Client, f64)> {
        [Client::Amqprs, Client::Lapin]
            .into_iter()
            .filter_map(|c| Some((c, self.median(c, index)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn ratio_to_best(&self, client: Client, index: usize) -> Option<(f64, Client)> {
        let (peer, best) = self.best_peer(index)?;
        Some((self.median(client, index)? / best, peer))
    }

    pub fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "latency at {:.0} msg/s, {} recorded messages per run, medians of the rounds (us)",
            self.rate, self.recorded
        );
        let _ = write!(out, "{:<11}", "client");
        for key in KEYS {
            let _ = write!(out, " {:>16}", key.trim_end_matches("_us"));
        }
        out.push('\n');
        for (client, _) in &self.rows {
            let _ = write!(out, "{:<11}", client.name());
            for index in 0..KEYS.len() {
                let v = self.median(*client, index).unwrap_or(f64::NAN);
                let _ = write!(out, " {v:>16.0}");
            }
            out.push('\n');
        }
        for (index, what) in [(1, "e2e p99"), (5, "confirm p99")] {
            for client in [Client::LepusAmqp, Client::Lepus] {
                if let Some((r, peer)) = self.ratio_to_best(client, index) {
                    let _ = writeln!(
                        out,
                        "{} / best peer ({}) {what}: {r:.2}",
                        client.name(),
                        peer.name()
                    );
                }
            }
        }
        if let Some((r, _)) = self.ratio_to_best(Client::Lepus, 1) {
            let _ = writeln!(
                out,
                "target: lepus e2e p99 <= best peer's (issue 16): {r:.2} {}",
                if r <= 1.0 { "met" } else { "NOT met" }
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut top = Map::new();
        for (client, rounds) in &self.rows {
            let mut entry = Map::new();
            for (index, key) in KEYS.iter().enumerate() {
                entry.insert(
                    (*key).into(),
                    crate::report::number(self.median(*client, index)),
                );
            }
            let rounds: Vec<Value> = rounds
                .iter()
                .map(|f| {
                    Value::Object(
                        KEYS.iter()
                            .zip(f.iter())
                            .map(|(k, v)| ((*k).to_owned(), json!(v)))
                            .collect(),
                    )
                })
                .collect();
            entry.insert("rounds".into(), Value::Array(rounds));
            let mut ratios = Map::new();
            for (index, key) in [(1, "e2e_p99"), (5, "confirm_p99")] {
                if let Some((r, peer)) = self.ratio_to_best(*client, index) {
                    ratios.insert(format!("{key}_vs_best_peer"), json!(r));
                    ratios.insert(format!("{key}_best_peer"), json!(peer.name()));
                }
            }
            entry.insert("ratios".into(), Value::Object(ratios));
            top.insert(client.name().into(), Value::Object(entry));
        }
        top.insert(
            "plan".into(),
            json!({ "rate_msgs_per_s": self.rate, "recorded_per_run": self.recorded }),
        );
        if let Some((r, peer)) = self.ratio_to_best(Client::Lepus, 1) {
            top.insert(
                "targets".into(),
                json!({ "lepus_e2e_p99_vs_best_peer": {
                    "ratio": r, "best_peer": peer.name(), "bound": 1.0, "at_least": false, "met": r <= 1.0
                }}),
            );
        }
        Value::Object(top)
    }
}
