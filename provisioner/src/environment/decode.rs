//! The decoder: an environment file's syntax tree becomes an [`Environment`] with every
//! default filled in, or the first mistake with its file, line and key.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyhold_config::section::{Labelled, Section};
use keyhold_config::syntax::{self, Node, Source, Value};
use keyhold_config::ConfigError;

use super::model::*;
use crate::providers::local::LocalSettings;
use crate::providers::ssh::SshSettings;

const TOP_KEYS: &[&str] = &[
    "admin",
    "audit",
    "auth",
    "autopilot",
    "init",
    "listener",
    "log",
    "nodes",
    "policy",
    "provider",
    "raft",
    "seal",
    "secrets",
    "server",
    "snapshots",
    "tls",
    "unsealer",
];
const REPEATABLE: &[&str] = &["audit", "auth", "policy", "secrets"];

pub(super) fn decode(file: &Path, shown: &str, text: &str) -> Result<Environment, ConfigError> {
    let src = Source::new(shown, text);
    let root = syntax::parse(&src, text, syntax::is_json(shown, text))?;
    let root = Node {
        value: Value::Object(root),
        pos: 0,
    };
    let top = Section::new(&src, &root, "at the top level", "", TOP_KEYS, REPEATABLE)?;
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("unnamed")
        .to_string();
    check_name(&top, &name)?;

    let provider = decode_provider(&top, &dir)?;
    let nodes = match top.uint("nodes", 255)? {
        None => match &provider {
            Provider::Ssh(ssh) => ssh.hosts.len(),
            Provider::Local(_) => 3,
        },
        Some(n) if NODE_COUNTS.contains(&(n as usize)) => n as usize,
        Some(n) => {
            return Err(top.value_error(
                "nodes",
                format!(
                    "{n} nodes: a Raft cluster is run with an odd number of voters so that a \
                     majority survives a failure; use 1, 3 or 5"
                ),
            ))
        }
    };
    match &provider {
        Provider::Local(local) => {
            let last = u32::from(local.address_base.octets()[3]) + nodes as u32 - 1;
            if last > 254 {
                return Err(top.value_error(
                    "provider",
                    format!(
                        "address_base {} leaves no room for {nodes} nodes; pick a base whose last \
                     number is at most {}",
                        local.address_base,
                        255 - nodes
                    ),
                ));
            }
        }
        Provider::Ssh(ssh) => {
            if ssh.hosts.len() != nodes {
                return Err(top.value_error(
                    "nodes",
                    format!(
                        "nodes = {nodes}, but provider \"ssh\" names {} hosts: one node runs on \
                         each host",
                        ssh.hosts.len()
                    ),
                ));
            }
        }
    }

    let policies = decode_policies(&top, &dir)?;
    let known: BTreeSet<&str> = policies
        .iter()
        .map(|p| p.name.as_str())
        .chain(["default"])
        .collect();
    let auth = decode_auth(&top, &known)?;
    let listener = decode_listener(&top)?;
    let unsealer = decode_unsealer(&top, &provider, nodes)?;
    let unsealer_url = unsealer
        .as_ref()
        .map(|u| format!("https://{}:{}", u.address, listener.api_port));
    let seal = decode_seal(&top, unsealer_url.as_deref())?;
    if let (Some(_), false) = (&unsealer, matches!(seal, Seal::Transit(_))) {
        return Err(top.value_error(
            "unsealer",
            "an unsealer serves a transit seal: add seal \"transit\" { key_name = \"...\" } \
             (its address and CA then default to the unsealer's)",
        ));
    }
    let env = Environment {
        name,
        file: file.to_path_buf(),
        provider,
        nodes,
        server: decode_server(&top, &dir)?,
        listener,
        raft: decode_raft(&top)?,
        autopilot: decode_autopilot(&top, nodes)?,
        log: decode_log(&top)?,
        init: decode_init(&top, &seal)?,
        seal,
        tls: decode_tls(&top)?,
        audit: decode_audit(&top)?,
        policies,
        auth,
        secrets: decode_secrets(&top)?,
        admin: decode_admin(&top)?,
        snapshots: decode_snapshots(&top)?,
        unsealer,
    };
    check_admin(&top, &env)?;
    Ok(env)
}

fn check_name(top: &Section<'_, '_>, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(top.src.error(
            0,
            "",
            format!(
                "the environment is named after its file, and {name:?} is not a usable name; \
                 rename the file to lowercase letters, digits and '-' (at most 48)"
            ),
        ))
    }
}

