//! The renderer against fixed environments: snapshots of every file, the server config read
//! back by keyhold's parser and by an independent HCL parser (python-hcl2), the units checked
//! by `systemd-analyze verify` and scored by `systemd-analyze security`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::environment::*;

/// The highest `systemd-analyze security` exposure a unit may have (DESIGN.md).
const MAX_EXPOSURE: f64 = 2.0;

/// A 3-node environment. `full` adds everything optional: snapshots, log rotation, a Raft
/// snapshot threshold, TLS 1.3 and an audit file outside the log directory.
fn environment(full: bool) -> Environment {
    let audit = |path: &str, file: &str| AuditDevice {
        kind: "file".into(),
        path: path.into(),
        file_path: file.into(),
        options: Vec::new(),
    };
    let mut audit_devices = vec![audit("file/", "audit.log")];
    if full {
        audit_devices.push(audit("file2/", "/srv/audit/keyhold-audit.log"));
        audit_devices.push(audit("stdout/", "stdout"));
    }
    Environment {
        name: "staging".into(),
        file: PathBuf::from("environments/staging.hcl"),
        provider: Provider::Local(crate::providers::local::LocalSettings {
            address_base: Ipv4Addr::new(127, 0, 1, 1),
        }),
        nodes: 3,
        server: Server {
            binary: None,
            version: None,
        },
        listener: Listener {
            api_port: 8200,
            cluster_port: 8201,
            max_request_size: full.then_some(64 << 20),
            tls_min_version: if full {
                TlsVersion::Tls13
            } else {
                TlsVersion::Tls12
            },
        },
        raft: Raft {
            performance_multiplier: 1,
            snapshot_threshold: full.then_some(8192),
        },
        autopilot: Autopilot {
            cleanup_dead_servers: true,
            dead_server_last_contact_threshold: Duration::from_secs(600),
            last_contact_threshold: Duration::from_secs(10),
            max_trailing_logs: 1000,
            min_quorum: 3,
            server_stabilization_time: Duration::from_secs(10),
        },
        log: Log {
            level: "info".into(),
            format: if full { "json" } else { "standard" }.into(),
            rotate_bytes: full.then_some(104_857_600),
            rotate_duration: full.then_some(Duration::from_secs(24 * 3600)),
            rotate_max_files: full.then_some(0),
        },
        seal: if full {
            Seal::AwsKms(AwsKms {
                region: Some("eu-west-1".into()),
                kms_key_id: "alias/keyhold-prod".into(),
                endpoint: None,
            })
        } else {
            Seal::Shamir
        },
        init: Init {
            secret_shares: 5,
            secret_threshold: 3,
            recipients: Vec::new(),
            per_share_recipients: false,
            revoke_root_token: true,
        },
        tls: Tls {
            ca_lifetime: Duration::from_secs(10 * 365 * 86400),
            cert_lifetime: Duration::from_secs(365 * 86400),
            extra_sans: Vec::new(),
        },
        audit: audit_devices,
        policies: Vec::new(),
        auth: Vec::new(),
        secrets: Vec::new(),
        admin: Admin {
            auth_path: "userpass".into(),
            user: "admin".into(),
        },
        snapshots: full.then(|| Snapshots {
            schedule: "*-*-* *:00/15:00".into(),
            retain: Some(96),
            retain_for: None,
            s3: Some(SnapshotS3 {
                bucket: "keyhold-snapshots".into(),
                prefix: "prod/".into(),
                region: "eu-west-1".into(),
                endpoint: None,
                kms_key_id: Some("alias/keyhold-snapshots".into()),
            }),
            drill: Some(DrillSchedule {
                schedule: Some("weekly".into()),
                after_upload: true,
                poll_interval: DEFAULT_DRILL_POLL,
            }),
        }),
        unsealer: None,
    }
}

/// Hosts' addresses.
fn addresses() -> Vec<IpAddr> {
    ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect()
}

