//! Hosts in namespaces of their own, booted with systemd as PID 1 (root only): fresh pid,
//! mount, net, uts, ipc and cgroup namespaces made into a host by `nshost/boot.sh` and a setup
//! script of the test's (a keyhold node laid out from rendered files, or a bare host reached over
//! SSH: `nshost/ssh-host.sh`). They boot in a second or two, where a VM under TCG takes a
//! minute, so systemd units and SSH are tested with every run.
//!
//! [`NetNs`] is the light form: a named network namespace and nothing else, for a server
//! process that should only see its own network (the partition tests).
//!
//! The machine is left as it was: everything is mounted in the private mount namespace (see
//! `boot.sh`), systemd's cgroups live under cgroups made for the test, and dropping a host kills
//! its PID 1 and removes those cgroups.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Turns the namespaces into a host and execs systemd.
const BOOT_SCRIPT: &str = include_str!("nshost/boot.sh");

/// The setup of a bare host reached over SSH (see [`NsHost::boot_ssh`]).
pub const SSH_HOST_SETUP: &str = include_str!("nshost/ssh-host.sh");

/// The unit systemd is told to start; the setup script writes it.
pub const BOOT_TARGET: &str = "keyhold-test.target";

/// The longest any one command may run; a bound against hangs, not a timing assertion.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// `PATH` inside the namespaces.
pub const HOST_PATH: &str = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Fails, saying what to do, when this machine cannot boot hosts for `test`.
pub fn preflight(test: &str, tools: &[&str]) -> Result<()> {
    let uid = fs::metadata("/proc/self").context("stat /proc/self")?.uid();
    ensure!(
        uid == 0,
        "{test} needs root (it makes namespaces, mounts and a systemd PID 1; CI runs as root)"
    );
    for tool in ["unshare", "nsenter", "ip", "mknod"].iter().chain(tools) {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file());
        ensure!(
            found,
            "{test} needs `{tool}`; scripts/test installs it (util-linux, iproute2, passwd, \
             systemd, openssh)"
        );
    }
    ensure!(
        Path::new("/lib/systemd/systemd").is_file(),
        "{test} needs systemd itself at /lib/systemd/systemd; scripts/test installs it"
    );
    Ok(())
}

/// A host in namespaces of its own whose PID 1 is systemd. Dropping it kills PID 1, and with
/// it everything in the namespaces, and removes the cgroups it ran in.
pub struct NsHost {
    /// `unshare --fork`, parent of the namespaces' PID 1.
    unshare: Child,
    /// The namespaces' PID 1 as this machine sees it.
    pub pid1: u32,
    /// The cgroups made for the namespaces (systemd's root cgroups); dropped after PID 1 is
    /// killed, as fields drop after `drop`.
    _cgroups: Vec<TestCgroup>,
    /// What `boot.sh` printed.
    boot_log: PathBuf,
}

