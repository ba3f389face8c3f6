//! The ssh provider against hosts it did not start: bare hosts in namespaces of their own,
//! booted with systemd as PID 1 and Debian's sshd (`keyhold_tests::nshost`), on a bridge of the
//! test's own (root). The whole provider conformance suite passes through SSH with the services
//! run by systemd; and `provision up` deploys a 3-node cluster onto three such hosts: the
//! install-server and snapshot-timer playbooks, certificates, configs, the binary over SFTP,
//! keyhold.service under systemd, init, unseal, join and configure; it serves KV to the admin
//! login, and the snapshot agent's unit stores a snapshot in S3 (moto, on the bridge) from the
//! active host, under its sandbox, with the credentials and AppRole login `up` gave it; after
//! every node's data is lost, `dr rebuild` brings the cluster back from that snapshot.

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
/// The tests' bridges (10.A.SLOT.0/24).
const SLOT: u8 = 61;
const SLOT_UP: u8 = 62;
const SLOT_UPGRADE: u8 = 63;
const SLOT_SUDO: u8 = 64;

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
    conformance_as("root", false, SLOT).await
}

/// The same through a login that is not root (`deploy`): files staged as that user, then put
/// in place, and every command and unit run, through `sudo -n`. A login sudo refuses
/// (`guest`) is refused with sudo's own reason.
#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_host_reached_as_a_sudo_user_passes_the_conformance_suite() -> Result<()> {
    conformance_as("deploy", true, SLOT_SUDO).await
}

async fn conformance_as(user: &str, sudo: bool, slot: u8) -> Result<()> {
    nshost::preflight(TEST, &["ssh-keygen", "sshd", "sudo"])?;
    let dir = test_dir("keyhold-ssh-host-")?;
    let key = dir.path().join("id_ed25519");
    keyhold_tests::provision::ssh_keygen(&key)?;
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared)?;
    let mut bridge = Bridge::create(slot).await?;
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
    let settings = |user: &str| {
        Arc::new(SshSettings {
            hosts: vec![address.into()],
            user: user.into(),
            private_key_file: key.clone(),
            port: 22,
            sudo,
            known_hosts: known_hosts.clone(),
            host_key_fingerprints: Vec::new(),
            trust_on_first_use: false,
            connect_timeout: Duration::from_secs(10),
        })
    };
    if sudo {
        let guest = SshHost::new(
            "keyhold-1",
            address.into(),
            settings("guest"),
            None,
            PathBuf::from("/"),
        );
        let out = guest.run(&["true"], Duration::from_secs(30)).await?;
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        ensure!(
            !out.success() && said.contains("sudo"),
            "a login without sudo rights: {out:?}"
        );
    }
    let pid1 = host.pid1;
    let settings = settings(user);
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

/// Three hosts with sshd on a bridge; the key root logs in with and a known_hosts naming them.
struct Hosts {
    hosts: Vec<NsHost>,
    addresses: Vec<std::net::Ipv4Addr>,
    key: PathBuf,
    known_hosts: PathBuf,
    bridge: Bridge,
}

