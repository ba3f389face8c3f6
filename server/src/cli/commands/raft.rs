//! `operator raft list-peers|join|remove-peer|snapshot save|restore|inspect|autopilot
//! get-config|set-config|state` and `operator members`, with vault's flags and output
//! (HV:command/operator_raft_*.go, operator_members.go, format.go).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::client::go_duration::format_go_duration;
use crate::client::snapshot::{self, InspectOptions, SnapshotInfo};
use crate::client::{
    AutopilotConfig, AutopilotConfigUpdate, AutopilotState, HaStatus, JoinRequest,
    RaftConfiguration,
};

use super::super::args::{
    AutopilotCmd, AutopilotSetConfigCmd, RaftCmd, RaftJoinCmd, RaftSnapshotCmd,
    RaftSnapshotInspectCmd, RaftSnapshotRestoreCmd,
};
use super::super::output::table;
use super::{CliError, Context, Ui};

pub async fn run(ctx: &Context, ui: &mut Ui, cmd: RaftCmd) -> Result<u8, CliError> {
    match cmd {
        RaftCmd::ListPeers(dr) => {
            no_dr_token(dr.dr_token.as_deref())?;
            list_peers(ctx, ui).await
        }
        RaftCmd::Join(cmd) => join(ctx, ui, cmd).await,
        RaftCmd::RemovePeer(cmd) => {
            no_dr_token(cmd.dr_token.as_deref())?;
            let id = cmd.server_id.unwrap_or_default();
            if id.trim().is_empty() {
                return Err(CliError::Usage("Server id is required".into()));
            }
            ctx.client()?
                .raft_remove_peer(id.trim())
                .await
                .map_err(|e| CliError::api("Error removing the peer from raft cluster", e))?;
            ui.output("Peer removed successfully!");
            Ok(0)
        }
        RaftCmd::Snapshot(RaftSnapshotCmd::Save { file }) => snapshot_save(ctx, &file).await,
        RaftCmd::Snapshot(RaftSnapshotCmd::Restore(cmd)) => snapshot_restore(ctx, ui, cmd).await,
        RaftCmd::Snapshot(RaftSnapshotCmd::Inspect(cmd)) => snapshot_inspect(ui, cmd),
        RaftCmd::Autopilot(AutopilotCmd::GetConfig(dr)) => {
            no_dr_token(dr.dr_token.as_deref())?;
            let config = ctx
                .client()?
                .autopilot_configuration()
                .await
                .map_err(|e| CliError::api("Error reading the autopilot configuration", e))?;
            // Vault prints nothing when the server has no autopilot (404).
            if let Some(config) = config {
                if ui.is_table() {
                    ui.output(&autopilot_config_table(&config));
                } else {
                    ui.structured(&config)?;
                }
            }
            Ok(0)
        }
        RaftCmd::Autopilot(AutopilotCmd::SetConfig(cmd)) => set_config(ctx, ui, cmd).await,
        RaftCmd::Autopilot(AutopilotCmd::State(dr)) => {
            no_dr_token(dr.dr_token.as_deref())?;
            let state = ctx
                .client()?
                .autopilot_state()
                .await
                .map_err(|e| CliError::api("Error checking autopilot state", e))?;
            if let Some(state) = state {
                if ui.is_table() {
                    ui.output(&autopilot_state_text(&state));
                } else {
                    ui.structured(&autopilot_state_go(&state))?;
                }
            }
            Ok(0)
        }
    }
}

/// `operator members`.
pub async fn members(ctx: &Context, ui: &mut Ui) -> Result<u8, CliError> {
    let status = ctx
        .client()?
        .ha_status()
        .await
        .map_err(|e| CliError::api("Error reading the HA status", e))?;
    if ui.is_table() {
        ui.output(&members_table(&status));
    } else {
        ui.structured(&status)?;
    }
    Ok(0)
}

fn no_dr_token(token: Option<&str>) -> Result<(), CliError> {
    match token {
        Some(_) => Err(CliError::NotSupported(
            "-dr-token: DR operation tokens are a Vault Enterprise feature that keyhold does not \
             have"
                .into(),
        )),
        None => Ok(()),
    }
}

