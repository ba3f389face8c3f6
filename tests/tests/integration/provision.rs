//! `provision` end to end on the local provider: an environment file in a temp dir becomes a
//! running 3- or 5-node cluster of real `keyhold server` processes on a loopback range of the
//! test's own, and every command is run as an operator runs it (exit codes, `--json`, `eval
//! "$(provision env)"` with the `keyhold` CLI). Covered: a second `up` changes nothing; status
//! fields; the admin login's policy; the root token revoked; audit; key material on disk; healing
//! after `kill -9` of a standby and of the active node; `down`/`up`/`down --purge`; 5 nodes,
//! certificates and the host-layout render; `up` killed at several points and finished by the
//! next run, and Ctrl-C leaving the servers running; the environment lock; bad environment
//! files refused before anything is created; `certs rotate` with and without `--ca` under load,
//! `--ca` killed between its phases and finished by the next run, and refused on an unhealthy
//! cluster.
//!
//! Durations of `up` are printed for the record (run with `--no-capture` to see them); nothing
//! asserts on them.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use keyhold_tests::client_builder;
use keyhold_tests::provision::{
    files_under, is_alive, roles_of, wait_gone, EnvSpec, Provisioned, Running, ShownSecrets,
};
use serde_json::{json, Value};

// Each test's own third octet of its loopback range (see `loopback_base`).
const SLOT_LIFECYCLE: u8 = 11;
const SLOT_HEALING: u8 = 12;
const SLOT_DOWN_UP: u8 = 13;
const SLOT_FIVE: u8 = 14;
const SLOT_INTERRUPTED: u8 = 15;
const SLOT_LOCK: u8 = 16;
const SLOT_BAD_ENV: u8 = 17;
const SLOT_LOST_INIT: u8 = 18;
const SLOT_LOAD: u8 = 19;
const SLOT_ROTATE: u8 = 20;
const SLOT_ROTATE_CA: u8 = 44;
const SLOT_ROTATE_REFUSED: u8 = 45;
const SLOT_ROTATE_KILLED: u8 = 46;

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The outcome `up --json` reports for `step`.
fn step_outcome(up: &Value, step: &str) -> Result<String> {
    up["steps"]
        .as_array()
        .with_context(|| format!("no steps in {up}"))?
        .iter()
        .find(|s| s["step"] == json!(step))
        .and_then(|s| s["outcome"].as_str())
        .map(str::to_string)
        .with_context(|| format!("no step {step:?} in {up}"))
}

/// Fails unless `report` (`up --json` or `status --json`) lists `count` nodes, one active and
/// the others standby.
fn ensure_one_active(report: &Value, count: usize) -> Result<()> {
    let roles = roles_of(report)?;
    ensure!(
        roles.len() == count
            && roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == count - 1,
        "expected {count} nodes, one active and the rest standby; got roles {roles:?}"
    );
    Ok(())
}

/// `status --json`, which must exit 0 and show one active node and the others standby.
async fn ensure_healthy(p: &mut Provisioned, what: &str) -> Result<Value> {
    let (code, status) = p.status().await?;
    ensure!(
        code == Some(0),
        "{what}: status exited {code:?}: {status}\n{}",
        p.log_tails(10)
    );
    ensure_one_active(&status, p.nodes as usize).with_context(|| what.to_string())?;
    Ok(status)
}

/// The 1-based number of the first node `status` gives `role`.
async fn node_with_role(p: &mut Provisioned, role: &str) -> Result<u8> {
    let roles = p.roles().await?;
    let i = roles
        .iter()
        .position(|r| r == role)
        .with_context(|| format!("no {role} node in {roles:?}"))?;
    Ok(i as u8 + 1)
}

/// Every form a share or token could be written in: as printed, and for the base64 shares the
/// hex form and the raw bytes.
fn secret_needles(shown: &ShownSecrets, admin_token: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut needles = vec![
        (
            "the root token".to_string(),
            shown.root_token.clone().into_bytes(),
        ),
        (
            "the admin token".to_string(),
            admin_token.as_bytes().to_vec(),
        ),
    ];
    for (i, key) in shown.unseal_keys_b64.iter().enumerate() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .with_context(|| format!("unseal key {} is not base64", i + 1))?;
        needles.push((
            format!("unseal share {} (base64)", i + 1),
            key.as_bytes().to_vec(),
        ));
        needles.push((
            format!("unseal share {} (hex)", i + 1),
            hex::encode(&raw).into_bytes(),
        ));
        needles.push((format!("unseal share {} (raw bytes)", i + 1), raw));
    }
    Ok(needles)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The admin token's view: `eval "$(provision env)"`, checked.
async fn admin_env(p: &mut Provisioned) -> Result<BTreeMap<String, String>> {
    let vars = p.env_vars().await?;
    let addrs: Vec<String> = (1..=p.nodes).map(|n| p.api_addr(n)).collect();
    ensure!(
        addrs.contains(&vars["VAULT_ADDR"]),
        "VAULT_ADDR {:?} is none of the nodes {addrs:?}",
        vars["VAULT_ADDR"]
    );
    ensure!(
        vars["VAULT_CACERT"] == p.ca_file().display().to_string(),
        "VAULT_CACERT {:?}, wanted {}",
        vars["VAULT_CACERT"],
        p.ca_file().display()
    );
    ensure!(
        !vars["VAULT_TOKEN"].is_empty(),
        "provision env gave an empty VAULT_TOKEN"
    );
    Ok(vars)
}