/// The single block under `key`, if any; a second one is an error naming the first.
fn single<'n>(top: &Section<'_, 'n>, key: &str) -> Result<Option<&'n Node>, ConfigError> {
    let blocks = top.blocks(key)?;
    if let Some(extra) = blocks.get(1) {
        return Err(top.src.error(
            extra.pos,
            key,
            format!(
                "only one {key} block is allowed; the first is at line {}",
                top.src.location(blocks[0].pos).line
            ),
        ));
    }
    Ok(blocks.first().copied())
}

fn single_labelled<'n>(
    top: &Section<'_, 'n>,
    key: &str,
    example: &str,
) -> Result<Option<Labelled<'n>>, ConfigError> {
    let mut blocks = top.labelled(key, example)?;
    if let Some(extra) = blocks.get(1) {
        return Err(top.src.error(
            extra.pos,
            key,
            format!(
                "only one {key} block is allowed; the first is at line {}",
                top.src.location(blocks[0].pos).line
            ),
        ));
    }
    Ok(if blocks.is_empty() {
        None
    } else {
        Some(blocks.remove(0))
    })
}

/// Every `key "LABEL" { ... }` block of `s`; a label used twice is an error naming the line of
/// the first.
fn distinct_labelled<'n>(
    s: &Section<'_, 'n>,
    key: &str,
    example: &str,
) -> Result<Vec<Labelled<'n>>, ConfigError> {
    let blocks = s.labelled(key, example)?;
    for (i, block) in blocks.iter().enumerate() {
        if let Some(first) = blocks[..i].iter().find(|b| b.label == block.label) {
            return Err(s.src.error(
                block.label_pos,
                key,
                format!(
                    "{key} {:?} is defined twice; the first is at line {}",
                    block.label,
                    s.src.location(first.label_pos).line
                ),
            ));
        }
    }
    Ok(blocks)
}

fn decode_provider(top: &Section<'_, '_>, dir: &Path) -> Result<Provider, ConfigError> {
    let Some(block) = single_labelled(top, "provider", "provider \"local\" {}")? else {
        return Ok(Provider::Local(LocalSettings::default()));
    };
    // Each provider checks its own block.
    match block.label {
        "local" => Ok(Provider::Local(LocalSettings::decode(top.src, block.body)?)),
        "ssh" => Ok(Provider::Ssh(SshSettings::decode(
            top.src, block.body, dir,
        )?)),
        other => Err(top.src.error(
            block.label_pos,
            "provider",
            format!(
                "unknown provider {other:?}; this build provides: local, ssh (aws comes with a \
                 later release)"
            ),
        )),
    }
}

fn decode_server(top: &Section<'_, '_>, dir: &Path) -> Result<Server, ConfigError> {
    let Some(body) = single(top, "server")? else {
        return Ok(Server {
            binary: None,
            version: None,
        });
    };
    let s = Section::new(
        top.src,
        body,
        "in server",
        "server",
        &["binary", "version"],
        &[],
    )?;
    let binary = match s.path("binary")? {
        None => None,
        Some(path) => {
            let resolved = if path.is_absolute() {
                path
            } else {
                dir.join(&path)
            };
            if !is_executable(&resolved) {
                return Err(s.value_error(
                    "binary",
                    format!(
                        "{} is not an executable file (relative paths are read from {}, \
                         the environment file's directory); build it with `cargo build \
                         --release` or point binary at an installed keyhold",
                        resolved.display(),
                        dir.display()
                    ),
                ));
            }
            Some(resolved)
        }
    };
    Ok(Server {
        binary,
        version: s.string("version")?,
    })
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn decode_listener(top: &Section<'_, '_>) -> Result<Listener, ConfigError> {
    let mut out = Listener {
        api_port: 8200,
        cluster_port: 8201,
        tls_min_version: TlsVersion::Tls13,
        max_request_size: None,
    };
    let Some(body) = single(top, "listener")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in listener",
        "listener",
        &[
            "api_port",
            "cluster_port",
            "tls_min_version",
            "max_request_size",
        ],
        &[],
    )?;
    out.api_port = s.port("api_port")?.unwrap_or(out.api_port);
    out.cluster_port = s.port("cluster_port")?.unwrap_or(out.cluster_port);
    if out.api_port == out.cluster_port {
        return Err(s.value_error(
            "cluster_port",
            "must differ from api_port (the cluster port carries Raft and request forwarding)",
        ));
    }
    if let Some(v) = s.tls_version("tls_min_version")? {
        out.tls_min_version = v;
    }
    out.max_request_size = s.uint("max_request_size", u64::MAX)?;
    if out.max_request_size == Some(0) {
        return Err(s.value_error(
            "max_request_size",
            "must be a number of bytes above 0 (leave it out for the server's 32 MiB)",
        ));
    }
    Ok(out)
}

