//! `provision` with a transit seal served by the environment's own unsealer: a one-node Shamir
//! Keyhold that `up` starts, initialises, unseals and configures (transit mount, key, policy,
//! periodic token) before the 3-node cluster, whose nodes then unseal themselves through it.
//! After `kill -9` of every node, and then of the unsealer and every node, the next `up` brings
//! everything back (the unsealer unsealed by provision from its encrypted share, the nodes by
//! themselves) with the data intact. The seal's token is in the nodes' private environment
//! files only: never in state.json, rendered configs, logs or `provision` output.
//!
//! Durations are printed for the record (`--no-capture`); nothing asserts on them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use keyhold_tests::provision::{
    files_under, loopback_base, roles_of, step, wait_gone, EnvSpec, Provisioned,
};
use serde_json::json;

const SLOT_TRANSIT: u8 = 22;

fn unsealer_dir(p: &Provisioned) -> PathBuf {
    p.env_dir().join("nodes/unsealer")
}

fn unsealer_pid(p: &Provisioned) -> Result<u32> {
    let file = unsealer_dir(p).join("run/keyhold.pid");
    fs::read_to_string(&file)
        .with_context(|| format!("{}", file.display()))?
        .trim()
        .parse()
        .context("unsealer pid")
}

async fn assert_serving(p: &mut Provisioned, what: &str) -> Result<()> {
    let (code, status) = p.status().await?;
    ensure!(
        code == Some(0),
        "status {what}: {status}\n{}",
        p.log_tails(10)
    );
    let roles = roles_of(&status)?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles {what}: {roles:?}"
    );
    ensure!(
        status["unsealer"]["role"] == "active",
        "unsealer {what}: {status}"
    );
    Ok(())
}