async fn list_peers(ctx: &Context, ui: &mut Ui) -> Result<u8, CliError> {
    let secret = ctx
        .client()?
        .raft_configuration_secret()
        .await
        .map_err(|e| CliError::api("Error reading the raft cluster configuration", e))?
        .ok_or_else(|| CliError::Remote("No raft cluster configuration found".into()))?;
    if !ui.is_table() {
        ui.structured(&secret)?;
        return Ok(0);
    }
    let config = RaftConfiguration::from_secret(&secret).map_err(|e| {
        CliError::Remote(format!("Error reading the raft cluster configuration: {e}"))
    })?;
    ui.output(&list_peers_table(&config));
    Ok(0)
}

/// `list-peers`' table: `Node  Address  State  Voter`.
pub fn list_peers_table(config: &RaftConfiguration) -> String {
    let rows: Vec<Vec<String>> = config
        .servers
        .iter()
        .map(|s| {
            vec![
                s.node_id.clone(),
                s.address.clone(),
                if s.leader { "leader" } else { "follower" }.into(),
                s.voter.to_string(),
            ]
        })
        .collect();
    table(&["Node", "Address", "State", "Voter"], &rows)
}

async fn join(ctx: &Context, ui: &mut Ui, cmd: RaftJoinCmd) -> Result<u8, CliError> {
    let leader = cmd.leader.as_deref().unwrap_or_default().trim().to_string();
    if leader.contains("provider=") {
        return Err(CliError::NotSupported(
            "Cloud auto-join (\"provider=...\") is not supported by keyhold; give the leader's \
             API address instead, e.g. https://vault-1.internal:8200"
                .into(),
        ));
    }
    let req = join_request(&cmd, leader)?;
    let resp = ctx
        .client()?
        .raft_join(&req)
        .await
        .map_err(|e| CliError::api("Error joining the node to the Raft cluster", e))?;
    if ui.is_table() {
        ui.output(&table(
            &["Key", "Value"],
            &[vec!["Joined".into(), resp.joined.to_string()]],
        ));
    } else {
        ui.structured(&resp)?;
    }
    Ok(0)
}

/// The join request of `raft join`: TLS material given inline or as `@file`.
pub fn join_request(cmd: &RaftJoinCmd, leader: String) -> Result<JoinRequest, CliError> {
    let pem = |value: &Option<String>, what: &str| -> Result<String, CliError> {
        flag_file(value.as_deref().unwrap_or_default())
            .map_err(|e| CliError::Local(format!("Failed to parse {what}: {e}")))
    };
    Ok(JoinRequest {
        leader_api_addr: leader,
        retry: cmd.retry,
        leader_ca_cert: pem(&cmd.leader_ca_cert, "leader CA certificate")?,
        leader_client_cert: pem(&cmd.leader_client_cert, "leader client certificate")?,
        leader_client_key: pem(&cmd.leader_client_key, "leader client key")?,
        leader_tls_servername: cmd.leader_tls_servername.clone().unwrap_or_default(),
        non_voter: cmd.non_voter,
    })
}

/// A flag value, or the contents of the file it names with a leading `@` (vault's
/// `parseFlagFile`).
fn flag_file(raw: &str) -> Result<String, String> {
    match raw.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("error reading file {path:?}: {e}"))
        }
        None => Ok(raw.to_string()),
    }
}

async fn snapshot_save(ctx: &Context, file: &str) -> Result<u8, CliError> {
    let path = PathBuf::from(file.trim());
    if path.as_os_str().is_empty() {
        return Err(CliError::Usage("Output file name is required".into()));
    }
    let client = ctx.client()?;
    // Create the file before asking the server, so an unwritable directory costs nothing.
    let mut pending = PendingFile::beside(&path).map_err(|e| {
        CliError::Local(format!(
            "Error creating the snapshot file {}: {e}",
            path.display()
        ))
    })?;
    client
        .raft_snapshot_save(pending.file())
        .await
        .map_err(|e| CliError::api("Error taking the snapshot", e))?;
    pending.persist(&path).map_err(|e| {
        CliError::Local(format!(
            "Error taking the snapshot: writing {}: {e}",
            path.display()
        ))
    })?;
    Ok(0)
}