fn decode_raft(top: &Section<'_, '_>) -> Result<Raft, ConfigError> {
    let mut out = Raft {
        performance_multiplier: 1,
        snapshot_threshold: None,
    };
    let Some(body) = single(top, "raft")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in raft",
        "raft",
        &["performance_multiplier", "snapshot_threshold"],
        &[],
    )?;
    match s.uint("performance_multiplier", 10)? {
        Some(0) => {
            return Err(s.value_error(
                "performance_multiplier",
                "must be from 1 (fastest failover) to 10",
            ))
        }
        Some(m) => out.performance_multiplier = m as u32,
        None => {}
    }
    out.snapshot_threshold = s.uint("snapshot_threshold", u64::MAX)?;
    Ok(out)
}

fn decode_autopilot(top: &Section<'_, '_>, nodes: usize) -> Result<Autopilot, ConfigError> {
    // Vault's defaults, except that dead servers are cleaned up (never below a quorum of
    // this cluster's size): a provisioned cluster replaces dead nodes, it does not wait for them.
    let mut out = Autopilot {
        cleanup_dead_servers: nodes > 1,
        dead_server_last_contact_threshold: Duration::from_secs(24 * 3600),
        last_contact_threshold: Duration::from_secs(10),
        max_trailing_logs: 1000,
        min_quorum: nodes.max(3) as u32,
        server_stabilization_time: Duration::from_secs(10),
    };
    let Some(body) = single(top, "autopilot")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in autopilot",
        "autopilot",
        &[
            "cleanup_dead_servers",
            "dead_server_last_contact_threshold",
            "last_contact_threshold",
            "max_trailing_logs",
            "min_quorum",
            "server_stabilization_time",
        ],
        &[],
    )?;
    if let Some(v) = s.bool("cleanup_dead_servers")? {
        out.cleanup_dead_servers = v;
    }
    if let Some(d) = s.duration("dead_server_last_contact_threshold")? {
        if d < Duration::from_secs(60) {
            return Err(s.value_error(
                "dead_server_last_contact_threshold",
                "must be at least 1m (a shorter threshold removes servers that are only slow)",
            ));
        }
        out.dead_server_last_contact_threshold = d;
    }
    if let Some(d) = s.duration("last_contact_threshold")? {
        out.last_contact_threshold = d;
    }
    if let Some(n) = s.uint("max_trailing_logs", u64::MAX)? {
        out.max_trailing_logs = n;
    }
    if let Some(q) = s.u32("min_quorum")? {
        if q < 3 && out.cleanup_dead_servers {
            return Err(s.value_error(
                "min_quorum",
                "must be at least 3 when cleanup_dead_servers is on (as Vault requires)",
            ));
        }
        out.min_quorum = q;
    }
    if let Some(d) = s.duration("server_stabilization_time")? {
        out.server_stabilization_time = d;
    }
    Ok(out)
}

fn decode_log(top: &Section<'_, '_>) -> Result<Log, ConfigError> {
    let mut out = Log {
        level: "info".into(),
        format: "standard".into(),
        rotate_bytes: None,
        rotate_duration: None,
        rotate_max_files: None,
    };
    let Some(body) = single(top, "log")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in log",
        "log",
        &[
            "format",
            "level",
            "rotate_bytes",
            "rotate_duration",
            "rotate_max_files",
        ],
        &[],
    )?;
    if let Some(level) = s.string("level")? {
        let normal = level.to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&normal.as_str()) {
            return Err(s.value_error(
                "level",
                format!("unknown log level {level:?}; use trace, debug, info, warn or error"),
            ));
        }
        out.level = normal;
    }
    if let Some(format) = s.string("format")? {
        let normal = format.to_ascii_lowercase();
        if normal != "standard" && normal != "json" {
            return Err(s.value_error(
                "format",
                format!("unknown log format {format:?}; use \"standard\" or \"json\""),
            ));
        }
        out.format = normal;
    }
    out.rotate_bytes = s.uint("rotate_bytes", u64::MAX)?;
    out.rotate_duration = s.duration("rotate_duration")?;
    out.rotate_max_files = s.u32("rotate_max_files")?;
    Ok(out)
}

