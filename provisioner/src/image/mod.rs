//! `provision image build`: a hardened Debian image made from a definition (`images/NAME.hcl`)
//! by debootstrap and the same playbooks the ssh provider runs on live hosts, run here in a
//! chroot ([`chroot::ChrootHost`]); every hardening item is then checked in the built tree
//! ([`checks`]), not just applied.
//!
//! Outputs, under `OUT/NAME-HASH/` (`HASH`: of every input, so an unchanged definition is not
//! built again): a qcow2 disk (one ext4 filesystem labelled `keyhold-root`, no partition
//! table: qemu boots it with the kernel and initrd given beside it), the kernel and initrd, a
//! rootfs tarball (zstd), and `checks.txt`. `OUT/manifest.json` is Packer's manifest format
//! (`builds[]`, `last_run_uuid`), a build appended per run as Packer does.
//!
//! The base system (debootstrap of the suite, variant and packages) is cached as a tarball
//! under `OUT/base/`, named by the hash of those inputs: a new server binary or playbook
//! rebuilds the image from it in about a minute instead of debootstrapping again.
//!
//! Nothing the build mounts outlives it: debootstrap and every command in the chroot run in a
//! private mount namespace (`unshare --mount`) that ends with them.

pub mod checks;
pub mod chroot;
pub mod definition;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::playbook::{Playbook, Target};
use crate::providers::Host;
use crate::render::{Layout, NodeSpec, RenderedFile, Renderer};
use crate::state::fingerprint_file;
use chroot::ChrootHost;
pub use definition::Definition;

/// Bumped when the builder changes what it makes from the same inputs.
const BUILDER_FORMAT: &str = "keyhold-image-builder/1";

/// `builder_type` in the manifest.
pub const BUILDER_TYPE: &str = "keyhold-debootstrap-chroot";

/// The label of the image's root filesystem (`root=LABEL=keyhold-root`, and its fstab).
pub const ROOT_LABEL: &str = "keyhold-root";

/// The longest debootstrap may run (a slow mirror); a bound against hangs.
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(1800);

/// How the build is asked for.
pub struct BuildOptions {
    /// Where images and the manifest go (a cache outside the clone by default).
    pub out: PathBuf,
    /// The `keyhold` binary the image carries.
    pub binary: PathBuf,
    /// Build even when an image of these inputs exists.
    pub force: bool,
}

/// One output file of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    pub name: String,
    pub size: u64,
}

