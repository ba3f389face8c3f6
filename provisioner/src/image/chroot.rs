//! A chroot as a [`Host`]: an image's root filesystem on this machine, where the image builder
//! runs the same playbooks the ssh provider runs on a live host. Files are written from here
//! (symbolic links are followed inside the root, never out of it: an absolute link in an image
//! points into the image); commands run with `chroot(8)`; owners are the image's users, named
//! in its own `/etc/passwd` and `/etc/group`. Nothing runs as a service in an image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use crate::providers::{CommandOutput, Host, Owner, Service, ServiceState};
use crate::state::{fingerprint_file, write_atomic};

/// The `PATH` commands see inside the image.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run by `sh -c` in a new mount namespace with the root as `$0` and the command after it.
const IN_ROOT: &str = "mount -t proc proc \"$0/proc\" && mount --rbind /dev \"$0/dev\" \
                       && exec chroot \"$0\" \"$@\"";

/// An image root at `root`, named `label` in messages.
pub struct ChrootHost {
    label: String,
    root: PathBuf,
}

impl ChrootHost {
    pub fn new(label: &str, root: &Path) -> ChrootHost {
        ChrootHost {
            label: label.to_string(),
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `rel` is on this machine, following symbolic links as the image would see them.
    /// The last component is resolved too unless it is missing (a file about to be written).
    pub fn resolve(&self, rel: &Path) -> Result<PathBuf> {
        let mut pending: Vec<PathBuf> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(PathBuf::from(part)),
                Component::ParentDir => Some(PathBuf::from("..")),
                _ => None,
            })
            .rev()
            .collect();
        // Inside the root, as a list of components (so `..` cannot climb out of it).
        let mut inside: Vec<PathBuf> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == Path::new("..") {
                inside.pop();
                continue;
            }
            let candidate = self
                .root
                .join(inside.iter().collect::<PathBuf>())
                .join(&part);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        bail!(
                            "{} in {}: too many levels of symbolic links",
                            rel.display(),
                            self.label
                        );
                    }
                    let target = fs::read_link(&candidate)
                        .with_context(|| format!("read link {}", candidate.display()))?;
                    if target.is_absolute() {
                        inside.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(p) => pending.push(PathBuf::from(p)),
                            Component::ParentDir => pending.push(PathBuf::from("..")),
                            _ => {}
                        }
                    }
                }
                _ => inside.push(part),
            }
        }
        Ok(self.root.join(inside.iter().collect::<PathBuf>()))
    }

    /// A user's or group's id from the image's own database (`etc/passwd`, `etc/group`).
    fn id(&self, database: &str, name: &str) -> Result<u32> {
        let path = self.resolve(Path::new("etc").join(database).as_path())?;
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&name) && fields.len() > 2)
            .and_then(|fields| fields[2].parse().ok())
            .with_context(|| {
                format!(
                    "{} has no {} named {name:?} in /etc/{database} (a playbook's user step \
                     creates it before files are given to it)",
                    self.label,
                    if database == "passwd" {
                        "user"
                    } else {
                        "group"
                    }
                )
            })
    }

    fn ids(&self, owner: Option<&Owner>) -> Result<Option<(u32, u32)>> {
        owner
            .map(|o| Ok((self.id("passwd", &o.user)?, self.id("group", &o.group)?)))
            .transpose()
    }
}

/// Whether `path` has `mode` and, when given, the owner `ids`.
fn has(path: &Path, mode: u32, ids: Option<(u32, u32)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).is_ok_and(|m| {
        m.permissions().mode() & 0o7777 == mode
            && ids.is_none_or(|(u, g)| m.uid() == u && m.gid() == g)
    })
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

#[async_trait]
impl Host for ChrootHost {
    fn node(&self) -> &str {
        &self.label
    }

    async fn read_file(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let path = self.resolve(rel)?;
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
        let ids = self.ids(owner)?;
        let path = self.resolve(rel)?;
        if has(&path, mode, ids) && fs::read(&path).is_ok_and(|old| old == content) {
            return Ok(false);
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        write_atomic(&path, content, mode)?;
        chown(&path, ids)?;
        Ok(true)
    }

    async fn install_file(&self, src: &Path, rel: &Path, mode: u32) -> Result<bool> {
        let path = self.resolve(rel)?;
        fs::metadata(src).with_context(|| format!("read {}", src.display()))?;
        if has(&path, mode, Some((0, 0))) && fingerprint_file(&path)? == fingerprint_file(src)? {
            return Ok(false);
        }
        let parent = path.parent().context("an installed file has a directory")?;
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let name = path.file_name().context("an installed file has a name")?;
        let tmp = parent.join(format!(".{}.install", name.to_string_lossy()));
        let _ = fs::remove_file(&tmp);
        fs::copy(src, &tmp)
            .with_context(|| format!("copy {} to {}", src.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        chown(&tmp, Some((0, 0)))?;
        fs::rename(&tmp, &path).with_context(|| format!("install {}", path.display()))?;
        Ok(true)
    }

    async fn ensure_dir(&self, rel: &Path, mode: u32, owner: Option<&Owner>) -> Result<bool> {
        let ids = self.ids(owner)?;
        let path = self.resolve(rel)?;
        if path.is_dir() && has(&path, mode, ids) {
            return Ok(false);
        }
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        chown(&path, ids)?;
        Ok(true)
    }

    async fn run(&self, argv: &[&str], timeout: Duration) -> Result<CommandOutput> {
        if argv.is_empty() {
            bail!("no command to run in {}", self.label);
        }
        // /proc and /dev for what needs them (apt, dpkg's scripts), mounted in a private
        // mount namespace that ends with the command: nothing stays mounted in the image.
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", IN_ROOT])
            .arg(&self.root)
            .args(argv)
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .current_dir(&self.root);
        crate::providers::output_within(cmd, argv[0], &self.label, timeout).await
    }

    async fn service_state(&self, _: Service) -> Result<ServiceState> {
        Ok(ServiceState::Stopped)
    }

    async fn start(&self, service: Service) -> Result<()> {
        bail!(
            "{} is an image being built: its {} starts when a machine boots it",
            self.label,
            service.as_str()
        )
    }

    async fn stop(&self, _: Service, _: Duration) -> Result<bool> {
        Ok(false)
    }

    async fn reload(&self, service: Service) -> Result<()> {
        bail!(
            "{} is an image being built: its {} is not running",
            self.label,
            service.as_str()
        )
    }
}