/// `unsealer { address = "127.0.5.9" }`: a one-node Keyhold the local provider runs, on a
/// loopback address outside the cluster's range.
fn decode_unsealer(
    top: &Section<'_, '_>,
    provider: &Provider,
    nodes: usize,
) -> Result<Option<Unsealer>, ConfigError> {
    let Some(body) = single(top, "unsealer")? else {
        return Ok(None);
    };
    let s = Section::new(top.src, body, "in unsealer", "unsealer", &["address"], &[])?;
    let text = s.required_string("address", "the unsealer's loopback address")?;
    let address = match text.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() && ip.octets()[3] != 0 => ip,
        _ => {
            return Err(s.value_error(
                "address",
                format!("{text:?} is not a usable loopback address; use e.g. \"127.0.5.9\""),
            ))
        }
    };
    let Provider::Local(local) = provider else {
        return Err(s.value_error(
            "address",
            "the transit unsealer is a local test helper: with provider \"ssh\", point \
             seal \"transit\" { address } at the Keyhold or Vault that holds the key",
        ));
    };
    let first = u32::from(local.address_base);
    if (first..first + nodes as u32).contains(&u32::from(address)) {
        return Err(s.value_error(
            "address",
            format!(
                "{address} is one of the cluster's node addresses ({} and the next {}); give \
                 the unsealer an address of its own",
                local.address_base,
                nodes - 1
            ),
        ));
    }
    Ok(Some(Unsealer { address }))
}

fn decode_seal(top: &Section<'_, '_>, unsealer_url: Option<&str>) -> Result<Seal, ConfigError> {
    let Some(block) = single_labelled(top, "seal", "seal \"shamir\" {}")? else {
        return Ok(Seal::Shamir);
    };
    match block.label {
        "shamir" => {
            Section::new(
                top.src,
                block.body,
                "in seal \"shamir\"",
                "seal.shamir",
                &[],
                &[],
            )?;
            Ok(Seal::Shamir)
        }
        "awskms" => {
            let s = Section::new(
                top.src,
                block.body,
                "in seal \"awskms\"",
                "seal.awskms",
                &["endpoint", "kms_key_id", "region"],
                &[],
            )?;
            let kms_key_id = s.required_string("kms_key_id", "the key's id, ARN or alias/NAME")?;
            if kms_key_id.trim().is_empty() {
                return Err(s.value_error("kms_key_id", "must not be empty"));
            }
            let endpoint = s.string("endpoint")?;
            if let Some(url) = &endpoint {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(s.value_error(
                        "endpoint",
                        format!("{url:?} is not a URL; use e.g. \"http://127.0.0.1:5000\""),
                    ));
                }
            }
            Ok(Seal::AwsKms(AwsKms {
                region: s.string("region")?,
                kms_key_id,
                endpoint,
            }))
        }
        "transit" => {
            let s = Section::new(
                top.src,
                block.body,
                "in seal \"transit\"",
                "seal.transit",
                &[
                    "address",
                    "disable_renewal",
                    "key_name",
                    "mount_path",
                    "namespace",
                    "tls_ca_cert",
                    "tls_client_cert",
                    "tls_client_key",
                    "tls_server_name",
                    "token",
                ],
                &[],
            )?;
            if s.string("token")?.is_some() {
                return Err(s.value_error(
                    "token",
                    "a token does not belong in an environment file (it is kept in git); \
                     provision passes VAULT_TOKEN from its own environment into each node's \
                     environment file (0600)",
                ));
            }
            // With an `unsealer`, the address defaults to it.
            let address = match (s.string("address")?, unsealer_url) {
                (Some(a), _) => a,
                (None, Some(url)) => url.to_string(),
                (None, None) => s.required_string("address", "the transit server's URL")?,
            };
            if !(address.starts_with("http://") || address.starts_with("https://")) {
                return Err(s.value_error(
                    "address",
                    format!("{address:?} is not a URL; use e.g. \"https://127.0.5.1:8200\""),
                ));
            }
            Ok(Seal::Transit(TransitSeal {
                address,
                key_name: s.required_string("key_name", "the transit key to encrypt with")?,
                mount_path: s.string("mount_path")?.unwrap_or_else(|| "transit/".into()),
                namespace: s.string("namespace")?,
                tls_ca_cert: s.path("tls_ca_cert")?,
                tls_client_cert: s.path("tls_client_cert")?,
                tls_client_key: s.path("tls_client_key")?,
                tls_server_name: s.string("tls_server_name")?,
                disable_renewal: s.bool("disable_renewal")?.unwrap_or(false),
            }))
        }
        other => Err(top.src.error(
            block.label_pos,
            "seal",
            format!("unknown seal {other:?}; use \"shamir\", \"awskms\" or \"transit\""),
        )),
    }
}

