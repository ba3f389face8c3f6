//! The unit `provision render --host-layout` writes runs the server under a real systemd as
//! PID 1 (slow tier, root only). Fresh pid/mount/net/uts/ipc/cgroup namespaces become a host
//! laid out as the rendered files say (`provision_systemd/boot.sh`), systemd starts the rendered
//! `keyhold.service` unchanged, and the real `keyhold` CLI, run inside the namespaces with the
//! rendered `keyhold.env`, takes the node through an operator's day: init, unseal (which enables
//! the file audit device the rendered config declares), KV, logrotate's rename + `systemctl
//! reload`, `systemctl stop` and `start`. Along the way it checks that the sandbox is the one
//! the unit asks for (the keyhold user, CAP_IPC_LOCK only, memory locked, seccomp, a read-only
//! file system outside `ReadWritePaths`) and that `systemd-analyze security` scores the running
//! unit at most 2.0.
//!
//! The host machine is left as it was: everything is mounted in the private mount namespace
//! (see `boot.sh`), systemd's cgroups live under cgroups made for the test, and dropping the
//! host kills its PID 1 and removes those cgroups.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::{keyhold_bin, provision_bin, slow_tests_enabled, test_dir, Pki};
use serde_json::Value;

const TEST: &str = "slow_rendered_unit_runs_the_server_under_systemd_as_pid_1";

/// Turns the namespaces into the host and execs systemd.
const BOOT_SCRIPT: &str = include_str!("provision_systemd/boot.sh");

/// The unit systemd is told to start; `boot.sh` writes it, wanting `keyhold.service`.
const BOOT_TARGET: &str = "keyhold-test.target";

/// The node's address (`address_base` below): the namespaces' own loopback, where the standard
/// ports are free.
const NODE_IP: &str = "127.0.0.1";

/// A one-node environment whose server log and file audit device are in the log directory. (The
/// userpass user is there because validation wants the admin login to exist.)
const ENVIRONMENT: &str = r#"
provider "local" {
  address_base = "127.0.0.1"
}

nodes = 1

log {
  rotate_duration = "24h"
}

audit "file" {
  file_path = "audit.log"
}

auth "userpass" {
  user "admin" {
    policies = ["default"]
  }
}
"#;

/// Where the environment's audit device writes on a host, as the rendered logrotate file says.
const AUDIT_FILE: &str = "/var/log/keyhold/audit.log";

/// A path outside the unit's `ReadWritePaths`, writable by root on the host.
const OUTSIDE_READ_WRITE_PATHS: &str = "/opt/keyhold/outside.log";

/// The issue's bound on `systemd-analyze security`'s overall exposure for the unit.
const MAX_EXPOSURE: f64 = 2.0;

/// The longest any one command may run; a bound against hangs, not a timing assertion.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// `PATH` inside the namespaces.
const HOST_PATH: &str = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[tokio::test]
async fn slow_rendered_unit_runs_the_server_under_systemd_as_pid_1() -> Result<()> {
    if !slow_tests_enabled(TEST) {
        return Ok(());
    }
    preflight()?;
    let dir = test_dir("keyhold-systemd-")?;
    let stage = render_host_files(dir.path()).await?;
    issue_tls(dir.path(), &stage)?;
    let host = SystemdHost::boot(dir.path(), &stage).await?;
    let outcome = operate(&host, &stage).await;
    if outcome.is_err() {
        eprintln!("{}", host.diagnostics().await);
    }
    outcome
}

/// Fails, saying what to do, when this machine cannot run the test.
fn preflight() -> Result<()> {
    let uid = fs::metadata("/proc/self").context("stat /proc/self")?.uid();
    ensure!(
        uid == 0,
        "{TEST} needs root (it makes namespaces, mounts and a systemd PID 1; CI runs as root): \
         run it as root or leave KEYHOLD_SLOW_TESTS unset"
    );
    let tools = [
        "unshare",
        "nsenter",
        "ip",
        "useradd",
        "mknod",
        "systemd-analyze",
    ];
    for tool in tools {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file());
        ensure!(
            found,
            "{TEST} needs `{tool}`; scripts/test installs it (util-linux, iproute2, passwd, systemd)"
        );
    }
    ensure!(
        Path::new("/lib/systemd/systemd").is_file(),
        "{TEST} needs systemd itself at /lib/systemd/systemd; scripts/test installs it"
    );
    Ok(())
}