/// A snapshot being written: a `0600` temporary file beside its destination, renamed over it
/// once complete and removed if dropped before that, so a failed save never leaves a partial
/// file behind (nor replaces a good one).
pub struct PendingFile {
    file: Option<File>,
    tmp: PathBuf,
}

impl PendingFile {
    pub fn beside(dest: &Path) -> std::io::Result<PendingFile> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| std::io::Error::other("the path names no file"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.{nanos}.partial", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(PendingFile {
            file: Some(file),
            tmp,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until persisted")
    }

    /// Flushes the data to disk and renames the file to `dest`.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        let mut file = self.file.take().expect("open until persisted");
        file.flush()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, dest)?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Best effort: make the rename itself durable.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

async fn snapshot_restore(
    ctx: &Context,
    ui: &mut Ui,
    cmd: RaftSnapshotRestoreCmd,
) -> Result<u8, CliError> {
    let file = cmd.file.trim();
    if file.is_empty() {
        return Err(CliError::Usage("Snapshot file name is required".into()));
    }
    let archive = std::fs::read(file)
        .map_err(|e| CliError::Local(format!("Error opening snapshot file {file}: {e}")))?;
    if cmd.offline {
        if cmd.config.is_empty() {
            return Err(CliError::Usage(
                "-offline needs -config=FILE (the server's config, for its storage path)".into(),
            ));
        }
        let done = crate::server::restore_offline(&cmd.config, &archive)
            .await
            .map_err(|e| CliError::Local(format!("Error restoring the snapshot offline: {e:#}")))?;
        ui.output(&done);
        return Ok(0);
    }
    ctx.client()?
        .raft_snapshot_restore(archive, cmd.force)
        .await
        .map_err(|e| CliError::api("Error installing the snapshot", e))?;
    Ok(0)
}

fn snapshot_inspect(ui: &mut Ui, cmd: RaftSnapshotInspectCmd) -> Result<u8, CliError> {
    if cmd.depth < 0 {
        return Err(CliError::Usage(
            "Depth must be equal to or greater than 0".into(),
        ));
    }
    let opts = InspectOptions {
        details: cmd.details.unwrap_or(true),
        depth: cmd.depth as usize,
        filter: cmd.filter.unwrap_or_default(),
    };
    let file = File::open(&cmd.file)
        .map_err(|e| CliError::Local(format!("Error opening snapshot file {}: {e}", cmd.file)))?;
    let info = snapshot::inspect(BufReader::new(file), &opts)
        .map_err(|e| CliError::Local(format!("Error reading snapshot: {e}")))?;
    if ui.is_table() {
        ui.output(&inspect_text(&info, opts.details));
    } else {
        ui.structured(&inspect_go(&info, opts.details))?;
    }
    Ok(0)
}

/// `snapshot inspect`'s text: vault's tabwriter layout (min width 8, padding 6).
pub fn inspect_text(info: &SnapshotInfo, details: bool) -> String {
    let m = &info.meta;
    let mut text = format!(
        " ID\t{}\n Size\t{}\n Index\t{}\n Term\t{}\n Version\t{}\n",
        m.id, m.size, m.index, m.term, m.version
    );
    if details && !info.stats.is_empty() {
        text.push_str("\n\n Key Name\tCount\tSize\n ----\t----\t----");
        for s in &info.stats {
            text.push_str(&format!(
                "\n {}\t{}\t{}",
                s.name,
                s.count,
                byte_size(s.size)
            ));
        }
        text.push_str("\n ----\t----");
        text.push_str(&format!("\n Total Size\t\t{}", byte_size(info.total_size)));
    }
    tabwriter(&text, 8, 6)
}

