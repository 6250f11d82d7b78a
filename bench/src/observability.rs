//! `--observability on|off` and `--compare-observability`: lepus's metrics and tracing
//! switched on for the `lepus` row, to measure what they cost.
//!
//! Both are process-wide: a `metrics` recorder and a `tracing` subscriber are installed
//! once, before any client runs, and never removed.
//!
//! - **Metrics.** With `--observability on`, `lepus::observability::install_prometheus()`
//!   installs the Prometheus recorder, as a service would; without a recorder every lepus
//!   metric handle is a no-op. A recorder cannot be uninstalled, so for the in-process
//!   comparison the bench installs its own [`Gate`]: the same Prometheus recorder (same
//!   histogram buckets) behind a switch read when a handle is *registered*. lepus
//!   registers its handles when a client, publisher or consumer is built, and the bench
//!   builds those afresh for every run, so a run started with the gate closed gets no-op
//!   handles (as if no recorder were installed) and one started with it open gets real ones.
//!   Histogram samples pile up in the recorder until upkeep drains them; a task runs upkeep
//!   every 5 s (what the exporter's own `install()` would schedule), standing in for a scrape.
//! - **Tracing.** A global subscriber: a level filter behind a reload handle, lepus's
//!   OpenTelemetry layer (`lepus::observability::otel_layer`) with a tracer that has no
//!   exporter (spans get real ids, sampling decisions and W3C context, then are dropped),
//!   and lepus's JSON log layer (`lepus::observability::json_log_layer`, as
//!   `init_telemetry` sets it up) writing to a sink that only counts writes. The filter is
//!   INFO while a traced run goes and OFF otherwise; OFF makes every span and event
//!   callsite disabled at the macro, which is what having no subscriber costs.
//! - **Sampling.** With `--observability on` the tracer samples as lepus's
//!   `tracer_provider` does (`OTEL_TRACES_SAMPLER`, or lepus's default ratio), or the
//!   `--sample-ratio` given. In the comparison a [`SwitchSampler`] samples that ratio in
//!   the `lepus+metrics+tracing` arm and every trace in the `lepus+metrics+tracing-all`
//!   arm.
//!
//! Peers always run with both switched off (they record no lepus metrics anyway).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use opentelemetry::trace::{Link, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingResult, SdkTracerProvider, ShouldSample};
use serde_json::{Value, json};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Registry, reload};

/// What the bench was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No recorder, no subscriber.
    Off,
    /// `install_prometheus()` and the tracing stack; the `lepus` row runs traced.
    On,
    /// The gated recorder and the tracing stack; the `lepus` row runs in three arms.
    Compare,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::On => "on",
            Mode::Compare => "compare",
        }
    }
}

/// What one client run has switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Neither metrics nor tracing.
    Off,
    /// Metrics only (in `Compare` mode).
    Metrics,
    /// Metrics and tracing, sampled at the run's ratio.
    Full,
    /// Metrics and tracing, every trace sampled (in `Compare` mode).
    FullAll,
}

/// What share of the messages of a run carry a `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Tracing is off: none.
    Off,
    /// About this share (1.0: every one).
    Ratio(f64),
    /// Whatever `OTEL_TRACES_SAMPLER` says.
    Env,
}

/// The sampling of the run going now: 0 off, 1 `Env`, else 2 + the ratio's bits.
static SAMPLING: AtomicU64 = AtomicU64::new(0);
/// Writes the JSON log layer made (one per log line).
static LOG_WRITES: AtomicU64 = AtomicU64::new(0);

/// How the run going now is traced (sampled publish spans put a `traceparent` header on
/// their message).
pub fn sampling() -> Sampling {
    match SAMPLING.load(Ordering::Relaxed) {
        0 => Sampling::Off,
        1 => Sampling::Env,
        bits => Sampling::Ratio(f64::from_bits(bits - 2)),
    }
}

fn set_sampling(sampling: Sampling) {
    let code = match sampling {
        Sampling::Off => 0,
        Sampling::Env => 1,
        Sampling::Ratio(r) => r.to_bits() + 2,
    };
    SAMPLING.store(code, Ordering::SeqCst);
}

