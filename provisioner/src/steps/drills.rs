//! `drill agent` (with `snapshots { drill { ... } }`, local provider): the restore drill agent
//! (`provision snapshot drill-agent`) running on this machine, where the environment's state
//! is; stopped when the environment no longer schedules drills. Last in `up`: its drills log
//! in as the environment's admin. On other providers the agent runs on the operator's host
//! from the unit `provision render` writes under `operator/`.

use anyhow::{bail, Result};
use async_trait::async_trait;

use super::UpRun;
use crate::engine::{Applied, Change, Note, Step};
use crate::environment::Provider;
use crate::providers::ServiceState;
use crate::workflows::drill_agent;

pub struct DrillAgent;

fn scheduled(run: &UpRun) -> bool {
    run.d
        .env
        .snapshots
        .as_ref()
        .is_some_and(|s| s.s3.is_some() && s.drill.is_some())
}

fn running(run: &UpRun) -> Result<bool> {
    Ok(drill_agent::process(&run.d)?.state()? != ServiceState::Stopped)
}

#[async_trait(?Send)]
impl Step<UpRun> for DrillAgent {
    fn name(&self) -> &'static str {
        "drill agent"
    }

    fn wanted(&self, run: &UpRun) -> bool {
        matches!(run.d.env.provider, Provider::Local(_))
            && (scheduled(run) || running(run).unwrap_or(false))
    }

    async fn check(&self, run: &UpRun) -> Result<Vec<Change>> {
        let drill = run.d.env.snapshots.as_ref().and_then(|s| s.drill.as_ref());
        Ok(match (drill, running(run)?) {
            (Some(drill), false) if scheduled(run) => vec![Change::cluster(format!(
                "start the restore drill agent ({})",
                drill_agent::describe(drill.schedule.as_deref(), drill.after_upload)
            ))],
            (_, true) if !scheduled(run) => vec![Change::cluster(
                "stop the restore drill agent (the environment schedules no drills now)",
            )],
            _ => Vec::new(),
        })
    }

    async fn apply(&self, run: &mut UpRun, _: &[Change], _: &Note<'_>) -> Result<Applied> {
        let process = drill_agent::process(&run.d)?;
        if !scheduled(run) {
            return Ok(if drill_agent::stop(&run.d).await? {
                Applied::changed("stopped the restore drill agent")
            } else {
                Applied::ok("not running")
            });
        }
        if let ServiceState::Running { pid } = process.state()? {
            return Ok(Applied::ok(format!(
                "running (pid {pid}; log {})",
                process.output.display()
            )));
        }
        let pid = process.start().await?;
        if process.state()? == ServiceState::Stopped {
            bail!(
                "the restore drill agent stopped right after it started; see {}",
                process.output.display()
            );
        }
        Ok(Applied::changed(format!(
            "started (pid {pid}; log {})",
            process.output.display()
        )))
    }
}
