//! `provision status`: per node its role, version, Raft index, last contact and health code,
//! and the cluster's failure tolerance (from autopilot, read with the admin login, or
//! estimated).

use anyhow::Result;
use serde::Serialize;

use crate::cluster::Role;
use crate::deployment::Deployment;
use crate::providers::{Service, ServiceState};

/// One node in `provision status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: Role,
    pub version: Option<String>,
    pub raft_applied_index: Option<u64>,
    /// Time since the leader last heard from it, as autopilot reports it (Go duration text).
    pub last_contact: Option<String>,
    /// The `sys/health` status code; None when the node does not answer.
    pub health_code: Option<u16>,
    pub pid: Option<u32>,
}

/// `provision status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub environment: String,
    pub nodes: Vec<NodeStatus>,
    /// How many voters may fail with the cluster still serving.
    pub failure_tolerance: i64,
    /// Whether autopilot (read with the admin login) supplied the figures above.
    pub autopilot: bool,
    /// The transit unsealer, if the environment has one.
    pub unsealer: Option<NodeStatus>,
    /// The last restore drill (`provision snapshot verify`), if one ran.
    pub last_drill: Option<crate::workflows::drill::DrillReport>,
    /// The scheduled drills' agent, when the environment schedules drills.
    pub drill_agent: Option<crate::workflows::drill_agent::AgentStatus>,
}

/// `provision status`: every node's role, version, Raft index and last contact.
pub async fn status(d: &Deployment) -> Result<StatusReport> {
    let cluster = d.cluster()?;
    let token = d.admin_token(&[]).await.ok();
    let autopilot = match &token {
        Some(t) => cluster.autopilot_state(t).await,
        None => None,
    };
    let mut nodes = Vec::new();
    for (i, node) in d.nodes.iter().enumerate() {
        let health = cluster.health(i).await;
        let role = Role::from_health(health.as_ref());
        let leader = match role {
            Role::Active | Role::Standby => cluster.leader(i).await,
            _ => None,
        };
        let pid = match d.host(node).service_state(Service::Server).await? {
            ServiceState::Running { pid } => Some(pid),
            ServiceState::Stopped => None,
        };
        nodes.push(NodeStatus {
            name: node.name.clone(),
            address: node.api_addr.clone(),
            role,
            version: health.as_ref().map(|h| h.version.clone()),
            raft_applied_index: leader.map(|l| l.raft_applied_index),
            last_contact: autopilot
                .as_ref()
                .and_then(|a| a.servers.get(&node.name))
                .map(|s| s.last_contact.clone()),
            health_code: health.as_ref().map(|h| h.status),
            pid,
        });
    }
    let serving = nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Active | Role::Standby))
        .count() as i64;
    let quorum = (d.nodes.len() / 2 + 1) as i64;
    let failure_tolerance = match &autopilot {
        Some(a) => a.failure_tolerance,
        None => (serving - quorum).max(0),
    };
    let unsealer = match &d.unsealer {
        Some(u) => {
            let health = d.unsealer_cluster(u)?.health(0).await;
            Some(NodeStatus {
                name: u.name.clone(),
                address: u.api_addr.clone(),
                role: Role::from_health(health.as_ref()),
                version: health.as_ref().map(|h| h.version.clone()),
                raft_applied_index: None,
                last_contact: None,
                health_code: health.as_ref().map(|h| h.status),
                pid: match d.host(u).service_state(Service::Server).await? {
                    ServiceState::Running { pid } => Some(pid),
                    ServiceState::Stopped => None,
                },
            })
        }
        None => None,
    };
    Ok(StatusReport {
        environment: d.env.name.clone(),
        nodes,
        failure_tolerance,
        autopilot: autopilot.is_some(),
        unsealer,
        last_drill: crate::state::State::load(&d.dir)
            .ok()
            .flatten()
            .and_then(|s| s.cluster.last_drill),
        drill_agent: crate::workflows::drill_agent::status(d)?,
    })
}
