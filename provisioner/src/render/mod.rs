//! The one renderer: every file a node receives comes from `templates/` (embedded at compile
//! time, so `provision` is self-contained) through Handlebars in strict mode, and a rendered
//! server config is refused unless keyhold's own config parser accepts it.
//!
//! A node is described by a [`NodeSpec`] (name, addresses, peers) and a [`Layout`] (where
//! things live under its root); [`Renderer::render_node`] turns both plus the
//! [`Environment`] into [`RenderedFile`]s with paths relative to that root.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use handlebars::{
    Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderErrorReason,
};
use keyhold_client::go_duration::format_go_duration;
use keyhold_config::{ServerConfig, StorageConfig};
use serde::Serialize;

use crate::environment::{AuditDevice, AwsKms, Environment, Seal, SnapshotS3, TransitSeal};

/// File names inside the TLS directory ([`Layout::TLS_DIR`]); `certs` writes them.
pub const CA_CERT: &str = "ca.crt";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";
/// The client certificate a node presents to a peer when it joins (`retry_join`).
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// The user the server runs as on a systemd host (`keyhold.service`'s `User=`).
pub const SERVICE_USER: &str = "keyhold";

/// Where things live on a node, as paths relative to its root (the constants), and the
/// few settings that differ between a host and a local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `/` on a host; the node's own directory for a local node.
    pub root: PathBuf,
    /// The `keyhold` binary the node runs, as an absolute path ([`Layout::BINARY`] under the
    /// root: `up` installs it there, `upgrade` replaces it).
    pub binary: PathBuf,
    pub disable_mlock: bool,
    /// The node is a host run by systemd: it also gets the units, the environment file and
    /// the host hardening files (sysctl, limits, coredump, logrotate). A local node is a
    /// process the provider starts itself, so it gets only its server config.
    pub systemd: bool,
}

impl Layout {
    pub const CONFIG_DIR: &'static str = "etc/keyhold.d";
    pub const SERVER_CONFIG: &'static str = "etc/keyhold.d/keyhold.hcl";
    pub const ENV_FILE: &'static str = "etc/keyhold.d/keyhold.env";
    /// A systemd host's credentials for its services (the seal's, S3's), beside the rendered
    /// `keyhold.env` that holds none; units read both (`EnvironmentFile=`).
    pub const CREDENTIALS_FILE: &'static str = "etc/keyhold.d/credentials.env";
    /// Written by the snapshot agent's issue; named here because the snapshot unit runs it.
    pub const SNAPSHOT_AGENT_CONFIG: &'static str = "etc/keyhold.d/snapshot-agent.hcl";
    /// The snapshot agent's AppRole role ID and secret ID (0600, written by `up`).
    pub const SNAPSHOT_ROLE_ID: &'static str = "etc/keyhold.d/snapshot-agent.role-id";
    pub const SNAPSHOT_SECRET_ID: &'static str = "etc/keyhold.d/snapshot-agent.secret-id";
    pub const DATA_DIR: &'static str = "opt/keyhold/data";
    pub const TLS_DIR: &'static str = "opt/keyhold/tls";
    /// Where the snapshot agent stages archives before it uploads them.
    pub const SNAPSHOT_DIR: &'static str = "opt/keyhold/snapshots";
    /// node_exporter textfiles (`--collector.textfile.directory`): the snapshot agent's
    /// `keyhold_snapshot.prom`. Under `/var/lib`, so the agent's unit can have systemd make it
    /// (`StateDirectory=`, writable despite `ProtectSystem=strict`, readable by node_exporter).
    pub const METRICS_DIR: &'static str = "var/lib/keyhold/textfile";
    pub const SNAPSHOT_METRICS: &'static str = "var/lib/keyhold/textfile/keyhold_snapshot.prom";
    /// The server log (when written to a file) and, by default, the audit files.
    pub const LOG_DIR: &'static str = "var/log/keyhold";
    pub const SYSTEMD_DIR: &'static str = "etc/systemd/system";
    /// Where a node's `keyhold` binary is installed, and the one it ran before its last
    /// upgrade (kept for `provision upgrade --rollback`).
    pub const BINARY: &'static str = "usr/local/bin/keyhold";
    pub const PREVIOUS_BINARY: &'static str = "usr/local/bin/keyhold.previous";
    /// The server log's name inside [`Layout::LOG_DIR`].
    pub const SERVER_LOG: &'static str = "keyhold.log";

