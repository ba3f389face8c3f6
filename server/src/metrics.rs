//! Telemetry: Vault's metric names (`vault.core.handle_request`,
//! `vault.barrier.get`, `vault.core.unsealed`, ...) recorded through the
//! `metrics` facade and served by `sys/metrics` as Prometheus text
//! (`?format=prometheus`) or as Vault's JSON summary (the default).
//!
//! One recorder feeds both: the Prometheus exporter (which sanitises names to
//! `vault_core_handle_request`) and an in-memory aggregate that keeps the
//! dotted names for the JSON view. Timings are milliseconds, as Vault's.
//!
//! `prometheus_retention_time` drops a summary (timings) that has not moved for
//! that long. Counters and gauges stay for the life of the process: a counter
//! that vanished and came back would hide its first increase from `rate()`,
//! and a gauge such as `vault.core.unsealed = 0` must not age out of a sealed
//! node. Counters that alerts read are registered at zero at start. Unless
//! `disable_hostname = true`, gauge names carry the host name after their first
//! segment (`vault.HOST.core.unsealed`), as go-metrics does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde_json::{json, Value};

use crate::config::TelemetryConfig;
use crate::physical::{Backend, StorageError, TxnOp};

/// Handle to the process's metrics, cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    prometheus: Option<PrometheusHandle>,
    aggregate: Arc<Aggregate>,
}

impl Telemetry {
    /// Installs the process-wide recorder. A second install in the same
    /// process (tests) gets a detached handle that records nothing.
    pub fn install(config: &TelemetryConfig) -> Telemetry {
        let retention = config.prometheus_retention_time;
        let builder = PrometheusBuilder::new()
            .set_quantiles(&[0.5, 0.9, 0.99])
            .expect("static quantiles are valid")
            .idle_timeout(
                metrics_util::MetricKindMask::HISTOGRAM,
                (!retention.is_zero()).then_some(retention),
            );
        let prometheus = builder.build_recorder();
        let handle = prometheus.handle();
        let aggregate = Arc::new(Aggregate::default());
        let hostname = (!config.disable_hostname)
            .then(hostname)
            .flatten()
            .map(|h| h.replace('.', "_"));
        let recorder = FanoutRecorder {
            prometheus,
            aggregate: aggregate.clone(),
            hostname,
        };
        if metrics::set_global_recorder(recorder).is_err() {
            return Telemetry::default();
        }
        // A sealed node reports that it is sealed and not active from its
        // first scrape, so "sealed" alerts need no absent() guesswork.
        metrics::gauge!("vault.core.unsealed").set(0.0);
        metrics::gauge!("vault.core.active").set(0.0);
        for counter in [
            "vault.audit.log_request_failure",
            "vault.audit.log_response_failure",
            "vault.raft.apply",
            "vault.raft.state.leader",
            "vault.raft.state.candidate",
            "vault.raft.state.follower",
            "vault.core.leadership_setup_failed",
        ] {
            metrics::counter!(counter).increment(0);
        }
        record_memory();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                record_memory();
                upkeep.run_upkeep();
            })
            .ok();
        Telemetry {
            prometheus: Some(handle),
            aggregate,
        }
    }

    pub fn render_prometheus(&self) -> String {
        self.prometheus
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }

    /// Vault's JSON format (go-metrics' `DisplayMetrics`).
    pub fn render_json(&self) -> Value {
        self.aggregate.render()
    }
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// go-metrics' `EnableHostname`: the host name goes after the service name,
/// `vault.core.unsealed` -> `vault.HOST.core.unsealed`.
fn with_hostname(name: &str, hostname: &str) -> String {
    match name.split_once('.') {
        Some((service, rest)) => format!("{service}.{hostname}.{rest}"),
        None => format!("{name}.{hostname}"),
    }
}

/// `vault.runtime.sys_bytes`: resident memory (`VmRSS`), what the process
/// holds from the OS; `vault.runtime.alloc_bytes`: anonymous resident memory
/// (`RssAnon`), the heap and stacks, the closest to Go's live allocations.
fn record_memory() {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        metrics::gauge!("vault.runtime.sys_bytes").set((rss * 1024) as f64);
    }
    if let Some(anon) = kib("RssAnon:") {
        metrics::gauge!("vault.runtime.alloc_bytes").set((anon * 1024) as f64);
    }
}

struct FanoutRecorder {
    prometheus: PrometheusRecorder,
    aggregate: Arc<Aggregate>,
    /// Set unless `disable_hostname = true`.
    hostname: Option<String>,
}

impl Recorder for FanoutRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let key = match &self.hostname {
            Some(host) => KeyName::from(with_hostname(key.as_str(), host)),
            None => key,
        };
        self.prometheus.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let prom = self.prometheus.register_counter(key, metadata);
        let agg = self.aggregate.entry(key, Kind::Counter);
        Counter::from_arc(Arc::new(Pair(prom, agg)))
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let renamed;
        let key = match &self.hostname {
            Some(host) => {
                renamed = Key::from_parts(
                    with_hostname(key.name(), host),
                    key.labels().cloned().collect::<Vec<_>>(),
                );
                &renamed
            }
            None => key,
        };
        let prom = self.prometheus.register_gauge(key, metadata);
        let agg = self.aggregate.entry(key, Kind::Gauge);
        Gauge::from_arc(Arc::new(Pair(prom, agg)))
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let prom = self.prometheus.register_histogram(key, metadata);
        let agg = self.aggregate.entry(key, Kind::Sample);
        Histogram::from_arc(Arc::new(Pair(prom, agg)))
    }
}

