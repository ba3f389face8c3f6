//! Config tests: the guide's production example field by field, then tables
//! of inputs and the exact error each must give.

use super::*;
use std::fs;

const PRODUCTION_RAFT: &str = include_str!("testdata/production-raft.hcl");
const SINGLE_NODE_TLS: &str = include_str!("testdata/single-node-tls.hcl");
const DEV_INMEM: &str = include_str!("testdata/dev-inmem.hcl");
const SINGLE_NODE_JSON: &str = include_str!("testdata/single-node.json");

fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
    ServerConfig::parse_str(text, "vault.hcl")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs every case and reports all mismatches at once, so one table run
/// shows every message that drifted.
fn check_all(cases: &[(&str, &str)], run: impl Fn(&str) -> String) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(input, expected)| {
            let got = run(input);
            (got != *expected)
                .then(|| format!("input:\n{input}\n  expected: {expected}\n  got:      {got}\n"))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The error `parse_str` gives for `input`, or "ok".
fn parse_outcome(input: &str) -> String {
    match parse(input) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// The first error `validate_semantics` gives for a config that parses.
fn semantic_outcome(input: &str) -> String {
    match parse(input) {
        Err(e) => format!("parse error: {e}"),
        Ok(c) => match c.validate_semantics() {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        },
    }
}

#[test]
fn production_raft_example_parses_field_by_field() {
    let c = ServerConfig::parse_str(PRODUCTION_RAFT, "production-raft.hcl").unwrap();

    let StorageConfig::Raft(raft) = &c.storage else {
        panic!("expected raft storage, got {:?}", c.storage)
    };
    assert_eq!(raft.path, PathBuf::from("/opt/vault/data"));
    assert_eq!(raft.node_id.as_deref(), Some("vault-1"));
    assert_eq!(raft.performance_multiplier, 1);
    assert_eq!(raft.effective_performance_multiplier(), 1);
    assert_eq!(raft.autopilot_reconcile_interval, secs(10));
    assert_eq!(raft.snapshot_threshold, 8192);
    assert_eq!(raft.trailing_logs, 10_000);
    assert_eq!(raft.max_entry_size, 1 << 20);
    assert_eq!(raft.autopilot_upgrade_version, None);
    assert_eq!(raft.autopilot_redundancy_zone, None);
    assert_eq!(raft.location, Location::new("production-raft.hcl", 3, 1));
    assert_eq!(raft.retry_join.len(), 2);
    for (join, (leader, line)) in raft.retry_join.iter().zip([
        ("https://vault-2.internal:8200", 11),
        ("https://vault-3.internal:8200", 17),
    ]) {
        assert_eq!(
            join,
            &RetryJoin {
                leader_api_addr: Some(leader.into()),
                leader_ca_cert_file: Some("/opt/vault/tls/ca.crt".into()),
                leader_client_cert_file: Some("/opt/vault/tls/vault.crt".into()),
                leader_client_key_file: Some("/opt/vault/tls/vault.key".into()),
                location: Location::new("production-raft.hcl", line, 1),
                ..RetryJoin::default()
            }
        );
    }

    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.address, "0.0.0.0:8200");
    assert_eq!(l.cluster_address.as_deref(), Some("0.0.0.0:8201"));
    assert!(!l.tls_disable);
    assert_eq!(l.tls_cert_file, Some("/opt/vault/tls/vault.crt".into()));
    assert_eq!(l.tls_key_file, Some("/opt/vault/tls/vault.key".into()));
    assert_eq!(l.tls_min_version, TlsVersion::Tls13);
    assert_eq!(l.tls_max_version, None);
    assert!(l.tls_cipher_suites.is_empty());
    assert!(!l.tls_require_and_verify_client_cert);
    assert!(!l.tls_disable_client_certs);
    assert_eq!(l.tls_client_ca_file, Some("/opt/vault/tls/ca.crt".into()));
    assert_eq!(l.max_request_size, 33_554_432);
    assert_eq!(l.max_request_duration, secs(90));
    assert!(l.telemetry.unauthenticated_metrics_access);
    assert_eq!(l.location, Location::new("production-raft.hcl", 25, 1));
    assert_eq!(
        l.keys["tls_min_version"],
        Location::new("production-raft.hcl", 31, 1)
    );

    assert_eq!(c.seal, SealConfig::Shamir);
    assert_eq!(c.api_addr.as_deref(), Some("https://vault-1.internal:8200"));
    assert_eq!(
        c.cluster_addr.as_deref(),
        Some("https://vault-1.internal:8201")
    );
    assert_eq!(c.cluster_name.as_deref(), Some("vault-prod"));
    assert!(c.ui);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.log_file, Some("/var/log/vault/vault.log".into()));
    assert_eq!(c.log_format, LogFormat::Standard);
    assert_eq!(c.log_rotate_duration, Some(secs(24 * 3600)));
    assert_eq!(c.log_rotate_max_files, Some(30));
    assert_eq!(c.log_rotate_bytes, None);
    assert_eq!(
        c.telemetry,
        TelemetryConfig {
            prometheus_retention_time: secs(30),
            disable_hostname: true,
            usage_gauge_period: Some(secs(600)),
            maximum_gauge_cardinality: Some(500),
        }
    );
    assert!(
        !c.disable_mlock,
        "disable_mlock is commented out in the guide"
    );
    assert_eq!(c.default_lease_ttl, secs(3600));
    assert_eq!(c.max_lease_ttl, secs(768 * 3600));
    assert_eq!(c.pid_file, None);
    assert!(!c.dev_mode);
    assert_eq!(
        c.location_of("max_lease_ttl"),
        Location::new("production-raft.hcl", 65, 1)
    );

    c.validate_semantics().unwrap();
    // The guide's certificates are not on this machine.
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "production-raft.hcl:29:1: listener.tcp.tls_cert_file: /opt/vault/tls/vault.crt not found"
    );

    // retry_join with leader_api_addr is supported: the guide's config runs as is.
    assert!(c.unsupported().is_empty(), "{:?}", c.unsupported());
    let auto = ServerConfig::parse_str(
        "storage \"raft\" {\n  path = \"/d\"\n  retry_join {\n    auto_join = \"provider=aws tag_key=k tag_value=v\"\n  }\n}\n",
        "vault.hcl",
    )
    .unwrap();
    let unsupported: Vec<String> = auto.unsupported().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        unsupported,
        ["vault.hcl:3:3: retry_join: auto_join (cloud auto-discovery) is not supported by this build; \
          list the nodes with leader_api_addr instead"]
    );
}

