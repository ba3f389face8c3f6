//! `provision image build` and machines booted from its image (root; debootstrap, qemu).
//!
//! Every run: the shipped definition (`images/debian-bookworm-keyhold.hcl`) built with this
//! build's `keyhold` into the image cache outside the clone (reused when its inputs did not
//! change, which the second build proves), its Packer manifest and artifacts checked, the
//! chroot transport put through the provider conformance cases on a copy of the image's tree,
//! the hardening checks shown to fail when an item is undone, and one VM booted from the
//! image under qemu (TCG) with every hardening item checked again on the running system over
//! SSH, as the ssh provider reaches hosts.
//!
//! The VM tier (`tests/vm/run`, `KEYHOLD_VM_TIER=1`; not in CI: about half an hour): three VMs, `provision up` over SSH, the hvac compat suite,
//! `systemd-analyze security` and the hardening checks with the server running, a rolling
//! upgrade under load, a VM powered off and on again, and Lynis's hardening index against the
//! floor in `tests/vm/lynis-floor`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use keyhold_tests::nshost::Bridge;
use keyhold_tests::test_dir;
use keyhold_tests::vm::{self, Image, Vm};
use provisioner::image::checks;
use provisioner::image::chroot::ChrootHost;
use provisioner::providers::ssh::{SshHost, SshSettings};
use provisioner::providers::{conformance, Host};
use serde_json::Value;

/// The tests' bridges (10.A.SLOT.0/24).
const SLOT_ONE_VM: u8 = 65;
const SLOT_CLUSTER: u8 = 66;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// Where images are cached between runs: outside the clone, shared by CI runs on a machine.
fn image_cache() -> PathBuf {
    std::env::var_os("KEYHOLD_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(provisioner::image::default_out)
}

/// `provision image build` of the shipped definition with this build's keyhold; its JSON.
fn build_image() -> Result<(Value, String)> {
    let out = Command::new(keyhold_tests::provision_bin()?)
        .current_dir(repo_root())
        .args([
            "image",
            "build",
            "images/debian-bookworm-keyhold.hcl",
            "--json",
        ])
        .arg("--binary")
        .arg(keyhold_tests::keyhold_bin()?)
        .arg("--out")
        .arg(image_cache())
        .output()
        .context("run provision image build")?;
    let progress = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        out.status.success(),
        "provision image build failed:\n{progress}"
    );
    Ok((serde_json::from_slice(&out.stdout)?, progress))
}

fn preflight(test: &str) -> Result<()> {
    vm::preflight(test)?;
    for tool in ["debootstrap", "mkfs.ext4", "zstd"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                )
                .output()?
                .status
                .success(),
            "{test} needs `{tool}`; scripts/test installs it"
        );
    }
    Ok(())
}

/// An SSH host for `vm` as the ssh provider reaches it: the `admin` login through sudo, the
/// host key pinned to what the VM's console printed.
fn admin_host(vm: &Vm, key: &Path, known_hosts: &Path) -> SshHost {
    let settings = Arc::new(SshSettings {
        hosts: vec![vm.address.into()],
        user: "admin".into(),
        private_key_file: key.to_path_buf(),
        port: 22,
        sudo: true,
        known_hosts: known_hosts.to_path_buf(),
        host_key_fingerprints: vec![vm.host_key.clone()],
        trust_on_first_use: false,
        connect_timeout: Duration::from_secs(20),
    });
    SshHost::new(
        &vm.name,
        vm.address.into(),
        settings,
        Some(vm.host_key.clone()),
        PathBuf::from("/"),
    )
}

