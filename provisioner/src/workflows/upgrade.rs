//! `provision upgrade`: a new `keyhold` binary rolled onto a running cluster one node at a time,
//! with the cluster serving throughout, as the production runbook does it by hand.
//!
//! Before anything changes it checks that the cluster can lose a node (every node unsealed and
//! serving, every voter healthy and caught up per autopilot, a failure tolerance of at least
//! one) and that the binary is not older than what any node runs; then it takes a snapshot
//! (kept for `--rollback`). Standbys go first: each is stopped gracefully, its binary kept as
//! `keyhold.previous`, the new one installed, started, unsealed (by its seal, or from the
//! encrypted init output), and waited for until it serves and autopilot counts it a healthy
//! voter again. The active node goes last, by graceful shutdown: it hands leadership to the
//! caught-up voter with the newest version (the server's rule), and the upgrade refuses to stop
//! it unless a voter already runs the new version. The first failure stops the upgrade with the
//! cluster serving (a node whose new binary does not come up is put back on its previous one)
//! and says how to go on; running it again resumes where it stopped (progress is in the state
//! file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::Utc;
use serde::Serialize;

use crate::cluster::{poll, Cluster, Role};
use crate::deployment::{
    binary_version, Deployment, AUTO_UNSEAL_TIMEOUT, FORM_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT,
};
use crate::engine::{Outcome, Progress};
use crate::providers::{Host, Service};
use crate::render::Layout;
use crate::state::{fingerprint_file, write_atomic, State, UpgradeRecord};
use crate::steps::active_last;

/// How long a restarted node may take to count as a healthy, caught-up voter again.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// What to do.
#[derive(Debug, Clone)]
pub enum Goal {
    /// Install this binary everywhere.
    Upgrade { binary: PathBuf },
    /// Put back the binary each node ran before the last upgrade.
    Rollback,
}

/// One node's part.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub from_version: String,
    pub to_version: String,
    /// `upgraded`, `rolled back`, `already done` (a resumed run), or `planned` (`--dry-run`).
    pub outcome: String,
    pub seconds: f64,
    /// Whether it was the active node when its turn came.
    pub was_active: bool,
}

/// What `provision upgrade` prints with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub environment: String,
    pub rollback: bool,
    pub dry_run: bool,
    pub resumed: bool,
    pub version: String,
    pub nodes: Vec<NodeReport>,
    /// The snapshot taken before the first node changed.
    pub snapshot: PathBuf,
    pub active_before: Option<String>,
    pub active_after: Option<String>,
    /// The version the active node runs at the end.
    pub active_version_after: Option<String>,
    pub seconds: f64,
}

/// One node as the survey found it.
struct Survey {
    role: Role,
    version: String,
    /// SHA-256 of the binary installed on the node.
    installed_sha256: Option<String>,
}

