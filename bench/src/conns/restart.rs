//! Watching connections through a broker restart, and the reconnect histogram.
//!
//! The child watches each of its connections: when it was seen lost, when it was back
//! (both connections of a `lepus::Client`; lapin's connection state `Connected` again
//! after its automatic recovery), or that it gave up (`Failed`; lapin's `Error` or
//! `Closed`). Times are CLOCK_MONOTONIC seconds, the clock the parent reads around the
//! restart command, so both sides line up.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};

use super::child::{Connection, now};

/// How long a connection may stay up after `READY` before it counts as never lost.
const LOSS_WAIT: Duration = Duration::from_secs(120);
/// How often lapin's connection state is looked at (it has no change notification).
const POLL: Duration = Duration::from_millis(20);

/// What happened to one connection.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    lost: Option<f64>,
    back: Option<f64>,
    gave_up: bool,
}

pub async fn watch(held: &[Connection], deadline: Duration) -> Result<Value> {
    let mut watching = FuturesUnordered::new();
    for h in held {
        watching.push(watch_one(h, deadline));
    }
    let mut outcomes = Vec::with_capacity(held.len());
    while let Some(outcome) = watching.next().await {
        outcomes.push(outcome?);
    }
    Ok(json!({
        "lost": outcomes.iter().map(|o| o.lost).collect::<Vec<_>>(),
        "back": outcomes.iter().map(|o| o.back).collect::<Vec<_>>(),
        "gave_up": outcomes.iter().filter(|o| o.gave_up).count(),
        "never_lost": outcomes.iter().filter(|o| o.lost.is_none()).count(),
    }))
}

async fn watch_one(h: &Connection, deadline: Duration) -> Result<Outcome> {
    match h {
        Connection::Lepus(client, _, _) => Ok(watch_lepus(client, deadline).await),
        Connection::Lapin(conn, _) => Ok(watch_lapin(conn, deadline).await),
        _ => bail!("only lepus and lapin reconnect by themselves"),
    }
}

async fn watch_lepus(client: &::lepus::Client, deadline: Duration) -> Outcome {
    use ::lepus::{ConnectionState, Role};
    let mut p = client.watch_state(Role::Publish);
    let mut c = client.watch_state(Role::Consume);
    let mut outcome = Outcome::default();
    let up = |s: &ConnectionState| s.is_connected();
    let over =
        |s: &ConnectionState| matches!(s, ConnectionState::Failed(_) | ConnectionState::Closed);
    // Lost: either connection not up.
    let lost = tokio::time::timeout(LOSS_WAIT, async {
        loop {
            if !up(&p.borrow_and_update()) || !up(&c.borrow_and_update()) {
                return;
            }
            tokio::select! {
                r = p.changed() => if r.is_err() { return },
                r = c.changed() => if r.is_err() { return },
            }
        }
    })
    .await;
    if lost.is_err() {
        return outcome;
    }
    outcome.lost = Some(now());
    let back = tokio::time::timeout(deadline, async {
        loop {
            let (ps, cs) = (p.borrow_and_update().clone(), c.borrow_and_update().clone());
            if over(&ps) || over(&cs) {
                return false;
            }
            if up(&ps) && up(&cs) {
                return true;
            }
            tokio::select! {
                r = p.changed() => if r.is_err() { return false },
                r = c.changed() => if r.is_err() { return false },
            }
        }
    })
    .await;
    match back {
        Ok(true) => outcome.back = Some(now()),
        _ => outcome.gave_up = true,
    }
    outcome
}

async fn watch_lapin(conn: &lapin::Connection, deadline: Duration) -> Outcome {
    let mut outcome = Outcome::default();
    let start = now();
    while conn.status().connected() {
        if now() - start > LOSS_WAIT.as_secs_f64() {
            return outcome;
        }
        tokio::time::sleep(POLL).await;
    }
    let lost = now();
    outcome.lost = Some(lost);
    loop {
        let status = conn.status();
        if status.connected() {
            outcome.back = Some(now());
            return outcome;
        }
        if status.errored() || status.closed() || now() - lost > deadline.as_secs_f64() {
            outcome.gave_up = true;
            return outcome;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Counts of `values` (seconds) in bins of `width` seconds from 0, as text bars.
pub fn ascii_histogram(values: &[f64], width: f64, bar: usize) -> String {
    let bins = bin(values, width);
    let top = bins.iter().copied().max().unwrap_or(0).max(1);
    let mut out = String::new();
    for (i, count) in bins.iter().enumerate() {
        let len = (count * bar).div_ceil(top);
        out.push_str(&format!(
            "{:>6.1}-{:<6.1}s {:>5} {}\n",
            i as f64 * width,
            (i + 1) as f64 * width,
            count,
            "#".repeat(len)
        ));
    }
    out
}

/// Counts of non-negative `values` in bins of `width` from 0.
pub fn bin(values: &[f64], width: f64) -> Vec<usize> {
    let mut bins: Vec<usize> = Vec::new();
    for v in values {
        let i = (v.max(0.0) / width).floor() as usize;
        if bins.len() <= i {
            bins.resize(i + 1, 0);
        }
        if let Some(b) = bins.get_mut(i) {
            *b += 1;
        }
    }
    bins
}

/// The highest number of `times` inside any window of `window` seconds, per second.
pub fn peak_rate(times: &[f64], window: f64) -> f64 {
    let mut sorted: Vec<f64> = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = 0usize;
    let mut first = 0usize;
    for (last, t) in sorted.iter().enumerate() {
        while sorted.get(first).is_some_and(|f| *t - *f > window) {
            first += 1;
        }
        best = best.max(last + 1 - first);
    }
    best as f64 / window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_count_every_value() {
        assert_eq!(bin(&[0.1, 0.4, 1.2, 3.9], 1.0), vec![2, 1, 0, 1]);
        let text = ascii_histogram(&[0.1, 0.4, 1.2], 1.0, 10);
        assert!(text.lines().next().unwrap().ends_with("##########"));
    }

    #[test]
    fn the_peak_rate_is_the_busiest_window() {
        let times = [0.0, 0.1, 0.2, 0.25, 2.0, 5.0];
        assert_eq!(peak_rate(&times, 1.0), 4.0);
        assert_eq!(peak_rate(&[], 1.0), 0.0);
    }
}