/// Local nodes' addresses: the loopback addresses the local provider gives them.
fn local_addresses() -> Vec<IpAddr> {
    (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
        .collect()
}

/// Node `index` of a 3-node cluster (on hosts or local), every node laid out by `layout`.
fn node(env: &Environment, index: usize, layout: Layout) -> NodeSpec {
    let addresses = if layout.systemd {
        addresses()
    } else {
        local_addresses()
    };
    let mut nodes = NodeSpec::cluster(env, &addresses, |_| layout.clone()).unwrap();
    nodes.remove(index - 1)
}

fn render(env: &Environment, node: &NodeSpec) -> Vec<RenderedFile> {
    Renderer::new().unwrap().render_node(env, node).unwrap()
}

/// Every file, one after the other, under a header with its path, mode and purpose.
fn listing(files: &[RenderedFile]) -> String {
    let mut out = String::new();
    for f in files {
        out.push_str(&format!(
            "=== {} ({:04o}, {})\n{}\n",
            f.path.display(),
            f.mode,
            f.purpose,
            f.content
        ));
    }
    out
}

fn server_config(files: &[RenderedFile]) -> &str {
    &files
        .iter()
        .find(|f| f.path == Path::new(Layout::SERVER_CONFIG))
        .expect("a server config")
        .content
}

#[test]
fn host_files_snapshots() {
    for (label, full, index) in [
        ("node1_minimal", false, 1),
        ("node3_minimal", false, 3),
        ("node1_full", true, 1),
        ("node3_full", true, 3),
    ] {
        let env = environment(full);
        let files = render(&env, &node(&env, index, Layout::system()));
        insta::assert_snapshot!(format!("host_{label}"), listing(&files));
    }
}

#[test]
fn local_config_snapshot() {
    let env = environment(false);
    let layout = Layout::local(PathBuf::from("/srv/provision/local/nodes/keyhold-1"));
    let files = render(&env, &node(&env, 1, layout));
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(
        paths,
        [Path::new(Layout::SERVER_CONFIG)],
        "a local node gets its config only"
    );
    insta::assert_snapshot!("local_node1_config", server_config(&files));
}

/// A transit seal, rendered for a local node, read back by keyhold's parser and python-hcl2.
#[test]
fn transit_seal_config_snapshot() {
    let mut env = environment(false);
    env.seal = Seal::Transit(TransitSeal {
        address: "https://127.0.5.1:8200".into(),
        key_name: "autounseal".into(),
        mount_path: "transit/".into(),
        namespace: None,
        tls_ca_cert: Some(PathBuf::from("/srv/provision/unsealer/tls/ca.crt")),
        tls_client_cert: None,
        tls_client_key: None,
        tls_server_name: Some("keyhold-1".into()),
        disable_renewal: false,
    });
    let layout = Layout::local(PathBuf::from("/srv/provision/local/nodes/keyhold-1"));
    let files = render(&env, &node(&env, 1, layout));
    let config = server_config(&files);
    hcl2_parses(config);
    insta::assert_snapshot!("local_node1_transit_config", config);
}

/// The snapshot agent config of a local node (every node gets one when snapshots name a
/// bucket), read back by the agent's own parser.
#[test]
fn snapshot_agent_config_snapshot() {
    let mut env = environment(false);
    env.snapshots = Some(Snapshots {
        schedule: "every 2s".into(),
        retain: Some(5),
        retain_for: Some(Duration::from_secs(7 * 24 * 3600)),
        s3: Some(SnapshotS3 {
            bucket: "keyhold-snapshots".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:5000".into()),
            kms_key_id: None,
        }),
        drill: None,
    });
    let root = PathBuf::from("/srv/provision/local/nodes/keyhold-2");
    let layout = Layout::local(root.clone());
    let files = render(&env, &node(&env, 2, layout));
    let file = files
        .iter()
        .find(|f| f.path == Path::new(Layout::SNAPSHOT_AGENT_CONFIG))
        .expect("agent config rendered");
    assert_eq!(file.mode, 0o640);
    let config = keyhold_snapshot::AgentConfig::parse_str(&file.content, "snapshot-agent.hcl")
        .unwrap_or_else(|e| panic!("{e}\n{}", file.content));
    assert_eq!(config.keyhold.address, "https://127.0.1.2:8200");
    let approle = config.approle.as_ref().expect("approle block");
    assert_eq!(approle.mount, "approle");
    assert_eq!(
        approle.secret_id_file,
        root.join(Layout::SNAPSHOT_SECRET_ID)
    );
    assert_eq!(config.snapshot.staging_dir, root.join(Layout::SNAPSHOT_DIR));
    assert_eq!(config.s3.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(config.s3.bucket, "keyhold-snapshots");
    let metrics = config.metrics.as_ref().expect("metrics block");
    assert_eq!(metrics.textfile, root.join(Layout::SNAPSHOT_METRICS));
    assert_eq!(metrics.cluster, "staging");
    insta::assert_snapshot!("local_node2_snapshot_agent", file.content);

    // Without a bucket, no agent config.
    env.snapshots.as_mut().unwrap().s3 = None;
    let layout = Layout::local(root);
    assert!(render(&env, &node(&env, 2, layout))
        .iter()
        .all(|f| f.path != Path::new(Layout::SNAPSHOT_AGENT_CONFIG)));
}

/// The monitoring files of an environment: the scrape config names every node, the alert
/// rules' staleness follows the snapshot schedule (every 15 minutes: stale after an hour), and
/// the dashboard is JSON. promtool checks the rules in the integration tests.
#[test]
fn monitoring_files_snapshot() {
    let env = environment(true);
    let nodes = NodeSpec::cluster(&env, &addresses(), |_| Layout::system()).unwrap();
    let files = Renderer::new()
        .unwrap()
        .render_monitoring(
            &env,
            &nodes,
            Path::new("/etc/prometheus/keyhold-ca.crt"),
            Path::new("/etc/prometheus/keyhold-metrics-token"),
        )
        .unwrap();
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            Path::new("monitoring/prometheus.yml"),
            Path::new("monitoring/keyhold-alerts.yml"),
            Path::new("monitoring/keyhold-dashboard.json"),
        ]
    );
    let (dashboard, text) = files.split_last().unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard.content).unwrap();
    assert_eq!(dashboard["uid"], "keyhold-staging");
    assert!(text[1].content.contains("> 3600\n"), "{}", text[1].content);
    insta::assert_snapshot!("monitoring_staging", listing(text));
}