/// Under a Shamir seal the shares are `secret_shares`/`secret_threshold`; under an auto seal
/// init makes recovery keys instead, named `recovery_shares`/`recovery_threshold` as in
/// `vault operator init`, and the other pair is refused so the file says what it means.
fn decode_init(top: &Section<'_, '_>, seal: &Seal) -> Result<Init, ConfigError> {
    let (shares_key, threshold_key, other) = if seal.is_auto() {
        ("recovery_shares", "recovery_threshold", "secret_shares")
    } else {
        ("secret_shares", "secret_threshold", "recovery_shares")
    };
    let mut out = Init {
        secret_shares: 5,
        secret_threshold: 3,
        recipients: Vec::new(),
        per_share_recipients: false,
        revoke_root_token: true,
    };
    let Some(body) = single(top, "init")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in init",
        "init",
        &[
            "per_share_recipients",
            "recipients",
            "recovery_shares",
            "recovery_threshold",
            "revoke_root_token",
            "secret_shares",
            "secret_threshold",
        ],
        &[],
    )?;
    for wrong in [other, &other.replace("shares", "threshold")] {
        if s.uint(wrong, 255)?.is_some() {
            let why = if seal.is_auto() {
                "an auto seal (awskms, transit) has no unseal shares: init makes recovery keys; \
                 use recovery_shares and recovery_threshold"
            } else {
                "recovery keys exist only under an auto seal (awskms, transit); a shamir seal \
                 uses secret_shares and secret_threshold"
            };
            return Err(s.value_error(wrong, why));
        }
    }
    if let Some(n) = s.uint(shares_key, 255)? {
        if n == 0 {
            return Err(s.value_error(shares_key, "must be from 1 to 255"));
        }
        out.secret_shares = n as u8;
    }
    if let Some(n) = s.uint(threshold_key, 255)? {
        out.secret_threshold = n as u8;
    }
    let (shares, threshold) = (out.secret_shares, out.secret_threshold);
    if threshold > shares || threshold == 0 {
        return Err(s.value_error(
            threshold_key,
            format!("must be from 1 to {shares_key} ({shares})"),
        ));
    }
    if shares > 1 && threshold < 2 {
        return Err(s.value_error(
            threshold_key,
            format!(
                "must be at least 2 when {shares_key} is more than 1 (one share alone would \
                 open it; use {shares_key} = 1 for that)"
            ),
        ));
    }
    if let Some(list) = s.string_list("recipients")? {
        for (i, r) in list.iter().enumerate() {
            if r.starts_with("AGE-SECRET-KEY-") {
                return Err(s.value_error(
                    "recipients",
                    format!(
                        "entry {} is an age identity (a secret key); remove it from this file \
                         at once and give its public key (age1...) instead",
                        i + 1
                    ),
                ));
            }
            if !r.starts_with("age1") {
                return Err(s.value_error(
                    "recipients",
                    format!(
                        "entry {} is not an age recipient; recipients look like age1... \
                         (`age-keygen -y IDENTITY_FILE` prints one)",
                        i + 1
                    ),
                ));
            }
        }
        out.recipients = list;
    }
    out.per_share_recipients = s.bool("per_share_recipients")?.unwrap_or(false);
    if out.per_share_recipients && out.recipients.len() != usize::from(shares) {
        return Err(s.value_error(
            "per_share_recipients",
            format!(
                "one recipient per share needs exactly {shares_key} ({shares}) recipients; \
                 {} given",
                out.recipients.len()
            ),
        ));
    }
    out.revoke_root_token = s.bool("revoke_root_token")?.unwrap_or(true);
    Ok(out)
}

fn decode_tls(top: &Section<'_, '_>) -> Result<Tls, ConfigError> {
    let mut out = Tls {
        ca_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
        cert_lifetime: Duration::from_secs(365 * 24 * 3600),
        extra_sans: Vec::new(),
    };
    let Some(body) = single(top, "tls")? else {
        return Ok(out);
    };
    let s = Section::new(
        top.src,
        body,
        "in tls",
        "tls",
        &["ca_lifetime", "cert_lifetime", "extra_sans"],
        &[],
    )?;
    if let Some(d) = s.duration("ca_lifetime")? {
        out.ca_lifetime = d;
    }
    if let Some(d) = s.duration("cert_lifetime")? {
        out.cert_lifetime = d;
    }
    for (key, d) in [
        ("ca_lifetime", out.ca_lifetime),
        ("cert_lifetime", out.cert_lifetime),
    ] {
        if d < Duration::from_secs(3600) {
            return Err(s.value_error(key, "must be at least 1h"));
        }
    }
    if out.cert_lifetime > out.ca_lifetime {
        return Err(s.value_error(
            "cert_lifetime",
            "must not be longer than ca_lifetime (a certificate cannot outlive its CA)",
        ));
    }
    out.extra_sans = s.string_list("extra_sans")?.unwrap_or_default();
    Ok(out)
}

fn mount_path(s: &Section<'_, '_>, key: &str, default: &str) -> Result<String, ConfigError> {
    let path = s.string(key)?.unwrap_or_else(|| default.to_string());
    let path = path.trim_matches('/').to_string();
    let ok = !path.is_empty()
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(path)
    } else {
        Err(s.value_error(
            key,
            format!("{path:?} is not a mount path; use letters, digits, '-', '_' and '/'"),
        ))
    }
}

