//! Medians, tables and the JSON object.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::clients::Client;
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

/// Every round's figures, per client, in the order of the first round.
pub struct Results {
    rows: Vec<(Client, Vec<Figures>)>,
    messages: u64,
}

impl Results {
    /// `messages`: per run, over all queues.
    pub fn new(clients: &[Client], messages: u64) -> Results {
        Results {
            rows: clients.iter().map(|c| (*c, Vec::new())).collect(),
            messages,
        }
    }

    pub fn push(&mut self, client: Client, figures: Figures) {
        if let Some((_, rounds)) = self.rows.iter_mut().find(|(c, _)| *c == client) {
            rounds.push(figures);
        }
    }

    fn median(&self, client: Client, figure: &Figure) -> Option<f64> {
        let (_, rounds) = self.rows.iter().find(|(c, _)| *c == client)?;
        median(rounds.iter().map(figure.get).collect())
    }

    /// lepus-amqp's median divided by `peer`'s.
    fn ratio(&self, figure: &Figure, peer: Client) -> Option<f64> {
        Some(self.median(Client::LepusAmqp, figure)? / self.median(peer, figure)?)
    }

    /// The peer with the best median of `figure`.
    fn best_peer(&self, figure: &Figure) -> Option<Client> {
        let peers = self.peers();
        let mut best: Option<(Client, f64)> = None;
        for peer in peers {
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
        best.map(|(c, _)| c)
    }

    fn peers(&self) -> Vec<Client> {
        let has_lepus = self.rows.iter().any(|(c, _)| *c == Client::LepusAmqp);
        if !has_lepus {
            return Vec::new();
        }
        self.rows
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != Client::LepusAmqp)
            .collect()
    }

    pub fn tables(&self) -> String {
        let mut out = String::new();
        let rounds = self.rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\n{} messages per run; median of {rounds} round(s)",
            self.messages
        );
        for figure in &FIGURES {
            let _ = writeln!(out, "\n{}", figure.title);
            let mut head = format!("{:<12}", "client");
            for r in 1..=rounds {
                let _ = write!(head, "{:>11}", format!("round {r}"));
            }
            let _ = write!(head, "{:>11}", "median");
            let _ = writeln!(out, "{head}");
            for (client, figures) in &self.rows {
                let mut line = format!("{:<12}", client.name());
                for f in figures {
                    let _ = write!(line, "{:>11}", fmt_value(figure, (figure.get)(f)));
                }
                for _ in figures.len()..rounds {
                    let _ = write!(line, "{:>11}", "-");
                }
                let median = self.median(*client, figure);
                let _ = write!(
                    line,
                    "{:>11}",
                    median.map_or("-".into(), |m| fmt_value(figure, m))
                );
                let _ = writeln!(out, "{line}");
            }
        }
        let peers = self.peers();
        if peers.is_empty() {
            return out;
        }
        let _ = writeln!(
            out,
            "\nlepus-amqp / peer, medians (throughput: above 1 is better; CPU per message: below 1 is better)"
        );
        let mut head = format!("{:<12}", "against");
        for figure in &FIGURES {
            let _ = write!(head, "{:>20}", figure.short);
        }
        let _ = writeln!(out, "{head}");
        let mut line = format!("{:<12}", "best peer");
        for figure in &FIGURES {
            let cell = match self.best_peer(figure) {
                Some(peer) => match self.ratio(figure, peer) {
                    Some(r) => format!("{r:.2} ({})", peer.name()),
                    None => "-".into(),
                },
                None => "-".into(),
            };
            let _ = write!(line, "{cell:>20}");
        }
        let _ = writeln!(out, "{line}");
        for peer in peers {
            let mut line = format!("{:<12}", peer.name());
            for figure in &FIGURES {
                let cell = self
                    .ratio(figure, peer)
                    .map_or("-".into(), |r| format!("{r:.2}"));
                let _ = write!(line, "{cell:>20}");
            }
            let _ = writeln!(out, "{line}");
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut top = Map::new();
        for (client, rounds) in &self.rows {
            let mut entry = Map::new();
            for figure in &FIGURES {
                entry.insert(figure.key.into(), number(self.median(*client, figure)));
            }
            let per_round: Vec<Value> = rounds
                .iter()
                .map(|f| {
                    let mut m = Map::new();
                    for figure in &FIGURES {
                        m.insert(figure.key.into(), number(Some((figure.get)(f))));
                    }
                    Value::Object(m)
                })
                .collect();
            entry.insert("rounds".into(), Value::Array(per_round));
            if *client == Client::LepusAmqp && !self.peers().is_empty() {
                entry.insert("ratios".into(), self.ratios_json());
            }
            top.insert(client.name().into(), Value::Object(entry));
        }
        Value::Object(top)
    }

    fn ratios_json(&self) -> Value {
        let mut vs_best = Map::new();
        let mut best_names = Map::new();
        for figure in &FIGURES {
            let best = self.best_peer(figure);
            vs_best.insert(
                figure.key.into(),
                number(best.and_then(|p| self.ratio(figure, p))),
            );
            best_names.insert(
                figure.key.into(),
                best.map_or(Value::Null, |p| json!(p.name())),
            );
        }
        let mut ratios = Map::new();
        ratios.insert("vs_best_peer".into(), Value::Object(vs_best));
        ratios.insert("best_peer".into(), Value::Object(best_names));
        for peer in self.peers() {
            let mut m = Map::new();
            for figure in &FIGURES {
                m.insert(figure.key.into(), number(self.ratio(figure, peer)));
            }
            ratios.insert(format!("vs_{}", peer.name()), Value::Object(m));
        }
        Value::Object(ratios)
    }
}

fn number(value: Option<f64>) -> Value {
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
fn median(mut values: Vec<f64>) -> Option<f64> {
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
