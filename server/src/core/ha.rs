//! High availability over replicated Raft, shaped like Vault's integrated
//! storage:
//!
//! - Raft runs only while the node is unsealed: the cluster TLS keyring lives
//!   behind the barrier (`core/cluster/tls`), so a process without the unseal
//!   keys can neither join, vote, nor receive replicated data.
//! - The Raft leader is the active node; every other unsealed node is a
//!   standby that forwards client requests to it over the cluster port.
//! - Reads come from the local state machine; writes go through Raft and are
//!   acknowledged once committed on a quorum and applied here ([`HaBackend`]).
//! - Joining (`retry_join`, `sys/storage/raft/join`): the joiner fetches a
//!   challenge from the active node: a nonce sealed by the cluster's seal
//!   (`seal::join`) and the seal config, nothing else. It opens the nonce with
//!   the unseal key its operators rebuild from the shares, or with its own auto
//!   seal, and answers; only then does the active node admit it as a non-voter
//!   and hand it the ciphertexts of the keyring and wrapped root key (which the
//!   same key opens) and the cluster TLS keyring sealed under that keyring.
//!   Autopilot promotes it once it has caught up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::physical::sled_store::SledStore;
use crate::physical::{Backend, StorageError, TxnOp};
use crate::raft::{ClusterNode, ClusterTls, RaftNode, RaftNodeConfig, RaftStatus};

/// Barrier path of the cluster TLS keyring.
pub const CLUSTER_TLS_KEY: &str = "core/cluster/tls";
/// Barrier path of the autopilot configuration.
pub const AUTOPILOT_KEY: &str = "core/raft/autopilot";
/// The "path" the cluster TLS keyring is sealed at for a joiner (never stored).
const TLS_TRANSFER_PATH: &str = "core/raft/tls-transfer";
/// Physical entries a joiner needs to open the cluster's keyring with its shares: handed over
/// only in the answer to a correct join answer.
pub const KEY_MATERIAL: &[&str] = &[
    "core/seal-config",
    "core/hsm/barrier-unseal-keys",
    "core/keyring",
    "core/root-key",
];
/// How long an issued challenge may be answered. Short, and the same for every seal: an auto
/// seal's joiner answers within seconds, and a Shamir joiner, whose operator may take far longer
/// to bring the shares, asks for a fresh challenge when it is unsealed (see
/// [`Ha::complete_join`]), so the operator's time never counts against it.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// A joiner's challenge older than this is fetched again before it is answered.
const CHALLENGE_REFRESH: Duration = Duration::from_secs(90);
/// Join challenges kept at once (one per joining node name and source address); when full,
/// the oldest is dropped, so no caller can fill the table and keep a real joiner out.
const MAX_OUTSTANDING_CHALLENGES: usize = 64;
/// Join challenges kept at once for one source address: one address cannot evict the others'.
const MAX_CHALLENGES_PER_SOURCE: usize = 4;
/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(90);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The `storage "raft"` settings the HA layer needs.
#[derive(Debug, Clone)]
pub struct HaSettings {
    pub node_name: String,
    /// `https://host:8200`.
    pub api_addr: String,
    /// `host:port` of the cluster listener.
    pub cluster_addr: String,
    pub performance_multiplier: u32,
    pub snapshot_threshold: u64,
    pub trailing_logs: u64,
    pub max_entry_size: usize,
    pub retry_join: Vec<JoinTarget>,
    pub autopilot_reconcile_interval: Duration,
    pub autopilot_update_interval: Duration,
}

/// Where and how to reach a node of the cluster to join (a `retry_join`
/// block, or the body of `sys/storage/raft/join`).
#[derive(Debug, Clone, Default)]
pub struct JoinTarget {
    pub leader_api_addr: String,
    pub ca_cert_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<Zeroizing<String>>,
    pub tls_server_name: Option<String>,
    pub non_voter: bool,
}

/// The active node's answer to a join challenge request: Vault's two fields, nothing more.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// A nonce sealed by the cluster's seal (base64; see `seal::join`).
    pub challenge: String,
    /// How many shares to collect, or which auto seal opens the challenge.
    pub seal_config: crate::seal::SealConfig,
}