fn decode_audit(top: &Section<'_, '_>) -> Result<Vec<AuditDevice>, ConfigError> {
    let mut out: Vec<AuditDevice> = Vec::new();
    for block in top.labelled("audit", "audit \"file\" { file_path = \"audit.log\" }")? {
        if block.label != "file" {
            return Err(top.src.error(
                block.label_pos,
                "audit",
                format!(
                    "unsupported audit device {:?}; Keyhold provides: file",
                    block.label
                ),
            ));
        }
        let s = Section::new(
            top.src,
            block.body,
            "in audit \"file\"",
            "audit.file",
            &[
                "elide_list_responses",
                "file_path",
                "format",
                "hmac_accessor",
                "log_raw",
                "mode",
                "path",
                "prefix",
            ],
            &[],
        )?;
        let path = mount_path(&s, "path", "file")?;
        if let Some(first) = out.iter().find(|d| d.path == path) {
            return Err(s.value_error(
                "path",
                format!(
                    "audit path {:?} is used twice (first by a {} device); give each device its own path",
                    path, first.kind
                ),
            ));
        }
        let file_path = s
            .string("file_path")?
            .unwrap_or_else(|| format!("{}.log", path.replace('/', "-")));
        let mut options = Vec::new();
        for key in ["format", "prefix", "mode"] {
            if let Some(v) = s.string(key)? {
                options.push((key.to_string(), v));
            }
        }
        for key in ["elide_list_responses", "hmac_accessor", "log_raw"] {
            if let Some(v) = s.bool(key)? {
                options.push((key.to_string(), v.to_string()));
            }
        }
        out.push(AuditDevice {
            kind: "file".into(),
            path,
            file_path,
            options,
        });
    }
    Ok(out)
}

fn decode_policies(top: &Section<'_, '_>, dir: &Path) -> Result<Vec<PolicyFile>, ConfigError> {
    let mut out: Vec<PolicyFile> = Vec::new();
    for block in distinct_labelled(
        top,
        "policy",
        "policy \"vault-admin\" { file = \"policies/vault-admin.hcl\" }",
    )? {
        let s = Section::new(top.src, block.body, "in policy", "policy", &["file"], &[])?;
        let name = block.label.to_string();
        if name == "root" || name == "default" {
            return Err(top.src.error(
                block.label_pos,
                "policy",
                format!("{name:?} is a built-in policy and cannot be written; choose another name"),
            ));
        }
        let rel = s.required_path("file", "the policy file, e.g. \"policies/NAME.hcl\"")?;
        let file: PathBuf = if rel.is_absolute() {
            rel
        } else {
            dir.join(rel)
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            s.value_error(
                "file",
                format!(
                    "cannot read {} ({e}); policy files are read relative to the environment \
                     file's directory",
                    file.display()
                ),
            )
        })?;
        if let Err(e) = keyhold_config::policy::parse(&name, &text) {
            return Err(s.value_error(
                "file",
                format!("{} is not a valid policy: {e}", file.display()),
            ));
        }
        out.push(PolicyFile { name, file });
    }
    Ok(out)
}

