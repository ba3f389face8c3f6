//! `status`: seal status and HA mode, as vault's `OutputSealStatus`.

use serde_json::Value;

use crate::client::{Client, LeaderResponse, SealStatus};

use super::super::output::columns;
use super::{CliError, Context, Ui};

pub async fn status(ctx: &Context, ui: &mut Ui) -> Result<u8, CliError> {
    // vault exits 1 (not 2) when status cannot be read: 2 means "sealed" here.
    let client = ctx.client()?;
    let status = client
        .seal_status()
        .await
        .map_err(|e| CliError::Local(format!("Error checking seal status: {e}")))?;
    print_seal_status(ui, &client, &status).await?;
    Ok(if status.sealed { 2 } else { 0 })
}

/// Prints a seal status with the leader's HA fields, as `status` and `operator unseal` do.
pub async fn print_seal_status(
    ui: &mut Ui,
    client: &Client,
    status: &SealStatus,
) -> Result<(), CliError> {
    let leader = match client.leader().await {
        Ok(l) => l,
        Err(e) if e.is_sealed() || status.sealed => LeaderResponse {
            ha_enabled: true,
            ..Default::default()
        },
        Err(e) => {
            return Err(CliError::Local(format!(
                "Error checking leader status: {e}"
            )))
        }
    };
    if ui.is_table() {
        if let Some(field) = ui.field.clone() {
            let v = status_json(status, &leader);
            let value = v.get(&field).ok_or_else(|| {
                CliError::Local(format!("Field \"{field}\" not present in secret"))
            })?;
            return ui.raw_field(value);
        }
        ui.output(&seal_status_table(status, &leader));
        Ok(())
    } else {
        ui.structured(&status_json(status, &leader))
    }
}

/// vault's `SealStatusOutput`: the seal status plus the leader's fields.
fn status_json(status: &SealStatus, leader: &LeaderResponse) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.insert("ha_enabled".into(), leader.ha_enabled.into());
        let mut put = |k: &str, val: Value, present: bool| {
            if present {
                map.insert(k.into(), val);
            }
        };
        put("is_self", leader.is_self.into(), leader.is_self);
        put(
            "active_time",
            leader.active_time.clone().into(),
            !leader.active_time.is_empty(),
        );
        put(
            "leader_address",
            leader.leader_address.clone().into(),
            !leader.leader_address.is_empty(),
        );
        put(
            "leader_cluster_address",
            leader.leader_cluster_address.clone().into(),
            !leader.leader_cluster_address.is_empty(),
        );
        put(
            "raft_committed_index",
            leader.raft_committed_index.into(),
            leader.raft_committed_index > 0,
        );
        put(
            "raft_applied_index",
            leader.raft_applied_index.into(),
            leader.raft_applied_index > 0,
        );
    }
    v
}

/// The `Key Value` table of `vault status`.
pub fn seal_status_table(status: &SealStatus, leader: &LeaderResponse) -> String {
    let prefix = if status.recovery_seal {
        "Recovery "
    } else {
        ""
    };
    let mut rows: Vec<(String, String)> = vec![("Seal Type".into(), status.seal_type.clone())];
    if status.recovery_seal {
        let kind = if status.recovery_seal_type.is_empty() {
            "shamir"
        } else {
            &status.recovery_seal_type
        };
        rows.push(("Recovery Seal Type".into(), kind.to_string()));
    }
    rows.extend([
        ("Initialized".into(), status.initialized.to_string()),
        ("Sealed".into(), status.sealed.to_string()),
        (format!("Total {prefix}Shares"), status.n.to_string()),
        ("Threshold".into(), status.t.to_string()),
    ]);
    if status.sealed {
        rows.push((
            "Unseal Progress".into(),
            format!("{}/{}", status.progress, status.t),
        ));
        rows.push(("Unseal Nonce".into(), status.nonce.clone()));
    }
    if status.migration {
        rows.push(("Seal Migration in Progress".into(), "true".into()));
    }
    for warning in &status.warnings {
        rows.push(("Warning".into(), warning.clone()));
    }
    rows.push(("Version".into(), status.version.clone()));
    rows.push(("Build Date".into(), status.build_date.clone()));
    rows.push(("Storage Type".into(), status.storage_type.clone()));
    if !status.cluster_name.is_empty() && !status.cluster_id.is_empty() {
        rows.push(("Cluster Name".into(), status.cluster_name.clone()));
        rows.push(("Cluster ID".into(), status.cluster_id.clone()));
    }
    rows.push(("HA Enabled".into(), leader.ha_enabled.to_string()));
    if leader.ha_enabled && !status.sealed {
        rows.push(("HA Cluster".into(), leader.leader_cluster_address.clone()));
        if leader.is_self {
            rows.push(("HA Mode".into(), "active".into()));
            if !leader.active_time.is_empty() && !leader.active_time.starts_with("0001-") {
                rows.push(("Active Since".into(), leader.active_time.clone()));
            }
        } else {
            rows.push(("HA Mode".into(), "standby".into()));
            let addr = if leader.leader_address.is_empty() {
                "<none>".to_string()
            } else {
                leader.leader_address.clone()
            };
            rows.push(("Active Node Address".into(), addr));
        }
    }
    if leader.raft_committed_index > 0 {
        rows.push((
            "Raft Committed Index".into(),
            leader.raft_committed_index.to_string(),
        ));
    }
    if leader.raft_applied_index > 0 {
        rows.push((
            "Raft Applied Index".into(),
            leader.raft_applied_index.to_string(),
        ));
    }
    if !status.warnings.is_empty() {
        rows.push((
            "Warnings".into(),
            format!("[{}]", status.warnings.join(" ")),
        ));
    }
    let mut all = vec![
        vec!["Key".to_string(), "Value".to_string()],
        vec!["---".to_string(), "-----".to_string()],
    ];
    all.extend(rows.into_iter().map(|(k, v)| vec![k, v]));
    columns(&all)
}