/// The active node's answer to a correct join answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerResponse {
    /// The cluster TLS keyring sealed under the cluster keyring (base64).
    pub tls: String,
    pub peers: Vec<ClusterNode>,
    /// Raw physical values of [`KEY_MATERIAL`] (base64): the seal config and ciphertexts that
    /// only the key the joiner just proved it holds opens.
    pub key_material: HashMap<String, String>,
}

/// What opens the cluster's key material on a joining node.
pub enum Unlock<'a> {
    /// The cluster's unseal key, combined from the shares an operator gave.
    UnsealKey(&'a [u8]),
    /// This node's auto-unseal seal (the same key service as the cluster's).
    Auto,
}

/// A join waiting for the operator to unseal this node.
pub struct PendingJoin {
    pub target: JoinTarget,
    pub challenge: ChallengeResponse,
    /// When the challenge was fetched: past [`CHALLENGE_REFRESH`] it is fetched again.
    pub fetched: Instant,
}

/// A client request relayed from a standby to the active node.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/secret/data/app?version=2`.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// base64.
    pub body: String,
    pub remote_addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// base64.
    pub body: String,
}

struct IssuedChallenge {
    nonce: Zeroizing<Vec<u8>>,
    /// What was sent: asking again under the same name from the same address gets it back
    /// without another call to the seal (a KMS or transit request under an auto seal).
    sealed: String,
    issued: Instant,
}

/// A challenge is answerable only by the address that asked for it, under the name it gave.
type ChallengeKey = (String, std::net::IpAddr);

/// A node's part in the Raft cluster.
pub struct Ha {
    pub settings: HaSettings,
    store: Arc<SledStore>,
    node: tokio::sync::RwLock<Option<RaftNode>>,
    forwarder: Mutex<Option<reqwest::Client>>,
    /// The cluster TLS keyring the listener and clients use now.
    applied_tls: Mutex<Option<ClusterTls>>,
    /// The cluster listener is up (a joiner starts it before its barrier is unsealed).
    serving: std::sync::atomic::AtomicBool,
    pending: Mutex<Option<PendingJoin>>,
    challenges: Mutex<HashMap<ChallengeKey, IssuedChallenge>>,
}