#[test]
fn single_node_tls_config_parses_and_validates_with_its_files() {
    let c = ServerConfig::parse_str(SINGLE_NODE_TLS, "single-node-tls.hcl").unwrap();
    let StorageConfig::Raft(raft) = &c.storage else {
        panic!("expected raft storage")
    };
    assert_eq!(raft.path, PathBuf::from("/var/lib/keyhold/data"));
    assert_eq!(raft.performance_multiplier, 0);
    assert_eq!(raft.effective_performance_multiplier(), 5);
    assert!(raft.retry_join.is_empty());
    assert_eq!(c.listeners[0].tls_min_version, TlsVersion::Tls12);
    assert!(c.disable_mlock);
    assert_eq!(c.default_lease_ttl, DEFAULT_LEASE_TTL);
    assert_eq!(c.telemetry, TelemetryConfig::default());
    assert_eq!(c.telemetry.usage_gauge_interval(), Some(secs(600)));
    assert_eq!(c.telemetry.gauge_cardinality(), 500);
    assert!(c.unsupported().is_empty());
    c.validate_semantics().unwrap();

    // With the certificate files present, `validate` passes too.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("node.crt");
    let key = dir.path().join("node.key");
    fs::write(&cert, "cert").unwrap();
    fs::write(&key, "key").unwrap();
    let text = SINGLE_NODE_TLS
        .replace("/etc/keyhold/tls/node.crt", cert.to_str().unwrap())
        .replace("/etc/keyhold/tls/node.key", key.to_str().unwrap());
    parse(&text).unwrap().validate().unwrap();
    fs::remove_file(&key).unwrap();
    assert_eq!(
        parse(&text).unwrap().validate().unwrap_err().to_string(),
        format!(
            "vault.hcl:10:3: listener.tcp.tls_key_file: {} not found",
            key.display()
        )
    );
}

#[test]
fn dev_configs_parse() {
    let c = ServerConfig::parse_str(DEV_INMEM, "dev-inmem.hcl").unwrap();
    assert_eq!(c.storage, StorageConfig::Inmem);
    assert!(c.listeners[0].tls_disable, "\"true\" as a string is a bool");
    assert!(c.ui);
    assert_eq!(c.log_level, "debug");
    c.validate().unwrap();

    let dev = ServerConfig::dev("127.0.0.1:8200");
    assert_eq!(dev.storage, StorageConfig::Inmem);
    assert_eq!(dev.listeners.len(), 1);
    assert_eq!(dev.listeners[0].address, "127.0.0.1:8200");
    assert!(dev.listeners[0].tls_disable);
    assert!(dev.disable_mlock);
    assert_eq!(dev.seal, SealConfig::Shamir);
    dev.validate().unwrap();
    assert!(dev.unsupported().is_empty());
}

#[test]
fn json_config_parses() {
    let c = ServerConfig::parse_str(SINGLE_NODE_JSON, "single-node.json").unwrap();
    let StorageConfig::Raft(raft) = &c.storage else {
        panic!("expected raft storage")
    };
    assert_eq!(raft.path, PathBuf::from("/var/lib/keyhold/data"));
    assert_eq!(raft.performance_multiplier, 1);
    assert_eq!(raft.location, Location::new("single-node.json", 2, 3));
    let joins: Vec<_> = raft
        .retry_join
        .iter()
        .map(|j| (j.leader_api_addr.as_deref().unwrap(), j.location.line))
        .collect();
    assert_eq!(
        joins,
        [
            ("https://node-2.internal:8200", 8),
            ("https://node-3.internal:8200", 9)
        ]
    );
    assert_eq!(c.listeners.len(), 2);
    assert!(c.listeners.iter().all(|l| l.tls_disable));
    assert!(!c.listeners[0].telemetry.unauthenticated_metrics_access);
    assert!(c.listeners[1].telemetry.unauthenticated_metrics_access);
    assert_eq!(c.listeners[1].location.line, 15);
    assert_eq!(c.seal, SealConfig::Shamir);
    assert_eq!(c.telemetry.prometheus_retention_time, secs(3600));
    assert_eq!(
        c.telemetry.usage_gauge_interval(),
        None,
        "\"none\" turns it off"
    );
    assert_eq!(c.default_lease_ttl, secs(3600));
    assert_eq!(c.log_format, LogFormat::Json);
    c.validate().unwrap();

    // The same settings in JSON and in HCL decode alike.
    let hcl = parse(SINGLE_NODE_TLS).unwrap();
    let json = ServerConfig::parse_str(
        r#"{"storage": {"raft": {"path": "/var/lib/keyhold/data", "node_id": "node-1"}},
            "listener": {"tcp": {"address": "0.0.0.0:8200",
                                 "tls_cert_file": "/etc/keyhold/tls/node.crt",
                                 "tls_key_file": "/etc/keyhold/tls/node.key",
                                 "tls_min_version": "tls12"}},
            "api_addr": "https://node-1.internal:8200",
            "cluster_addr": "https://node-1.internal:8201",
            "disable_mlock": true}"#,
        "vault.json",
    )
    .unwrap();
    assert_eq!(without_locations(json), without_locations(hcl));
}