/// `provision render --host-layout` for the one-node environment: returns the node's tree
/// (`etc/keyhold.d/...`, `etc/systemd/system/keyhold.service`, ...).
async fn render_host_files(dir: &Path) -> Result<PathBuf> {
    let env_file = dir.join("systemd-test.hcl");
    fs::write(&env_file, ENVIRONMENT).context("write the environment file")?;
    let out = dir.join("render");
    let mut render = tokio::process::Command::new(provision_bin()?);
    render
        .arg("render")
        .arg("--env")
        .arg(&env_file)
        .arg("--out")
        .arg(&out)
        .arg("--host-layout");
    let result = bounded_output(render, "provision render --host-layout").await?;
    ensure!(
        result.status.success(),
        "provision render --host-layout: {}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    let stage = out.join("keyhold-1");
    for file in [
        "etc/keyhold.d/keyhold.hcl",
        "etc/keyhold.d/keyhold.env",
        "etc/systemd/system/keyhold.service",
    ] {
        ensure!(
            stage.join(file).is_file(),
            "provision render wrote no {file} for keyhold-1"
        );
    }
    // The rotation this test performs is the one the rendered logrotate file asks for.
    let logrotate = fs::read_to_string(stage.join("etc/logrotate.d/keyhold"))
        .context("read the rendered logrotate file")?;
    ensure!(
        logrotate.contains(AUDIT_FILE) && logrotate.contains("systemctl reload keyhold.service"),
        "the rendered logrotate file no longer rotates {AUDIT_FILE} with a reload:\n{logrotate}"
    );
    Ok(stage)
}

/// The node's CA, certificate and key, issued by the harness CA into `stage/tls/`, which
/// `boot.sh` copies to /opt/keyhold/tls.
fn issue_tls(dir: &Path, stage: &Path) -> Result<()> {
    let pki = Pki::new(dir, "ca")?;
    let tls = stage.join("tls");
    fs::create_dir_all(&tls).context("create the TLS staging directory")?;
    fs::write(tls.join("ca.crt"), &pki.ca_pem).context("write ca.crt")?;
    let names = [NODE_IP, "keyhold-1", "localhost"].map(str::to_string);
    pki.issue_server("keyhold-1", &names)?.write(&tls, "node")?;
    Ok(())
}

/// The operator's day on the host, with the checks that the unit's sandbox is in force.
async fn operate(host: &SystemdHost, stage: &Path) -> Result<()> {
    let mut cli = Cli::new(host, stage)?;
    host.wait_unit_active().await?;
    cli.wait_sealed().await?;

    let sandbox = host.sandbox().await?;
    eprintln!("keyhold.service main process: {sandbox:?}");
    ensure!(
        sandbox.user == "keyhold",
        "the server runs as {}, not keyhold",
        sandbox.user
    );
    // CAP_IPC_LOCK is capability 14: the one bit of 0x4000.
    ensure!(
        sandbox.cap_eff == "0000000000004000" && sandbox.cap_bnd == "0000000000004000",
        "capabilities beyond CAP_IPC_LOCK: {sandbox:?}"
    );
    ensure!(
        sandbox.no_new_privs == "1" && sandbox.seccomp == "2",
        "no seccomp filter or NoNewPrivileges: {sandbox:?}"
    );
    ensure!(
        sandbox.locked_kb > 0,
        "the server's memory is not locked (disable_mlock = false, LimitMEMLOCK): {sandbox:?}"
    );

    let exposure = host.security_exposure().await?;
    eprintln!("systemd-analyze security keyhold.service (running unit): exposure {exposure}");
    ensure!(
        exposure <= MAX_EXPOSURE,
        "systemd-analyze security scores the running keyhold.service {exposure}, above {MAX_EXPOSURE}"
    );

    let unseal_key = cli.init().await?;
    // The environment's file device is declared in the rendered config: auditing from unseal.
    cli.unseal(&unseal_key).await?;
    cli.ok(&["secrets", "enable", "-version=2", "kv"]).await?;
    let password = "written-under-systemd";
    cli.ok(&["kv", "put", "kv/app", &format!("password={password}")])
        .await?;
    ensure!(
        cli.read_password().await? == password,
        "kv get returned another value"
    );
    let audit = host.logs.join("audit.log");
    ensure!(
        audit_mentions(&audit, "kv/data/app")?,
        "{AUDIT_FILE} does not record the KV write"
    );

    // A device outside ReadWritePaths cannot open its file: the file system is read-only there.
    let refused = cli
        .run(&[
            "audit",
            "enable",
            "-path=outside",
            "file",
            &format!("file_path={OUTSIDE_READ_WRITE_PATHS}"),
        ])
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    ensure!(
        !refused.status.success() && said.to_lowercase().contains("read-only"),
        "an audit device at {OUTSIDE_READ_WRITE_PATHS} was not refused as read-only: {}\n{said}",
        refused.status
    );

    rotate_audit_file(host, &cli, &audit).await?;
    stop_and_start(host, &cli, &unseal_key, password).await
}

/// logrotate's way: rename the file, `systemctl reload keyhold.service`; the server reopens
/// the file by its name, without restarting (a restart would seal it).
async fn rotate_audit_file(host: &SystemdHost, cli: &Cli<'_>, audit: &Path) -> Result<()> {
    let main_pid = host.property("MainPID").await?;
    fs::rename(audit, audit.with_extension("log.1")).context("rotate the audit file")?;
    host.systemctl(&["reload", "keyhold.service"]).await?;
    let mut reopened = false;
    for _ in 0..100 {
        cli.read_password().await?;
        if audit.exists() && audit_mentions(audit, "kv/data/app")? {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        reopened,
        "after rename + reload, {AUDIT_FILE} was not recreated with new entries in 100 reads"
    );
    ensure!(
        host.property("MainPID").await? == main_pid,
        "systemctl reload restarted the server"
    );
    cli.expect(0, &["status"]).await?;
    ensure!(
        host.server_log().contains("reopening audit files"),
        "the server log does not show the reload"
    );
    Ok(())
}

/// `systemctl stop` ends the server cleanly (exit 0 on the unit's SIGINT); `systemctl start`
/// brings it back sealed, and after unsealing the data written before is there.
async fn stop_and_start(
    host: &SystemdHost,
    cli: &Cli<'_>,
    unseal_key: &str,
    password: &str,
) -> Result<()> {
    host.systemctl(&["stop", "keyhold.service"]).await?;
    let show = host
        .systemctl(&[
            "show",
            "keyhold.service",
            "-p",
            "ActiveState",
            "-p",
            "Result",
            "-p",
            "ExecMainCode",
            "-p",
            "ExecMainStatus",
        ])
        .await?;
    let state: BTreeMap<&str, &str> = show.lines().filter_map(|l| l.split_once('=')).collect();
    // ExecMainCode 1 is CLD_EXITED: the server returned, it was not killed by the signal.
    let clean = [
        ("ActiveState", "inactive"),
        ("Result", "success"),
        ("ExecMainCode", "1"),
        ("ExecMainStatus", "0"),
    ];
    ensure!(
        clean.iter().all(|(k, v)| state.get(k) == Some(v)),
        "systemctl stop did not end the server cleanly:\n{show}"
    );
    ensure!(
        host.server_log().contains("shutdown complete"),
        "the server log does not show a clean shutdown"
    );

    host.systemctl(&["start", "keyhold.service"]).await?;
    host.wait_unit_active().await?;
    let status = cli.wait_sealed().await?;
    ensure!(
        status["initialized"] == Value::Bool(true),
        "after a restart the node is not initialised: {status}"
    );
    cli.unseal(unseal_key).await?;
    ensure!(
        cli.read_password().await? == password,
        "the KV value changed across stop and start"
    );
    Ok(())
}

/// Runs `cmd` to the end and returns its output; fails only when it cannot be run or outlives
/// [`COMMAND_LIMIT`] (then it is killed).
async fn bounded_output(mut cmd: tokio::process::Command, what: &str) -> Result<Output> {
    cmd.kill_on_drop(true);
    tokio::time::timeout(COMMAND_LIMIT, cmd.output())
        .await
        .with_context(|| format!("`{what}` still running after {COMMAND_LIMIT:?}"))?
        .with_context(|| format!("run `{what}`"))
}

/// Whether an audit file has an entry naming `path`.
fn audit_mentions(file: &Path, path: &str) -> Result<bool> {
    let text = fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    Ok(text.lines().any(|line| line.contains(path)))
}

/// What `/proc/<MainPID>/status` says of the server's process.
#[derive(Debug)]
struct Sandbox {
    user: String,
    cap_eff: String,
    cap_bnd: String,
    no_new_privs: String,
    seccomp: String,
    locked_kb: u64,
}

/// A systemd host in namespaces of its own. PID 1 is systemd; the node's files are where the
/// rendered ones say. Dropping it kills PID 1, and with it everything in the namespaces, and
/// removes the cgroups it ran in.
struct SystemdHost {
    /// `unshare --fork`, parent of the namespaces' PID 1.
    unshare: Child,
    /// The namespaces' PID 1 as this machine sees it.
    pid1: u32,
    /// The cgroups made for the namespaces (systemd's root cgroups); dropped after PID 1 is
    /// killed, as fields drop after `drop`.
    _cgroups: Vec<TestCgroup>,
    /// What `boot.sh` printed.
    boot_log: PathBuf,
    /// The host side of /var/log/keyhold.
    logs: PathBuf,
}

impl SystemdHost {
    /// Lays out the directories `boot.sh` binds, moves it into cgroups of its own, and starts
    /// it in fresh namespaces; returns once the namespaces' PID 1 is known.
    async fn boot(dir: &Path, stage: &Path) -> Result<SystemdHost> {
        let data = dir.join("data");
        let logs = dir.join("logs");
        let scratch = dir.join("scratch");
        for d in [&data, &logs, &scratch] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let script = dir.join("boot.sh");
        fs::write(&script, BOOT_SCRIPT).context("write boot.sh")?;
        let boot_log = dir.join("boot.log");
        let log = File::create(&boot_log).context("create boot.log")?;

        let name = format!(
            "keyhold-test-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        );
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
            .env("STAGE", stage)
            .env("SCRATCH", &scratch)
            .env("DATA", &data)
            .env("LOGS", &logs)
            .env("KEYHOLD_BIN", keyhold_bin()?)
            .env("CGROUP_LAYOUT", layout)
            .env("BOOT_TARGET", BOOT_TARGET)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn unshare")?;
        let mut host = SystemdHost {
            unshare,
            pid1: 0,
            _cgroups: cgroups,
            boot_log,
            logs,
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
    async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
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
    async fn systemctl(&self, args: &[&str]) -> Result<String> {
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

    /// One property of keyhold.service (`systemctl show -p NAME --value`).
    async fn property(&self, name: &str) -> Result<String> {
        let value = self
            .systemctl(&["show", "keyhold.service", "-p", name, "--value"])
            .await?;
        Ok(value.trim().to_string())
    }

    /// Waits (bounded: 300 polls, 100 ms apart) for keyhold.service to be active; fails at
    /// once if it failed, or if the namespaces are gone.
    async fn wait_unit_active(&self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..300 {
            if !Path::new(&format!("/proc/{}", self.pid1)).exists() {
                bail!("the namespaces' PID 1 is gone:\n{}", self.boot_output());
            }
            // Until systemd is up (or boot.sh is still mounting), systemctl fails: poll on.
            let out = self
                .run("systemctl", &["is-active", "keyhold.service"], &[])
                .await?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match last.as_str() {
                "active" => return Ok(()),
                "failed" => bail!("keyhold.service failed to start"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        bail!("keyhold.service not active after 300 polls (last: {last:?})")
    }

    /// The server's user, capabilities, seccomp mode and locked memory, from /proc.
    async fn sandbox(&self) -> Result<Sandbox> {
        let pid = self.property("MainPID").await?;
        let out = self
            .run("cat", &[&format!("/proc/{pid}/status")], &[])
            .await?;
        ensure!(
            out.status.success(),
            "read /proc/{pid}/status: {}",
            out.status
        );
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| -> Result<String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .with_context(|| format!("no {name} in /proc/{pid}/status:\n{status}"))
        };
        let uid = field("Uid")?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let user = self.run("id", &["-nu", &uid], &[]).await?;
        Ok(Sandbox {
            user: String::from_utf8_lossy(&user.stdout).trim().to_string(),
            cap_eff: field("CapEff")?,
            cap_bnd: field("CapBnd")?,
            no_new_privs: field("NoNewPrivs")?,
            seccomp: field("Seccomp")?,
            locked_kb: field("VmLck")?
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("VmLck")?,
        })
    }

    /// The overall exposure `systemd-analyze security` gives the running keyhold.service.
    async fn security_exposure(&self) -> Result<f64> {
        let out = self
            .run(
                "systemd-analyze",
                &["security", "--no-pager", "keyhold.service"],
                &[],
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let marker = "Overall exposure level for keyhold.service:";
        text.lines()
            .find_map(|l| l.split_once(marker))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|figure| figure.parse().ok())
            .with_context(|| {
                format!(
                    "no exposure figure from systemd-analyze security ({}):\n{text}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// The server's own log file, /var/log/keyhold/keyhold.log.
    fn server_log(&self) -> String {
        fs::read_to_string(self.logs.join("keyhold.log")).unwrap_or_default()
    }

    fn boot_output(&self) -> String {
        fs::read_to_string(&self.boot_log).unwrap_or_default()
    }

    /// What to print when the test fails: boot.sh's output, the unit's status, the journal and
    /// the server log.
    async fn diagnostics(&self) -> String {
        let mut report = format!("--- boot.sh output\n{}\n", self.boot_output());
        for (what, program, args) in [
            (
                "systemctl status keyhold.service",
                "systemctl",
                &["status", "--no-pager", "keyhold.service"][..],
            ),
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
        let log = self.server_log();
        let tail: Vec<&str> = log.lines().collect();
        report.push_str(&format!(
            "--- /var/log/keyhold/keyhold.log (last 60 lines)\n{}\n",
            tail[tail.len().saturating_sub(60)..].join("\n")
        ));
        report
    }
}

impl Drop for SystemdHost {
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

/// The `keyhold` CLI inside the namespaces, with the environment the rendered `keyhold.env`
/// gives an operator on the host, and the root token once there is one.
struct Cli<'a> {
    host: &'a SystemdHost,
    env: Vec<(String, String)>,
}

impl<'a> Cli<'a> {
    fn new(host: &'a SystemdHost, stage: &Path) -> Result<Cli<'a>> {
        let file = stage.join("etc/keyhold.d/keyhold.env");
        let text = fs::read_to_string(&file).context("read the rendered keyhold.env")?;
        let env: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        ensure!(
            env.iter().any(|(k, _)| k == "VAULT_ADDR"),
            "the rendered keyhold.env sets no VAULT_ADDR:\n{text}"
        );
        Ok(Cli { host, env })
    }

    async fn run(&self, args: &[&str]) -> Result<Output> {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.host.run("/usr/local/bin/keyhold", args, &env).await
    }

    /// Runs and requires exit code `code`; returns stdout.
    async fn expect(&self, code: i32, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.code() == Some(code),
            "keyhold {}: {}, wanted exit {code}\nstdout: {stdout}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    async fn ok(&self, args: &[&str]) -> Result<String> {
        self.expect(0, args).await
    }

    /// Waits (bounded: 200 polls, 100 ms apart) until the server answers and says it is
    /// sealed (`status` exits 2); returns the status.
    async fn wait_sealed(&self) -> Result<Value> {
        let mut last = String::new();
        for _ in 0..200 {
            let out = self.run(&["status", "-format=json"]).await?;
            if out.status.code() == Some(2) {
                return serde_json::from_slice(&out.stdout).context("status -format=json");
            }
            last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the server did not answer sealed in 200 polls (last: {last})")
    }

    /// `operator init` with one share; keeps the root token, returns the unseal key.
    async fn init(&mut self) -> Result<String> {
        let out = self
            .ok(&[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ])
            .await?;
        let init: Value = serde_json::from_str(&out).context("operator init -format=json")?;
        let key = init["unseal_keys_b64"][0]
            .as_str()
            .context("init output has no unseal key")?
            .to_string();
        let token = init["root_token"]
            .as_str()
            .context("init output has no root token")?
            .to_string();
        self.env.push(("VAULT_TOKEN".to_string(), token));
        Ok(key)
    }

    /// `operator unseal`, then waits (bounded: 100 polls, 100 ms apart) until the node is the
    /// active node.
    async fn unseal(&self, key: &str) -> Result<()> {
        self.ok(&["operator", "unseal", key]).await?;
        for _ in 0..100 {
            let out = self.run(&["status", "-format=json"]).await?;
            let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if out.status.success() && status["is_self"] == Value::Bool(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the node did not become active in 100 polls after unsealing")
    }

    async fn read_password(&self) -> Result<String> {
        let out = self.ok(&["kv", "get", "-field=password", "kv/app"]).await?;
        Ok(out.trim().to_string())
    }
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
