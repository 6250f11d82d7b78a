//! Medians, tables and the JSON object.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::clients::Client;
use crate::observability::{Arm, Mode};
use crate::run::Figures;

/// One figure: its JSON key, its table title, and whether more is better.
struct Figure {
    key: &'static str,
    title: &'static str,
    short: &'static str,
    higher_is_better: bool,
    get: fn(&Figures) -> f64,
}

const FIGURES: [Figure; 4] = [
    Figure {
        key: "publish_msgs_per_s",
        title: "publish throughput, msg/s (higher is better)",
        short: "publish msg/s",
        higher_is_better: true,
        get: |f| f.publish_msgs_per_s,
    },
    Figure {
        key: "consume_msgs_per_s",
        title: "consume throughput, msg/s (higher is better)",
        short: "consume msg/s",
        higher_is_better: true,
        get: |f| f.consume_msgs_per_s,
    },
    Figure {
        key: "publish_cpu_us_per_msg",
        title: "client CPU while publishing, us/msg (lower is better)",
        short: "publish CPU/msg",
        higher_is_better: false,
        get: |f| f.publish_cpu_us_per_msg,
    },
    Figure {
        key: "consume_cpu_us_per_msg",
        title: "client CPU while consuming, us/msg (lower is better)",
        short: "consume CPU/msg",
        higher_is_better: false,
        get: |f| f.consume_cpu_us_per_msg,
    },
];

/// The load around each phase (`--broker-pid`, `/proc/stat`): reported beside the four
/// figures, never in a ratio or a target.
const LOAD_FIGURES: [Figure; 6] = [
    Figure {
        key: "publish_broker_cpu_pct",
        title: "broker CPU while publishing, % of one core (--broker-pid)",
        short: "publish broker CPU %",
        higher_is_better: false,
        get: |f| f.publish_load.broker_cpu_pct,
    },
    Figure {
        key: "consume_broker_cpu_pct",
        title: "broker CPU while consuming, % of one core (--broker-pid)",
        short: "consume broker CPU %",
        higher_is_better: false,
        get: |f| f.consume_load.broker_cpu_pct,
    },
    Figure {
        key: "publish_broker_cpu_us_per_msg",
        title: "broker CPU while publishing, us/msg (--broker-pid)",
        short: "publish broker CPU/msg",
        higher_is_better: false,
        get: |f| f.publish_load.broker_cpu_us_per_msg,
    },
    Figure {
        key: "consume_broker_cpu_us_per_msg",
        title: "broker CPU while consuming, us/msg (--broker-pid)",
        short: "consume broker CPU/msg",
        higher_is_better: false,
        get: |f| f.consume_load.broker_cpu_us_per_msg,
    },
    Figure {
        key: "publish_machine_busy_pct",
        title: "machine busy while publishing, % of all cores (everyone's work)",
        short: "publish machine busy %",
        higher_is_better: false,
        get: |f| f.publish_load.machine_busy_pct,
    },
    Figure {
        key: "consume_machine_busy_pct",
        title: "machine busy while consuming, % of all cores (everyone's work)",
        short: "consume machine busy %",
        higher_is_better: false,
        get: |f| f.consume_load.machine_busy_pct,
    },
];

/// One row of the report: a client, what observability it ran with, and its name (the
/// table row and the JSON key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub client: Client,
    pub arm: Arm,
    pub label: &'static str,
}

/// `lepus` with lepus's metrics on (`--compare-observability`).
pub const LEPUS_METRICS: &str = "lepus+metrics";
/// `lepus` with lepus's metrics and tracing on, sampled (`--compare-observability`).
pub const LEPUS_FULL: &str = "lepus+metrics+tracing";
/// `lepus` with lepus's metrics and tracing on, every trace sampled
/// (`--compare-observability`).
pub const LEPUS_FULL_ALL: &str = "lepus+metrics+tracing-all";

impl Row {
    /// The rows `clients` make in `mode`: the `lepus` client makes four in `Compare`
    /// mode (off, metrics, metrics and sampled tracing, metrics and tracing of every
    /// message) and runs traced in `On` mode; every other
    /// client makes one row, always with observability off.
    pub fn all(clients: &[Client], mode: Mode) -> Vec<Row> {
        let mut rows = Vec::new();
        for &client in clients {
            let row = |arm, label| Row { client, arm, label };
            match (client, mode) {
                (Client::Lepus, Mode::Compare) => {
                    rows.push(row(Arm::Off, client.name()));
                    rows.push(row(Arm::Metrics, LEPUS_METRICS));
                    rows.push(row(Arm::Full, LEPUS_FULL));
                    rows.push(row(Arm::FullAll, LEPUS_FULL_ALL));
                }
                (Client::Lepus, Mode::On) => rows.push(row(Arm::Full, client.name())),
                _ => rows.push(row(Arm::Off, client.name())),
            }
        }
        rows
    }
}