    /// A host: everything under `/`, the binary in `/usr/local/bin`, memory locked.
    pub fn system() -> Layout {
        Layout {
            root: PathBuf::from("/"),
            binary: PathBuf::from("/usr/local/bin/keyhold"),
            disable_mlock: false,
            systemd: true,
        }
    }

    /// A local node rooted in its own directory (`.provision/<env>/nodes/<name>/`), running
    /// its own copy of the binary (a hard link where it can), as a host does.
    pub fn local(root: PathBuf) -> Layout {
        Layout {
            binary: root.join(Layout::BINARY),
            root,
            // An unprivileged process: it has no CAP_IPC_LOCK (mlockall would fail on the
            // RLIMIT_MEMLOCK default), and nothing guarantees the machine runs without swap.
            // Local and CI clusters hold throw-away secrets; hosts lock memory.
            disable_mlock: true,
            systemd: false,
        }
    }

    /// Where the node's private environment file (credentials) goes: on a systemd host
    /// [`Layout::CREDENTIALS_FILE`]; on a local node [`Layout::ENV_FILE`], which the local
    /// provider passes to the processes it starts.
    pub fn credentials_file(&self) -> &'static str {
        if self.systemd {
            Layout::CREDENTIALS_FILE
        } else {
            Layout::ENV_FILE
        }
    }

    /// A file the server reads and must not change (a key, a credential): on a systemd host
    /// 0640 root:keyhold (the service runs as keyhold); on a local node 0600, owned by whoever
    /// runs provision, as is everything there.
    pub fn private_file(&self) -> (u32, Option<crate::providers::Owner>) {
        if self.systemd {
            (
                0o640,
                Some(crate::providers::Owner::new("root", SERVICE_USER)),
            )
        } else {
            (0o600, None)
        }
    }

    /// A directory of such files (TLS): 0750 root:keyhold on a systemd host, 0700 locally.
    pub fn private_dir(&self) -> (u32, Option<crate::providers::Owner>) {
        if self.systemd {
            (
                0o750,
                Some(crate::providers::Owner::new("root", SERVICE_USER)),
            )
        } else {
            (0o700, None)
        }
    }

    /// Who owns the directories the server writes (data, logs): keyhold on a systemd host.
    pub fn service_owner(&self) -> Option<crate::providers::Owner> {
        self.systemd
            .then(|| crate::providers::Owner::new(SERVICE_USER, SERVICE_USER))
    }

    /// Who owns the server's other files (config, units): root:keyhold on a systemd host.
    pub fn config_owner(&self) -> Option<crate::providers::Owner> {
        self.private_file().1
    }

    /// `relative` (one of the constants) on this node: the root joined with it.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }

    /// A file in the TLS directory: [`CA_CERT`], [`NODE_CERT`], ...
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.path(Self::TLS_DIR).join(name)
    }

    /// Where an audit `file` device writes on this node: a relative `file_path` is inside the
    /// log directory. `None` for other device types and for `stdout` and `discard`.
    pub fn audit_file(&self, device: &AuditDevice) -> Option<PathBuf> {
        if device.kind != "file" || matches!(device.file_path.as_str(), "stdout" | "discard") {
            return None;
        }
        Some(self.path(Self::LOG_DIR).join(&device.file_path))
    }
}

/// One node of a cluster, everything about it that rendering needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `keyhold-<index>`: the Raft node id, and a SAN of the node's certificate.
    pub name: String,
    /// 1-based.
    pub index: usize,
    /// The address the node listens on and is reached at.
    pub address: IpAddr,
    /// `https://ADDRESS:API_PORT`.
    pub api_addr: String,
    /// `https://ADDRESS:CLUSTER_PORT`.
    pub cluster_addr: String,
    /// The other nodes, each named in one `retry_join` block.
    pub peers: Vec<Peer>,
    pub layout: Layout,
}

/// Another node, as a joining node reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub name: String,
    pub api_addr: String,
}

impl NodeSpec {
    /// Node `index` (1-based) of `env`, listening on `address`, with no peers yet: set
    /// `peers`, or build every node at once with [`NodeSpec::cluster`].
    pub fn new(
        env: &Environment,
        index: usize,
        address: IpAddr,
        layout: Layout,
    ) -> anyhow::Result<NodeSpec> {
        ensure!(
            (1..=env.nodes).contains(&index),
            "node {index} is not in environment {} (it has {} nodes)",
            env.name,
            env.nodes
        );
        let url = |port| format!("https://{}", SocketAddr::new(address, port));
        Ok(NodeSpec {
            name: format!("keyhold-{index}"),
            index,
            address,
            api_addr: url(env.listener.api_port),
            cluster_addr: url(env.listener.cluster_port),
            peers: Vec::new(),
            layout,
        })
    }

