//! `keyhold snapshot-agent -config=FILE [-once | -schedule EXPR] [-check]`: one pass (what the
//! systemd timer runs), or a pass at every time of a schedule (the local provider, which has no
//! systemd). Each pass logs one line; in schedule mode a failed pass is logged and the agent
//! waits for the next time, and SIGTERM or Ctrl-C between passes ends it with status 0.

use chrono::Utc;
use tracing::{error, info};

use super::super::args::SnapshotAgentCmd;
use super::super::CliError;
use crate::snapshot_agent::{run_once, AgentConfig, AgentError, Schedule};

pub async fn run(cmd: SnapshotAgentCmd) -> Result<u8, CliError> {
    let config =
        AgentConfig::load(&cmd.config).map_err(|e| CliError::Local(format!("Error: {e}")))?;
    let schedule = cmd
        .schedule
        .as_deref()
        .map(Schedule::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("Error: -schedule: {e}")))?;
    if cmd.check {
        println!("Success! {} is a valid snapshot agent config", config.file);
        return Ok(0);
    }
    init_logging();
    match schedule {
        None => {
            let report = run_once(&config).await.map_err(|e| failure(&config, e))?;
            info!("{report}");
            Ok(0)
        }
        Some(schedule) => scheduled(&config, schedule).await,
    }
}

async fn scheduled(config: &AgentConfig, schedule: Schedule) -> Result<u8, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| CliError::Local(format!("Error: listening for SIGTERM: {e}")))?;
    let mut last = Utc::now();
    info!(
        "snapshot agent started: schedule {schedule} (UTC), config {}, next pass at {}",
        config.file,
        schedule.next_after(last).to_rfc3339()
    );
    loop {
        // Never the same slot twice, even if the timer wakes a little early.
        let next = schedule.next_after(Utc::now().max(last));
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = terminate.recv() => return stopped("SIGTERM"),
            _ = tokio::signal::ctrl_c() => return stopped("interrupt"),
        }
        last = next;
        match run_once(config).await {
            Ok(report) => info!("{report}"),
            Err(e) => error!(
                "snapshot pass failed; the next is at {}: {e}",
                schedule.next_after(next).to_rfc3339()
            ),
        }
    }
}

fn stopped(why: &str) -> Result<u8, CliError> {
    info!("snapshot agent stopping on {why}");
    Ok(0)
}

/// A failed pass as the CLI's error: local causes exit 1, the node's or S3's exit 2.
fn failure(config: &AgentConfig, e: AgentError) -> CliError {
    let text = format!("Error: snapshot agent ({}): {e}", config.file);
    if e.is_local() {
        CliError::Local(text)
    } else {
        CliError::Remote(text)
    }
}

/// One line per event on stderr (the journal under systemd), at info for keyhold only.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::new("warn,keyhold=info");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