impl Ha {
    pub fn new(settings: HaSettings, store: Arc<SledStore>) -> Arc<Ha> {
        Arc::new(Ha {
            settings,
            store,
            node: tokio::sync::RwLock::new(None),
            forwarder: Mutex::new(None),
            applied_tls: Mutex::new(None),
            serving: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(None),
            challenges: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<SledStore> {
        &self.store
    }

    /// The physical backend the core runs on in HA mode.
    pub fn backend(self: &Arc<Self>) -> Arc<dyn Backend> {
        Arc::new(HaBackend { ha: self.clone() })
    }

    fn raft_config(&self) -> RaftNodeConfig {
        let mut config = RaftNodeConfig::new(
            &self.settings.node_name,
            &self.settings.api_addr,
            &self.settings.cluster_addr,
            self.store.clone(),
        );
        config.performance_multiplier = self.settings.performance_multiplier;
        config.snapshot_threshold = self.settings.snapshot_threshold;
        config.trailing_logs = self.settings.trailing_logs;
        config.max_entry_size = self.settings.max_entry_size;
        config
    }

    /// The running Raft node, started over the local store if needed.
    pub async fn open(&self) -> Result<RaftNode> {
        if let Some(node) = self.node.read().await.clone() {
            return Ok(node);
        }
        let mut slot = self.node.write().await;
        if let Some(node) = slot.clone() {
            return Ok(node);
        }
        let node = RaftNode::open(self.raft_config())
            .await
            .map_err(|e| Error::internal(format!("start raft: {e}")))?;
        *slot = Some(node.clone());
        Ok(node)
    }

    pub async fn running(&self) -> Option<RaftNode> {
        self.node.read().await.clone()
    }

    /// True when this node's store has never taken part in Raft: no log,
    /// no vote (a fresh directory, or one seeded offline from a snapshot).
    /// Read from disk, not from Raft's metrics, which load asynchronously.
    pub fn never_clustered(&self) -> Result<bool> {
        Ok(self.store.open_raw_tree_len("raft_log")? == 0
            && self.store.open_raw_tree_len("raft_meta")? == 0)
    }

    /// Makes this node a one-voter cluster (at `sys/init`).
    pub async fn bootstrap(&self) -> Result<()> {
        let node = self.open().await?;
        node.bootstrap()
            .await
            .map_err(|e| Error::internal(format!("bootstrap raft: {e}")))?;
        // Just bootstrapped: this node is the only voter, whatever the
        // metrics say yet.
        Self::wait_leader(&node).await
    }

    /// In a cluster whose only voter is this node, waits (bounded) until it
    /// leads, asking for an election again while it does not: openraft may
    /// ignore a request that comes while a previous lease is still running.
    pub async fn lead_alone(&self, node: &RaftNode) -> Result<()> {
        if !self.is_only_voter(node) {
            return Ok(());
        }
        Self::wait_leader(node).await
    }

    /// True when this node is the cluster's one voter (as Raft's metrics
    /// know the membership now).
    pub fn is_only_voter(&self, node: &RaftNode) -> bool {
        let mut voters = node.membership().into_iter().filter(|(_, voter)| *voter);
        matches!((voters.next(), voters.next()), (Some((me, _)), None) if me.name == self.settings.node_name)
    }

    /// Asks for leadership until this node leads (bounded).
    async fn wait_leader(node: &RaftNode) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut metrics = node.raft().metrics();
        while !node.is_leader() {
            if Instant::now() > deadline {
                return Err(Error::internal(
                    "this node is the cluster's only voter but did not become leader within 30s",
                ));
            }
            let _ = node.raft().trigger().elect().await;
            let _ = tokio::time::timeout(Duration::from_millis(250), metrics.changed()).await;
        }
        Ok(())
    }

    /// Starts the cluster listener with `tls` (after unseal) and, for a
    /// cluster of one, asks for leadership at once instead of waiting out an
    /// election timeout.
    pub async fn serve(&self, tls: &ClusterTls, routes: axum::Router) -> Result<RaftNode> {
        use std::sync::atomic::Ordering;
        let node = self.open().await?;
        if self.serving.load(Ordering::SeqCst) {
            return Ok(node);
        }
        node.serve_cluster(tls, routes)
            .await
            .map_err(|e| Error::internal(format!("start the cluster listener: {e}")))?;
        *self.forwarder.lock().expect("forwarder lock") = Some(forwarding_client(tls)?);
        *self.applied_tls.lock().expect("applied TLS lock") = Some(tls.clone());
        self.serving.store(true, Ordering::SeqCst);
        if self.is_only_voter(&node) {
            let _ = node.raft().trigger().elect().await;
        }
        Ok(node)
    }

    /// Uses `tls` on the cluster port from now on (new handshakes of the
    /// listener, Raft RPCs, forwarding) when it differs from what is in use;
    /// true when it did. Nothing to do before the cluster listener is up.
    pub async fn apply_tls(&self, tls: &ClusterTls) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let Some(node) = self.running().await else {
            return Ok(false);
        };
        if !self.serving.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if self
            .applied_tls
            .lock()
            .expect("applied TLS lock")
            .as_ref()
            .is_some_and(|applied| applied.same_material(tls))
        {
            return Ok(false);
        }
        let forwarder = forwarding_client(tls)?;
        node.reload_tls(tls)
            .map_err(|e| Error::internal(format!("reload the cluster TLS: {e}")))?;
        *self.forwarder.lock().expect("forwarder lock") = Some(forwarder);
        *self.applied_tls.lock().expect("applied TLS lock") = Some(tls.clone());
        Ok(true)
    }

    /// Stops Raft (at seal or shutdown), handing leadership to an up-to-date
    /// follower first when this node leads.
    pub async fn stop(&self) {
        let node = self.node.write().await.take();
        *self.forwarder.lock().expect("forwarder lock") = None;
        *self.applied_tls.lock().expect("applied TLS lock") = None;
        self.serving
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(node) = node {
            if node.is_leader() && node.membership().iter().filter(|(_, voter)| *voter).count() > 1
            {
                match node.transfer_leadership().await {
                    Ok(()) => {}
                    // The whole cluster is stopping (or this node is cut off).
                    Err(crate::raft::ClusterError::NoVoterReachable) => tracing::info!(
                        "no other voter answers: stopping without handing leadership over"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not hand leadership over before stopping; the cluster will elect after a timeout")
                    }
                }
            }
            node.shutdown().await;
        }
    }

    pub async fn is_leader(&self) -> bool {
        match self.running().await {
            Some(node) => node.is_leader(),
            None => false,
        }
    }

    pub async fn leader(&self) -> Option<ClusterNode> {
        self.running().await.and_then(|n| n.leader())
    }

    pub async fn status(&self) -> Option<RaftStatus> {
        match self.running().await {
            Some(node) => Some(node.status().await),
            None => None,
        }
    }

    /// Relays a client request to the active node.
    pub async fn forward(&self, request: &ForwardedRequest) -> Result<ForwardedResponse> {
        let leader = self
            .leader()
            .await
            .filter(|l| l.name != self.settings.node_name)
            .ok_or(Error::NoActiveNode)?;
        let client = self
            .forwarder
            .lock()
            .expect("forwarder lock")
            .clone()
            .ok_or(Error::NoActiveNode)?;
        let addr: SocketAddr = leader.cluster_addr.parse().map_err(|_| {
            Error::internal(format!(
                "active node's cluster address {:?} is not IP:PORT",
                leader.cluster_addr
            ))
        })?;
        let response = client
            .post(format!("https://{addr}/v1/cluster/forward"))
            .json(request)
            .timeout(FORWARD_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(leader = %leader.name, error = %e, "request forwarding failed");
                Error::NoActiveNode
            })?;
        if !response.status().is_success() {
            tracing::warn!(leader = %leader.name, status = %response.status(), "the active node refused a forwarded request");
            return Err(Error::NoActiveNode);
        }
        response
            .json()
            .await
            .map_err(|e| Error::internal(format!("decode the forwarded response: {e}")))
    }

