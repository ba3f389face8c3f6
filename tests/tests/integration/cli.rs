//! The production guides' runbook commands, run with `keyhold` in place of `vault` against a
//! real TLS server: `VAULT_ADDR`/`VAULT_CACERT`/`VAULT_TOKEN`, Go-style single-dash flags, key
//! shares on stdin, the token helper file, and the exit codes scripts rely on (0 ok, 2 sealed or
//! API error).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};
use keyhold_tests::{keyhold_bin, Cluster, NodeOptions};
use serde_json::Value;

/// Runs `keyhold` as an operator's shell would, with a private `HOME` for `~/.vault-token`.
struct Shell {
    bin: PathBuf,
    addr: String,
    ca: PathBuf,
    home: PathBuf,
    token: Option<String>,
}

impl Shell {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_CACERT", &self.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = &self.token {
            cmd.env("VAULT_TOKEN", token);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("run keyhold {args:?}"))?;
        let mut pipe = child.stdin.take().context("stdin")?;
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes())?;
        }
        drop(pipe);
        Ok(child.wait_with_output()?)
    }

    /// Runs and requires exit code `code`; returns stdout.
    fn expect(&self, code: i32, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.code() == Some(code),
            "keyhold {args:?}: exit {:?}, wanted {code}\nstdout: {stdout}\nstderr: {stderr}",
            out.status.code()
        );
        Ok(stdout)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        self.expect(0, args, None)
    }
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