/// The installed pieces and their switches.
pub struct Observability {
    mode: Mode,
    filter: Option<reload::Handle<LevelFilter, Registry>>,
    gate: Option<Arc<AtomicBool>>,
    prometheus: Option<PrometheusHandle>,
    /// The sampling of a traced arm (`Full`), and the switch to sampling every trace.
    ratio: Sampling,
    sample_all: Arc<AtomicBool>,
    /// Kept alive: spans are built by tracers of this provider.
    _provider: Option<SdkTracerProvider>,
    upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl Observability {
    /// Installs what `mode` needs. Call once, inside the runtime, before any client runs.
    /// `ratio`: the `--sample-ratio` given, if any.
    pub fn install(mode: Mode, ratio: Option<f64>) -> Result<Observability> {
        let sample_all = Arc::new(AtomicBool::new(false));
        let (provider, sampling) = match (mode, ratio) {
            (Mode::Off, _) => (None, Sampling::Off),
            (Mode::On, None) if std::env::var_os("OTEL_TRACES_SAMPLER").is_some() => (
                Some(lepus::observability::tracer_provider("bench")),
                Sampling::Env,
            ),
            (Mode::On, None) => (
                Some(lepus::observability::tracer_provider("bench")),
                Sampling::Ratio(lepus::observability::DEFAULT_SAMPLE_RATIO),
            ),
            (Mode::On, Some(r)) => (
                Some(lepus::observability::tracer_provider_with(
                    "bench",
                    lepus::observability::ratio_sampler(r),
                )),
                Sampling::Ratio(r),
            ),
            (Mode::Compare, r) => {
                let r = r.unwrap_or(lepus::observability::DEFAULT_SAMPLE_RATIO);
                let sampler = SwitchSampler {
                    all: Arc::clone(&sample_all),
                    ratio: lepus::observability::ratio_sampler(r),
                    every: lepus::observability::ratio_sampler(1.0),
                };
                (
                    Some(lepus::observability::tracer_provider_with("bench", sampler)),
                    Sampling::Ratio(r),
                )
            }
        };
        let mut obs = Observability {
            mode,
            filter: None,
            gate: None,
            prometheus: None,
            ratio: sampling,
            sample_all,
            _provider: None,
            upkeep: None,
        };
        if mode == Mode::Off {
            return Ok(obs);
        }
        let handle = match mode {
            Mode::On => lepus::observability::install_prometheus()
                .context("installing lepus's Prometheus recorder")?,
            _ => {
                let gate = Arc::new(AtomicBool::new(false));
                let handle = Gate::install(Arc::clone(&gate))?;
                obs.gate = Some(gate);
                handle
            }
        };
        let upkeep = handle.clone();
        obs.upkeep = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        }));
        obs.prometheus = Some(handle);

        let provider = provider
            .context("tracing is on")?
            .map_err(|e| anyhow!("building the tracer provider: {e}"))?;
        let tracer = provider.tracer("bench");
        let (filter, filter_handle) = reload::Layer::new(LevelFilter::OFF);
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(lepus::observability::otel_layer(tracer))
            .with(lepus::observability::json_log_layer(|| CountingSink));
        tracing::subscriber::set_global_default(subscriber)
            .context("installing the tracing subscriber")?;
        obs.filter = Some(filter_handle);
        obs._provider = Some(provider);
        Ok(obs)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Sets the switches for the next client run.
    pub fn switch(&self, arm: Arm) -> Result<()> {
        if let Some(gate) = &self.gate {
            gate.store(arm != Arm::Off, Ordering::SeqCst);
        }
        let traced = matches!(arm, Arm::Full | Arm::FullAll) && self.filter.is_some();
        self.sample_all.store(arm == Arm::FullAll, Ordering::SeqCst);
        if let Some(filter) = &self.filter {
            let level = if traced {
                LevelFilter::INFO
            } else {
                LevelFilter::OFF
            };
            filter
                .reload(level)
                .map_err(|e| anyhow!("switching tracing: {e}"))?;
        }
        set_sampling(match arm {
            _ if !traced => Sampling::Off,
            Arm::FullAll => Sampling::Ratio(1.0),
            _ => self.ratio,
        });
        Ok(())
    }

    /// What was recorded, to show that the switches did what they say: lepus's confirmed
    /// and acked counters as a scrape shows them, and how many log lines were written.
    pub fn summary(&self) -> Value {
        let mut out = json!({ "mode": self.mode.name() });
        if let Some(handle) = &self.prometheus {
            let text = handle.render();
            out["scraped_confirmed_total"] = json!(sum_metric(&text, "lepus_confirmed_total"));
            out["scraped_acked_total"] = json!(sum_metric(&text, "lepus_acked_total"));
            out["log_lines"] = json!(LOG_WRITES.load(Ordering::Relaxed));
        }
        out
    }

    pub fn close(self) {
        if let Some(upkeep) = self.upkeep {
            upkeep.abort();
        }
    }
}

/// The sum of every series of `name` in Prometheus text.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A parent-based ratio sampler that samples every trace while `all` is set: one tracer
/// provider serves both traced arms of the comparison.
#[derive(Debug, Clone)]
struct SwitchSampler {
    all: Arc<AtomicBool>,
    ratio: Sampler,
    every: Sampler,
}

impl ShouldSample for SwitchSampler {
    fn should_sample(
        &self,
        parent: Option<&OtelContext>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let sampler = if self.all.load(Ordering::Relaxed) {
            &self.every
        } else {
            &self.ratio
        };
        sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// Discards log lines, counting them.
struct CountingSink;

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOG_WRITES.fetch_add(1, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The histogram buckets `lepus::observability::install_prometheus` sets for `*_seconds`
/// (they decide what upkeep does with each sample, so the gated recorder uses them too).
const SECONDS_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A Prometheus recorder that hands out real handles while its gate is open and no-op
/// handles (what having no recorder gives) while it is closed.
struct Gate {
    inner: PrometheusRecorder,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn install(open: Arc<AtomicBool>) -> Result<PrometheusHandle> {
        let inner = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .context("configuring the Prometheus recorder")?
            .build_recorder();
        let handle = inner.handle();
        metrics::set_global_recorder(Gate { inner, open })
            .map_err(|e| anyhow!("installing the metrics recorder: {e}"))?;
        Ok(handle)
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }
}

impl Recorder for Gate {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if self.is_open() {
            self.inner.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if self.is_open() {
            self.inner.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if self.is_open() {
            self.inner.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_one_metric() {
        let text = "# TYPE lepus_acked_total counter\n\
                    lepus_acked_total{queue=\"a\"} 10\n\
                    lepus_acked_total{queue=\"b\"} 5\n\
                    lepus_acked_total_other 7\n\
                    lepus_confirmed_total 3\n";
        assert_eq!(sum_metric(text, "lepus_acked_total"), 15.0);
        assert_eq!(sum_metric(text, "lepus_confirmed_total"), 3.0);
        assert_eq!(sum_metric(text, "lepus_nacked_total"), 0.0);
    }
}
