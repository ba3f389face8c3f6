//! `provision load`: a workload that reads and writes KV v2 secrets as a Vault client does, so a
//! workflow (or an operator) can prove that nothing failed and nothing was lost while it ran.
//!
//! Each operation goes to the node believed active; on a connection error, a 5xx or a 429 it
//! finds the active node again and retries with backoff until its bound (default 10 s) is spent:
//! only then is it a failure. Every acknowledged write is recorded with its value; reads check
//! the value of an acknowledged write; at the end every acknowledged write is read back, and one
//! missing or different is a lost write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyhold_client::{Client, ClientError};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use crate::cluster::Cluster;
use crate::deployment::Deployment;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub duration: Duration,
    /// Operations started per second.
    pub rate: u32,
    /// The share of operations that are writes (0.0 to 1.0).
    pub write_ratio: f64,
    /// How long one operation may keep retrying before it counts as failed.
    pub op_timeout: Duration,
    /// Operations in flight at most.
    pub concurrency: usize,
}

/// What happened, as `provision load` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mount: String,
    pub operations: u64,
    pub writes: u64,
    pub reads: u64,
    /// Operations that never succeeded within the bound.
    pub failures: u64,
    /// Attempts that were retried (a leadership change, a restarting node).
    pub retries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The longest time between two successful writes (from the start to the first one, and
    /// from the last one to the end, included).
    pub longest_write_gap_ms: f64,
    /// Acknowledged writes read back at the end.
    pub verified: u64,
    /// Acknowledged writes missing or different at the end.
    pub lost_writes: u64,
    /// The first few failures, for the operator.
    pub errors: Vec<String>,
}

impl LoadReport {
    pub fn clean(&self) -> bool {
        self.failures == 0 && self.lost_writes == 0
    }
}

/// The shared state of one run.
struct Run {
    cluster: Cluster,
    /// The environment's CA file, read again for every operation as a client reading
    /// `VAULT_CACERT` per call does: a CA rotation's bundle is trusted as soon as it is there.
    ca_file: std::path::PathBuf,
    token: String,
    mount: String,
    prefix: String,
    spec: LoadSpec,
    /// The node operations go to; moved when it stops answering.
    active: Mutex<usize>,
    acknowledged: Mutex<BTreeMap<String, String>>,
    latencies_ms: Mutex<Vec<f64>>,
    write_times: Mutex<Vec<Instant>>,
    retries: std::sync::atomic::AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Every operation carries the newest `X-Vault-Index` seen: a read served by a standby
    /// (the node believed active may be one, a moment after a hand-over) sees every write
    /// acknowledged before it.
    consistency: keyhold_client::Consistency,
}

/// Whether an error is one a Vault client retries: no answer, a 5xx, a 429, or a 412 (a
/// standby has not applied the client's `X-Vault-Index` yet).
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        other => other
            .status()
            .is_some_and(|s| s >= 500 || s == 429 || s == 412),
    }
}

impl Run {
    async fn client(&self) -> Result<Client> {
        let node = *self.active.lock().await;
        let client = match tokio::fs::read(&self.ca_file).await {
            Ok(ca) => Cluster::new(self.cluster.nodes.clone(), ca).client(node, Some(&self.token)),
            Err(_) => self.cluster.client(node, Some(&self.token)),
        }?;
        Ok(client.with_consistency(self.consistency.clone()))
    }

    /// Looks for the active node again (bounded by the cluster's own health timeouts).
    async fn follow_active(&self) {
        if let Some(node) = self.cluster.active().await {
            *self.active.lock().await = node;
        }
    }

    /// Runs `call` until it succeeds, fails with an error a client does not retry, or the
    /// operation's bound is spent.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + self.spec.op_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = match self.client().await {
                Ok(client) => call(client).await.map_err(|e| {
                    let retry = retryable(&e);
                    (e.to_string(), retry)
                }),
                Err(e) => Err((format!("{e:#}"), false)),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err((_, true)) if Instant::now() + backoff < deadline => {
                    self.retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    self.follow_active().await;
                }
                Err((message, _)) => return Err(format!("{what}: {message}")),
            }
        }
    }

    async fn write(&self, n: u64) -> Result<(), String> {
        let key = format!("{}/{n}", self.prefix);
        let value = format!("{n}-{:016x}", rand::thread_rng().gen::<u64>());
        let path = format!("{}/data/{key}", self.mount);
        let body = json!({ "data": { "v": value } });
        self.with_retries(&format!("write {path}"), |client| {
            let (path, body) = (path.clone(), body.clone());
            async move { client.write(&path, &body).await }
        })
        .await?;
        self.acknowledged.lock().await.insert(key, value);
        self.write_times.lock().await.push(Instant::now());
        Ok(())
    }

    /// The value of `key` as the cluster answers it now.
    async fn read_value(&self, key: &str) -> Result<Option<String>, String> {
        let path = format!("{}/data/{key}", self.mount);
        let secret = self
            .with_retries(&format!("read {path}"), |client| {
                let path = path.clone();
                async move { client.read(&path).await }
            })
            .await?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|d| d.get("data")?.get("v")?.as_str().map(str::to_owned)))
    }

    /// Reads an acknowledged write and checks its value (the scheduler makes every operation a
    /// write until one is acknowledged).
    async fn read(&self) -> Result<(), String> {
        let pick = {
            let acked = self.acknowledged.lock().await;
            let i = rand::thread_rng().gen_range(0..acked.len().max(1));
            acked.iter().nth(i).map(|(k, v)| (k.clone(), v.clone()))
        };
        let Some((key, want)) = pick else {
            return Err("read: no acknowledged write to read".into());
        };
        match self.read_value(&key).await? {
            Some(got) if got == want => Ok(()),
            got => Err(format!(
                "read {}/data/{key}: an acknowledged write reads back as {got:?}",
                self.mount
            )),
        }
    }
}