    /// Every node of `env`: node `i` listens on `addresses[i - 1]`, is laid out by
    /// `layout(name)`, and has every other node as a peer.
    pub fn cluster(
        env: &Environment,
        addresses: &[IpAddr],
        mut layout: impl FnMut(&str) -> Layout,
    ) -> anyhow::Result<Vec<NodeSpec>> {
        ensure!(
            addresses.len() == env.nodes,
            "environment {} has {} nodes but {} addresses were given",
            env.name,
            env.nodes,
            addresses.len()
        );
        ensure!(
            addresses.iter().collect::<BTreeSet<_>>().len() == addresses.len(),
            "environment {}: two nodes share an address in {addresses:?}",
            env.name
        );
        let mut nodes = Vec::with_capacity(addresses.len());
        for (i, address) in addresses.iter().enumerate() {
            let name = format!("keyhold-{}", i + 1);
            nodes.push(NodeSpec::new(env, i + 1, *address, layout(&name))?);
        }
        let everyone: Vec<Peer> = nodes
            .iter()
            .map(|n| Peer {
                name: n.name.clone(),
                api_addr: n.api_addr.clone(),
            })
            .collect();
        for node in &mut nodes {
            node.peers = everyone
                .iter()
                .filter(|p| p.name != node.name)
                .cloned()
                .collect();
        }
        Ok(nodes)
    }
}

/// One file for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Relative to the node's root (`etc/keyhold.d/keyhold.hcl`).
    pub path: PathBuf,
    pub mode: u32,
    pub content: String,
    /// What the file is, for progress lines and errors: `server config`, `server unit`, ...
    pub purpose: &'static str,
    /// The template it was rendered from (`keyhold.service`), as playbooks name it.
    pub template: &'static str,
}

/// Which nodes get a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    Every,
    /// Hosts run by systemd ([`Layout::systemd`]).
    Systemd,
    /// Hosts run by systemd, in an environment whose snapshots name an S3 bucket (the units
    /// run the agent, whose config exists only then).
    SystemdSnapshots,
    /// Every node, in an environment whose snapshots name an S3 bucket.
    SnapshotsS3,
}

struct Template {
    name: &'static str,
    source: &'static str,
    /// Relative to the node's root.
    path: &'static str,
    mode: u32,
    purpose: &'static str,
    audience: Audience,
}

/// Every template, and the file each one becomes.
const TEMPLATES: &[Template] = &[
    Template {
        name: "keyhold.hcl",
        source: include_str!("../../../templates/keyhold.hcl.hbs"),
        path: Layout::SERVER_CONFIG,
        mode: 0o640,
        purpose: "server config",
        audience: Audience::Every,
    },
    Template {
        name: "keyhold.env",
        source: include_str!("../../../templates/keyhold.env.hbs"),
        path: Layout::ENV_FILE,
        mode: 0o640,
        purpose: "environment file",
        audience: Audience::Systemd,
    },
    Template {
        name: "keyhold.service",
        source: include_str!("../../../templates/keyhold.service.hbs"),
        path: "etc/systemd/system/keyhold.service",
        mode: 0o644,
        purpose: "server unit",
        audience: Audience::Systemd,
    },
    Template {
        name: "keyhold-snapshot.service",
        source: include_str!("../../../templates/keyhold-snapshot.service.hbs"),
        path: "etc/systemd/system/keyhold-snapshot.service",
        mode: 0o644,
        purpose: "snapshot unit",
        audience: Audience::SystemdSnapshots,
    },
    Template {
        name: "keyhold-snapshot.timer",
        source: include_str!("../../../templates/keyhold-snapshot.timer.hbs"),
        path: "etc/systemd/system/keyhold-snapshot.timer",
        mode: 0o644,
        purpose: "snapshot timer",
        audience: Audience::SystemdSnapshots,
    },
    Template {
        name: "snapshot-agent.hcl",
        source: include_str!("../../../templates/snapshot-agent.hcl.hbs"),
        path: Layout::SNAPSHOT_AGENT_CONFIG,
        mode: 0o640,
        purpose: "snapshot agent config",
        audience: Audience::SnapshotsS3,
    },
    Template {
        name: "sysctl.conf",
        source: include_str!("../../../templates/sysctl.conf.hbs"),
        path: "etc/sysctl.d/90-keyhold.conf",
        mode: 0o644,
        purpose: "kernel settings",
        audience: Audience::Systemd,
    },
    Template {
        name: "limits.conf",
        source: include_str!("../../../templates/limits.conf.hbs"),
        path: "etc/security/limits.d/90-keyhold.conf",
        mode: 0o644,
        purpose: "core dump limits",
        audience: Audience::Systemd,
    },
    Template {
        name: "coredump.conf",
        source: include_str!("../../../templates/coredump.conf.hbs"),
        path: "etc/systemd/coredump.conf.d/keyhold.conf",
        mode: 0o644,
        purpose: "coredump settings",
        audience: Audience::Systemd,
    },
    Template {
        name: "logrotate",
        source: include_str!("../../../templates/logrotate.hbs"),
        path: "etc/logrotate.d/keyhold",
        mode: 0o644,
        purpose: "audit log rotation",
        audience: Audience::Systemd,
    },
];