    // ---------------------------------------------------------- join: active

    /// Issues a challenge for `server_id` (on the active node).
    pub async fn issue_challenge(
        &self,
        seal: &crate::seal::Seal,
        server_id: &str,
        source: std::net::IpAddr,
    ) -> Result<ChallengeResponse> {
        use rand::RngCore;
        if server_id.is_empty() {
            return Err(Error::invalid("server_id is required"));
        }
        let seal_config = seal.config().await?.ok_or(Error::NotInitialized)?;
        let key = (server_id.to_string(), source);
        // The endpoint needs no token: bound what strangers can make it keep or compute. One
        // source gets a few slots, checked before the seal is asked for anything; when the
        // table is full the oldest challenge goes, so junk requests cannot hold every slot
        // while a real joiner is refused.
        let admit_new = |challenges: &mut HashMap<ChallengeKey, IssuedChallenge>| {
            challenges.retain(|_, c| c.issued.elapsed() < CHALLENGE_TTL);
            if let Some(c) = challenges.get(&key) {
                return Ok(Some(c.sealed.clone()));
            }
            let from_source = challenges.keys().filter(|(_, ip)| *ip == source).count();
            if from_source >= MAX_CHALLENGES_PER_SOURCE {
                return Err(Error::invalid(format!(
                    "too many join challenges outstanding from {source}; answer one or wait"
                )));
            }
            Ok(None)
        };
        if let Some(sealed) = admit_new(&mut self.challenges.lock().expect("challenges lock"))? {
            return Ok(ChallengeResponse {
                challenge: sealed,
                seal_config,
            });
        }
        let mut nonce = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = b64().encode(seal.seal_challenge(&nonce).await?);
        let mut challenges = self.challenges.lock().expect("challenges lock");
        // Checked again: other requests from the same source may have been sealing meanwhile.
        if let Some(earlier) = admit_new(&mut challenges)? {
            return Ok(ChallengeResponse {
                challenge: earlier,
                seal_config,
            });
        }
        if challenges.len() >= MAX_OUTSTANDING_CHALLENGES {
            let oldest = challenges
                .iter()
                .min_by_key(|(_, c)| c.issued)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                challenges.remove(&oldest);
            }
        }
        challenges.insert(
            key,
            IssuedChallenge {
                nonce,
                sealed: sealed.clone(),
                issued: Instant::now(),
            },
        );
        Ok(ChallengeResponse {
            challenge: sealed,
            seal_config,
        })
    }

    /// Checks a join answer and admits the node as a non-voter.
    pub async fn admit(
        &self,
        barrier: &crate::barrier::Barrier,
        tls: &ClusterTls,
        joiner: ClusterNode,
        answer: &str,
        source: std::net::IpAddr,
    ) -> Result<AnswerResponse> {
        let given = b64()
            .decode(answer)
            .map_err(|_| Error::invalid("answer must be base64"))?;
        let expected = {
            let mut challenges = self.challenges.lock().expect("challenges lock");
            match challenges.remove(&(joiner.name.clone(), source)) {
                Some(c) if c.issued.elapsed() < CHALLENGE_TTL => c.nonce,
                _ => {
                    return Err(Error::invalid(format!(
                        "no outstanding challenge for {:?}; request a new one",
                        joiner.name
                    )))
                }
            }
        };
        let matches = given.len() == expected.len()
            && given
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            tracing::warn!(node = %joiner.name, "refused a join: wrong challenge answer (the joiner does not hold this cluster's keys)");
            return Err(Error::PermissionDenied);
        }
        let node = self.running().await.ok_or(Error::NoActiveNode)?;
        if joiner.cluster_addr.parse::<SocketAddr>().is_err() {
            return Err(Error::invalid(format!(
                "cluster address {:?} must be IP:PORT",
                joiner.cluster_addr
            )));
        }
        node.add_learner(joiner.clone())
            .await
            .map_err(|e| Error::internal(format!("add {} as a non-voter: {e}", joiner.name)))?;
        tracing::info!(node = %joiner.name, address = %joiner.cluster_addr, "node joined as a non-voter");
        let tls_json =
            Zeroizing::new(serde_json::to_vec(tls).map_err(|e| Error::internal(e.to_string()))?);
        let sealed = barrier.seal_value(TLS_TRANSFER_PATH, &tls_json)?;
        let mut key_material = HashMap::new();
        for key in KEY_MATERIAL {
            if let Some(value) = self.store.get(key).await? {
                key_material.insert(key.to_string(), b64().encode(value));
            }
        }
        Ok(AnswerResponse {
            tls: b64().encode(sealed),
            peers: node.membership().into_iter().map(|(n, _)| n).collect(),
            key_material,
        })
    }

    // ---------------------------------------------------------- join: joiner

    /// How many times the local data set was replaced wholesale (a restored
    /// or installed snapshot) since the process started.
    pub fn data_replacements(&self) -> u64 {
        self.store.replacements()
    }

    pub fn pending_seal_config(&self) -> Option<crate::seal::SealConfig> {
        self.pending
            .lock()
            .expect("pending lock")
            .as_ref()
            .map(|p| p.challenge.seal_config.clone())
    }

    pub fn has_pending_join(&self) -> bool {
        self.pending.lock().expect("pending lock").is_some()
    }

    /// Asks `target` for a challenge and keeps it until this node is unsealed.
    pub async fn request_challenge(&self, target: &JoinTarget) -> Result<()> {
        let challenge = Self::fetch_challenge(&self.settings.node_name, target).await?;
        *self.pending.lock().expect("pending lock") = Some(PendingJoin {
            target: target.clone(),
            challenge,
            fetched: Instant::now(),
        });
        Ok(())
    }

    async fn fetch_challenge(node_name: &str, target: &JoinTarget) -> Result<ChallengeResponse> {
        join_client(target)?
            .post(format!(
                "{}/v1/sys/storage/raft/bootstrap/challenge",
                target.leader_api_addr.trim_end_matches('/')
            ))
            .json(&serde_json::json!({ "server_id": node_name }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                Error::invalid(format!(
                    "ask {} for a join challenge: {e}",
                    target.leader_api_addr
                ))
            })?
            .error_for_status()
            .map_err(|e| {
                Error::invalid(format!(
                    "{} refused a join challenge: {e}",
                    target.leader_api_addr
                ))
            })?
            .json()
            .await
            .map_err(|e| {
                Error::invalid(format!(
                    "decode the join challenge from {}: {e}",
                    target.leader_api_addr
                ))
            })
    }

    /// Finishes a pending join with the cluster's unseal key or this node's
    /// auto-unseal seal: opens the challenge, answers it, receives the key
    /// material and the cluster TLS keyring, starts Raft and waits until the
    /// keyring has been replicated here.
    pub async fn complete_join(
        &self,
        seal: &crate::seal::Seal,
        unlock: Unlock<'_>,
        routes: axum::Router,
    ) -> Result<crate::barrier::RootKey> {
        let (target, mut challenge, fetched) = {
            let pending = self.pending.lock().expect("pending lock");
            let p = pending
                .as_ref()
                .ok_or_else(|| Error::invalid("no join in progress"))?;
            (p.target.clone(), p.challenge.clone(), p.fetched)
        };
        let unseal_key = match unlock {
            Unlock::UnsealKey(key) => Some(key),
            Unlock::Auto => None,
        };
        // A Shamir joiner may have waited long for its operators: its challenge has expired, or
        // the leader has changed since. With the key in hand, ask for a fresh one (once more if
        // the active node no longer knows the one answered).
        let mut fresh = fetched.elapsed() >= CHALLENGE_REFRESH;
        let answer: AnswerResponse = loop {
            if fresh {
                challenge = Self::fetch_challenge(&self.settings.node_name, &target).await?;
            }
            let sealed = b64()
                .decode(&challenge.challenge)
                .map_err(|_| Error::invalid("malformed join challenge"))?;
            let nonce = seal
                .open_challenge(&challenge.seal_config, &sealed, unseal_key)
                .await
                .map_err(|e| match e {
                    crate::seal::SealError::InvalidKey => Error::invalid("the key shares do not open this cluster's keys (cipher: message authentication failed); unseal progress was reset, submit this cluster's keys"),
                    other => other.into(),
                })?;
            let response = join_client(&target)?
                .post(format!(
                    "{}/v1/sys/storage/raft/bootstrap/answer",
                    target.leader_api_addr.trim_end_matches('/')
                ))
                .json(&serde_json::json!({
                    "server_id": self.settings.node_name,
                    "answer": b64().encode(nonce.as_slice()),
                    "cluster_addr": self.settings.cluster_addr,
                    "api_addr": self.settings.api_addr,
                    "non_voter": target.non_voter,
                }))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| {
                    Error::invalid(format!(
                        "answer the join challenge at {}: {e}",
                        target.leader_api_addr
                    ))
                })?;
            if response.status() == reqwest::StatusCode::BAD_REQUEST && !fresh {
                fresh = true;
                continue;
            }
            break response
                .error_for_status()
                .map_err(|e| {
                    Error::invalid(format!(
                        "{} refused the join answer: {e}; unseal again to retry with a new challenge",
                        target.leader_api_addr
                    ))
                })?
                .json()
                .await
                .map_err(|e| Error::invalid(format!("decode the join answer: {e}")))?;
        };
        // Proven: the key material arrives now. A throw-away barrier over it yields the root
        // key (checked by the keyring opening) and opens the cluster TLS keyring.
        let scratch: Arc<dyn Backend> = Arc::new(crate::physical::inmem::InmemBackend::new());
        for (key, value) in &answer.key_material {
            let bytes = b64()
                .decode(value)
                .map_err(|_| Error::invalid("malformed key material in the join answer"))?;
            scratch.put(key, bytes).await?;
        }
        let scratch_seal = seal.over(scratch.clone());
        let root = match unseal_key {
            Some(key) => scratch_seal.recover_root_key(key).await.map_err(|_| {
                Error::invalid("the key shares do not open this cluster's keys (cipher: message authentication failed); unseal progress was reset, submit this cluster's keys")
            })?,
            None => {
                let auto = scratch_seal
                    .auto()
                    .ok_or_else(|| Error::internal("auto-unseal join without an auto-unseal seal"))?
                    .clone();
                scratch_seal.auto_root_key(auto.as_ref()).await?
            }
        };
        let barrier = crate::barrier::Barrier::new(scratch);
        barrier.unseal(&root).await?;
        if let Some(key) = unseal_key {
            seal.remember_unseal_key(key);
        }
        let sealed_tls = b64()
            .decode(&answer.tls)
            .map_err(|_| Error::invalid("malformed cluster TLS in the join answer"))?;
        let tls_json = barrier.open_value(TLS_TRANSFER_PATH, &sealed_tls)?;
        let tls: ClusterTls = serde_json::from_slice(&tls_json)
            .map_err(|e| Error::internal(format!("decode the cluster TLS keyring: {e}")))?;
        self.serve(&tls, routes).await?;

        // The keyring arrives with the first replication (log or snapshot).
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.store.get("core/keyring").await?.is_none() {
            if Instant::now() > deadline {
                return Err(Error::internal("joined, but the cluster's data has not been replicated here within 120s; check the cluster port between the nodes and unseal again"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *self.pending.lock().expect("pending lock") = None;
        Ok(root)
    }
}

/// The client a standby forwards requests with, over the cluster port.
fn forwarding_client(tls: &ClusterTls) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            tls.client_config()
                .map_err(|e| Error::internal(format!("cluster TLS client: {e}")))?,
        )
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::internal(format!("build the forwarding client: {e}")))
}