fn failed(checks: &[checks::Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_built_checked_and_boots_a_hardened_vm() -> Result<()> {
    const TEST: &str = "an_image_is_built_checked_and_boots_a_hardened_vm";
    preflight(TEST)?;
    let t0 = std::time::Instant::now();
    let phase = |what: &str| println!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let (built, progress) = build_image()?;
    println!("{progress}");
    let image = Image::from_build_json(&built)?;
    let id = built["id"].as_str().context("id")?.to_string();
    ensure!(
        id.starts_with("debian-bookworm-keyhold-"),
        "the image is named by its definition and input hash: {id}"
    );

    // Packer's manifest: this build among builds[], its files there with their sizes.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(image_cache().join("manifest.json"))?)?;
    let entry = manifest["builds"]
        .as_array()
        .context("builds[]")?
        .iter()
        .rev()
        .find(|b| b["artifact_id"] == id.as_str())
        .with_context(|| format!("{id} in the manifest: {manifest}"))?;
    ensure!(
        entry["builder_type"] == "keyhold-debootstrap-chroot"
            && entry["name"] == "debian-bookworm-keyhold"
            && entry["build_time"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000)
            && entry["custom_data"]["checks"] == "9/9 passed"
            && manifest["last_run_uuid"]
                .as_str()
                .is_some_and(|u| u.len() == 36),
        "the manifest's build: {entry}"
    );
    for file in entry["files"].as_array().context("files[]")? {
        let path = image_cache().join(file["name"].as_str().context("a file's name")?);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} named in the manifest", path.display()))?
            .len();
        ensure!(file["size"].as_u64() == Some(size), "{file} vs {size}");
    }
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&image.disk)
        .output()?;
    let info: Value = serde_json::from_slice(&info.stdout)?;
    ensure!(info["format"] == "qcow2", "the disk: {info}");

    phase("built");
    // The same inputs: found, not built again.
    let (again, progress) = build_image()?;
    ensure!(
        again["cached"] == true && again["id"] == id.as_str() && progress.contains("unchanged"),
        "a second build of unchanged inputs: {again}\n{progress}"
    );

    // The chroot transport, on a copy of the image's tree: the provider conformance cases for
    // files and commands; then the hardening checks fail, naming what, when items are undone.
    let dir = test_dir("keyhold-image-")?;
    let tree = dir.path().join("rootfs");
    std::fs::create_dir_all(&tree)?;
    let rootfs = PathBuf::from(built["dir"].as_str().context("dir")?)
        .join(built["rootfs"].as_str().context("rootfs")?);
    let out = Command::new("tar")
        .args(["--numeric-owner", "-I", "zstd", "-xpf"])
        .arg(&rootfs)
        .arg("-C")
        .arg(&tree)
        .output()?;
    ensure!(out.status.success(), "unpack the rootfs tarball: {out:?}");
    let host = ChrootHost::new("image copy", &tree);
    let all = checks::run(&host, false).await?;
    ensure!(
        failed(&all).is_empty(),
        "the image's own tree: {:?}",
        failed(&all)
    );
    let undo = "chmod 0755 /opt/keyhold/data && chmod g+w /usr/local/bin/keyhold \
                && echo '/swapfile none swap sw 0 0' >> /etc/fstab \
                && systemctl enable apt-daily.timer >/dev/null 2>&1";
    let out = host
        .run(&["sh", "-c", undo], Duration::from_secs(60))
        .await?;
    ensure!(out.success(), "undo hardening in the copy: {out:?}");
    let broken = failed(&checks::run(&host, false).await?);
    for want in [
        "/opt/keyhold/data is 755",
        "/usr/local/bin/keyhold is group- or world-writable",
        "/etc/fstab names swap",
        "timers enabled but not needed: apt-daily.timer",
    ] {
        ensure!(
            broken.iter().any(|b| b.contains(want)),
            "undone hardening not reported ({want}): {broken:?}"
        );
    }
    let cases_dir = tree.join("tmp");
    let make =
        |_: &Path, _: PathBuf| -> Box<dyn Host> { Box::new(ChrootHost::new("image copy", &tree)) };
    let _ = cases_dir;
    conformance::run_files_and_commands(make).await;
    phase("chroot checks and conformance");

    // One VM from the image: it boots, is reached as admin with its host key pinned from the
    // console, and every hardening item holds on the running system.
    let key = dir.path().join("id_ed25519");
    keyhold_tests::provision::ssh_keygen(&key)?;
    let bridge = Bridge::create(SLOT_ONE_VM).await?;
    let vm = Vm::boot(
        &image,
        &bridge,
        11,
        "keyhold-vm-1",
        &key.with_extension("pub"),
        &dir.path().join("vm"),
        768,
    )
    .await?;
    phase("VM booted, sshd up");
    let host = admin_host(&vm, &key, &dir.path().join("known_hosts"));
    let live = checks::run(&host, true).await?;
    for c in &live {
        println!(
            "{} {}: {}",
            if c.ok { "ok " } else { "BAD" },
            c.name,
            c.detail
        );
    }
    ensure!(
        failed(&live).is_empty(),
        "hardening on the running VM: {:?}",
        failed(&live)
    );
    phase("live checks over SSH");
    let out = host
        .run(
            &[
                "sh",
                "-c",
                "hostname; systemctl is-enabled keyhold.service; id -u keyhold",
            ],
            Duration::from_secs(30),
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.starts_with("keyhold-vm-1\nenabled\n"),
        "the VM's name and unit: {text}"
    );
    // A wrong host key is refused before anything is sent.
    let wrong = Arc::new(SshSettings {
        hosts: vec![vm.address.into()],
        user: "admin".into(),
        private_key_file: key.clone(),
        port: 22,
        sudo: true,
        known_hosts: dir.path().join("known_hosts"),
        host_key_fingerprints: vec!["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()],
        trust_on_first_use: false,
        connect_timeout: Duration::from_secs(20),
    });
    let pin = wrong.host_key_fingerprints.first().cloned();
    let err = SshHost::new("keyhold-vm-1", vm.address.into(), wrong, pin, "/".into())
        .run(&["true"], Duration::from_secs(30))
        .await
        .expect_err("a wrong pinned host key is refused");
    ensure!(
        format!("{err:#}").contains("host key"),
        "the refusal names the host key: {err:#}"
    );
    phase("wrong host key refused");
    drop(vm);
    drop(bridge);
    Ok(())
}

/// Lynis (Debian's package, fetched once with `apt-get download` into the image cache) run
/// on `vm` as root; its hardening index.
async fn lynis_index(vm: &Vm, key: &Path, dir: &Path) -> Result<u32> {
    let cache = image_cache().join("lynis");
    std::fs::create_dir_all(&cache)?;
    let find = || -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(&cache)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb")))
    };
    if find()?.is_none() {
        let out = Command::new("apt-get")
            .args(["download", "lynis"])
            .current_dir(&cache)
            .output()
            .context("apt-get download lynis")?;
        ensure!(out.status.success(), "apt-get download lynis: {out:?}");
    }
    let deb = find()?.context("lynis's .deb after apt-get download")?;
    let host = admin_host(vm, key, &dir.join("known_hosts"));
    host.install_file(&deb, Path::new("root/lynis.deb"), 0o644)
        .await?;
    let out = host
        .run(
            &[
                "sh",
                "-c",
                "dpkg -i /root/lynis.deb >/dev/null && \
                 lynis audit system --quick --no-colors --no-log 2>&1",
            ],
            Duration::from_secs(3600),
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Hardening index : "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no hardening index in Lynis's report:\n{text}"))
}

