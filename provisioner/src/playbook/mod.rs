//! Playbooks (`playbooks/*.hcl`): ordered, idempotent steps that make a host what the server
//! needs, run through a [`Host`] (a host over SSH, a local root directory, a chroot), so the
//! same file prepares a machine `up` deploys to and an image the builder makes.
//!
//! ```hcl
//! user "keyhold" {                       # a system user (no shell, no home)
//!   system = true
//!   shell  = "/usr/sbin/nologin"
//! }
//! directory "/opt/keyhold/data" {        # created, mode and owner fixed
//!   mode  = "0700"
//!   owner = "keyhold"
//!   group = "keyhold"
//! }
//! file "/etc/motd" {                     # content, or source = a file on this machine
//!   content = "managed by provision\n"
//! }
//! template "keyhold.service" {           # a renderer template, rendered for the node
//!   owner = "root"
//! }
//! systemd "keyhold.service" {            # daemon-reload, enable, mask, start/restart/reload/stop
//!   daemon_reload = true
//!   enabled       = true
//! }
//! package "auditd" {}                    # installed with apt (state = "absent": purged)
//! sysctl "fs.suid_dumpable" {            # kept in a sysctl.d file; applied now on a live host
//!   value = "0"
//! }
//! command "hold the package" {           # guarded: creates a file, or unless a command succeeds
//!   argv    = ["apt-mark", "hold", "keyhold"]
//!   unless  = ["sh", "-c", "apt-mark showhold | grep -qx keyhold"]
//! }
//! ```
//!
//! Every step reports changed or unchanged; [`Playbook::check`] says what [`Playbook::apply`]
//! would change by looking only; a second apply changes nothing. An unknown step kind or key
//! is an error naming the file, line and key. Paths are absolute on the host and taken from the
//! host's root.

mod decode;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::providers::{Host, Owner};
use crate::render::RenderedFile;

pub use decode::parse_str;

/// The playbooks that ship with provision (`playbooks/NAME.hcl`), embedded in the binary.
const SHIPPED: &[(&str, &str)] = &[
    (
        "install-server",
        include_str!("../../../playbooks/install-server.hcl"),
    ),
    (
        "snapshot-timer",
        include_str!("../../../playbooks/snapshot-timer.hcl"),
    ),
    (
        "harden-host",
        include_str!("../../../playbooks/harden-host.hcl"),
    ),
    (
        "image-base",
        include_str!("../../../playbooks/image-base.hcl"),
    ),
];

/// Where `sysctl` steps keep their settings unless a step names another file.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/80-provision.conf";

/// The text of a shipped playbook, by name.
pub fn shipped_text(name: &str) -> Result<&'static str> {
    SHIPPED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .with_context(|| format!("no playbook named {name:?}"))
}

/// How long one step's command may run on a host.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// A parsed playbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step and where it was written (`playbooks/install-server.hcl:12`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: String,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    User {
        name: String,
        system: bool,
        home: String,
        shell: String,
    },
    Directory {
        path: PathBuf,
        mode: u32,
        owner: Option<Owner>,
    },
    File {
        path: PathBuf,
        content: Content,
        mode: u32,
        owner: Option<Owner>,
    },
    Template {
        name: String,
        mode: Option<u32>,
        owner: Option<Owner>,
    },
    Systemd {
        unit: String,
        daemon_reload: bool,
        enabled: Option<bool>,
        masked: Option<bool>,
        state: Option<UnitState>,
    },
    Package {
        name: String,
        present: bool,
    },
    Sysctl {
        key: String,
        value: String,
        /// The sysctl.d file that keeps it across boots.
        file: PathBuf,
    },
    Command {
        name: String,
        argv: Vec<String>,
        creates: Option<PathBuf>,
        unless: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    /// A file on the machine running provision; `{{NAME}}` is replaced from the target's
    /// variables (`{{keyhold_binary}}`).
    Source(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    Started,
    Stopped,
    Restarted,
    Reloaded,
}

/// Where a playbook runs and what it may use.
pub struct Target<'a> {
    pub host: &'a dyn Host,
    /// The node's rendered files (for `template` steps).
    pub rendered: &'a [RenderedFile],
    /// `{{NAME}}` values for sources.
    pub vars: &'a BTreeMap<String, String>,
    /// systemd runs on the host (a live host): units can be reloaded, started, stopped.
    /// Without it (an image in a chroot) only `enabled` applies.
    pub live: bool,
}

/// What one applied step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub step: String,
    pub at: String,
    pub changed: bool,
    pub detail: String,
}