/// An HTTPS client for a join target's API, with TLS built by the client crate exactly as
/// the CLI builds it: the leader's CA when given, else the system's trusted CAs; the
/// certificate checked against `leader_tls_servername` when given (Vault's meaning: a name
/// among the leader certificate's SANs, whatever address is dialled); the client certificate
/// presented when given (with its key, or it is an error, as in Vault).
fn join_client(target: &JoinTarget) -> Result<reqwest::Client> {
    use keyhold_client::tls::{rustls_config_from_pem, PemTls};
    let tls = PemTls {
        ca_cert: target.ca_cert_pem.as_deref().map(str::as_bytes),
        client_cert: target.client_cert_pem.as_deref().map(str::as_bytes),
        client_key: target.client_key_pem.as_deref().map(|key| key.as_bytes()),
        tls_server_name: target.tls_server_name.as_deref(),
    };
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if tls.needs_custom() {
        let config = rustls_config_from_pem(&tls).map_err(|e| {
            Error::invalid(format!(
                "the TLS settings to reach {} (leader_ca_cert, leader_client_cert, \
                 leader_client_key, leader_tls_servername): {e}",
                target.leader_api_addr
            ))
        })?;
        builder = builder.tls_backend_preconfigured(config);
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("build the join client: {e}")))
}

/// Reads from the local state machine; writes through Raft.
struct HaBackend {
    ha: Arc<Ha>,
}

impl HaBackend {
    async fn writer(&self) -> std::result::Result<Arc<dyn Backend>, StorageError> {
        match self.ha.running().await {
            Some(node) => Ok(node.backend()),
            None => Err(StorageError::Io(
                "this node's Raft is not running (the node is sealed); writes are refused".into(),
            )),
        }
    }
}

#[async_trait]
impl Backend for HaBackend {
    async fn get(&self, key: &str) -> std::result::Result<Option<Vec<u8>>, StorageError> {
        self.ha.store.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> std::result::Result<(), StorageError> {
        self.writer().await?.put(key, value).await
    }
    async fn delete(&self, key: &str) -> std::result::Result<(), StorageError> {
        self.writer().await?.delete(key).await
    }
    async fn list(&self, prefix: &str) -> std::result::Result<Vec<String>, StorageError> {
        self.ha.store.list(prefix).await
    }
    async fn transaction(&self, ops: Vec<TxnOp>) -> std::result::Result<(), StorageError> {
        self.writer().await?.transaction(ops).await
    }
}