struct Pair<T>(T, Arc<Series>);

impl CounterFn for Pair<Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.observe(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.set(value as f64);
    }
}

impl GaugeFn for Pair<Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.add(value);
    }
    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.add(-value);
    }
    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.set(value);
    }
}

impl HistogramFn for Pair<Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.observe(value);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Sample,
}

/// Running summary of one series: count, sum, min, max, sum of squares.
struct Series {
    kind: Kind,
    name: String,
    labels: BTreeMap<String, String>,
    stats: Mutex<Stats>,
    gauge_bits: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct Stats {
    count: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
    max: f64,
}

impl Series {
    fn observe(&self, v: f64) {
        let mut s = self.stats.lock().expect("metrics lock");
        if s.count == 0 || v < s.min {
            s.min = v;
        }
        if s.count == 0 || v > s.max {
            s.max = v;
        }
        s.count += 1;
        s.sum += v;
        s.sumsq += v * v;
    }
    fn set(&self, v: f64) {
        self.gauge_bits.store(v.to_bits(), Ordering::Relaxed);
    }
    fn add(&self, delta: f64) {
        let _ = self
            .gauge_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }
}

#[derive(Default)]
struct Aggregate {
    series: Mutex<BTreeMap<String, Arc<Series>>>,
    started: std::sync::OnceLock<Instant>,
}

impl Aggregate {
    fn entry(&self, key: &Key, kind: Kind) -> Arc<Series> {
        self.started.get_or_init(Instant::now);
        let labels: BTreeMap<String, String> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let id = format!("{}{:?}", key.name(), labels);
        self.series
            .lock()
            .expect("metrics lock")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Series {
                    kind,
                    name: key.name().to_string(),
                    labels,
                    stats: Mutex::new(Stats::default()),
                    gauge_bits: AtomicU64::new(0f64.to_bits()),
                })
            })
            .clone()
    }

    fn render(&self) -> Value {
        let elapsed = self
            .started
            .get()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(1.0)
            .max(1.0);
        let (mut gauges, mut counters, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for series in self.series.lock().expect("metrics lock").values() {
            match series.kind {
                Kind::Gauge => gauges.push(json!({
                    "Name": series.name,
                    "Value": f64::from_bits(series.gauge_bits.load(Ordering::Relaxed)),
                    "Labels": series.labels,
                })),
                Kind::Counter | Kind::Sample => {
                    let s = *series.stats.lock().expect("metrics lock");
                    let mean = if s.count > 0 {
                        s.sum / s.count as f64
                    } else {
                        0.0
                    };
                    let var = if s.count > 1 {
                        ((s.sumsq - s.sum * mean) / (s.count - 1) as f64).max(0.0)
                    } else {
                        0.0
                    };
                    let row = json!({
                        "Name": series.name,
                        "Count": s.count,
                        "Rate": s.sum / elapsed,
                        "Sum": s.sum,
                        "Min": s.min,
                        "Max": s.max,
                        "Mean": mean,
                        "Stddev": var.sqrt(),
                        "Labels": series.labels,
                    });
                    if series.kind == Kind::Counter {
                        counters.push(row)
                    } else {
                        samples.push(row)
                    }
                }
            }
        }
        json!({
            "Timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
            "Gauges": gauges,
            "Points": [],
            "Counters": counters,
            "Samples": samples,
        })
    }
}

/// Times every storage call as `vault.<name>.<op>` (e.g. `vault.barrier.get`).
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    names: [String; 5],
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn Backend>, name: &str) -> Self {
        let n = |op: &str| format!("vault.{name}.{op}");
        MeteredBackend {
            inner,
            names: [n("get"), n("put"), n("delete"), n("list"), n("transaction")],
        }
    }

    fn record(&self, idx: usize, started: Instant) {
        metrics::histogram!(self.names[idx].clone())
            .record(started.elapsed().as_secs_f64() * 1000.0);
    }
}

#[async_trait]
impl Backend for MeteredBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record(0, t);
        r
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let t = Instant::now();
        let r = self.inner.put(key, value).await;
        self.record(1, t);
        r
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let t = Instant::now();
        let r = self.inner.delete(key).await;
        self.record(2, t);
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.record(3, t);
        r
    }
    /// Timed as `vault.<name>.transaction`, and each of its puts and deletes as one
    /// `put` or `delete` that took as long (a KV v2 write is one transaction; Vault's
    /// `vault.barrier.put` still counts its writes).
    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let puts = ops
            .iter()
            .filter(|o| matches!(o, TxnOp::Put { .. }))
            .count();
        let deletes = ops.len() - puts;
        let t = Instant::now();
        let r = self.inner.transaction(ops).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!(self.names[4].clone()).record(ms);
        for (idx, n) in [(1, puts), (2, deletes)] {
            let histogram = metrics::histogram!(self.names[idx].clone());
            for _ in 0..n {
                histogram.record(ms);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_goes_after_the_service_name() {
        assert_eq!(
            with_hostname("vault.core.unsealed", "node1"),
            "vault.node1.core.unsealed"
        );
        assert_eq!(
            with_hostname("keyhold.tls.certificate_expiry_seconds", "h"),
            "keyhold.h.tls.certificate_expiry_seconds"
        );
        assert_eq!(with_hostname("plain", "h"), "plain.h");
    }
}