fn without_locations(mut c: ServerConfig) -> ServerConfig {
    c.keys.clear();
    if let StorageConfig::Raft(raft) = &mut c.storage {
        raft.location = Location::default();
        raft.keys.clear();
    }
    for l in &mut c.listeners {
        l.location = Location::default();
        l.keys.clear();
    }
    c
}

#[test]
fn standby_reads_settings() {
    let base = "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n";
    let c = parse(base).unwrap();
    assert!(
        !c.disable_standby_reads,
        "OpenBao's default: standbys serve reads"
    );
    assert_eq!(c.standby_read_max_staleness, None);
    assert_eq!(c.standby_read_index_wait, None);
    let c = parse(&format!(
        "{base}disable_standby_reads = true\nstandby_read_max_staleness = \"1500ms\"\n\
         standby_read_index_wait = \"5s\"\n"
    ))
    .unwrap();
    assert!(c.disable_standby_reads);
    assert_eq!(
        c.standby_read_max_staleness,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(c.standby_read_index_wait, Some(secs(5)));
}

#[test]
fn hcl1_habits_are_accepted() {
    let base = "storage \"inmem\" {}\n";
    let c = parse(&format!(
        "{base}listener \"tcp\" {{\n  tls_disable = 1\n  max_request_duration = 30\n  \
         max_request_size = \"1024\"\n  tls_cipher_suites = \"TLS_A, TLS_B\"\n  \
         telemetry {{ unauthenticated_metrics_access = \"false\" }}\n}}\n\
         default_lease_ttl = 60\nmax_lease_ttl = \"2h30m\"\nlog_level = \"WARNING\"\n\
         cache_size = \"65536\"\n"
    ))
    .unwrap();
    let l = &c.listeners[0];
    assert!(l.tls_disable);
    assert_eq!(l.max_request_duration, secs(30));
    assert_eq!(l.max_request_size, 1024);
    assert_eq!(l.tls_cipher_suites, ["TLS_A", "TLS_B"]);
    assert!(!l.telemetry.unauthenticated_metrics_access);
    assert_eq!(c.default_lease_ttl, secs(60));
    assert_eq!(c.max_lease_ttl, secs(9000));
    assert_eq!(c.log_level, "warn");
    assert_eq!(c.cache_size, Some(65536));

    // 0 means "the default" for sizes, durations and TTLs, as in Vault.
    let c = parse(&format!(
        "{base}listener \"tcp\" {{\n  max_request_size = 0\n  max_request_duration = \"0s\"\n}}\n\
         default_lease_ttl = 0\n"
    ))
    .unwrap();
    assert_eq!(c.listeners[0].max_request_size, 33_554_432);
    assert_eq!(c.listeners[0].max_request_duration, secs(90));
    assert_eq!(c.default_lease_ttl, DEFAULT_LEASE_TTL);

    // Unquoted labels, heredocs and a list for cipher suites.
    let c = parse(
        "storage raft {\n  path = \"/data\"\n  retry_join {\n    leader_api_addr = \"https://a:8200\"\n    \
         leader_ca_cert = <<-EOT\n      -----BEGIN CERTIFICATE-----\n      EOT\n  }\n}\n\
         listener tcp {\n  tls_cipher_suites = [\"TLS_A\"]\n}\n",
    )
    .unwrap();
    let StorageConfig::Raft(raft) = &c.storage else {
        panic!("expected raft")
    };
    assert_eq!(
        raft.retry_join[0].leader_ca_cert.as_deref(),
        Some("-----BEGIN CERTIFICATE-----\n")
    );
    assert_eq!(c.listeners[0].tls_cipher_suites, ["TLS_A"]);
}

#[test]
fn seals_parse() {
    let c = parse(
        "storage \"inmem\" {}\nseal \"awskms\" {\n  region = \"us-east-1\"\n  \
         kms_key_id = \"arn:aws:kms:us-east-1:123456789012:key/abcd\"\n  \
         secret_key = \"AWS-SECRET\"\n  disabled = \"false\"\n}\n",
    )
    .unwrap();
    assert_eq!(
        c.seal,
        SealConfig::AwsKms {
            region: Some("us-east-1".into()),
            kms_key_id: "arn:aws:kms:us-east-1:123456789012:key/abcd".into(),
            endpoint: None,
            access_key: None,
            secret_key: Some("AWS-SECRET".into()),
            disabled: false,
        }
    );
    assert!(!format!("{c:?}").contains("AWS-SECRET"), "Debug redacts");
    assert!(c.unsupported().is_empty());
    assert_eq!(c.old_seal, None);

    // The guide's transit example.
    let c = parse(
        "storage \"inmem\" {}\nseal \"transit\" {\naddress = \"https://hcp-vault.example.com:8200\"\n\
         token = \"hvs.transit-unseal-token\"\ndisable_renewal = \"false\"\n\
         key_name = \"autounseal\"\nmount_path = \"transit/\"\ntls_skip_verify = true\n}\n",
    )
    .unwrap();
    let SealConfig::Transit {
        address,
        token,
        key_name,
        mount_path,
        tls_skip_verify,
        disable_renewal,
        ..
    } = &c.seal
    else {
        panic!("expected transit")
    };
    assert_eq!(address, "https://hcp-vault.example.com:8200");
    assert_eq!(token.as_deref(), Some("hvs.transit-unseal-token"));
    assert_eq!(
        (key_name.as_str(), mount_path.as_str()),
        ("autounseal", "transit/")
    );
    assert!(*tls_skip_verify && !*disable_renewal);
    assert!(
        !format!("{c:?}").contains("hvs."),
        "Debug redacts the token"
    );
    assert!(c.unsupported().is_empty());

    // A migration: the seal being left stays, marked disabled.
    let c = parse(
        "storage \"inmem\" {}\nseal \"transit\" {\naddress = \"https://t:8200\"\n\
         key_name = \"k\"\nmount_path = \"transit/\"\ndisabled = \"true\"\n}\n\
         seal \"awskms\" {\n  kms_key_id = \"alias/k\"\n}\n",
    )
    .unwrap();
    assert_eq!(c.seal.kind(), "awskms");
    assert!(!c.seal.is_disabled());
    let old = c.old_seal.as_ref().expect("the disabled stanza is kept");
    assert_eq!(old.kind(), "transit");
    assert!(old.is_disabled());
}

#[test]
fn parse_errors_name_file_line_and_key() {
    check_all(
        &[
            // Unknown keys, everywhere, with what is allowed there.
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_min_versoin = \"tls13\"\n}\n",
                "vault.hcl:3:3: unknown key \"tls_min_versoin\" in listener \"tcp\" (did you mean \
                 \"tls_min_version\"?); allowed: address, cluster_address, http_idle_timeout, http_read_header_timeout, max_json_array_element_count, max_json_depth, max_json_object_entry_count, max_json_string_value_length, max_request_duration, \
                 max_request_size, telemetry, tls_cert_file, tls_cipher_suites, tls_client_ca_file, \
                 tls_disable, tls_disable_client_certs, tls_key_file, tls_max_version, \
                 tls_min_version, tls_require_and_verify_client_cert",
            ),
            (
                "storage \"inmem\" {}\nhttp_idle_timeout = \"5m\"\n",
                "vault.hcl:2:1: unknown key \"http_idle_timeout\" at the top level; allowed: \
                 api_addr, audit, cache_size, cluster_addr, cluster_name, default_lease_ttl, \
                 disable_cache, disable_mlock, disable_standby_reads, \
                 enable_response_header_hostname, \
                 enable_response_header_raft_node_id, introspection_endpoint, listener, log_file, \
                 log_format, log_level, log_rotate_bytes, log_rotate_duration, \
                 log_rotate_max_files, max_lease_ttl, pid_file, plugin_directory, \
                 raw_storage_endpoint, seal, standby_read_index_wait, standby_read_max_staleness, \
                 storage, telemetry, ui, user_lockout",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  retry_join {\n    leader_api_adr = \"x\"\n  }\n}\n",
                "vault.hcl:4:5: unknown key \"leader_api_adr\" in storage \"raft\" retry_join \
                 (did you mean \"leader_api_addr\"?); allowed: auto_join, auto_join_port, \
                 auto_join_scheme, leader_api_addr, leader_ca_cert, leader_ca_cert_file, \
                 leader_client_cert, leader_client_cert_file, leader_client_key, \
                 leader_client_key_file, leader_tls_servername",
            ),
            (
                "storage \"inmem\" {}\ntelemetry {\n  statsd_address = \"x:8125\"\n}\n",
                "vault.hcl:3:3: unknown key \"statsd_address\" in telemetry; allowed: \
                 disable_hostname, maximum_gauge_cardinality, prometheus_retention_time, \
                 usage_gauge_period",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  telemetry {\n    foo = true\n  }\n}\n",
                "vault.hcl:4:5: unknown key \"foo\" in listener \"tcp\" telemetry; allowed: \
                 unauthenticated_metrics_access",
            ),
            (
                "storage \"inmem\" {}\ncache_size = -5\n",
                "vault.hcl:2:14: cache_size: must not be negative",
            ),
            (
                "storage \"inmem\" { path = \"/x\" }\n",
                "vault.hcl:1:19: unknown key \"path\" in storage \"inmem\"; this block takes no keys",
            ),
            (
                "storage \"inmem\" {}\nseal \"shamir\" {\n  key_shares = 5\n}\n",
                "vault.hcl:3:3: unknown key \"key_shares\" in seal \"shamir\"; this block takes no keys",
            ),
            // Unknown stanza types.
            (
                "storage \"consul\" {\n  address = \"127.0.0.1:8500\"\n}\n",
                "vault.hcl:1:9: unsupported storage type \"consul\"; Keyhold supports: raft, inmem",
            ),
            (
                "storage \"inmem\" {}\nseal \"azurekeyvault\" {}\n",
                "vault.hcl:2:6: unsupported seal type \"azurekeyvault\"; Keyhold supports: shamir, \
                 awskms, transit",
            ),
            (
                "storage \"inmem\" {}\nlistener \"unix\" {}\n",
                "vault.hcl:2:10: unsupported listener type \"unix\"; Keyhold supports: tcp",
            ),
            (
                "storage \"inmem\" {}\nlistener {\n  address = \"x\"\n}\n",
                "vault.hcl:2:1: a listener block needs a type label, e.g. listener \"tcp\" { \
                 address = \"...\" }",
            ),
            // Wrong types.
            (
                "storage \"inmem\" {}\napi_addr = 8200\n",
                "vault.hcl:2:12: api_addr: expected a string, got a number",
            ),
            (
                "storage \"inmem\" {}\nui = \"yes\"\n",
                "vault.hcl:2:6: ui: expected true or false, got a string",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  max_request_duration = true\n}\n",
                "vault.hcl:3:26: listener.tcp.max_request_duration: expected a duration such as \
                 \"90s\" or \"1h\", got a boolean",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  max_request_size = \"32MB\"\n}\n",
                "vault.hcl:3:22: listener.tcp.max_request_size: expected a whole number, got a string",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  retry_join = \"https://a:8200\"\n}\n",
                "vault.hcl:3:16: storage.raft.retry_join: expected a block, got a string",
            ),
            (
                "storage \"inmem\" {}\napi_addr = \"https://${host}:8200\"\n",
                "vault.hcl:2:12: api_addr: expected a string, got an interpolated string (\"${...}\")",
            ),
            (
                "storage \"inmem\" {}\ncluster_name = prod\n",
                "vault.hcl:2:16: cluster_name: expected a string, got a bare name (put strings in \
                 double quotes)",
            ),
            // Bad durations and numbers.
            (
                "storage \"inmem\" {}\ndefault_lease_ttl = \"1x\"\n",
                "vault.hcl:2:21: default_lease_ttl: invalid duration \"1x\": unknown unit \"x\" (use s, m \
                 or h); expected a duration such as \"90s\" or \"1h\"",
            ),
            (
                "storage \"inmem\" {}\nmax_lease_ttl = \"10\"\nlog_rotate_duration = -5\n",
                "vault.hcl:3:23: log_rotate_duration: must not be negative",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  max_request_size = -1\n}\n",
                "vault.hcl:3:22: listener.tcp.max_request_size: a negative size (no limit) is not \
                 supported; give a size in bytes, or 0 for the default of 33554432",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  retry_join {\n    auto_join_port = 70000\n  }\n}\n",
                "vault.hcl:4:22: storage.raft.retry_join.auto_join_port: must be at most 65535",
            ),
            // TLS versions.
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_min_version = \"tls10\"\n}\n",
                "vault.hcl:3:21: listener.tcp.tls_min_version: \"tls10\" is insecure and not \
                 supported; use \"tls12\" or \"tls13\"",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_max_version = \"tls11\"\n}\n",
                "vault.hcl:3:21: listener.tcp.tls_max_version: \"tls11\" is insecure and not \
                 supported; use \"tls12\" or \"tls13\"",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_min_version = \"TLSv1.2\"\n}\n",
                "vault.hcl:3:21: listener.tcp.tls_min_version: unknown TLS version \"TLSv1.2\"; \
                 use \"tls12\" or \"tls13\"",
            ),
            // Enumerations.
            (
                "storage \"inmem\" {}\nlog_level = \"verbose\"\n",
                "vault.hcl:2:13: log_level: unknown log level \"verbose\"; use one of trace, \
                 debug, info, warn, error",
            ),
            (
                "storage \"inmem\" {}\nlog_format = \"xml\"\n",
                "vault.hcl:2:14: log_format: unknown log format \"xml\"; use \"standard\" or \"json\"",
            ),
            // Required keys.
            (
                "storage \"raft\" {\n  node_id = \"n1\"\n}\n",
                "vault.hcl:1:1: path is required in storage \"raft\": set it to the directory \
                 where this node keeps its data",
            ),
            (
                "storage \"inmem\" {}\nseal \"transit\" {\n  address = \"https://v:8200\"\n  \
                 mount_path = \"transit/\"\n}\n",
                "vault.hcl:2:1: key_name is required in seal \"transit\": set it to the transit \
                 key to encrypt with",
            ),
            // Stanzas given twice.
            (
                "storage \"inmem\" {}\nstorage \"raft\" {\n  path = \"/d\"\n}\n",
                "vault.hcl:2:1: only one storage stanza is allowed; the first is at line 1",
            ),
            (
                "storage \"inmem\" {}\nseal \"shamir\" {}\nseal \"awskms\" {\n  kms_key_id = \"k\"\n}\n",
                "vault.hcl:3:1: only one seal stanza may be in force; the first is at line 2. \
                 To migrate between seals, mark the old one disabled = \"true\"",
            ),
            (
                "storage \"inmem\" {}\nseal \"awskms\" {\n  kms_key_id = \"k\"\n  disabled = true\n}\n\
                 seal \"transit\" {\n  address = \"https://t\"\n  key_name = \"k\"\n  \
                 mount_path = \"transit\"\n  disabled = true\n}\n",
                "vault.hcl:6:1: only one disabled seal stanza is allowed (the seal being \
                 migrated away from); the first is at line 2",
            ),
            (
                "storage \"inmem\" {}\nui = true\nui = false\n",
                "vault.hcl:3:1: HCL syntax error: invalid attribute; expected unique attribute key; \
                 found redefined attribute",
            ),
            // Syntax errors carry the parser's line and column.
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\n}\n",
                "vault.hcl:3:13: HCL syntax error: unterminated string: this quote is not closed on its line",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  node_id = \"n1\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n}\n",
                "vault.hcl:3:13: HCL syntax error: unterminated string: this quote is not closed on its line",
            ),
            (
                "# a \"quoted\" comment\nstorage \"inmem\" {\n  x = <<EOT\nhe said \"hi\nEOT\n  y = 1 +\n}\n",
                "vault.hcl:6:10: HCL syntax error: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit",
            ),
            (
                "storage \"inmem\" {\n",
                "vault.hcl:1:19: HCL syntax error: invalid block body; expected `}`, newline or identifier",
            ),
            // Empty files have no storage.
            (
                "",
                "vault.hcl: no storage stanza; add one, e.g. storage \"raft\" { path = \
                 \"/opt/keyhold/data\" }",
            ),
            (
                "# only a comment\n",
                "vault.hcl: no storage stanza; add one, e.g. storage \"raft\" { path = \
                 \"/opt/keyhold/data\" }",
            ),
        ],
        parse_outcome,
    );
}

