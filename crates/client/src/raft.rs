//! Typed `sys/storage/raft/*` and `sys/ha-status` endpoints: join, configuration,
//! remove-peer, snapshots, autopilot. Field names are Vault's (HV:api/sys_raft.go,
//! api/sys_hastatus.go), and 404 handling follows Vault's Go client.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use super::go_duration::serde_go;
use super::{snapshot, Client, ClientError, Method, Secret};

/// `POST sys/storage/raft/join`. `Debug` hides the client key.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    pub leader_api_addr: String,
    pub retry: bool,
    /// PEM, not a path.
    pub leader_ca_cert: String,
    pub leader_client_cert: String,
    pub leader_client_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub leader_tls_servername: String,
    pub non_voter: bool,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("leader_api_addr", &self.leader_api_addr)
            .field("retry", &self.retry)
            .field("leader_ca_cert_len", &self.leader_ca_cert.len())
            .field("leader_client_cert_len", &self.leader_client_cert.len())
            .field(
                "leader_client_key",
                &if self.leader_client_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("leader_tls_servername", &self.leader_tls_servername)
            .field("non_voter", &self.non_voter)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinResponse {
    pub joined: bool,
}

/// `data.config` of `GET sys/storage/raft/configuration`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftConfiguration {
    pub index: u64,
    pub servers: Vec<RaftServer>,
}

