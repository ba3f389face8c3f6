//! A host a node runs on, seen by the playbook: a file tree it can write and a `keyhold`
//! service it can start and stop. Providers differ only here: [`LocalHost`] is a directory on
//! this machine and a detached process; an SSH host (a later release) is the same calls over
//! a session with systemd.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, test_kill_process, Pid, Signal};

use crate::state::write_atomic;

/// Whether a node's server process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running { pid: u32 },
    Stopped,
}

/// What the playbook needs from a host.
pub trait Host {
    /// The node this host carries, for messages.
    fn node(&self) -> &str;
    /// Writes `content` to `rel` (relative to the host root) unless it is already there with
    /// that mode; true when something changed.
    fn put_file(&self, rel: &Path, content: &[u8], mode: u32) -> Result<bool>;
    /// Reads a file under the host root; None when it does not exist.
    fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>>;
    /// Creates a directory (and parents) with `mode`, or fixes its mode; true when changed.
    fn ensure_dir(&self, rel: &Path, mode: u32) -> Result<bool>;
    fn service_state(&self) -> Result<ServiceState>;
    fn start_service(&self) -> Result<()>;
    /// Asks the server to reload its certificates and reopen its log and audit files (SIGHUP).
    fn reload_service(&self) -> Result<()>;
    /// Stops the server gracefully (it hands leadership over), killing it after `timeout`.
    /// True when it was running.
    fn stop_service(&self, timeout: Duration) -> Result<bool>;
}

/// A node as a directory on this machine (`.provision/ENV/nodes/NAME/`) laid out like a host's
/// root, and a server process started detached from `provision`.
pub struct LocalHost {
    node: String,
    root: PathBuf,
    binary: PathBuf,
    /// The server config, relative to the root.
    config: PathBuf,
    /// Where the process's stdout and stderr go, relative to the root.
    output: PathBuf,
    /// `keyhold <subcommand> -config=CONFIG ARGS...`: `server`, or `snapshot-agent`.
    subcommand: &'static str,
    args: Vec<String>,
    /// The pid file, relative to the root.
    pid_file: PathBuf,
}

/// The pid file of a local node, relative to its root.
const PID_FILE: &str = "run/keyhold.pid";
/// The pid file of a local node's snapshot agent, relative to its root.
const AGENT_PID_FILE: &str = "run/snapshot-agent.pid";

impl LocalHost {
    pub fn new(
        node: &str,
        root: PathBuf,
        binary: PathBuf,
        config: PathBuf,
        output: PathBuf,
    ) -> Self {
        LocalHost {
            node: node.to_string(),
            root,
            binary,
            config,
            output,
            subcommand: "server",
            args: Vec::new(),
            pid_file: PathBuf::from(PID_FILE),
        }
    }

    /// The node's snapshot agent (local provider): `keyhold snapshot-agent -config=CONFIG
    /// -schedule=SCHEDULE`, a detached process with its own pid file and output, started,
    /// checked and stopped as the server is.
    pub fn snapshot_agent(
        node: &str,
        root: PathBuf,
        binary: PathBuf,
        config: PathBuf,
        schedule: &str,
    ) -> Self {
        LocalHost {
            node: format!("{node} snapshot agent"),
            output: PathBuf::from(crate::render::Layout::LOG_DIR).join("snapshot-agent.out"),
            subcommand: "snapshot-agent",
            args: vec![format!("-schedule={schedule}")],
            pid_file: PathBuf::from(AGENT_PID_FILE),
            ..LocalHost::new(node, root, binary, config, PathBuf::new())
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `KEY=VALUE` lines of the node's private environment file (`Layout::ENV_FILE`, 0600:
    /// credentials for an auto seal or S3), as systemd's `EnvironmentFile=` reads them; none
    /// when there is no such file. Values are never shown in errors.
    fn environment_file(&self) -> Result<Vec<(String, String)>> {
        let path = self.path(Path::new(crate::render::Layout::ENV_FILE));
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

    fn pid_from_file(&self) -> Result<Option<u32>> {
        let path = self.path(&self.pid_file);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// True when `pid` is a live (not zombie) server process started with this node's config:
    /// a pid recycled by another program does not count.
    fn is_our_process(&self, pid: u32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let config = self.path(&self.config);
        let wanted = format!("-config={}", config.display());
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == wanted.as_bytes());
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
            })
            .unwrap_or(true);
        ours && !zombie
    }
}

impl Host for LocalHost {
    fn node(&self) -> &str {
        &self.node
    }

