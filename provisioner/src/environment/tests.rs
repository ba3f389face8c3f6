//! Environment files: the shipped ones load; every mistake names its file, line and key.

use std::path::{Path, PathBuf};

use super::*;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(ENVIRONMENTS_DIR)
        .join(format!("{name}.hcl"))
}

/// Parses `text` as `environments/t.hcl` (so policy files resolve against the shipped ones).
fn parse(text: &str) -> Result<Environment, keyhold_config::ConfigError> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(ENVIRONMENTS_DIR)
        .join("t.hcl");
    parse_str(&file, text)
}

const MINIMAL: &str = r#"
policy "vault-admin" { file = "policies/vault-admin.hcl" }
auth "userpass" {
  user "admin" { policies = ["vault-admin"] }
}
"#;

#[test]
fn shipped_environments_load() {
    let local = load(&shipped("local")).unwrap();
    assert_eq!(local.name, "local");
    assert_eq!(local.nodes, 3);
    assert_eq!(local.listener.tls_min_version, TlsVersion::Tls13);
    assert_eq!(
        (local.init.secret_shares, local.init.secret_threshold),
        (5, 3)
    );
    assert!(local.init.revoke_root_token);
    assert!(local.policies.iter().any(|p| p.name == "vault-admin"));
    assert_eq!(local.audit.len(), 1);

    let five = load(&shipped("local-5")).unwrap();
    assert_eq!(five.nodes, 5);
    let Provider::Local(p5) = &five.provider else {
        panic!("a local environment")
    };
    let Provider::Local(p3) = &local.provider else {
        panic!("a local environment")
    };
    assert_ne!(
        p5.address_base, p3.address_base,
        "environments must not share addresses"
    );

    // The production shape: five nodes, KMS, two audit devices, S3 snapshots with retention.
    let prod = load(&shipped("local-production")).unwrap();
    assert_eq!(prod.nodes, 5);
    assert!(matches!(prod.seal, crate::environment::Seal::AwsKms(_)));
    assert_eq!(prod.audit.len(), 2);
    assert!(prod.init.revoke_root_token);
    let snapshots = prod.snapshots.as_ref().expect("snapshots");
    assert_eq!(snapshots.retain, Some(24));
    assert!(snapshots.s3.as_ref().is_some_and(|s| !s.bucket.is_empty()));
    let drill = snapshots.drill.as_ref().expect("scheduled drills");
    assert!(drill.after_upload && drill.schedule.as_deref() == Some("daily"));
    let Provider::Local(pp) = &prod.provider else {
        panic!("a local environment")
    };
    assert_ne!(
        pp.address_base, p5.address_base,
        "environments must not share addresses"
    );

    let ci = load(&shipped("ci")).unwrap();
    assert_eq!(ci.nodes, 3);
    assert!(!ci.init.revoke_root_token);
    assert_eq!(ci.autopilot.server_stabilization_time.as_secs(), 2);
    let Provider::Local(pc) = &ci.provider else {
        panic!("a local environment")
    };
    assert_ne!(pc.address_base, p3.address_base);

    let kms = load(&shipped("local-kms")).unwrap();
    assert_eq!(kms.seal.kind(), "awskms");
    assert!(kms.seal.is_auto());
    assert_eq!(
        (kms.init.secret_shares, kms.init.secret_threshold),
        (5, 3),
        "recovery_shares / recovery_threshold"
    );
    let Provider::Local(pk) = &kms.provider else {
        panic!("a local environment")
    };
    let bases = [p3.address_base, p5.address_base, pc.address_base];
    assert!(
        !bases.contains(&pk.address_base),
        "local-kms shares a range"
    );

    let transit = load(&shipped("local-transit")).unwrap();
    let Seal::Transit(seal) = &transit.seal else {
        panic!("local-transit: {:?}", transit.seal)
    };
    let unsealer = transit
        .unsealer
        .as_ref()
        .expect("local-transit has an unsealer");
    assert_eq!(seal.address, format!("https://{}:8200", unsealer.address));
    assert_eq!(seal.tls_ca_cert, None, "filled in per node by the renderer");
    let Provider::Local(pt) = &transit.provider else {
        panic!("a local environment")
    };
    assert!(
        !bases.contains(&pt.address_base) && pt.address_base != pk.address_base,
        "local-transit shares a range"
    );
}

