//! The provider seam: a [`Provider`] says which machines an environment has, where their files
//! live and how to reach them; a [`Host`] is one machine, seen through the calls every step and
//! workflow makes (files with mode and owner, commands with a timeout, services).
//!
//! Architecture invariant: steps and workflows reach machines only through these two traits.
//! What only makes sense for one kind of machine (a pid, a loopback address, an instance id)
//! lives in that provider's folder and in its own record in the state file ([`NodeRecord`]).
//!
//! What the next provider must implement: [`Provider`] (addresses, layout, hosts, how a node's
//! private environment is expressed on its machines, its state record)
//! and [`Host`] for its machines; then it runs the conformance suite in `conformance.rs`.

pub mod local;
pub mod ssh;

/// The conformance suite; with the `conformance` feature, for hosts tested from outside this
/// crate (the ssh provider's hosts under systemd, in `tests/`).
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::environment::Environment;
use crate::render::{Layout, NodeSpec};
use crate::state::StateDir;

/// A long-running program a host runs for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// `keyhold server`.
    Server,
    /// `keyhold snapshot-agent` on its schedule (`snapshots { s3 { ... } }`).
    SnapshotAgent,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Server => "server",
            Service::SnapshotAgent => "snapshot agent",
        }
    }
}

/// Whether a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// `pid` where the host can tell it (0 where it cannot).
    Running {
        pid: u32,
    },
    Stopped,
}

/// Who owns a file on a host; `None` in a call means "whoever the provider writes as".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub group: String,
}

impl Owner {
    pub fn new(user: &str, group: &str) -> Owner {
        Owner {
            user: user.to_string(),
            group: group.to_string(),
        }
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// None when it was killed by a signal.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// One machine of an environment. Paths are relative to the node's root ([`Layout`]).
#[async_trait]
pub trait Host: Send + Sync {
    /// The node this host carries, for messages.
    fn node(&self) -> &str;
    /// Reads a file; None when it does not exist.
    async fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>>;
    /// Writes `content` to `rel` unless it is already there with that mode and owner; true when
    /// something changed. Written whole or not at all.
    async fn put_file(
        &self,
        rel: &Path,
        content: &[u8],
        mode: u32,
        owner: Option<&Owner>,
    ) -> Result<bool>;
    /// Installs the file `src` (on this machine) as `rel` with `mode`, unless the same content
    /// is already there with that mode; true when something changed. The old file is replaced
    /// whole (a new file renamed over it), never written in place, so a running program keeps
    /// its image and a link to the old file keeps the old content.
    async fn install_file(&self, src: &Path, rel: &Path, mode: u32) -> Result<bool>;
    /// Creates a directory (and parents) with `mode`, or fixes its mode; true when changed.
    async fn ensure_dir(&self, rel: &Path, mode: u32, owner: Option<&Owner>) -> Result<bool>;
    /// Runs `argv` on the host (working directory: the node's root), killed after `timeout`.
    async fn run(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput>;
    async fn service_state(&self, service: Service) -> Result<ServiceState>;
    /// Starts a stopped service; an error (with what the service printed) when it exits at once.
    async fn start(&self, service: Service) -> Result<()>;
    /// Stops a service gracefully (the server hands leadership over), killing it after
    /// `timeout`. True when it was running.
    async fn stop(&self, service: Service, timeout: Duration) -> Result<bool>;
    /// Asks a running service to reload its certificates and reopen its files (SIGHUP).
    async fn reload(&self, service: Service) -> Result<()>;
    /// Stops the service gracefully (if it runs) and starts it again.
    async fn restart(&self, service: Service, stop_timeout: Duration) -> Result<()> {
        self.stop(service, stop_timeout).await?;
        self.start(service).await
    }
}

/// Where an environment's machines come from.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `local`, as written in `provider "local" {}`.
    fn kind(&self) -> &'static str;
    /// The address of each of the environment's `count` nodes, in order.
    fn addresses(&self, count: usize) -> Vec<IpAddr>;
    /// Where node `name`'s files live.
    fn layout(&self, name: &str) -> Layout;
    /// The host that carries `node`.
    fn host(&self, node: &NodeSpec) -> Arc<dyn Host>;
    /// What the provider keeps about `node` in the state file, read off the host now.
    async fn record(&self, node: &NodeSpec) -> Result<NodeRecord>;
}

/// A provider's own facts about one node, kept in `state.json` under `nodes.NAME.provider`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRecord {
    Local(local::LocalRecord),
    Ssh(ssh::SshRecord),
}

/// The provider an environment names, for `state_dir` (where the local provider keeps its
/// nodes).
/// Runs `argv` on `host`, bounded by `timeout`, failing with what it printed when it fails.
pub async fn run_ok(host: &dyn Host, argv: &[&str], timeout: Duration) -> Result<()> {
    let out = host.run(argv, timeout).await?;
    if !out.success() {
        anyhow::bail!(
            "{} on {}: {}",
            argv.join(" "),
            host.node(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `cmd` (its output piped) to the end, killed after `timeout`; `program` and `node` name
/// it in errors. How the local and chroot hosts run commands.
pub async fn output_within(
    mut cmd: tokio::process::Command,
    program: &str,
    node: &str,
    timeout: Duration,
) -> Result<CommandOutput> {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("run {program} on {node}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.map_err(|e| anyhow::anyhow!("run {program} on {node}: {e}"))?;
            Ok(CommandOutput {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
        Err(_) => anyhow::bail!(
            "{program} on {node} did not finish within {}s and was killed",
            timeout.as_secs()
        ),
    }
}

pub fn for_environment(env: &Environment, dir: &StateDir) -> Arc<dyn Provider> {
    match &env.provider {
        crate::environment::Provider::Local(settings) => Arc::new(local::LocalProvider::new(
            settings,
            dir.nodes_dir(),
            env.snapshots
                .as_ref()
                .filter(|s| s.s3.is_some())
                .map(|s| s.schedule.clone()),
        )),
        crate::environment::Provider::Ssh(settings) => Arc::new(ssh::SshProvider::new(settings)),
    }
}