    fn put_file(&self, rel: &Path, content: &[u8], mode: u32) -> Result<bool> {
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

    fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let path = self.path(rel);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    fn ensure_dir(&self, rel: &Path, mode: u32) -> Result<bool> {
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

    fn service_state(&self) -> Result<ServiceState> {
        Ok(match self.pid_from_file()? {
            Some(pid) if self.is_our_process(pid) => ServiceState::Running { pid },
            _ => ServiceState::Stopped,
        })
    }

    fn start_service(&self) -> Result<()> {
        if let ServiceState::Running { pid } = self.service_state()? {
            bail!("{} already runs (pid {pid})", self.node);
        }
        let out_path = self.path(&self.output);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&out_path)
            .with_context(|| format!("open {}", out_path.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("open {}", out_path.display()))?;
        let config = self.path(&self.config);
        let vars = self.environment_file()?;
        // Its own process group: a Ctrl-C at the terminal that ran `provision` must not reach
        // the servers it started.
        let child = Command::new(&self.binary)
            .arg(self.subcommand)
            .arg(format!("-config={}", config.display()))
            .args(&self.args)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} ({} {} -config={})",
                    self.node,
                    self.binary.display(),
                    self.subcommand,
                    config.display()
                )
            })?;
        let pid = child.id();
        let pid_path = self.path(&self.pid_file);
        if let Some(parent) = pid_path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        write_atomic(&pid_path, format!("{pid}\n").as_bytes(), 0o600)?;
        // A server that exits at once (bad config, port taken) is reported here, with its log.
        std::thread::sleep(Duration::from_millis(300));
        if !self.is_our_process(pid) {
            let log = fs::read_to_string(&out_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited right after it started; the end of {}:\n{}",
                self.node,
                out_path.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    fn reload_service(&self) -> Result<()> {
        let ServiceState::Running { pid } = self.service_state()? else {
            bail!("{} is not running", self.node);
        };
        let target = Pid::from_raw(pid as i32).context("a pid is never 0")?;
        kill_process(target, Signal::HUP)
            .with_context(|| format!("signal {} (pid {pid}) to reload", self.node))
    }

    fn stop_service(&self, timeout: Duration) -> Result<bool> {
        let ServiceState::Running { pid } = self.service_state()? else {
            return Ok(false);
        };
        let target = Pid::from_raw(pid as i32).context("a pid is never 0")?;
        kill_process(target, Signal::TERM)
            .with_context(|| format!("signal {} (pid {pid})", self.node))?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_our_process(pid) {
                let _ = fs::remove_file(self.path(&self.pid_file));
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if test_kill_process(target).is_ok() && self.is_our_process(pid) {
            kill_process(target, Signal::KILL)
                .with_context(|| format!("kill {} (pid {pid})", self.node))?;
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = fs::remove_file(self.path(&self.pid_file));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in server: a shell script that runs until signalled, so its command line
    /// carries `server -config=...` as a real node's does.
    fn fake_server(dir: &Path) -> PathBuf {
        let path = dir.join("fake-keyhold");
        std::fs::write(
            &path,
            "#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn host(dir: &Path, binary: PathBuf) -> LocalHost {
        LocalHost::new(
            "keyhold-1",
            dir.join("root"),
            binary,
            PathBuf::from("etc/keyhold.d/keyhold.hcl"),
            PathBuf::from("var/log/keyhold/keyhold.out"),
        )
    }

    #[test]
    fn put_file_writes_once_and_fixes_modes() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), PathBuf::from("/bin/false"));
        let rel = Path::new("opt/keyhold/tls/node.key");
        assert!(h.put_file(rel, b"secret", 0o600).unwrap());
        assert!(
            !h.put_file(rel, b"secret", 0o600).unwrap(),
            "same content and mode"
        );
        let mode = fs::metadata(h.root().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(h.put_file(rel, b"secret", 0o640).unwrap(), "mode differs");
        assert!(h.put_file(rel, b"other", 0o640).unwrap(), "content differs");
        assert_eq!(h.read_file(rel).unwrap().as_deref(), Some(&b"other"[..]));
        assert_eq!(h.read_file(Path::new("nope")).unwrap(), None);
        assert!(h.ensure_dir(Path::new("opt/keyhold/data"), 0o700).unwrap());
        assert!(!h.ensure_dir(Path::new("opt/keyhold/data"), 0o700).unwrap());
    }

    #[test]
    fn start_stop_and_a_recycled_pid_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), fake_server(dir.path()));
        assert_eq!(h.service_state().unwrap(), ServiceState::Stopped);
        h.start_service().unwrap();
        let ServiceState::Running { pid } = h.service_state().unwrap() else {
            panic!("not running after start");
        };
        assert!(h.start_service().is_err(), "a second start is refused");
        assert!(h.stop_service(Duration::from_secs(10)).unwrap());
        assert_eq!(h.service_state().unwrap(), ServiceState::Stopped);
        assert!(!h.is_our_process(pid));
        assert!(
            !h.stop_service(Duration::from_secs(1)).unwrap(),
            "already stopped"
        );

        // A pid file naming a live process that is not this node's server.
        let pid_file = h.root().join(PID_FILE);
        fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(h.service_state().unwrap(), ServiceState::Stopped);
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("broken");
        fs::write(
            &script,
            "#!/bin/sh\necho 'error: port 8200 is taken' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let h = host(dir.path(), script);
        let err = h.start_service().unwrap_err().to_string();
        assert!(err.contains("exited right after it started"), "{err}");
        assert!(err.contains("port 8200 is taken"), "{err}");
    }
}
