//! The agent's config file (`keyhold snapshot-agent -config=FILE`), read with the server's own
//! HCL reader (`config::syntax` + `config::section`), so a mistake reads the same as one in a
//! server config: `file:line:col: message`, naming the allowed keys with a did-you-mean.
//!
//! The schema is a contract with the provisioner, which renders this file for every node:
//! `keyhold { address ca_cert client_cert client_key token_file }`,
//! `approle { mount role_id_file secret_id_file }` (optional),
//! `snapshot { retain retain_for staging_dir name_prefix }`,
//! `s3 { bucket prefix region endpoint kms_key_id }`,
//! `metrics { textfile cluster }` (optional: where each pass writes its Prometheus textfile).

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyhold_client::{CaCert, ClientConfig};
use keyhold_config::section::Section;
use keyhold_config::syntax::{self, Node, Source, Value};
use keyhold_config::{ConfigError, Location};

use super::retention::Retention;

/// The `name_prefix` used when the file sets none.
pub const DEFAULT_NAME_PREFIX: &str = "keyhold";
/// The AppRole mount used when the `approle` block names none.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// A whole agent config file, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The file it was read from, for messages.
    pub file: String,
    pub keyhold: NodeSettings,
    pub approle: Option<AppRoleSettings>,
    pub snapshot: SnapshotSettings,
    pub s3: S3Settings,
    pub metrics: Option<MetricsSettings>,
}

/// `metrics { ... }`: the node_exporter textfile each pass writes (see `textfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// A `.prom` file in node_exporter's textfile-collector directory.
    pub textfile: PathBuf,
    /// The `cluster` label of every sample (the environment's name).
    pub cluster: String,
}

/// `keyhold { ... }`: the node this agent runs beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's API address, e.g. `https://127.0.1.1:8200`.
    pub address: String,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// A file holding the token; without it (and without `approle`), `VAULT_TOKEN`.
    pub token_file: Option<PathBuf>,
}

/// `approle { ... }`: log in with AppRole instead of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRoleSettings {
    pub mount: String,
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
}

/// `snapshot { ... }`: where the archive is staged, how objects are named, what is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub retention: Retention,
    /// Where the archive is written before the upload; created (0700) if missing.
    pub staging_dir: PathBuf,
    /// The first part of every object name the agent makes (see `naming`).
    pub name_prefix: String,
}

/// `s3 { ... }`: where snapshots are stored. Shared with `provision snapshot ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Put in front of every object name as written (`"prod/"` gives `prod/keyhold-...`).
    pub prefix: String,
    pub region: String,
    /// An S3-compatible endpoint (moto, MinIO); path-style addressing is used with it.
    pub endpoint: Option<String>,
    /// Encrypt objects with SSE-KMS under this key (id, ARN or `alias/...`).
    pub kms_key_id: Option<String>,
}

impl AgentConfig {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                Location::file(&name),
                "",
                format!("cannot read the snapshot agent config: {e}"),
            )
        })?;
        AgentConfig::parse_str(&text, &name)
    }

    /// Parses one file's text; `file_name` names it in errors and decides HCL or JSON.
    pub fn parse_str(text: &str, file_name: &str) -> Result<AgentConfig, ConfigError> {
        let src = Source::new(file_name, text);
        let root = syntax::parse(&src, text, syntax::is_json(file_name, text))?;
        let root = Node {
            value: Value::Object(root),
            pos: 0,
        };
        let top = Section::new(
            &src,
            &root,
            "at the top level",
            "",
            &["keyhold", "approle", "snapshot", "s3", "metrics"],
            &[],
        )?;
        let keyhold = decode_keyhold(&top)?;
        let approle = match top.blocks("approle")?.first() {
            Some(body) => Some(decode_approle(&top, body)?),
            None => None,
        };
        if let (Some(_), Some(_)) = (&approle, &keyhold.token_file) {
            return Err(top.value_error(
                "approle",
                "keyhold.token_file is set too; log in one way: remove token_file, or the \
                 approle block",
            ));
        }
        Ok(AgentConfig {
            file: file_name.to_string(),
            keyhold,
            approle,
            snapshot: decode_snapshot(&top)?,
            s3: decode_s3(&top)?,
            metrics: decode_metrics(&top)?,
        })
    }

    /// How to reach this node, without a token (the agent logs in separately).
    pub fn client_config(&self) -> ClientConfig {
        let k = &self.keyhold;
        ClientConfig {
            ca_cert: k.ca_cert.clone().map(CaCert::File),
            client_cert: k.client_cert.clone(),
            client_key: k.client_key.clone(),
            ..ClientConfig::new(k.address.clone())
        }
    }
}