#[test]
fn json_errors_name_line_and_key() {
    let run = |input: &str| match ServerConfig::parse_str(input, "vault.json") {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    check_all(
        &[
            (
                "{\n  \"storage\": {\"inmem\": {}},\n  \"listener\": {\"tcp\": {\n    \"adress\": \"x\"}}\n}",
                "vault.json:4:5: unknown key \"adress\" in listener \"tcp\" (did you mean \
                 \"address\"?); allowed: address, cluster_address, http_idle_timeout, http_read_header_timeout, max_json_array_element_count, max_json_depth, max_json_object_entry_count, max_json_string_value_length, max_request_duration, \
                 max_request_size, telemetry, tls_cert_file, tls_cipher_suites, tls_client_ca_file, \
                 tls_disable, tls_disable_client_certs, tls_key_file, tls_max_version, \
                 tls_min_version, tls_require_and_verify_client_cert",
            ),
            (
                "{\"storage\": {\"consul\": {}}}",
                "vault.json:1:14: unsupported storage type \"consul\"; Keyhold supports: raft, inmem",
            ),
            (
                "{\n  \"storage\": {\"inmem\": {}},\n  \"ui\": \"maybe\"\n}",
                "vault.json:3:9: ui: expected true or false, got a string",
            ),
            (
                "{\n  \"storage\": {\"inmem\": {}},\n}",
                "vault.json:3:1: JSON syntax error: key must be a string",
            ),
            (
                "{\"storage\": {\"inmem\": {}},\n \"ui\": true,\n \"ui\": false}",
                "vault.json:3:2: \"ui\" is set twice at the top level; the first is at line 2",
            ),
            ("[1, 2]", "vault.json:1:1: a JSON config must be an object, got a list"),
            (
                "",
                "vault.json: no storage stanza; add one, e.g. storage \"raft\" { path = \
                 \"/opt/keyhold/data\" }",
            ),
        ],
        run,
    );
}

#[test]
fn secrets_never_appear_in_errors() {
    let cases = [
        "storage \"inmem\" {}\nseal \"transit\" {\n  token = [\"hvs.SECRET\"]\n}\n",
        "storage \"inmem\" {}\nseal \"transit\" {\n  token = \"hvs.SECRET\"\n  tokn = 1\n}\n",
        "storage \"inmem\" {}\nseal \"transit\" {\n  token = \"hvs.SECRET\n}\n",
        "storage \"inmem\" {}\nseal \"awskms\" {\n  secret_key = \"hvs.SECRET\" oops\n}\n",
        "{\"storage\": {\"inmem\": {}}, \"seal\": {\"transit\": {\"token\": 'hvs.SECRET'}}}",
    ];
    for input in cases {
        let name = if input.starts_with('{') {
            "vault.json"
        } else {
            "vault.hcl"
        };
        let err = ServerConfig::parse_str(input, name)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }
}

#[test]
fn validation_errors_point_at_the_cause() {
    check_all(
        &[
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  address = \"0.0.0.0:8200\"\n}\n",
                "vault.hcl:2:1: listener \"tcp\" on 0.0.0.0:8200 serves TLS but has no \
                 tls_cert_file; set tls_cert_file and tls_key_file, or tls_disable = true for \
                 plain HTTP (never in production)",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_cert_file = \"/c\"\n}\n",
                "vault.hcl:2:1: listener \"tcp\" on 127.0.0.1:8200 serves TLS but has no \
                 tls_key_file; set tls_cert_file and tls_key_file, or tls_disable = true for \
                 plain HTTP (never in production)",
            ),
            (
                "storage \"inmem\" {}\n",
                "vault.hcl: no listener stanza; add one, e.g. listener \"tcp\" { address = \
                 \"0.0.0.0:8200\" } with tls_cert_file and tls_key_file set",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  performance_multiplier = 11\n}\n\
                 cluster_addr = \"https://n:8201\"\nlistener \"tcp\" { tls_disable = true }\n",
                "vault.hcl:3:3: storage.raft.performance_multiplier: 11 is above the maximum of \
                 10; use 1 for production clusters, or leave it unset for the default (5)",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n}\nlistener \"tcp\" { tls_disable = true }\n",
                "vault.hcl:1:1: storage \"raft\" needs cluster_addr, the address other nodes reach \
                 this one on; add e.g. cluster_addr = \"https://node-1.internal:8201\"",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 default_lease_ttl = \"48h\"\nmax_lease_ttl = \"24h\"\n",
                "vault.hcl:4:1: max_lease_ttl: (1day) is shorter than default_lease_ttl (2days); \
                 raise max_lease_ttl or lower default_lease_ttl",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 standby_read_max_staleness = \"0s\"\n",
                "vault.hcl:3:1: standby_read_max_staleness: must be greater than zero; to have \
                 standbys forward every read instead, set disable_standby_reads = true",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 standby_read_index_wait = \"5m\"\n",
                "vault.hcl:3:1: standby_read_index_wait: (5m) is over 60s: a client holding an \
                 index waits at most this long per request; use a few seconds (Vault waits 2s)",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 api_addr = \"node-1:8200\"\n",
                "vault.hcl:3:1: api_addr: \"node-1:8200\" is not a URL; give scheme and host, \
                 e.g. \"https://node-1.internal:8200\"",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_disable = true\n  address = \"8200\"\n}\n",
                "vault.hcl:4:3: listener.tcp.address: \"8200\" is not host:port, e.g. \
                 \"0.0.0.0:8200\"",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 listener \"tcp\" {\n  tls_disable = true\n}\n",
                "vault.hcl:3:1: listener.tcp.address: \"127.0.0.1:8200\" is already used by the \
                 listener at vault.hcl:2:1",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_disable = true\n  \
                 tls_min_version = \"tls13\"\n  tls_max_version = \"tls12\"\n}\n",
                "vault.hcl:5:3: listener.tcp.tls_max_version: is below tls_min_version (tls13)",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_disable = true\n  \
                 tls_require_and_verify_client_cert = true\n  tls_disable_client_certs = true\n}\n",
                "vault.hcl:4:3: listener.tcp.tls_require_and_verify_client_cert: cannot be \
                 combined with tls_disable_client_certs; set only one",
            ),
            (
                "storage \"raft\" {\n  path = \"/d\"\n  retry_join {\n    leader_ca_cert_file = \"/ca\"\n  \
                 }\n}\ncluster_addr = \"https://n:8201\"\nlistener \"tcp\" { tls_disable = true }\n",
                "vault.hcl:3:3: storage.raft.retry_join: set leader_api_addr (e.g. \
                 \"https://node-2.internal:8200\") or auto_join",
            ),
            (
                "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true }\n\
                 seal \"transit\" {\n  address = \"vault:8200\"\n  key_name = \"k\"\n  \
                 mount_path = \"transit/\"\n}\n",
                "vault.hcl:3:1: seal.transit.address: \"vault:8200\" is not a URL; give scheme \
                 and host, e.g. \"https://node-1.internal:8200\"",
            ),
        ],
        semantic_outcome,
    );
}

