//! A local node's host: a directory on this machine laid out like a host's root, and its
//! services as processes started detached from `provision` (own process group, pid files
//! under `run/`, output under the log directory). A pid is trusted only while `/proc` shows
//! that process running with this node's config, so a recycled pid is never signalled.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use super::process::Detached;
use crate::providers::{CommandOutput, Host, Owner, Service, ServiceState};
use crate::render::Layout;
use crate::state::{fingerprint_file, write_atomic};

/// The pid file of a local node's server, relative to its root.
const PID_FILE: &str = "run/keyhold.pid";
/// The pid file of a local node's snapshot agent, relative to its root.
const AGENT_PID_FILE: &str = "run/snapshot-agent.pid";

/// A node as a directory on this machine (`.provision/ENV/nodes/NAME/`).
pub struct LocalHost {
    node: String,
    root: PathBuf,
    binary: PathBuf,
    /// The snapshot agent's `-schedule`, when the node runs one.
    agent_schedule: Option<String>,
}

/// How a service is run on a local node.
struct ServiceSpec {
    subcommand: &'static str,
    /// The config, relative to the root.
    config: &'static str,
    args: Vec<String>,
    pid_file: &'static str,
    /// Where the process's stdout and stderr go, relative to the root.
    output: &'static str,
}

impl LocalHost {
    pub fn new(node: &str, root: PathBuf, binary: PathBuf, agent_schedule: Option<String>) -> Self {
        LocalHost {
            node: node.to_string(),
            root,
            binary,
            agent_schedule,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn spec(&self, service: Service) -> Result<ServiceSpec> {
        Ok(match service {
            Service::Server => ServiceSpec {
                subcommand: "server",
                config: Layout::SERVER_CONFIG,
                args: Vec::new(),
                pid_file: PID_FILE,
                output: "var/log/keyhold/keyhold.out",
            },
            Service::SnapshotAgent => {
                let Some(schedule) = &self.agent_schedule else {
                    bail!(
                        "{} runs no snapshot agent (the environment names no S3 bucket)",
                        self.node
                    );
                };
                ServiceSpec {
                    subcommand: "snapshot-agent",
                    config: Layout::SNAPSHOT_AGENT_CONFIG,
                    args: vec![format!("-schedule={schedule}")],
                    pid_file: AGENT_PID_FILE,
                    output: "var/log/keyhold/snapshot-agent.out",
                }
            }
        })
    }

    /// The service as a detached process: `BINARY SUBCOMMAND -config=CONFIG ARGS...`, known
    /// by its config path. Its environment (read only when it starts) is left to `start`.
    fn process(&self, service: Service) -> Result<Detached> {
        let spec = self.spec(service)?;
        let config = format!("-config={}", self.path(Path::new(spec.config)).display());
        let mut args = vec![spec.subcommand.to_string(), config.clone()];
        args.extend(spec.args);
        Ok(Detached {
            label: match service {
                Service::Server => self.node.clone(),
                Service::SnapshotAgent => format!("{} snapshot agent", self.node),
            },
            program: self.binary.clone(),
            args,
            markers: vec![config],
            pid_file: self.path(Path::new(spec.pid_file)),
            output: self.path(Path::new(spec.output)),
            cwd: self.root.clone(),
            envs: Vec::new(),
        })
    }

    /// `KEY=VALUE` lines of the node's private environment file (`Layout::ENV_FILE`, 0600:
    /// credentials for an auto seal or S3), as systemd's `EnvironmentFile=` reads them; none
    /// when there is no such file. Values are never shown in errors.
    fn environment_file(&self) -> Result<Vec<(String, String)>> {
        let path = self.path(Path::new(Layout::ENV_FILE));
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .collect())
    }

    fn path(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }
}

#[async_trait]
impl Host for LocalHost {
    fn node(&self) -> &str {
        &self.node
    }

    async fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let path = self.path(rel);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    async fn put_file(
        &self,
        rel: &Path,
        content: &[u8],
        mode: u32,
        owner: Option<&Owner>,
    ) -> Result<bool> {
        refuse_owner(owner, rel)?;
        let path = self.path(rel);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.permissions().mode() & 0o7777 == mode
                && fs::read(&path).is_ok_and(|old| old == content)
            {
                return Ok(false);
            }
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        write_atomic(&path, content, mode)?;
        Ok(true)
    }

