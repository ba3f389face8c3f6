//! The snapshot agent (`keyhold snapshot-agent`) against real servers and moto's S3 and KMS
//! (through the real aws-sdk clients; see `keyhold_tests::moto`): only the active node of a
//! 3-node cluster stores a snapshot, which is named by time, carries its SHA-256 and is
//! encrypted with SSE-KMS; retention deletes exactly the expired snapshots and never a foreign
//! object; an S3 outage (before or in the middle of the upload), a wrong bucket, a sealed or
//! unreachable node and a missing token each fail with a clear message and leave no object and
//! no staged file; `-schedule` stores a snapshot at each time; and the download used for
//! restores refuses a corrupted object. Each test has its own moto on 127.0.40.x.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use keyhold::snapshot_agent::{
    Archive, S3Settings, S3Store, SnapshotRef, Verification, SHA256_METADATA,
};
use keyhold_tests::moto::AWS_ENV;
use keyhold_tests::{keyhold_bin, moto_ip, Cluster, Moto, Node, NodeOptions};
use serde_json::json;
use sha2::{Digest, Sha256};

const BUCKET: &str = "keyhold-snapshots";
const PREFIX: &str = "prod/";

/// What the agent's config file says beyond the node and the endpoint.
#[derive(Clone)]
struct AgentSpec {
    bucket: String,
    snapshot_lines: Vec<String>,
    s3_lines: Vec<String>,
    /// `None`: no token_file (the token then comes from VAULT_TOKEN, or an approle block).
    token_file: Option<PathBuf>,
    extra: String,
}

impl AgentSpec {
    fn new(token_file: &Path) -> AgentSpec {
        AgentSpec {
            bucket: BUCKET.to_string(),
            snapshot_lines: Vec::new(),
            s3_lines: Vec::new(),
            token_file: Some(token_file.to_path_buf()),
            extra: String::new(),
        }
    }
}

/// The agent's directory in a test: config, token, staging dir.
struct AgentDir {
    dir: tempfile::TempDir,
}

impl AgentDir {
    fn new() -> Result<AgentDir> {
        Ok(AgentDir {
            dir: keyhold_tests::test_dir("keyhold-agent-")?,
        })
    }

    fn staging(&self) -> PathBuf {
        self.dir.path().join("staging")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("snapshot-agent.hcl")
    }

    /// Writes the root token of `node` to a 0600 file and returns its path.
    fn token_file(&self, node: &Node) -> Result<PathBuf> {
        let token = &node.init_keys.as_ref().context("initialised")?.root_token;
        let path = self.dir.path().join("token");
        std::fs::write(&path, format!("{token}\n"))?;
        Ok(path)
    }

    /// Writes the config for the agent of `node`, storing through `endpoint`.
    fn write_config(&self, node: &Node, endpoint: &str, spec: &AgentSpec) -> Result<PathBuf> {
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, node.ca_pem())?;
        let mut hcl = format!(
            "keyhold {{\n  address = \"{}\"\n  ca_cert = \"{}\"\n",
            node.api_addr(),
            ca.display()
        );
        if let Some(token_file) = &spec.token_file {
            hcl.push_str(&format!("  token_file = \"{}\"\n", token_file.display()));
        }
        hcl.push_str(&format!(
            "}}\n\nsnapshot {{\n  staging_dir = \"{}\"\n",
            self.staging().display()
        ));
        for line in &spec.snapshot_lines {
            hcl.push_str(&format!("  {line}\n"));
        }
        hcl.push_str(&format!(
            "}}\n\ns3 {{\n  bucket   = \"{}\"\n  prefix   = \"{PREFIX}\"\n  region   = \"us-east-1\"\n  endpoint = \"{endpoint}\"\n",
            spec.bucket
        ));
        for line in &spec.s3_lines {
            hcl.push_str(&format!("  {line}\n"));
        }
        hcl.push_str("}\n");
        hcl.push_str(&spec.extra);
        let path = self.config_path();
        std::fs::write(&path, hcl)?;
        Ok(path)
    }

    /// Fails if anything is left in the staging dir (nothing is, after any run).
    fn ensure_nothing_staged(&self) -> Result<()> {
        let left: Vec<String> = std::fs::read_dir(self.staging())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(left.is_empty(), "files left in the staging dir: {left:?}");
        Ok(())
    }
}