#[test]
fn unsupported_names_line_and_what_to_do() {
    let c = parse(
        "storage \"raft\" {\n  path = \"/d\"\n  autopilot_upgrade_version = \"1.2.3\"\n}\n\
         plugin_directory = \"/plugins\"\n",
    )
    .unwrap();
    let got: Vec<String> = c.unsupported().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "vault.hcl:3:3: storage.raft.autopilot_upgrade_version: autopilot upgrade migrations \
             are not supported by this build yet; remove it, or run a build that supports \
             automated upgrades",
            "vault.hcl:5:1: plugin_directory: Keyhold does not run external plugins; remove it",
        ]
    );
}

#[test]
fn load_reads_directories_in_name_order_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).unwrap();
    write(
        "10-storage.hcl",
        "storage \"raft\" {\n  path = \"/d\"\n}\nlog_level = \"debug\"\nui = true\n",
    );
    write(
        "20-listener.json",
        r#"{"listener": {"tcp": {"address": "127.0.0.1:8200", "tls_disable": true}},
            "log_level": "warn", "cluster_addr": "https://n:8201"}"#,
    );
    write(
        "30-more.hcl",
        "listener \"tcp\" {\n  address = \"127.0.0.1:9200\"\n  tls_disable = true\n}\n",
    );
    write("README.md", "not config");
    fs::create_dir(dir.path().join("sub.hcl")).unwrap();

    let c = ServerConfig::load(&[dir.path().to_path_buf()]).unwrap();
    assert!(matches!(c.storage, StorageConfig::Raft(_)));
    let addresses: Vec<&str> = c.listeners.iter().map(|l| l.address.as_str()).collect();
    assert_eq!(addresses, ["127.0.0.1:8200", "127.0.0.1:9200"]);
    assert_eq!(c.log_level, "warn", "later files win");
    assert!(c.ui, "keys a later file does not set are kept");
    assert_eq!(c.cluster_addr.as_deref(), Some("https://n:8201"));
    assert!(c
        .location_of("log_level")
        .file
        .ends_with("20-listener.json"));
    assert!(c.listeners[1].location.file.ends_with("30-more.hcl"));
    c.validate().unwrap();

    // A file and a directory together, file last: its scalars win.
    let extra = dir.path().join("override.conf");
    fs::write(&extra, "log_level = \"error\"\n").unwrap();
    let c = ServerConfig::load(&[dir.path().to_path_buf(), extra]).unwrap();
    assert_eq!(c.log_level, "error");
}