#[tokio::test]
async fn lifecycle_three_nodes() -> Result<()> {
    let mut p = Provisioned::new("lifecycle", SLOT_LIFECYCLE, EnvSpec::nodes(3))?;

    let (first, took) = p.up_json().await?;
    println!("up of a fresh 3-node cluster took {}", secs(took));
    ensure!(
        first["changed"] == json!(true),
        "first up: changed is not true: {first}"
    );
    ensure_one_active(&first, 3)?;

    // A second run finds nothing to do, and says so.
    let (second, took) = p.up_json().await?;
    println!("up of the same, healthy cluster took {}", secs(took));
    ensure!(
        second["changed"] == json!(false),
        "second up changed something: {second}"
    );
    for step in second["steps"].as_array().context("steps")? {
        ensure!(
            step["outcome"] == json!("ok"),
            "second up: step not ok: {step}"
        );
    }
    let text = p.run(&["up"]).await?.expect(0)?;
    ensure!(
        text.stderr.contains("No changes"),
        "a third up does not say \"No changes\":\n{}",
        text.stderr
    );
    let plan = p.run(&["plan"]).await?.expect(0)?;
    ensure!(plan.stdout.contains("No changes"), "plan: {}", plan.stdout);

    let status = ensure_healthy(&mut p, "after up").await?;
    ensure!(
        status["failure_tolerance"] == json!(1),
        "failure_tolerance: {status}"
    );
    for (i, node) in status["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .enumerate()
    {
        let n = i as u8 + 1;
        ensure!(
            node["name"] == json!(p.node_name(n)),
            "name of node {n}: {node}"
        );
        ensure!(
            node["address"] == json!(p.api_addr(n)),
            "address of node {n}: {node}"
        );
        ensure!(
            node["version"].as_str().is_some_and(|v| !v.is_empty()),
            "version of node {n}: {node}"
        );
        ensure!(
            node["raft_applied_index"].as_u64().is_some_and(|i| i > 0),
            "raft_applied_index of node {n}: {node}"
        );
        let wanted_code = if node["role"] == json!("active") {
            200
        } else {
            429
        };
        ensure!(
            node["health_code"] == json!(wanted_code),
            "health_code of node {n}: {node}"
        );
    }

    // `eval "$(provision env)"`, then the keyhold CLI with the admin login.
    let vars = admin_env(&mut p).await?;
    p.keyhold(
        &vars,
        &["kv", "put", "kv/e2e/app", "password=correct-horse"],
    )
    .await?
    .expect(0)?;
    let got = p
        .keyhold(&vars, &["kv", "get", "-field=password", "kv/e2e/app"])
        .await?
        .expect(0)?;
    ensure!(
        got.stdout.trim() == "correct-horse",
        "kv get: {:?}",
        got.stdout
    );
    // vault-admin manages policies, but is denied application data outside kv/ (`secret/*` is
    // an explicit deny) and raw storage (not granted).
    let policy = p.dir().join("probe.hcl");
    fs::write(
        &policy,
        "path \"kv/data/probe\" { capabilities = [\"read\"] }\n",
    )?;
    p.keyhold(
        &vars,
        &[
            "policy",
            "write",
            "e2e-probe",
            &policy.display().to_string(),
        ],
    )
    .await?
    .expect(0)?;
    for denied in ["secret/e2e", "sys/raw/core"] {
        let ran = p.keyhold(&vars, &["read", denied]).await?.expect(2)?;
        ensure!(
            ran.stderr.contains("permission denied"),
            "read {denied} with the admin token: {}",
            ran.stderr
        );
    }

    // The initial root token is revoked once the admin login works.
    let shown = p.show_secrets().await?;
    ensure!(
        shown.unseal_keys_b64.len() == 3,
        "3 shares wanted: {shown:?}"
    );
    let lookup = p
        .api(1, Some(&shown.root_token))?
        .get("auth/token/lookup-self")
        .await?;
    ensure!(
        lookup.status.as_u16() == 403,
        "the initial root token still works: {} {}",
        lookup.status,
        lookup.text
    );

    // Audit: the active node, which serves every request, logged the CLI's write.
    let active = node_with_role(&mut p, "active").await?;
    let audit = fs::read_to_string(p.audit_log(active))
        .with_context(|| format!("read {}", p.audit_log(active).display()))?;
    ensure!(
        audit
            .lines()
            .any(|l| l.contains("\"type\":\"request\"") && l.contains("kv/data/e2e/app")),
        "no request line for kv/data/e2e/app in {}",
        p.audit_log(active).display()
    );

    // Key material on disk: private keys and the encrypted secrets 0600, the state file free of
    // secrets, and no plaintext share or token anywhere under the state directory.
    let files = files_under(&p.env_dir())?;
    let private: Vec<_> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".key") || name.ends_with(".age") || name == "identity.txt"
        })
        .collect();
    ensure!(
        private.len() >= 1 + 2 * 3 + 2,
        "expected the CA key, a server and a client key per node, the identity and the \
         encrypted secrets; found {private:?}"
    );
    for f in &private {
        let mode = fs::metadata(f)?.permissions().mode() & 0o777;
        ensure!(
            mode == 0o600,
            "{} has mode {mode:o}, wanted 600",
            f.display()
        );
    }
    let needles = secret_needles(&shown, &vars["VAULT_TOKEN"])?;
    let state = fs::read(p.env_dir().join("state.json"))?;
    for marker in ["PRIVATE KEY", "AGE-SECRET-KEY"] {
        ensure!(
            !contains(&state, marker.as_bytes()),
            "state.json contains {marker}"
        );
    }
    for f in &files {
        let bytes = fs::read(f)?;
        for (what, needle) in &needles {
            ensure!(
                !contains(&bytes, needle),
                "{} contains {what} in plaintext",
                f.display()
            );
        }
    }
    println!(
        "scanned {} files under the state directory for {} secret forms",
        files.len(),
        needles.len()
    );

    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

