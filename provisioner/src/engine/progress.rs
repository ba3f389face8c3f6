//! What `provision` shows: a progress line per step with its elapsed time (indicatif on a
//! terminal, plain lines otherwise), a summary table at the end, or JSON for machines.
//! Progress always goes to stderr, so stdout carries only the result (`--json`, `env`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Already as wanted; nothing done.
    Ok,
    /// Something was created, started or written.
    Changed,
    Failed,
}

/// One finished step, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: String,
    pub outcome: Outcome,
    pub detail: String,
    pub elapsed_ms: u128,
}

/// Reports steps as they run.
pub struct Progress {
    quiet: bool,
    fancy: bool,
    started: Instant,
    pub steps: Vec<StepReport>,
}

/// A step being run; finish it with [`Progress::finish`].
pub struct Running {
    name: String,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    /// `quiet` (for `--json`) shows nothing while running.
    pub fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            fancy: !quiet && std::io::stderr().is_terminal(),
            started: Instant::now(),
            steps: Vec::new(),
        }
    }

    pub fn start(&mut self, name: impl Into<String>) -> Running {
        let name = name.into();
        let bar = self.fancy.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            bar.set_message(name.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Running {
            name,
            bar,
            started: Instant::now(),
        }
    }

    /// Updates the running step's message (long waits say what they wait for).
    pub fn note(&self, running: &Running, detail: &str) {
        if let Some(bar) = &running.bar {
            bar.set_message(format!("{}: {detail}", running.name));
        }
    }

    pub fn finish(&mut self, running: Running, outcome: Outcome, detail: impl Into<String>) {
        let detail = detail.into();
        let elapsed = running.started.elapsed();
        let mark = match outcome {
            Outcome::Ok => "ok     ",
            Outcome::Changed => "changed",
            Outcome::Failed => "FAILED ",
        };
        let line = format!(
            "{mark} {:<28} {detail} ({:.1}s)",
            running.name,
            elapsed.as_secs_f64()
        );
        if let Some(bar) = running.bar {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("{line}");
        }
        self.steps.push(StepReport {
            step: running.name,
            outcome,
            detail,
            elapsed_ms: elapsed.as_millis(),
        });
    }

    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.outcome == Outcome::Changed)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A plain message line (not a step).
    pub fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

/// A table with a header row, drawn with borders only.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}
