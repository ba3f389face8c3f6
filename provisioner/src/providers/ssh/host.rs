//! A host reached over SSH (ssh2, which blocks: every call runs in `spawn_blocking`), its
//! services run by systemd.
//!
//! - The host key is checked before anything is sent: against a pinned fingerprint when the
//!   environment gives one, else against known_hosts; an unknown host is refused unless
//!   `trust_on_first_use` (then its key is recorded), and a changed key always is.
//! - Files travel over SFTP into a private staging directory (`mktemp -d`), are checked there
//!   by SHA-256 against what was sent, and are then put in place with `install` (mode and
//!   owner) and renamed over the old file, so a file is replaced whole or not at all. With
//!   `sudo`, everything past the upload runs through `sudo -n`.
//! - Commands run under `timeout`, so one that hangs is killed on the host, not just
//!   abandoned; their working directory is the node's root.
//! - Services are systemd units: `keyhold.service`, and the snapshot agent's
//!   `keyhold-snapshot.timer`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, HashType, KnownHostFileKind, Session};

use super::settings::SshSettings;
use crate::providers::{CommandOutput, Host, Owner, Service, ServiceState};

/// How long a started service must stay active before it counts as started.
const START_GRACE: Duration = Duration::from_millis(500);
/// Bound on the small commands the host itself runs (stat, install, systemctl).
const SMALL: Duration = Duration::from_secs(60);
/// Bound on one upload over SFTP.
const UPLOAD_LIMIT: Duration = Duration::from_secs(600);

/// One host over SSH.
pub struct SshHost {
    node: String,
    address: std::net::IpAddr,
    settings: Arc<SshSettings>,
    /// The pinned fingerprint of this host, when the environment pins them.
    pin: Option<String>,
    /// Where the node's relative paths start (`/` on a real host).
    root: PathBuf,
    session: Arc<Mutex<Option<Session>>>,
}

/// `argv` as one POSIX shell command line.
fn shell_line(argv: &[&str]) -> Result<String> {
    shlex::try_join(argv.iter().copied())
        .map_err(|e| anyhow!("cannot quote {argv:?} for the remote shell: {e}"))
}

fn unit(service: Service) -> &'static str {
    match service {
        Service::Server => "keyhold.service",
        Service::SnapshotAgent => "keyhold-snapshot.timer",
    }
}

/// `SHA256:base64` as OpenSSH prints a host key's fingerprint.
fn fingerprint(session: &Session) -> Option<String> {
    use base64::Engine as _;
    session.host_key_hash(HashType::Sha256).map(|hash| {
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        )
    })
}

impl SshHost {
    pub fn new(
        node: &str,
        address: std::net::IpAddr,
        settings: Arc<SshSettings>,
        pin: Option<String>,
        root: PathBuf,
    ) -> SshHost {
        SshHost {
            node: node.to_string(),
            address,
            settings,
            pin,
            root,
            session: Arc::new(Mutex::new(None)),
        }
    }

    /// Connects, checks the host key and logs in (blocking).
    fn connect(&self) -> Result<Session> {
        let s = &self.settings;
        let addr = SocketAddr::new(self.address, s.port);
        let tcp = TcpStream::connect_timeout(&addr, s.connect_timeout).map_err(|e| {
            anyhow!(
                "cannot reach {} ({}) over SSH at {addr}: {e}; check the address, that sshd \
                 runs there and that nothing in between drops port {}",
                self.node,
                self.address,
                s.port
            )
        })?;
        // Every operation is a few small round trips (channel open, exec, EOF, close): without
        // TCP_NODELAY each waits on the peer's delayed ACK.
        tcp.set_nodelay(true).context("set TCP_NODELAY")?;
        let mut session = Session::new().context("start an SSH session")?;
        session.set_tcp_stream(tcp);
        session.set_timeout(s.connect_timeout.as_millis() as u32);
        session
            .handshake()
            .with_context(|| format!("SSH handshake with {} ({addr})", self.node))?;
        self.check_host_key(&session)?;
        session
            .userauth_pubkey_file(&s.user, None, &s.private_key_file, None)
            .map_err(|e| {
                anyhow!(
                    "{} refused to log in {} with the key {}: {e}; its public half must be in \
                     ~{}/.ssh/authorized_keys there",
                    self.node,
                    s.user,
                    s.private_key_file.display(),
                    s.user
                )
            })?;
        session.set_timeout(0);
        Ok(session)
    }