#[test]
fn load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.hcl");
    let b = dir.path().join("b.hcl");
    fs::write(&a, "storage \"inmem\" {}\n").unwrap();
    fs::write(&b, "ui = true\n\nstorage \"raft\" {\n  path = \"/d\"\n}\n").unwrap();
    let err = ServerConfig::load(&[a.clone(), b.clone()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{b}:3:1: storage is given twice, at {a}:1:1 and at {b}:3:1; keep exactly one \
             storage stanza across all config files",
            a = a.display(),
            b = b.display()
        )
    );
    assert_eq!(err.key, "storage");

    fs::write(&a, "seal \"shamir\" {}\nstorage \"inmem\" {}\n").unwrap();
    fs::write(&b, "seal \"shamir\" {}\n").unwrap();
    let err = ServerConfig::load(&[dir.path().to_path_buf()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{b}:1:1: seal is given twice, at {a}:1:1 and at {b}:1:1; keep exactly one seal \
             stanza across all config files",
            a = a.display(),
            b = b.display()
        )
    );

    let missing = dir.path().join("nope.hcl");
    assert_eq!(
        ServerConfig::load(std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string(),
        format!("{}: config file or directory not found", missing.display())
    );

    let empty_dir = dir.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    assert_eq!(
        ServerConfig::load(std::slice::from_ref(&empty_dir))
            .unwrap_err()
            .to_string(),
        format!(
            "{}: directory holds no .hcl or .json config files",
            empty_dir.display()
        )
    );

    let empty = dir.path().join("empty.hcl");
    fs::write(&empty, "").unwrap();
    assert_eq!(
        ServerConfig::load(std::slice::from_ref(&empty))
            .unwrap_err()
            .to_string(),
        format!(
            "{}: no storage stanza; add one, e.g. storage \"raft\" {{ path = \
             \"/opt/keyhold/data\" }}",
            empty.display()
        )
    );

    assert!(ServerConfig::load(&[]).is_err());
}