/// The monitoring files of an environment (not of a node): `provision render` writes them
/// under `monitoring/`.
const MONITORING_TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "prometheus.yml",
        include_str!("../../../templates/prometheus.yml.hbs"),
        "Prometheus scrape config",
    ),
    (
        "keyhold-alerts.yml",
        include_str!("../../../templates/keyhold-alerts.yml.hbs"),
        "Prometheus alert rules",
    ),
    (
        "keyhold-dashboard.json",
        include_str!("../../../templates/keyhold-dashboard.json.hbs"),
        "Grafana dashboard",
    ),
];

/// How long a restore drill may be missed before `KeyholdRestoreDrillStale` fires: a weekly
/// drill, and a day of slack.
pub const DRILL_STALE_SECONDS: u64 = 8 * 86_400;

/// What the monitoring templates see.
#[derive(Serialize)]
struct MonitoringContext<'a> {
    environment: &'a str,
    ca_file: String,
    token_file: String,
    targets: Vec<ScrapeTarget>,
    snapshot_schedule: String,
    snapshot_stale_seconds: u64,
    drill_stale_seconds: u64,
}

#[derive(Serialize)]
struct ScrapeTarget {
    name: String,
    /// `host:port`, as Prometheus wants it.
    address: String,
}

/// When no snapshot younger than this exists, `KeyholdSnapshotStale` fires: two scheduled
/// runs missed, and at least an hour; a day when the environment schedules none.
pub fn snapshot_stale_seconds(env: &Environment) -> anyhow::Result<u64> {
    let Some(snapshots) = &env.snapshots else {
        return Ok(86_400);
    };
    let schedule = keyhold_snapshot::Schedule::parse(&snapshots.schedule)
        .map_err(|e| anyhow::anyhow!("snapshots.schedule: {e}"))?;
    let first = schedule.next_after(chrono::Utc::now());
    let second = schedule.next_after(first);
    let interval = (second - first).num_seconds().max(1) as u64;
    Ok((2 * interval).max(3_600))
}

impl Renderer {
    /// The environment's monitoring files: a Prometheus scrape config for `nodes` (TLS
    /// checked against `ca_file`, a bearer token read from `token_file`), alert rules, and a
    /// Grafana dashboard. Paths are relative to the output folder.
    pub fn render_monitoring(
        &self,
        env: &Environment,
        nodes: &[NodeSpec],
        ca_file: &Path,
        token_file: &Path,
    ) -> anyhow::Result<Vec<RenderedFile>> {
        let context = MonitoringContext {
            environment: &env.name,
            ca_file: ca_file.display().to_string(),
            token_file: token_file.display().to_string(),
            targets: nodes
                .iter()
                .map(|n| ScrapeTarget {
                    name: n.name.clone(),
                    address: SocketAddr::new(n.address, env.listener.api_port).to_string(),
                })
                .collect(),
            snapshot_schedule: env
                .snapshots
                .as_ref()
                .map(|s| s.schedule.clone())
                .unwrap_or_else(|| "none".into()),
            snapshot_stale_seconds: snapshot_stale_seconds(env)?,
            drill_stale_seconds: DRILL_STALE_SECONDS,
        };
        let mut files = Vec::new();
        for (name, _, purpose) in MONITORING_TEMPLATES {
            let content = self
                .registry
                .render(name, &context)
                .with_context(|| format!("render the {purpose} of {}", env.name))?;
            if name.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&content)
                    .with_context(|| format!("the rendered {purpose} is not valid JSON"))?;
            }
            files.push(RenderedFile {
                path: Path::new("monitoring").join(name),
                mode: 0o644,
                content,
                purpose,
                template: name,
            });
        }
        Ok(files)
    }
}

