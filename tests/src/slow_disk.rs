//! A slow disk for chosen processes (root only): a cgroup of the blkio controller (cgroup v1)
//! whose `blkio.throttle.write_iops_device` limits the writes its processes issue to the block
//! device under a directory. A server moved into it finds its disk that slow (each fsync waits
//! its turn) while every other process on the machine is unaffected; the limit can change
//! while the server runs, and lifting it makes the disk fast again.
//!
//! device-mapper (dm-delay) is not available on these machines (`dmsetup targets` finds no
//! driver), and a cgroup v2 `io.max` would need the `io` controller enabled at the root of the
//! unified hierarchy, which is the machine's, not the test's; this touches only a cgroup made
//! for the test, removed (its processes moved back to the root cgroup) on drop.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// A blkio cgroup made for a test, with write limits on one block device.
pub struct SlowDisk {
    cgroup: PathBuf,
    root: PathBuf,
    /// `MAJOR:MINOR` of the whole disk under the directory given to [`SlowDisk::create`].
    pub device: String,
}

/// Where the blkio hierarchy of cgroup v1 is mounted, if it is.
fn blkio_mount() -> Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let is_blkio =
            *right.first()? == "cgroup" && right.get(2)?.split(',').any(|o| o == "blkio");
        is_blkio.then(|| PathBuf::from(left[4]))
    }))
}

/// `MAJOR:MINOR` of the disk holding `dir` (the whole disk when the file system is on a
/// partition: throttling applies to disks).
fn disk_of(dir: &Path) -> Result<String> {
    let dev = fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .dev();
    // glibc's encoding of a dev_t (makedev(3)).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    ensure!(
        sys.exists(),
        "{} is not on a block device ({major}:{minor}: tmpfs, overlay or a network file \
         system), so its writes cannot be throttled",
        dir.display()
    );
    if sys.join("partition").exists() {
        let parent = fs::canonicalize(&sys)?
            .parent()
            .map(|p| p.join("dev"))
            .context("a partition with no parent disk")?;
        return Ok(fs::read_to_string(parent)?.trim().to_string());
    }
    Ok(format!("{major}:{minor}"))
}

impl SlowDisk {
    /// A cgroup named `name` (unique to the test) throttling writes to the disk under `dir`;
    /// no limit yet. Fails, saying why, without root or the blkio controller.
    pub fn create(name: &str, dir: &Path) -> Result<SlowDisk> {
        let Some(root) = blkio_mount()? else {
            bail!(
                "no cgroup v1 blkio hierarchy is mounted here: slow disks are simulated with \
                 blkio.throttle.write_iops_device (device-mapper's dm-delay is not available)"
            );
        };
        let device = disk_of(dir)?;
        let cgroup = root.join(name);
        if cgroup.exists() {
            // Left by an interrupted run of the same test: empty it and use it again.
            move_all(&cgroup, &root)?;
        } else {
            fs::create_dir(&cgroup).with_context(|| {
                format!(
                    "create the cgroup {} (root is needed to make cgroups)",
                    cgroup.display()
                )
            })?;
        }
        let disk = SlowDisk {
            cgroup,
            root,
            device,
        };
        disk.limit_writes(None)?;
        Ok(disk)
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        fs::write(self.cgroup.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move pid {pid} into {}", self.cgroup.display()))
    }

    /// Limits the cgroup's writes to the disk to `iops` operations a second; `None` lifts it.
    pub fn limit_writes(&self, iops: Option<u32>) -> Result<()> {
        let rule = format!("{} {}", self.device, iops.unwrap_or(0));
        fs::write(self.cgroup.join("blkio.throttle.write_iops_device"), &rule)
            .with_context(|| format!("set blkio.throttle.write_iops_device to {rule}"))
    }
}

/// Moves every process of `from` into `to`.
fn move_all(from: &Path, to: &Path) -> Result<()> {
    let procs = fs::read_to_string(from.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        // A process that exited meanwhile cannot be moved: nothing to do.
        let _ = fs::write(to.join("cgroup.procs"), pid);
    }
    Ok(())
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        let _ = self.limit_writes(None);
        let _ = move_all(&self.cgroup, &self.root);
        if fs::remove_dir(&self.cgroup).is_err() {
            eprintln!(
                "warning: could not remove cgroup {} (still in use)",
                self.cgroup.display()
            );
        }
    }
}