    /// A hard link to `src` where the mode already matches and both are on one filesystem (a
    /// server binary is large, and several nodes run it), else a copy.
    async fn install_file(&self, src: &Path, rel: &Path, mode: u32) -> Result<bool> {
        let path = self.path(rel);
        let src_meta = fs::metadata(src).with_context(|| format!("read {}", src.display()))?;
        if let Ok(meta) = fs::metadata(&path) {
            let same_file = meta.dev() == src_meta.dev() && meta.ino() == src_meta.ino();
            if meta.permissions().mode() & 0o7777 == mode
                && (same_file
                    || (meta.len() == src_meta.len()
                        && fingerprint_file(&path)? == fingerprint_file(src)?))
            {
                return Ok(false);
            }
        }
        let parent = path.parent().context("an installed file has a directory")?;
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let name = path.file_name().context("an installed file has a name")?;
        let tmp = parent.join(format!(
            ".{}.install-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        let linked =
            src_meta.permissions().mode() & 0o7777 == mode && fs::hard_link(src, &tmp).is_ok();
        if !linked {
            fs::copy(src, &tmp)
                .with_context(|| format!("copy {} to {}", src.display(), tmp.display()))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", tmp.display()))?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("install {}", path.display()))?;
        Ok(true)
    }

    async fn ensure_dir(&self, rel: &Path, mode: u32, owner: Option<&Owner>) -> Result<bool> {
        refuse_owner(owner, rel)?;
        let path = self.path(rel);
        let mut changed = false;
        if !path.is_dir() {
            fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
            changed = true;
        }
        let current = fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .permissions()
            .mode()
            & 0o7777;
        if current != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            changed = true;
        }
        Ok(changed)
    }

    async fn run(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput> {
        let Some((program, args)) = argv.split_first() else {
            bail!("no command to run on {}", self.node);
        };
        // A host's root always exists; a local node's does once anything was put there.
        fs::create_dir_all(&self.root)
            .with_context(|| format!("create {}", self.root.display()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).current_dir(&self.root);
        crate::providers::output_within(cmd, program, &self.node, timeout).await
    }

    async fn service_state(&self, service: Service) -> Result<ServiceState> {
        self.process(service)?.state()
    }

    async fn start(&self, service: Service) -> Result<()> {
        let mut process = self.process(service)?;
        // A host's root always exists; a local node's does once anything was put there.
        fs::create_dir_all(&self.root)
            .with_context(|| format!("create {}", self.root.display()))?;
        process.envs = self.environment_file()?;
        process.start().await.map(|_| ())
    }

    async fn stop(&self, service: Service, timeout: Duration) -> Result<bool> {
        self.process(service)?.stop(timeout).await
    }

    async fn reload(&self, service: Service) -> Result<()> {
        self.process(service)?.reload()
    }
}

/// Local nodes run as the user running `provision`: a file cannot be given to anyone else.
fn refuse_owner(owner: Option<&Owner>, rel: &Path) -> Result<()> {
    if let Some(owner) = owner {
        bail!(
            "the local provider writes {} as the user running provision; it cannot give it to \
             {}:{} (use the ssh provider for hosts with a service user)",
            rel.display(),
            owner.user,
            owner.group
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::conformance;

    fn host(dir: &Path, binary: PathBuf) -> LocalHost {
        LocalHost::new(
            "keyhold-1",
            dir.join("root"),
            binary,
            Some("every 1h".into()),
        )
    }

    #[tokio::test]
    async fn the_local_host_passes_the_conformance_suite() {
        conformance::run(|dir, binary| Box::new(host(dir, binary))).await;
    }

    #[tokio::test]
    async fn a_recycled_pid_is_not_ours_and_owners_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), conformance::fake_service(dir.path()));
        // A pid file naming a live process that is not this node's server.
        let pid_file = h.root().join(PID_FILE);
        fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(
            h.service_state(Service::Server).await.unwrap(),
            ServiceState::Stopped
        );
        assert!(!h
            .stop(Service::Server, Duration::from_secs(1))
            .await
            .unwrap());
        let owner = Owner {
            user: "keyhold".into(),
            group: "keyhold".into(),
        };
        let err = h
            .put_file(Path::new("x"), b"x", 0o600, Some(&owner))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot give it to keyhold:keyhold"), "{err}");
    }

    #[tokio::test]
    async fn no_snapshot_agent_without_a_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let h = LocalHost::new("keyhold-1", dir.path().into(), "/bin/false".into(), None);
        let err = h
            .start(Service::SnapshotAgent)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("runs no snapshot agent"), "{err}");
    }
}