impl RaftConfiguration {
    /// The configuration inside a `sys/storage/raft/configuration` answer.
    pub fn from_secret(secret: &Secret) -> Result<RaftConfiguration, String> {
        let config = secret
            .data
            .as_ref()
            .and_then(|d| d.get("config"))
            .ok_or("the answer has no data.config")?;
        serde_json::from_value(config.clone()).map_err(|e| format!("data.config: {e}"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftServer {
    pub node_id: String,
    pub address: String,
    pub leader: bool,
    pub voter: bool,
    /// A string in Vault ("3"); a number is accepted.
    #[serde(deserialize_with = "string_or_number")]
    pub protocol_version: String,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// `GET|POST sys/storage/raft/autopilot/configuration`. Durations travel as Go text
/// (`"10s"`, `"24h0m0s"`); fields are in the order Go's `MarshalJSON` prints them (sorted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotConfig {
    pub cleanup_dead_servers: bool,
    #[serde(with = "serde_go")]
    pub dead_server_last_contact_threshold: Duration,
    pub disable_upgrade_migration: bool,
    #[serde(with = "serde_go")]
    pub last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    #[serde(with = "serde_go")]
    pub server_stabilization_time: Duration,
}

/// The fields `autopilot set-config` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutopilotConfigUpdate {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<Duration>,
    pub dead_server_last_contact_threshold: Option<Duration>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u64>,
    pub server_stabilization_time: Option<Duration>,
    pub disable_upgrade_migration: Option<bool>,
}

impl AutopilotConfigUpdate {
    /// The request body, with durations as Go text as Vault's CLI sends them.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        let go = |d: &Duration| Value::from(super::go_duration::format_go_duration(*d));
        if let Some(v) = self.cleanup_dead_servers {
            m.insert("cleanup_dead_servers".into(), v.into());
        }
        if let Some(v) = self.max_trailing_logs {
            m.insert("max_trailing_logs".into(), v.into());
        }
        if let Some(v) = self.min_quorum {
            m.insert("min_quorum".into(), v.into());
        }
        if let Some(v) = &self.last_contact_threshold {
            m.insert("last_contact_threshold".into(), go(v));
        }
        if let Some(v) = &self.dead_server_last_contact_threshold {
            m.insert("dead_server_last_contact_threshold".into(), go(v));
        }
        if let Some(v) = &self.server_stabilization_time {
            m.insert("server_stabilization_time".into(), go(v));
        }
        if let Some(v) = self.disable_upgrade_migration {
            m.insert("disable_upgrade_migration".into(), v.into());
        }
        Value::Object(m)
    }
}

/// `data` of `GET sys/storage/raft/autopilot/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotState {
    pub healthy: bool,
    pub failure_tolerance: i64,
    pub optimistic_failure_tolerance: i64,
    pub leader: String,
    pub voters: Vec<String>,
    pub non_voters: Vec<String>,
    pub servers: BTreeMap<String, AutopilotServer>,
    pub redundancy_zones: Option<BTreeMap<String, AutopilotZone>>,
    pub upgrade_info: Option<AutopilotUpgrade>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotServer {
    pub id: String,
    pub name: String,
    pub address: String,
    pub node_status: String,
    /// Go duration text, e.g. `"516.49595ms"`.
    pub last_contact: String,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    pub stable_since: String,
    /// `leader`, `voter`, `non-voter`...
    pub status: String,
    pub version: String,
    pub upgrade_version: String,
    pub redundancy_zone: String,
    pub node_type: String,
    pub meta: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotZone {
    pub servers: Vec<String>,
    pub voters: Vec<String>,
    pub failure_tolerance: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotUpgrade {
    pub status: String,
    pub target_version: String,
    pub target_version_voters: Vec<String>,
    pub target_version_non_voters: Vec<String>,
    pub other_version_voters: Vec<String>,
    pub other_version_non_voters: Vec<String>,
    pub redundancy_zones: BTreeMap<String, AutopilotZoneUpgrade>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutopilotZoneUpgrade {
    pub target_version_voters: Vec<String>,
    pub target_version_non_voters: Vec<String>,
    pub other_version_voters: Vec<String>,
    pub other_version_non_voters: Vec<String>,
}

/// `GET sys/ha-status`. Serialises as Vault's CLI prints it (`Nodes`, the Go field name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HaStatus {
    #[serde(rename(serialize = "Nodes"), alias = "Nodes")]
    pub nodes: Vec<HaNode>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HaNode {
    pub hostname: String,
    pub api_address: String,
    pub cluster_address: String,
    pub active_node: bool,
    /// RFC 3339; absent (null) for the active node.
    pub last_echo: Option<String>,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upgrade_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub redundancy_zone: String,
}

/// `GET sys/storage/raft/cluster-tls` (Keyhold's own): where the cluster port's TLS keyring
/// stands. `phase` is `stable`, `trust_both` or `present_new`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterTlsStatus {
    pub generation: u64,
    pub phase: String,
    pub ca_fingerprints_sha256: Vec<String>,
    pub cert_fingerprint_sha256: Option<String>,
}

const RAFT: &str = "sys/storage/raft";

impl Client {
    /// `POST sys/storage/raft/join`: asks the node this client talks to to join a cluster.
    pub async fn raft_join(&self, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
        let path = format!("{RAFT}/join");
        let body = serde_json::to_value(req).expect("JoinRequest serialises");
        let resp = self.request(Method::Post, &path, Some(&body)).await?;
        resp.decode_data(Method::Post, &self.url(&path))
    }

    /// `GET sys/storage/raft/configuration`, the whole answer; `None` on a 404.
    pub async fn raft_configuration_secret(&self) -> Result<Option<Secret>, ClientError> {
        self.read(&format!("{RAFT}/configuration")).await
    }

    /// `GET sys/storage/raft/configuration`: the peer set.
    pub async fn raft_configuration(&self) -> Result<RaftConfiguration, ClientError> {
        let path = format!("{RAFT}/configuration");
        let decode = |cause: String| ClientError::Decode {
            method: "GET".into(),
            url: self.url(&path),
            cause,
        };
        let secret = self
            .raft_configuration_secret()
            .await?
            .ok_or_else(|| decode("no raft cluster configuration found".into()))?;
        RaftConfiguration::from_secret(&secret).map_err(decode)
    }

    /// `POST sys/storage/raft/remove-peer`.
    pub async fn raft_remove_peer(&self, server_id: &str) -> Result<(), ClientError> {
        let body = json!({ "server_id": server_id });
        self.request(Method::Post, &format!("{RAFT}/remove-peer"), Some(&body))
            .await
            .map(drop)
    }

    /// `GET sys/storage/raft/snapshot`, streamed into `sink` chunk by chunk; returns the
    /// byte count. As Vault's client, fails with [`ClientError::IncompleteSnapshot`] when the
    /// archive does not end with a non-empty `SHA256SUMS.sealed` (a snapshot whose seal step
    /// failed midway, HV#12388): the caller must then discard what `sink` received.
    pub async fn raft_snapshot_save(
        &self,
        sink: &mut (dyn Write + Send),
    ) -> Result<u64, ClientError> {
        let path = format!("{RAFT}/snapshot");
        let (mut resp, url) = self.start(Method::Get, &path, None).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let checker = tokio::task::spawn_blocking(move || {
            snapshot::has_sealed_sums(ChannelReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            })
        });
        let mut total = 0u64;
        let result = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = sink.write_all(&chunk) {
                        break Err(ClientError::Sink(e.to_string()));
                    }
                    total += chunk.len() as u64;
                    // The checker stops reading once it has seen the sealed sums.
                    let _ = tx.send(chunk.to_vec()).await;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(self.transport(Method::Get, &url, e)),
            }
        };
        drop(tx);
        let sealed = checker.await.unwrap_or(false);
        result?;
        sink.flush().map_err(|e| ClientError::Sink(e.to_string()))?;
        if !sealed {
            return Err(ClientError::IncompleteSnapshot);
        }
        Ok(total)
    }

    /// `POST sys/storage/raft/snapshot` (or `snapshot-force`, which skips the check that the
    /// archive's sealed sums open with this cluster's seal) with the archive as the body.
    pub async fn raft_snapshot_restore(
        &self,
        archive: Vec<u8>,
        force: bool,
    ) -> Result<(), ClientError> {
        let path = if force {
            format!("{RAFT}/snapshot-force")
        } else {
            format!("{RAFT}/snapshot")
        };
        self.request_bytes(Method::Post, &path, archive)
            .await
            .map(drop)
    }

    /// `GET sys/storage/raft/autopilot/state`; `None` on a 404, as Vault's client.
    pub async fn autopilot_state(&self) -> Result<Option<AutopilotState>, ClientError> {
        let path = format!("{RAFT}/autopilot/state");
        match self.request(Method::Get, &path, None).await {
            Ok(resp) => {
                if resp.json().and_then(|v| v.get("data")).is_none() {
                    return Err(ClientError::Decode {
                        method: "GET".into(),
                        url: self.url(&path),
                        cause: "data from server response is empty".into(),
                    });
                }
                resp.decode_data(Method::Get, &self.url(&path)).map(Some)
            }
            Err(ClientError::Api(e)) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET sys/storage/raft/autopilot/configuration`; `None` on a 404, as Vault's client.
    pub async fn autopilot_configuration(&self) -> Result<Option<AutopilotConfig>, ClientError> {
        let path = format!("{RAFT}/autopilot/configuration");
        match self.request(Method::Get, &path, None).await {
            Ok(resp) => resp.decode_data(Method::Get, &self.url(&path)).map(Some),
            Err(ClientError::Api(e)) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST sys/storage/raft/autopilot/configuration` with the fields to change; the answer
    /// (usually none, 204).
    pub async fn autopilot_set_configuration(
        &self,
        update: &AutopilotConfigUpdate,
    ) -> Result<Option<Secret>, ClientError> {
        let path = format!("{RAFT}/autopilot/configuration");
        Ok(self
            .request(Method::Post, &path, Some(&update.body()))
            .await?
            .secret())
    }

    /// `GET sys/storage/raft/cluster-tls`: the cluster port's TLS keyring, fingerprints only.
    pub async fn cluster_tls_status(&self) -> Result<ClusterTlsStatus, ClientError> {
        let path = format!("{RAFT}/cluster-tls");
        let resp = self.request(Method::Get, &path, None).await?;
        resp.decode_data(Method::Get, &self.url(&path))
    }

    /// `POST sys/storage/raft/cluster-tls/rotate` (sudo): begins a new generation of the
    /// cluster port's TLS keyring; the active node finishes it once every member has moved.
    pub async fn cluster_tls_rotate(&self) -> Result<ClusterTlsStatus, ClientError> {
        let path = format!("{RAFT}/cluster-tls/rotate");
        let resp = self.request(Method::Post, &path, Some(&json!({}))).await?;
        resp.decode_data(Method::Post, &self.url(&path))
    }

    /// `GET sys/ha-status`: every node of the HA cluster as the active node sees it.
    pub async fn ha_status(&self) -> Result<HaStatus, ClientError> {
        let resp = self.request(Method::Get, "sys/ha-status", None).await?;
        resp.decode_data(Method::Get, &self.url("sys/ha-status"))
    }
}

/// A blocking reader over chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
