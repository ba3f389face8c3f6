//! Virtual machines booted from a keyhold image under qemu (TCG: KVM is not dependable on the
//! machines this runs on), on a bridge of the test's own ([`Bridge`]), reached over SSH as the
//! image's `admin` login with a key the test makes. Each VM boots the image's kernel and initrd
//! directly (no boot loader) from a copy-on-write overlay of its disk, is told its address and
//! name on the kernel command line, is given the login's key through qemu's firmware config,
//! and prints its SSH host key fingerprint on its serial console, from where the test pins it
//! (as an operator reads a cloud VM's console output).
//!
//! Dropping a VM kills qemu and removes its tap device and overlay; nothing outlives the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::nshost::Bridge;

/// How long a VM may take to boot to a reachable sshd under TCG on a loaded 2-core machine;
/// a bound against hangs, not a timing assertion.
pub const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The files of a built image a VM boots from.
#[derive(Debug, Clone)]
pub struct Image {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Image {
    /// The image `provision image build --json` reported.
    pub fn from_build_json(value: &serde_json::Value) -> Result<Image> {
        let dir = PathBuf::from(value["dir"].as_str().context("build JSON: dir")?);
        let file = |key: &str| -> Result<PathBuf> {
            Ok(dir.join(
                value[key]
                    .as_str()
                    .with_context(|| format!("build JSON: {key}"))?,
            ))
        };
        Ok(Image {
            disk: file("disk")?,
            kernel: file("kernel")?,
            initrd: file("initrd")?,
        })
    }
}

/// One running VM.
pub struct Vm {
    pub name: String,
    pub address: std::net::Ipv4Addr,
    /// `SHA256:...` of its ed25519 host key, read off its console.
    pub host_key: String,
    console: PathBuf,
    qemu: Child,
    tap: String,
    overlay: PathBuf,
    dir: PathBuf,
    boot_args: Vec<String>,
}

fn tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails, saying what to install, when this machine cannot boot VMs.
pub fn preflight(test: &str) -> Result<()> {
    crate::nshost::preflight(test, &["qemu-system-x86_64", "qemu-img", "ssh-keygen"])?;
    ensure!(
        Path::new("/dev/net/tun").exists(),
        "{test} needs /dev/net/tun for the VMs' tap devices"
    );
    Ok(())
}

impl Vm {
    /// Boots VM `n` (its address is `.n` on `bridge`) named `name` from `image`, with
    /// `authorized_key` for the `admin` login, its files under `dir`; waits until its console
    /// shows its host key and its sshd accepts connections.
    pub async fn boot(
        image: &Image,
        bridge: &Bridge,
        n: u8,
        name: &str,
        authorized_key: &Path,
        dir: &Path,
        memory_mib: u32,
    ) -> Result<Vm> {
        std::fs::create_dir_all(dir)?;
        let overlay = dir.join(format!("{name}.qcow2"));
        let _ = std::fs::remove_file(&overlay);
        tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &image.disk.display().to_string(),
                &overlay.display().to_string(),
            ],
        )?;
        let tap = bridge.tap(n).await?;
        let address: std::net::Ipv4Addr = format!("{}.{n}", bridge.prefix()).parse()?;
        let append = format!(
            "root=LABEL=keyhold-root rw console=ttyS0 net.ifnames=0 \
             ip={address}::{gw}:255.255.255.0:{name}:eth0:off systemd.hostname={name} \
             quiet systemd.show_status=false",
            gw = bridge.gateway()
        );
        let console = dir.join(format!("{name}.console.log"));
        let boot_args = vec![
            "-accel".to_string(),
            "tcg".to_string(),
            "-m".to_string(),
            memory_mib.to_string(),
            "-smp".to_string(),
            "1".to_string(),
            "-nographic".to_string(),
            "-nodefaults".to_string(),
            "-kernel".to_string(),
            image.kernel.display().to_string(),
            "-initrd".to_string(),
            image.initrd.display().to_string(),
            "-append".to_string(),
            append,
            "-drive".to_string(),
            format!("file={},if=virtio,format=qcow2", overlay.display()),
            "-netdev".to_string(),
            format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            "-device".to_string(),
            format!("virtio-net-pci,netdev=net0,mac=52:54:00:12:34:{n:02x}"),
            "-fw_cfg".to_string(),
            format!(
                "name=opt/keyhold/authorized_keys,file={}",
                authorized_key.display()
            ),
            "-serial".to_string(),
            format!("file:{}", console.display()),
            "-monitor".to_string(),
            "none".to_string(),
        ];
        let qemu = spawn_qemu(&boot_args, dir, name)?;
        let mut vm = Vm {
            name: name.to_string(),
            address,
            host_key: String::new(),
            console,
            qemu,
            tap,
            overlay,
            dir: dir.to_path_buf(),
            boot_args,
        };
        vm.host_key = vm.wait_booted().await?;
        Ok(vm)
    }

    /// Waits for the console's host key line and sshd.
    async fn wait_booted(&mut self) -> Result<String> {
        let started = Instant::now();
        let key = loop {
            if let Some(status) = self.qemu.try_wait()? {
                bail!(
                    "qemu for {} exited ({status}) while booting; its console:\n{}",
                    self.name,
                    self.console_tail(40)
                );
            }
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("keyhold-firstboot: host key") && l.contains("(ED25519)"))
            {
                let fp = line
                    .split_whitespace()
                    .find(|w| w.starts_with("SHA256:"))
                    .context("a fingerprint on the host key line")?;
                break fp.to_string();
            }
            ensure!(
                started.elapsed() < BOOT_LIMIT,
                "{} printed no host key within {}s; its console:\n{}",
                self.name,
                BOOT_LIMIT.as_secs(),
                self.console_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        loop {
            let addr = std::net::SocketAddr::from((self.address, 22));
            if tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Ok(key);
            }
            ensure!(
                started.elapsed() < BOOT_LIMIT,
                "{}'s sshd did not accept connections within {}s; its console:\n{}",
                self.name,
                BOOT_LIMIT.as_secs(),
                self.console_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last `n` lines of the console.
    pub fn console_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Powers the VM off hard (qemu killed: as a host that loses power) and boots it again
    /// from the same disk; waits for its sshd. Returns its host key (the same one: made on the
    /// first boot and kept).
    pub async fn power_cycle(&mut self) -> Result<String> {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        // The first boot's console is kept beside; the new one starts empty.
        let _ = std::fs::rename(&self.console, self.console.with_extension("log.previous"));
        self.qemu = spawn_qemu(&self.boot_args, &self.dir, &self.name)?;
        self.wait_booted().await
    }
}

fn spawn_qemu(args: &[String], dir: &Path, name: &str) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.qemu.log")))?;
    Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start qemu-system-x86_64 (apt install qemu-system-x86)")
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.tap])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.overlay);
    }
}
