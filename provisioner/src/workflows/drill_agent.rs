//! Scheduled restore drills: `provision snapshot drill-agent` runs `provision snapshot verify`
//! (the drill of [`super::drill`]) after every upload to the environment's bucket, on its own
//! timer, or both, as `snapshots { drill { ... } }` says. It runs where the environment's state
//! is (the operator's host: the drill needs the encrypted init output to unseal), as a
//! process `up` starts for a local environment, or as the systemd unit `provision render`
//! writes under `operator/` for a host that keeps the state.
//!
//! Every round (`poll_interval`) it lists the bucket: a snapshot newer than the last one
//! drilled is drilled once (after every upload), and a timer slot that came is drilled with the
//! latest; a slot missed while the agent was down is drilled at start, as systemd's
//! `Persistent=true` does. A drill takes the environment's lock, and is put off to the next
//! round while another command (`upgrade`, `dr rebuild`) holds it. Each result lands where
//! `provision snapshot verify` puts it: the state file (`provision status`) and the
//! `keyhold_restore_drill_*` textfile. SIGTERM or SIGINT stop it, tearing down a drill in
//! progress.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use keyhold_snapshot::Schedule;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::deployment::Deployment;
use crate::environment::DrillSchedule;
use crate::providers::local::Detached;
use crate::providers::ServiceState;
use crate::state::{LockError, State};
use crate::workflows::drill;
use crate::workflows::snapshot::{self, Listed};

/// The lock holder's name while a scheduled drill runs.
pub const COMMAND: &str = "provision snapshot drill-agent";
/// How long `down` (or `up`, dropping the drill block) waits for the agent to finish tearing
/// down a drill in progress before killing it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a drill is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// A snapshot not drilled yet (`after_upload`): its `s3://` URL.
    Upload(String),
    /// The timer's slot came: the latest snapshot.
    Timer,
}

/// What the agent drills now, if anything: a snapshot newer than the last one drilled (with
/// `after_upload`), else the latest when the timer's slot (`next_timer`) has come.
pub fn due(
    settings: &DrillSchedule,
    now: DateTime<Utc>,
    next_timer: Option<DateTime<Utc>>,
    newest: Option<&Listed>,
    last_drilled: Option<&str>,
) -> Option<Due> {
    if settings.after_upload {
        if let Some(newest) = newest {
            if last_drilled != Some(newest.url.as_str()) {
                return Some(Due::Upload(newest.url.clone()));
            }
        }
    }
    next_timer.filter(|t| *t <= now).map(|_| Due::Timer)
}

/// The timer's first slot when the agent starts: now when the slot after the last drill has
/// passed already (or no drill ever ran), else that slot.
pub fn first_slot(
    schedule: &Schedule,
    now: DateTime<Utc>,
    last_drill: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match last_drill {
        Some(last) if schedule.next_after(last) > now => schedule.next_after(last),
        _ => now,
    }
}

/// The agent as a detached process on this machine (`up` starts it for a local environment):
/// `provision snapshot drill-agent --env=FILE --state-dir=DIR`, known by those arguments.
pub fn process(d: &Deployment) -> Result<Detached> {
    let program = std::env::current_exe().context("find the provision binary")?;
    let env_file = std::path::absolute(&d.env.file)
        .with_context(|| format!("resolve {}", d.env.file.display()))?;
    let state_dir = d
        .dir
        .root()
        .parent()
        .context("an environment's state directory has a parent")?
        .to_path_buf();
    let markers = vec![
        "drill-agent".to_string(),
        format!("--env={}", env_file.display()),
        format!("--state-dir={}", state_dir.display()),
    ];
    let mut args = vec!["snapshot".to_string()];
    args.extend(markers.iter().cloned());
    Ok(Detached {
        label: format!("{} restore drill agent", d.env.name),
        program,
        args,
        markers,
        pid_file: d.dir.root().join("run").join("drill-agent.pid"),
        output: log_file(d),
        cwd: d.dir.root().to_path_buf(),
        envs: Vec::new(),
    })
}

/// Where the agent's lines go: `.provision/ENV/drill-agent.log`.
pub fn log_file(d: &Deployment) -> PathBuf {
    d.dir.root().join("drill-agent.log")
}