/// A goal from the issues, checked on the medians: `row`'s figure divided by `base`'s.
struct Target {
    key: &'static str,
    text: &'static str,
    row: &'static str,
    base: &'static str,
    figure: usize,
    bound: f64,
    at_least: bool,
}

const TARGETS: [Target; 6] = [
    Target {
        key: "lepus_publish_msgs_per_s_vs_lepus_amqp",
        text: "lepus / lepus-amqp publish msg/s >= 0.95 (issue 5)",
        row: "lepus",
        base: "lepus-amqp",
        figure: 0,
        bound: 0.95,
        at_least: true,
    },
    Target {
        key: "lepus_publish_cpu_vs_amqprs",
        text: "lepus / amqprs publish CPU/msg <= 1.00 (issue 5)",
        row: "lepus",
        base: "amqprs",
        figure: 2,
        bound: 1.0,
        at_least: false,
    },
    Target {
        key: "lepus_publish_cpu_vs_amqprs_issue16",
        text: "lepus / amqprs publish CPU/msg <= 0.50 (issue 16)",
        row: "lepus",
        base: "amqprs",
        figure: 2,
        bound: 0.5,
        at_least: false,
    },
    Target {
        key: "lepus_consume_cpu_vs_amqprs_issue16",
        text: "lepus / amqprs consume CPU/msg <= 0.70 (issue 16)",
        row: "lepus",
        base: "amqprs",
        figure: 3,
        bound: 0.7,
        at_least: false,
    },
    Target {
        key: "lepus_consume_msgs_per_s_vs_lepus_amqp",
        text: "lepus / lepus-amqp consume msg/s >= 0.90 (issue 6)",
        row: "lepus",
        base: "lepus-amqp",
        figure: 1,
        bound: 0.9,
        at_least: true,
    },
    Target {
        key: "observability_on_vs_off_publish_msgs_per_s",
        text: "lepus+metrics+tracing / lepus publish msg/s >= 0.90 (issue 7)",
        row: LEPUS_FULL,
        base: "lepus",
        figure: 0,
        bound: 0.9,
        at_least: true,
    },
];

/// Every round's figures, per row, in the order of the first round.
pub struct Results {
    rows: Vec<(Row, Vec<Figures>)>,
    messages: u64,
}

impl Results {
    /// `messages`: per run, over all queues.
    pub fn new(rows: &[Row], messages: u64) -> Results {
        Results {
            rows: rows.iter().map(|r| (*r, Vec::new())).collect(),
            messages,
        }
    }

    pub fn push(&mut self, row: Row, figures: Figures) {
        if let Some((_, rounds)) = self.rows.iter_mut().find(|(r, _)| *r == row) {
            rounds.push(figures);
        }
    }

    fn has(&self, label: &str) -> bool {
        self.rows.iter().any(|(r, _)| r.label == label)
    }

    fn median(&self, label: &str, figure: &Figure) -> Option<f64> {
        let (_, rounds) = self.rows.iter().find(|(r, _)| r.label == label)?;
        median(rounds.iter().map(figure.get).collect())
    }

    /// `label`'s median divided by `base`'s.
    fn ratio(&self, figure: &Figure, label: &str, base: &str) -> Option<f64> {
        Some(self.median(label, figure)? / self.median(base, figure)?)
    }