/// Where the operator's host keeps what the restore drill agent's unit names.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorPaths {
    /// The `provision` binary.
    pub provision: PathBuf,
    /// `--state-dir` (the directory holding `ENV/`).
    pub state_dir: PathBuf,
    pub env_file: PathBuf,
    /// `KEY=VALUE` AWS credentials, read when present.
    pub aws_env_file: PathBuf,
    /// The unit's `User=`; None: whoever runs it.
    pub user: Option<String>,
}

impl OperatorPaths {
    /// A host that keeps the state under `/var/lib/provision`, as user `provision`.
    pub fn system(env: &Environment) -> OperatorPaths {
        OperatorPaths {
            provision: PathBuf::from("/usr/local/bin/provision"),
            state_dir: PathBuf::from("/var/lib/provision"),
            env_file: PathBuf::from(format!("/etc/provision/environments/{}.hcl", env.name)),
            aws_env_file: PathBuf::from("/etc/provision/aws.env"),
            user: Some("provision".into()),
        }
    }
}

#[derive(Serialize)]
struct OperatorContext<'a> {
    environment: &'a str,
    when: String,
    #[serde(flatten)]
    paths: &'a OperatorPaths,
}

const DRILL_AGENT_UNIT: &str = "keyhold-drill-agent.service";

impl Renderer {
    /// The operator host's files (`operator/`): the restore drill agent's unit, when the
    /// environment schedules drills.
    pub fn render_operator(
        &self,
        env: &Environment,
        paths: &OperatorPaths,
    ) -> anyhow::Result<Vec<RenderedFile>> {
        let Some(drill) = env.snapshots.as_ref().and_then(|s| s.drill.as_ref()) else {
            return Ok(Vec::new());
        };
        let context = OperatorContext {
            environment: &env.name,
            when: crate::workflows::drill_agent::describe(
                drill.schedule.as_deref(),
                drill.after_upload,
            ),
            paths,
        };
        let content = self
            .registry
            .render(DRILL_AGENT_UNIT, &context)
            .with_context(|| format!("render the restore drill agent's unit of {}", env.name))?;
        Ok(vec![RenderedFile {
            path: Path::new("operator").join(DRILL_AGENT_UNIT),
            mode: 0o644,
            content,
            purpose: "restore drill agent unit",
            template: DRILL_AGENT_UNIT,
        }])
    }
}

/// Renders every file of a node from the embedded templates.
pub struct Renderer {
    registry: Handlebars<'static>,
}

impl Renderer {
    pub fn new() -> anyhow::Result<Renderer> {
        let mut registry = registry();
        for t in TEMPLATES {
            registry
                .register_template_string(t.name, t.source)
                .with_context(|| format!("parse template templates/{}.hbs", t.name))?;
        }
        for (name, source, _) in MONITORING_TEMPLATES {
            registry
                .register_template_string(name, source)
                .with_context(|| format!("parse template templates/{name}.hbs"))?;
        }
        registry
            .register_template_string(
                DRILL_AGENT_UNIT,
                include_str!("../../../templates/keyhold-drill-agent.service.hbs"),
            )
            .with_context(|| format!("parse template templates/{DRILL_AGENT_UNIT}.hbs"))?;
        Ok(Renderer { registry })
    }

    /// The files `node` receives, in a fixed order, the server config first.
    pub fn render_node(
        &self,
        env: &Environment,
        node: &NodeSpec,
    ) -> anyhow::Result<Vec<RenderedFile>> {
        let context = NodeContext::new(env, node)
            .with_context(|| format!("render files for {}", node.name))?;
        let mut files = Vec::new();
        for t in TEMPLATES {
            let wanted = match t.audience {
                Audience::Every => true,
                Audience::Systemd => node.layout.systemd,
                Audience::SystemdSnapshots => {
                    node.layout.systemd && env.snapshots.as_ref().is_some_and(|s| s.s3.is_some())
                }
                Audience::SnapshotsS3 => env.snapshots.as_ref().is_some_and(|s| s.s3.is_some()),
            };
            if !wanted {
                continue;
            }
            let content = self
                .render_one(t, &context, node)
                .with_context(|| format!("render {} for {}", t.purpose, node.name))?;
            files.push(RenderedFile {
                path: PathBuf::from(t.path),
                mode: t.mode,
                content,
                purpose: t.purpose,
                template: t.name,
            });
        }
        Ok(files)
    }