#[test]
fn error_display_and_fields() {
    let err =
        parse("storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_min_versoin = 1\n}\n").unwrap_err();
    assert_eq!(err.file(), "vault.hcl");
    assert_eq!((err.line(), err.column()), (3, 3));
    assert_eq!(err.key, "listener.tcp.tls_min_versoin");
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(boxed.to_string().starts_with("vault.hcl:3:3: unknown key"));
}

#[test]
fn hcl1_separators_are_accepted() {
    let cases = [
        "listener \"tcp\" { address = \"127.0.0.1:8201\" tls_disable = 1 }\n",
        "listener \"tcp\" { address = \"127.0.0.1:8201\", tls_disable = 1 }\n",
        "listener \"tcp\" {\n  address = \"127.0.0.1:8201\",\n  tls_disable = 1,\n}\n",
        "listener \"tcp\" {\n  address = \"127.0.0.1:8201\"  tls_disable = \"true\" # a, b = c\n}\n",
        "listener \"tcp\" { address = \"127.0.0.1:8201\"\n  tls_disable = true }\n",
        "listener \"tcp\" { address = \"127.0.0.1:8201\"\n  tls_disable = true\n}\n",
    ];
    for tail in cases {
        let text = format!("storage \"inmem\" {{}}\nui = true\n{tail}log_level = \"debug\"\n");
        let c = parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(c.listeners[0].address, "127.0.0.1:8201", "{text}");
        assert!(c.listeners[0].tls_disable, "{text}");
        assert_eq!(
            c.location_of("log_level").line,
            text.lines().count(),
            "{text}"
        );
        assert!(c.ui);
    }
    // Strings, lists and heredocs keep their commas.
    let c = parse(
        "storage \"inmem\" {}\nlistener \"tcp\" { tls_disable = true, tls_cipher_suites = [\"A\", \"B\"] }\n\
         cluster_name = \"a, b = c\"\n",
    )
    .unwrap();
    assert_eq!(c.listeners[0].tls_cipher_suites, ["A", "B"]);
    assert_eq!(c.cluster_name.as_deref(), Some("a, b = c"));
    // When even the relaxed form does not parse, the strict error is shown.
    assert_eq!(
        parse("storage \"inmem\" {}\nlistener \"tcp\" { address = \"x\" tls_disable }\n")
            .unwrap_err()
            .to_string(),
        "vault.hcl:2:32: HCL syntax error: invalid block body; expected `}`, newline or identifier"
    );
}