async fn assert_secret(p: &mut Provisioned, node: u8, what: &str) -> Result<()> {
    let vars = p.env_vars().await?;
    let got = p
        .api(node, Some(&vars["VAULT_TOKEN"]))?
        .kv2_get("kv", "transit/kept")
        .await?;
    ensure!(
        got == Some(json!({"v": "across kill -9"})),
        "kv/transit/kept {what}: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_transit_cluster_unseals_itself_from_its_unsealer() -> Result<()> {
    let base = loopback_base(SLOT_TRANSIT, 3)?;
    let [_, a, b, _] = base.octets();
    let mut spec = EnvSpec::nodes(3);
    spec.auto_seal = Some(format!(
        "unsealer {{\n  address = \"127.{a}.{b}.9\"\n}}\n\n\
         seal \"transit\" {{\n  key_name   = \"autounseal\"\n  mount_path = \"transit/\"\n}}"
    ));
    let hcl = keyhold_tests::provision::environment_hcl(
        &spec,
        base,
        &keyhold_tests::node::keyhold_bin()?,
    );
    let mut p = Provisioned::with_text("transit", 3, base, &hcl)?;

    let (up, took) = p.up_json().await?;
    println!(
        "up of a transit unsealer and a 3-node transit-sealed cluster took {:.1}s",
        took.as_secs_f64()
    );
    ensure!(
        step(&up, "unsealer")?["outcome"] == "changed",
        "unsealer: {up}"
    );
    ensure!(
        step(&up, "auto-unseal")?["outcome"] == "ok",
        "auto-unseal: {up}"
    );
    let seal = p.api(1, None)?.seal_status().await?;
    ensure!(
        seal["type"] == "transit" && seal["sealed"] == false,
        "{seal}"
    );

    // A second up changes nothing, the unsealer included.
    let (again, _) = p.up_json().await?;
    ensure!(
        again["changed"] == false,
        "second up changed things: {again}"
    );

    let shown = p.run(&["up", "--show-secrets"]).await?.expect(0)?;
    let recovery = shown
        .stdout
        .lines()
        .filter(|l| l.starts_with("Recovery Key "))
        .count();
    ensure!(recovery == 3, "expected 3 recovery keys:\n{}", shown.stdout);

    // The seal's token: in each node's private environment file, nowhere else.
    let env_file = p.node_dir(1).join("etc/keyhold.d/keyhold.env");
    let text = fs::read_to_string(&env_file)?;
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("VAULT_TOKEN="))
        .with_context(|| format!("no VAULT_TOKEN in {}", env_file.display()))?
        .to_string();
    ensure!(token.len() > 8, "token too short");
    for n in 1..=3 {
        let env_file = p.node_dir(n).join("etc/keyhold.d/keyhold.env");
        let mode = fs::metadata(&env_file)?.permissions().mode();
        ensure!(mode & 0o777 == 0o600, "{} is {mode:o}", env_file.display());
        let config = fs::read_to_string(p.node_dir(n).join("etc/keyhold.d/keyhold.hcl"))?;
        ensure!(
            config.contains("seal \"transit\"") && config.contains(&format!("127.{a}.{b}.9")),
            "node {n}'s config: {config}"
        );
    }
    let env_files: Vec<PathBuf> = (1..=3)
        .map(|n| p.node_dir(n).join("etc/keyhold.d/keyhold.env"))
        .collect();

    let vars = p.env_vars().await?;
    p.api(1, Some(&vars["VAULT_TOKEN"]))?
        .kv2_put("kv", "transit/kept", json!({"v": "across kill -9"}))
        .await?
        .expect_ok("write kv/transit/kept")?;

    // kill -9 every cluster node: they unseal themselves from the running unsealer.
    let mut pids = Vec::new();
    for n in 1..=3 {
        pids.push(p.kill9_node(n).await?);
    }
    wait_gone(&pids, "every SIGKILLed node").await?;
    let (up, took) = p.up_json().await?;
    println!(
        "up after kill -9 of every node: {:.1}s ({})",
        took.as_secs_f64(),
        step(&up, "auto-unseal")?["detail"]
    );
    ensure!(step(&up, "unsealer")?["outcome"] == "ok", "unsealer: {up}");
    assert_serving(&mut p, "after kill -9 of every node").await?;
    assert_secret(&mut p, 2, "after kill -9 of every node").await?;

    // kill -9 the unsealer and every node: up restarts and unseals the unsealer from its
    // encrypted share, then the nodes unseal themselves.
    let unsealer = unsealer_pid(&p)?;
    unsafe {
        libc::kill(unsealer as i32, libc::SIGKILL);
    }
    let mut pids = vec![unsealer];
    for n in 1..=3 {
        pids.push(p.kill9_node(n).await?);
    }
    wait_gone(&pids, "the unsealer and every node").await?;
    let (up, took) = p.up_json().await?;
    println!(
        "up after kill -9 of the unsealer and every node: {:.1}s (unsealer: {}; {})",
        took.as_secs_f64(),
        step(&up, "unsealer")?["detail"],
        step(&up, "auto-unseal")?["detail"]
    );
    let detail = step(&up, "unsealer")?["detail"].to_string();
    ensure!(
        detail.contains("started") && detail.contains("unsealed") && !detail.contains("token"),
        "unsealer step: {detail}"
    );
    assert_serving(&mut p, "after kill -9 of the unsealer and every node").await?;
    assert_secret(&mut p, 3, "after kill -9 of the unsealer and every node").await?;

    // The token never left the environment files.
    let mut places = vec![p.env_dir().join("state.json")];
    for n in 1..=3 {
        places.push(p.server_log(n));
        places.push(p.node_dir(n).join("etc/keyhold.d/keyhold.hcl"));
    }
    places.push(unsealer_dir(&p).join("var/log/keyhold/keyhold.out"));
    for place in &places {
        let text = fs::read_to_string(place).unwrap_or_default();
        ensure!(
            !text.contains(&token),
            "{} holds the seal's token",
            place.display()
        );
    }
    for file in files_under(&p.env_dir())? {
        if env_files.contains(&file) {
            continue;
        }
        let bytes = fs::read(&file).unwrap_or_default();
        ensure!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "{} holds the seal's token in plaintext",
            file.display()
        );
    }
    ensure!(
        !up.to_string().contains(&token),
        "up output holds the token"
    );

    p.run(&["down", "--purge"]).await?.expect(0)?;
    ensure!(
        !p.env_dir().exists(),
        "down --purge left {}",
        p.env_dir().display()
    );
    ensure!(
        p.server_processes().is_empty(),
        "processes left after down --purge: {:?}",
        p.server_processes()
    );
    Ok(())
}