    fn render_one(
        &self,
        t: &Template,
        context: &NodeContext<'_>,
        node: &NodeSpec,
    ) -> anyhow::Result<String> {
        let content = self.registry.render(t.name, context)?;
        if t.path == Layout::SERVER_CONFIG {
            check_server_config(&content, node, context.seal_kind())
                .context("keyhold would refuse this config")?;
        }
        Ok(content)
    }
}

/// The Handlebars setup every template is rendered with: strict (a name the context lacks
/// is an error, not an empty string), no HTML escaping, and the quoting helpers
/// `{{hcl value}}` (an HCL string literal) and `{{plain_path value}}`.
fn registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_helper("hcl", Box::new(StringHelper(|v| Ok(hcl_string(v)))));
    registry.register_helper("plain_path", Box::new(StringHelper(plain_path)));
    registry
}

/// A helper that writes `convert(its one string parameter)`, or fails the render with the
/// message `convert` returns.
struct StringHelper(fn(&str) -> Result<String, String>);

impl HelperDef for StringHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc handlebars::Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .and_then(|p| p.value().as_str())
            .ok_or_else(|| RenderErrorReason::Other(format!("{} takes one string", h.name())))?;
        out.write(&(self.0)(value).map_err(RenderErrorReason::Other)?)?;
        Ok(())
    }
}

/// `{{plain_path value}}`: `value` as is, refused unless systemd units, environment files and
/// logrotate all read it back as the same path (no whitespace, quotes, backslashes, `%`
/// specifiers or `$` variables). Only host files use it; a local node's directory may hold
/// anything, and its config quotes paths with `hcl`.
fn plain_path(value: &str) -> Result<String, String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+@,:~=".contains(c);
    if !value.chars().all(plain) {
        return Err(format!(
            "path {value:?} cannot go into a host file as it is (it holds a space, quote, \
             backslash, % or $); use a path made of letters, digits and / . _ - + @ , : ~ ="
        ));
    }
    Ok(value.to_owned())
}

/// An HCL quoted string: quotes, backslashes and control characters escaped, and `${` / `%{`
/// doubled so that no part of a path is read as a template.
fn hcl_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A local node's private environment file (`Layout::ENV_FILE`, written 0600): credentials
/// from `provision`'s own environment. Not a template on purpose: it holds secrets, so it is
/// never rendered by `provision render` nor shown by `plan`.
pub fn credentials_env_file(environment: &str, vars: &[(String, String)]) -> String {
    let mut out = format!(
        "# Written by `provision` for environment {environment}: credentials passed on from \
         provision's environment.\n# Private (0600); read by the local node at start.\n"
    );
    for (k, v) in vars {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// Refuses a rendered config that keyhold would refuse, or that says something else than
/// `node` (a template mix-up that still parses).
fn check_server_config(text: &str, node: &NodeSpec, seal_kind: &str) -> anyhow::Result<()> {
    let config = ServerConfig::parse_str(text, Layout::SERVER_CONFIG)?;
    config.validate_semantics()?;
    if let Some(problem) = config.unsupported().into_iter().next() {
        return Err(problem.into());
    }
    let StorageConfig::Raft(raft) = &config.storage else {
        bail!("the storage stanza is not raft");
    };
    ensure!(
        config.seal.kind() == seal_kind,
        "the seal stanza reads back as {:?}, expected {seal_kind:?}",
        config.seal.kind()
    );
    let said = (
        raft.node_id.as_deref(),
        config.api_addr.as_deref(),
        config.cluster_addr.as_deref(),
        &raft.path,
        raft.retry_join.len(),
        config.disable_mlock,
    );
    let meant = (
        Some(node.name.as_str()),
        Some(node.api_addr.as_str()),
        Some(node.cluster_addr.as_str()),
        &node.layout.path(Layout::DATA_DIR),
        node.peers.len(),
        node.layout.disable_mlock,
    );
    ensure!(
        said == meant,
        "(node_id, api_addr, cluster_addr, raft path, retry_join blocks, disable_mlock) read \
         back as {said:?}, expected {meant:?}"
    );
    Ok(())
}

/// What the templates see. A name a template uses that is not here fails the render.
#[derive(Debug, Serialize)]
struct NodeContext<'a> {
    environment: &'a str,
    node: NodeView<'a>,
    peers: &'a [Peer],
    paths: Paths,
    listener: ListenerView,
    raft: RaftView,
    log: LogView<'a>,
    disable_mlock: bool,
    /// Every audit file this node writes (for logrotate).
    audit_files: Vec<String>,
    /// The environment's audit devices, declared in the server config (`audit "TYPE" "NAME"`).
    audit: Vec<AuditView>,
    snapshots: Option<SnapshotsView<'a>>,
    seal: SealView<'a>,
}

/// The `seal` stanza: at most one of the two is set (none for Shamir, which needs no stanza).
#[derive(Debug, Serialize)]
struct SealView<'a> {
    awskms: Option<&'a AwsKms>,
    /// With an `unsealer`, `tls_ca_cert` defaults to the node's copy of the environment CA
    /// (the unsealer's certificate comes from it).
    transit: Option<TransitSeal>,
}