/// What a build made (`build.json` in the image's folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    /// `NAME-HASH`.
    pub id: String,
    pub name: String,
    pub input_hash: String,
    pub build_time: u64,
    pub build_seconds: f64,
    pub files: Vec<ArtifactFile>,
    /// File names in `files`.
    pub disk: String,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub checks: Vec<checks::Check>,
    /// The packages and versions in the image (`dpkg-query`), for the manifest.
    pub kernel_version: String,
    /// Set when this build was not made now but found by its input hash.
    #[serde(skip)]
    pub cached: bool,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Built {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Progress lines for long steps.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// The playbooks a definition names, loaded (shipped by name, or a file).
pub fn playbooks(def: &Definition) -> Result<Vec<(Playbook, String)>> {
    def.playbooks
        .iter()
        .map(|p| {
            if p.ends_with(".hcl") {
                let text = fs::read_to_string(p).with_context(|| {
                    format!("read playbook {p} (named in {})", def.file.display())
                })?;
                let book =
                    crate::playbook::parse_str(p, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((book, text))
            } else {
                Ok((
                    Playbook::shipped(p)?,
                    crate::playbook::shipped_text(p)?.to_string(),
                ))
            }
        })
        .collect()
}

/// The files the `template` steps put in the image: the systemd host layout rendered for a
/// stand-in node. `provision up` renders the real node's files over them.
pub fn rendered_for_image(def: &Definition) -> Result<Vec<RenderedFile>> {
    let text = "provider \"ssh\" {\n  hosts = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\"]\n  \
                private_key_file = \"/nonexistent\"\n}\nnodes = 3\nseal \"shamir\" {}\n\
                auth \"userpass\" {\n  path = \"userpass\"\n  user \"admin\" {\n    \
                policies = [\"default\"]\n  }\n}\n";
    let env = crate::environment::parse_str(Path::new(&format!("{}.hcl", def.name)), text)
        .map_err(|e| anyhow::anyhow!("the image's stand-in environment: {e}"))?;
    let node = NodeSpec::new(
        &env,
        1,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        Layout::system(),
    )?;
    Renderer::new()?.render_node(&env, &node)
}

/// The hash of everything the image is made from.
pub fn input_hash(def: &Definition, binary: &Path) -> Result<String> {
    let binary_hash = fingerprint_file(binary).with_context(|| {
        format!(
            "the keyhold binary the image carries ({}); build it first (cargo build) or \
             pass --binary",
            binary.display()
        )
    })?;
    let books = playbooks(def)?;
    let rendered = rendered_for_image(def)?;
    let mut parts: Vec<Vec<u8>> = vec![
        BUILDER_FORMAT.into(),
        def.text.clone().into_bytes(),
        binary_hash.into_bytes(),
    ];
    for (_, text) in &books {
        parts.push(text.clone().into_bytes());
    }
    for f in &rendered {
        parts.push(f.path.display().to_string().into_bytes());
        parts.push(f.content.clone().into_bytes());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(sha256_hex(&refs))
}

/// The name of the cached base for a definition's suite, variant, mirror and packages.
fn base_key(def: &Definition) -> String {
    let packages = def.packages.join(",");
    let hash = sha256_hex(&[
        def.suite.as_bytes(),
        def.variant.as_bytes(),
        def.mirror.as_bytes(),
        packages.as_bytes(),
    ]);
    format!("{}-{}-{}", def.suite, def.variant, &hash[..12])
}

/// An image of these inputs built before, when all its files are there.
pub fn find_built(out: &Path, id: &str) -> Option<Built> {
    let dir = out.join(id);
    let text = fs::read_to_string(dir.join("build.json")).ok()?;
    let mut built: Built = serde_json::from_str(&text).ok()?;
    let whole = built
        .files
        .iter()
        .all(|f| fs::metadata(dir.join(&f.name)).is_ok_and(|m| m.len() == f.size));
    if !whole {
        return None;
    }
    built.cached = true;
    built.dir = dir;
    Some(built)
}

/// Runs `cmd` to the end, its output into `log`, printing its last line every `every` while
/// it runs; fails with the log's tail.
async fn run_logged(
    mut cmd: tokio::process::Command,
    what: &str,
    log: &Path,
    limit: Duration,
    progress: Progress<'_>,
) -> Result<()> {
    let file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = file.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let started = Instant::now();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(status) => break status.with_context(|| format!("wait for {what}"))?,
            Err(_) => {
                ensure!(
                    started.elapsed() < limit,
                    "{what} did not finish within {}s; its log: {}",
                    limit.as_secs(),
                    log.display()
                );
                let last = fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect::<String>();
                progress(&format!(
                    "  {what}: {}s ({last})",
                    started.elapsed().as_secs()
                ));
            }
        }
    };
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "{what} failed ({status}); the end of its log ({}):\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The environment variable that marks a build already running in its own mount namespace
/// (`provision image build` re-executes itself under `unshare --mount` when it is not).
pub const NAMESPACE_ENV: &str = "PROVISION_IMAGE_NAMESPACE";

/// A fresh, empty scratch directory at `dir`: a tmpfs when the build runs in its own mount
/// namespace (an image tree is a hundred thousand files; on a disk mounted with `discard`
/// deleting them takes minutes, a tmpfs goes at once and with the namespace at the latest),
/// else a directory on disk.
async fn scratch(dir: &Path) -> Result<()> {
    if dir.exists() {
        let _ = run_here("umount", &["-l", &dir.display().to_string()]).await;
        fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if std::env::var_os(NAMESPACE_ENV).is_some() {
        run_here(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "mode=0755",
                "tmpfs",
                &dir.display().to_string(),
            ],
        )
        .await
        .context("mount a tmpfs for the build's scratch space")?;
    }
    Ok(())
}

/// Drops a scratch directory made by [`scratch`].
async fn drop_scratch(dir: &Path) -> Result<()> {
    if std::env::var_os(NAMESPACE_ENV).is_some() {
        run_here("umount", &["-l", &dir.display().to_string()]).await?;
    }
    fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))
}

