//! `provision load`: the workload generator; a table (or JSON) of operations, failures,
//! latencies, the longest write gap and lost writes; exit 1 unless nothing failed and nothing
//! was lost. SIGTERM or SIGINT ends the run early: no new operations start, and the ones in
//! flight, the read-back and the report finish as at the end of `--duration` (a harness that
//! injects faults for as long as it needs stops the workload when it is done).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::*;

pub async fn run(
    env: EnvArg,
    spec: workflows::load::LoadSpec,
    json: bool,
    identity: IdentityArg,
    state_dir: &Path,
) -> Result<u8, Failure> {
    let d = load(&env, state_dir)?;
    let token = d
        .admin_token(&identity.identity)
        .await
        .context("log in with the environment's admin user")?;
    if !json {
        eprintln!(
            "provision load: {} for {:.0}s at {}/s, {:.0}% writes",
            d.env.name,
            spec.duration.as_secs_f64(),
            spec.rate,
            spec.write_ratio * 100.0
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let report = workflows::load::run_until(&d, token, spec, &stop).await;
    stopper.abort();
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        let rows = vec![vec![
            report.operations.to_string(),
            format!("{}/{}", report.writes, report.reads),
            report.failures.to_string(),
            report.retries.to_string(),
            format!(
                "{:.1}/{:.1}/{:.1}",
                report.p50_ms, report.p99_ms, report.max_ms
            ),
            format!("{:.0}", report.longest_write_gap_ms),
            format!("{} ({} verified)", report.lost_writes, report.verified),
        ]];
        println!(
            "{}",
            output::table(
                &[
                    "operations",
                    "writes/reads",
                    "failed",
                    "retried",
                    "p50/p99/max ms",
                    "longest write gap ms",
                    "lost writes",
                ],
                rows,
            )
        );
        for e in &report.errors {
            eprintln!("  {e}");
        }
    }
    Ok(if report.clean() { 0 } else { EXIT_FAILED })
}