/// The one body of the required block `key`; `example` shows one.
fn required_block<'n>(
    top: &Section<'_, 'n>,
    key: &str,
    example: &str,
) -> Result<&'n Node, ConfigError> {
    top.blocks(key)?.first().copied().ok_or_else(|| {
        ConfigError::new(
            Location::file(top.src.file),
            key,
            format!("a {key} block is required: add one {example}"),
        )
    })
}

fn decode_keyhold(top: &Section<'_, '_>) -> Result<NodeSettings, ConfigError> {
    let body = required_block(
        top,
        "keyhold",
        "naming this node's API, e.g. keyhold { address = \"https://127.0.0.1:8200\" }",
    )?;
    let s = Section::new(
        top.src,
        body,
        "in keyhold",
        "keyhold",
        &[
            "address",
            "ca_cert",
            "client_cert",
            "client_key",
            "token_file",
        ],
        &[],
    )?;
    let address = s.required_string(
        "address",
        "this node's API address, e.g. \"https://127.0.0.1:8200\"",
    )?;
    check_url(&s, "address", &address)?;
    let client_cert = s.path("client_cert")?;
    let client_key = s.path("client_key")?;
    match (&client_cert, &client_key) {
        (Some(_), None) => return Err(s.missing("client_key", "the key of client_cert")),
        (None, Some(_)) => return Err(s.missing("client_cert", "the certificate of client_key")),
        _ => {}
    }
    Ok(NodeSettings {
        address,
        ca_cert: s.path("ca_cert")?,
        client_cert,
        client_key,
        token_file: s.path("token_file")?,
    })
}

fn decode_approle(top: &Section<'_, '_>, body: &Node) -> Result<AppRoleSettings, ConfigError> {
    let s = Section::new(
        top.src,
        body,
        "in approle",
        "approle",
        &["mount", "role_id_file", "secret_id_file"],
        &[],
    )?;
    let mount = s
        .string("mount")?
        .map(|m| m.trim_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_APPROLE_MOUNT.to_string());
    Ok(AppRoleSettings {
        mount,
        role_id_file: s.required_path("role_id_file", "the file holding the role ID")?,
        secret_id_file: s.required_path("secret_id_file", "the file holding the secret ID")?,
    })
}

fn decode_metrics(top: &Section<'_, '_>) -> Result<Option<MetricsSettings>, ConfigError> {
    let blocks = top.blocks("metrics")?;
    let Some(body) = blocks.first() else {
        return Ok(None);
    };
    let s = Section::new(
        top.src,
        body,
        "in metrics",
        "metrics",
        &["textfile", "cluster"],
        &[],
    )?;
    let textfile = match s.string("textfile")? {
        Some(path) if path.ends_with(".prom") => PathBuf::from(path),
        _ => {
            return Err(s.value_error(
                "textfile",
                "name a .prom file in node_exporter's textfile-collector directory, e.g. \
                 textfile = \"/var/lib/keyhold/textfile/keyhold_snapshot.prom\"",
            ))
        }
    };
    let cluster = s.string("cluster")?.unwrap_or_default();
    Ok(Some(MetricsSettings { textfile, cluster }))
}

