//! The ssh provider: existing Linux hosts reached over SSH (ssh2), one node per host, the
//! server and its snapshot timer run by systemd from the hardened units the renderer writes.
//! Node N runs on `hosts[N-1]`, laid out as a host ([`Layout::system`]).

mod host;
mod settings;

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use host::SshHost;
pub use settings::SshSettings;

use super::{Host, NodeRecord, Provider};
use crate::render::{Layout, NodeSpec};

/// What the ssh provider keeps about a node: where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRecord {
    /// `user@address:port`.
    pub target: String,
}

pub struct SshProvider {
    settings: Arc<SshSettings>,
}

impl SshProvider {
    pub fn new(settings: &SshSettings) -> Self {
        SshProvider {
            settings: Arc::new(settings.clone()),
        }
    }

    fn index_of(&self, address: IpAddr) -> Option<usize> {
        self.settings.hosts.iter().position(|h| *h == address)
    }
}

#[async_trait]
impl Provider for SshProvider {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn addresses(&self, count: usize) -> Vec<IpAddr> {
        self.settings.hosts.iter().copied().take(count).collect()
    }

    fn layout(&self, _name: &str) -> Layout {
        Layout::system()
    }

    fn host(&self, node: &NodeSpec) -> Arc<dyn Host> {
        let pin = self
            .index_of(node.address)
            .and_then(|i| self.settings.host_key_fingerprints.get(i).cloned());
        Arc::new(SshHost::new(
            &node.name,
            node.address,
            self.settings.clone(),
            pin,
            node.layout.root.clone(),
        ))
    }

    async fn record(&self, node: &NodeSpec) -> Result<NodeRecord> {
        Ok(NodeRecord::Ssh(SshRecord {
            target: format!(
                "{}@{}:{}",
                self.settings.user, node.address, self.settings.port
            ),
        }))
    }
}

#[cfg(test)]
mod tests;