/// Runs a short program here, failing with what it printed.
async fn run_here(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {program} (is it installed? scripts/test installs it)"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The base tarball for `def`, made with debootstrap when it is not cached.
async fn base(def: &Definition, out: &Path, progress: Progress<'_>) -> Result<PathBuf> {
    let key = base_key(def);
    let dir = out.join("base");
    let tar = dir.join(format!("{key}.tar"));
    if tar.is_file() {
        progress(&format!("base {key}: cached ({})", tar.display()));
        return Ok(tar);
    }
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let scratch_dir = dir.join(format!(".{key}.work"));
    scratch(&scratch_dir).await?;
    let work = scratch_dir.join("rootfs");
    progress(&format!(
        "base {key}: debootstrap {} ({}, {} packages) from {} (about 2 minutes)",
        def.suite,
        def.variant,
        def.packages.len(),
        def.mirror
    ));
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "debootstrap"])
        .arg(format!("--variant={}", def.variant))
        .arg(format!("--include={}", def.packages.join(",")))
        .arg(&def.suite)
        .arg(&work)
        .arg(&def.mirror)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let log = dir.join(format!("{key}.debootstrap.log"));
    run_logged(cmd, "debootstrap", &log, DEBOOTSTRAP_LIMIT, progress)
        .await
        .context("debootstrap (needs root, the debootstrap package and the mirror)")?;
    let tmp = dir.join(format!(".{key}.tar.tmp"));
    run_here(
        "tar",
        &[
            "--numeric-owner",
            "--xattrs",
            "-C",
            &work.display().to_string(),
            "-cf",
            &tmp.display().to_string(),
            ".",
        ],
    )
    .await?;
    fs::rename(&tmp, &tar)?;
    drop_scratch(&scratch_dir).await?;
    Ok(tar)
}