/// The hvac compatibility suite (tests/compat, `vm` topology) against the cluster `p` deployed
/// onto `vms`, through a standby; then each VM's server journal and log directory are searched
/// over SSH for every secret the suite sent or received (the values come back in a private file
/// and are searched for here, never put in a command line).
async fn compat_suite_against_the_vms(
    p: &keyhold_tests::provision::Provisioned,
    vms: &[Vm],
    key: &Path,
    dir: &Path,
) -> Result<()> {
    let secrets_file = dir.join("compat-secrets.json");
    let urls: Vec<String> = vms
        .iter()
        .map(|v| format!("https://{}:8200", v.address))
        .collect();
    let mut pytest = tokio::process::Command::new("python3");
    pytest
        .args([
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/compat",
        ])
        .current_dir(repo_root())
        .env("KEYHOLD_COMPAT_TOPOLOGY", "vm")
        .env("KEYHOLD_COMPAT_ENV", &p.env_file)
        .env("KEYHOLD_COMPAT_STATE_DIR", &p.state_dir)
        .env("KEYHOLD_COMPAT_URLS", urls.join(","))
        .env("KEYHOLD_COMPAT_SECRETS_OUT", &secrets_file)
        .env("KEYHOLD_COMPAT_PROVISION_TIMEOUT", "1200")
        .env("KEYHOLD_BIN", keyhold_tests::keyhold_bin()?)
        .env("PROVISION_BIN", keyhold_tests::provision_bin()?)
        .kill_on_drop(true);
    let ran = tokio::time::timeout(Duration::from_secs(3600), pytest.output())
        .await
        .context("the hvac suite against the VMs did not finish in an hour")?
        .context(
            "run python3 -m pytest tests/compat (pip install -r tests/compat/requirements.txt)",
        )?;
    let out = String::from_utf8_lossy(&ran.stdout);
    println!("hvac compatibility suite (vm topology):\n{out}");
    ensure!(
        ran.status.success(),
        "the hvac suite failed against the VM cluster ({}):\n{}",
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );

    let secrets: BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(&secrets_file)
            .with_context(|| format!("the suite wrote no {}", secrets_file.display()))?,
    )?;
    ensure!(
        !secrets.is_empty(),
        "the suite recorded no secrets to search for"
    );
    let mut findings = Vec::new();
    for vm in vms {
        let host = admin_host(vm, key, &dir.join("known_hosts"));
        // The journal has at least the server's start; the log directory may be empty (the
        // audit file is written where requests are handled).
        for (source, script, may_be_empty) in [
            ("journal", "journalctl -u keyhold --no-pager -o cat", false),
            (
                "/var/log/keyhold",
                "find /var/log/keyhold -type f -exec cat {} +",
                true,
            ),
        ] {
            let out = host
                .run(&["sh", "-c", script], Duration::from_secs(300))
                .await?;
            ensure!(out.success(), "{script} on {} failed: {out:?}", vm.name);
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                may_be_empty || !text.is_empty(),
                "{source} on {} is empty",
                vm.name
            );
            for (value, what) in &secrets {
                if text.contains(value.as_str()) {
                    findings.push(format!(
                        "{}: {source}: {what} ({} characters) in clear",
                        vm.name,
                        value.len()
                    ));
                }
            }
        }
    }
    println!(
        "{} recorded secrets searched for in {} VMs' journals and log directories: {} found",
        secrets.len(),
        vms.len(),
        findings.len()
    );
    ensure!(
        findings.is_empty(),
        "secrets in the VMs' logs: {findings:#?}"
    );
    Ok(())
}

