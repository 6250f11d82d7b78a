//! `lepus doctor`: connect the way a service does and say, check by check, what is right,
//! what is about to go wrong and what is wrong, with the reason and what to do.
//!
//! For every endpoint: DNS, TCP, then for `amqps` the TLS handshake (version and cipher,
//! whether the chain is trusted, whether the certificate is for the host name we use, days
//! until it expires, whether our client certificate was taken; see [`tls`]), then the
//! AMQP login, the broker, the negotiated heartbeat and frame size, the vhost permissions
//! a service needs, exercised on a temporary queue (declare, publish with a confirm,
//! consume, delete), and whether the broker blocks publishers (a memory or disk alarm).
//! With `--management-url` also the cluster's nodes and their alarms, and the clock
//! skew against the broker (from the API's `Date` header).
//!
//! Exit codes: 0 every check passed, 3 warnings, 4 a check failed, 5 no endpoint could be
//! reached at all (DNS or TCP).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::connect::{self, parse_secs};
use crate::exit;

mod checks;
mod cluster;
pub(crate) mod tls;

/// Certificates expiring in fewer days than this are a warning.
pub(crate) const EXPIRY_WARN_DAYS: i64 = 30;
/// A heartbeat above this many seconds notices a dead peer too late.
pub(crate) const MAX_HEARTBEAT_SECS: u16 = 60;
/// Clock skew above this many seconds is a warning (the HTTP date has 1 s resolution).
pub(crate) const MAX_SKEW_SECS: i64 = 2;

/// Options of `lepus doctor`.
#[derive(Args, Debug)]
pub(crate) struct DoctorArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds each step may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    timeout: Duration,
    /// Do not exercise permissions (no temporary queue is declared).
    #[arg(long)]
    no_exercise: bool,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Fine.
    Pass,
    /// Not looked at (nothing to look at, or it needs an option).
    Skip,
    /// Works now, will not for long or not well.
    Warn,
    /// Broken.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What was checked, e.g. `tls.expiry`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// What to do about it (warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub(crate) fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A skipped check.
    pub(crate) fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with what to do.
    pub(crate) fn warn(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with what to do.
    pub(crate) fn fail(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The checks of one endpoint.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Endpoint {
    /// The URL, password hidden.
    pub url: String,
    /// Whether DNS and TCP got through.
    pub reachable: bool,
    /// In order.
    pub checks: Vec<Check>,
}

/// Runs `lepus doctor`.
pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let global = connect::global();
    let mut endpoints = Vec::new();
    for url in global.endpoints()? {
        endpoints.push(checks::endpoint(&url, &args).await);
    }
    let cluster = match &global.management_url {
        Some(url) => cluster::management(url, &args).await,
        None => vec![
            Check::skip(
                "cluster.nodes",
                "give --management-url to list the cluster's nodes and their alarms",
            ),
            Check::skip(
                "clock",
                "give --management-url to compare this machine's clock with the broker's",
            ),
        ],
    };
    let all = endpoints
        .iter()
        .flat_map(|e| e.checks.iter())
        .chain(cluster.iter());
    let worst = all.clone().map(|c| c.status).max().unwrap_or(Status::Pass);
    let count = |s: Status| all.clone().filter(|c| c.status == s).count();
    let code = if endpoints.iter().all(|e| !e.reachable) {
        exit::UNREACHABLE
    } else {
        match worst {
            Status::Fail => exit::FAILED,
            Status::Warn => exit::ATTENTION,
            Status::Pass | Status::Skip => 0,
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "endpoints": endpoints,
            "cluster": cluster,
            "summary": {
                "pass": count(Status::Pass),
                "warn": count(Status::Warn),
                "fail": count(Status::Fail),
                "skip": count(Status::Skip),
            },
            "exit_code": code,
        });
        let _ = writeln!(out, "{doc}");
    } else {
        for e in &endpoints {
            let _ = writeln!(out, "{}", e.url);
            for c in &e.checks {
                let _ = write!(out, "{}", line(c));
            }
        }
        let _ = writeln!(out, "cluster");
        for c in &cluster {
            let _ = write!(out, "{}", line(c));
        }
        let _ = writeln!(
            out,
            "{} passed, {} warnings, {} failed, {} skipped{}",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip),
            if code == exit::UNREACHABLE {
                " (no endpoint reachable)"
            } else {
                ""
            }
        );
    }
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    })
}

fn line(c: &Check) -> String {
    let mut s = format!("  {}  {:<18} {}\n", c.status.label(), c.name, c.detail);
    if let Some(fix) = &c.fix {
        s.push_str(&format!("  {:<4}  {:<18} -> {fix}\n", "", ""));
    }
    s
}
