//! The client side of the cluster transport: openraft's RPCs as JSON over
//! HTTPS (mutual TLS, [`super::tls`]) to a peer's `cluster_addr`.
//!
//! Errors are mapped the way openraft 0.9 retries: a peer that cannot be
//! connected to, refuses our certificate, answers with a non-200 status, or
//! is not set up yet is `Unreachable` (openraft backs off before trying
//! again, 50 ms at first and doubling up to 500 ms, so a node that has just
//! joined and starts listening is reached at once); a request past its deadline is `Timeout`; a connection that broke
//! mid-request is a `NetworkError` (tried again on the next heartbeat); an
//! error from the peer's Raft is a `RemoteError`. An append of several entries
//! larger than [`APPEND_BATCH_BYTES`] is `PayloadTooLarge` with a hint, so
//! openraft sends fewer entries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tls::ClusterTls;
use super::types::{ClusterNode, NodeId, SnapshotMeta, TypeConfig, Vote};
use super::ClusterError;

/// The largest request body sent or accepted on the cluster port. An append
/// over it is split (openraft's `PayloadTooLarge`); one entry is at most
/// `max_entry_size` (1 MiB by default) plus base64 and JSON overhead.
pub const MAX_RPC_BYTES: usize = 16 * 1024 * 1024;

/// The most an append of several entries carries. openraft cancels an append
/// after `heartbeat_interval` (0.2 s at `performance_multiplier = 1`), and it
/// must be sent, parsed and made durable by the follower within that; a batch
/// of a restore's 256 KiB staging entries up to `MAX_RPC_BYTES` never was, so
/// a node joining after a restore of a large snapshot never caught up. One
/// entry larger than this is still sent, alone.
pub const APPEND_BATCH_BYTES: usize = 1024 * 1024;

pub(crate) const APPEND_PATH: &str = "/v1/cluster/raft/append";
/// The sender's wall-clock time (Unix milliseconds) when it sent an RPC: on an append a
/// follower accepts, the active node's clock, which a standby judges token expiry by.
pub(crate) const SENT_AT_HEADER: &str = "x-keyhold-sent-at";
pub(crate) const VOTE_PATH: &str = "/v1/cluster/raft/vote";
pub(crate) const SNAPSHOT_PATH: &str = "/v1/cluster/raft/snapshot";
pub(crate) const ELECT_PATH: &str = "/v1/cluster/raft/elect";
pub(crate) const VERSION_PATH: &str = "/v1/cluster/raft/version";

/// How long a connection attempt may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTPS client every RPC goes through. Empty until the cluster TLS is
/// known (after unseal): until then every peer is `Unreachable`.
#[derive(Clone, Default)]
pub struct ClusterClient {
    http: Arc<RwLock<Option<reqwest::Client>>>,
    last_contact: Arc<Mutex<HashMap<NodeId, Instant>>>,
    last_failure: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

/// Why a request to a peer did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("the cluster TLS is not configured on this node yet")]
    NotConfigured,
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection failed during the request: {0}")]
    Broken(String),
    #[error("the peer answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the peer's answer could not be decoded: {0}")]
    Decode(String),
}

impl ClusterClient {
    /// Installs (or replaces) the TLS identity used for every later request.
    pub fn configure(&self, tls: &ClusterTls) -> Result<(), ClusterError> {
        self.configure_with(tls.client_config()?)
    }

    pub(crate) fn configure_with(&self, tls: rustls::ClientConfig) -> Result<(), ClusterError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClusterError::Tls(format!("build the cluster HTTP client: {e}")))?;
        *self.http.write().expect("cluster client lock") = Some(client);
        Ok(())
    }

    /// When each peer last answered an RPC from this node.
    pub fn last_contact(&self) -> HashMap<NodeId, Instant> {
        self.last_contact.lock().expect("last contact lock").clone()
    }

    /// When an RPC to each peer last failed without an answer (unreachable,
    /// timed out, broken).
    pub fn last_failure(&self) -> HashMap<NodeId, Instant> {
        self.last_failure.lock().expect("last failure lock").clone()
    }

    /// True when the last RPC to `peer` failed without an answer: it is
    /// stopped, unreachable, or not serving its cluster port yet.
    pub fn looks_gone(&self, peer: NodeId) -> bool {
        let failed = self
            .last_failure
            .lock()
            .expect("last failure lock")
            .get(&peer)
            .copied();
        let answered = self
            .last_contact
            .lock()
            .expect("last contact lock")
            .get(&peer)
            .copied();
        match (failed, answered) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// POSTs `body` to `path` on the peer at `cluster_addr`, decodes a JSON answer.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        cluster_addr: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, TransportError> {
        let client = self
            .http
            .read()
            .expect("cluster client lock")
            .clone()
            .ok_or(TransportError::NotConfigured)?;
        let url = match cluster_addr.parse::<SocketAddr>() {
            Ok(addr) => format!("https://{addr}{path}"),
            Err(_) => format!("https://{cluster_addr}{path}"),
        };
        let send = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(SENT_AT_HEADER, chrono::Utc::now().timestamp_millis())
            .body(body)
            .timeout(timeout)
            .send();
        let response = send.await.map_err(|e| classify(e, timeout))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify(e, timeout))?;
        if !status.is_success() {
            return Err(TransportError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| TransportError::Decode(e.to_string()))
    }

    fn contacted(&self, peer: NodeId) {
        self.last_contact
            .lock()
            .expect("last contact lock")
            .insert(peer, Instant::now());
    }

    fn failed(&self, peer: NodeId) {
        self.last_failure
            .lock()
            .expect("last failure lock")
            .insert(peer, Instant::now());
    }
}