fn decode_auth(
    top: &Section<'_, '_>,
    known: &BTreeSet<&str>,
) -> Result<Vec<AuthMethod>, ConfigError> {
    let mut out: Vec<AuthMethod> = Vec::new();
    let mut paths = BTreeSet::new();
    for block in top.labelled("auth", "auth \"userpass\" { user \"admin\" { ... } }")? {
        let method = match block.label {
            "userpass" => {
                let s = Section::new(
                    top.src,
                    block.body,
                    "in auth \"userpass\"",
                    "auth.userpass",
                    &["path", "user"],
                    &["user"],
                )?;
                let path = mount_path(&s, "path", "userpass")?;
                let mut users: Vec<UserpassUser> = Vec::new();
                for user in distinct_labelled(&s, "user", "user \"admin\" { policies = [...] }")? {
                    let u = Section::new(
                        top.src,
                        user.body,
                        "in user",
                        "auth.userpass.user",
                        &["policies", "token_max_ttl", "token_ttl"],
                        &[],
                    )?;
                    users.push(UserpassUser {
                        name: user.label.to_string(),
                        policies: policy_list(&u, "policies", known)?,
                        token_ttl: u.duration("token_ttl")?,
                        token_max_ttl: u.duration("token_max_ttl")?,
                    });
                }
                AuthMethod::Userpass { path, users }
            }
            "approle" => {
                let s = Section::new(
                    top.src,
                    block.body,
                    "in auth \"approle\"",
                    "auth.approle",
                    &["path", "role"],
                    &["role"],
                )?;
                let path = mount_path(&s, "path", "approle")?;
                let mut roles: Vec<AppRole> = Vec::new();
                for role in distinct_labelled(&s, "role", "role \"ci\" { token_policies = [...] }")?
                {
                    let r = Section::new(
                        top.src,
                        role.body,
                        "in role",
                        "auth.approle.role",
                        &[
                            "secret_id_num_uses",
                            "secret_id_ttl",
                            "token_max_ttl",
                            "token_policies",
                            "token_ttl",
                        ],
                        &[],
                    )?;
                    roles.push(AppRole {
                        name: role.label.to_string(),
                        token_policies: policy_list(&r, "token_policies", known)?,
                        token_ttl: r.duration("token_ttl")?,
                        token_max_ttl: r.duration("token_max_ttl")?,
                        secret_id_ttl: r.duration("secret_id_ttl")?,
                        secret_id_num_uses: r.uint("secret_id_num_uses", u64::MAX)?,
                    });
                }
                AuthMethod::Approle { path, roles }
            }
            other => {
                return Err(top.src.error(
                    block.label_pos,
                    "auth",
                    format!(
                        "unsupported auth method {other:?}; Keyhold provides: userpass, approle"
                    ),
                ))
            }
        };
        if method.path() == "token" || !paths.insert(method.path().to_string()) {
            return Err(top.src.error(
                block.pos,
                "auth",
                format!(
                    "auth path {:?} is already taken; give this method its own path = \"...\"",
                    method.path()
                ),
            ));
        }
        out.push(method);
    }
    Ok(out)
}

fn decode_secrets(top: &Section<'_, '_>) -> Result<Vec<SecretsEngine>, ConfigError> {
    let mut out: Vec<SecretsEngine> = Vec::new();
    for block in top.labelled("secrets", "secrets \"kv\" { path = \"kv\" }")? {
        if block.label != "kv" {
            return Err(top.src.error(
                block.label_pos,
                "secrets",
                format!(
                    "unsupported secrets engine {:?}; this build provides: kv",
                    block.label
                ),
            ));
        }
        let s = Section::new(
            top.src,
            block.body,
            "in secrets \"kv\"",
            "secrets.kv",
            &["path", "version"],
            &[],
        )?;
        let path = mount_path(&s, "path", "kv")?;
        if ["sys", "auth", "identity", "cubbyhole"].contains(&path.split('/').next().unwrap_or(""))
            || out.iter().any(|e| e.path == path)
        {
            return Err(s.value_error(
                "path",
                format!("mount path {path:?} is reserved or already used; choose another"),
            ));
        }
        let version = match s.uint("version", 255)? {
            None | Some(2) => 2,
            Some(1) => 1,
            Some(v) => return Err(s.value_error("version", format!("{v}: use 1 or 2"))),
        };
        out.push(SecretsEngine {
            kind: "kv".into(),
            path,
            version,
        });
    }
    Ok(out)
}

fn decode_admin(top: &Section<'_, '_>) -> Result<Admin, ConfigError> {
    let Some(body) = single(top, "admin")? else {
        return Ok(Admin {
            auth_path: "userpass".into(),
            user: "admin".into(),
        });
    };
    let s = Section::new(
        top.src,
        body,
        "in admin",
        "admin",
        &["auth_path", "user"],
        &[],
    )?;
    Ok(Admin {
        auth_path: mount_path(&s, "auth_path", "userpass")?,
        user: s.string("user")?.unwrap_or_else(|| "admin".into()),
    })
}

fn decode_snapshots(top: &Section<'_, '_>) -> Result<Option<Snapshots>, ConfigError> {
    let Some(body) = single(top, "snapshots")? else {
        return Ok(None);
    };
    let s = Section::new(
        top.src,
        body,
        "in snapshots",
        "snapshots",
        &["drill", "retain", "retain_for", "s3", "schedule"],
        &[],
    )?;
    let schedule = s.string("schedule")?.unwrap_or_else(|| "hourly".into());
    if schedule.contains('\n') || schedule.trim().is_empty() {
        return Err(s.value_error(
            "schedule",
            "must be a systemd calendar expression such as \"hourly\" or \"*-*-* *:00/15:00\"",
        ));
    }
    let retain = s.u32("retain")?;
    if retain == Some(0) {
        return Err(s.value_error("retain", "must be at least 1 (or leave it out)"));
    }
    Ok(Some(Snapshots {
        schedule,
        retain,
        retain_for: s.duration("retain_for")?,
        s3: decode_snapshot_s3(&s)?,
        drill: decode_drill(&s)?,
    }))
}

