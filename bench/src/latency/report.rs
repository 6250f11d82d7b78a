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
    /// Every round of a client merged into one distribution: a p99 over all its
    /// recorded messages, steadier than the median of the rounds' p99s when the rounds
    /// are short (the broker's own stalls land in some rounds and not in others).
    pooled: Vec<(Client, Option<Measured>)>,
}

impl LatencyResults {
    pub fn new(clients: &[Client], rate: f64, recorded: u64) -> Self {
        LatencyResults {
            rate,
            recorded,
            rows: clients.iter().map(|&c| (c, Vec::new())).collect(),
            pooled: clients.iter().map(|&c| (c, None)).collect(),
        }
    }

    /// Adds one run's figures; returns them for the progress line.
    pub fn push(&mut self, client: Client, m: &Measured) -> [f64; 8] {
        let f = figures(m);
        if let Some((_, rounds)) = self.rows.iter_mut().find(|(c, _)| *c == client) {
            rounds.push(f);
        }
        if let Some((_, pooled)) = self.pooled.iter_mut().find(|(c, _)| *c == client) {
            match pooled {
                Some(all) => {
                    // Same bounds and precision for every run: adding cannot fail.
                    let _ = all.e2e.add(&m.e2e);
                    let _ = all.confirm.add(&m.confirm);
                    let _ = all.send_lag.add(&m.send_lag);
                }
                None => {
                    *pooled = Some(Measured {
                        e2e: m.e2e.clone(),
                        confirm: m.confirm.clone(),
                        send_lag: m.send_lag.clone(),
                    })
                }
            }
        }
        f
    }

    /// Figure `index` of `client`'s rounds pooled.
    fn pooled(&self, client: Client, index: usize) -> Option<f64> {
        let (_, pooled) = self.pooled.iter().find(|(c, _)| *c == client)?;
        figures(pooled.as_ref()?).get(index).copied()
    }

    /// The peer with the lowest pooled figure `index`, and `client`'s ratio to it.
    fn pooled_ratio_to_best(&self, client: Client, index: usize) -> Option<(f64, Client)> {
        let (peer, best) = [Client::Amqprs, Client::Lapin]
            .into_iter()
            .filter_map(|c| Some((c, self.pooled(c, index)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        Some((self.pooled(client, index)? / best, peer))
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
        let _ = writeln!(out, "all rounds pooled (us)");
        for (client, _) in &self.rows {
            let _ = write!(out, "{:<11}", client.name());
            for index in 0..KEYS.len() {
                let v = self.pooled(*client, index).unwrap_or(f64::NAN);
                let _ = write!(out, " {v:>16.0}");
            }
            out.push('\n');
        }
        for (index, what) in [(1, "e2e p99"), (5, "confirm p99")] {
            for client in [Client::LepusAmqp, Client::Lepus] {
                if let Some((r, peer)) = self.pooled_ratio_to_best(client, index) {
                    let _ = writeln!(
                        out,
                        "{} / best peer ({}) {what}, pooled: {r:.2}",
                        client.name(),
                        peer.name()
                    );
                }
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
        if let Some((r, _)) = self.pooled_ratio_to_best(Client::Lepus, 1) {
            let _ = writeln!(
                out,
                "target: lepus e2e p99 <= best peer's (issue 16), pooled: {r:.2} {}",
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
            let pooled: Map<String, Value> = KEYS
                .iter()
                .enumerate()
                .map(|(index, key)| {
                    (
                        (*key).to_owned(),
                        crate::report::number(self.pooled(*client, index)),
                    )
                })
                .chain(
                    [(1, "e2e_p99"), (5, "confirm_p99")]
                        .into_iter()
                        .filter_map(|(index, key)| {
                            let (r, peer) = self.pooled_ratio_to_best(*client, index)?;
                            Some([
                                (format!("{key}_vs_best_peer"), json!(r)),
                                (format!("{key}_best_peer"), json!(peer.name())),
                            ])
                        })
                        .flatten(),
                )
                .collect();
            entry.insert("pooled".into(), Value::Object(pooled));
            top.insert(client.name().into(), Value::Object(entry));
        }
        top.insert(
            "plan".into(),
            json!({ "rate_msgs_per_s": self.rate, "recorded_per_run": self.recorded }),
        );
        let mut targets = Map::new();
        if let Some((r, peer)) = self.ratio_to_best(Client::Lepus, 1) {
            targets.insert(
                "lepus_e2e_p99_vs_best_peer".into(),
                json!({ "ratio": r, "best_peer": peer.name(), "bound": 1.0, "at_least": false, "met": r <= 1.0 }),
            );
        }
        if let Some((r, peer)) = self.pooled_ratio_to_best(Client::Lepus, 1) {
            targets.insert(
                "lepus_e2e_p99_pooled_vs_best_peer".into(),
                json!({ "ratio": r, "best_peer": peer.name(), "bound": 1.0, "at_least": false, "met": r <= 1.0 }),
            );
        }
        if !targets.is_empty() {
            top.insert("targets".into(), Value::Object(targets));
        }
        Value::Object(top)
    }
}