    /// The peers of the engine that ran (amqprs, lapin), if the engine ran too.
    fn peers(&self) -> Vec<&'static str> {
        if !self.has(Client::LepusAmqp.name()) {
            return Vec::new();
        }
        self.rows
            .iter()
            .filter(|(r, _)| matches!(r.client, Client::Amqprs | Client::Lapin))
            .map(|(r, _)| r.label)
            .collect()
    }

    /// What the `lepus` row is compared with: the engine and the peers that ran.
    fn lepus_bases(&self) -> Vec<&'static str> {
        if !self.has(Client::Lepus.name()) {
            return Vec::new();
        }
        self.rows
            .iter()
            .filter(|(r, _)| r.client != Client::Lepus)
            .map(|(r, _)| r.label)
            .collect()
    }

    /// The `lepus` rows run with observability on, compared with the one run without.
    fn arms(&self) -> Vec<&'static str> {
        if !self.has(Client::Lepus.name()) {
            return Vec::new();
        }
        self.rows
            .iter()
            .filter(|(r, _)| r.client == Client::Lepus && r.label != Client::Lepus.name())
            .map(|(r, _)| r.label)
            .collect()
    }

    /// The peer with the best median of `figure`.
    fn best_peer(&self, figure: &Figure) -> Option<&'static str> {
        let mut best: Option<(&'static str, f64)> = None;
        for peer in self.peers() {
            let Some(value) = self.median(peer, figure) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, b)) if figure.higher_is_better => value > b,
                Some((_, b)) => value < b,
            };
            if better {
                best = Some((peer, value));
            }
        }
        best.map(|(p, _)| p)
    }

    fn width(&self) -> usize {
        self.rows
            .iter()
            .map(|(r, _)| r.label.len())
            .max()
            .unwrap_or(0)
            .max(10)
            + 2
    }

    pub fn tables(&self) -> String {
        let mut out = String::new();
        let w = self.width();
        let rounds = self.rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n{} messages per run; median of {rounds} round(s)",
            self.messages
        );
        let watched =
            self.rows.iter().flat_map(|(_, r)| r.iter()).any(|f| {
                f.publish_load.broker_cpu_pct > 0.0 || f.consume_load.broker_cpu_pct > 0.0
            });
        let load = LOAD_FIGURES
            .iter()
            .filter(|f| watched || !f.key.contains("broker"));
        for figure in FIGURES.iter().chain(load) {
            let _ = writeln!(out, "\n{}", figure.title);
            let mut head = format!("{:<w$}", "client");
            for r in 1..=rounds {
                let _ = write!(head, "{:>11}", format!("round {r}"));
            }
            let _ = write!(head, "{:>11}", "median");
            let _ = writeln!(out, "{head}");
            for (row, figures) in &self.rows {
                let mut line = format!("{:<w$}", row.label);
                for f in figures {
                    let _ = write!(line, "{:>11}", fmt_value(figure, (figure.get)(f)));
                }
                for _ in figures.len()..rounds {
                    let _ = write!(line, "{:>11}", "-");
                }
                let median = self.median(row.label, figure);
                let _ = write!(
                    line,
                    "{:>11}",
                    median.map_or("-".into(), |m| fmt_value(figure, m))
                );
                let _ = writeln!(out, "{line}");
            }
        }
        let peers = self.peers();
        if !peers.is_empty() {
            let _ = writeln!(
                out,
                "\nlepus-amqp / peer, medians (throughput: above 1 is better; CPU per message: below 1 is better)"
            );
            let mut line = format!("{:<w$}", "best peer");
            for figure in &FIGURES {
                let cell = match self.best_peer(figure) {
                    Some(peer) => match self.ratio(figure, Client::LepusAmqp.name(), peer) {
                        Some(r) => format!("{r:.2} ({peer})"),
                        None => "-".into(),
                    },
                    None => "-".into(),
                };
                let _ = write!(line, "{cell:>20}");
            }
            self.ratio_table(
                &mut out,
                "against",
                Client::LepusAmqp.name(),
                &peers,
                Some(line),
            );
        }
        let bases = self.lepus_bases();
        if !bases.is_empty() {
            let _ = writeln!(
                out,
                "\nlepus / other client, medians (throughput: above 1 is better; CPU per message: below 1 is better)"
            );
            self.ratio_table(&mut out, "against", Client::Lepus.name(), &bases, None);
        }
        let arms = self.arms();
        if !arms.is_empty() {
            let _ = writeln!(
                out,
                "\nlepus with observability / lepus without, medians (throughput: 1 means free; CPU per message: the extra cost)"
            );
            let mut head = format!("{:<w$}", "row");
            for figure in &FIGURES {
                let _ = write!(head, "{:>20}", figure.short);
            }
            let _ = writeln!(out, "{head}");
            for arm in arms {
                let mut line = format!("{arm:<w$}");
                for figure in &FIGURES {
                    let cell = self
                        .ratio(figure, arm, Client::Lepus.name())
                        .map_or("-".into(), |r| format!("{r:.2}"));
                    let _ = write!(line, "{cell:>20}");
                }
                let _ = writeln!(out, "{line}");
            }
        }
        let targets: Vec<_> = TARGETS
            .iter()
            .filter(|t| self.has(t.row) && self.has(t.base))
            .collect();
        if !targets.is_empty() {
            let _ = writeln!(out, "\ntargets (medians)");
            for t in targets {
                let figure = &FIGURES[t.figure];
                let cell = match self.ratio(figure, t.row, t.base) {
                    Some(r) => format!("{r:.2} {}", if t.met(r) { "met" } else { "NOT met" }),
                    None => "-".into(),
                };
                let _ = writeln!(out, "  {:<64}{cell}", t.text);
            }
        }
        out
    }

    /// One line per `base`: `label`'s medians divided by `base`'s.
    fn ratio_table(
        &self,
        out: &mut String,
        title: &str,
        label: &str,
        bases: &[&'static str],
        first: Option<String>,
    ) {
        let w = self.width();
        let mut head = format!("{title:<w$}");
        for figure in &FIGURES {
            let _ = write!(head, "{:>20}", figure.short);
        }
        let _ = writeln!(out, "{head}");
        if let Some(first) = first {
            let _ = writeln!(out, "{first}");
        }
        for base in bases {
            let mut line = format!("{base:<w$}");
            for figure in &FIGURES {
                let cell = self
                    .ratio(figure, label, base)
                    .map_or("-".into(), |r| format!("{r:.2}"));
                let _ = write!(line, "{cell:>20}");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    /// One object keyed by row name, plus `observability` (what was switched on, and what
    /// was recorded) and `targets` (the issues' goals, when their rows ran).
    pub fn json(&self, observability: Value) -> Value {
        let mut top = Map::new();
        for (row, rounds) in &self.rows {
            let mut entry = Map::new();
            for figure in FIGURES.iter().chain(&LOAD_FIGURES) {
                entry.insert(figure.key.into(), number(self.median(row.label, figure)));
            }
            let per_round: Vec<Value> = rounds
                .iter()
                .map(|f| {
                    let mut m = Map::new();
                    for figure in FIGURES.iter().chain(&LOAD_FIGURES) {
                        m.insert(figure.key.into(), number(Some((figure.get)(f))));
                    }
                    Value::Object(m)
                })
                .collect();
            entry.insert("rounds".into(), Value::Array(per_round));
            let ratios = if row.client == Client::LepusAmqp && !self.peers().is_empty() {
                Some(self.engine_ratios_json())
            } else if row.label == Client::Lepus.name() && !self.lepus_bases().is_empty() {
                Some(self.ratios_json(row.label, &self.lepus_bases()))
            } else if self.arms().contains(&row.label) {
                Some(self.ratios_json(row.label, &[Client::Lepus.name()]))
            } else {
                None
            };
            if let Some(ratios) = ratios {
                entry.insert("ratios".into(), ratios);
            }
            top.insert(row.label.into(), Value::Object(entry));
        }
        top.insert("observability".into(), observability);
        let mut targets = Map::new();
        for t in TARGETS
            .iter()
            .filter(|t| self.has(t.row) && self.has(t.base))
        {
            let ratio = self.ratio(&FIGURES[t.figure], t.row, t.base);
            targets.insert(
                t.key.into(),
                json!({
                    "ratio": number(ratio),
                    "bound": t.bound,
                    "at_least": t.at_least,
                    "met": ratio.map(|r| t.met(r)),
                }),
            );
        }
        top.insert("targets".into(), Value::Object(targets));
        Value::Object(top)
    }

    /// `label`'s medians divided by each base's: `vs_<base>` per base.
    fn ratios_json(&self, label: &str, bases: &[&'static str]) -> Value {
        let mut ratios = Map::new();
        for base in bases {
            let mut m = Map::new();
            for figure in &FIGURES {
                m.insert(figure.key.into(), number(self.ratio(figure, label, base)));
            }
            ratios.insert(format!("vs_{base}"), Value::Object(m));
        }
        Value::Object(ratios)
    }

    fn engine_ratios_json(&self) -> Value {
        let engine = Client::LepusAmqp.name();
        let mut vs_best = Map::new();
        let mut best_names = Map::new();
        for figure in &FIGURES {
            let best = self.best_peer(figure);
            vs_best.insert(
                figure.key.into(),
                number(best.and_then(|p| self.ratio(figure, engine, p))),
            );
            best_names.insert(figure.key.into(), best.map_or(Value::Null, |p| json!(p)));
        }
        let Value::Object(mut ratios) = self.ratios_json(engine, &self.peers()) else {
            return Value::Null;
        };
        ratios.insert("vs_best_peer".into(), Value::Object(vs_best));
        ratios.insert("best_peer".into(), Value::Object(best_names));
        Value::Object(ratios)
    }
}

impl Target {
    fn met(&self, ratio: f64) -> bool {
        if self.at_least {
            ratio >= self.bound
        } else {
            ratio <= self.bound
        }
    }
}

pub fn number(value: Option<f64>) -> Value {
    value
        .and_then(|v| serde_json::Number::from_f64((v * 1000.0).round() / 1000.0))
        .map_or(Value::Null, Value::Number)
}

fn fmt_value(figure: &Figure, value: f64) -> String {
    if figure.higher_is_better {
        thousands(value.round() as u64)
    } else {
        format!("{value:.2}")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The median (the mean of the two middle values for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values.get(mid).copied()
    } else {
        Some((values.get(mid - 1)? + values.get(mid)?) / 2.0)
    }
}

/// The URL with its password hidden.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(unparseable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(27_123), "27,123");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }
}