fn decode_drill(snapshots: &Section<'_, '_>) -> Result<Option<DrillSchedule>, ConfigError> {
    let Some(body) = single(snapshots, "drill")? else {
        return Ok(None);
    };
    if snapshots.one("s3").is_none() {
        return Err(snapshots.value_error(
            "drill",
            "drills restore what is in the snapshot bucket: add snapshots { s3 { bucket = ... } }",
        ));
    }
    let s = Section::new(
        snapshots.src,
        body,
        "in snapshots.drill",
        "snapshots.drill",
        &["after_upload", "poll_interval", "schedule"],
        &[],
    )?;
    let schedule = s.string("schedule")?;
    if let Some(text) = &schedule {
        keyhold_snapshot::Schedule::parse(text).map_err(|e| s.value_error("schedule", e))?;
    }
    let after_upload = s.bool("after_upload")?.unwrap_or(false);
    if schedule.is_none() && !after_upload {
        return Err(snapshots.value_error(
            "drill",
            "a drill block needs schedule = \"weekly\" (or another schedule), \
             after_upload = true, or both",
        ));
    }
    let poll_interval = s.duration("poll_interval")?.unwrap_or(DEFAULT_DRILL_POLL);
    if poll_interval < Duration::from_secs(1) {
        return Err(s.value_error("poll_interval", "must be at least 1s"));
    }
    Ok(Some(DrillSchedule {
        schedule,
        after_upload,
        poll_interval,
    }))
}

fn decode_snapshot_s3(snapshots: &Section<'_, '_>) -> Result<Option<SnapshotS3>, ConfigError> {
    let Some(body) = single(snapshots, "s3")? else {
        return Ok(None);
    };
    let s = Section::new(
        snapshots.src,
        body,
        "in snapshots.s3",
        "snapshots.s3",
        &["bucket", "endpoint", "kms_key_id", "prefix", "region"],
        &[],
    )?;
    let bucket = s.required_string("bucket", "the S3 bucket snapshots are stored in")?;
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(s.value_error(
            "bucket",
            "must be an S3 bucket name: 3 to 63 lowercase letters, digits, '-' or '.'",
        ));
    }
    let endpoint = s.string("endpoint")?;
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(s.value_error("endpoint", "must be an http:// or https:// URL"));
        }
    }
    Ok(Some(SnapshotS3 {
        bucket,
        prefix: s.string("prefix")?.unwrap_or_default(),
        region: s.string("region")?.unwrap_or_else(|| "us-east-1".into()),
        endpoint,
        kms_key_id: s.string("kms_key_id")?,
    }))
}

/// The admin login must name a userpass user this environment creates.
fn check_admin(top: &Section<'_, '_>, env: &Environment) -> Result<(), ConfigError> {
    let found = env.auth.iter().any(|m| match m {
        AuthMethod::Userpass { path, users } => {
            path == &env.admin.auth_path && users.iter().any(|u| u.name == env.admin.user)
        }
        AuthMethod::Approle { .. } => false,
    });
    if found {
        return Ok(());
    }
    let pos = top.src.location(0);
    let key = if top.blocks("admin")?.is_empty() {
        "auth"
    } else {
        "admin"
    };
    let at = top.blocks("admin")?.first().map_or(0, |n| n.pos);
    Err(ConfigError::new(
        if at == 0 { pos } else { top.src.location(at) },
        key,
        format!(
            "the admin login is user {:?} of the userpass method at {:?}, which this file does \
             not create; add auth \"userpass\" {{ path = \"{}\" user \"{}\" {{ policies = \
             [\"vault-admin\"] }} }}, or point admin {{ auth_path, user }} at an existing user",
            env.admin.user, env.admin.auth_path, env.admin.auth_path, env.admin.user
        ),
    ))
}

/// Policies named by users and roles must be defined here (or built in), so a typo does not
/// create a login with no rights.
fn policy_list(
    s: &Section<'_, '_>,
    key: &str,
    known: &BTreeSet<&str>,
) -> Result<Vec<String>, ConfigError> {
    let list = s.string_list(key)?.unwrap_or_default();
    for policy in &list {
        if policy == "root" {
            return Err(s.value_error(
                key,
                "the root policy cannot be given to a login; define a policy with \
                 policy \"NAME\" { file = ... } and name it here",
            ));
        }
        if !known.contains(policy.as_str()) {
            return Err(s.value_error(
                key,
                format!(
                    "policy {policy:?} is not defined in this environment; add \
                     policy {policy:?} {{ file = \"policies/{policy}.hcl\" }} or fix the name \
                     (defined: {})",
                    known.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(list)
}