#[test]
fn audit_stanzas_parse_as_openbao_declares_them() {
    let c = parse(
        r#"
storage "inmem" {}
audit "file" "primary" {
  description = "every request"
  options {
    file_path = "/var/log/keyhold/audit.log"
    log_raw   = false
    mode      = "0600"
  }
}
audit "socket" "siem" {
  local = true
  options {
    address     = "127.0.0.1:9090"
    socket_type = "tcp"
  }
}
"#,
    )
    .unwrap();
    assert_eq!(c.audit.len(), 2);
    let file = &c.audit[0];
    assert_eq!(
        (
            file.device_type.as_str(),
            file.name.as_str(),
            file.description.as_str()
        ),
        ("file", "primary", "every request")
    );
    assert!(!file.local);
    assert_eq!(file.options["file_path"], "/var/log/keyhold/audit.log");
    assert_eq!(file.options["log_raw"], "false");
    assert_eq!(file.options["mode"], "0600");
    assert_eq!(file.location.line, 3);
    let socket = &c.audit[1];
    assert_eq!(socket.device_type, "socket");
    assert!(socket.local);
    assert_eq!(socket.options["socket_type"], "tcp");

    let json = ServerConfig::parse_str(
        r#"{"storage": {"inmem": {}}, "audit": {"syslog": {"sys": {"options": {"tag": "kh"}}}}}"#,
        "vault.json",
    )
    .unwrap();
    assert_eq!(json.audit[0].device_type, "syslog");
    assert_eq!(json.audit[0].name, "sys");
    assert_eq!(json.audit[0].options["tag"], "kh");
}

#[test]
fn audit_stanza_errors_name_the_device() {
    check_all(
        &[
            (
                "storage \"inmem\" {}\naudit \"kafka\" \"k\" {}",
                "vault.hcl:2:7: audit \"kafka\": unsupported audit device type; use one of file, syslog, socket",
            ),
            (
                "storage \"inmem\" {}\naudit \"file\" {\n  options {\n    file_path = \"x\"\n  }\n}",
                "vault.hcl:2:7: audit \"file\" needs a name label after the type, e.g. audit \"file\" \"primary\" { options { file_path = \"/var/log/keyhold/audit.log\" } }",
            ),
            (
                "storage \"inmem\" {}\naudit \"file\" \"a\" { path = \"x\" }",
                "vault.hcl:2:20: unknown key \"path\" in audit \"file\" \"a\"; allowed: description, local, options",
            ),
            (
                "storage \"inmem\" {}\naudit \"file\" \"a\" {\n  options {\n    file_path = [\"x\"]\n  }\n}",
                "vault.hcl:4:17: audit \"file\" \"a\": option \"file_path\": expected a string, got a list",
            ),
            (
                "storage \"inmem\" {}\naudit \"file\" \"a\" {}\naudit \"syslog\" \"a\" {}",
                "vault.hcl:3:16: audit device \"a\" is declared twice, at vault.hcl:2:14 and at vault.hcl:3:16; give each audit stanza its own name",
            ),
        ],
        parse_outcome,
    );
}