fn decode_snapshot(top: &Section<'_, '_>) -> Result<SnapshotSettings, ConfigError> {
    let body = required_block(
        top,
        "snapshot",
        "with at least staging_dir, e.g. snapshot { staging_dir = \"/opt/keyhold/snapshots\" }",
    )?;
    let s = Section::new(
        top.src,
        body,
        "in snapshot",
        "snapshot",
        &["retain", "retain_for", "staging_dir", "name_prefix"],
        &[],
    )?;
    let retain = s.u32("retain")?;
    if retain == Some(0) {
        return Err(s.value_error(
            "retain",
            "must be at least 1 (leave it out to keep every snapshot)",
        ));
    }
    let retain_for = s.duration("retain_for")?;
    if retain_for == Some(Duration::ZERO) {
        return Err(s.value_error(
            "retain_for",
            "must be longer than 0s (leave it out to keep by count only)",
        ));
    }
    let name_prefix = s
        .string("name_prefix")?
        .unwrap_or_else(|| DEFAULT_NAME_PREFIX.to_string());
    let name_ok = name_prefix.len() <= 64
        && name_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(s.value_error(
            "name_prefix",
            "use at most 64 letters, digits, '-', '_' or '.' (put folders in s3.prefix)",
        ));
    }
    Ok(SnapshotSettings {
        retention: Retention { retain, retain_for },
        staging_dir: s.required_path(
            "staging_dir",
            "a directory for the archive before its upload, e.g. \"/opt/keyhold/snapshots\"",
        )?,
        name_prefix,
    })
}

fn decode_s3(top: &Section<'_, '_>) -> Result<S3Settings, ConfigError> {
    let body = required_block(
        top,
        "s3",
        "naming the bucket and its region, e.g. s3 { bucket = \"keyhold-snapshots\" region = \"us-east-1\" }",
    )?;
    let s = Section::new(
        top.src,
        body,
        "in s3",
        "s3",
        &["bucket", "prefix", "region", "endpoint", "kms_key_id"],
        &[],
    )?;
    let bucket = s.required_string("bucket", "the name of the S3 bucket snapshots go to")?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
    if !bucket_ok {
        return Err(s.value_error(
            "bucket",
            format!(
                "{bucket:?} is not a valid S3 bucket name: 3 to 63 lowercase letters, digits, \
                 '-' or '.' (a path inside the bucket goes in s3.prefix)"
            ),
        ));
    }
    let prefix = s.string("prefix")?.unwrap_or_default();
    if prefix.starts_with('/') {
        return Err(s.value_error(
            "prefix",
            "must not start with '/': S3 keys are relative to the bucket (e.g. \"prod/\")",
        ));
    }
    let endpoint = s.string("endpoint")?;
    if let Some(endpoint) = &endpoint {
        check_url(&s, "endpoint", endpoint)?;
    }
    Ok(S3Settings {
        bucket,
        prefix,
        region: s.required_string("region", "the bucket's AWS region, e.g. \"us-east-1\"")?,
        endpoint,
        kms_key_id: s.string("kms_key_id")?,
    })
}