impl NsHost {
    /// Boots a host in `dir` (its scratch space and logs): `setup` is sourced by `boot.sh`
    /// with `env` set, `keep` are the test's directories the host sees at the same path.
    /// Returns once the namespaces' PID 1 is known.
    pub async fn boot(
        dir: &Path,
        setup: &str,
        env: &[(&str, &OsStr)],
        keep: &[&Path],
    ) -> Result<NsHost> {
        let scratch = dir.join("scratch");
        fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
        let script = dir.join("boot.sh");
        fs::write(&script, BOOT_SCRIPT).context("write boot.sh")?;
        let setup_file = dir.join("setup.sh");
        fs::write(&setup_file, setup).context("write setup.sh")?;
        let boot_log = dir.join("boot.log");
        let log = File::create(&boot_log).context("create boot.log")?;
        let keep = keep
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");

        // Named by the test's own directory and the host's within it: hosts of concurrent
        // tests never share a cgroup.
        let part = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let name = format!("keyhold-test-{}-{}", part(dir.parent()), part(Some(dir)));
        let (layout, homes) = cgroup_homes()?;
        let cgroups = homes
            .iter()
            .map(|home| TestCgroup::create(home.join(&name)))
            .collect::<Result<Vec<_>>>()?;
        let unshare = Command::new("/bin/sh")
            .arg("-c")
            .arg(
                r#"for procs in "$@"; do echo $$ >"$procs"; done
exec unshare --cgroup --pid --fork --mount --net --uts --ipc --mount-proc --kill-child \
    /bin/bash "$BOOT_SCRIPT""#,
            )
            .arg("sh")
            .args(cgroups.iter().map(|c| c.0.join("cgroup.procs")))
            .env_clear()
            .env("PATH", HOST_PATH)
            .env("BOOT_SCRIPT", &script)
            .env("SETUP", &setup_file)
            .env("SCRATCH", &scratch)
            .env("KEEP", keep)
            .env("CGROUP_LAYOUT", layout)
            .env("BOOT_TARGET", BOOT_TARGET)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn unshare")?;
        let mut host = NsHost {
            unshare,
            pid1: 0,
            _cgroups: cgroups,
            boot_log,
        };
        let children = format!("/proc/{0}/task/{0}/children", host.unshare.id());
        for _ in 0..200 {
            if let Some(status) = host.unshare.try_wait()? {
                bail!("boot.sh exited with {status}:\n{}", host.boot_output());
            }
            let listed = fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = listed.split_whitespace().next() {
                host.pid1 = pid.parse().context("pid in /proc/.../children")?;
                return Ok(host);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "unshare forked no PID 1 in 200 polls:\n{}",
            host.boot_output()
        )
    }

    /// Runs `program` inside the namespaces, as a root shell on the host would; fails only
    /// when it cannot be run or outlives [`COMMAND_LIMIT`].
    pub async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let what = format!("{program} {}", args.join(" "));
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg(format!("--target={}", self.pid1))
            .args(["--mount", "--net", "--pid", "--uts", "--ipc", "--"])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", HOST_PATH)
            .env("HOME", "/tmp")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_URLIFY", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        bounded_output(cmd, &what).await
    }