/// The harness's 3-node environment deployed onto `vms` by the ssh provider: the image's
/// `admin` login through sudo, each host key pinned as its console printed it.
fn vm_environment(vms: &[Vm], key: &Path) -> Result<String> {
    let local = keyhold_tests::provision::environment_hcl(
        // The root token is kept: the hvac suite runs against this cluster as root.
        &keyhold_tests::provision::EnvSpec {
            revoke_root_token: false,
            ..keyhold_tests::provision::EnvSpec::nodes(3)
        },
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        &keyhold_tests::keyhold_bin()?,
    );
    let provider = "provider \"local\" {\n  address_base = \"127.0.0.1\"\n}\n";
    ensure!(
        local.contains(provider),
        "the harness's environment changed:\n{local}"
    );
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Vault's default timing (performance_multiplier 5) and a long autopilot contact
    // threshold: emulated VMs on two cores answer heartbeats late.
    ensure!(
        local.contains("performance_multiplier = 1")
            && local.contains("last_contact_threshold    = \"5s\""),
        "the harness's environment changed:\n{local}"
    );
    let local = local
        .replace("performance_multiplier = 1", "performance_multiplier = 5")
        .replace(
            "last_contact_threshold    = \"5s\"",
            "last_contact_threshold    = \"60s\"",
        );
    Ok(local.replace(
        provider,
        &format!(
            "provider \"ssh\" {{\n  hosts = [{}]\n  user = \"admin\"\n  sudo = true\n  \
             private_key_file = \"{}\"\n  host_key_fingerprints = [{}]\n  \
             connect_timeout = \"30s\"\n}}\n",
            list(vms.iter().map(|v| v.address.to_string()).collect()),
            key.display(),
            list(vms.iter().map(|v| v.host_key.clone()).collect()),
        ),
    ))
}