fn check_url(s: &Section<'_, '_>, key: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err(s.value_error(key, format!("{value:?} is not an http:// or https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
keyhold {
  address     = "https://127.0.1.1:8200"
  ca_cert     = "/opt/keyhold/tls/ca.pem"
  client_cert = "/opt/keyhold/tls/client.pem"
  client_key  = "/opt/keyhold/tls/client-key.pem"
}
approle {
  role_id_file   = "/etc/keyhold/role-id"
  secret_id_file = "/etc/keyhold/secret-id"
}
snapshot {
  retain      = 24
  retain_for  = "72h"
  staging_dir = "/opt/keyhold/snapshots"
}
s3 {
  bucket     = "keyhold-snapshots"
  prefix     = "prod/"
  region     = "us-east-1"
  endpoint   = "http://127.0.0.1:5000"
  kms_key_id = "alias/keyhold-snapshots"
}
"#;

    #[test]
    fn a_full_file_reads_field_by_field() {
        let c = AgentConfig::parse_str(FULL, "agent.hcl").unwrap();
        assert_eq!(
            c.keyhold,
            NodeSettings {
                address: "https://127.0.1.1:8200".into(),
                ca_cert: Some("/opt/keyhold/tls/ca.pem".into()),
                client_cert: Some("/opt/keyhold/tls/client.pem".into()),
                client_key: Some("/opt/keyhold/tls/client-key.pem".into()),
                token_file: None,
            }
        );
        assert_eq!(
            c.approle,
            Some(AppRoleSettings {
                mount: "approle".into(),
                role_id_file: "/etc/keyhold/role-id".into(),
                secret_id_file: "/etc/keyhold/secret-id".into(),
            })
        );
        assert_eq!(
            c.snapshot,
            SnapshotSettings {
                retention: Retention {
                    retain: Some(24),
                    retain_for: Some(Duration::from_secs(72 * 3600)),
                },
                staging_dir: "/opt/keyhold/snapshots".into(),
                name_prefix: "keyhold".into(),
            }
        );
        assert_eq!(
            c.s3,
            S3Settings {
                bucket: "keyhold-snapshots".into(),
                prefix: "prod/".into(),
                region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
                kms_key_id: Some("alias/keyhold-snapshots".into()),
            }
        );
        let client = c.client_config();
        assert_eq!(client.address, "https://127.0.1.1:8200");
        assert_eq!(
            client.ca_cert,
            Some(CaCert::File("/opt/keyhold/tls/ca.pem".into()))
        );
        assert_eq!(client.token, None);
    }

    /// The smallest valid file, then one change per case and the exact message it gives.
    #[test]
    fn good_and_bad_files() {
        const BASE: &str = "keyhold {\n  address = \"https://127.0.0.1:8200\"\n}\nsnapshot {\n  staging_dir = \"/tmp/s\"\n}\ns3 {\n  bucket = \"snaps\"\n  region = \"us-east-1\"\n}\n";
        let cases: &[(&str, &str)] = &[
            (BASE, "ok"),
            (
                &format!("{BASE}approle {{\n  mount = \"/ci/\"\n  role_id_file = \"/r\"\n  secret_id_file = \"/s\"\n}}\n"),
                "ok",
            ),
            (
                &BASE.replace("staging_dir", "retain = 3\n  retain_for = \"90m\"\n  name_prefix = \"node_1.snap-x\"\n  staging_dir"),
                "ok",
            ),
            (
                &BASE.replace("address", "adress"),
                "agent.hcl:2:3: unknown key \"adress\" in keyhold (did you mean \"address\"?); allowed: address, ca_cert, client_cert, client_key, token_file",
            ),
            (
                &format!("{BASE}schedule = \"hourly\"\n"),
                "agent.hcl:11:1: unknown key \"schedule\" at the top level; allowed: keyhold, approle, snapshot, s3, metrics",
            ),
            (
                &format!("{BASE}metrics {{\n  textfile = \"/var/lib/keyhold/textfile/keyhold_snapshot.prom\"\n  cluster = \"prod\"\n}}\n"),
                "ok",
            ),
            (
                &format!("{BASE}metrics {{\n  textfile = \"/var/lib/keyhold/textfile/snapshot.txt\"\n}}\n"),
                "agent.hcl:12:14: metrics.textfile: name a .prom file in node_exporter's textfile-collector directory, e.g. textfile = \"/var/lib/keyhold/textfile/keyhold_snapshot.prom\"",
            ),
            (
                &BASE.replace("bucket", "buckets"),
                "agent.hcl:8:3: unknown key \"buckets\" in s3 (did you mean \"bucket\"?); allowed: bucket, prefix, region, endpoint, kms_key_id",
            ),
            (
                &BASE.replace("keyhold {\n  address = \"https://127.0.0.1:8200\"\n}\n", ""),
                "agent.hcl: a keyhold block is required: add one naming this node's API, e.g. keyhold { address = \"https://127.0.0.1:8200\" }",
            ),
            (
                &BASE.replace("  address = \"https://127.0.0.1:8200\"\n", ""),
                "agent.hcl:1:1: address is required in keyhold: set it to this node's API address, e.g. \"https://127.0.0.1:8200\"",
            ),
            (
                &BASE.replace("https://127.0.0.1:8200", "127.0.0.1:8200"),
                "agent.hcl:2:13: keyhold.address: \"127.0.0.1:8200\" is not an http:// or https:// URL",
            ),
            (
                &BASE.replace("staging_dir = \"/tmp/s\"", "retain = 5"),
                "agent.hcl:4:1: staging_dir is required in snapshot: set it to a directory for the archive before its upload, e.g. \"/opt/keyhold/snapshots\"",
            ),
            (
                &BASE.replace("staging_dir", "retain = 0\n  staging_dir"),
                "agent.hcl:5:12: snapshot.retain: must be at least 1 (leave it out to keep every snapshot)",
            ),
            (
                &BASE.replace("staging_dir", "retain = -2\n  staging_dir"),
                "agent.hcl:5:12: snapshot.retain: must not be negative",
            ),
            (
                &BASE.replace("staging_dir", "retain_for = \"3 days\"\n  staging_dir"),
                "agent.hcl:5:16: snapshot.retain_for: invalid duration \"3 days\": unknown unit \" days\" (use s, m or h); expected a duration such as \"90s\" or \"1h\"",
            ),
            (
                &BASE.replace("staging_dir", "retain_for = \"0s\"\n  staging_dir"),
                "agent.hcl:5:16: snapshot.retain_for: must be longer than 0s (leave it out to keep by count only)",
            ),
            (
                &BASE.replace("staging_dir", "name_prefix = \"a/b\"\n  staging_dir"),
                "agent.hcl:5:17: snapshot.name_prefix: use at most 64 letters, digits, '-', '_' or '.' (put folders in s3.prefix)",
            ),
            (
                &BASE.replace("\"snaps\"", "\"Snaps/prod\""),
                "agent.hcl:8:12: s3.bucket: \"Snaps/prod\" is not a valid S3 bucket name: 3 to 63 lowercase letters, digits, '-' or '.' (a path inside the bucket goes in s3.prefix)",
            ),
            (
                &BASE.replace("  region = \"us-east-1\"\n", ""),
                "agent.hcl:7:1: region is required in s3: set it to the bucket's AWS region, e.g. \"us-east-1\"",
            ),
            (
                &BASE.replace("region", "prefix = \"/prod\"\n  region"),
                "agent.hcl:9:12: s3.prefix: must not start with '/': S3 keys are relative to the bucket (e.g. \"prod/\")",
            ),
            (
                &BASE.replace("region", "endpoint = \"localhost:5000\"\n  region"),
                "agent.hcl:9:14: s3.endpoint: \"localhost:5000\" is not an http:// or https:// URL",
            ),
            (
                &BASE.replace("address", "token_file = \"/t\"\n  address").replace("snapshot {", "approle {\n  role_id_file = \"/r\"\n  secret_id_file = \"/s\"\n}\nsnapshot {"),
                "agent.hcl:5:1: approle: keyhold.token_file is set too; log in one way: remove token_file, or the approle block",
            ),
            (
                &format!("{BASE}approle {{\n  role_id_file = \"/r\"\n}}\n"),
                "agent.hcl:11:1: secret_id_file is required in approle: set it to the file holding the secret ID",
            ),
            (
                &BASE.replace("address", "client_cert = \"/c\"\n  address"),
                "agent.hcl:1:1: client_key is required in keyhold: set it to the key of client_cert",
            ),
            (
                &format!("{BASE}s3 {{\n  bucket = \"other\"\n}}\n"),
                "agent.hcl:11:1: \"s3\" is set twice at the top level; the first is at line 7",
            ),
            (
                "keyhold {\n  address = \n}\n",
                "agent.hcl:2:13: HCL syntax error: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit",
            ),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(input, expected)| {
                let got = match AgentConfig::parse_str(input, "agent.hcl") {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                (got != *expected).then(|| {
                    format!("input:\n{input}\n  expected: {expected}\n  got:      {got}\n")
                })
            })
            .collect();
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn json_form_reads_the_same() {
        let json = r#"{"keyhold": {"address": "https://n1:8200", "token_file": "/t"},
            "snapshot": {"staging_dir": "/s", "retain": 2},
            "s3": {"bucket": "snaps", "region": "eu-west-1"}}"#;
        let c = AgentConfig::parse_str(json, "agent.json").unwrap();
        assert_eq!(c.keyhold.token_file, Some(PathBuf::from("/t")));
        assert_eq!(c.snapshot.retention.retain, Some(2));
        assert_eq!(c.snapshot.name_prefix, "keyhold");
        assert_eq!(c.s3.prefix, "");
        assert_eq!(c.approle, None);
    }

    #[test]
    fn a_missing_file_names_it() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.hcl")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/agent.hcl: cannot read the snapshot agent config:"),
            "{err}"
        );
    }
}