impl Playbook {
    /// A playbook that ships with provision, by name.
    pub fn shipped(name: &str) -> Result<Playbook> {
        let (_, text) = SHIPPED.iter().find(|(n, _)| *n == name).with_context(|| {
            format!(
                "no playbook named {name:?}; shipped: {}",
                SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        parse_str(&format!("playbooks/{name}.hcl"), text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A playbook file.
    pub fn load(path: &Path) -> Result<Playbook> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        parse_str(&path.display().to_string(), &text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// What `apply` would change, one line per step that would, by looking only.
    pub async fn check(&self, t: &Target<'_>) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        for step in &self.steps {
            if let Some(change) = step
                .check(t)
                .await
                .with_context(|| format!("{} ({})", step.describe(), step.at))?
            {
                changes.push(format!("{}: {change}", step.describe()));
            }
        }
        Ok(changes)
    }

    /// Applies every step in order; stops at the first failure, naming the step and its line.
    pub async fn apply(&self, t: &Target<'_>) -> Result<Vec<StepOutcome>> {
        let mut outcomes = Vec::new();
        for step in &self.steps {
            let change = step
                .check(t)
                .await
                .with_context(|| format!("{} ({})", step.describe(), step.at))?;
            let detail = match &change {
                Some(change) => {
                    step.apply(t)
                        .await
                        .with_context(|| format!("{} ({})", step.describe(), step.at))?;
                    change.clone()
                }
                None => "unchanged".to_string(),
            };
            outcomes.push(StepOutcome {
                step: step.describe(),
                at: step.at.clone(),
                changed: change.is_some(),
                detail,
            });
        }
        Ok(outcomes)
    }
}

/// `/etc/x` as the host's relative path `etc/x`.
fn rel(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

async fn run(t: &Target<'_>, argv: &[&str]) -> Result<crate::providers::CommandOutput> {
    t.host.run(argv, STEP_TIMEOUT).await
}

async fn run_ok(t: &Target<'_>, argv: &[&str]) -> Result<String> {
    let out = run(t, argv).await?;
    if !out.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `MODE USER:GROUP` of a path on the host, or None when it does not exist.
async fn stat(t: &Target<'_>, path: &Path) -> Result<Option<(u32, String)>> {
    let path = rel(path).display().to_string();
    let out = run(
        t,
        &[
            "sh",
            "-c",
            "[ -e \"$1\" ] || exit 3; stat -c '%a %U:%G' \"$1\"",
            "sh",
            &path,
        ],
    )
    .await?;
    if out.status == Some(3) {
        return Ok(None);
    }
    if !out.success() {
        bail!(
            "stat {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mode, owner) = text
        .trim()
        .split_once(' ')
        .context("stat printed nothing")?;
    Ok(Some((
        u32::from_str_radix(mode, 8).context("stat printed no octal mode")?,
        owner.to_string(),
    )))
}

fn owner_text(owner: &Option<Owner>) -> Option<String> {
    owner.as_ref().map(|o| format!("{}:{}", o.user, o.group))
}

/// Why a file at `path` would change to `content`, `mode` and `owner`, or None.
async fn file_change(
    t: &Target<'_>,
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: &Option<Owner>,
) -> Result<Option<String>> {
    let Some((have_mode, have_owner)) = stat(t, path).await? else {
        return Ok(Some(format!("create {}", path.display())));
    };
    let mut why = Vec::new();
    if t.host.read_file(rel(path)).await?.as_deref() != Some(content) {
        why.push("content".to_string());
    }
    if have_mode != mode {
        why.push(format!("mode {have_mode:o} -> {mode:o}"));
    }
    if let Some(want) = owner_text(owner) {
        if want != have_owner {
            why.push(format!("owner {have_owner} -> {want}"));
        }
    }
    Ok((!why.is_empty()).then(|| format!("update {} ({})", path.display(), why.join(", "))))
}

impl Step {
    /// `directory /opt/keyhold/data`, for progress lines and errors.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::User { name, .. } => format!("user {name}"),
            Action::Directory { path, .. } => format!("directory {}", path.display()),
            Action::File { path, .. } => format!("file {}", path.display()),
            Action::Template { name, .. } => format!("template {name}"),
            Action::Systemd { unit, .. } => format!("systemd {unit}"),
            Action::Command { name, .. } => format!("command {name:?}"),
            Action::Package { name, .. } => format!("package {name}"),
            Action::Sysctl { key, .. } => format!("sysctl {key}"),
        }
    }

    fn template<'t>(&self, t: &'t Target<'_>, name: &str) -> Result<&'t RenderedFile> {
        t.rendered
            .iter()
            .find(|f| f.template == name)
            .with_context(|| {
                format!(
                    "no template {name:?} is rendered for this node (rendered: {})",
                    t.rendered
                        .iter()
                        .map(|f| f.template)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// A `file` step's content: the text, or the source file read with the variables filled in.
    fn bytes(t: &Target<'_>, content: &Content) -> Result<Vec<u8>> {
        match content {
            Content::Text(text) => Ok(text.clone().into_bytes()),
            Content::Source(source) => Self::source(t, source),
        }
    }

    fn source(t: &Target<'_>, source: &str) -> Result<Vec<u8>> {
        let mut path = source.to_string();
        for (name, value) in t.vars {
            path = path.replace(&format!("{{{{{name}}}}}"), value);
        }
        if path.contains("{{") {
            bail!("source {source:?} names a variable this run does not have");
        }
        std::fs::read(&path).with_context(|| format!("read {path}"))
    }

    /// What applying this step would change, by looking only; None when nothing.
    async fn check(&self, t: &Target<'_>) -> Result<Option<String>> {
        match &self.action {
            Action::User { name, .. } => {
                let out = run(t, &["getent", "passwd", name]).await?;
                Ok((!out.success()).then(|| format!("create user {name}")))
            }
            Action::Directory { path, mode, owner } => match stat(t, path).await? {
                None => Ok(Some(format!("create {}", path.display()))),
                Some((have_mode, have_owner)) => {
                    let owner_differs = owner_text(owner).is_some_and(|o| o != have_owner);
                    Ok((have_mode != *mode || owner_differs).then(|| {
                        format!(
                            "fix {} ({have_mode:o} {have_owner} -> {mode:o}{})",
                            path.display(),
                            owner_text(owner)
                                .map(|o| format!(" {o}"))
                                .unwrap_or_default()
                        )
                    }))
                }
            },
            Action::File {
                path,
                content,
                mode,
                owner,
            } => {
                let bytes = Self::bytes(t, content)?;
                file_change(t, path, &bytes, *mode, owner).await
            }
            Action::Template { name, mode, owner } => {
                let file = self.template(t, name)?;
                let path = Path::new("/").join(&file.path);
                file_change(
                    t,
                    &path,
                    file.content.as_bytes(),
                    mode.unwrap_or(file.mode),
                    owner,
                )
                .await
            }
            Action::Systemd {
                unit,
                daemon_reload,
                enabled,
                masked,
                state,
            } => {
                let mut todo = Vec::new();
                if let Some(masked) = masked {
                    let out = run(t, &["systemctl", "is-enabled", unit]).await?;
                    let is = String::from_utf8_lossy(&out.stdout).trim() == "masked";
                    if is != *masked {
                        todo.push(if *masked { "mask" } else { "unmask" });
                    }
                }
                if *daemon_reload && t.live {
                    let out = run_ok(
                        t,
                        &["systemctl", "show", "--property=NeedDaemonReload", unit],
                    )
                    .await?;
                    if out.trim() == "NeedDaemonReload=yes" {
                        todo.push("daemon-reload");
                    }
                }
                if let Some(enabled) = enabled {
                    let out = run(t, &["systemctl", "is-enabled", unit]).await?;
                    let is = String::from_utf8_lossy(&out.stdout).trim() == "enabled";
                    if is != *enabled {
                        todo.push(if *enabled { "enable" } else { "disable" });
                    }
                }
                if let (Some(state), true) = (state, t.live) {
                    let out = run(t, &["systemctl", "is-active", unit]).await?;
                    let active = String::from_utf8_lossy(&out.stdout).trim() == "active";
                    match state {
                        UnitState::Started if !active => todo.push("start"),
                        UnitState::Stopped if active => todo.push("stop"),
                        UnitState::Restarted => todo.push("restart"),
                        UnitState::Reloaded if active => todo.push("reload"),
                        _ => {}
                    }
                }
                Ok((!todo.is_empty()).then(|| todo.join(", ")))
            }
            Action::Command {
                creates, unless, ..
            } => {
                if let Some(path) = creates {
                    if stat(t, path).await?.is_some() {
                        return Ok(None);
                    }
                }
                if let Some(unless) = unless {
                    let argv: Vec<&str> = unless.iter().map(String::as_str).collect();
                    if run(t, &argv).await?.success() {
                        return Ok(None);
                    }
                }
                Ok(Some("run".to_string()))
            }
            Action::Package { name, present } => {
                let installed = package_installed(t, name).await?;
                Ok(match (installed, present) {
                    (false, true) => Some(format!("install {name}")),
                    (true, false) => Some(format!("purge {name}")),
                    _ => None,
                })
            }
            Action::Sysctl { key, value, file } => {
                let mut todo = Vec::new();
                let text = read_text(t, file).await?;
                if sysctl_line(&text, key).as_deref() != Some(value.as_str()) {
                    todo.push(format!("set {key} = {value} in {}", file.display()));
                }
                if t.live && sysctl_now(t, key).await? != normalize(value) {
                    todo.push(format!("apply {key} = {value}"));
                }
                Ok((!todo.is_empty()).then(|| todo.join(", ")))
            }
        }
    }

    async fn apply(&self, t: &Target<'_>) -> Result<()> {
        match &self.action {
            Action::User {
                name,
                system,
                home,
                shell,
            } => {
                let mut argv = vec!["useradd", "--user-group", "--no-create-home"];
                if *system {
                    argv.push("--system");
                }
                argv.extend(["--home-dir", home, "--shell", shell, name]);
                run_ok(t, &argv).await?;
            }
            Action::Directory { path, mode, owner } => {
                t.host.ensure_dir(rel(path), *mode, owner.as_ref()).await?;
            }
            Action::File {
                path,
                content,
                mode,
                owner,
            } => {
                let bytes = Self::bytes(t, content)?;
                t.host
                    .put_file(rel(path), &bytes, *mode, owner.as_ref())
                    .await?;
            }
            Action::Template { name, mode, owner } => {
                let file = self.template(t, name)?;
                t.host
                    .put_file(
                        &file.path,
                        file.content.as_bytes(),
                        mode.unwrap_or(file.mode),
                        owner.as_ref(),
                    )
                    .await?;
            }
            Action::Systemd {
                unit,
                daemon_reload,
                enabled,
                masked,
                state,
            } => {
                if let Some(masked) = masked {
                    let verb = if *masked { "mask" } else { "unmask" };
                    run_ok(t, &["systemctl", verb, unit]).await?;
                }
                if *daemon_reload && t.live {
                    run_ok(t, &["systemctl", "daemon-reload"]).await?;
                }
                if let Some(enabled) = enabled {
                    let verb = if *enabled { "enable" } else { "disable" };
                    run_ok(t, &["systemctl", verb, unit]).await?;
                }
                if let (Some(state), true) = (state, t.live) {
                    let verb = match state {
                        UnitState::Started => "start",
                        UnitState::Stopped => "stop",
                        UnitState::Restarted => "restart",
                        UnitState::Reloaded => "reload",
                    };
                    run_ok(t, &["systemctl", verb, unit]).await?;
                }
            }
            Action::Command { argv, .. } => {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                run_ok(t, &argv).await?;
            }
            Action::Package { name, present } => {
                // Installs from the lists the host has; when they do not know the package (a
                // fresh image, lists cleaned), reads them again and retries once.
                let script = if *present {
                    "apt-get install -y -q --no-install-recommends \"$1\" || \
                     { apt-get update -q && apt-get install -y -q --no-install-recommends \"$1\"; }"
                } else {
                    "apt-get purge -y -q \"$1\""
                };
                run_ok(
                    t,
                    &[
                        "env",
                        "DEBIAN_FRONTEND=noninteractive",
                        "sh",
                        "-c",
                        script,
                        "sh",
                        name,
                    ],
                )
                .await?;
            }
            Action::Sysctl { key, value, file } => {
                let text = read_text(t, file).await?;
                let updated = with_sysctl_line(&text, key, value);
                if updated != text {
                    t.host
                        .put_file(rel(file), updated.as_bytes(), 0o644, None)
                        .await?;
                }
                if t.live {
                    run_ok(t, &["sysctl", "-q", "-w", &format!("{key}={value}")]).await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether dpkg has `name` installed on the host.
async fn package_installed(t: &Target<'_>, name: &str) -> Result<bool> {
    let out = run(t, &["dpkg-query", "-W", "-f=${db:Status-Abbrev}", name]).await?;
    Ok(out.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii"))
}

/// A text file on the host; empty when it does not exist.
async fn read_text(t: &Target<'_>, path: &Path) -> Result<String> {
    let bytes = t.host.read_file(rel(path)).await?.unwrap_or_default();
    String::from_utf8(bytes).with_context(|| format!("{} is not text", path.display()))
}

/// `a  b` and `a\tb` read alike: sysctl prints multi-part values with tabs.
fn normalize(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value a sysctl.d file gives `key` (its last line for it), normalised.
fn sysctl_line(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| normalize(v))
        })
        .next_back()
}

/// `text` with `key = value`: the key's lines replaced by one, or the line appended.
fn with_sysctl_line(text: &str, key: &str, value: &str) -> String {
    let want = format!("{key} = {value}");
    let mut out = Vec::new();
    let mut placed = false;
    for line in text.lines() {
        let is_key = !line.trim_start().starts_with('#')
            && line.split_once('=').is_some_and(|(k, _)| k.trim() == key);
        if !is_key {
            out.push(line.to_string());
        } else if !placed {
            out.push(want.clone());
            placed = true;
        }
    }
    if !placed {
        if out.is_empty() {
            out.push("# Kernel settings kept by provision's playbooks (sysctl steps).".to_string());
        }
        out.push(want);
    }
    out.join("\n") + "\n"
}

/// The running kernel's value of `key`, normalised.
async fn sysctl_now(t: &Target<'_>, key: &str) -> Result<String> {
    Ok(normalize(&run_ok(t, &["sysctl", "-n", key]).await?))
}

#[cfg(test)]
mod tests;
