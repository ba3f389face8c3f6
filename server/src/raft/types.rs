//! The openraft type configuration: what a log entry carries ([`WriteBatch`]),
//! what a cluster member is ([`ClusterNode`]), and how Vault's string node ids
//! become openraft's numeric ones ([`node_id`]).

use std::fmt;
use std::io::Cursor;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::physical::TxnOp;

openraft::declare_raft_types!(
    /// Keyhold's Raft: write batches in, nothing out, members named as in Vault.
    pub TypeConfig:
        D = WriteBatch,
        R = (),
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ClusterNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ClusterNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// openraft's node id for a Vault node id (`node_id` in the `storage "raft"`
/// stanza): the first 8 bytes of its SHA-256, big-endian. Stable across
/// restarts and versions, so it can be derived again from the name alone.
pub fn node_id(name: &str) -> NodeId {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A cluster member as Vault describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Vault's node id, e.g. `vault-1`; openraft's id is [`node_id`] of it.
    pub name: String,
    /// Where clients reach this node (`api_addr`), e.g. `https://10.0.0.1:8200`.
    pub api_addr: String,
    /// The cluster listener, `IP:PORT` (`cluster_addr` without a scheme).
    pub cluster_addr: String,
}

impl ClusterNode {
    pub fn id(&self) -> NodeId {
        node_id(&self.name)
    }
}

impl fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.cluster_addr)
    }
}

/// The payload of one Raft log entry: the operations of one
/// [`Backend`](crate::physical::Backend) call, applied atomically.
///
/// Serialized as JSON with values in base64 (serde's default for `Vec<u8>`,
/// an array of numbers, would triple the size of every entry on disk and on
/// the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch(pub Vec<TxnOp>);

impl WriteBatch {
    /// Bytes of keys and values: what `max_entry_size` limits.
    pub fn payload_size(&self) -> usize {
        self.0
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => key.len() + value.len(),
                TxnOp::Delete { key } => key.len(),
            })
            .sum()
    }
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum OpRef<'a> {
    Put {
        key: &'a str,
        #[serde(serialize_with = "base64_out")]
        value: &'a [u8],
    },
    Delete {
        key: &'a str,
    },
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum OpOwned {
    Put {
        key: String,
        #[serde(deserialize_with = "base64_in")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

fn base64_out<S: Serializer>(value: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&BASE64.encode(value))
}

fn base64_in<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    BASE64.decode(text).map_err(serde::de::Error::custom)
}

impl Serialize for WriteBatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|op| match op {
            TxnOp::Put { key, value } => OpRef::Put { key, value },
            TxnOp::Delete { key } => OpRef::Delete { key },
        }))
    }
}

impl<'de> Deserialize<'de> for WriteBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ops = Vec::<OpOwned>::deserialize(d)?;
        Ok(WriteBatch(
            ops.into_iter()
                .map(|op| match op {
                    OpOwned::Put { key, value } => TxnOp::Put { key, value },
                    OpOwned::Delete { key } => TxnOp::Delete { key },
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable() {
        // The first 8 bytes of SHA-256("vault-1").
        let digest = Sha256::digest(b"vault-1");
        assert_eq!(
            node_id("vault-1").to_be_bytes().as_slice(),
            &digest[..8],
            "node_id must stay the SHA-256 prefix: stored memberships depend on it"
        );
        assert_ne!(node_id("vault-1"), node_id("vault-2"));
    }

    #[test]
    fn write_batch_json_is_compact_and_round_trips() {
        let batch = WriteBatch(vec![
            TxnOp::Put {
                key: "a/b".into(),
                value: vec![0, 1, 255],
            },
            TxnOp::Delete { key: "c".into() },
        ]);
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(
            json,
            r#"[{"op":"put","key":"a/b","value":"AAH/"},{"op":"delete","key":"c"}]"#
        );
        assert_eq!(serde_json::from_str::<WriteBatch>(&json).unwrap(), batch);
        assert!(
            serde_json::from_str::<WriteBatch>(r#"[{"op":"put","key":"k","value":"!"}]"#).is_err()
        );
        assert_eq!(batch.payload_size(), 3 + 3 + 1);
    }
}