/// The environment's first KV v2 mount.
fn kv2_mount(d: &Deployment) -> Result<String> {
    d.env
        .secrets
        .iter()
        .find(|s| s.kind == "kv" && s.version == 2)
        .map(|s| s.path.trim_matches('/').to_string())
        .with_context(|| {
            format!(
                "environment {} mounts no KV v2 engine to load: add secrets \"kv\" {{ path = \"kv\" }} \
                 to {}",
                d.env.name,
                d.env.file.display()
            )
        })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the workload against `d` with the admin `token` for `spec.duration`.
pub async fn run(d: &Deployment, token: String, spec: LoadSpec) -> Result<LoadReport> {
    run_until(d, token, spec, &AtomicBool::new(false)).await
}

/// Runs the workload until `stop` is set (a workflow's `--with-load`: the workload spans the
/// workflow) or `spec.duration` has passed, whichever comes first.
pub async fn run_until(
    d: &Deployment,
    token: String,
    spec: LoadSpec,
    stop: &AtomicBool,
) -> Result<LoadReport> {
    if spec.rate == 0 || !(0.0..=1.0).contains(&spec.write_ratio) {
        bail!("--rate must be at least 1 and --write-ratio between 0 and 1");
    }
    let cluster = d.cluster()?;
    let active = cluster
        .active()
        .await
        .with_context(|| format!("no active node in {}: run `provision up` first", d.env.name))?;
    let run = Arc::new(Run {
        cluster,
        ca_file: d.ca_file(),
        token,
        mount: kv2_mount(d)?,
        prefix: format!("provision-load/{:08x}", rand::thread_rng().gen::<u32>()),
        spec: spec.clone(),
        active: Mutex::new(active),
        acknowledged: Mutex::new(BTreeMap::new()),
        latencies_ms: Mutex::new(Vec::new()),
        write_times: Mutex::new(Vec::new()),
        retries: Default::default(),
        failures: Mutex::new(Vec::new()),
        consistency: keyhold_client::Consistency::default(),
    });
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(spec.rate)));
    let mut tasks = Vec::new();
    let (mut writes, mut reads) = (0u64, 0u64);
    let mut n = 0u64;
    while started.elapsed() < spec.duration && !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await?;
        let nothing_to_read = run.acknowledged.lock().await.is_empty();
        let is_write = nothing_to_read || rand::thread_rng().gen_bool(spec.write_ratio);
        if is_write {
            writes += 1;
        } else {
            reads += 1;
        }
        n += 1;
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let result = if is_write {
                run.write(n).await
            } else {
                run.read().await
            };
            let ms = began.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(()) => run.latencies_ms.lock().await.push(ms),
                Err(e) => run.failures.lock().await.push(e),
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.context("a load operation panicked")?;
    }
    let ended = Instant::now();

    // Every acknowledged write, read back.
    let acked = run.acknowledged.lock().await.clone();
    let mut lost = Vec::new();
    for (key, want) in &acked {
        match run.read_value(key).await {
            Ok(Some(got)) if &got == want => {}
            Ok(got) => lost.push(format!("{key}: acknowledged {want:?}, reads {got:?}")),
            Err(e) => lost.push(format!("{key}: {e}")),
        }
    }

    let mut latencies = run.latencies_ms.lock().await.clone();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let mut marks = vec![started];
    marks.extend(run.write_times.lock().await.iter().copied());
    marks.push(ended);
    marks.sort();
    let longest_gap = marks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let failures = run.failures.lock().await.clone();
    let mut errors: Vec<String> = failures.iter().take(5).cloned().collect();
    errors.extend(lost.iter().take(5).cloned());
    Ok(LoadReport {
        mount: run.mount.clone(),
        operations: writes + reads,
        writes,
        reads,
        failures: failures.len() as u64,
        retries: run.retries.load(std::sync::atomic::Ordering::Relaxed),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        longest_write_gap_ms: longest_gap.as_secs_f64() * 1000.0,
        verified: acked.len() as u64 - lost.len() as u64,
        lost_writes: lost.len() as u64,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let cases = [
            (50.0, 50.0),
            (99.0, 99.0),
            (100.0, 100.0),
            (1.0, 1.0),
            (0.0, 1.0),
        ];
        for (p, want) in cases {
            assert_eq!(percentile(&v, p), want, "p{p}");
        }
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
