//! The unit `provision render --host-layout` writes runs the server under a real systemd as
//! PID 1 (slow tier, root only). Fresh pid/mount/net/uts/ipc/cgroup namespaces become a host
//! laid out as the rendered files say (`keyhold_tests::nshost`, with `provision_systemd/node.sh`),
//! systemd starts the rendered
//! `keyhold.service` unchanged, and the real `keyhold` CLI, run inside the namespaces with the
//! rendered `keyhold.env`, takes the node through an operator's day: init, unseal (which enables
//! the file audit device the rendered config declares), KV, logrotate's rename + `systemctl
//! reload`, `systemctl stop` and `start`. Along the way it checks that the sandbox is the one
//! the unit asks for (the keyhold user, CAP_IPC_LOCK only, memory locked, seccomp, a read-only
//! file system outside `ReadWritePaths`) and that `systemd-analyze security` scores the running
//! unit at most 2.0.
//!
//! The host machine is left as it was (see `keyhold_tests::nshost`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use keyhold_tests::nshost::{self, bounded_output, NsHost};
use keyhold_tests::{keyhold_bin, provision_bin, slow_tests_enabled, test_dir, Pki};
use serde_json::Value;

const TEST: &str = "slow_rendered_unit_runs_the_server_under_systemd_as_pid_1";

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
    nshost::preflight(TEST, &["useradd", "systemd-analyze"])
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

/// A keyhold node on a systemd host in namespaces of its own ([`NsHost`]): the node's files are
/// where the rendered ones say, its data and log directories are the test's.
struct SystemdHost {
    host: NsHost,
    /// The host side of /var/log/keyhold.
    logs: PathBuf,
}

/// Lays a booted host out as one node (sourced by `boot.sh`).
const NODE_SETUP: &str = include_str!("provision_systemd/node.sh");

impl SystemdHost {
    /// Lays out the directories the node's setup binds and boots the host.
    async fn boot(dir: &Path, stage: &Path) -> Result<SystemdHost> {
        let data = dir.join("data");
        let logs = dir.join("logs");
        for d in [&data, &logs] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let binary = keyhold_bin()?;
        let host = NsHost::boot(
            dir,
            NODE_SETUP,
            &[
                ("STAGE", stage.as_os_str()),
                ("DATA", data.as_os_str()),
                ("LOGS", logs.as_os_str()),
                ("KEYHOLD_BIN", binary.as_os_str()),
            ],
            &[],
        )
        .await?;
        Ok(SystemdHost { host, logs })
    }

    async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        self.host.run(program, args, env).await
    }

    async fn systemctl(&self, args: &[&str]) -> Result<String> {
        self.host.systemctl(args).await
    }

    /// One property of keyhold.service (`systemctl show -p NAME --value`).
    async fn property(&self, name: &str) -> Result<String> {
        let value = self
            .systemctl(&["show", "keyhold.service", "-p", name, "--value"])
            .await?;
        Ok(value.trim().to_string())
    }

    async fn wait_unit_active(&self) -> Result<()> {
        self.host.wait_active("keyhold.service").await
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
        keyhold_tests::provision::exposure_level(&text, "keyhold.service").with_context(|| {
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

    /// What to print when the test fails: boot.sh's output, the unit's status, the journal and
    /// the server log.
    async fn diagnostics(&self) -> String {
        let mut report = self.host.diagnostics(&["keyhold.service"]).await;
        let log = self.server_log();
        let tail: Vec<&str> = log.lines().collect();
        report.push_str(&format!(
            "--- /var/log/keyhold/keyhold.log (last 60 lines)\n{}\n",
            tail[tail.len().saturating_sub(60)..].join("\n")
        ));
        report
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
