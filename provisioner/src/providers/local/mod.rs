//! The local provider: every node is a directory on this machine (`.provision/ENV/nodes/NAME/`,
//! laid out like a host's root) and its services are processes started detached from
//! `provision`, each on its own loopback address (127.x.y.z), with no root and no cloud.

mod host;
mod process;
mod settings;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use host::LocalHost;
pub use process::Detached;
pub use settings::LocalSettings;

use super::{Host, NodeRecord, Provider, Service, ServiceState};
use crate::render::{Layout, NodeSpec};

/// What the local provider keeps about a node: its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRecord {
    /// The server process, while provision believes it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The node's snapshot agent process (`snapshots { s3 }`).
    #[serde(default)]
    pub snapshot_agent_pid: Option<u32>,
}

pub struct LocalProvider {
    address_base: Ipv4Addr,
    nodes_dir: PathBuf,
    /// The snapshot agent's `-schedule`, when the environment stores snapshots in S3.
    agent_schedule: Option<String>,
}

impl LocalProvider {
    pub fn new(
        settings: &LocalSettings,
        nodes_dir: PathBuf,
        agent_schedule: Option<String>,
    ) -> Self {
        LocalProvider {
            address_base: settings.address_base,
            nodes_dir,
            agent_schedule,
        }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn addresses(&self, count: usize) -> Vec<IpAddr> {
        let base = u32::from(self.address_base);
        (0..count as u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .collect()
    }

    fn layout(&self, name: &str) -> Layout {
        Layout::local(self.nodes_dir.join(name))
    }

    fn host(&self, node: &NodeSpec) -> Arc<dyn Host> {
        Arc::new(LocalHost::new(
            &node.name,
            node.layout.root.clone(),
            node.layout.binary.clone(),
            self.agent_schedule.clone(),
        ))
    }

    async fn record(&self, node: &NodeSpec) -> Result<NodeRecord> {
        let host = self.host(node);
        let pid_of = |state: ServiceState| match state {
            ServiceState::Running { pid } => Some(pid),
            ServiceState::Stopped => None,
        };
        Ok(NodeRecord::Local(LocalRecord {
            pid: pid_of(host.service_state(Service::Server).await?),
            snapshot_agent_pid: match self.agent_schedule {
                Some(_) => pid_of(host.service_state(Service::SnapshotAgent).await?),
                None => None,
            },
        }))
    }
}