fn fixture(relative: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

#[tokio::test]
async fn runbook_commands_work_with_keyhold_in_place_of_vault() -> Result<()> {
    let mut cluster = Cluster::single(NodeOptions::default()).await?;
    let ca = cluster.dir().join("ca.crt");
    std::fs::write(&ca, cluster.node().ca_pem())?;
    let home = cluster.dir().join("home");
    std::fs::create_dir_all(&home)?;
    let audit_log = cluster.dir().join("audit.log");
    let node = cluster.node();
    let mut sh = Shell {
        bin: keyhold_bin()?,
        addr: format!("https://{}", node.socket_addr()),
        ca,
        home: home.clone(),
        token: None,
    };

    // "vault status" exits 2 while sealed, so scripts can branch on it.
    sh.expect(2, &["status"], None)?;
    let init = json(&sh.ok(&[
        "operator",
        "init",
        "-key-shares=5",
        "-key-threshold=3",
        "-format=json",
    ])?)?;
    let keys: Vec<String> = init["unseal_keys_b64"]
        .as_array()
        .context("unseal_keys_b64")?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    ensure!(
        keys.len() == 5 && init["unseal_threshold"] == 3,
        "init output: {init}"
    );
    let root = init["root_token"]
        .as_str()
        .context("root_token")?
        .to_string();

    // The runbook passes the first share in argv; the others come on stdin, never argv.
    sh.ok(&["operator", "unseal", &keys[0]])?;
    sh.expect(
        0,
        &["operator", "unseal", "-"],
        Some(&format!("{}\n", keys[1])),
    )?;
    let status = sh.expect(
        0,
        &["operator", "unseal", "-format=json", "-"],
        Some(&keys[2]),
    )?;
    ensure!(
        json(&status)?["sealed"] == false,
        "unsealed after 3 of 5: {status}"
    );
    sh.ok(&["status"])?;

    sh.token = Some(root.clone());
    sh.ok(&["secrets", "enable", "-path=kv", "kv-v2"])?;
    sh.ok(&["kv", "put", "kv/app", "db_password=s3cr3t", "user=svc"])?;
    let field = sh.ok(&["kv", "get", "-field=db_password", "kv/app"])?;
    ensure!(field.trim() == "s3cr3t", "kv get -field: {field:?}");
    let listed = sh.ok(&["secrets", "list"])?;
    ensure!(
        listed.contains("kv/") && listed.contains("sys/"),
        "secrets list: {listed}"
    );

    let file_path = format!("file_path={}", audit_log.display());
    sh.ok(&[
        "audit",
        "enable",
        "-path=file-primary",
        "file",
        &file_path,
        "log_raw=false",
        "hmac_accessor=true",
        "mode=0600",
    ])?;
    let audits = sh.ok(&["audit", "list", "-detailed"])?;
    ensure!(audits.contains("file-primary/"), "audit list: {audits}");
    sh.ok(&["kv", "get", "kv/app"])?;
    let log = std::fs::read_to_string(&audit_log)?;
    ensure!(
        log.contains("hmac-sha256:") && !log.contains("s3cr3t"),
        "audit log must hash the secret"
    );

    sh.expect(
        0,
        &["policy", "write", "vault-admin", "-"],
        Some(&fixture("environments/policies/vault-admin.hcl")?),
    )?;
    sh.expect(
        0,
        &["policy", "write", "prometheus-metrics", "-"],
        Some("path \"sys/metrics\" {\n  capabilities = [\"read\"]\n}\n"),
    )?;
    let created = json(&sh.ok(&[
        "token",
        "create",
        "-policy=prometheus-metrics",
        "-period=768h",
        "-orphan",
        "-display-name=prometheus",
        "-format=json",
    ])?)?;
    let metrics_token = created["auth"]["client_token"]
        .as_str()
        .context("client_token")?
        .to_string();
    ensure!(created["auth"]["orphan"] == true, "orphan token: {created}");

    sh.ok(&["auth", "enable", "userpass"])?;
    sh.ok(&[
        "write",
        "auth/userpass/users/admin",
        "password=correct-horse",
        "token_policies=vault-admin",
    ])?;
    sh.token = None;
    sh.ok(&[
        "login",
        "-method=userpass",
        "username=admin",
        "password=correct-horse",
    ])?;
    let stored = std::fs::read_to_string(home.join(".vault-token"))?;
    ensure!(
        stored.starts_with("hvs."),
        "login stores the token in ~/.vault-token"
    );
    let me = json(&sh.ok(&["token", "lookup", "-format=json"])?)?;
    ensure!(
        me["data"]["display_name"] == "userpass-admin",
        "lookup-self as admin: {me}"
    );
    // The admin policy denies application secrets.
    sh.expect(2, &["kv", "get", "kv/app"], None)?;
    sh.ok(&["secrets", "list"])?;

    sh.token = Some(root.clone());
    let lookup = json(&sh.ok(&["token", "lookup", "-format=json", &metrics_token])?)?;
    ensure!(
        lookup["data"]["period"] == 768 * 3600,
        "periodic token: {lookup}"
    );
    sh.ok(&["token", "revoke", &metrics_token])?;
    sh.expect(2, &["token", "lookup", &metrics_token], None)?;

    sh.ok(&["operator", "rotate"])?;
    let key_status = json(&sh.ok(&["operator", "key-status", "-format=json"])?)?;
    ensure!(key_status["term"] == 2, "term after rotate: {key_status}");

    // Emergency seal, then unseal with the same keys, data intact.
    sh.ok(&["operator", "seal"])?;
    sh.expect(2, &["status"], None)?;
    for key in &keys[2..5] {
        sh.expect(0, &["operator", "unseal", "-"], Some(key))?;
    }
    let field = sh.ok(&["kv", "get", "-field=user", "kv/app"])?;
    ensure!(field.trim() == "svc", "data after seal/unseal: {field:?}");

    // A new root token from a quorum of key holders (generate-root with an OTP).
    let attempt = json(&sh.ok(&["operator", "generate-root", "-init", "-format=json"])?)?;
    let (nonce, otp) = (
        attempt["nonce"].as_str().context("nonce")?,
        attempt["otp"].as_str().context("otp")?,
    );
    let mut last = Value::Null;
    for key in &keys[..3] {
        last = json(&sh.expect(
            0,
            &[
                "operator",
                "generate-root",
                "-format=json",
                &format!("-nonce={nonce}"),
                "-",
            ],
            Some(key),
        )?)?;
    }
    ensure!(
        last["complete"] == true,
        "generate-root completes after 3 shares: {last}"
    );
    let encoded = last["encoded_token"].as_str().context("encoded_token")?;
    let decoded = sh.ok(&[
        "operator",
        "generate-root",
        &format!("-decode={encoded}"),
        &format!("-otp={otp}"),
    ])?;
    sh.token = Some(decoded.trim().to_string());
    let new_root = json(&sh.ok(&["token", "lookup", "-format=json"])?)?;
    ensure!(
        new_root["data"]["policies"] == serde_json::json!(["root"]),
        "generated root token: {new_root}"
    );
    Ok(())
}
