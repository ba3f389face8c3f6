//! `provision` with an auto seal: a 3-node cluster sealed by AWS KMS (moto standing in for it,
//! reached through the real aws-sdk clients). `up` creates the KMS key behind a missing alias,
//! init makes recovery keys, the nodes unseal themselves, and after `kill -9` of every node
//! the next `up` brings them back unsealed with no key given and the data intact.
//!
//! Durations are printed for the record (`--no-capture`); nothing asserts on them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use keyhold_tests::moto::{Moto, AWS_ENV};
use keyhold_tests::provision::{loopback_base, step, wait_gone, EnvSpec, Provisioned};
use serde_json::json;

const SLOT_KMS: u8 = 21;

#[tokio::test(flavor = "multi_thread")]
async fn provision_awskms_cluster_unseals_itself_after_kill_9_of_every_node() -> Result<()> {
    let base = loopback_base(SLOT_KMS, 3)?;
    let [_, a, b, _] = base.octets();
    // Straight to moto: this test needs no outage, and `provision` runs as a blocking child.
    let moto = Moto::start(std::net::Ipv4Addr::new(127, a, b, 200)).await?;
    let alias = format!("alias/keyhold-test-{}", std::process::id());
    let mut spec = EnvSpec::nodes(3);
    spec.auto_seal = Some(format!(
        "seal \"awskms\" {{\n  region     = \"us-east-1\"\n  kms_key_id = \"{alias}\"\n  \
         endpoint   = \"{}\"\n}}",
        moto.direct_endpoint()
    ));
    let hcl = keyhold_tests::provision::environment_hcl(
        &spec,
        base,
        &keyhold_tests::node::keyhold_bin()?,
    );
    let mut p = Provisioned::with_text("kms", 3, base, &hcl)?;
    // A secret key no other file of the test holds, to look for it where it must not be.
    let secret_key = format!("moto-secret-{}", std::process::id());
    for (k, v) in AWS_ENV {
        let v = if k == "AWS_SECRET_ACCESS_KEY" {
            secret_key.as_str()
        } else {
            v
        };
        p.set_env(k, v);
    }

    let plan = p.run(&["plan"]).await?.expect(2)?;
    ensure!(
        plan.stdout
            .contains(&format!("create a symmetric KMS key and its alias {alias}")),
        "plan does not show the KMS key:\n{}",
        plan.stdout
    );

    let (up, took) = p.up_json().await?;
    println!(
        "up of a 3-node awskms cluster took {:.1}s",
        took.as_secs_f64()
    );
    ensure!(
        step(&up, "kms key")?["outcome"] == "changed",
        "kms key: {up}"
    );
    ensure!(
        step(&up, "auto-unseal")?["outcome"] == "ok",
        "auto-unseal: {up}"
    );

    // init.age holds recovery keys; --show-secrets names them so.
    let shown = p.run(&["up", "--show-secrets"]).await?.expect(0)?;
    let recovery = shown
        .stdout
        .lines()
        .filter(|l| l.starts_with("Recovery Key "))
        .count();
    ensure!(recovery == 3, "expected 3 recovery keys:\n{}", shown.stdout);
    ensure!(
        !shown.stdout.contains("Unseal Key"),
        "an auto seal has no unseal keys:\n{}",
        shown.stdout
    );

    // The nodes' credentials: in their private environment files, nowhere in state.
    for n in 1..=3 {
        let env_file = p.node_dir(n).join("etc/keyhold.d/keyhold.env");
        let mode = fs::metadata(&env_file)
            .with_context(|| format!("{}", env_file.display()))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "{} is {mode:o}", env_file.display());
    }
    let state = fs::read_to_string(p.env_dir().join("state.json"))?;
    ensure!(
        !state.contains(&secret_key),
        "state.json holds the AWS secret key"
    );
    for n in 1..=3 {
        let log = fs::read_to_string(p.server_log(n)).unwrap_or_default();
        ensure!(
            !log.contains(&secret_key),
            "node {n}'s log holds the AWS secret key"
        );
    }

    let vars = p.env_vars().await?;
    let token = vars["VAULT_TOKEN"].clone();
    p.api(1, Some(&token))?
        .kv2_put("kv", "kms/kept", json!({"v": "across kill -9"}))
        .await?
        .expect_ok("write kv/kms/kept")?;

    let mut pids = Vec::new();
    for n in 1..=3 {
        pids.push(p.kill9_node(n).await?);
    }
    wait_gone(&pids, "every SIGKILLed node").await?;

    let started = Instant::now();
    let (up, took) = p.up_json().await?;
    println!(
        "up after kill -9 of every node: {:.1}s (nodes unsealed themselves in: {})",
        took.as_secs_f64(),
        step(&up, "auto-unseal")?["detail"]
    );
    ensure!(step(&up, "init")?["outcome"] == "ok", "init again: {up}");
    let (code, status) = p.status().await?;
    ensure!(
        code == Some(0),
        "status after restart: {status}\n{}",
        p.log_tails(10)
    );
    let roles = keyhold_tests::provision::roles_of(&status)?;
    ensure!(
        roles.iter().filter(|r| *r == "active").count() == 1
            && roles.iter().filter(|r| *r == "standby").count() == 2,
        "roles after restart: {roles:?}"
    );
    let vars = p.env_vars().await?;
    let got = p
        .api(2, Some(&vars["VAULT_TOKEN"]))?
        .kv2_get("kv", "kms/kept")
        .await?;
    ensure!(
        got == Some(json!({"v": "across kill -9"})),
        "kv/kms/kept: {got:?}"
    );
    println!(
        "restart to serving (all 3 unsealed by themselves): {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // `provision unseal` has nothing to do and says why.
    let unseal = p.run(&["unseal"]).await?.expect(0)?;
    ensure!(
        unseal.stderr.contains("auto-unseal"),
        "unseal output: {}",
        unseal.stderr
    );
    p.run(&["down", "--purge"]).await?.expect(0)?;
    drop(moto);
    Ok(())
}
