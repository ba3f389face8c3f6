//! Telemetry: Vault's metric names (`vault.core.handle_request`,
//! `vault.barrier.get`, `vault.core.unsealed`, ...) recorded through the
//! `metrics` facade and served by `sys/metrics` as Prometheus text
//! (`?format=prometheus`) or as Vault's JSON summary (the default).
//!
//! One recorder feeds both: the Prometheus exporter (which sanitises names to
//! `vault_core_handle_request`) and an in-memory aggregate that keeps the
//! dotted names for the JSON view. Timings are milliseconds, as Vault's.

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
    pub fn install(retention: Duration) -> Telemetry {
        let builder = PrometheusBuilder::new()
            .set_quantiles(&[0.5, 0.9, 0.99])
            .expect("static quantiles are valid")
            .idle_timeout(
                metrics_util_mask(),
                (!retention.is_zero()).then_some(retention),
            );
        let prometheus = builder.build_recorder();
        let handle = prometheus.handle();
        let aggregate = Arc::new(Aggregate::default());
        let recorder = FanoutRecorder {
            prometheus,
            aggregate: aggregate.clone(),
        };
        if metrics::set_global_recorder(recorder).is_err() {
            return Telemetry::default();
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
                if let Some(rss) = resident_bytes() {
                    metrics::gauge!("vault.runtime.sys_bytes").set(rss as f64);
                }
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

fn metrics_util_mask() -> metrics_util::MetricKindMask {
    metrics_util::MetricKindMask::ALL
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

struct FanoutRecorder {
    prometheus: PrometheusRecorder,
    aggregate: Arc<Aggregate>,
}

impl Recorder for FanoutRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
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
    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<(), StorageError> {
        let t = Instant::now();
        let r = self.inner.transaction(ops).await;
        self.record(4, t);
        r
    }
}
