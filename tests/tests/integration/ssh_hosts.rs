//! The ssh provider's host against a host it did not start: a bare host in namespaces of its
//! own, booted with systemd as PID 1 and Debian's sshd (`keyhold_tests::nshost`), reached over
//! a bridge of the test's own. The whole provider conformance suite passes through SSH, with
//! the services run by systemd (root; the suite's stand-in program as the units' binary).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::nshost::{self, Bridge, NsHost};
use keyhold_tests::test_dir;
use provisioner::providers::ssh::{SshHost, SshSettings};
use provisioner::providers::{conformance, Host};

const TEST: &str = "an_ssh_host_under_systemd_passes_the_conformance_suite";
/// This test's bridge (10.A.SLOT.0/24).
const SLOT: u8 = 61;

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "keyhold-test", "-f"])
        .arg(path)
        .output()
        .context("run ssh-keygen")?;
    ensure!(out.status.success(), "ssh-keygen: {out:?}");
    Ok(())
}

/// Units for the stand-in `binary`, as the rendered ones run the server and the snapshot
/// agent, written on the host over `nsenter` (the suite makes its hosts synchronously).
fn install_units(pid1: u32, binary: &Path) {
    let script = format!(
        "set -e; cd /etc/systemd/system
printf '[Unit]\\nDescription=stand-in server\\n[Service]\\nExecStart={b} server -config=/etc/keyhold.d/keyhold.hcl\\nExecReload=/bin/kill -HUP $MAINPID\\n' >keyhold.service
printf '[Unit]\\nDescription=stand-in snapshot agent\\n[Service]\\nType=oneshot\\nExecStart={b} snapshot-agent -config=/etc/keyhold.d/snapshot-agent.hcl\\n' >keyhold-snapshot.service
printf '[Unit]\\nDescription=stand-in snapshot timer\\n[Timer]\\nOnCalendar=hourly\\n' >keyhold-snapshot.timer
systemctl reset-failed keyhold.service 2>/dev/null || true
systemctl daemon-reload",
        b = binary.display()
    );
    let out = Command::new("nsenter")
        .arg(format!("--target={pid1}"))
        .args(["--mount", "--pid", "--", "sh", "-c", &script])
        .env("PATH", nshost::HOST_PATH)
        .output()
        .expect("run nsenter");
    assert!(out.status.success(), "install the units: {out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_host_under_systemd_passes_the_conformance_suite() -> Result<()> {
    nshost::preflight(TEST, &["ssh-keygen", "sshd"])?;
    let dir = test_dir("keyhold-ssh-host-")?;
    let key = dir.path().join("id_ed25519");
    keygen(&key)?;
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared)?;
    let mut bridge = Bridge::create(SLOT).await?;
    let host_dir = dir.path().join("host");
    std::fs::create_dir_all(&host_dir)?;
    let host = NsHost::boot_ssh(
        &host_dir,
        "keyhold-1",
        &key.with_extension("pub"),
        &[&shared],
    )
    .await?;
    let address = bridge.attach(&host, 11).await?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        host.known_hosts_line(&address.to_string()).await?,
    )?;
    let settings = Arc::new(SshSettings {
        hosts: vec![address.into()],
        user: "root".into(),
        private_key_file: key.clone(),
        port: 22,
        sudo: false,
        known_hosts,
        host_key_fingerprints: Vec::new(),
        trust_on_first_use: false,
        connect_timeout: Duration::from_secs(10),
    });
    let pid1 = host.pid1;
    let make = |_: &Path, binary: PathBuf| -> Box<dyn Host> {
        install_units(pid1, &binary);
        Box::new(SshHost::new(
            "keyhold-1",
            address.into(),
            settings.clone(),
            None,
            PathBuf::from("/"),
        ))
    };
    // The suite asserts (panics); on the way out of a failure the host's journal is printed.
    let _journal = JournalOnPanic(pid1);
    conformance::run_in(&shared, make).await;
    drop(bridge);
    Ok(())
}

/// Prints the host's journal when dropped during a panic (a failed assertion of the suite).
struct JournalOnPanic(u32);

impl Drop for JournalOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = Command::new("nsenter")
                .arg(format!("--target={}", self.0))
                .args([
                    "--mount",
                    "--pid",
                    "--",
                    "journalctl",
                    "-b",
                    "--no-pager",
                    "-n",
                    "150",
                ])
                .env("PATH", nshost::HOST_PATH)
                .output();
            if let Ok(out) = out {
                eprintln!(
                    "--- the host's journal\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }
}