/// The whole VM tier (`tests/vm/run`): three VMs from the image, `provision up` over SSH,
/// the server's sandbox scored on a live VM, KV through every node, a rolling upgrade under
/// load with nothing failed or lost, a VM powered off and on again (its node comes back
/// sealed, Shamir, and `provision unseal` brings it back into the cluster), the hvac suite
/// through a standby with the VMs' logs searched for its secrets, and Lynis on one VM.
#[tokio::test(flavor = "multi_thread")]
async fn vm_tier_provision_up_onto_three_vms_built_from_the_image() -> Result<()> {
    const TEST: &str = "vm_tier_provision_up_onto_three_vms_built_from_the_image";
    // Not in the slow tier's CI slices: under TCG it takes half an hour (Lynis most of it).
    if std::env::var_os("KEYHOLD_VM_TIER").is_none_or(|v| v != "1") {
        eprintln!("{TEST}: skipped; tests/vm/run runs the VM tier (KEYHOLD_VM_TIER=1)");
        return Ok(());
    }
    preflight(TEST)?;
    let next = keyhold_tests::next_keyhold_bin()?;
    let t0 = std::time::Instant::now();
    let phase = |what: &str| println!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let (built, _) = build_image()?;
    let image = Image::from_build_json(&built)?;
    let dir = test_dir("keyhold-vm-cluster-")?;
    let key = dir.path().join("id_ed25519");
    keyhold_tests::provision::ssh_keygen(&key)?;
    let bridge = Bridge::create(SLOT_CLUSTER).await?;
    let boots = (1..=3u8).map(|n| {
        let (image, bridge, key, dir) = (&image, &bridge, &key, dir.path());
        async move {
            Vm::boot(
                image,
                bridge,
                10 + n,
                &format!("keyhold-{n}"),
                &key.with_extension("pub"),
                &dir.join("vms"),
                1024,
            )
            .await
        }
    });
    let mut vms = futures::future::try_join_all(boots).await?;
    phase("three VMs booted");

    let hcl = vm_environment(&vms, &key)?;
    let mut p = keyhold_tests::provision::Provisioned::with_text(
        "vm",
        3,
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        &hcl,
    )?;
    // Three TCG VMs on two cores: every command is many times slower than on loopback.
    p.set_command_limit(Duration::from_secs(1800));
    p.run(&["hosts", "check"]).await?.expect(0)?;
    let up = p.run(&["up", "--json"]).await?;
    if up.code != Some(0) {
        for vm in &vms {
            eprintln!("{} console:\n{}", vm.name, vm.console_tail(30));
        }
    }
    up.expect(0)?;
    phase("provision up");
    let plan = p.run(&["plan"]).await?;
    ensure!(plan.code == Some(0), "plan after up: {plan:?}");
    let roles = keyhold_tests::provision::roles_of(&p.status().await?.1)?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles: {roles:?}"
    );
    for vm in &vms {
        let host = admin_host(vm, &key, &dir.path().join("known_hosts"));
        let out = host
            .run(
                &[
                    "systemd-analyze",
                    "security",
                    "--no-pager",
                    "keyhold.service",
                ],
                Duration::from_secs(120),
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let score = keyhold_tests::provision::exposure_level(&text, "keyhold.service")
            .with_context(|| format!("no exposure figure:\n{text}"))?;
        println!(
            "systemd-analyze security keyhold.service on {}: {score}",
            vm.name
        );
        ensure!(
            score <= 2.0,
            "keyhold.service scores {score} on {} (> 2.0)",
            vm.name
        );
        let live = checks::run(&host, true).await?;
        ensure!(
            failed(&live).is_empty(),
            "hardening on {} with the server running: {:?}",
            vm.name,
            failed(&live)
        );
    }
    let token = p.env_vars().await?["VAULT_TOKEN"].clone();
    let ca = p.ca_file();
    for (n, vm) in vms.iter().enumerate() {
        let api = p.api_at(&ca, &format!("https://{}:8200", vm.address), Some(&token))?;
        api.kv2_put("kv", &format!("on-vms/{n}"), serde_json::json!({"v": n}))
            .await?
            .expect_ok("write through a node")?;
    }
    phase("sandbox scored, hardening held, KV through every node");

    // A lighter workload than on loopback: each VM is emulated on a share of two cores.
    let report = p
        .run(&[
            "upgrade",
            "--binary",
            &next.display().to_string(),
            "--with-load",
            "--load-rate",
            "5",
            "--json",
        ])
        .await?;
    if report.code != Some(0) {
        for vm in &vms {
            eprintln!("{} console:\n{}", vm.name, vm.console_tail(20));
        }
    }
    keyhold_tests::provision::clean_load(&report.expect(0)?.json()?)?;
    phase("rolling upgrade under load");

    // Power lost and back: the node is sealed (Shamir keys are not on the machine), and
    // `provision unseal` brings it back; it serves what was written before.
    let host_key = vms[1].host_key.clone();
    let again = vms[1].power_cycle().await?;
    ensure!(
        again == host_key,
        "the host key changed across a reboot: {again}"
    );
    let api = p.api_at(&ca, &format!("https://{}:8200", vms[1].address), None)?;
    keyhold_tests::eventually(
        "the rebooted node answers sealed",
        240,
        Duration::from_millis(500),
        || async {
            Ok((api.seal_status().await?["sealed"] == serde_json::json!(true)).then_some(()))
        },
    )
    .await?;
    p.run(&["unseal"]).await?.expect(0)?;
    let api = p.api_at(
        &ca,
        &format!("https://{}:8200", vms[1].address),
        Some(&token),
    )?;
    keyhold_tests::eventually(
        "the rebooted node serves again",
        240,
        Duration::from_millis(500),
        || async {
            Ok((api.kv2_get("kv", "on-vms/0").await.ok().flatten()
                == Some(serde_json::json!({"v": 0})))
            .then_some(()))
        },
    )
    .await?;
    phase("a VM power-cycled, its node unsealed and serving");

    compat_suite_against_the_vms(&p, &vms, &key, dir.path()).await?;
    phase("hvac compatibility suite against the VM cluster");

    // Lynis last, on one VM alone (the cluster stopped, the other VMs off): under TCG it takes
    // many minutes, and far longer beside a running cluster.
    p.run(&["down"]).await?.expect(0)?;
    vms.truncate(1);
    let index = lynis_index(&vms[0], &key, dir.path()).await?;
    println!(
        "Lynis hardening index on {} (its server stopped, the other VMs off): {index}",
        vms[0].name
    );
    let floor: u32 = std::fs::read_to_string(repo_root().join("tests/vm/lynis-floor"))?
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .context("a number in tests/vm/lynis-floor")?
        .trim()
        .parse()?;
    ensure!(
        index >= floor,
        "the Lynis hardening index fell to {index} (floor {floor}, tests/vm/lynis-floor)"
    );
    phase("Lynis audit");
    Ok(())
}