/// Builds the image `def` describes (or finds it built), printing progress.
pub async fn build(def: &Definition, opts: &BuildOptions, progress: Progress<'_>) -> Result<Built> {
    let started = Instant::now();
    let hash = input_hash(def, &opts.binary)?;
    let id = format!("{}-{}", def.name, &hash[..12]);
    if !opts.force {
        if let Some(built) = find_built(&opts.out, &id) {
            progress(&format!(
                "{id}: unchanged (built {}), not rebuilt",
                chrono::DateTime::from_timestamp(built.build_time as i64, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ));
            return Ok(built);
        }
    }
    for tool in [
        "debootstrap",
        "unshare",
        "chroot",
        "mkfs.ext4",
        "qemu-img",
        "zstd",
        "tar",
    ] {
        which(tool).with_context(|| {
            format!(
                "the image builder needs `{tool}` (Debian: debootstrap, util-linux, coreutils, \
                 e2fsprogs, qemu-utils, zstd, tar; scripts/test installs them)"
            )
        })?;
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let base = base(def, &opts.out, progress).await?;
    let work = opts.out.join(format!(".{id}.work"));
    scratch(&work).await?;
    let rootfs = work.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    progress(&format!("{id}: unpacking the base"));
    run_here(
        "tar",
        &[
            "--numeric-owner",
            "--xattrs",
            "-xpf",
            &base.display().to_string(),
            "-C",
            &rootfs.display().to_string(),
        ],
    )
    .await?;
    let host = ChrootHost::new(&format!("image {id}"), &rootfs);
    let result = customise(def, opts, &host, progress).await;
    let checks = match result {
        Ok(checks) => checks,
        Err(e) => return Err(e.context(format!("building {id}"))),
    };
    let failed: Vec<&checks::Check> = checks.iter().filter(|c| !c.ok).collect();
    if !failed.is_empty() {
        bail!(
            "{id}: {} hardening check(s) failed in the built image:\n{}",
            failed.len(),
            failed
                .iter()
                .map(|c| format!("  {}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let kernel_version = kernel_version(&rootfs)?;
    // On the output's filesystem, to be renamed into place whole.
    let stage = opts.out.join(format!(".{id}.stage"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;
    let disk = format!("{id}.qcow2");
    let kernel = format!("{id}.vmlinuz");
    let initrd = format!("{id}.initrd.img");
    let tarball = format!("{id}.rootfs.tar.zst");
    fs::copy(
        rootfs.join(format!("boot/vmlinuz-{kernel_version}")),
        stage.join(&kernel),
    )
    .context("copy the image's kernel")?;
    fs::copy(
        rootfs.join(format!("boot/initrd.img-{kernel_version}")),
        stage.join(&initrd),
    )
    .context("copy the image's initrd")?;
    progress(&format!("{id}: rootfs tarball (zstd)"));
    run_here(
        "tar",
        &[
            "--numeric-owner",
            "--xattrs",
            "-I",
            "zstd -T0 -3",
            "-C",
            &rootfs.display().to_string(),
            "-cf",
            &stage.join(&tarball).display().to_string(),
            ".",
        ],
    )
    .await?;
    progress(&format!(
        "{id}: ext4 filesystem ({} MiB) and qcow2 disk",
        def.disk_size_mib
    ));
    let raw = work.join("disk.raw");
    fs::File::create(&raw)?.set_len(def.disk_size_mib * 1024 * 1024)?;
    run_here(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-d",
            &rootfs.display().to_string(),
            &raw.display().to_string(),
        ],
    )
    .await?;
    run_here(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.display().to_string(),
            &stage.join(&disk).display().to_string(),
        ],
    )
    .await?;
    fs::remove_file(&raw)?;
    let checks_text: String = checks
        .iter()
        .map(|c| format!("ok  {}: {}\n", c.name, c.detail))
        .collect();
    fs::write(stage.join("checks.txt"), checks_text)?;
    let mut files = Vec::new();
    for name in [&disk, &kernel, &initrd, &tarball, &"checks.txt".to_string()] {
        files.push(ArtifactFile {
            name: name.clone(),
            size: fs::metadata(stage.join(name))?.len(),
        });
    }
    let built = Built {
        id: id.clone(),
        name: def.name.clone(),
        input_hash: hash,
        build_time: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        build_seconds: started.elapsed().as_secs_f64(),
        files,
        disk,
        kernel,
        initrd,
        rootfs: tarball,
        checks,
        kernel_version,
        cached: false,
        dir: opts.out.join(&id),
    };
    fs::write(stage.join("build.json"), serde_json::to_vec_pretty(&built)?)?;
    if built.dir.exists() {
        fs::remove_dir_all(&built.dir)?;
    }
    fs::rename(&stage, &built.dir)
        .with_context(|| format!("move the image into {}", built.dir.display()))?;
    drop_scratch(&work).await?;
    record_in_manifest(&opts.out, &built)?;
    progress(&format!(
        "{id}: built in {:.0}s ({} checks passed)",
        built.build_seconds,
        built.checks.len()
    ));
    Ok(built)
}

/// The one kernel the image has (`boot/vmlinuz-VERSION` with its initrd).
fn kernel_version(rootfs: &Path) -> Result<String> {
    let mut versions: Vec<String> = fs::read_dir(rootfs.join("boot"))
        .context("read the image's /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .filter(|v| rootfs.join(format!("boot/initrd.img-{v}")).is_file())
        .collect();
    versions.sort();
    versions.pop().context(
        "the image has no kernel with an initrd in /boot (add linux-image-amd64 to packages)",
    )
}

/// The binary installed, the playbooks applied (and checked to change nothing a second
/// time), the image cleaned of what must differ per machine, then the hardening checks.
async fn customise(
    def: &Definition,
    opts: &BuildOptions,
    host: &ChrootHost,
    progress: Progress<'_>,
) -> Result<Vec<checks::Check>> {
    // No service starts while packages are installed in the chroot.
    host.put_file(
        Path::new("usr/sbin/policy-rc.d"),
        b"#!/bin/sh\n# provision image build: no service starts in the chroot.\nexit 101\n",
        0o755,
        None,
    )
    .await?;
    host.install_file(&opts.binary, Path::new(Layout::BINARY), 0o755)
        .await?;
    let rendered = rendered_for_image(def)?;
    let vars = BTreeMap::from([(
        "keyhold_binary".to_string(),
        opts.binary.display().to_string(),
    )]);
    let target = Target {
        host,
        rendered: &rendered,
        vars: &vars,
        live: false,
    };
    for (book, _) in playbooks(def)? {
        progress(&format!(
            "playbook {} ({} steps)",
            book.name,
            book.steps.len()
        ));
        let outcomes = book
            .apply(&target)
            .await
            .with_context(|| format!("the {} playbook in the image", book.name))?;
        for o in outcomes.iter().filter(|o| o.changed) {
            progress(&format!("  {}: {}", o.step, o.detail));
        }
        let again = book.check(&target).await?;
        ensure!(
            again.is_empty(),
            "the {} playbook would change the image again right after it ran (a step that \
             is not idempotent): {}",
            book.name,
            again.join("; ")
        );
    }
    // What each machine must make for itself: host keys, machine id; and no build leftovers
    // (the build machine's resolver config among them).
    let cleanup = "rm -f /etc/resolv.conf /usr/sbin/policy-rc.d /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub \
                   && apt-get clean && rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/* \
                   && : > /etc/machine-id && rm -f /var/lib/dbus/machine-id";
    crate::providers::run_ok(host, &["sh", "-c", cleanup], Duration::from_secs(120)).await?;
    progress("checking the hardening in the built tree");
    checks::run(host, false).await
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Packer's manifest: one build appended per run, `last_run_uuid` the run's.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub builds: Vec<ManifestBuild>,
    pub last_run_uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestBuild {
    pub name: String,
    pub builder_type: String,
    pub build_time: u64,
    pub files: Vec<ArtifactFile>,
    pub artifact_id: String,
    pub packer_run_uuid: String,
    pub custom_data: BTreeMap<String, String>,
}

fn run_uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        &hex::encode(&b[6..8])[1..],
        8 | (b[8] & 0x3),
        &hex::encode(&b[8..10])[1..],
        hex::encode(&b[10..16])
    )
}

fn record_in_manifest(out: &Path, built: &Built) -> Result<()> {
    let path = out.join("manifest.json");
    let mut manifest: Manifest = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a Packer manifest; move it away and build again",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let uuid = run_uuid();
    let checks_passed = built.checks.iter().filter(|c| c.ok).count();
    manifest.builds.push(ManifestBuild {
        name: built.name.clone(),
        builder_type: BUILDER_TYPE.to_string(),
        build_time: built.build_time,
        files: built
            .files
            .iter()
            .map(|f| ArtifactFile {
                name: format!("{}/{}", built.id, f.name),
                size: f.size,
            })
            .collect(),
        artifact_id: built.id.clone(),
        packer_run_uuid: uuid.clone(),
        custom_data: BTreeMap::from([
            ("input_hash".to_string(), built.input_hash.clone()),
            ("disk".to_string(), format!("{}/{}", built.id, built.disk)),
            (
                "kernel".to_string(),
                format!("{}/{}", built.id, built.kernel),
            ),
            (
                "initrd".to_string(),
                format!("{}/{}", built.id, built.initrd),
            ),
            ("kernel_version".to_string(), built.kernel_version.clone()),
            (
                "root".to_string(),
                format!("LABEL={ROOT_LABEL} (ext4, no partition table)"),
            ),
            (
                "checks".to_string(),
                format!("{checks_passed}/{} passed", built.checks.len()),
            ),
            (
                "build_seconds".to_string(),
                format!("{:.0}", built.build_seconds),
            ),
        ]),
    });
    manifest.last_run_uuid = uuid;
    crate::state::write_atomic(&path, &serde_json::to_vec_pretty(&manifest)?, 0o644)
}

/// The default output folder: a cache outside any clone, shared by builds on this machine.
pub fn default_out() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("keyhold/images")
}