#[test]
fn snapshot_units_only_with_snapshots() {
    let names = |full| {
        let env = environment(full);
        render(&env, &node(&env, 2, Layout::system()))
            .into_iter()
            .map(|f| f.path.display().to_string())
            .collect::<Vec<_>>()
    };
    let without = names(false);
    let with = names(true);
    assert!(
        !without.iter().any(|p| p.contains("snapshot")),
        "{without:?}"
    );
    let extra: Vec<_> = with.iter().filter(|p| !without.contains(p)).collect();
    assert_eq!(
        extra,
        [
            "etc/systemd/system/keyhold-snapshot.service",
            "etc/systemd/system/keyhold-snapshot.timer",
            "etc/keyhold.d/snapshot-agent.hcl"
        ]
    );
}

/// A snapshot schedule without a bucket gives a host no snapshot units: they would run an agent
/// whose config (rendered only with a bucket) does not exist.
#[test]
fn a_schedule_without_a_bucket_renders_no_snapshot_units() {
    let mut env = environment(true);
    if let Some(snapshots) = env.snapshots.as_mut() {
        snapshots.s3 = None;
    }
    let files: Vec<String> = render(&env, &node(&env, 1, Layout::system()))
        .into_iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert!(!files.iter().any(|p| p.contains("snapshot")), "{files:?}");
}

/// A local node's directory may hold characters HCL must escape; they survive the round trip.
#[test]
fn local_paths_are_quoted_for_hcl() {
    let env = environment(false);
    let root = PathBuf::from(r#"/home/o'brien/my "keys" ${x} %{y}\z/nodes/keyhold-1"#);
    let layout = Layout::local(root.clone());
    let files = render(&env, &node(&env, 1, layout));
    let config = ServerConfig::parse_str(server_config(&files), "keyhold.hcl").unwrap();
    let StorageConfig::Raft(raft) = &config.storage else {
        panic!("raft storage");
    };
    assert_eq!(raft.path, root.join(Layout::DATA_DIR));
    assert_eq!(
        raft.retry_join[0].leader_ca_cert_file.as_deref(),
        Some(root.join(Layout::TLS_DIR).join(CA_CERT).as_path())
    );
    hcl2_parses(server_config(&files));
}

/// A host file cannot quote every path; an odd one is refused with the path named.
#[test]
fn odd_host_paths_are_refused() {
    let env = environment(false);
    let layout = Layout {
        binary: PathBuf::from("/opt/my tools/keyhold"),
        ..Layout::system()
    };
    let err = Renderer::new()
        .unwrap()
        .render_node(&env, &node(&env, 1, layout))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with("render server unit for keyhold-1: "),
        "{text}"
    );
    assert!(text.contains("\"/opt/my tools/keyhold\""), "{text}");
}