/// The agent in `provision status`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub pid: Option<u32>,
    pub schedule: Option<String>,
    pub after_upload: bool,
    pub log: PathBuf,
}

/// The agent's state, when the environment schedules drills.
pub fn status(d: &Deployment) -> Result<Option<AgentStatus>> {
    let Some(settings) = d.env.snapshots.as_ref().and_then(|s| s.drill.as_ref()) else {
        return Ok(None);
    };
    let pid = match process(d)?.state()? {
        ServiceState::Running { pid } => Some(pid),
        ServiceState::Stopped => None,
    };
    Ok(Some(AgentStatus {
        pid,
        schedule: settings.schedule.clone(),
        after_upload: settings.after_upload,
        log: log_file(d),
    }))
}

/// Stops the agent if it runs (a drill in progress is torn down first); true when it ran.
pub async fn stop(d: &Deployment) -> Result<bool> {
    process(d)?.stop(STOP_TIMEOUT).await
}

fn say(line: impl std::fmt::Display) {
    println!("{} {line}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ"));
}

/// `provision snapshot drill-agent`: drills until SIGTERM or SIGINT. `load` reads the
/// environment file again every round, so an edited schedule applies without a restart.
pub async fn run(load: impl Fn() -> Result<Deployment>) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let d = load()?;
    let (settings, schedule) = settings_of(&d)?;
    snapshot::env_s3(&d)?;
    say(format_args!(
        "drill agent for {}: {}; looking at s3://{}/ every {}s",
        d.env.name,
        describe(settings.schedule.as_deref(), settings.after_upload),
        snapshot::env_s3(&d)?.bucket,
        settings.poll_interval.as_secs()
    ));
    let last = last_drill(&d);
    let mut last_drilled = last.as_ref().map(|r| r.snapshot.clone());
    let mut next_timer = schedule.map(|s| first_slot(&s, Utc::now(), last.map(|r| r.verified_at)));
    let mut d = d;
    let mut settings = settings;
    loop {
        match load().and_then(|fresh| settings_of(&fresh).map(|s| (fresh, s))) {
            Ok((fresh, (fresh_settings, fresh_schedule))) => {
                if fresh_settings.schedule != settings.schedule {
                    say(format_args!(
                        "schedule now: {}",
                        describe(
                            fresh_settings.schedule.as_deref(),
                            fresh_settings.after_upload
                        )
                    ));
                    next_timer = fresh_schedule.map(|s| s.next_after(Utc::now()));
                }
                d = fresh;
                settings = fresh_settings;
            }
            Err(e) => say(format_args!(
                "the environment file does not load now ({e:#}); keeping the last schedule"
            )),
        }
        let newest = if settings.after_upload {
            match snapshot::list(&d).await {
                Ok(listed) => listed.into_iter().next_back(),
                Err(e) => {
                    say(format_args!("cannot list the bucket: {e:#}"));
                    None
                }
            }
        } else {
            None
        };
        let now = Utc::now();
        if let Some(why) = due(
            &settings,
            now,
            next_timer,
            newest.as_ref(),
            last_drilled.as_deref(),
        ) {
            let from = match &why {
                Due::Upload(url) => url.clone(),
                Due::Timer => "latest".to_string(),
            };
            match d.dir.lock(COMMAND) {
                Ok(lock) => {
                    say(format_args!("drilling {from} ({})", reason(&why)));
                    let outcome = tokio::select! {
                        outcome = drill::verify(&d, &from, &[]) => Some(outcome),
                        _ = term.recv() => None,
                        _ = int.recv() => None,
                    };
                    let Some(outcome) = outcome else {
                        say("stopping: tearing down the drill in progress");
                        drill::tear_down(&d).await;
                        drop(lock);
                        return Ok(());
                    };
                    drop(lock);
                    match outcome {
                        Ok(report) => {
                            say(format_args!(
                                "{} {}: {}",
                                if report.ok { "passed" } else { "FAILED" },
                                report.snapshot,
                                report.detail
                            ));
                            last_drilled = Some(report.snapshot);
                        }
                        Err(e) => say(format_args!("the drill could not run: {e:#}")),
                    }
                    if why == Due::Timer {
                        next_timer = settings
                            .schedule
                            .as_deref()
                            .and_then(|s| Schedule::parse(s).ok())
                            .map(|s| s.next_after(Utc::now()));
                    }
                }
                Err(LockError::Held { holder, .. }) => say(format_args!(
                    "a drill is due ({}) but another command holds the environment's lock ({}); \
                     trying again in {}s",
                    reason(&why),
                    holder.map_or_else(|| "holder unknown".to_string(), |h| h.to_string()),
                    settings.poll_interval.as_secs()
                )),
                Err(e) => say(format_args!("cannot take the environment's lock: {e}")),
            }
        }
        let wait = next_timer
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .map_or(settings.poll_interval, |until| {
                until.min(settings.poll_interval)
            });
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

fn settings_of(d: &Deployment) -> Result<(DrillSchedule, Option<Schedule>)> {
    let settings = d
        .env
        .snapshots
        .as_ref()
        .and_then(|s| s.drill.clone())
        .with_context(|| {
            format!(
                "environment {} schedules no drills: add snapshots {{ drill {{ after_upload = \
                 true }} }} (or schedule = \"weekly\") to {}",
                d.env.name,
                d.env.file.display()
            )
        })?;
    let schedule = match &settings.schedule {
        Some(text) => Some(Schedule::parse(text).map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok((settings, schedule))
}

fn last_drill(d: &Deployment) -> Option<drill::DrillReport> {
    State::load(&d.dir).ok().flatten()?.cluster.last_drill
}

fn reason(why: &Due) -> &'static str {
    match why {
        Due::Upload(_) => "a new upload",
        Due::Timer => "the timer",
    }
}

/// `after every upload and weekly`, for the agent's first line and `provision status`.
pub fn describe(schedule: Option<&str>, after_upload: bool) -> String {
    match (schedule, after_upload) {
        (Some(s), true) => format!("after every upload and on schedule {s:?}"),
        (Some(s), false) => format!("on schedule {s:?}"),
        (None, _) => "after every upload".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, h, m, 0).unwrap()
    }

    fn listed(key: &str) -> Listed {
        Listed {
            key: key.to_string(),
            url: format!("s3://b/{key}"),
            size: 1,
            time: at(1, 0),
        }
    }

    fn settings(schedule: Option<&str>, after_upload: bool) -> DrillSchedule {
        DrillSchedule {
            schedule: schedule.map(str::to_string),
            after_upload,
            poll_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_new_upload_is_drilled_once() {
        let s = settings(None, true);
        let a = listed("a");
        assert_eq!(
            due(&s, at(2, 0), None, Some(&a), None),
            Some(Due::Upload("s3://b/a".into()))
        );
        assert_eq!(due(&s, at(2, 0), None, Some(&a), Some("s3://b/a")), None);
        let b = listed("b");
        assert_eq!(
            due(&s, at(2, 0), None, Some(&b), Some("s3://b/a")),
            Some(Due::Upload("s3://b/b".into()))
        );
        // An empty bucket is nothing to drill after an upload.
        assert_eq!(due(&s, at(2, 0), None, None, None), None);
    }

    #[test]
    fn uploads_are_not_drilled_without_after_upload_and_the_timer_drills_the_latest() {
        let s = settings(Some("hourly"), false);
        let a = listed("a");
        assert_eq!(due(&s, at(2, 0), Some(at(3, 0)), Some(&a), None), None);
        assert_eq!(
            due(&s, at(3, 0), Some(at(3, 0)), Some(&a), None),
            Some(Due::Timer)
        );
        // An empty bucket on the timer is a drill too: it fails, and says the bucket is empty.
        assert_eq!(
            due(&s, at(3, 1), Some(at(3, 0)), None, None),
            Some(Due::Timer)
        );
    }

    #[test]
    fn a_slot_missed_while_the_agent_was_down_is_drilled_at_start() {
        let hourly = Schedule::parse("hourly").unwrap();
        assert_eq!(first_slot(&hourly, at(5, 30), None), at(5, 30));
        assert_eq!(first_slot(&hourly, at(5, 30), Some(at(3, 10))), at(5, 30));
        assert_eq!(first_slot(&hourly, at(5, 30), Some(at(5, 10))), at(6, 0));
    }
}