/// Upgrades (or rolls back) the cluster of `d`; see the module documentation.
pub async fn upgrade(
    d: &Deployment,
    token: &str,
    identity: &[PathBuf],
    goal: Goal,
    dry_run: bool,
    progress: &mut Progress,
) -> Result<UpgradeReport> {
    let started = Instant::now();
    let Some(mut state) = State::load(&d.dir)? else {
        bail!(
            "{} has no state: `provision up --env {}` first",
            d.env.name,
            d.env.name
        );
    };
    let cluster = d.cluster()?;
    // The shares a Shamir node is unsealed with after its restart.
    let keys = if d.env.seal.is_auto() {
        Vec::new()
    } else {
        d.init_secrets(identity)?.unseal_keys_b64.clone()
    };
    // A run that stopped midway (killed, or the machine lost) may have left the node it was
    // working on stopped or sealed: bring it back before checking anything.
    if let (Goal::Upgrade { .. }, Some(u)) = (&goal, &state.upgrade) {
        if u.finished_at.is_none() && u.rolled_back_at.is_none() {
            resume_stopped(d, &cluster, token, &keys, progress).await?;
        }
    }
    let step = progress.start("check the cluster");
    let survey = survey_all(d, &cluster).await?;
    let active_before = cluster.active().await;
    let refuse = |why: String| -> anyhow::Error { anyhow!("{why}; nothing was changed") };
    for (i, s) in survey.iter().enumerate() {
        if !matches!(s.role, Role::Active | Role::Standby) {
            return Err(refuse(format!(
                "{} is {}: upgrade only a healthy cluster (`provision status`, `provision \
                 unseal`, `provision up`)",
                d.nodes[i].name,
                s.role.as_str()
            )));
        }
    }
    check_autopilot(d, &cluster, token).await.map_err(refuse)?;

    // What is wanted, and which nodes still need it.
    let (rollback, binary, sha, version) = match &goal {
        Goal::Upgrade { binary } => {
            let binary = std::path::absolute(binary)
                .with_context(|| format!("resolve {}", binary.display()))?;
            let version = binary_version(&binary)?;
            let sha = fingerprint_file(&binary)?;
            for (i, s) in survey.iter().enumerate() {
                let running = semver::Version::parse(&s.version).map_err(|_| {
                    refuse(format!(
                        "{} reports version {:?}, which is not a semantic version",
                        d.nodes[i].name, s.version
                    ))
                })?;
                if version < running {
                    return Err(refuse(format!(
                        "{} is version {version}, older than {} which {} runs: a downgrade \
                         could meet a storage format it cannot read (`provision upgrade \
                         --rollback` returns to the binaries the last upgrade replaced)",
                        binary.display(),
                        running,
                        d.nodes[i].name
                    )));
                }
            }
            (false, Some(binary), sha, version.to_string())
        }
        Goal::Rollback => {
            let Some(last) = state.upgrade.clone() else {
                return Err(refuse(format!(
                    "{} has had no upgrade to roll back",
                    d.env.name
                )));
            };
            if last.rolled_back_at.is_some() {
                return Err(refuse(format!(
                    "the upgrade to {} was already rolled back",
                    last.version
                )));
            }
            (true, None, last.binary_sha256.clone(), last.version.clone())
        }
    };
    // A node is done when it runs the wanted binary (upgrade), or no longer runs the upgrade's
    // binary (rollback).
    let done = |s: &Survey| {
        let runs_the_upgrade = s.installed_sha256.as_deref() == Some(sha.as_str());
        if rollback {
            !runs_the_upgrade
        } else {
            runs_the_upgrade && s.version == version
        }
    };
    let pending: Vec<usize> = (0..d.nodes.len()).filter(|&i| !done(&survey[i])).collect();
    let resumed = !rollback
        && state
            .upgrade
            .as_ref()
            .is_some_and(|u| u.finished_at.is_none() && u.binary_sha256 == sha);
    let order = active_last(&pending, active_before);
    // The version a node runs once done: the upgrade's, or (rollback) the one it ran before.
    let rolled_back_to = state
        .upgrade
        .as_ref()
        .map(|u| u.from_versions.clone())
        .unwrap_or_default();
    let target_version = |name: &str| {
        if rollback {
            rolled_back_to.get(name).cloned().unwrap_or_default()
        } else {
            version.clone()
        }
    };
    progress.finish(
        step,
        Outcome::Ok,
        format!(
            "healthy; {} of {} node(s) to {}",
            order.len(),
            d.nodes.len(),
            if rollback { "roll back" } else { "upgrade" }
        ),
    );
    let mut report = UpgradeReport {
        environment: d.env.name.clone(),
        rollback,
        dry_run,
        resumed,
        version: version.clone(),
        nodes: Vec::new(),
        snapshot: PathBuf::new(),
        active_before: active_before.map(|i| d.nodes[i].name.clone()),
        active_after: None,
        active_version_after: None,
        seconds: 0.0,
    };
    for i in (0..d.nodes.len()).filter(|i| !pending.contains(i)) {
        report.nodes.push(NodeReport {
            node: d.nodes[i].name.clone(),
            from_version: survey[i].version.clone(),
            to_version: survey[i].version.clone(),
            outcome: "already done".into(),
            seconds: 0.0,
            was_active: Some(i) == active_before,
        });
    }
    if order.is_empty() && !dry_run {
        report.version = version;
        report.active_after = report.active_before.clone();
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if dry_run {
        for &i in &order {
            report.nodes.push(NodeReport {
                node: d.nodes[i].name.clone(),
                from_version: survey[i].version.clone(),
                to_version: target_version(&d.nodes[i].name),
                outcome: "planned".into(),
                seconds: 0.0,
                was_active: Some(i) == active_before,
            });
        }
        report.snapshot = state
            .upgrade
            .as_ref()
            .map(|u| u.snapshot.clone())
            .unwrap_or_default();
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // The snapshot first (the runbook's step 3), kept for a rollback; a resumed run keeps the
    // one its first run took.
    if !rollback && !resumed {
        let step = progress.start("snapshot before the upgrade");
        let path = save_snapshot(d, &cluster, token).await?;
        let from_versions = d
            .nodes
            .iter()
            .zip(&survey)
            .map(|(n, s)| (n.name.clone(), s.version.clone()))
            .collect::<BTreeMap<_, _>>();
        state.upgrade = Some(UpgradeRecord {
            binary: binary.clone().unwrap_or_default(),
            binary_sha256: sha.clone(),
            version: version.clone(),
            from_versions,
            snapshot: path.clone(),
            nodes_done: Vec::new(),
            started_at: Some(Utc::now()),
            finished_at: None,
            rolled_back_at: None,
        });
        state.save(&d.dir)?;
        progress.finish(step, Outcome::Changed, path.display().to_string());
    }
    report.snapshot = state
        .upgrade
        .as_ref()
        .map(|u| u.snapshot.clone())
        .context("the upgrade's record")?;

    for &i in &order {
        let node = &d.nodes[i];
        let host = d.host(node);
        let is_active = cluster.active().await == Some(i);
        let step = progress.start(format!(
            "{} {}{}",
            if rollback { "roll back" } else { "upgrade" },
            node.name,
            if is_active { " (active)" } else { "" }
        ));
        let node_started = Instant::now();
        let to_version = target_version(&node.name);
        if is_active && !rollback {
            // Leadership must move to a node already on the new version.
            let mut successor = false;
            for (j, s) in survey_all(d, &cluster).await?.iter().enumerate() {
                successor |= j != i && s.role == Role::Standby && s.version == version;
            }
            if !successor {
                progress.finish(step, Outcome::Failed, "no standby runs the new version");
                bail!(
                    "no standby runs {version}, so stopping the active node {} would hand \
                     leadership to an older version; nothing was changed on it. Run `provision \
                     upgrade` again once the standbys are upgraded, or `provision upgrade \
                     --rollback`",
                    node.name
                );
            }
        }
        let replaced = replace_binary(
            d,
            &cluster,
            token,
            host.as_ref(),
            i,
            binary.as_deref(),
            &keys,
        )
        .await;
        if let Err(e) = replaced {
            progress.finish(step, Outcome::Failed, format!("{e:#}"));
            state.save(&d.dir)?;
            return Err(e.context(format!(
                "{} stopped at {}; the cluster is serving. Fix the cause and run `provision \
                 upgrade --env {}{}` again to go on, or `provision upgrade --env {} \
                 --rollback` to return every node to its previous binary",
                if rollback {
                    "the rollback"
                } else {
                    "the upgrade"
                },
                node.name,
                d.env.name,
                binary
                    .as_ref()
                    .map(|b| format!(" --binary {}", b.display()))
                    .unwrap_or_else(|| " --rollback".into()),
                d.env.name
            )));
        }
        let now = survey_one(d, &cluster, i).await?;
        let entry = state.nodes.entry(node.name.clone()).or_default();
        entry.version = now.version.clone();
        entry.binary_sha256 = now.installed_sha256.clone().unwrap_or_default();
        entry.started_at = Some(Utc::now());
        entry.provider = Some(d.provider.record(node).await?);
        if let Some(u) = state.upgrade.as_mut() {
            if rollback {
                u.nodes_done.retain(|n| n != &node.name);
            } else if !u.nodes_done.contains(&node.name) {
                u.nodes_done.push(node.name.clone());
            }
        }
        state.save(&d.dir)?;
        let seconds = node_started.elapsed().as_secs_f64();
        progress.finish(
            step,
            Outcome::Changed,
            format!("{} -> {} in {seconds:.1}s", survey[i].version, now.version),
        );
        report.nodes.push(NodeReport {
            node: node.name.clone(),
            from_version: survey[i].version.clone(),
            to_version: now.version.clone(),
            outcome: if rollback { "rolled back" } else { "upgraded" }.into(),
            seconds,
            was_active: is_active,
        });
        if now.version != to_version {
            bail!(
                "{} reports version {} after the change, not {to_version}; the cluster is \
                 serving",
                node.name,
                now.version
            );
        }
    }
    if let Some(u) = state.upgrade.as_mut() {
        if rollback {
            u.rolled_back_at = Some(Utc::now());
        } else {
            u.finished_at = Some(Utc::now());
        }
    }
    state.save(&d.dir)?;
    let active_after = cluster.wait_active(FORM_TIMEOUT).await?;
    report.active_after = Some(d.nodes[active_after].name.clone());
    report.active_version_after = cluster.health(active_after).await.map(|h| h.version);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Starts and unseals the nodes a stopped run left down or sealed (the one it was upgrading).
async fn resume_stopped(
    d: &Deployment,
    cluster: &Cluster,
    token: &str,
    keys: &[String],
    progress: &mut Progress,
) -> Result<()> {
    for (i, node) in d.nodes.iter().enumerate() {
        let role = Role::from_health(cluster.health(i).await.as_ref());
        if !matches!(role, Role::Down | Role::Sealed) {
            continue;
        }
        let step = progress.start(format!("resume: bring {} back", node.name));
        let host = d.host(node);
        if role == Role::Down {
            host.start(Service::Server).await?;
            cluster.wait_responding(i, START_TIMEOUT).await?;
        }
        unseal_and_rejoin(d, cluster, token, i, keys).await?;
        progress.finish(step, Outcome::Changed, "started and unsealed");
    }
    Ok(())
}

/// Every node's role, version and installed binary.
async fn survey_all(d: &Deployment, cluster: &Cluster) -> Result<Vec<Survey>> {
    let mut out = Vec::new();
    for i in 0..d.nodes.len() {
        out.push(survey_one(d, cluster, i).await?);
    }
    Ok(out)
}

async fn survey_one(d: &Deployment, cluster: &Cluster, i: usize) -> Result<Survey> {
    let health = cluster.health(i).await;
    let host = d.host(&d.nodes[i]);
    Ok(Survey {
        role: Role::from_health(health.as_ref()),
        version: health.map(|h| h.version).unwrap_or_default(),
        installed_sha256: installed_sha256(host.as_ref()).await?,
    })
}

/// SHA-256 of the binary installed on `host`, read there (`sha256sum`).
async fn installed_sha256(host: &dyn Host) -> Result<Option<String>> {
    let out = host
        .run(&["sha256sum", Layout::BINARY], Duration::from_secs(60))
        .await?;
    if !out.success() {
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string))
}

/// Autopilot's view from the active node: healthy, every node a voter, room to lose one.
async fn check_autopilot(d: &Deployment, cluster: &Cluster, token: &str) -> Result<(), String> {
    let Some(state) = cluster.autopilot_state(token).await else {
        return Err(format!(
            "autopilot's state could not be read from {}'s active node",
            d.env.name
        ));
    };
    let unhealthy: Vec<String> = state
        .servers
        .values()
        .filter(|s| !s.healthy)
        .map(|s| format!("{} ({})", s.name, s.status))
        .collect();
    if !state.healthy || !unhealthy.is_empty() {
        return Err(format!(
            "autopilot reports the cluster unhealthy (not caught up or not in contact: {}); \
             wait for it to settle (`keyhold operator raft autopilot state`)",
            if unhealthy.is_empty() {
                "see its state".to_string()
            } else {
                unhealthy.join(", ")
            }
        ));
    }
    for node in &d.nodes {
        if !state.voters.contains(&node.name) {
            return Err(format!(
                "{} is not a Raft voter yet (autopilot promotes it once stable)",
                node.name
            ));
        }
    }
    if state.failure_tolerance < 1 {
        return Err(format!(
            "the cluster has {} voter(s) and can lose none: stopping a node would drop it \
             below quorum (a rolling upgrade needs at least 3 voters)",
            state.voters.len()
        ));
    }
    Ok(())
}

/// Saves a Raft snapshot to `.provision/ENV/upgrades/` (0600); its path.
async fn save_snapshot(d: &Deployment, cluster: &Cluster, token: &str) -> Result<PathBuf> {
    let active = cluster
        .active()
        .await
        .context("no active node to take the snapshot from")?;
    let dir = d.dir.root().join("upgrades");
    crate::state::create_private_dir(&dir)?;
    let path = dir.join(format!(
        "pre-upgrade-{}.snap",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let mut bytes = Vec::new();
    cluster
        .client(active, Some(token))?
        .raft_snapshot_save(&mut bytes)
        .await
        .context("save a snapshot before the upgrade")?;
    write_atomic(&path, &bytes, 0o600)?;
    Ok(path)
}

/// Stops node `i` gracefully, installs `binary` (keeping the current one as the previous) or,
/// with `None`, puts the previous one back; starts, unseals and waits until it is a healthy
/// voter. When the new binary does not come up, the node is put back on the binary it ran and
/// the error returned with the cluster serving.
async fn replace_binary(
    d: &Deployment,
    cluster: &Cluster,
    token: &str,
    host: &dyn Host,
    i: usize,
    binary: Option<&Path>,
    keys: &[String],
) -> Result<()> {
    let node = &d.nodes[i];
    let (binary_rel, previous_rel) = (Layout::BINARY, Layout::PREVIOUS_BINARY);
    host.stop(Service::Server, STOP_TIMEOUT).await?;
    match binary {
        Some(binary) => {
            let installed = installed_sha256(host).await?;
            if installed.as_deref() != Some(fingerprint_file(binary)?.as_str()) {
                run_ok(host, &["ln", "-f", binary_rel, previous_rel]).await?;
            }
            host.install_file(binary, Path::new(binary_rel), 0o755)
                .await?;
        }
        None => {
            let kept = host
                .run(&["test", "-e", previous_rel], Duration::from_secs(10))
                .await?;
            if !kept.success() {
                let _ = host.start(Service::Server).await;
                bail!(
                    "{} has no previous binary ({previous_rel}) to return to",
                    node.name
                );
            }
            // The swap: the upgrade's binary becomes the previous one.
            run_ok(
                host,
                &["ln", "-f", binary_rel, "usr/local/bin/.keyhold.swap"],
            )
            .await?;
            run_ok(host, &["mv", "-f", previous_rel, binary_rel]).await?;
            run_ok(
                host,
                &["mv", "-f", "usr/local/bin/.keyhold.swap", previous_rel],
            )
            .await?;
        }
    }
    if let Err(e) = bring_up(d, cluster, token, host, i, keys).await {
        if binary.is_some() {
            // Back to the binary it ran, so the cluster keeps its redundancy.
            run_ok(host, &["ln", "-f", previous_rel, binary_rel]).await?;
            let _ = host.stop(Service::Server, STOP_TIMEOUT).await;
            bring_up(d, cluster, token, host, i, keys)
                .await
                .with_context(|| {
                    format!(
                        "{} did not come back on its previous binary either: `provision status`, \
                     its log under {}",
                        node.name,
                        node.layout.root.join(Layout::LOG_DIR).display()
                    )
                })?;
            return Err(e.context(format!(
                "{} did not come up on the new binary and runs its previous one again",
                node.name
            )));
        }
        return Err(e);
    }
    Ok(())
}

/// Starts node `i`, unseals it (or waits for its seal to), and waits until it serves and
/// autopilot counts it a healthy voter.
async fn bring_up(
    d: &Deployment,
    cluster: &Cluster,
    token: &str,
    host: &dyn Host,
    i: usize,
    keys: &[String],
) -> Result<()> {
    host.start(Service::Server).await?;
    cluster.wait_responding(i, START_TIMEOUT).await?;
    unseal_and_rejoin(d, cluster, token, i, keys).await
}

/// Unseals running node `i` (or waits for its seal to), then waits until it serves and
/// autopilot counts it a healthy voter.
async fn unseal_and_rejoin(
    d: &Deployment,
    cluster: &Cluster,
    token: &str,
    i: usize,
    keys: &[String],
) -> Result<()> {
    if d.env.seal.is_auto() {
        cluster.wait_auto_unsealed(i, AUTO_UNSEAL_TIMEOUT).await?;
    } else {
        cluster.unseal(i, keys).await?;
    }
    cluster.wait_serving(i, FORM_TIMEOUT).await?;
    wait_healthy_voter(d, cluster, token, i).await
}

/// Waits until the active node's autopilot reports node `i` a healthy voter: in contact, and
/// within autopilot's trailing-logs bound of the leader's last index.
async fn wait_healthy_voter(
    d: &Deployment,
    cluster: &Cluster,
    token: &str,
    i: usize,
) -> Result<()> {
    let name = d.nodes[i].name.as_str();
    let mut last = String::from("no answer yet");
    let caught_up = poll(CATCH_UP_TIMEOUT, Duration::from_millis(200), async || {
        let Some(state) = cluster.autopilot_state(token).await else {
            last = "autopilot's state could not be read".into();
            return None;
        };
        match state.servers.get(name) {
            Some(s) if s.healthy && matches!(s.status.as_str(), "voter" | "leader") => Some(()),
            Some(s) => {
                last = format!(
                    "{name}: {}, healthy {}, last index {} (last contact {})",
                    s.status, s.healthy, s.last_index, s.last_contact
                );
                None
            }
            None => {
                last = format!("{name} is not in the Raft configuration");
                None
            }
        }
    })
    .await;
    caught_up.ok_or_else(|| {
        anyhow!(
            "{name} did not become a healthy, caught-up voter within {}s ({last})",
            CATCH_UP_TIMEOUT.as_secs()
        )
    })
}

/// Runs `argv` on `host` (a file operation: a minute at most), failing with what it printed.
async fn run_ok(host: &dyn Host, argv: &[&str]) -> Result<()> {
    crate::providers::run_ok(host, argv, Duration::from_secs(60)).await
}