#[test]
fn cluster_peers_and_addresses() {
    let env = environment(false);
    let nodes = NodeSpec::cluster(&env, &addresses(), |_| Layout::system()).unwrap();
    assert_eq!(nodes[1].name, "keyhold-2");
    assert_eq!(nodes[1].index, 2);
    assert_eq!(nodes[1].api_addr, "https://10.0.1.12:8200");
    assert_eq!(nodes[1].cluster_addr, "https://10.0.1.12:8201");
    let peers: Vec<(&str, &str)> = nodes[1]
        .peers
        .iter()
        .map(|p| (p.name.as_str(), p.api_addr.as_str()))
        .collect();
    assert_eq!(
        peers,
        [
            ("keyhold-1", "https://10.0.1.11:8200"),
            ("keyhold-3", "https://10.0.1.13:8200")
        ]
    );

    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let one = NodeSpec::new(&env, 1, v6, Layout::system()).unwrap();
    assert_eq!(one.api_addr, "https://[fd00::1]:8200");
    let config = server_config(&render(&env, &one)).to_string();
    assert!(
        config.contains(r#"address            = "[fd00::1]:8200""#),
        "{config}"
    );

    for (result, expected) in [
        (
            NodeSpec::new(&env, 0, v6, Layout::system()).map(|_| ()),
            "node 0 is not in environment staging",
        ),
        (
            NodeSpec::new(&env, 4, v6, Layout::system()).map(|_| ()),
            "node 4 is not in environment staging",
        ),
        (
            NodeSpec::cluster(&env, &addresses()[..2], |_| Layout::system()).map(|_| ()),
            "has 3 nodes but 2 addresses",
        ),
        (
            NodeSpec::cluster(&env, &[v6, v6, v6], |_| Layout::system()).map(|_| ()),
            "two nodes share an address",
        ),
    ] {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

/// A template that names something the context lacks fails instead of rendering "".
#[test]
fn strict_mode_refuses_unknown_names() {
    let env = environment(false);
    let node = node(&env, 1, Layout::system());
    let context = NodeContext::new(&env, &node).unwrap();
    let mut registry = registry();
    for (name, template) in [
        ("known", "{{node.name}} {{hcl paths.data_dir}}"),
        ("typo", "{{node.nmae}}"),
        ("missing_section", "{{seal.type}}"),
        ("each_field", "{{#each peers}}{{api_address}}{{/each}}"),
    ] {
        registry.register_template_string(name, template).unwrap();
    }
    assert_eq!(
        registry.render("known", &context).unwrap(),
        r#"keyhold-1 "/opt/keyhold/data""#
    );
    for name in ["typo", "missing_section", "each_field"] {
        let err = registry.render(name, &context).unwrap_err();
        assert!(
            err.to_string()
                .contains("Failed to access variable in strict mode"),
            "{name}: {err}"
        );
    }
}

/// The server's own checks run on every rendered config: what keyhold would refuse, render
/// refuses, naming the node and the file.
#[test]
fn rendered_config_is_validated_by_keyhold() {
    type Breakage = fn(&mut Environment, &mut NodeSpec);
    let cases: &[(&str, Breakage, &str)] = &[
        (
            "a peer without a scheme",
            |_, n| n.peers[0].api_addr = "10.0.1.12:8200".into(),
            "storage.raft.retry_join: leader_api_addr \"10.0.1.12:8200\" is not a URL",
        ),
        (
            "an api_addr without a host",
            |_, n| n.api_addr = "https://:8200".into(),
            "api_addr: \"https://:8200\" is not a URL",
        ),
        (
            "a zero snapshot threshold",
            |e, _| e.raft.snapshot_threshold = Some(0),
            "storage.raft.snapshot_threshold: must be greater than zero",
        ),
        (
            "a performance multiplier above 10",
            |e, _| e.raft.performance_multiplier = 11,
            "11 is above the maximum of 10",
        ),
        (
            "an unknown log level",
            |e, _| e.log.level = "verbose".into(),
            "unknown log level \"verbose\"",
        ),
        (
            "a zero rotation period",
            |e, _| e.log.rotate_duration = Some(Duration::ZERO),
            "log_rotate_duration: must be greater than zero",
        ),
    ];
    let renderer = Renderer::new().unwrap();
    for (what, breakage, expected) in cases {
        let mut env = environment(false);
        let mut spec = node(&env, 2, Layout::system());
        breakage(&mut env, &mut spec);
        let err = renderer.render_node(&env, &spec).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(
                "render server config for keyhold-2: keyhold would refuse this config: "
            ),
            "{what}: {text}"
        );
        assert!(text.contains(expected), "{what}: {text}");
        assert!(text.contains(Layout::SERVER_CONFIG), "{what}: {text}");
    }
}

/// Every rendered server config also parses with python-hcl2, an HCL parser keyhold shares
/// no code with.
#[test]
fn server_configs_parse_with_python_hcl2() {
    for full in [false, true] {
        let env = environment(full);
        for index in 1..=3 {
            hcl2_parses(server_config(&render(
                &env,
                &node(&env, index, Layout::system()),
            )));
        }
        let local = Layout::local(PathBuf::from("/srv/provision/local/nodes/keyhold-1"));
        hcl2_parses(server_config(&render(&env, &node(&env, 1, local))));
    }
}

fn hcl2_parses(config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyhold.hcl");
    std::fs::write(&file, config).unwrap();
    let output = Command::new("python3")
        .args(["-c", "import hcl2, sys; hcl2.load(open(sys.argv[1]))"])
        .arg(&file)
        .output()
        .expect("python3 not found: install Python 3 (scripts/test needs it)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'hcl2'"),
        "python-hcl2 is missing: pip install -r tests/compat/requirements.txt (scripts/test does)"
    );
    assert!(
        output.status.success(),
        "python-hcl2 refused:\n{config}\n{stderr}"
    );
}

/// The units, as a host gets them, with a binary that exists (verify checks ExecStart).
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let binary = dir.join("keyhold");
    std::fs::write(&binary, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let layout = Layout {
        binary,
        ..Layout::system()
    };
    let env = environment(true);
    let mut units = Vec::new();
    for file in render(&env, &node(&env, 1, layout)) {
        if file.path.starts_with(Layout::SYSTEMD_DIR) {
            let path = dir.join(file.path.file_name().unwrap());
            std::fs::write(&path, &file.content).unwrap();
            units.push(path);
        }
    }
    // The operator host's restore drill agent, with a provision binary that exists.
    let provision = dir.join("provision");
    std::fs::write(&provision, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&provision, std::fs::Permissions::from_mode(0o755)).unwrap();
    let operator = OperatorPaths {
        provision,
        ..OperatorPaths::system(&env)
    };
    for file in Renderer::new()
        .unwrap()
        .render_operator(&env, &operator)
        .unwrap()
    {
        let path = dir.join(file.path.file_name().unwrap());
        std::fs::write(&path, &file.content).unwrap();
        units.push(path);
    }
    assert_eq!(
        units.len(),
        4,
        "server unit, snapshot unit and timer, drill agent unit"
    );
    units
}

/// The drill agent's unit says when it drills and runs `provision` with the environment's
/// state; an environment without drills gets none.
#[test]
fn operator_unit_snapshot() {
    let env = environment(true);
    let files = Renderer::new()
        .unwrap()
        .render_operator(&env, &OperatorPaths::system(&env))
        .unwrap();
    assert_eq!(files.len(), 1);
    insta::assert_snapshot!("operator_drill_agent_unit", files[0].content);
    let plain = environment(false);
    assert!(Renderer::new()
        .unwrap()
        .render_operator(&plain, &OperatorPaths::system(&plain))
        .unwrap()
        .is_empty());
}

fn systemd_analyze(args: &[&std::ffi::OsStr]) -> std::process::Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("systemd-analyze not found: install systemd (scripts/test installs it)")
        }
        Err(e) => panic!("run systemd-analyze: {e}"),
    }
}

