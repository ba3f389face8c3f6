//! A long-running process started detached from `provision` (its own process group, a pid
//! file, output appended to a log file), as the local provider runs its services. A pid is
//! trusted only while `/proc` shows that process alive with every one of its marker
//! arguments, so a recycled pid is never signalled.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, test_kill_process, Pid, Signal};

use crate::providers::ServiceState;
use crate::state::write_atomic;

/// How long a started process must stay up before it counts as started (a bad config or a
/// taken port makes a server exit within this).
const START_GRACE: Duration = Duration::from_millis(300);

/// One detached process: how to start it and how to recognise it.
pub struct Detached {
    /// What it is called in messages (`keyhold-1`, `keyhold-1 snapshot agent`).
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Arguments only this process has (its config path): all must be on its command line.
    pub markers: Vec<String>,
    pub pid_file: PathBuf,
    /// Where its stdout and stderr are appended (0600).
    pub output: PathBuf,
    pub cwd: PathBuf,
    /// Its environment beyond the inherited one (credentials: never shown in errors).
    pub envs: Vec<(String, String)>,
}

impl Detached {
    fn pid_from_file(&self) -> Result<Option<u32>> {
        match fs::read_to_string(&self.pid_file) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.pid_file.display())),
        }
    }

    /// True when `pid` is a live (not zombie) process carrying every marker.
    pub fn is_ours(&self, pid: u32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let ours = self.markers.iter().all(|marker| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == marker.as_bytes())
        });
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
            })
            .unwrap_or(true);
        ours && !zombie
    }

    pub fn state(&self) -> Result<ServiceState> {
        Ok(match self.pid_from_file()? {
            Some(pid) if self.is_ours(pid) => ServiceState::Running { pid },
            _ => ServiceState::Stopped,
        })
    }

    /// Starts it; an error (with the end of its output) when it exits within a moment.
    pub async fn start(&self) -> Result<u32> {
        if let ServiceState::Running { pid } = self.state()? {
            bail!("{} already runs (pid {pid})", self.label);
        }
        if let Some(parent) = self.output.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.output)
            .with_context(|| format!("open {}", self.output.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("open {}", self.output.display()))?;
        // Its own process group: a Ctrl-C at the terminal that ran `provision` must not reach
        // the processes it started. std's Command: the child outlives this process on purpose.
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} ({} {})",
                    self.label,
                    self.program.display(),
                    self.args.join(" ")
                )
            })?;
        let pid = child.id();
        if let Some(parent) = self.pid_file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        write_atomic(&self.pid_file, format!("{pid}\n").as_bytes(), 0o600)?;
        // A process that exits at once (bad config, port taken) is reported here, with its log.
        tokio::time::sleep(START_GRACE).await;
        if !self.is_ours(pid) {
            let log = fs::read_to_string(&self.output).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited right after it started; the end of {}:\n{}",
                self.label,
                self.output.display(),
                tail.join("\n")
            );
        }
        Ok(pid)
    }

    /// SIGTERM, then SIGKILL after `timeout`; false when it was not running.
    pub async fn stop(&self, timeout: Duration) -> Result<bool> {
        let ServiceState::Running { pid } = self.state()? else {
            return Ok(false);
        };
        let target = Pid::from_raw(pid as i32).context("a pid is never 0")?;
        kill_process(target, Signal::TERM)
            .with_context(|| format!("signal {} (pid {pid})", self.label))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_ours(pid) {
                let _ = fs::remove_file(&self.pid_file);
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if test_kill_process(target).is_ok() && self.is_ours(pid) {
            kill_process(target, Signal::KILL)
                .with_context(|| format!("kill {} (pid {pid})", self.label))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(true)
    }

    /// SIGHUP: reload.
    pub fn reload(&self) -> Result<()> {
        let ServiceState::Running { pid } = self.state()? else {
            bail!("{} is not running", self.label);
        };
        let target = Pid::from_raw(pid as i32).context("a pid is never 0")?;
        kill_process(target, Signal::HUP)
            .with_context(|| format!("signal {} (pid {pid}) to reload", self.label))
    }
}