#[tokio::test]
async fn heals_a_killed_standby_then_a_killed_active_node() -> Result<()> {
    let mut p = Provisioned::new("healing", SLOT_HEALING, EnvSpec::nodes(3))?;
    let (_, took) = p.up_json().await?;
    println!("up of a fresh 3-node cluster took {}", secs(took));
    let vars = admin_env(&mut p).await?;
    let admin = p.api(1, Some(&vars["VAULT_TOKEN"]))?;
    admin
        .kv2_put("kv", "e2e/before", json!({"written": "before the kills"}))
        .await?
        .expect_ok("write kv/e2e/before")?;

    for role in ["standby", "active"] {
        let n = node_with_role(&mut p, role).await?;
        let name = p.node_name(n);
        let old_pid = p.kill9_node(n).await?;

        let (code, status) = p.status().await?;
        ensure!(
            code == Some(1),
            "status with {role} {name} killed exited {code:?}"
        );
        let roles = roles_of(&status)?;
        ensure!(
            roles[n as usize - 1] == "down",
            "{role} {name} was killed, status says {roles:?}"
        );
        let plan = p.run(&["plan"]).await?.expect(2)?;
        ensure!(
            plan.stdout.contains(&name),
            "plan does not name the killed {name}:\n{}",
            plan.stdout
        );

        let (up, took) = p.up_json().await?;
        println!(
            "healing the killed {role} node ({name}) took {}",
            secs(took)
        );
        ensure!(
            up["changed"] == json!(true),
            "healing up changed nothing: {up}"
        );
        ensure_healthy(&mut p, &format!("after healing the {role} node")).await?;
        let new_pid = p.node_pid(n).context("no pid file after healing")?;
        ensure!(
            new_pid != old_pid && is_alive(new_pid),
            "{name} was not restarted"
        );
    }

    // What was written before both kills is still there, through every node.
    let vars = admin_env(&mut p).await?;
    for n in 1..=p.nodes {
        let got = p
            .api(n, Some(&vars["VAULT_TOKEN"]))?
            .kv2_get("kv", "e2e/before")
            .await?;
        ensure!(
            got == Some(json!({"written": "before the kills"})),
            "kv/e2e/before through {}: {got:?}",
            p.node_name(n)
        );
    }
    // The node that took over writes the audit log now.
    let active = node_with_role(&mut p, "active").await?;
    let audit = fs::read_to_string(p.audit_log(active)).unwrap_or_default();
    ensure!(
        audit.lines().any(|l| l.contains("\"type\":\"request\"")),
        "the new active node {} has no request in its audit log",
        p.node_name(active)
    );

    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

#[tokio::test]
async fn down_then_up_brings_the_same_cluster_back_and_purge_leaves_nothing() -> Result<()> {
    let mut p = Provisioned::new("downup", SLOT_DOWN_UP, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let vars = admin_env(&mut p).await?;
    p.api(1, Some(&vars["VAULT_TOKEN"]))?
        .kv2_put("kv", "e2e/kept", json!({"v": "across down and up"}))
        .await?
        .expect_ok("write kv/e2e/kept")?;
    let init_file = p.env_dir().join("secrets/init.age");
    let init_before = fs::read(&init_file)?;

    let pids: Vec<u32> = (1..=p.nodes).filter_map(|n| p.node_pid(n)).collect();
    ensure!(pids.len() == 3, "pid files: {pids:?}");
    let down = p.run(&["down"]).await?.expect(0)?;
    println!("down of 3 nodes took {}", secs(down.elapsed));
    wait_gone(&pids, "nodes after down").await?;
    ensure!(
        p.server_processes().is_empty(),
        "servers still running after down: {:?}",
        p.server_processes()
    );
    let (code, status) = p.status().await?;
    ensure!(code == Some(1), "status after down exited {code:?}");
    ensure!(
        roles_of(&status)?.iter().all(|r| r == "down"),
        "after down: {status}"
    );
    let plan = p.run(&["plan"]).await?.expect(2)?;
    ensure!(
        plan.stdout.contains("start it") && !plan.stdout.contains("initialise"),
        "plan after down should start the nodes and not initialise anything:\n{}",
        plan.stdout
    );

    let (up, took) = p.up_json().await?;
    println!("up of the stopped 3-node cluster took {}", secs(took));
    ensure!(
        step_outcome(&up, "init")? == "ok",
        "up after down initialised again: {up}"
    );
    ensure!(step_outcome(&up, "unseal")? == "changed", "unseal: {up}");
    ensure_healthy(&mut p, "up after down").await?;
    ensure!(fs::read(&init_file)? == init_before, "init.age changed");
    let vars = admin_env(&mut p).await?;
    let got = p
        .api(2, Some(&vars["VAULT_TOKEN"]))?
        .kv2_get("kv", "e2e/kept")
        .await?;
    ensure!(
        got == Some(json!({"v": "across down and up"})),
        "kv/e2e/kept: {got:?}"
    );

    let pids: Vec<u32> = (1..=p.nodes).filter_map(|n| p.node_pid(n)).collect();
    p.run(&["down", "--purge"]).await?.expect(0)?;
    wait_gone(&pids, "nodes after down --purge").await?;
    ensure!(
        !p.env_dir().exists(),
        "{} still exists after down --purge",
        p.env_dir().display()
    );
    ensure!(
        p.processes().is_empty(),
        "processes left after down --purge: {:?}",
        p.processes()
    );
    Ok(())
}

#[tokio::test]
async fn five_nodes_tolerate_two_failures_and_show_their_certificates() -> Result<()> {
    let mut p = Provisioned::new("five", SLOT_FIVE, EnvSpec::nodes(5))?;
    let (up, took) = p.up_json().await?;
    println!("up of a fresh 5-node cluster took {}", secs(took));
    ensure_one_active(&up, 5)?;
    let status = ensure_healthy(&mut p, "5 nodes").await?;
    ensure!(
        status["failure_tolerance"] == json!(2),
        "failure_tolerance: {status}"
    );

    // certs show: the CA, and per node a server certificate naming the node and its address
    // and a client certificate, all from that CA.
    let certs = p
        .run(&["certs", "show", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let certs = certs
        .as_array()
        .context("certs show --json is not a list")?;
    let find = |what: &str| {
        certs
            .iter()
            .find(|c| c["certificate"] == json!(what))
            .with_context(|| format!("certs show lists no {what:?}: {certs:?}"))
    };
    let ca = find("CA")?;
    ensure!(ca["info"]["is_ca"] == json!(true), "CA: {ca}");
    let ca_subject = &ca["info"]["subject"];
    ensure!(
        certs.len() == 1 + 2 * 5,
        "{} certificates listed",
        certs.len()
    );
    for n in 1..=p.nodes {
        let name = p.node_name(n);
        let server = find(&format!("{name} server"))?;
        let sans = &server["info"];
        ensure!(
            sans["dns_names"]
                .as_array()
                .is_some_and(|d| d.contains(&json!(name))),
            "{name}'s server certificate lacks its name: {server}"
        );
        ensure!(
            sans["ip_addresses"]
                .as_array()
                .is_some_and(|d| d.contains(&json!(p.node_addr(n).to_string()))),
            "{name}'s server certificate lacks its address: {server}"
        );
        let client = find(&format!("{name} client"))?;
        for cert in [server, client] {
            ensure!(
                cert["info"]["issuer"] == *ca_subject,
                "not from the CA: {cert}"
            );
            ensure!(
                cert["info"]["is_ca"] == json!(false),
                "a node certificate is a CA: {cert}"
            );
        }
    }

    // render --host-layout: a systemd unit and a server config for every node.
    let out = p.dir().join("render");
    let out_arg = out.display().to_string();
    p.run(&["render", "--out", &out_arg, "--host-layout"])
        .await?
        .expect(0)?;
    for n in 1..=p.nodes {
        let name = p.node_name(n);
        let unit = fs::read_to_string(out.join(&name).join("etc/systemd/system/keyhold.service"))
            .with_context(|| format!("no unit rendered for {name}"))?;
        ensure!(
            unit.contains("ExecStart=") && unit.contains(&name),
            "{name}'s unit: {unit}"
        );
        let config = fs::read_to_string(out.join(&name).join("etc/keyhold.d/keyhold.hcl"))
            .with_context(|| format!("no server config rendered for {name}"))?;
        ensure!(
            config.contains(&format!("\"{}:8200\"", p.node_addr(n))),
            "{name}'s config does not listen on its address:\n{config}"
        );
    }

    p.run(&["down", "--purge"]).await?.expect(0)?;
    ensure!(!p.env_dir().exists(), "state left after down --purge");
    Ok(())
}

/// Polls `check` (bounded: 1200 x 25 ms) while `cmd` runs, until it holds. Fails if `cmd` ends
/// first.
async fn while_running<F, Fut>(cmd: &mut Running, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1200 {
        let held = check().await;
        if cmd.has_exited()? {
            bail!("{} ended before it could be caught with {what}", cmd.what);
        }
        if held {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{what}: not reached in 1200 polls while {} ran", cmd.what)
}

/// Interrupts `up` with `signal` once `check` holds: SIGINT goes to its process group, as a
/// terminal's Ctrl-C does, anything else to `up` alone. Returns how `up` ended.
async fn interrupt_when<F, Fut>(
    mut up: Running,
    what: &str,
    signal: libc::c_int,
    check: F,
) -> Result<keyhold_tests::provision::Ran>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while_running(&mut up, what, check).await?;
    if signal == libc::SIGINT {
        up.signal_group(signal)?;
    } else {
        up.signal(signal)?;
    }
    let ran = up.wait().await?;
    println!(
        "{} interrupted ({what}) after {}",
        ran.what,
        secs(ran.elapsed)
    );
    Ok(ran)
}

#[tokio::test]
async fn an_interrupted_up_is_finished_by_the_next_and_ctrl_c_spares_the_servers() -> Result<()> {
    let mut p = Provisioned::new("interrupted", SLOT_INTERRUPTED, EnvSpec::nodes(3))?;

    // Ctrl-C (SIGINT to provision's process group) once the first server runs: provision stops,
    // the server it started does not.
    let up = p.spawn(&["up"])?;
    let ran = interrupt_when(up, "keyhold-1 runs", libc::SIGINT, {
        let p = &p;
        move || async move { p.node_pid(1).is_some_and(is_alive) }
    })
    .await?;
    ensure!(ran.code != Some(0), "up finished despite Ctrl-C: {ran:?}");
    let first = p.node_pid(1).context("keyhold-1's pid file")?;
    let mut answered = None;
    for _ in 0..200 {
        answered = p.health_code(1).await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        is_alive(first) && answered.is_some(),
        "keyhold-1 (pid {first}) did not survive Ctrl-C of provision (health {answered:?})"
    );

    // SIGKILL while the second server starts.
    let up = p.spawn(&["up"])?;
    interrupt_when(up, "keyhold-2 runs", libc::SIGKILL, {
        let p = &p;
        move || async move { p.node_pid(2).is_some_and(is_alive) }
    })
    .await?;

    // SIGKILL right after the init output is saved.
    let init_file = p.env_dir().join("secrets/init.age");
    let up = p.spawn(&["up"])?;
    interrupt_when(up, "secrets/init.age exists", libc::SIGKILL, {
        let f = &init_file;
        move || async move { f.exists() }
    })
    .await?;
    let init_saved = fs::read(&init_file)?;

    // SIGKILL once two nodes are unsealed.
    let up = p.spawn(&["up"])?;
    interrupt_when(up, "two nodes unsealed", libc::SIGKILL, {
        let p = &p;
        move || async move {
            let mut unsealed = 0;
            for n in 1..=3 {
                if matches!(p.health_code(n).await, Some(200 | 429)) {
                    unsealed += 1;
                }
            }
            unsealed >= 2
        }
    })
    .await?;

    let (up, took) = p.up_json().await?;
    println!("up after four interrupted runs took {}", secs(took));
    ensure!(
        step_outcome(&up, "init")? == "ok",
        "the finishing up initialised again: {up}"
    );
    ensure_healthy(&mut p, "after the interrupted runs").await?;
    ensure!(
        fs::read(&init_file)? == init_saved,
        "init.age was replaced after the run that wrote it was killed"
    );
    let servers = p.server_processes();
    ensure!(
        servers.len() == 3,
        "expected exactly 3 servers after the interrupted runs, found {servers:?}"
    );
    // The shares in that file are what unsealed the cluster; the admin login works too.
    let vars = admin_env(&mut p).await?;
    p.keyhold(&vars, &["kv", "put", "kv/e2e/after", "ok=1"])
        .await?
        .expect(0)?;

    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

#[tokio::test]
async fn a_second_command_on_a_locked_environment_exits_4() -> Result<()> {
    let mut p = Provisioned::new("locked", SLOT_LOCK, EnvSpec::nodes(3))?;
    let mut up = p.spawn(&["up"])?;
    let holder = up.pid();
    let lock_file = p.env_dir().join("lock");
    while_running(&mut up, "the lock file names its holder", {
        let f = &lock_file;
        move || async move { fs::read_to_string(f).is_ok_and(|t| t.contains("provision up")) }
    })
    .await?;
    for args in [&["plan"][..], &["up"][..], &["down"][..]] {
        let ran = p.run(args).await?.expect(4)?;
        ensure!(
            ran.stderr.contains(&format!("pid {holder}")) && ran.stderr.contains("provision up"),
            "provision {args:?} on the locked environment does not name the holder (pid {holder}, \
             provision up):\n{}",
            ran.stderr
        );
    }
    let ran = up.wait().await?.expect(0)?;
    println!("up holding the lock took {}", secs(ran.elapsed));
    // Released with the command.
    p.run(&["plan"]).await?.expect(0)?;
    p.run(&["down", "--purge"]).await?.expect(0)?;
    Ok(())
}

/// One bad environment: what is changed in a good one, the text of the line the error must
/// point at, and what the message must say.
struct BadEnv {
    what: &'static str,
    edit: fn(&str) -> String,
    line_text: &'static str,
    says: &'static [&'static str],
}

#[tokio::test]
async fn bad_environment_files_are_refused_before_anything_is_created() -> Result<()> {
    let cases = [
        BadEnv {
            what: "unknown key",
            edit: |good| format!("{good}\nbogus_key = 1\n"),
            line_text: "bogus_key = 1",
            says: &["unknown key \"bogus_key\"", "allowed:", "nodes"],
        },
        BadEnv {
            what: "wrong type",
            edit: |good| good.replace("nodes = 3", "nodes = \"three\""),
            line_text: "nodes = \"three\"",
            says: &["nodes", "expected a whole number"],
        },
        BadEnv {
            what: "even node count",
            edit: |good| good.replace("nodes = 3", "nodes = 4"),
            line_text: "nodes = 4",
            says: &["odd number", "use 1, 3 or 5"],
        },
        BadEnv {
            what: "missing server binary",
            edit: |good| {
                let start = good.find("  binary = ").expect("binary line");
                let end = start + good[start..].find('\n').expect("end of line");
                format!(
                    "{}  binary = \"/nonexistent/keyhold\"{}",
                    &good[..start],
                    &good[end..]
                )
            },
            line_text: "binary = \"/nonexistent/keyhold\"",
            says: &["server.binary", "not an executable file"],
        },
        BadEnv {
            what: "missing policy file",
            edit: |good| {
                format!("{good}\npolicy \"gone\" {{\n  file = \"policies/gone.hcl\"\n}}\n")
            },
            line_text: "file = \"policies/gone.hcl\"",
            says: &[
                "policy.file",
                "cannot read",
                "relative to the environment file",
            ],
        },
    ];
    let base = std::net::Ipv4Addr::new(127, 250, SLOT_BAD_ENV, 1);
    let good = keyhold_tests::provision::environment_hcl(
        &EnvSpec::nodes(3),
        base,
        &keyhold_tests::keyhold_bin()?,
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = (case.edit)(&good);
        let line = text
            .lines()
            .position(|l| l.contains(case.line_text))
            .with_context(|| format!("{}: the edit left no {:?}", case.what, case.line_text))?
            + 1;
        let mut p = Provisioned::with_text("bad", 3, base, &text)?;
        let ran = p.run(&["up"]).await?;
        let prefix = format!("{}:{line}:", p.env_file.display());
        let column_ok = ran
            .stderr
            .split_once(&prefix)
            .and_then(|(_, rest)| rest.split_once(':'))
            .is_some_and(|(col, _)| col.parse::<u32>().is_ok_and(|c| c > 0));
        let mut wrong = Vec::new();
        if ran.code != Some(3) {
            wrong.push(format!("exit {:?}, wanted 3", ran.code));
        }
        if !column_ok {
            wrong.push(format!("no `{prefix}COLUMN:` in stderr"));
        }
        for s in case.says {
            if !ran.stderr.contains(s) {
                wrong.push(format!("stderr does not say {s:?}"));
            }
        }
        if p.state_dir.exists() {
            wrong.push(format!("{} was created", p.state_dir.display()));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                case.what,
                wrong.join("; "),
                ran.stderr.trim()
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// `up` stopped between sending `sys/init` and saving its output leaves `init.pending` behind
/// (simulated here: the output moved away, the marker written as `up` writes it). The next `up`
/// says the keys are lost and why, and touches nothing; with the output back, `up` goes on and
/// clears the marker.
#[tokio::test]
async fn an_init_whose_output_was_never_saved_is_named_not_guessed_at() -> Result<()> {
    let mut p = Provisioned::new("lostinit", SLOT_LOST_INIT, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let init_file = p.env_dir().join("secrets/init.age");
    let aside = p.env_dir().join("init.age.aside");
    let marker = p.env_dir().join("init.pending");
    fs::rename(&init_file, &aside)?;
    fs::write(
        &marker,
        "sys/init sent to keyhold-1 at 2026-12-04 10:00:00 UTC\n",
    )?;
    let pids: Vec<Option<u32>> = (1..=3).map(|n| p.node_pid(n)).collect();
    let ran = p.run(&["up"]).await?.expect(1)?;
    ensure!(
        ran.stderr
            .contains("stopped before it saved the init output")
            && ran.stderr.contains("provision down --env")
            && ran.stderr.contains("2026-12-04 10:00:00"),
        "up with a pending init and no output: {}",
        ran.stderr
    );
    ensure!(
        marker.exists() && !init_file.exists(),
        "up changed the evidence"
    );
    ensure!(
        (1..=3).map(|n| p.node_pid(n)).collect::<Vec<_>>() == pids,
        "up restarted nodes"
    );
    fs::rename(&aside, &init_file)?;
    p.run(&["up"]).await?.expect(0)?;
    ensure!(!marker.exists(), "the marker outlived a saved init output");
    Ok(())
}

/// `provision load` against a provisioned cluster: every operation succeeds and every
/// acknowledged write reads back, first on a quiet cluster, then while a standby is killed
/// with SIGKILL (and `up` brings it back) in the middle of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_finds_every_acknowledged_write_through_a_killed_standby() -> Result<()> {
    let mut p = Provisioned::new("load", SLOT_LOAD, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let ran = p
        .run(&["load", "--duration", "3s", "--rate", "40", "--json"])
        .await?
        .expect(0)?;
    let quiet = ran.json()?;
    println!("quiet load: {quiet}");
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    ensure!(
        count(&quiet, "operations") >= 60
            && count(&quiet, "failures") == 0
            && count(&quiet, "lost_writes") == 0
            && count(&quiet, "writes") + count(&quiet, "reads") == count(&quiet, "operations")
            && count(&quiet, "verified") > 0,
        "quiet load: {quiet}"
    );
    ensure!(
        quiet["p99_ms"].as_f64() >= quiet["p50_ms"].as_f64(),
        "percentiles out of order: {quiet}"
    );

    let roles = p.roles().await?;
    let standby = (1..=3u8)
        .find(|n| roles[usize::from(*n) - 1] == "standby")
        .context("no standby")?;
    let load = p.spawn(&["load", "--duration", "6s", "--rate", "30", "--json"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = p.kill9_node(standby).await?;
    wait_gone(&[killed], "the killed standby").await?;
    let ran = load.wait().await?.expect(0)?;
    let through = ran.json()?;
    println!("load through a killed standby: {through}");
    ensure!(
        count(&through, "failures") == 0 && count(&through, "lost_writes") == 0,
        "load through a killed standby: {through}"
    );
    p.up_json().await?;
    Ok(())
}

/// The server certificate fingerprint of each node, from `certs show --json`.
fn server_fingerprints(shown: &Value) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for cert in shown.as_array().context("certs show --json is a list")? {
        let what = cert["certificate"].as_str().unwrap_or_default();
        if let Some(node) = what.strip_suffix(" server") {
            let fp = cert["info"]["fingerprint_sha256"]
                .as_str()
                .context("fingerprint")?;
            out.insert(node.to_string(), fp.to_string());
        }
    }
    Ok(out)
}

/// `provision certs rotate` while `provision load` runs: every node presents a new certificate
/// from the same CA, the cluster port's keyring moves to a new generation, no operation fails,
/// no acknowledged write is lost, and `plan` then has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_rotate_under_load_fails_nothing_and_loses_nothing() -> Result<()> {
    let mut p = Provisioned::new("rotate", SLOT_ROTATE, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let before = server_fingerprints(
        &p.run(&["certs", "show", "--json"])
            .await?
            .expect(0)?
            .json()?,
    )?;
    let ca_before = fs::read(p.ca_file())?;
    let load = p.spawn(&["load", "--duration", "8s", "--rate", "30", "--json"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rotated = p
        .run(&["certs", "rotate", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let report = load.wait().await?.expect(0)?.json()?;
    println!("rotated: {rotated}\nload during the rotation: {report}");
    ensure!(
        report["failures"] == json!(0) && report["lost_writes"] == json!(0),
        "load during the rotation: {report}"
    );
    check_cluster_tls_rotated(&rotated)?;
    ensure!(rotated["ca"].is_null(), "no new CA without --ca: {rotated}");
    let nodes = rotated["nodes"]
        .as_array()
        .context("rotate --json lists nodes")?;
    ensure!(nodes.len() == 3, "rotated: {nodes:?}");
    for r in nodes {
        ensure!(
            r["old_fingerprint_sha256"] != r["new_fingerprint_sha256"],
            "a node kept its certificate: {r}"
        );
    }
    let after = server_fingerprints(
        &p.run(&["certs", "show", "--json"])
            .await?
            .expect(0)?
            .json()?,
    )?;
    ensure!(
        before.len() == 3 && after.len() == 3,
        "{before:?} {after:?}"
    );
    for (node, fp) in &before {
        ensure!(after.get(node) != Some(fp), "{node} still has {fp}");
    }
    ensure!(
        fs::read(p.ca_file())? == ca_before,
        "the CA changed without --ca"
    );
    p.run(&["plan"]).await?.expect(0)?;
    Ok(())
}

/// The cluster port's keyring in a `certs rotate --json` report: a finished new generation.
fn check_cluster_tls_rotated(rotated: &Value) -> Result<()> {
    let tls = &rotated["cluster_tls"];
    ensure!(
        tls["generation"].as_u64() >= Some(1)
            && tls["phase"] == json!("stable")
            && tls["ca_fingerprints_sha256"].as_array().map(Vec::len) == Some(1),
        "the cluster port's keyring did not finish a new generation: {tls}"
    );
    Ok(())
}

/// Each node's server pid, to prove a rotation restarted none of them.
fn server_pids(p: &Provisioned) -> Result<Vec<u32>> {
    (1..=p.nodes)
        .map(|n| {
            p.node_pid(n)
                .with_context(|| format!("{}'s pid file", p.node_name(n)))
        })
        .collect()
}

/// `provision certs rotate --ca` while `provision load` runs: a new CA is trusted beside the
/// old one by every node and by clients (the load generator reads the environment's CA file
/// as `VAULT_CACERT`), every node moves to a certificate from it, and the old CA is dropped:
/// no operation fails, no acknowledged write is lost, no server is restarted, a client that
/// trusts only the old CA is refused afterwards, and `plan` has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_rotate_ca_under_load_moves_nodes_and_clients_to_a_new_ca() -> Result<()> {
    let mut p = Provisioned::new("rotateca", SLOT_ROTATE_CA, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let old_ca = fs::read_to_string(p.ca_file())?;
    let pids = server_pids(&p)?;
    let load = p.spawn(&["load", "--duration", "40s", "--rate", "30", "--json"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rotated = p
        .run(&["certs", "rotate", "--ca", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let mut load = load;
    let load_outlasted = !load.has_exited()?;
    let report = load.wait().await?.expect(0)?.json()?;
    println!("rotated: {rotated}\nload during the rotation: {report}");
    ensure!(
        load_outlasted,
        "the load ended before the rotation did, so it did not run through all of it"
    );
    ensure!(
        report["failures"] == json!(0) && report["lost_writes"] == json!(0),
        "load during the CA rotation: {report}"
    );
    check_cluster_tls_rotated(&rotated)?;
    let ca = &rotated["ca"];
    ensure!(
        ca["old_fingerprint_sha256"].is_string()
            && ca["old_fingerprint_sha256"] != ca["new_fingerprint_sha256"],
        "no new CA: {rotated}"
    );
    ensure!(
        rotated["nodes"].as_array().map(Vec::len) == Some(3),
        "every node moves: {rotated}"
    );

    // The environment's CA file holds the new CA alone, and every certificate is its.
    let new_ca = fs::read_to_string(p.ca_file())?;
    ensure!(
        new_ca.matches("BEGIN CERTIFICATE").count() == 1 && new_ca != old_ca,
        "the CA file after the rotation:\n{new_ca}"
    );
    let shown = p
        .run(&["certs", "show", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let shown = shown.as_array().context("certs show --json is a list")?;
    let subject = shown
        .iter()
        .find(|c| c["certificate"] == json!("CA"))
        .map(|c| c["info"]["subject"].clone())
        .context("certs show lists the CA")?;
    ensure!(
        shown
            .iter()
            .filter(|c| c["certificate"] != json!("CA"))
            .count()
            == 6
            && shown
                .iter()
                .filter(|c| c["certificate"] != json!("CA"))
                .all(|c| c["info"]["issuer"] == subject),
        "a certificate is not from the new CA {subject}: {shown:#?}"
    );
    let state: Value = serde_json::from_str(&fs::read_to_string(p.env_dir().join("state.json"))?)?;
    ensure!(
        state.get("ca_rotation").is_none(),
        "the rotation is still recorded as under way: {state}"
    );
    ensure!(
        !p.env_dir().join("tls/ca-next.crt").exists()
            && !p.env_dir().join("tls/ca-next.key").exists(),
        "the next CA's files were left behind"
    );

    // Clients of the new CA are served by every node; a client of the old CA alone is refused.
    for n in 1..=3u8 {
        ensure!(
            p.health_code(n).await.is_some(),
            "{} does not answer a client of the new CA",
            p.node_name(n)
        );
        let old_client = client_builder(&old_ca)?.build()?;
        let refused = old_client
            .get(format!("{}/v1/sys/health", p.api_addr(n)))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        ensure!(
            refused.is_err(),
            "{} still presents a certificate the old CA signed",
            p.node_name(n)
        );
    }
    ensure!(
        server_pids(&p)? == pids && pids.iter().all(|&pid| is_alive(pid)),
        "a server was restarted by the CA rotation: {pids:?} then {:?}",
        server_pids(&p)?
    );
    p.run(&["plan"]).await?.expect(0)?;
    Ok(())
}

/// `provision certs rotate` (with and without `--ca`) on a cluster with a node down is refused
/// with a message that says so, and changes nothing: the same CA file, no rotation recorded,
/// no new CA files, the same node certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_rotate_refuses_an_unhealthy_cluster_and_changes_nothing() -> Result<()> {
    let mut p = Provisioned::new("rotatebad", SLOT_ROTATE_REFUSED, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let ca_before = fs::read(p.ca_file())?;
    let state_before = fs::read(p.env_dir().join("state.json"))?;
    let certs_before = server_fingerprints(
        &p.run(&["certs", "show", "--json"])
            .await?
            .expect(0)?
            .json()?,
    )?;
    let killed = p.kill9_node(2).await?;
    wait_gone(&[killed], "the killed node").await?;
    for args in [&["certs", "rotate"][..], &["certs", "rotate", "--ca"][..]] {
        let ran = p.run(args).await?.expect(1)?;
        ensure!(
            ran.stderr.contains(&p.node_name(2))
                && ran.stderr.contains("does not serve")
                && ran.stderr.contains("nothing was changed"),
            "{args:?}: {}",
            ran.stderr
        );
    }
    ensure!(fs::read(p.ca_file())? == ca_before, "the CA file changed");
    ensure!(
        fs::read(p.env_dir().join("state.json"))? == state_before,
        "the state changed"
    );
    ensure!(
        !p.env_dir().join("tls/ca-next.crt").exists(),
        "a new CA was made"
    );
    let certs_after = server_fingerprints(
        &p.run(&["certs", "show", "--json"])
            .await?
            .expect(0)?
            .json()?,
    )?;
    ensure!(certs_before == certs_after, "node certificates changed");
    Ok(())
}

/// The `ca_rotation` recorded in the environment's state (null when none is under way).
fn ca_rotation_in(state_file: &std::path::Path) -> Value {
    fs::read_to_string(state_file)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map_or(Value::Null, |s| s["ca_rotation"].clone())
}

/// `provision certs rotate --ca` SIGKILLed once its first phase is recorded, then again once a
/// node has moved to the new CA, is finished by the next run (only the nodes left are issued
/// certificates, from the CA the first run made), while `provision load` runs throughout: no
/// operation fails, no acknowledged write is lost, no server is restarted. Meanwhile `certs rotate` without `--ca` and
/// `up` are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ca_rotation_is_finished_by_the_next_run_under_load() -> Result<()> {
    let mut p = Provisioned::new("rotatekill", SLOT_ROTATE_KILLED, EnvSpec::nodes(3))?;
    p.up_json().await?;
    let pids = server_pids(&p)?;
    let old_ca = fs::read_to_string(p.ca_file())?;
    let state_file = p.env_dir().join("state.json");
    let mut load = p.spawn(&["load", "--duration", "45s", "--rate", "30", "--json"])?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let run = p.spawn(&["certs", "rotate", "--ca"])?;
    interrupt_when(run, "the issue phase recorded", libc::SIGKILL, {
        let f = &state_file;
        move || async move { ca_rotation_in(f)["phase"] == json!("issue") }
    })
    .await?;
    let first = ca_rotation_in(&state_file);
    let bundle = fs::read_to_string(p.ca_file())?;
    ensure!(
        bundle.matches("BEGIN CERTIFICATE").count() == 2 && bundle.starts_with(old_ca.trim_end()),
        "after the trust-both phase the CA file is not the old and the new CA:\n{bundle}"
    );

    // Refused while the rotation is under way, and nothing changes.
    let refused = p.run(&["certs", "rotate"]).await?.expect(1)?;
    ensure!(
        refused.stderr.contains("--ca") && refused.stderr.contains("nothing was changed"),
        "certs rotate without --ca during a CA rotation: {}",
        refused.stderr
    );
    let refused = p.run(&["up"]).await?;
    ensure!(
        refused.code != Some(0) && refused.stderr.contains("CA rotation is under way"),
        "up during a CA rotation: {:?}\n{}",
        refused.code,
        refused.stderr
    );
    ensure!(
        fs::read_to_string(p.ca_file())? == bundle && ca_rotation_in(&state_file) == first,
        "a refused command changed the CA file or the rotation's state"
    );

    let run = p.spawn(&["certs", "rotate", "--ca"])?;
    interrupt_when(run, "a node moved to the new CA", libc::SIGKILL, {
        let f = &state_file;
        move || async move {
            ca_rotation_in(f)["moved"]
                .as_array()
                .is_some_and(|m| !m.is_empty())
        }
    })
    .await?;
    let second = ca_rotation_in(&state_file);
    let moved = second["moved"].as_array().map_or(0, Vec::len);
    ensure!(
        second["new_ca_fingerprint_sha256"] == first["new_ca_fingerprint_sha256"],
        "the second run made another CA: {first} then {second}"
    );

    let rotated = p
        .run(&["certs", "rotate", "--ca", "--json"])
        .await?
        .expect(0)?
        .json()?;
    let load_outlasted = !load.has_exited()?;
    let report = load.wait().await?.expect(0)?.json()?;
    println!(
        "killed --ca rotation ({moved} node(s) moved before the second kill) finished: \
         {rotated}\nload during it: {report}"
    );
    ensure!(
        load_outlasted,
        "the load ended before the rotation did, so it did not run through all of it"
    );
    ensure!(
        report["failures"] == json!(0) && report["lost_writes"] == json!(0),
        "load during the interrupted CA rotation: {report}"
    );
    check_cluster_tls_rotated(&rotated)?;
    ensure!(
        rotated["ca"]["new_fingerprint_sha256"] == first["new_ca_fingerprint_sha256"],
        "the finishing run did not finish the rotation the first run began: {rotated}"
    );
    let issued = rotated["nodes"].as_array().map_or(0, Vec::len);
    ensure!(
        issued == 3 - moved,
        "the finishing run issued {issued} certificate(s), {moved} node(s) had moved: {rotated}"
    );
    let new_ca = fs::read_to_string(p.ca_file())?;
    ensure!(
        new_ca.matches("BEGIN CERTIFICATE").count() == 1 && new_ca != old_ca,
        "the CA file after the rotation:\n{new_ca}"
    );
    ensure!(
        ca_rotation_in(&state_file).is_null(),
        "the rotation is still recorded as under way"
    );
    for n in 1..=3u8 {
        ensure!(
            p.health_code(n).await.is_some(),
            "{} does not answer a client of the new CA",
            p.node_name(n)
        );
    }
    ensure!(
        server_pids(&p)? == pids && pids.iter().all(|&pid| is_alive(pid)),
        "a server was restarted by the interrupted CA rotation: {pids:?} then {:?}",
        server_pids(&p)?
    );
    p.run(&["plan"]).await?.expect(0)?;
    Ok(())
}