#[derive(Debug, Serialize)]
struct NodeView<'a> {
    name: &'a str,
    api_addr: &'a str,
    cluster_addr: &'a str,
    /// `ADDRESS:API_PORT`, the listener's `address`.
    api_listen: String,
    /// `ADDRESS:CLUSTER_PORT`, the listener's `cluster_address`.
    cluster_listen: String,
}

/// Absolute paths on the node.
#[derive(Debug, Serialize)]
struct Paths {
    binary: String,
    config_file: String,
    env_file: String,
    credentials_file: String,
    snapshot_agent_config: String,
    snapshot_role_id: String,
    snapshot_secret_id: String,
    data_dir: String,
    snapshot_dir: String,
    /// [`Layout::METRICS_DIR`] relative to `/var/lib`, for `StateDirectory=`.
    metrics_state_directory: String,
    snapshot_metrics: String,
    ca_cert: String,
    node_cert: String,
    node_key: String,
    client_cert: String,
    client_key: String,
    /// What the server may write: data and log directories, and the directory of every
    /// audit file outside the log directory.
    writable: Vec<String>,
}

/// One `audit` stanza of the server config.
#[derive(Debug, Serialize)]
struct AuditView {
    #[serde(rename = "type")]
    kind: String,
    /// The device's path in `sys/audit`, without the trailing slash.
    name: String,
    /// Every option, `file_path` as the node's server sees it, sorted by key.
    options: Vec<AuditOption>,
}

#[derive(Debug, Serialize)]
struct AuditOption {
    key: String,
    value: String,
}

#[derive(Debug, Serialize)]
struct ListenerView {
    tls_min_version: &'static str,
    max_request_size: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RaftView {
    performance_multiplier: u32,
    snapshot_threshold: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LogView<'a> {
    level: &'a str,
    format: &'a str,
    /// Set when the environment asks for rotation; otherwise the server logs to stderr
    /// (the journal on a host, which rotates on its own).
    file: Option<String>,
    rotate_duration: Option<String>,
    rotate_bytes: Option<u64>,
    rotate_max_files: Option<u32>,
}

#[derive(Debug, Serialize)]
struct SnapshotsView<'a> {
    schedule: &'a str,
    retain: Option<u32>,
    /// A Go duration (`168h0m0s`).
    retain_for: Option<String>,
    /// The AppRole mount the agent logs in at.
    approle_mount: &'a str,
    s3: Option<&'a SnapshotS3>,
}