    /// `systemctl ARGS`, which must succeed; returns its output.
    pub async fn systemctl(&self, args: &[&str]) -> Result<String> {
        let out = self.run("systemctl", args, &[]).await?;
        ensure!(
            out.status.success(),
            "systemctl {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits (bounded: 300 polls, 100 ms apart) for `unit` to be active; fails at once if it
    /// failed, or if the namespaces are gone.
    pub async fn wait_active(&self, unit: &str) -> Result<()> {
        let mut last = String::new();
        for _ in 0..300 {
            if !Path::new(&format!("/proc/{}", self.pid1)).exists() {
                bail!("the namespaces' PID 1 is gone:\n{}", self.boot_output());
            }
            // Until systemd is up (or boot.sh is still mounting), systemctl fails: poll on.
            let out = self.run("systemctl", &["is-active", unit], &[]).await?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match last.as_str() {
                "active" => return Ok(()),
                "failed" => bail!("{unit} failed to start"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bail!("{unit} not active after 300 polls (last: {last:?})")
    }

    pub fn boot_output(&self) -> String {
        fs::read_to_string(&self.boot_log).unwrap_or_default()
    }

    /// `systemctl status UNITS` and the journal's last 200 lines, for failure messages.
    pub async fn diagnostics(&self, units: &[&str]) -> String {
        let mut report = format!("--- boot.sh output\n{}\n", self.boot_output());
        let mut status = vec!["status", "--no-pager"];
        status.extend_from_slice(units);
        for (what, program, args) in [
            ("systemctl status", "systemctl", &status[..]),
            (
                "journalctl -b (last 200 lines)",
                "journalctl",
                &["-b", "--no-pager", "-n", "200"][..],
            ),
        ] {
            let text = match self.run(program, args, &[]).await {
                Ok(out) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => format!("(could not run: {e:#})"),
            };
            report.push_str(&format!("--- {what}\n{text}\n"));
        }
        report
    }
}

/// A network of the test's own: a bridge on this machine (the host side, where `provision`
/// runs, at `.1`) and, per attached host, a veth pair whose far end is the host's `eth0`.
/// Dropping it removes the bridge (the hosts' links go with their namespaces).
pub struct Bridge {
    name: String,
    /// `10.A.B`: hosts are `10.A.B.N`.
    prefix: String,
    attached: u32,
}

async fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(args).stdin(Stdio::null());
    let what = format!("ip {}", args.join(" "));
    let out = bounded_output(cmd, &what).await?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Deletes the test bridges (`khb<pid>s<slot>`) that hold `prefix`.1/24 for a process that is
/// gone (no running process has that pid modulo 100,000). The prefix comes from the pid modulo
/// 100, so an interrupted run's bridge can hold the /24 a later process with another pid takes,
/// and the host would route that /24 to the dead bridge ("No route to host"). A live owner is a
/// concurrent test on the same /24: an error.
async fn remove_stale_bridges(prefix: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["-o", "-4", "addr", "show"]).stdin(Stdio::null());
    let out = bounded_output(cmd, "ip -o -4 addr show").await?;
    ensure!(
        out.status.success(),
        "ip -o -4 addr show: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let ours = format!("{prefix}.1/24");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "7: khb10822s63    inet 10.122.63.1/24 scope global khb10822s63 ..."
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(addr)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        if *addr != ours {
            continue;
        }
        let owner = name
            .strip_prefix("khb")
            .and_then(|rest| rest.split_once('s'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        match owner {
            Some(id) if !named_process_alive(id) => ip(&["link", "del", name]).await?,
            _ => bail!(
                "{name} holds {ours}, which this test's bridge needs, and its owner is running \
                 (or it is not a test bridge): stop it or delete the link"
            ),
        }
    }
    Ok(())
}

/// Whether a running process could own a name made from `id` (its pid modulo 100,000).
fn named_process_alive(id: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| pid % 100_000 == id && crate::provision::is_alive(pid))
}

impl Bridge {
    /// A bridge for test `slot` (1-99) of this process, on 10.A.B.0/24 (A from the pid). A
    /// bridge a gone process left on the same /24 is deleted first ([`remove_stale_bridges`]).
    pub async fn create(slot: u8) -> Result<Bridge> {
        let id = std::process::id() % 100_000;
        let name = format!("khb{id}s{slot}");
        let prefix = format!("10.{}.{}", 100 + id % 100, slot);
        let _ = ip(&["link", "del", &name]).await;
        remove_stale_bridges(&prefix).await?;
        ip(&["link", "add", &name, "type", "bridge"]).await?;
        let bridge = Bridge {
            name,
            prefix,
            attached: 0,
        };
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", bridge.prefix),
            "dev",
            &bridge.name,
        ])
        .await?;
        ip(&["link", "set", &bridge.name, "up"]).await?;
        Ok(bridge)
    }

    /// This machine's address on the bridge (`10.A.B.1`): where the hosts reach services the
    /// test runs here (moto).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        format!("{}.1", self.prefix)
            .parse()
            .expect("a bridge prefix makes an address")
    }

    /// `10.A.B`: attached hosts are `10.A.B.N`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A tap device on the bridge for VM `n` (qemu's `-netdev tap,ifname=...`); the VM is
    /// `10.A.B.N`. Removed by whoever made it (or with the bridge's links when it goes).
    pub async fn tap(&self, n: u8) -> Result<String> {
        let tap = format!("{}t{n}", self.name);
        let _ = ip(&["link", "del", &tap]).await;
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
        ip(&["link", "set", &tap, "master", &self.name, "up"]).await?;
        Ok(tap)
    }

    /// Connects `host` as `10.A.B.N` (its `eth0`); returns that address.
    pub async fn attach(&mut self, host: &NsHost, n: u8) -> Result<std::net::Ipv4Addr> {
        self.attach_to(&host.pid1.to_string(), Inside::Host(host), n)
            .await
    }

    /// Connects the network namespace `netns` as `10.A.B.N` (its `eth0`); returns that address.
    pub async fn attach_netns(&mut self, netns: &NetNs, n: u8) -> Result<std::net::Ipv4Addr> {
        self.attach_to(&netns.name, Inside::Netns(netns), n).await
    }

    /// `target` is what `ip link set ... netns` takes: a pid or a named namespace.
    async fn attach_to(
        &mut self,
        target: &str,
        inside_ns: Inside<'_>,
        n: u8,
    ) -> Result<std::net::Ipv4Addr> {
        self.attached += 1;
        let outside = format!("{}v{}", self.name, self.attached);
        let inside = format!("{}p{}", self.name, self.attached);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ])
        .await?;
        ip(&["link", "set", &outside, "master", &self.name, "up"]).await?;
        ip(&["link", "set", &inside, "netns", target]).await?;
        let address = format!("{}.{n}", self.prefix);
        for args in [
            vec!["link", "set", inside.as_str(), "name", "eth0"],
            vec!["addr", "add", &format!("{address}/24"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
        ] {
            match inside_ns {
                Inside::Host(host) => {
                    let out = host.run("ip", &args, &[]).await?;
                    ensure!(
                        out.status.success(),
                        "ip {} on the host: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Inside::Netns(netns) => netns.ip(&args).await?,
            }
        }
        address.parse().context("a host address")
    }
}

/// Where [`Bridge::attach_to`] runs `ip` for the far end of a veth pair.
#[derive(Clone, Copy)]
enum Inside<'a> {
    Host(&'a NsHost),
    Netns(&'a NetNs),
}

/// A named network namespace (`ip netns add`) and nothing else: processes run in it through
/// `nsenter --net=/run/netns/NAME` (which execs, so their pid is the program's), share this
/// machine's files and pids, and reach others only over the links given to it (a [`Bridge`]).
/// A peer can be cut off and healed with blackhole routes ([`NetNs::cut_off`]). Dropping it
/// deletes the namespace; its veth ends go with it.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A namespace for node `n` of test `slot`, with its loopback up; named by this process
    /// and the slot, so concurrent tests never share one (a leftover of an interrupted run
    /// with the same name is deleted first).
    pub async fn create(slot: u8, n: u8) -> Result<NetNs> {
        let name = format!("khn{}s{slot}n{n}", std::process::id() % 100_000);
        let _ = ip(&["netns", "del", &name]).await;
        ip(&["netns", "add", &name]).await?;
        let netns = NetNs { name };
        netns.ip(&["link", "set", "lo", "up"]).await?;
        Ok(netns)
    }

    /// `ip ARGS` inside the namespace, which must succeed.
    pub async fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all).await
    }

    /// The path `nsenter --net=` takes.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Drops every packet from here to `peers` (a blackhole route each, so nothing is sent and
    /// nothing is answered, as on a cut cable: connections time out rather than fail fast).
    pub async fn cut_off(&self, peers: &[std::net::Ipv4Addr]) -> Result<()> {
        for peer in peers {
            self.ip(&["route", "add", "blackhole", &format!("{peer}/32")])
                .await?;
        }
        Ok(())
    }

    /// Undoes [`NetNs::cut_off`] for `peers`.
    pub async fn heal(&self, peers: &[std::net::Ipv4Addr]) -> Result<()> {
        for peer in peers {
            self.ip(&["route", "del", "blackhole", &format!("{peer}/32")])
                .await?;
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl NsHost {
    /// Boots a bare host named `name` whose sshd lets root in with `authorized_key`, and waits
    /// for its sshd; `keep` as for [`NsHost::boot`].
    pub async fn boot_ssh(
        dir: &Path,
        name: &str,
        authorized_key: &Path,
        keep: &[&Path],
    ) -> Result<NsHost> {
        let host = NsHost::boot(
            dir,
            SSH_HOST_SETUP,
            &[
                ("AUTHORIZED_KEY", authorized_key.as_os_str()),
                ("HOSTNAME_", OsStr::new(name)),
            ],
            keep,
        )
        .await?;
        host.wait_active("ssh.service").await?;
        Ok(host)
    }

    /// `ADDRESS KEYTYPE KEY`: a known_hosts line for the host's ed25519 key at `address`.
    pub async fn known_hosts_line(&self, address: &str) -> Result<String> {
        let out = self
            .run("cat", &["/etc/ssh/ssh_host_ed25519_key.pub"], &[])
            .await?;
        ensure!(out.status.success(), "read the host's public key");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(kind), Some(key)) => Ok(format!("{address} {kind} {key}\n")),
            _ => bail!("no key in the host's ssh_host_ed25519_key.pub: {text}"),
        }
    }
}

impl Drop for NsHost {
    fn drop(&mut self) {
        // While unshare runs it has not reaped PID 1, so the pid cannot name another process.
        if self.pid1 != 0 && matches!(self.unshare.try_wait(), Ok(None)) {
            if let Ok(pid) = libc::pid_t::try_from(self.pid1) {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut exited = false;
        for _ in 0..200 {
            if !matches!(self.unshare.try_wait(), Ok(None)) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if !exited {
            // --kill-child: unshare's death takes PID 1, and so the namespaces, with it.
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

/// A cgroup made for the test, removed on drop with everything systemd made under it.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(path: PathBuf) -> Result<TestCgroup> {
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        Ok(TestCgroup(path))
    }
}

impl Drop for TestCgroup {
    /// Removes the tree deepest first, retrying (bounded: 100 rounds, 50 ms apart) while the
    /// killed processes leave; warns when it cannot.
    fn drop(&mut self) {
        fn dirs(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        dirs(&entry.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        for _ in 0..100 {
            let mut all = Vec::new();
            dirs(&self.0, &mut all);
            for dir in &all {
                let _ = fs::remove_dir(dir);
            }
            if !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "warning: could not remove cgroup {} (still in use)",
            self.0.display()
        );
    }
}

/// Runs `cmd` to the end and returns its output; fails only when it cannot be run or outlives
/// [`COMMAND_LIMIT`] (then it is killed).
pub async fn bounded_output(mut cmd: tokio::process::Command, what: &str) -> Result<Output> {
    cmd.kill_on_drop(true);
    tokio::time::timeout(COMMAND_LIMIT, cmd.output())
        .await
        .with_context(|| format!("`{what}` still running after {COMMAND_LIMIT:?}"))?
        .with_context(|| format!("run `{what}`"))
}

/// How systemd's cgroups are mounted here (`unified`, `hybrid` or `legacy`, for `boot.sh`),
/// and this process's cgroup in each hierarchy systemd uses (v2, and v1 `name=systemd`).
fn cgroup_homes() -> Result<(&'static str, Vec<PathBuf>)> {
    let own = fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    // mountinfo: id parent dev root mountpoint options... - fstype source superoptions
    let mount_of = |wanted: &dyn Fn(&str, &str) -> bool| -> Option<(String, String)> {
        mounts.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let right: Vec<&str> = right.split_whitespace().collect();
            let (fstype, options) = (*right.first()?, *right.get(2)?);
            wanted(fstype, options).then(|| (left[3].to_string(), left[4].to_string()))
        })
    };
    let home = |path: &str, mount: Option<(String, String)>| -> Result<Option<PathBuf>> {
        let Some((root, point)) = mount else {
            return Ok(None);
        };
        let relative = path
            .strip_prefix(root.trim_end_matches('/'))
            .with_context(|| format!("cgroup {path} is not under the mount root {root}"))?;
        Ok(Some(
            Path::new(&point).join(relative.trim_start_matches('/')),
        ))
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(i), Some(c), Some(p)) => (i, c, p),
            _ => continue,
        };
        if id == "0" && controllers.is_empty() {
            v2 = home(path, mount_of(&|fs, _| fs == "cgroup2"))?;
        } else if controllers.split(',').any(|c| c == "name=systemd") {
            v1 = home(
                path,
                mount_of(&|fs, opts| {
                    fs == "cgroup" && opts.split(',').any(|o| o == "name=systemd")
                }),
            )?;
        }
    }
    Ok(match (v2, v1) {
        (Some(v2), Some(v1)) => ("hybrid", vec![v1, v2]),
        (Some(v2), None) => ("unified", vec![v2]),
        (None, Some(v1)) => ("legacy", vec![v1]),
        (None, None) => bail!("no cgroup2 or name=systemd cgroup hierarchy is mounted here"),
    })
}