/// One finished agent run.
struct AgentRun {
    status: ExitStatus,
    stderr: String,
}

impl AgentRun {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The value of `name=` in the "snapshot stored" line.
    fn field(&self, name: &str) -> Option<String> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains("snapshot stored:"))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    }
}

impl std::fmt::Display for AgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}; stderr:\n{}", self.status, self.stderr)
    }
}

/// `keyhold snapshot-agent -config=CONFIG ARGS...` with moto's test credentials, waited on
/// (bounded: 120 s, then killed).
async fn run_agent(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<AgentRun> {
    let mut command = agent_command(config, args, env)?;
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("the snapshot agent ran for more than 120 s")??;
    Ok(AgentRun {
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn agent_command(
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(keyhold_bin()?);
    command
        .arg("snapshot-agent")
        .arg(format!("-config={}", config.display()))
        .args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .envs(AWS_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(command)
}

/// `n` KV v2 secrets of 2 KiB of random hex each: a snapshot of some tens of KiB.
async fn write_secrets(node: &Node, n: usize) -> Result<()> {
    let api = node.api();
    api.mount_kv("secret", 2).await?;
    for i in 0..n {
        let value: String = (0..1024)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        api.kv2_put("secret", &format!("app/{i}"), json!({ "value": value }))
            .await?
            .expect(200, "write a secret")?;
    }
    Ok(())
}

/// A test's moto with the bucket, one active node with `secrets` secrets (none: no KV mount),
/// and the agent's directory with the root token in a file.
struct SingleNode {
    moto: Moto,
    cluster: Cluster,
    dir: AgentDir,
    token: PathBuf,
}

async fn single_node(moto_slot: u16, secrets: usize) -> Result<SingleNode> {
    let moto = Moto::start(moto_ip(moto_slot)).await?;
    moto.create_bucket(BUCKET).await?;
    let mut cluster = Cluster::single_active(NodeOptions::default()).await?;
    if secrets > 0 {
        write_secrets(cluster.node(), secrets).await?;
    }
    let dir = AgentDir::new()?;
    let token = dir.token_file(cluster.node())?;
    Ok(SingleNode {
        moto,
        cluster,
        dir,
        token,
    })
}

/// An agent-made object name for a snapshot taken at `time`, written out by hand: the format
/// is a contract (`<prefix><name_prefix>-<yyyy-mm-ddThh-mm-ssZ>-<8 hex>.snap`).
fn agent_name(time: DateTime<Utc>, random: u32) -> String {
    format!(
        "{PREFIX}keyhold-{}-{random:08x}.snap",
        time.format("%Y-%m-%dT%H-%M-%SZ")
    )
}

fn is_agent_name(key: &str) -> bool {
    keyhold::snapshot_agent::naming::parse_object_key(key, PREFIX, "keyhold").is_some()
}

async fn put_object(moto: &Moto, key: &str, body: Vec<u8>) -> Result<()> {
    moto.s3()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.into())
        .send()
        .await
        .with_context(|| format!("put {key} into moto"))?;
    Ok(())
}

async fn get_object(moto: &Moto, key: &str) -> Result<Vec<u8>> {
    let out = moto
        .s3()
        .await
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .with_context(|| format!("get {key} from moto"))?;
    Ok(out.body.collect().await?.to_vec())
}

/// Deletes every object in the bucket.
async fn empty_bucket(moto: &Moto) -> Result<()> {
    let s3 = moto.s3().await;
    for key in moto.object_keys(BUCKET).await? {
        s3.delete_object().bucket(BUCKET).key(&key).send().await?;
    }
    Ok(())
}

/// The store as `provision` would build it, with the harness's credentials.
async fn store(moto: &Moto) -> S3Store {
    let settings = S3Settings {
        bucket: BUCKET.to_string(),
        prefix: PREFIX.to_string(),
        region: keyhold_tests::moto::REGION.to_string(),
        endpoint: Some(moto.endpoint()),
        kms_key_id: None,
    };
    S3Store::from_sdk_config(&moto.sdk_config().await, &settings)
}

#[tokio::test]
async fn snapshot_agent_on_a_3_node_cluster_stores_one_verified_snapshot_from_the_active_node(
) -> Result<()> {
    let moto = Moto::start(moto_ip(0)).await?;
    moto.create_bucket(BUCKET).await?;
    let kms_key = moto.create_kms_key("keyhold-snapshots").await?;
    let mut cluster = Cluster::prepare_ha(3, NodeOptions::default())?;
    cluster.form(1, 1).await?;
    let active = cluster.wait_roles("cluster formed").await?;
    write_secrets(&cluster.nodes[active], 40).await?;
    cluster.wait_caught_up().await?;

    // The agent logs in with AppRole, with a policy that can only read the snapshot.
    let root = cluster.nodes[active].api();
    root.put(
        "sys/policies/acl/snapshot-agent",
        json!({"policy": "path \"sys/storage/raft/snapshot\" { capabilities = [\"read\"] }"}),
    )
    .await?
    .expect_ok("write the agent's policy")?;
    root.post("sys/auth/approle", json!({"type": "approle"}))
        .await?
        .expect_ok("enable approle")?;
    root.post(
        "auth/approle/role/snapshot-agent",
        json!({"token_policies": ["snapshot-agent"], "token_ttl": "10m"}),
    )
    .await?
    .expect_ok("create the agent's role")?;
    let role_id = root
        .get("auth/approle/role/snapshot-agent/role-id")
        .await?
        .expect(200, "read the role id")?
        .json["data"]["role_id"]
        .as_str()
        .context("role_id")?
        .to_string();

    let dir = AgentDir::new()?;
    let role_id_file = dir.dir.path().join("role-id");
    std::fs::write(&role_id_file, &role_id)?;
    let secret_id_file = dir.dir.path().join("secret-id");
    let mut spec = AgentSpec::new(Path::new("/unused"));
    spec.token_file = None;
    spec.s3_lines
        .push("kms_key_id = \"alias/keyhold-snapshots\"".into());
    let textfile = dir.dir.path().join("textfile/keyhold_snapshot.prom");
    spec.extra = format!(
        "\napprole {{\n  role_id_file   = \"{}\"\n  secret_id_file = \"{}\"\n}}\n\
         \nmetrics {{\n  textfile = \"{}\"\n  cluster  = \"agent-test\"\n}}\n",
        role_id_file.display(),
        secret_id_file.display(),
        textfile.display()
    );
    let metric = |name: &str| keyhold::snapshot_agent::textfile::read_value(&textfile, name);

    for standby in cluster.others(active) {
        let config = dir.write_config(&cluster.nodes[standby], &moto.endpoint(), &spec)?;
        let run = run_agent(&config, &[], &[]).await?;
        ensure!(
            run.code() == Some(0),
            "agent on standby {}: {run}",
            cluster.nodes[standby].id
        );
        ensure!(
            run.stderr.contains("not the active node") && run.stderr.lines().count() == 1,
            "a standby says in one line that it is not active: {run}"
        );
    }
    ensure!(
        moto.object_keys(BUCKET).await?.is_empty(),
        "standbys stored nothing"
    );
    ensure!(
        metric("keyhold_snapshot_last_result") == Some(1.0)
            && metric("keyhold_snapshot_last_success_timestamp_seconds").is_none(),
        "a standby's pass succeeds without storing a snapshot:\n{}",
        std::fs::read_to_string(&textfile).unwrap_or_default()
    );

    let secret_id = root
        .post("auth/approle/role/snapshot-agent/secret-id", json!({}))
        .await?
        .expect(200, "issue a secret id")?
        .json["data"]["secret_id"]
        .as_str()
        .context("secret_id")?
        .to_string();
    std::fs::write(&secret_id_file, &secret_id)?;
    let config = dir.write_config(&cluster.nodes[active], &moto.endpoint(), &spec)?;
    let run = run_agent(&config, &["-once"], &[]).await?;
    ensure!(run.code() == Some(0), "agent on the active node: {run}");
    ensure!(
        !run.stderr.contains(&secret_id) && !run.stderr.contains(&role_id),
        "the log shows no credential: {run}"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(lines.len() == 1, "one line per run: {run}");
    let key = run.field("key").context("key= in the log line")?;
    let size: u64 = run.field("size").context("size=")?.parse()?;
    let duration = run.field("duration").context("duration=")?;
    ensure!(
        run.field("verified_by").as_deref() == Some("checksum"),
        "moto keeps the SHA-256 checksum, so HeadObject verifies: {run}"
    );
    eprintln!("measured: a snapshot of {size} bytes stored in moto in {duration} (whole pass)");

    ensure!(
        moto.object_keys(BUCKET).await? == [key.clone()],
        "exactly one object, {key}"
    );
    ensure!(is_agent_name(&key), "{key} is an agent name");
    ensure!(
        metric("keyhold_snapshot_last_result") == Some(1.0)
            && metric("keyhold_snapshot_last_size_bytes") == Some(size as f64)
            && metric("keyhold_snapshot_last_success_timestamp_seconds")
                .is_some_and(|t| t > 0.0 && t <= chrono::Utc::now().timestamp() as f64),
        "the textfile records the stored snapshot:\n{}",
        std::fs::read_to_string(&textfile).unwrap_or_default()
    );
    let head = moto
        .s3()
        .await
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await?;
    let bytes = get_object(&moto, &key).await?;
    let digest = Sha256::digest(&bytes);
    ensure!(
        bytes.len() as u64 == size,
        "{} bytes stored, {size} logged",
        bytes.len()
    );
    ensure!(
        head.metadata()
            .and_then(|m| m.get(SHA256_METADATA))
            .map(String::as_str)
            == Some(hex::encode(digest).as_str()),
        "keyhold-sha256 metadata is the archive's SHA-256: {head:?}"
    );
    ensure!(
        head.checksum_sha256()
            == Some(
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest).as_str()
            ),
        "S3's checksum is the archive's SHA-256: {head:?}"
    );
    ensure!(
        head.server_side_encryption() == Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms)
            && head
                .ssekms_key_id()
                .is_some_and(|k| k.contains(&kms_key) || k.contains("alias/keyhold-snapshots")),
        "SSE-KMS with the configured key: {head:?}"
    );
    let info = keyhold::client::snapshot::inspect(&bytes[..], &Default::default())
        .context("the stored object is a complete snapshot archive")?;
    ensure!(
        info.stats.iter().any(|s| s.name.starts_with("logical/")),
        "the archive holds the KV data"
    );
    dir.ensure_nothing_staged()?;
    // The agent's AppRole token was revoked at the end of the pass; the secret id is spent only
    // for the login, so the next run on the same node works too.
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(0), "second run: {run}");
    ensure!(
        moto.object_keys(BUCKET).await?.len() == 2,
        "a second object"
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_agent_retention_deletes_exactly_the_expired_snapshots() -> Result<()> {
    let SingleNode {
        moto,
        mut cluster,
        dir,
        token,
    } = single_node(1, 0).await?;
    let node = cluster.node();

    let now = Utc::now();
    let aged = |hours: i64| agent_name(now - chrono::Duration::hours(hours), hours as u32);
    let foreign = [
        "prod/notes.txt".to_string(),
        "prod/keyhold-latest.snap".to_string(),
        format!("prod/keyhold-dr-{}", &aged(500)["prod/keyhold-".len()..]),
        format!("prod/old/{}", &aged(600)["prod/".len()..]),
        format!("staging/{}", &aged(700)["prod/".len()..]),
        aged(800)["prod/".len()..].to_string(),
    ];
    let ages = [1, 5, 30, 50, 100];
    // (retention lines, ages (hours) that must survive beside the new snapshot)
    let cases: &[(&[&str], &[i64])] = &[
        (&["retain = 2"], &[1]),
        (&["retain_for = \"24h\""], &[1, 5]),
        (&["retain = 4", "retain_for = \"24h\""], &[1, 5, 30]),
        (&["retain = 1", "retain_for = \"40h\""], &[1, 5, 30]),
        (&[], &[1, 5, 30, 50, 100]),
    ];
    for (lines, survivors) in cases {
        empty_bucket(&moto).await?;
        for key in foreign.iter().cloned().chain(ages.iter().map(|h| aged(*h))) {
            put_object(&moto, &key, b"not a snapshot".to_vec()).await?;
        }
        let mut spec = AgentSpec::new(&token);
        spec.snapshot_lines = lines.iter().map(|l| l.to_string()).collect();
        let config = dir.write_config(node, &moto.endpoint(), &spec)?;
        let run = run_agent(&config, &[], &[]).await?;
        ensure!(run.code() == Some(0), "{lines:?}: {run}");
        let new_key = run.field("key").context("key=")?;
        let mut expected: Vec<String> = foreign
            .iter()
            .cloned()
            .chain(survivors.iter().map(|h| aged(*h)))
            .chain([new_key])
            .collect();
        expected.sort();
        let left = moto.object_keys(BUCKET).await?;
        ensure!(
            left == expected,
            "retention {lines:?}: left {left:#?}, expected {expected:#?}"
        );
        let pruned = ages.len() - survivors.len();
        ensure!(
            run.field("pruned") == Some(pruned.to_string()),
            "{lines:?}: the log line says pruned={pruned}: {run}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn snapshot_agent_failures_exit_non_zero_with_a_clear_message_and_leave_nothing() -> Result<()>
{
    let SingleNode {
        moto,
        mut cluster,
        dir,
        token,
    } = single_node(2, 40).await?;
    moto.create_kms_key("keyhold-snapshots").await?;
    let node = cluster.node();
    let mut spec = AgentSpec::new(&token);
    spec.s3_lines
        .push("kms_key_id = \"alias/keyhold-snapshots\"".into());
    let endpoint = moto.endpoint();

    // A mistake in the config file: its line, exit 1.
    let mut bad = spec.clone();
    bad.snapshot_lines.push("retian = 3".into());
    let config = dir.write_config(node, &endpoint, &bad)?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(1), "config mistake: {run}");
    ensure!(
        run.stderr.contains(&format!(
            "{}:9:3: unknown key \"retian\" in snapshot (did you mean \"retain\"?)",
            config.display()
        )),
        "config mistake names file:line:col and the key: {run}"
    );

    // No token at all: exit 1, and says where a token can come from.
    let mut no_token = spec.clone();
    no_token.token_file = None;
    let config = dir.write_config(node, &endpoint, &no_token)?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(
        run.code() == Some(1)
            && run
                .stderr
                .contains("no token to log in with: set keyhold.token_file or an approle block"),
        "no token: {run}"
    );

    // -check reads the file and touches nothing.
    let config = dir.write_config(node, &endpoint, &spec)?;
    let run = run_agent(&config, &["-check"], &[]).await?;
    ensure!(
        run.code() == Some(0) && moto.object_keys(BUCKET).await?.is_empty(),
        "-check: {run}"
    );

    // S3 unreachable: exit 2, names the endpoint.
    moto.set_reachable(false).await?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(2), "S3 unreachable: {run}");
    ensure!(
        run.stderr
            .contains(&format!("could not reach S3 at {endpoint} (s3.endpoint)")),
        "S3 unreachable: the message names the endpoint: {run}"
    );
    moto.set_reachable(true).await?;
    ensure!(
        moto.object_keys(BUCKET).await?.is_empty(),
        "no object after the outage"
    );
    dir.ensure_nothing_staged()?;

    // S3 goes away in the middle of the upload: exit 2, no object, nothing staged.
    moto.cut_after(16 * 1024);
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(!moto.is_reachable(), "the upload went past the cut");
    ensure!(run.code() == Some(2), "cut mid-upload: {run}");
    ensure!(
        run.stderr
            .contains(&format!("upload s3://{BUCKET}/{PREFIX}keyhold-"))
            && run.stderr.contains("could not reach S3"),
        "cut mid-upload: the message says the upload failed and why: {run}"
    );
    moto.set_reachable(true).await?;
    ensure!(
        moto.object_keys(BUCKET).await?.is_empty(),
        "no object after the cut: {:?}",
        moto.object_keys(BUCKET).await?
    );
    dir.ensure_nothing_staged()?;

    // A bucket that does not exist.
    let mut wrong = spec.clone();
    wrong.bucket = "no-such-bucket".into();
    let config = dir.write_config(node, &endpoint, &wrong)?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(2), "wrong bucket: {run}");
    ensure!(
        run.stderr
            .contains("bucket \"no-such-bucket\" does not exist")
            && run.stderr.contains("check s3.bucket and s3.region"),
        "wrong bucket: {run}"
    );

    // moto kept its bucket and KMS key through the outages: the same config works now.
    let config = dir.write_config(node, &endpoint, &spec)?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(0), "after the outage: {run}");
    ensure!(
        moto.object_keys(BUCKET).await?.len() == 1,
        "one object after the outage"
    );

    // A node nobody listens on, then a sealed node.
    let unreachable = config.with_file_name("unreachable.hcl");
    let port = keyhold_tests::free_port(std::net::Ipv4Addr::LOCALHOST)?;
    std::fs::write(
        &unreachable,
        std::fs::read_to_string(&config)?
            .replace(node.api_addr(), &format!("https://127.0.0.1:{port}")),
    )?;
    let run = run_agent(&unreachable, &[], &[]).await?;
    ensure!(
        run.code() == Some(2)
            && run
                .stderr
                .contains("cannot reach keyhold at https://127.0.0.1:"),
        "unreachable node: {run}"
    );
    node.api()
        .put("sys/seal", json!({}))
        .await?
        .expect(204, "seal")?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(
        run.code() == Some(2) && run.stderr.contains("is sealed: unseal it"),
        "sealed node: {run}"
    );
    ensure!(
        moto.object_keys(BUCKET).await?.len() == 1,
        "no new object from failed runs"
    );
    dir.ensure_nothing_staged()?;
    Ok(())
}

#[tokio::test]
async fn snapshot_agent_schedule_mode_stores_a_snapshot_at_each_time() -> Result<()> {
    let SingleNode {
        moto,
        mut cluster,
        dir,
        token,
    } = single_node(3, 0).await?;
    let node = cluster.node();
    let mut spec = AgentSpec::new(&token);
    spec.snapshot_lines.push("retain = 2".into());
    let config = dir.write_config(node, &moto.endpoint(), &spec)?;

    let run = run_agent(&config, &["-schedule=every 500ms"], &[]).await?;
    ensure!(
        run.code() == Some(1)
            && run
                .stderr
                .contains("the interval must be a whole number of seconds"),
        "a sub-second schedule is refused: {run}"
    );
    let run = run_agent(&config, &["-schedule", "fortnightly"], &[]).await?;
    ensure!(
        run.code() == Some(1)
            && run.stderr.contains(
                "unknown schedule \"fortnightly\": use minutely, hourly, daily, weekly, monthly"
            ),
        "an unknown schedule names the accepted forms: {run}"
    );

    let mut child = agent_command(&config, &["-schedule", "every 2s"], &[])?.spawn()?;
    let mut stored = 0;
    let mut seen = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let keys = moto.object_keys(BUCKET).await?;
        for key in &keys {
            if !seen.contains(key) {
                seen.push(key.clone());
            }
        }
        stored = seen.len();
        if stored >= 4 {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the scheduled agent exited early with {status}");
        }
    }
    let pid = child.id().context("agent pid")?;
    // SAFETY: kill(2) on our own child, not yet reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    ensure!(rc == 0, "SIGTERM the agent");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("the agent did not stop within 30 s of SIGTERM")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(0),
        "SIGTERM ends the agent with 0: {}\n{stderr}",
        output.status
    );
    ensure!(
        stored >= 4,
        "4 snapshots in 30 s at every 2s; saw {seen:?}\n{stderr}"
    );
    ensure!(
        stderr.contains("snapshot agent started: schedule every 2s")
            && stderr.contains("stopping on SIGTERM"),
        "{stderr}"
    );
    ensure!(
        stderr.matches("snapshot stored:").count() >= 4,
        "one line per pass: {stderr}"
    );
    let left = moto.object_keys(BUCKET).await?;
    ensure!(
        left.len() == 2 && left.iter().all(|k| is_agent_name(k)),
        "retain = 2 holds while scheduled: {left:?}"
    );
    dir.ensure_nothing_staged()?;
    Ok(())
}

#[tokio::test]
async fn snapshot_download_verifies_and_refuses_a_corrupted_object() -> Result<()> {
    let SingleNode {
        moto,
        mut cluster,
        dir,
        token,
    } = single_node(4, 5).await?;
    let config = dir.write_config(cluster.node(), &moto.endpoint(), &AgentSpec::new(&token))?;
    let run = run_agent(&config, &[], &[]).await?;
    ensure!(run.code() == Some(0), "{run}");
    let key = run.field("key").context("key=")?;

    let store = store(&moto).await;
    let listed = store.list_snapshots("keyhold").await?;
    ensure!(listed.len() == 1 && listed[0].key == key, "{listed:?}");
    let downloads = keyhold_tests::test_dir("keyhold-download-")?;
    let dest = downloads.path().join("latest.snap");
    let got = store
        .download("keyhold", &SnapshotRef::Latest, &dest)
        .await?;
    let original = std::fs::read(&dest)?;
    ensure!(
        got.key == key && got.size == original.len() as u64,
        "{got:?}"
    );
    ensure!(
        got.sha256 == hex::encode(Sha256::digest(&original)),
        "{got:?}"
    );
    ensure!(got.meta.index > 0, "the archive's Raft index: {got:?}");

    // Bytes changed in S3 behind the agent's back (the metadata still names the original).
    let mut corrupted = original.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0x55;
    let sha = hex::encode(Sha256::digest(&original));
    moto.s3()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .metadata(SHA256_METADATA, &sha)
        .body(corrupted.into())
        .send()
        .await?;
    let dest2 = downloads.path().join("corrupted.snap");
    let err = store
        .download("keyhold", &SnapshotRef::Key(key.clone()), &dest2)
        .await
        .expect_err("a corrupted object must be refused");
    let text = err.to_string();
    ensure!(
        text.starts_with(&format!(
            "s3://{BUCKET}/{key} is corrupted: its content hashes to SHA-256 "
        )) && text.contains(&format!("but it was stored with {sha}"))
            && text.ends_with("Do not restore it; pick another snapshot"),
        "{text}"
    );
    ensure!(!dest2.exists(), "nothing written at the destination");
    let left: Vec<_> = std::fs::read_dir(downloads.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    ensure!(
        left.len() == 1,
        "only the first download is there: {left:?}"
    );

    // Metadata rewritten to match, but the bytes are no snapshot.
    let garbage = b"not a snapshot archive".to_vec();
    moto.s3()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .metadata(SHA256_METADATA, hex::encode(Sha256::digest(&garbage)))
        .body(garbage.into())
        .send()
        .await?;
    let err = store
        .download("keyhold", &SnapshotRef::Latest, &dest2)
        .await
        .expect_err("not an archive");
    ensure!(
        err.to_string()
            .contains("is corrupted: it is not a valid snapshot archive"),
        "{err}"
    );

    let err = store
        .download(
            "keyhold",
            &SnapshotRef::Key(format!("{PREFIX}nope.snap")),
            &dest2,
        )
        .await
        .expect_err("no such key");
    ensure!(err.to_string() == format!("s3://{BUCKET}/{PREFIX}nope.snap does not exist; list the snapshots there are with their keys"), "{err}");
    Ok(())
}

#[tokio::test]
async fn snapshot_upload_that_fails_verification_is_deleted() -> Result<()> {
    let moto = Moto::start(moto_ip(5)).await?;
    moto.create_bucket(BUCKET).await?;
    let store = store(&moto).await;
    let dir = keyhold_tests::test_dir("keyhold-upload-")?;
    let path = dir.path().join("archive");
    std::fs::write(&path, vec![7u8; 100_000])?;
    let archive = Archive::hash_file(&path)?;

    // A good upload is verified by moto's stored SHA-256 checksum.
    let key = format!("{PREFIX}keyhold-good.snap");
    ensure!(store.upload_verified(&key, &archive).await? == Verification::Checksum);
    ensure!(moto.object_keys(BUCKET).await? == std::slice::from_ref(&key));

    // The staged file changes after it was hashed: AWS would refuse the body for its checksum;
    // moto stores it, and the size check after the upload catches it and deletes the object.
    std::fs::write(&path, vec![7u8; 100_001])?;
    let bad_key = format!("{PREFIX}keyhold-bad.snap");
    let err = store
        .upload_verified(&bad_key, &archive)
        .await
        .expect_err("the stored object is not the archive");
    ensure!(
        err.to_string() == format!("s3://{BUCKET}/{bad_key} was uploaded but S3 holds something else: 100001 bytes instead of 100000; the object was deleted, try again"),
        "{err}"
    );
    ensure!(
        moto.object_keys(BUCKET).await? == [key],
        "the failed object is gone"
    );
    Ok(())
}