async fn three_hosts(dir: &Path, slot: u8) -> Result<Hosts> {
    let key = dir.join("id_ed25519");
    keyhold_tests::provision::ssh_keygen(&key)?;
    let mut bridge = Bridge::create(slot).await?;
    let mut hosts = Vec::new();
    let mut addresses = Vec::new();
    let mut known = String::new();
    for n in 1..=3u8 {
        let host_dir = dir.join(format!("host-{n}"));
        std::fs::create_dir_all(&host_dir)?;
        let host = NsHost::boot_ssh(
            &host_dir,
            &format!("keyhold-{n}"),
            &key.with_extension("pub"),
            &[],
        )
        .await?;
        let address = bridge.attach(&host, 10 + n).await?;
        known.push_str(&host.known_hosts_line(&address.to_string()).await?);
        hosts.push(host);
        addresses.push(address);
    }
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, known)?;
    Ok(Hosts {
        hosts,
        addresses,
        key,
        known_hosts,
        bridge,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_up_deploys_a_cluster_onto_three_hosts_over_ssh() -> Result<()> {
    nshost::preflight("provision_up_over_ssh", &["ssh-keygen", "sshd"])?;
    let dir = test_dir("keyhold-ssh-up-")?;
    let hosts = three_hosts(dir.path(), SLOT_UP).await?;
    // S3 for the snapshot agents: moto on this machine's bridge address, which the hosts reach.
    let moto = keyhold_tests::moto::Moto::start(hosts.bridge.gateway()).await?;
    let bucket = format!("keyhold-ssh-{}", std::process::id());
    let hcl = ssh_environment(&hosts, Some((&moto.direct_endpoint(), &bucket)))?;
    let mut p = keyhold_tests::provision::Provisioned::with_text(
        "ssh-up",
        3,
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        &hcl,
    )?;
    for (k, v) in keyhold_tests::moto::AWS_ENV {
        p.set_env(k, v);
    }
    let check = p.run(&["hosts", "check"]).await?;
    ensure!(check.code == Some(0), "hosts check: {check:?}");
    let up = p.run(&["up", "--json"]).await?;
    if up.code != Some(0) {
        for host in &hosts.hosts {
            eprintln!(
                "{}",
                host.diagnostics(&["ssh.service", "keyhold.service"]).await
            );
        }
    }
    let up = up.expect(0)?.json()?;
    println!("up over ssh: {up}");
    let roles = keyhold_tests::provision::roles_of(&p.status().await?.1)?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles: {roles:?}"
    );
    // On each host: keyhold.service active under systemd, as the keyhold user.
    for host in &hosts.hosts {
        ensure!(
            host.systemctl(&["is-active", "keyhold.service"])
                .await?
                .trim()
                == "active",
            "keyhold.service is not active"
        );
        let user = host
            .systemctl(&["show", "--property=User", "--value", "keyhold.service"])
            .await?;
        ensure!(user.trim() == "keyhold", "the unit's user: {user}");
        // The running unit's sandbox, as systemd itself scores it.
        let out = host
            .run(
                "systemd-analyze",
                &["security", "--no-pager", "keyhold.service"],
                &[],
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let score = keyhold_tests::provision::exposure_level(&text, "keyhold.service")
            .with_context(|| format!("no exposure figure:\n{text}"))?;
        println!("systemd-analyze security keyhold.service on a host: {score}");
        ensure!(score <= 2.0, "keyhold.service scores {score} (> 2.0)");
    }
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let ca = p.ca_file();
    for (n, address) in hosts.addresses.iter().enumerate() {
        let api = p.api_at(&ca, &format!("https://{address}:8200"), Some(&token))?;
        api.kv2_put("kv", &format!("over-ssh/{n}"), serde_json::json!({"v": n}))
            .await?
            .expect_ok("write through a node")?;
    }
    let api = p.api_at(
        &ca,
        &format!("https://{}:8200", hosts.addresses[2]),
        Some(&token),
    )?;
    for n in 0..3 {
        ensure!(
            api.kv2_get("kv", &format!("over-ssh/{n}")).await? == Some(serde_json::json!({"v": n})),
            "over-ssh/{n} is not served"
        );
    }
    // The agent's timer is enabled and running on every host; its unit, run on the active host
    // as the timer would run it, stores a snapshot.
    for host in &hosts.hosts {
        ensure!(
            host.systemctl(&["is-active", "keyhold-snapshot.timer"])
                .await?
                .trim()
                == "active",
            "keyhold-snapshot.timer is not active"
        );
    }
    let saved = p
        .run(&["snapshot", "save", "--json"])
        .await?
        .expect(0)?
        .json()?;
    println!("snapshot over ssh: {saved}");
    let key = saved["key"].as_str().context("saved key")?;
    let objects = moto
        .s3()
        .await
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await?;
    ensure!(
        objects.contents().iter().any(|o| o.key() == Some(key))
            && saved["sha256"].as_str().is_some_and(|s| s.len() == 64),
        "the snapshot is not in the bucket: {saved}"
    );
    let plan = p.run(&["plan"]).await?;
    ensure!(plan.code == Some(0), "plan after up: {plan:?}");

    // Every node's data lost (the units stopped, the data directories emptied): `dr rebuild`
    // puts the snapshot on the first host, restores it offline there, and the cluster comes
    // back with the data and the admin token from before.
    for host in &hosts.hosts {
        host.systemctl(&["stop", "keyhold.service"]).await?;
        let out = host
            .run("sh", &["-c", "rm -rf /opt/keyhold/data/*"], &[])
            .await?;
        ensure!(out.status.success(), "empty the data directory: {out:?}");
    }
    let rebuilt = p
        .run(&["dr", "rebuild", "--from", "latest", "--json"])
        .await?
        .expect(0)?
        .json()?;
    println!("dr rebuild over ssh: {rebuilt}");
    ensure!(
        rebuilt["verified"]["secrets"].as_u64() == Some(3),
        "the rebuilt cluster's inventory: {rebuilt}"
    );
    for (n, address) in hosts.addresses.iter().enumerate() {
        let api = p.api_at(&ca, &format!("https://{address}:8200"), Some(&token))?;
        ensure!(
            api.kv2_get("kv", &format!("over-ssh/{n}")).await? == Some(serde_json::json!({"v": n})),
            "over-ssh/{n} after the rebuild"
        );
    }
    // `down --purge`: the units stopped, disabled and gone, the server's files deleted.
    p.run(&["down", "--purge"]).await?.expect(0)?;
    for host in &hosts.hosts {
        let out = host
            .run("systemctl", &["is-active", "keyhold.service"], &[])
            .await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).trim() != "active",
            "keyhold.service still runs after down"
        );
        let out = host
            .run(
                "sh",
                &[
                    "-c",
                    "ls -d /opt/keyhold /etc/keyhold.d /var/log/keyhold \
                     /etc/systemd/system/keyhold.service 2>/dev/null || true",
                ],
                &[],
            )
            .await?;
        ensure!(
            out.stdout.is_empty(),
            "left on a host after down --purge: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// The harness's 3-node environment with `provider "ssh"` naming `hosts`; with `s3`
/// (endpoint, bucket), snapshots go there.
fn ssh_environment(hosts: &Hosts, s3: Option<(&str, &str)>) -> Result<String> {
    let bin = keyhold_tests::keyhold_bin()?;
    let local = keyhold_tests::provision::environment_hcl(
        &keyhold_tests::provision::EnvSpec::nodes(3),
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        &bin,
    );
    let provider = "provider \"local\" {\n  address_base = \"127.0.0.1\"\n}\n";
    ensure!(
        local.contains(provider),
        "the harness's environment changed:\n{local}"
    );
    let hosts_list = hosts
        .addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut hcl = local.replace(
        provider,
        &format!(
            "provider \"ssh\" {{\n  hosts = [{hosts_list}]\n  private_key_file = \"{}\"\n  \
             known_hosts = \"{}\"\n}}\n",
            hosts.key.display(),
            hosts.known_hosts.display()
        ),
    );
    if let Some((endpoint, bucket)) = s3 {
        hcl.push_str(&format!(
            "\nsnapshots {{\n  schedule = \"hourly\"\n  s3 {{\n    bucket   = \"{bucket}\"\n    \
             region   = \"us-east-1\"\n    endpoint = \"{endpoint}\"\n  }}\n}}\n"
        ));
    }
    Ok(hcl)
}

/// A rolling upgrade over SSH with the workload generator running: standbys first, the active
/// node last, each binary uploaded and swapped under systemd; nothing fails, nothing is lost,
/// and leadership ends on the new version. Then new certificates, node by node, each reloaded
/// by `systemctl reload`, with the workload running again; then a new CA the same way.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_and_certificate_rotation_over_ssh_under_load_fail_nothing() -> Result<()> {
    let next = keyhold_tests::next_keyhold_bin()?;
    nshost::preflight("upgrade_over_ssh", &["ssh-keygen", "sshd"])?;
    let dir = test_dir("keyhold-ssh-upgrade-")?;
    let hosts = three_hosts(dir.path(), SLOT_UPGRADE).await?;
    let hcl = ssh_environment(&hosts, None)?;
    let mut p = keyhold_tests::provision::Provisioned::with_text(
        "ssh-upgrade",
        3,
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        &hcl,
    )?;
    p.run(&["up", "--json"]).await?.expect(0)?;
    let report = p.upgrade_under_load(&next).await?;
    let nodes = report["nodes"].as_array().context("nodes")?;
    ensure!(
        nodes.len() == 3
            && nodes.iter().all(|n| {
                n["outcome"] == serde_json::json!("upgraded")
                    && n["to_version"] == serde_json::json!(keyhold_tests::NEXT_VERSION)
            })
            && nodes[2]["was_active"] == serde_json::json!(true)
            && report["active_version_after"] == serde_json::json!(keyhold_tests::NEXT_VERSION),
        "{report}"
    );
    let load = p.spawn(&["load", "--duration", "6s", "--rate", "30", "--json"])?;
    let rotated = p
        .run(&["certs", "rotate", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let during = load.wait().await?.expect(0)?.json()?;
    println!(
        "certs rotate over ssh: {} operations, {} failed, {} lost",
        during["operations"], during["failures"], during["lost_writes"]
    );
    ensure!(
        during["failures"] == serde_json::json!(0) && during["lost_writes"] == serde_json::json!(0),
        "the workload during the rotation: {during}"
    );
    let rotated_nodes = rotated["nodes"].as_array().context("rotated nodes")?;
    ensure!(
        rotated_nodes.len() == 3
            && rotated_nodes
                .iter()
                .all(|r| r["old_fingerprint_sha256"] != r["new_fingerprint_sha256"]),
        "every node presents a new certificate: {rotated}"
    );
    // A new CA over SSH, the workload running: trusted beside the old one on every host, each
    // host moved to a certificate from it and reloaded, the old CA dropped.
    let old_ca = std::fs::read_to_string(p.ca_file())?;
    let load = p.spawn(&["load", "--duration", "10s", "--rate", "30", "--json"])?;
    let rotated = p
        .run(&["certs", "rotate", "--ca", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let during = load.wait().await?.expect(0)?.json()?;
    println!(
        "certs rotate --ca over ssh: {} operations, {} failed, {} lost",
        during["operations"], during["failures"], during["lost_writes"]
    );
    ensure!(
        during["failures"] == serde_json::json!(0) && during["lost_writes"] == serde_json::json!(0),
        "the workload during the CA rotation: {during}"
    );
    let new_ca = std::fs::read_to_string(p.ca_file())?;
    ensure!(
        new_ca != old_ca
            && new_ca.matches("BEGIN CERTIFICATE").count() == 1
            && rotated["ca"]["old_fingerprint_sha256"] != rotated["ca"]["new_fingerprint_sha256"],
        "no new CA alone after certs rotate --ca: {rotated}"
    );
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    for address in &hosts.addresses {
        let api = p.api_at(
            &p.ca_file(),
            &format!("https://{address}:8200"),
            Some(&token),
        )?;
        api.kv2_put("kv", "after-ca", serde_json::json!({"v": 1}))
            .await?
            .expect_ok("a write through a host trusted by the new CA alone")?;
    }
    let plan = p.run(&["plan"]).await?;
    ensure!(
        plan.code == Some(0),
        "plan after certs rotate --ca: {plan:?}"
    );
    for host in &hosts.hosts {
        let out = host
            .run("/usr/local/bin/keyhold", &["version"], &[])
            .await?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains(keyhold_tests::NEXT_VERSION),
            "the host's binary: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            host.systemctl(&["is-active", "keyhold.service"])
                .await?
                .trim()
                == "active",
            "keyhold.service is not active after the upgrade"
        );
    }
    Ok(())
}
