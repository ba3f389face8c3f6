//! The step engine. A workflow is an ordered list of [`Step`]s over a context; each step can
//! [`check`](Step::check) (what would change, found by looking only) and
//! [`apply`](Step::apply) (make it so). `plan` runs the checks alone; `up` runs, step by step,
//! the same check and then apply, so what `plan` shows and what `up` does cannot disagree.
//!
//! Architecture invariant: a check receives the context by shared reference and never writes a
//! file, starts a process or sends a request that changes anything; only `apply` holds the
//! context mutably.

pub mod progress;

use anyhow::Result;
use async_trait::async_trait;
use serde::Serialize;

pub use progress::{table, Outcome, Progress, Running, StepReport};

/// One change a step would make, as `plan` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The node it concerns, or None for the cluster as a whole.
    pub node: Option<String>,
    pub action: String,
}

impl Change {
    pub fn cluster(action: impl Into<String>) -> Change {
        Change {
            node: None,
            action: action.into(),
        }
    }

    pub fn node(node: &str, action: impl Into<String>) -> Change {
        Change {
            node: Some(node.to_string()),
            action: action.into(),
        }
    }
}

/// What an apply did: the line the user sees, and whether it changed anything beyond what its
/// check had found (a key made by someone else in between, a process that died since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub detail: String,
    pub changed: bool,
}

impl Applied {
    /// Nothing beyond what the check found.
    pub fn ok(detail: impl Into<String>) -> Applied {
        Applied {
            detail: detail.into(),
            changed: false,
        }
    }

    /// Something changed, whatever the check found.
    pub fn changed(detail: impl Into<String>) -> Applied {
        Applied {
            detail: detail.into(),
            changed: true,
        }
    }
}

/// A step's way to say what it is waiting for while it applies.
pub struct Note<'a> {
    progress: &'a Progress,
    running: &'a Running,
}

impl Note<'_> {
    pub fn say(&self, detail: &str) {
        self.progress.note(self.running, detail);
    }
}

/// One step of a workflow over the context `C`. Its futures need not be `Send`: a workflow
/// runs on one task, and per-node work inside a step is joined, not spawned.
#[async_trait(?Send)]
pub trait Step<C>: Sync {
    /// The name shown in progress lines, the summary and `--json`.
    fn name(&self) -> &'static str;
    /// Whether the step belongs to this run at all (a KMS key only under an awskms seal).
    fn wanted(&self, _ctx: &C) -> bool {
        true
    }
    /// What `apply` would change, found by looking only. Where an earlier step's changes
    /// decide the answer (nothing can be asked of a cluster that has no certificates yet), it
    /// reports what it would then do.
    async fn check(&self, ctx: &C) -> Result<Vec<Change>>;
    /// Makes the changes `check` found (an empty list: verify, wait, load what later steps
    /// need) and says what it did. Idempotent: a run interrupted anywhere is finished by the
    /// next.
    async fn apply(&self, ctx: &mut C, changes: &[Change], note: &Note<'_>) -> Result<Applied>;
}

/// `plan`: every wanted step's check, in order.
pub async fn plan<C>(steps: &[&dyn Step<C>], ctx: &C) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for step in steps.iter().filter(|s| s.wanted(ctx)) {
        changes.extend(step.check(ctx).await?);
    }
    Ok(changes)
}

/// `up`: each wanted step checked and applied in turn, with a progress line each; a step
/// whose check found changes is reported `changed`. Stops at the first failure, which is
/// reported on its step's line.
pub async fn apply<C>(steps: &[&dyn Step<C>], ctx: &mut C, progress: &mut Progress) -> Result<()> {
    for step in steps {
        if !step.wanted(ctx) {
            continue;
        }
        let running = progress.start(step.name());
        let result = async {
            let changes = step.check(ctx).await?;
            let note = Note {
                progress,
                running: &running,
            };
            let applied = step.apply(ctx, &changes, &note).await?;
            anyhow::Ok((changes, applied))
        }
        .await;
        match result {
            Ok((changes, applied)) => {
                let outcome = if changes.is_empty() && !applied.changed {
                    Outcome::Ok
                } else {
                    Outcome::Changed
                };
                progress.finish(running, outcome, applied.detail);
            }
            Err(e) => {
                progress.finish(running, Outcome::Failed, format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that must reach `want`: the check says how far it is, apply closes the gap.
    struct Reach {
        want: u32,
    }

    #[async_trait(?Send)]
    impl Step<u32> for Reach {
        fn name(&self) -> &'static str {
            "reach"
        }
        fn wanted(&self, _: &u32) -> bool {
            self.want > 0
        }
        async fn check(&self, at: &u32) -> Result<Vec<Change>> {
            Ok((*at..self.want)
                .map(|i| Change::cluster(format!("step {i}")))
                .collect())
        }
        async fn apply(&self, at: &mut u32, changes: &[Change], _: &Note<'_>) -> Result<Applied> {
            *at += changes.len() as u32;
            Ok(Applied::ok(format!("at {at}")))
        }
    }

    struct Fails;

    #[async_trait(?Send)]
    impl Step<u32> for Fails {
        fn name(&self) -> &'static str {
            "fails"
        }
        async fn check(&self, _: &u32) -> Result<Vec<Change>> {
            Ok(vec![Change::cluster("break")])
        }
        async fn apply(&self, _: &mut u32, _: &[Change], _: &Note<'_>) -> Result<Applied> {
            anyhow::bail!("it broke")
        }
    }

    #[tokio::test]
    async fn plan_is_the_checks_and_apply_makes_them_true() {
        let (three, none) = (Reach { want: 3 }, Reach { want: 0 });
        let steps: [&dyn Step<u32>; 2] = [&three, &none];
        let mut at = 1;
        let planned = plan(&steps, &at).await.unwrap();
        assert_eq!(planned.len(), 2, "{planned:?}");
        let mut progress = Progress::new(true);
        apply(&steps, &mut at, &mut progress).await.unwrap();
        assert_eq!(at, 3);
        assert_eq!(progress.steps.len(), 1, "an unwanted step is not shown");
        assert_eq!(progress.steps[0].outcome, Outcome::Changed);
        assert!(plan(&steps, &at).await.unwrap().is_empty(), "second plan");
        let mut progress = Progress::new(true);
        apply(&steps, &mut at, &mut progress).await.unwrap();
        assert_eq!(progress.steps[0].outcome, Outcome::Ok, "second apply");
    }

    #[tokio::test]
    async fn a_failing_step_stops_the_run_on_its_own_line() {
        let (fails, after) = (Fails, Reach { want: 5 });
        let steps: [&dyn Step<u32>; 2] = [&fails, &after];
        let mut at = 0;
        let mut progress = Progress::new(true);
        let err = apply(&steps, &mut at, &mut progress).await.unwrap_err();
        assert_eq!(err.to_string(), "it broke");
        assert_eq!(at, 0, "nothing after the failure ran");
        assert_eq!(progress.steps.len(), 1);
        assert_eq!(progress.steps[0].outcome, Outcome::Failed);
    }
}