/// `systemd-analyze verify` accepts every unit and prints nothing. On systemd 252 it does
/// not look `User=keyhold` up (an unknown user draws no message), so nothing is filtered:
/// any output at all fails the test.
#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_in(dir.path());
    let mut args = vec![std::ffi::OsStr::new("verify")];
    args.extend(units.iter().map(|u| u.as_os_str()));
    let output = systemd_analyze(&args);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && printed.is_empty(),
        "systemd-analyze verify:\n{printed}"
    );
}

/// Each unit's exposure under `systemd-analyze security --offline=true` is at most 2.0.
#[test]
fn units_score_at_most_2_on_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    for unit in units_in(dir.path()) {
        if unit.extension().is_some_and(|e| e == "timer") {
            continue; // security scores services only
        }
        let output = systemd_analyze(&[
            "security".as_ref(),
            "--offline=true".as_ref(),
            "--threshold=20".as_ref(),
            unit.as_os_str(),
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let score: f64 = stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level in:\n{stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let name = unit.file_name().unwrap().to_string_lossy();
        println!("systemd-analyze security {name}: {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{name} scores {score} (> {MAX_EXPOSURE}):\n{stdout}"
        );
        assert!(
            output.status.success(),
            "{name}: threshold exceeded:\n{stdout}"
        );
    }
}
