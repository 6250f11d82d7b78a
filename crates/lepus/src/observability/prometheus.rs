//! A Prometheus recorder for lepus's metrics (the `prometheus` feature).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, ErrorKind, Result};

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs a Prometheus recorder for this process and returns the handle whose
/// `render()` is the scrape text. Histograms are exported with buckets suited to
/// messaging latencies (100 µs to 30 s). A background thread folds samples into their
/// buckets every few seconds, so memory stays bounded even if nothing scrapes.
pub fn install_prometheus() -> Result<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder())
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                "cannot install the Prometheus recorder",
                e,
            )
        })?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("lepus-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| Error::with_source(ErrorKind::Config, "cannot start metrics upkeep", e))?;
    Ok(handle)
}