fn classify(e: reqwest::Error, timeout: Duration) -> TransportError {
    // The full chain: reqwest's own message hides the TLS or socket cause.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    if e.is_timeout() {
        TransportError::Timeout(timeout)
    } else if e.is_connect() || message.contains("alert") || message.contains("certificate") {
        // With TLS 1.3 a refused client certificate surfaces on the first
        // read, after `connect` succeeded: still a peer we cannot talk to.
        TransportError::Unreachable(message)
    } else {
        TransportError::Broken(message)
    }
}

/// Creates one [`PeerNetwork`] per replication target.
pub struct NetworkFactory {
    pub(crate) me: NodeId,
    pub(crate) client: ClusterClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> PeerNetwork {
        PeerNetwork {
            me: self.me,
            target,
            node: node.clone(),
            client: self.client.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerNetwork {
    me: NodeId,
    target: NodeId,
    node: ClusterNode,
    client: ClusterClient,
}

/// The fixed part of an install-snapshot chunk, sent as JSON ahead of the
/// raw chunk bytes (a JSON array of numbers would quadruple the snapshot).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunkHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub done: bool,
}

/// `[u32 big-endian header length][header JSON][chunk bytes]`.
pub(crate) fn encode_chunk(req: InstallSnapshotRequest<TypeConfig>) -> Vec<u8> {
    let header = SnapshotChunkHeader {
        vote: req.vote,
        meta: req.meta,
        offset: req.offset,
        done: req.done,
    };
    let header = serde_json::to_vec(&header).expect("a chunk header always serializes");
    let mut body = Vec::with_capacity(4 + header.len() + req.data.len());
    body.extend_from_slice(&(header.len() as u32).to_be_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(&req.data);
    body
}

pub(crate) fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len: [u8; 4] = body
        .get(..4)
        .ok_or("truncated chunk")?
        .try_into()
        .expect("4 bytes");
    let len = u32::from_be_bytes(len) as usize;
    let header = body.get(4..4 + len).ok_or("truncated chunk header")?;
    let header: SnapshotChunkHeader =
        serde_json::from_slice(header).map_err(|e| format!("chunk header: {e}"))?;
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: body[4 + len..].to_vec(),
        done: header.done,
    })
}

impl PeerNetwork {
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ClusterNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .post(&self.node.cluster_addr, path, content_type, body, timeout)
            .await
            .map_err(|e| {
                self.client.failed(self.target);
                self.transport_error(action, e)
            })?;
        self.client.contacted(self.target);
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn transport_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        e: TransportError,
    ) -> RPCError<NodeId, ClusterNode, E> {
        let context = format!("{action:?} to {}: {e}", self.node);
        match e {
            TransportError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            TransportError::Broken(_) => {
                RPCError::Network(NetworkError::from(AnyError::error(context)))
            }
            TransportError::NotConfigured
            | TransportError::Unreachable(_)
            | TransportError::Status { .. }
            | TransportError::Decode(_) => {
                RPCError::Unreachable(Unreachable::from(AnyError::error(context)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    fn backoff(&self) -> Backoff {
        Backoff::new(
            [50, 100, 200, 400]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(Duration::from_millis),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        let entries = rpc.entries.len();
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if body.len() > APPEND_BATCH_BYTES && entries > 1 {
            let fits = (entries * APPEND_BATCH_BYTES / body.len()).clamp(1, entries - 1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fits as u64),
            ));
        }
        self.call(
            RPCTypes::AppendEntries,
            APPEND_PATH,
            "application/json",
            body,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            SNAPSHOT_PATH,
            "application/octet-stream",
            encode_chunk(rpc),
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(RPCTypes::Vote, VOTE_PATH, "application/json", body, &option)
            .await
    }
}