    fn check_host_key(&self, session: &Session) -> Result<()> {
        let s = &self.settings;
        let seen = fingerprint(session).context("the host offered no key")?;
        if let Some(pin) = &self.pin {
            if &seen != pin {
                bail!(
                    "{} ({}) offered the host key {seen}, not the pinned {pin}: refusing to \
                     connect (someone may be in between; if the host was rebuilt, pin its new \
                     key in host_key_fingerprints)",
                    self.node,
                    self.address
                );
            }
            return Ok(());
        }
        let (key, key_type) = session.host_key().context("the host offered no key")?;
        let mut known = session.known_hosts().context("read known hosts")?;
        let file = &s.known_hosts;
        if file.exists() {
            known
                .read_file(file, KnownHostFileKind::OpenSSH)
                .with_context(|| format!("read {}", file.display()))?;
        }
        let name = match s.port {
            22 => self.address.to_string(),
            port => format!("[{}]:{port}", self.address),
        };
        match known.check_port(&self.address.to_string(), s.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => bail!(
                "{} ({}) offered the host key {seen}, which is not the one {} records for it: \
                 refusing to connect (someone may be in between). If the host was rebuilt, \
                 remove the old key with `ssh-keygen -R '{name}' -f {}` and check the new one \
                 out of band",
                self.node,
                self.address,
                file.display(),
                file.display()
            ),
            CheckResult::NotFound if s.trust_on_first_use => {
                known
                    .add(
                        &name,
                        key,
                        "added by provision (trust_on_first_use)",
                        key_type.into(),
                    )
                    .context("record the host key")?;
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("create {}", dir.display()))?;
                }
                known
                    .write_file(file, KnownHostFileKind::OpenSSH)
                    .with_context(|| format!("write {}", file.display()))?;
                eprintln!(
                    "Trusted {} ({}) on first use: host key {seen} added to {}",
                    self.node,
                    self.address,
                    file.display()
                );
                Ok(())
            }
            CheckResult::NotFound => bail!(
                "{} ({}) is not in {} (its host key is {seen}): check that key out of band, \
                 then add it (`ssh-keyscan -p {} {} >> {}`), pin it in host_key_fingerprints, \
                 or set trust_on_first_use = true",
                self.node,
                self.address,
                file.display(),
                s.port,
                self.address,
                file.display()
            ),
            CheckResult::Failure => bail!(
                "could not check {}'s host key against {}",
                self.node,
                file.display()
            ),
        }
    }

    /// Runs `f` with a logged-in session (made on first use, made again after a failure),
    /// off the async runtime.
    async fn with_session<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Session) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = self.session.clone();
        let this = self.clone_for_blocking();
        tokio::task::spawn_blocking(move || {
            let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(this.connect()?);
            }
            let session = guard.as_ref().expect("connected above");
            let result = f(session);
            if result.is_err() {
                // A timed-out or broken transport is not used again: the next call connects
                // afresh (a command that merely failed returns Ok with its status).
                *guard = None;
            }
            result
        })
        .await
        .context("the SSH worker thread panicked")?
    }

    fn clone_for_blocking(&self) -> SshHost {
        SshHost {
            node: self.node.clone(),
            address: self.address,
            settings: self.settings.clone(),
            pin: self.pin.clone(),
            root: self.root.clone(),
            session: self.session.clone(),
        }
    }

    /// `argv` through `sudo -n` when the environment says so.
    fn privileged(&self, argv: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        if self.settings.sudo {
            out.extend(["sudo", "-n", "--"].map(String::from));
        }
        out.extend(argv.iter().map(|a| a.to_string()));
        out
    }

    /// Runs a shell command line (already quoted), feeding `stdin`; blocking, and bounded by
    /// `limit` on this side too (the login shell's own start-up runs before any `timeout`).
    fn exec(session: &Session, line: &str, stdin: &[u8], limit: Duration) -> Result<CommandOutput> {
        session.set_timeout(limit.as_millis().min(u128::from(u32::MAX)) as u32);
        let out = Self::exec_unbounded(session, line, stdin);
        session.set_timeout(0);
        out.map_err(|e| {
            if e.chain()
                .any(|c| c.to_string().to_lowercase().contains("timed out"))
            {
                anyhow!("no answer within {}s: {e:#}", limit.as_secs())
            } else {
                e
            }
        })
    }

    fn exec_unbounded(session: &Session, line: &str, stdin: &[u8]) -> Result<CommandOutput> {
        let mut channel = session.channel_session().context("open an SSH channel")?;
        channel.exec(line).context("start a command over SSH")?;
        if !stdin.is_empty() {
            channel.write_all(stdin).context("send a command's input")?;
        }
        channel.send_eof().context("close a command's input")?;
        let mut stdout = Vec::new();
        channel
            .read_to_end(&mut stdout)
            .context("read a command's output")?;
        let mut stderr = Vec::new();
        channel
            .stderr()
            .read_to_end(&mut stderr)
            .context("read a command's errors")?;
        channel.wait_close().context("finish a command")?;
        let status = channel.exit_status().context("a command's exit status")?;
        let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
        Ok(CommandOutput {
            status: if signal.is_some() { None } else { Some(status) },
            stdout,
            stderr,
        })
    }

    /// Runs `argv` (privileged as configured) in the node's root, killed on the host after
    /// `timeout`.
    async fn run_privileged(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput> {
        let secs = timeout.as_secs().max(1).to_string();
        let mut full = vec!["timeout", "--kill-after=5", secs.as_str()];
        full.extend_from_slice(argv);
        let inner = shell_line(&full)?;
        // The node's root exists on a host (`/`); a test host's is made on first use.
        let root = shlex::try_quote(&self.root.display().to_string())?.into_owned();
        let line = shell_line(
            &self
                .privileged(&[
                    "sh",
                    "-c",
                    &format!("mkdir -p {root} && cd {root} && exec {inner}"),
                ])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let limit = timeout + SMALL;
        self.with_session(move |session| Self::exec(session, &line, b"", limit))
            .await
    }

    /// Like [`SshHost::run_privileged`], failing with what the command printed.
    async fn run_checked(&self, argv: &[&str]) -> Result<CommandOutput> {
        let out = self.run_privileged(argv, SMALL).await?;
        if !out.success() {
            bail!(
                "{} on {}: {}",
                argv.join(" "),
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    fn abs(&self, rel: &Path) -> String {
        self.root.join(rel).display().to_string()
    }

    /// `mode uid:gid size sha256` of a file, or None when it does not exist.
    async fn describe(&self, path: &str) -> Result<Option<(u32, String, String)>> {
        let out = self
            .run_privileged(
                &[
                    "sh",
                    "-c",
                    "[ -e \"$1\" ] || exit 3; stat -c '%a %U:%G' \"$1\" && sha256sum \"$1\"",
                    "sh",
                    path,
                ],
                SMALL,
            )
            .await?;
        if out.status == Some(3) {
            return Ok(None);
        }
        if !out.success() {
            bail!(
                "look at {path} on {}: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (mode, owner) = lines
            .next()
            .and_then(|l| l.split_once(' '))
            .context("stat printed nothing")?;
        let sha = lines
            .next()
            .and_then(|l| l.split_whitespace().next())
            .context("sha256sum printed nothing")?;
        let mode = u32::from_str_radix(mode, 8).context("stat printed no octal mode")?;
        Ok(Some((mode, owner.to_string(), sha.to_string())))
    }

    /// Uploads `content` over SFTP into a fresh staging directory; its path there.
    pub(super) async fn upload(&self, content: Arc<Vec<u8>>) -> Result<(String, String)> {
        let staging = self
            .with_session(|session| {
                let out = Self::exec(session, "mktemp -d /tmp/provision.XXXXXXXX", b"", SMALL)?;
                if !out.success() {
                    bail!("mktemp: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            })
            .await
            .with_context(|| format!("make a staging directory on {}", self.node))?;
        let file = format!("{staging}/upload");
        let target = file.clone();
        self.with_session(move |session| {
            // Generous: a server binary is large and a link may be slow; a stall still ends.
            session.set_timeout(UPLOAD_LIMIT.as_millis() as u32);
            let sftp = session.sftp().context("start SFTP")?;
            let mut remote = sftp
                .create(Path::new(&target))
                .with_context(|| format!("create {target}"))?;
            remote
                .write_all(&content)
                .with_context(|| format!("write {target}"))?;
            drop(remote);
            session.set_timeout(0);
            Ok(())
        })
        .await
        .with_context(|| format!("upload to {}", self.node))?;
        Ok((staging, file))
    }

    /// Puts the staged `file` at `dest` with `mode` and owner, after checking it arrived as
    /// `sha256`; the staging directory goes whatever happens.
    pub(super) async fn place(
        &self,
        staging: &str,
        file: &str,
        dest: &str,
        sha256: &str,
        mode: u32,
        owner: Option<&Owner>,
    ) -> Result<()> {
        let mode = format!("{mode:o}");
        let tmp = format!("{dest}.provision-new");
        let mut install = vec!["install", "-D", "-m", mode.as_str()];
        if let Some(o) = owner {
            install.extend(["-o", o.user.as_str(), "-g", o.group.as_str()]);
        }
        install.extend([file, tmp.as_str()]);
        let script = format!(
            "set -e; [ \"$(sha256sum {f} | cut -d' ' -f1)\" = {sha} ] || {{ echo 'the upload \
             arrived damaged (SHA-256 differs)' >&2; exit 1; }}; {install}; mv -f {tmp} {dest}",
            f = shlex::try_quote(file)?,
            sha = sha256,
            install = shell_line(&install)?,
            tmp = shlex::try_quote(&tmp)?,
            dest = shlex::try_quote(dest)?,
        );
        let placed = self.run_privileged(&["sh", "-c", &script], SMALL).await;
        let _ = self.run_privileged(&["rm", "-rf", staging], SMALL).await;
        let out = placed?;
        if !out.success() {
            bail!(
                "install {dest} on {}: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    async fn unit_state(&self, service: Service) -> Result<(String, u32)> {
        let out = self
            .run_checked(&[
                "systemctl",
                "show",
                "--property=ActiveState,MainPID",
                unit(service),
            ])
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_string()
        };
        Ok((field("ActiveState"), field("MainPID").parse().unwrap_or(0)))
    }
}

#[async_trait]
impl Host for SshHost {
    fn node(&self) -> &str {
        &self.node
    }

    async fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let path = self.abs(rel);
        let out = self
            .run_privileged(
                &[
                    "sh",
                    "-c",
                    "[ -e \"$1\" ] || exit 3; cat -- \"$1\"",
                    "sh",
                    &path,
                ],
                SMALL,
            )
            .await?;
        match out.status {
            Some(0) => Ok(Some(out.stdout)),
            Some(3) => Ok(None),
            _ => bail!(
                "read {path} on {}: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    async fn put_file(
        &self,
        rel: &Path,
        content: &[u8],
        mode: u32,
        owner: Option<&Owner>,
    ) -> Result<bool> {
        let dest = self.abs(rel);
        let sha = hex::encode(Sha256::digest(content));
        let wanted_owner = owner.map(|o| format!("{}:{}", o.user, o.group));
        if let Some((have_mode, have_owner, have_sha)) = self.describe(&dest).await? {
            if have_mode == mode
                && have_sha == sha
                && wanted_owner.as_ref().is_none_or(|o| *o == have_owner)
            {
                return Ok(false);
            }
        }
        let (staging, file) = self.upload(Arc::new(content.to_vec())).await?;
        self.place(&staging, &file, &dest, &sha, mode, owner)
            .await?;
        Ok(true)
    }

    async fn install_file(&self, src: &Path, rel: &Path, mode: u32) -> Result<bool> {
        let content = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        let dest = self.abs(rel);
        let sha = hex::encode(Sha256::digest(&content));
        if let Some((have_mode, _, have_sha)) = self.describe(&dest).await? {
            if have_mode == mode && have_sha == sha {
                return Ok(false);
            }
        }
        let (staging, file) = self.upload(Arc::new(content)).await?;
        self.place(&staging, &file, &dest, &sha, mode, None).await?;
        Ok(true)
    }

    async fn ensure_dir(&self, rel: &Path, mode: u32, owner: Option<&Owner>) -> Result<bool> {
        let path = self.abs(rel);
        let mode_text = format!("{mode:o}");
        let owner_text = owner.map(|o| format!("{}:{}", o.user, o.group));
        // Prints "changed" when it created the directory or fixed its mode or owner.
        let script = "set -e; d=$1; m=$2; o=$3; c=; \
                      [ -d \"$d\" ] || { mkdir -p \"$d\"; c=1; }; \
                      [ \"$(stat -c %a \"$d\")\" = \"$m\" ] || { chmod \"$m\" \"$d\"; c=1; }; \
                      if [ -n \"$o\" ] && [ \"$(stat -c %U:%G \"$d\")\" != \"$o\" ]; then \
                      chown \"$o\" \"$d\"; c=1; fi; [ -z \"$c\" ] || echo changed";
        let out = self
            .run_checked(&[
                "sh",
                "-c",
                script,
                "sh",
                &path,
                &mode_text,
                owner_text.as_deref().unwrap_or(""),
            ])
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("changed"))
    }

    async fn run(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput> {
        if argv.is_empty() {
            bail!("no command to run on {}", self.node);
        }
        let out = self.run_privileged(argv, timeout).await?;
        // `timeout` exits 124 when it had to stop the command (137 after --kill-after).
        if matches!(out.status, Some(124) | Some(137)) {
            bail!(
                "{} on {} did not finish within {}s and was killed",
                argv[0],
                self.node,
                timeout.as_secs()
            );
        }
        Ok(out)
    }

    async fn service_state(&self, service: Service) -> Result<ServiceState> {
        let (state, pid) = self.unit_state(service).await?;
        Ok(match state.as_str() {
            "active" | "reloading" | "activating" | "deactivating" => ServiceState::Running { pid },
            _ => ServiceState::Stopped,
        })
    }

    async fn start(&self, service: Service) -> Result<()> {
        let name = unit(service);
        if let ServiceState::Running { pid } = self.service_state(service).await? {
            bail!("{name} already runs on {} (pid {pid})", self.node);
        }
        self.run_checked(&["systemctl", "start", name]).await?;
        tokio::time::sleep(START_GRACE).await;
        let (state, _) = self.unit_state(service).await?;
        if state != "active" {
            let journal = self
                .run_privileged(
                    &[
                        "journalctl",
                        "--unit",
                        name,
                        "--lines=8",
                        "--no-pager",
                        "--output=cat",
                    ],
                    SMALL,
                )
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            bail!(
                "{name} on {} exited right after it started ({state}); the end of its \
                 journal:\n{journal}",
                self.node
            );
        }
        Ok(())
    }

    async fn stop(&self, service: Service, timeout: Duration) -> Result<bool> {
        if self.service_state(service).await? == ServiceState::Stopped {
            return Ok(false);
        }
        // systemd sends the unit's KillSignal and SIGKILLs after its TimeoutStopSec; `timeout`
        // bounds the wait here as well.
        let out = self
            .run_privileged(&["systemctl", "stop", unit(service)], timeout + SMALL)
            .await?;
        if !out.success() {
            bail!(
                "systemctl stop {} on {}: {}",
                unit(service),
                self.node,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(true)
    }

    async fn reload(&self, service: Service) -> Result<()> {
        if service == Service::SnapshotAgent {
            // A timer has nothing to reload: each run of the agent reads its files afresh.
            return match self.service_state(service).await? {
                ServiceState::Running { .. } => Ok(()),
                ServiceState::Stopped => bail!("{} is not running on {}", unit(service), self.node),
            };
        }
        self.run_checked(&["systemctl", "reload", unit(service)])
            .await
            .map(|_| ())
    }
}