impl<'a> NodeContext<'a> {
    fn seal_kind(&self) -> &'static str {
        match (&self.seal.awskms, &self.seal.transit) {
            (Some(_), _) => "awskms",
            (_, Some(_)) => "transit",
            _ => "shamir",
        }
    }

    fn new(env: &'a Environment, node: &'a NodeSpec) -> anyhow::Result<NodeContext<'a>> {
        let layout = &node.layout;
        let text = |path: &Path| -> anyhow::Result<String> {
            path.to_str()
                .map(str::to_owned)
                .with_context(|| format!("path {} is not UTF-8", path.display()))
        };
        let log_dir = layout.path(Layout::LOG_DIR);
        let audit_files: Vec<PathBuf> = env
            .audit
            .iter()
            .filter_map(|d| layout.audit_file(d))
            .collect();
        let mut writable = vec![layout.path(Layout::DATA_DIR), log_dir.clone()];
        for file in &audit_files {
            let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
            if !dir.starts_with(&log_dir) && !writable.contains(&dir) {
                writable.push(dir);
            }
        }
        let log = &env.log;
        let rotates = log.rotate_bytes.is_some()
            || log.rotate_duration.is_some()
            || log.rotate_max_files.is_some();
        Ok(NodeContext {
            environment: &env.name,
            node: NodeView {
                name: &node.name,
                api_addr: &node.api_addr,
                cluster_addr: &node.cluster_addr,
                api_listen: SocketAddr::new(node.address, env.listener.api_port).to_string(),
                cluster_listen: SocketAddr::new(node.address, env.listener.cluster_port)
                    .to_string(),
            },
            peers: &node.peers,
            paths: Paths {
                binary: text(&layout.binary)?,
                config_file: text(&layout.path(Layout::SERVER_CONFIG))?,
                env_file: text(&layout.path(Layout::ENV_FILE))?,
                credentials_file: text(&layout.path(Layout::CREDENTIALS_FILE))?,
                snapshot_agent_config: text(&layout.path(Layout::SNAPSHOT_AGENT_CONFIG))?,
                snapshot_role_id: text(&layout.path(Layout::SNAPSHOT_ROLE_ID))?,
                snapshot_secret_id: text(&layout.path(Layout::SNAPSHOT_SECRET_ID))?,
                data_dir: text(&layout.path(Layout::DATA_DIR))?,
                snapshot_dir: text(&layout.path(Layout::SNAPSHOT_DIR))?,
                metrics_state_directory: Layout::METRICS_DIR
                    .strip_prefix("var/lib/")
                    .expect("METRICS_DIR is under var/lib")
                    .to_string(),
                snapshot_metrics: text(&layout.path(Layout::SNAPSHOT_METRICS))?,
                ca_cert: text(&layout.tls_file(CA_CERT))?,
                node_cert: text(&layout.tls_file(NODE_CERT))?,
                node_key: text(&layout.tls_file(NODE_KEY))?,
                client_cert: text(&layout.tls_file(CLIENT_CERT))?,
                client_key: text(&layout.tls_file(CLIENT_KEY))?,
                writable: writable.iter().map(|p| text(p)).collect::<Result<_, _>>()?,
            },
            listener: ListenerView {
                tls_min_version: env.listener.tls_min_version.as_str(),
                max_request_size: env.listener.max_request_size,
            },
            raft: RaftView {
                performance_multiplier: env.raft.performance_multiplier,
                snapshot_threshold: env.raft.snapshot_threshold,
            },
            log: LogView {
                level: &log.level,
                format: &log.format,
                file: rotates
                    .then(|| text(&log_dir.join(Layout::SERVER_LOG)))
                    .transpose()?,
                rotate_duration: log.rotate_duration.map(format_go_duration),
                rotate_bytes: log.rotate_bytes,
                rotate_max_files: log.rotate_max_files,
            },
            disable_mlock: layout.disable_mlock,
            audit_files: audit_files
                .iter()
                .map(|p| text(p))
                .collect::<Result<_, _>>()?,
            audit: env
                .audit
                .iter()
                .map(|device| {
                    let file_path = match layout.audit_file(device) {
                        Some(path) => text(&path)?,
                        None => device.file_path.clone(),
                    };
                    let mut options: Vec<AuditOption> = device
                        .options
                        .iter()
                        .map(|(key, value)| AuditOption {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .chain([AuditOption {
                            key: "file_path".into(),
                            value: file_path,
                        }])
                        .collect();
                    options.sort_by(|a, b| a.key.cmp(&b.key));
                    Ok(AuditView {
                        kind: device.kind.clone(),
                        name: device.path.trim_end_matches('/').to_string(),
                        options,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            snapshots: env.snapshots.as_ref().map(|s| SnapshotsView {
                schedule: &s.schedule,
                retain: s.retain,
                retain_for: s.retain_for.map(format_go_duration),
                approle_mount: env.snapshot_approle_mount(),
                s3: s.s3.as_ref(),
            }),
            seal: SealView {
                awskms: match &env.seal {
                    Seal::AwsKms(kms) => Some(kms),
                    _ => None,
                },
                transit: match &env.seal {
                    Seal::Transit(transit) => {
                        let mut transit = transit.clone();
                        if env.unsealer.is_some() && transit.tls_ca_cert.is_none() {
                            transit.tls_ca_cert = Some(layout.tls_file(CA_CERT));
                        }
                        Some(transit)
                    }
                    _ => None,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests;