/// `snapshot inspect -format=json`: vault's Go field names.
pub fn inspect_go(info: &SnapshotInfo, details: bool) -> Value {
    let stats = if details && !info.stats.is_empty() {
        Value::Array(
            info.stats
                .iter()
                .map(|s| json!({"Name": s.name, "Count": s.count, "Size": s.size}))
                .collect(),
        )
    } else {
        Value::Null
    };
    let m = &info.meta;
    json!({
        "Meta": {"ID": m.id, "Size": m.size, "Index": m.index, "Term": m.term, "Version": m.version},
        "StatsKV": stats,
        "TotalCountKV": info.total_count,
        "TotalSizeKV": info.total_size,
    })
}

/// Sizes as vault's `ByteSize`: `0`, `512B`, `1.5KB`, `2MB`.
pub fn byte_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TB"),
        (1 << 30, "GB"),
        (1 << 20, "MB"),
        (1 << 10, "KB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    for (size, unit) in UNITS {
        if bytes >= size {
            let text = format!("{:.1}", bytes as f64 / size as f64);
            return format!("{}{unit}", text.trim_end_matches(".0"));
        }
    }
    format!("{bytes}B")
}

/// Go's `text/tabwriter` with a space pad character and no flags: tab-terminated cells are
/// aligned in column blocks (runs of lines that have a cell in that column), each as wide as
/// its widest cell plus `padding`, at least `min_width`; a line's last cell is not padded.
pub fn tabwriter(text: &str, min_width: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<Vec<usize>> = lines.iter().map(|l| vec![0; l.len()]).collect();
    fn blocks(
        lines: &[Vec<&str>],
        widths: &mut [Vec<usize>],
        range: std::ops::Range<usize>,
        column: usize,
        min_width: usize,
        padding: usize,
    ) {
        let mut i = range.start;
        while i < range.end {
            if column + 1 >= lines[i].len() {
                i += 1;
                continue;
            }
            let start = i;
            let mut width = min_width;
            while i < range.end && column + 1 < lines[i].len() {
                width = width.max(lines[i][column].chars().count() + padding);
                i += 1;
            }
            for w in &mut widths[start..i] {
                w[column] = width;
            }
            blocks(lines, widths, start..i, column + 1, min_width, padding);
        }
    }
    blocks(&lines, &mut widths, 0..lines.len(), 0, min_width, padding);
    lines
        .iter()
        .zip(&widths)
        .map(|(cells, widths)| {
            let mut line = String::new();
            for (j, cell) in cells.iter().enumerate() {
                line.push_str(cell);
                if j + 1 < cells.len() {
                    let pad = widths[j].saturating_sub(cell.chars().count());
                    line.push_str(&" ".repeat(pad));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `autopilot get-config`'s table.
pub fn autopilot_config_table(c: &AutopilotConfig) -> String {
    let rows = vec![
        vec![
            "Cleanup Dead Servers".into(),
            c.cleanup_dead_servers.to_string(),
        ],
        vec![
            "Last Contact Threshold".into(),
            format_go_duration(c.last_contact_threshold),
        ],
        vec![
            "Dead Server Last Contact Threshold".into(),
            format_go_duration(c.dead_server_last_contact_threshold),
        ],
        vec![
            "Server Stabilization Time".into(),
            format_go_duration(c.server_stabilization_time),
        ],
        vec!["Min Quorum".into(), c.min_quorum.to_string()],
        vec!["Max Trailing Logs".into(), c.max_trailing_logs.to_string()],
        vec![
            "Disable Upgrade Migration".into(),
            c.disable_upgrade_migration.to_string(),
        ],
    ];
    table(&["Key", "Value"], &rows)
}

async fn set_config(
    ctx: &Context,
    ui: &mut Ui,
    cmd: AutopilotSetConfigCmd,
) -> Result<u8, CliError> {
    no_dr_token(cmd.dr_token.as_deref())?;
    let update = config_update(&cmd);
    let secret = ctx
        .client()?
        .autopilot_set_configuration(&update)
        .await
        .map_err(|e| CliError::api("Error setting the autopilot configuration", e))?;
    // Vault prints the answer if there is one; the endpoint usually answers 204.
    if let Some(secret) = secret {
        ui.secret(&secret)?;
    }
    Ok(0)
}

/// What `set-config` sends: as vault, numbers and durations only when above zero.
pub fn config_update(cmd: &AutopilotSetConfigCmd) -> AutopilotConfigUpdate {
    let positive_d = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
    let positive = |n: Option<u64>| n.filter(|n| *n > 0);
    AutopilotConfigUpdate {
        cleanup_dead_servers: cmd.cleanup_dead_servers,
        last_contact_threshold: positive_d(cmd.last_contact_threshold),
        dead_server_last_contact_threshold: positive_d(cmd.dead_server_last_contact_threshold),
        max_trailing_logs: positive(cmd.max_trailing_logs),
        min_quorum: positive(cmd.min_quorum),
        server_stabilization_time: positive_d(cmd.server_stabilization_time),
        disable_upgrade_migration: cmd.disable_upgrade_migration,
    }
}

/// `autopilot state`'s text: vault's "pretty" format.
pub fn autopilot_state_text(state: &AutopilotState) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Healthy:                         {}",
        state.healthy
    ));
    line(format!(
        "Failure Tolerance:               {}",
        state.failure_tolerance
    ));
    line(format!("Leader:                          {}", state.leader));
    line("Voters:".into());
    for v in &state.voters {
        line(format!("   {v}"));
    }
    if !state.non_voters.is_empty() {
        line("Non Voters:".into());
        for v in &state.non_voters {
            line(format!("   {v}"));
        }
    }
    if state.optimistic_failure_tolerance > 0 {
        line(format!(
            "Optimistic Failure Tolerance:    {}",
            state.optimistic_failure_tolerance
        ));
    }
    line("Servers:".into());
    for s in state.servers.values() {
        line(format!("   {}", s.id));
        line(format!("      Name:              {}", s.name));
        line(format!("      Address:           {}", s.address));
        line(format!("      Status:            {}", s.status));
        line(format!("      Node Status:       {}", s.node_status));
        line(format!("      Healthy:           {}", s.healthy));
        line(format!("      Last Contact:      {}", s.last_contact));
        line(format!("      Last Term:         {}", s.last_term));
        line(format!("      Last Index:        {}", s.last_index));
        line(format!("      Version:           {}", s.version));
        if !s.upgrade_version.is_empty() {
            line(format!("      Upgrade Version:   {}", s.upgrade_version));
        }
        if !s.redundancy_zone.is_empty() {
            line(format!("      Redundancy Zone:   {}", s.redundancy_zone));
        }
        if !s.node_type.is_empty() {
            line(format!("      Node Type:         {}", s.node_type));
        }
    }
    if let Some(zones) = state.redundancy_zones.as_ref().filter(|z| !z.is_empty()) {
        line("Redundancy Zones:".into());
        for (name, zone) in zones {
            let mut servers = zone.servers.clone();
            let mut voters = zone.voters.clone();
            servers.sort();
            voters.sort();
            line(format!("   {name}"));
            line(format!("      Servers: {}", servers.join(", ")));
            line(format!("      Voters: {}", voters.join(", ")));
            line(format!(
                "      Failure Tolerance: {}",
                zone.failure_tolerance
            ));
        }
    }
    if let Some(u) = &state.upgrade_info {
        line("Upgrade Info:".into());
        line(format!("   Status: {}", u.status));
        line(format!("   Target Version: {}", u.target_version));
        line(format!(
            "   Target Version Voters: {}",
            u.target_version_voters.join(", ")
        ));
        line(format!(
            "   Target Version Non-Voters: {}",
            u.target_version_non_voters.join(", ")
        ));
        line(format!(
            "   Other Version Voters: {}",
            u.other_version_voters.join(", ")
        ));
        line(format!(
            "   Other Version Non-Voters: {}",
            u.other_version_non_voters.join(", ")
        ));
        if !u.redundancy_zones.is_empty() {
            line("   Redundancy Zones:".into());
            for (name, z) in &u.redundancy_zones {
                line(format!("      {name}"));
                line(format!(
                    "         Target Version Voters: {}",
                    z.target_version_voters.join(", ")
                ));
                line(format!(
                    "         Target Version Non-Voters: {}",
                    z.target_version_non_voters.join(", ")
                ));
                line(format!(
                    "         Other Version Voters: {}",
                    z.other_version_voters.join(", ")
                ));
                line(format!(
                    "         Other Version Non-Voters: {}",
                    z.other_version_non_voters.join(", ")
                ));
            }
        }
    }
    out
}

/// `autopilot state -format=json`: vault marshals its Go struct, which has no JSON tags, so
/// the keys are Go field names (`Healthy`, `FailureTolerance`, `Servers.<id>.LastContact`).
pub fn autopilot_state_go(state: &AutopilotState) -> Value {
    let list = |v: &[String]| -> Value {
        if v.is_empty() {
            Value::Null
        } else {
            json!(v)
        }
    };
    let servers: serde_json::Map<String, Value> = state
        .servers
        .iter()
        .map(|(id, s)| {
            (
                id.clone(),
                json!({
                    "ID": s.id, "Name": s.name, "Address": s.address, "NodeStatus": s.node_status,
                    "LastContact": s.last_contact, "LastTerm": s.last_term,
                    "LastIndex": s.last_index, "Healthy": s.healthy,
                    "StableSince": s.stable_since, "Status": s.status, "Version": s.version,
                    "UpgradeVersion": s.upgrade_version, "RedundancyZone": s.redundancy_zone,
                    "NodeType": s.node_type,
                }),
            )
        })
        .collect();
    let zones = state.redundancy_zones.as_ref().map(|zones| {
        zones
            .iter()
            .map(|(name, z)| {
                (
                    name.clone(),
                    json!({"Servers": list(&z.servers), "Voters": list(&z.voters),
                           "FailureTolerance": z.failure_tolerance}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
    });
    let upgrade = state.upgrade_info.as_ref().map(|u| {
        let zones: serde_json::Map<String, Value> = u
            .redundancy_zones
            .iter()
            .map(|(name, z)| {
                (
                    name.clone(),
                    json!({
                        "TargetVersionVoters": list(&z.target_version_voters),
                        "TargetVersionNonVoters": list(&z.target_version_non_voters),
                        "OtherVersionVoters": list(&z.other_version_voters),
                        "OtherVersionNonVoters": list(&z.other_version_non_voters),
                    }),
                )
            })
            .collect();
        json!({
            "Status": u.status, "TargetVersion": u.target_version,
            "TargetVersionVoters": list(&u.target_version_voters),
            "TargetVersionNonVoters": list(&u.target_version_non_voters),
            "TargetVersionReadReplicas": Value::Null,
            "OtherVersionVoters": list(&u.other_version_voters),
            "OtherVersionNonVoters": list(&u.other_version_non_voters),
            "OtherVersionReadReplicas": Value::Null,
            "RedundancyZones": if zones.is_empty() { Value::Null } else { Value::Object(zones) },
        })
    });
    json!({
        "Healthy": state.healthy,
        "FailureTolerance": state.failure_tolerance,
        "Servers": servers,
        "Leader": state.leader,
        "Voters": list(&state.voters),
        "NonVoters": list(&state.non_voters),
        "RedundancyZones": zones,
        "Upgrade": upgrade,
        "OptimisticFailureTolerance": state.optimistic_failure_tolerance,
    })
}

/// `operator members`' table; `Last Echo` in RFC 3339 to the second, as vault prints it.
pub fn members_table(status: &HaStatus) -> String {
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let echo = n
                .last_echo
                .as_deref()
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|_| t.to_string())
                })
                .unwrap_or_default();
            vec![
                n.hostname.clone(),
                n.api_address.clone(),
                n.cluster_address.clone(),
                n.active_node.to_string(),
                n.version.clone(),
                n.upgrade_version.clone(),
                n.redundancy_zone.clone(),
                echo,
            ]
        })
        .collect();
    table(
        &[
            "Host Name",
            "API Address",
            "Cluster Address",
            "Active Node",
            "Version",
            "Upgrade Version",
            "Redundancy Zone",
            "Last Echo",
        ],
        &rows,
    )
}