#[test]
fn an_unsealer_needs_a_transit_seal_and_an_address_of_its_own() {
    let ok = parse(&format!(
        "{MINIMAL}\nunsealer {{\n  address = \"127.0.9.9\"\n}}\nseal \"transit\" {{\n  key_name = \"k\"\n}}\n"
    ))
    .unwrap();
    assert_eq!(
        ok.unsealer.map(|u| u.address.to_string()).as_deref(),
        Some("127.0.9.9")
    );
    let bad: &[(&str, &str)] = &[
        ("unsealer {\n  address = \"127.0.9.9\"\n}\n", "transit"),
        (
            "unsealer {\n  address = \"127.0.1.2\"\n}\nseal \"transit\" {\n  key_name = \"k\"\n}\n",
            "cluster's node addresses",
        ),
        (
            "unsealer {\n  address = \"10.0.0.1\"\n}\nseal \"transit\" {\n  key_name = \"k\"\n}\n",
            "not a usable loopback address",
        ),
        (
            "unsealer {}\nseal \"transit\" {\n  key_name = \"k\"\n}\n",
            "address",
        ),
    ];
    for (text, words) in bad {
        let err = parse(&format!("{MINIMAL}\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(words), "{text}: {err}");
    }
}

#[test]
fn defaults_fill_a_minimal_file() {
    let env = parse(MINIMAL).unwrap();
    assert_eq!(env.nodes, 3);
    assert_eq!(env.listener.api_port, 8200);
    assert_eq!(env.listener.cluster_port, 8201);
    assert_eq!(env.seal, Seal::Shamir);
    assert_eq!(env.admin.user, "admin");
    assert!(env.snapshots.is_none());
}

/// Each case: text appended to MINIMAL (or replacing it when it starts with `!`), the line
/// the error must point at, and words the message must contain.
#[test]
fn mistakes_name_file_line_and_key() {
    let cases: &[(&str, usize, &[&str])] = &[
        ("nodez = 3", 6, &["unknown key \"nodez\"", "did you mean \"nodes\""]),
        ("nodes = 4", 6, &["4 nodes", "use 1, 3 or 5"]),
        ("nodes = \"three\"", 6, &["nodes", "whole number"]),
        ("nodes = 3\nnodes = 5", 7, &["redefined"]),
        (
            "server { binary = \"/nonexistent/keyhold\" }",
            6,
            &["server.binary", "/nonexistent/keyhold", "not an executable"],
        ),
        (
            "listener {\n  api_port = 8201\n  cluster_port = 8201\n}",
            8,
            &["cluster_port", "must differ"],
        ),
        (
            "listener {\n  tls_min_version = \"tls10\"\n}",
            7,
            &["insecure"],
        ),
        ("provider \"gcp\" {}", 6, &["unknown provider \"gcp\"", "local, ssh"]),
        (
            "provider \"ssh\" {\n  private_key_file = \"k\"\n}",
            6,
            &["hosts is required in provider \"ssh\""],
        ),
        (
            "provider \"ssh\" {\n  hosts = [\"10.0.0.1\", \"web-2\", \"10.0.0.3\"]\n  private_key_file = \"k\"\n}",
            7,
            &["provider.ssh.hosts", "\"web-2\" is not an IP address"],
        ),
        (
            "provider \"ssh\" {\n  hosts = [\"10.0.0.1\", \"10.0.0.2\"]\n  private_key_file = \"k\"\n}",
            7,
            &["2 hosts", "1, 3 or 5"],
        ),
        (
            "provider \"ssh\" {\n  hosts = [\"10.0.0.1\"]\n}",
            6,
            &["private_key_file is required"],
        ),
        (
            "provider \"ssh\" {\n  hosts = [\"10.0.0.1\"]\n  private_key_file = \"k\"\n  host_key_fingerprints = [\"MD5:aa\"]\n}",
            9,
            &["host_key_fingerprints", "not a SHA256 fingerprint"],
        ),
        (
            "provider \"ssh\" {\n  hosts = [\"10.0.0.1\"]\n  private_key_file = \"k\"\n}\nnodes = 3",
            10,
            &["nodes = 3", "names 1 hosts"],
        ),
        (
            "provider \"local\" { address_base = \"10.0.0.1\" }",
            6,
            &["address_base", "loopback"],
        ),
        ("seal \"awskms\" {}", 6, &["kms_key_id"]),
        ("seal \"hsm\" {}", 6, &["unknown seal \"hsm\"", "awskms"]),
        (
            "seal \"awskms\" {\n  kms_key_id = \"k\"\n  endpoint = \"localhost:5000\"\n}",
            8,
            &["seal.awskms.endpoint", "not a URL"],
        ),
        (
            "seal \"transit\" {\n  address = \"https://u:8200\"\n  key_name = \"k\"\n  token = \"s.x\"\n}",
            9,
            &["seal.transit.token", "VAULT_TOKEN"],
        ),
        (
            "seal \"awskms\" { kms_key_id = \"k\" }\ninit {\n  secret_shares = 3\n}",
            8,
            &["init.secret_shares", "recovery_shares"],
        ),
        (
            "init {\n  recovery_shares = 3\n}",
            7,
            &["init.recovery_shares", "only under an auto seal"],
        ),
        (
            "seal \"awskms\" { kms_key_id = \"k\" }\ninit {\n  recovery_shares = 3\n  recovery_threshold = 1\n}",
            9,
            &["recovery_threshold", "at least 2 when recovery_shares"],
        ),
        (
            "init {\n  secret_shares = 3\n  secret_threshold = 4\n}",
            8,
            &["secret_threshold", "from 1 to secret_shares (3)"],
        ),
        (
            "init {\n  recipients = [\"AGE-SECRET-KEY-1QQQQ\"]\n}",
            7,
            &["identity", "public key"],
        ),
        (
            "init {\n  recipients = [\"bob@example.com\"]\n}",
            7,
            &["entry 1", "age1"],
        ),
        (
            "init {\n  secret_shares = 3\n  recipients = [\"age1a\", \"age1b\"]\n  per_share_recipients = true\n}",
            9,
            &["exactly secret_shares (3)", "2 given"],
        ),
        ("audit \"syslog\" {}", 6, &["unsupported audit device \"syslog\""]),
        (
            "listener {\n  max_request_size = 0\n}",
            7,
            &["max_request_size", "above 0"],
        ),
        (
            "policy \"ops\" { file = \"policies/nope.hcl\" }",
            6,
            &["policy.file", "nope.hcl", "cannot read"],
        ),
        (
            "auth \"approle\" {\n  role \"ci\" { token_policies = [\"typo\"] }\n}",
            7,
            &["token_policies", "\"typo\" is not defined"],
        ),
        ("tls { cert_lifetime = \"soon\" }", 6, &["tls.cert_lifetime", "duration"]),
        ("secrets \"kv\" { version = 3 }", 6, &["version", "use 1 or 2"]),
        ("snapshots { retain = 0 }", 6, &["retain", "at least 1"]),
        (
            "snapshots {\n  s3 { region = \"eu-west-1\" }\n}",
            7,
            &["bucket is required in snapshots.s3"],
        ),
        (
            "snapshots {\n  s3 { bucket = \"Bad_Bucket\" }\n}",
            7,
            &["snapshots.s3.bucket", "S3 bucket name"],
        ),
        (
            "snapshots {\n  s3 {\n    bucket = \"b-1\"\n    endpoint = \"localhost:5000\"\n  }\n}",
            9,
            &["snapshots.s3.endpoint", "http://"],
        ),
        (
            "snapshots {\n  s3 { buckett = \"b-1\" }\n}",
            7,
            &["buckett", "did you mean \"bucket\""],
        ),
        (
            "snapshots {\n  drill { after_upload = true }\n}",
            7,
            &["snapshots.drill", "add snapshots { s3 { bucket"],
        ),
        (
            "snapshots {\n  s3 { bucket = \"b-1\" }\n  drill {}\n}",
            8,
            &["snapshots.drill", "schedule = \"weekly\"", "after_upload = true"],
        ),
        (
            "snapshots {\n  s3 { bucket = \"b-1\" }\n  drill {\n    schedule = \"fortnightly\"\n  }\n}",
            9,
            &["snapshots.drill.schedule", "unknown schedule", "weekly"],
        ),
        (
            "snapshots {\n  s3 { bucket = \"b-1\" }\n  drill {\n    after_upload = true\n    poll_interval = \"10ms\"\n  }\n}",
            10,
            &["poll_interval", "at least 1s"],
        ),
        (
            "policy \"vault-admin\" { file = \"policies/vault-admin.hcl\" }",
            6,
            &["policy \"vault-admin\" is defined twice", "first is at line 2"],
        ),
        (
            "auth \"approle\" {\n  role \"ci\" {}\n  role \"ci\" {}\n}",
            8,
            &["role \"ci\" is defined twice", "first is at line 7"],
        ),
        (
            "!auth \"userpass\" {\n  user \"bob\" {}\n}",
            1,
            &["admin login", "\"admin\""],
        ),
    ];
    for (snippet, line, words) in cases {
        let text = match snippet.strip_prefix('!') {
            Some(whole) => whole.to_string(),
            None => format!("{MINIMAL}{snippet}\n"),
        };
        let err = match parse(&text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(shown.contains("t.hcl"), "{snippet}: no file in {shown}");
        assert_eq!(err.line(), *line, "{snippet}: wrong line in {shown}");
        for word in *words {
            assert!(shown.contains(word), "{snippet}: {word:?} not in {shown}");
        }
    }
}

#[test]
fn auto_seals_decode_with_recovery_shares() {
    let env = parse(&format!(
        "{MINIMAL}seal \"awskms\" {{\n  region = \"us-east-1\"\n  kms_key_id = \"alias/k\"\n  \
         endpoint = \"http://127.0.0.1:5000\"\n}}\ninit {{\n  recovery_shares = 3\n  \
         recovery_threshold = 2\n}}\n"
    ))
    .unwrap();
    assert_eq!(
        env.seal,
        Seal::AwsKms(AwsKms {
            region: Some("us-east-1".into()),
            kms_key_id: "alias/k".into(),
            endpoint: Some("http://127.0.0.1:5000".into()),
        })
    );
    assert!(env.seal.is_auto());
    assert_eq!((env.init.secret_shares, env.init.secret_threshold), (3, 2));

    let env = parse(&format!(
        "{MINIMAL}seal \"transit\" {{\n  address = \"https://127.0.5.1:8200\"\n  \
         key_name = \"autounseal\"\n}}\n"
    ))
    .unwrap();
    let Seal::Transit(t) = &env.seal else {
        panic!("{:?}", env.seal)
    };
    assert_eq!(t.mount_path, "transit/");
    assert_eq!(t.key_name, "autounseal");
}

#[test]
fn a_missing_file_says_where_environments_live() {
    let err = load(Path::new("environments/nope.hcl")).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("environments/nope.hcl"), "{shown}");
    assert!(shown.contains("environments/NAME.hcl"), "{shown}");
}

#[test]
fn resolve_takes_names_and_paths() {
    assert_eq!(resolve("ci"), Path::new("environments/ci.hcl"));
    assert_eq!(resolve("x/y.hcl"), Path::new("x/y.hcl"));
    assert_eq!(resolve("/tmp/e.hcl"), Path::new("/tmp/e.hcl"));
}

#[test]
fn snapshots_s3_block_decodes_with_defaults() {
    let cases: &[(&str, Option<SnapshotS3>)] = &[
        ("snapshots {}", None),
        (
            "snapshots {\n  s3 { bucket = \"kh-snaps\" }\n}",
            Some(SnapshotS3 {
                bucket: "kh-snaps".into(),
                prefix: String::new(),
                region: "us-east-1".into(),
                endpoint: None,
                kms_key_id: None,
            }),
        ),
        (
            "snapshots {\n  schedule = \"every 2s\"\n  s3 {\n    bucket = \"kh-snaps\"\n    prefix = \"prod/\"\n    region = \"eu-west-1\"\n    endpoint = \"http://127.0.0.1:5000\"\n    kms_key_id = \"alias/snaps\"\n  }\n}",
            Some(SnapshotS3 {
                bucket: "kh-snaps".into(),
                prefix: "prod/".into(),
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
                kms_key_id: Some("alias/snaps".into()),
            }),
        ),
    ];
    for (text, want) in cases {
        let env = parse(&format!("{MINIMAL}\n{text}")).unwrap();
        assert_eq!(&env.snapshots.unwrap().s3, want, "{text}");
    }
}

#[test]
fn an_ssh_environment_decodes_with_defaults() {
    let env = parse(&format!(
        "{MINIMAL}\nprovider \"ssh\" {{\n  hosts = [\"10.0.0.11\", \"10.0.0.12\", \"10.0.0.13\"]\n  \
         private_key_file = \"keys/id_ed25519\"\n  user = \"admin\"\n}}\n"
    ))
    .unwrap();
    assert_eq!(env.nodes, 3, "one node per host");
    let Provider::Ssh(ssh) = &env.provider else {
        panic!("an ssh environment")
    };
    assert_eq!(ssh.port, 22);
    assert!(ssh.sudo, "a user other than root goes through sudo");
    assert!(!ssh.trust_on_first_use);
    assert!(
        ssh.private_key_file
            .ends_with("environments/keys/id_ed25519"),
        "relative to the environment file: {}",
        ssh.private_key_file.display()
    );
    assert!(ssh.known_hosts.ends_with(".ssh/known_hosts"));
}
