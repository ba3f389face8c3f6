//! Replicated storage: openraft 0.9 (storage-v2) over the node's sled
//! database, with its transport on the cluster port over mutual TLS.
//!
//! [`RaftNode`] is what the server uses: [`RaftNode::open`] over the node's
//! [`SledStore`], [`RaftNode::serve_cluster`] once the cluster TLS is known
//! (it lives behind the barrier, so after unseal), [`RaftNode::bootstrap`]
//! or [`RaftNode::add_learner`] / [`RaftNode::promote`] to form a cluster,
//! and [`RaftNode::backend`] as the `physical::Backend` under the barrier.
//!
//! Parts: [`types`] (openraft type config), [`log_store`] and
//! [`state_machine`] (sled), [`snapshot`] (Vault's `state.bin`), [`tls`],
//! [`network`] (client) and [`listener`] (server) of the cluster port,
//! [`backend`] (reads local, writes through Raft), `observer` (metrics).
//!
//! Timing (Vault's `performance_multiplier` `m`, default 5): hashicorp/raft
//! uses election 1 s·m, heartbeat timeout 1 s·m, leader lease 0.5 s·m, and
//! sends heartbeats every heartbeat-timeout/10. openraft 0.9 lets a follower
//! stand for election after `leader_lease + rand[election_timeout_min,
//! election_timeout_max)` of silence, where its leader lease is fixed to
//! `election_timeout_max`. We map: `election_timeout_max` = 1 s·m (Vault's
//! election/heartbeat timeout, so also openraft's lease), `election_timeout_min`
//! = 0.5 s·m (Vault's leader lease), `heartbeat_interval` = 0.2 s·m. A
//! follower therefore stands 1.5–2 s·m after the leader went silent, the
//! same window as Vault's randomised heartbeat timeout of 1–2 s·m. The
//! heartbeat is 0.2 s·m rather than hashicorp/raft's 0.1 s·m because
//! openraft also uses `heartbeat_interval` as the timeout of every
//! append-entries RPC, which must cover a follower's fsync.

pub mod backend;
pub mod follower_reads;
pub mod integrity;
mod lease;
pub mod listener;
pub mod log_store;
pub mod network;
mod observer;
mod proposer;
pub mod snapshot;
pub mod state_machine;
pub mod tls;
pub mod types;

#[cfg(test)]
mod cluster_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};

pub use backend::RaftBackend;

/// Where a snapshot being restored is staged, chunk by chunk, through Raft.
pub const RESTORE_STAGING_PREFIX: &str = "core/raft/restore/";
/// Writing a restore id here makes every state machine swap in the staged
/// snapshot, atomically, at the same log index.
pub const RESTORE_COMMIT_KEY: &str = "core/raft/restore-commit";
pub use listener::{raft_routes, ClusterListener};
pub use network::ClusterClient;
pub use tls::{probe as probe_cluster_tls, ClusterTls, CLUSTER_SERVER_NAME};
pub use types::{node_id, ClusterNode, NodeId, WriteBatch};

use crate::physical::sled_store::SledStore;
use crate::physical::{Backend, StorageError};
use log_store::LogStore;
use network::{NetworkFactory, ELECT_PATH, VERSION_PATH};
use state_machine::StateMachine;
use types::Raft;

/// Errors of the Raft node's own operations (not of `Backend` calls, which
/// keep the `physical::StorageError` contract).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cluster TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    #[error("invalid raft storage configuration: {0}")]
    Config(String),
    #[error("this node is not the Raft leader{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<ClusterNode> },
    #[error("no cluster member is named {0:?}")]
    UnknownNode(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("timed out {0}")]
    Timeout(String),
    /// No other voter answers (they are stopped, or cut off): there is
    /// nobody to hand leadership to.
    #[error("no other voter answers; nobody can take leadership over")]
    NoVoterReachable,
    /// Every voter that could take over runs an older version than this
    /// node ([`Handover::NotOlder`]).
    #[error(
        "every other voter runs an older version ({newest}) than this node ({own}): upgrade \
         them first, so leadership does not move back to an older build"
    )]
    OnlyOlderVoters { own: String, newest: String },
}

/// Which successors a leadership hand-over accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The newest version that answers, older than this node if need be (a
    /// shutdown: the node stops either way).
    AnyVersion,
    /// The newest version that answers, never older than this node (an
    /// operator's `sys/step-down`).
    NotOlder,
}

/// How a node takes part in the cluster: the `storage "raft"` stanza's
/// settings plus the store the state machine lives in.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// Vault's `node_id`, e.g. `vault-1`.
    pub name: String,
    pub api_addr: String,
    /// `IP:PORT` of the cluster listener (Vault's `cluster_addr` without scheme).
    pub cluster_addr: String,
    pub store: Arc<SledStore>,
    /// Scales every Raft timeout (1 = fastest, Vault's recommendation for
    /// production; 0 = the default, 5; at most 10).
    pub performance_multiplier: u32,
    /// Take a snapshot after this many new log entries.
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub trailing_logs: u64,
    /// The largest write batch (keys plus values, in bytes) a write may carry.
    pub max_entry_size: usize,
}

/// Raft timeouts derived from `performance_multiplier` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl RaftNodeConfig {
    pub const DEFAULT_PERFORMANCE_MULTIPLIER: u32 = 5;
    pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 8192;
    pub const DEFAULT_TRAILING_LOGS: u64 = 10_000;
    pub const DEFAULT_MAX_ENTRY_SIZE: usize = 1024 * 1024;

    /// A config with Vault's defaults.
    pub fn new(
        name: impl Into<String>,
        api_addr: impl Into<String>,
        cluster_addr: impl Into<String>,
        store: Arc<SledStore>,
    ) -> RaftNodeConfig {
        RaftNodeConfig {
            name: name.into(),
            api_addr: api_addr.into(),
            cluster_addr: cluster_addr.into(),
            store,
            performance_multiplier: Self::DEFAULT_PERFORMANCE_MULTIPLIER,
            snapshot_threshold: Self::DEFAULT_SNAPSHOT_THRESHOLD,
            trailing_logs: Self::DEFAULT_TRAILING_LOGS,
            max_entry_size: Self::DEFAULT_MAX_ENTRY_SIZE,
        }
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::Config(m));
        if self.name.is_empty() {
            return bad("node_id must not be empty".into());
        }
        if self.performance_multiplier > 10 {
            return bad(format!(
                "performance_multiplier is {}; it must be between 0 (default 5) and 10",
                self.performance_multiplier
            ));
        }
        if self.snapshot_threshold == 0 {
            return bad("snapshot_threshold must be at least 1".into());
        }
        if self.max_entry_size == 0 || self.max_entry_size > network::MAX_RPC_BYTES / 2 {
            return bad(format!(
                "max_entry_size is {}; it must be between 1 and {} bytes",
                self.max_entry_size,
                network::MAX_RPC_BYTES / 2
            ));
        }
        Ok(())
    }

    pub fn timing(&self) -> Timing {
        let m = match self.performance_multiplier {
            0 => Self::DEFAULT_PERFORMANCE_MULTIPLIER,
            m => m,
        };
        let ms = |n: u32| Duration::from_millis(u64::from(n * m));
        Timing {
            heartbeat_interval: ms(200),
            election_timeout_min: ms(500),
            election_timeout_max: ms(1000),
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config, ClusterError> {
        let t = self.timing();
        openraft::Config {
            cluster_name: "keyhold".into(),
            heartbeat_interval: t.heartbeat_interval.as_millis() as u64,
            election_timeout_min: t.election_timeout_min.as_millis() as u64,
            election_timeout_max: t.election_timeout_max.as_millis() as u64,
            // Per chunk; the last one includes installing the whole state.
            install_snapshot_timeout: 30_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_threshold),
            max_in_snapshot_log_to_keep: self.trailing_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// What the backend and the node share.
pub(crate) struct Shared {
    pub(crate) raft: Raft,
    pub(crate) store: Arc<SledStore>,
    pub(crate) max_entry_size: usize,
    /// Every write of this node goes through it (group commit).
    pub(crate) proposer: proposer::Proposer,
    transferring: AtomicBool,
    /// Set by [`RaftNode::shutdown`] before Raft stops: the cluster listener then answers the
    /// Raft RPCs still arriving with 503 instead of handing them to a stopped Raft (which
    /// logged each as an error).
    stopping: Arc<AtomicBool>,
}

impl Shared {
    pub(crate) fn transferring(&self) -> bool {
        self.transferring.load(Ordering::SeqCst)
    }
}

/// One member of a Keyhold Raft cluster. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    shared: Arc<Shared>,
    me: ClusterNode,
    id: NodeId,
    timing: Timing,
    client: ClusterClient,
    listener: Arc<Mutex<Option<ClusterListener>>>,
    /// The last append this node accepted from a leader (standby reads).
    contact: Arc<follower_reads::LeaderContact>,
}

/// A node's view of the cluster, for `sys/leader`, `sys/storage/raft/*` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub name: String,
    /// `leader`, `candidate`, `follower`, `learner` or `shutdown`.
    pub state: &'static str,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub leader: Option<String>,
    /// Filled on the leader only.
    pub followers: Vec<FollowerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub name: String,
    pub voter: bool,
    /// The last log index known to be replicated to it.
    pub matched_index: Option<u64>,
    /// Since this node last had an answer from it.
    pub last_contact: Option<Duration>,
}

impl RaftNode {
    /// Starts Raft over the store. The cluster listener is started separately
    /// ([`RaftNode::serve_cluster`]); until then peers are unreachable.
    pub async fn open(config: RaftNodeConfig) -> Result<RaftNode, ClusterError> {
        config.validate()?;
        let raft_config = Arc::new(config.openraft_config()?);
        let me = ClusterNode {
            name: config.name.clone(),
            api_addr: config.api_addr.clone(),
            cluster_addr: config.cluster_addr.clone(),
        };
        let id = me.id();
        let log = LogStore::open(&config.store)?;
        let state_machine = StateMachine::open(config.store.clone())?;
        let client = ClusterClient::default();
        let factory = NetworkFactory {
            me: id,
            client: client.clone(),
        };
        let raft = Raft::new(id, raft_config, factory, log, state_machine)
            .await
            .map_err(|e| ClusterError::Raft(format!("start raft on {}: {e}", me.name)))?;
        observer::spawn(raft.clone(), client.clone(), id);
        integrity::spawn_recorder(raft.clone(), config.store.clone());
        Ok(RaftNode {
            shared: Arc::new(Shared {
                proposer: proposer::Proposer::spawn(raft.clone(), config.max_entry_size),
                raft,
                store: config.store.clone(),
                max_entry_size: config.max_entry_size,
                transferring: AtomicBool::new(false),
                stopping: Arc::default(),
            }),
            me,
            id,
            timing: config.timing(),
            client,
            listener: Arc::default(),
            contact: Arc::default(),
        })
    }

    /// This node as a cluster member.
    pub fn node(&self) -> &ClusterNode {
        &self.me
    }

    /// The openraft handle, for what this façade does not cover.
    pub fn raft(&self) -> &Raft {
        &self.shared.raft
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Starts the mutual-TLS cluster listener on `cluster_addr`, serving the
    /// Raft RPCs merged with `extra` (forwarding, join: see
    /// [`listener`]), and uses `tls` for this node's own RPCs from now on.
    pub async fn serve_cluster(
        &self,
        tls: &ClusterTls,
        extra: axum::Router,
    ) -> Result<ClusterListener, ClusterError> {
        let listener = std::net::TcpListener::bind(&self.me.cluster_addr).map_err(|e| {
            ClusterError::Io(format!(
                "bind the cluster listener {}: {e} (is another server using the port?)",
                self.me.cluster_addr
            ))
        })?;
        self.serve_cluster_on(listener, tls, extra).await
    }

    /// [`RaftNode::serve_cluster`] on a listener the caller bound.
    pub async fn serve_cluster_on(
        &self,
        listener: std::net::TcpListener,
        tls: &ClusterTls,
        extra: axum::Router,
    ) -> Result<ClusterListener, ClusterError> {
        self.client.configure(tls)?;
        let app = raft_routes(
            self.shared.raft.clone(),
            self.contact.clone(),
            self.shared.stopping.clone(),
        )
        .merge(extra);
        let running = listener::serve(listener, tls, app).await?;
        if let Some(old) = self
            .listener
            .lock()
            .expect("listener lock")
            .replace(running.clone())
        {
            old.shutdown();
        }
        Ok(running)
    }

    /// Makes this node a one-voter cluster. Idempotent: a node that already
    /// has a membership (bootstrapped, or joined) is left as it is.
    pub async fn bootstrap(&self) -> Result<(), ClusterError> {
        let raft = &self.shared.raft;
        if raft.is_initialized().await.map_err(raft_error)? {
            return Ok(());
        }
        match raft
            .initialize(BTreeMap::from([(self.id, self.me.clone())]))
            .await
        {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Raft(format!(
                "bootstrap {}: {e}",
                self.me.name
            ))),
        }
    }

    /// Adds `node` as a non-voter (run on the leader). Returns once the
    /// membership change is committed; the learner then catches up.
    pub async fn add_learner(&self, node: ClusterNode) -> Result<(), ClusterError> {
        let id = node.id();
        self.shared
            .raft
            .add_learner(id, node, false)
            .await
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }

    /// Makes the learner `name` a voter (run on the leader), after waiting
    /// (bounded) for it to catch up with the leader's log.
    pub async fn promote(&self, name: &str) -> Result<(), ClusterError> {
        let (id, voter) = self.member(name)?;
        if voter {
            return Ok(());
        }
        let deadline = Instant::now() + self.catch_up_budget();
        loop {
            let m = self.shared.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                return Err(ClusterError::NotLeader {
                    leader: self.leader(),
                });
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index);
            if matched.is_some() && matched >= m.last_log_index {
                break;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout(format!(
                    "waiting for {name} to catch up before promoting it (it has {matched:?}, the \
                     leader {:?}); is it running and reachable on its cluster address?",
                    m.last_log_index
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }

    /// Removes the member `name`, voter or learner (run on the leader).
    pub async fn remove(&self, name: &str) -> Result<(), ClusterError> {
        let (id, voter) = self.member(name)?;
        let change = if voter {
            // Not retained as a learner: the node leaves the cluster.
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.shared
            .raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }

    /// Every member and whether it votes, in node id order.
    pub fn membership(&self) -> Vec<(ClusterNode, bool)> {
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (node.clone(), voters.contains(id)))
            .collect()
    }

    /// The `physical::Backend` for the barrier: reads from this node's
    /// state machine (on a follower they can lag the leader by the
    /// replication delay), writes through Raft. On a node that is not the
    /// leader a write fails with [`StorageError::NotLeader`]; route writes
    /// with [`RaftNode::is_leader`] / [`RaftNode::leader`] first.
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(RaftBackend {
            shared: self.shared.clone(),
        })
    }

    /// True while this node is the leader as far as it knows (a leader cut
    /// off from its quorum notices only when its writes stop committing).
    pub fn is_leader(&self) -> bool {
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The current leader, if one is known.
    pub fn leader(&self) -> Option<ClusterNode> {
        let metrics = self.shared.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    pub async fn status(&self) -> RaftStatus {
        let m = self.shared.raft.metrics().borrow().clone();
        let committed = self
            .shared
            .raft
            .with_raft_state(|st| st.committed)
            .await
            .ok()
            .flatten()
            .map(|l| l.index);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let contacts = self.client.last_contact();
        let followers = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, matched)| FollowerStatus {
                name: membership
                    .get_node(id)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| id.to_string()),
                voter: voters.contains(id),
                matched_index: matched.map(|l| l.index),
                last_contact: contacts.get(id).map(|t| t.elapsed()),
            })
            .collect();
        let is_voter = voters.contains(&self.id);
        RaftStatus {
            name: self.me.name.clone(),
            state: match m.state {
                _ if m.running_state.is_err() => "shutdown",
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Follower if is_voter => "follower",
                ServerState::Follower | ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: committed,
            applied_index: m.last_applied.map(|l| l.index),
            leader: m
                .current_leader
                .and_then(|id| membership.get_node(&id).map(|n| n.name.clone())),
            followers,
        }
    }

    /// Hands leadership to an up-to-date voter, so a planned shutdown of the
    /// leader costs no election timeout. A no-op on a follower.
    ///
    /// openraft 0.9 has no TimeoutNow/transfer RPC. What it has: a node asked
    /// to `trigger().elect()` stands at once with term + 1, and a voter
    /// grants a vote when its leader lease has lapsed and the candidate's log
    /// is at least as long as its own. The leader's own lease is counted from
    /// when it became leader (heartbeats refresh only the followers'), so a
    /// leader elected more than `election_timeout_max` ago grants the vote of
    /// a fully caught-up follower and steps down (a younger one first waits
    /// for that much to pass):
    /// with the candidate's own vote that is a quorum in a 3-node cluster
    /// (in 5 nodes a third vote is needed, which the other followers give
    /// only once their lease of `election_timeout_max` has lapsed). So: stop
    /// accepting writes here, wait for a voter to match the leader's last log
    /// index, ask it to elect (`/v1/cluster/raft/elect`), and wait for
    /// another leader; retried until a bounded deadline, but only while this
    /// node still leads: once it has granted a higher term an election is
    /// under way, and asking again would depose its winner.
    ///
    /// When the whole cluster is being stopped there is nobody to take over:
    /// every other voter's last RPC failed since the hand-over began (stopped
    /// peers refuse at once), or none has answered within an election timeout
    /// (a live peer answers the heartbeat sent at the start within one
    /// heartbeat interval; the margin is for a loaded host). Then it gives up
    /// with [`ClusterError::NoVoterReachable`] instead of waiting out the
    /// deadline, and the cluster, if any of it is left, elects as after a crash.
    pub async fn transfer_leadership(&self) -> Result<(), ClusterError> {
        self.transfer_leadership_with(Handover::AnyVersion).await
    }

    /// [`RaftNode::transfer_leadership`] with a rule on the successor's
    /// version. Either way the successor is a caught-up voter running the
    /// newest version among the voters that answer (an older one is chosen
    /// only when nothing newer answers), so a rolling upgrade's leadership
    /// never moves from a newer build to an older one when a newer one could
    /// take it; with [`Handover::NotOlder`] (an operator's `step-down`) it
    /// refuses, changing nothing, when only older voters could take over.
    pub async fn transfer_leadership_with(&self, rule: Handover) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Ok(());
        }
        self.shared.transferring.store(true, Ordering::SeqCst);
        let result = self.hand_over(rule).await;
        self.shared.transferring.store(false, Ordering::SeqCst);
        result
    }

    /// The version every member runs, by name: this node's own, and each
    /// other member's as it answers over the cluster port (all asked at
    /// once, each bounded by the election timeout's lower bound); a member
    /// whose last RPC went unanswered (down: the leader's heartbeats say so)
    /// is not asked, so a node stopped mid-upgrade does not slow every call,
    /// and a member that does not answer is left out. What `autopilot/state`
    /// and `ha-status` report, so a rolling upgrade shows its mixed versions.
    pub async fn member_versions(&self) -> BTreeMap<String, String> {
        let members: Vec<(NodeId, ClusterNode)> = {
            let metrics = self.shared.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect()
        };
        let mut versions = BTreeMap::new();
        let mut asks = tokio::task::JoinSet::new();
        for (id, node) in members {
            if id == self.id {
                versions.insert(node.name.clone(), crate::VERSION.to_string());
                continue;
            }
            if self.client.looks_gone(id) {
                continue;
            }
            let (client, timeout) = (self.client.clone(), self.timing.election_timeout_min);
            asks.spawn(async move {
                let version = ask_version(&client, &node, timeout).await;
                (node.name, version)
            });
        }
        while let Some(Ok((name, version))) = asks.join_next().await {
            if let Some(version) = version {
                versions.insert(name, version.to_string());
            }
        }
        versions
    }

    async fn hand_over(&self, rule: Handover) -> Result<(), ClusterError> {
        let t = self.timing;
        let own = semver::Version::parse(crate::VERSION).ok();
        let mut versions: BTreeMap<NodeId, semver::Version> = BTreeMap::new();
        let started = Instant::now();
        let deadline = started + t.election_timeout_max * 6;
        let probe_until = started + t.election_timeout_max;
        let poll = Duration::from_millis(10);
        let _ = self.shared.raft.trigger().heartbeat().await;
        // This node must not stand again once it has stepped down: a leader that granted the
        // target's term and then lost its own leader (the target short of votes) stood itself
        // and won back, and asked the target again (a rolling upgrade of 5 nodes under load).
        let _restore = RestoreTimers::stop_elections(&self.shared.raft);
        let mut stepped_down: Option<Instant> = None;
        while Instant::now() < deadline {
            let m = self.shared.raft.metrics().borrow().clone();
            if m.current_leader.is_some() && m.current_leader != Some(self.id) {
                return Ok(());
            }
            if m.state != ServerState::Leader {
                // A voter stood for election (the one asked, or another whose timer ran out)
                // and this node granted it a higher term: the election is under way. Asking
                // the target to stand again would depose whoever wins it (a rolling upgrade
                // under load saw two voters take turns this way for six seconds). Wait for a
                // leader to show, and past a bound leave the others to finish electing.
                if stepped_down.is_none() {
                    tracing::info!(state = ?m.state, term = m.current_term, "leadership transfer: stepped down for an election");
                }
                let since = *stepped_down.get_or_insert_with(Instant::now);
                if since.elapsed() >= t.election_timeout_max * 2 {
                    tracing::info!(
                        "stepped down for an election; stopping before its winner was heard from"
                    );
                    return Ok(());
                }
                tokio::time::sleep(poll).await;
                continue;
            }
            let membership = m.membership_config.membership();
            let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
            let (contacts, failures) = (self.client.last_contact(), self.client.last_failure());
            let answered = |id: &NodeId| contacts.get(id).is_some_and(|c| *c >= started);
            let gone = |id: &NodeId| {
                failures.get(id).is_some_and(|f| *f >= started) && self.client.looks_gone(*id)
            };
            if others.iter().all(gone)
                || (Instant::now() >= probe_until && !others.iter().any(answered))
            {
                return Err(ClusterError::NoVoterReachable);
            }
            // The version of every voter that answers, asked once per hand-over.
            for id in others.iter().filter(|id| answered(id)) {
                if versions.contains_key(id) {
                    continue;
                }
                if let Some(node) = membership.get_node(id) {
                    let asked =
                        ask_version(&self.client, node, self.timing.election_timeout_min).await;
                    if let Some(v) = asked {
                        versions.insert(*id, v);
                    }
                }
            }
            // Until every voter that is not gone has told its version (a live one answers the
            // first heartbeat), choosing could pick an older node over a newer one that has
            // not answered yet.
            let unknown = others
                .iter()
                .any(|id| !gone(id) && !versions.contains_key(id));
            if unknown && Instant::now() < probe_until {
                let _ = self.shared.raft.trigger().heartbeat().await;
                tokio::time::sleep(poll).await;
                continue;
            }
            let newest = others
                .iter()
                .filter(|id| answered(id) && !self.client.looks_gone(**id))
                .filter_map(|id| versions.get(id))
                .max()
                .cloned();
            if let (Handover::NotOlder, Some(own), Some(newest)) = (rule, &own, &newest) {
                if newest < own {
                    return Err(ClusterError::OnlyOlderVoters {
                        own: own.to_string(),
                        newest: newest.to_string(),
                    });
                }
            }
            let target = m
                .replication
                .iter()
                .flatten()
                .filter(|(id, matched)| {
                    // Answered since the hand-over began: an answer from
                    // before may come from a node stopped since.
                    answered(id)
                        && others.contains(id)
                        && !self.client.looks_gone(**id)
                        && matched.map(|l| l.index) == m.last_log_index
                        // The newest version among those that answer (any,
                        // when no version is known yet).
                        && (newest.is_none() || versions.get(id) == newest.as_ref())
                })
                .find_map(|(id, _)| membership.get_node(id).cloned());
            let Some(target) = target else {
                // Nobody is caught up yet: push the last entries out now.
                let _ = self.shared.raft.trigger().heartbeat().await;
                tokio::time::sleep(poll).await;
                continue;
            };
            // A voter grants only once its lease on the current leader has
            // lapsed; the leader's own lease runs from its election.
            let since_elected = self
                .shared
                .raft
                .with_raft_state(|st| {
                    st.vote_last_modified()
                        .map(|t| openraft::Instant::elapsed(&t))
                })
                .await
                .map_err(raft_error)?
                .unwrap_or_default();
            let lease = t.election_timeout_max + LEASE_MARGIN;
            if since_elected < lease {
                tokio::time::sleep(lease - since_elected).await;
                continue;
            }
            // With more than 3 voters the target needs a vote beyond its own and this node's,
            // and a follower refuses one while its lease on this leader runs (openraft's
            // leader lease: `election_timeout_max` since it last heard from it). Fall silent
            // and let the leases lapse first, so the target wins at once instead of failing
            // while the followers' own timers run out and they stand against it. The quiet is
            // shorter than any follower's timer (`election_timeout_max` plus at least
            // `election_timeout_min` of silence).
            if membership.voter_ids().count() > 3 {
                self.shared.raft.runtime_config().heartbeat(false);
                tokio::time::sleep(t.election_timeout_max + t.election_timeout_min / 4).await;
            }
            tracing::info!(target = %target, term = m.current_term, "leadership transfer: asking a caught-up voter to stand for election");
            if let Err(e) = self
                .client
                .post::<()>(
                    &target.cluster_addr,
                    ELECT_PATH,
                    "application/json",
                    b"null".to_vec(),
                    t.election_timeout_min,
                )
                .await
            {
                tracing::warn!(target = %target, error = %e, "leadership transfer: elect request failed");
                tokio::time::sleep(poll).await;
                continue;
            }
            let attempt_end = Instant::now() + t.election_timeout_max;
            while Instant::now() < attempt_end.min(deadline) {
                let m = self.shared.raft.metrics().borrow().clone();
                if m.current_leader.is_some() && m.current_leader != Some(self.id) {
                    tracing::info!(to = %target, "leadership transferred");
                    return Ok(());
                }
                tokio::time::sleep(poll).await;
            }
        }
        Err(ClusterError::Timeout(
            "handing leadership to another node; no voter took over (are the others up and \
             caught up?)"
                .into(),
        ))
    }

    /// The state machine's data at log index `index` or later, as a point in time: the Raft
    /// snapshot, which is built between two applies, opened at its state. A build is
    /// triggered when the current snapshot is older (waited for up to `timeout`). The state is
    /// not read here: the caller streams it and checks it against the header's length and
    /// digest (the open file stays the same snapshot if a newer build replaces it).
    pub async fn snapshot_file_since(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<SnapshotFile, ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.shared.raft.metrics();
        loop {
            let built = metrics.borrow().snapshot;
            if built.is_some_and(|l| l.index >= index) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(format!(
                    "waiting for a Raft snapshot at index {index} (the last one is at {})",
                    built.map_or("none".to_string(), |l| l.index.to_string())
                )));
            }
            // Ignored while a build runs; asked again when it ends short of `index`.
            let _ = self.shared.raft.trigger().snapshot().await;
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
        }
        let dir = self.shared.store.path().to_path_buf();
        let path = dir.join(state_machine::SNAPSHOT_FILE);
        let opened = path.clone();
        let (header, file) = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&opened).map_err(|e| e.to_string())?;
            let header = snapshot::read_header_from(&mut file).map_err(|e| e.to_string())?;
            Ok::<_, String>((header, file))
        })
        .await
        .map_err(|e| ClusterError::Io(format!("reading {}: {e}", path.display())))?
        .map_err(|e| ClusterError::Io(format!("reading {}: {e}", path.display())))?;
        if header.meta.last_log_id.map_or(0, |l| l.index) < index {
            return Err(ClusterError::Io(format!(
                "{} holds the snapshot at {}, older than index {index}",
                path.display(),
                header.meta
            )));
        }
        Ok(SnapshotFile {
            header,
            file,
            dir,
            path,
        })
    }

    /// Stops the cluster listener and Raft on this node (call
    /// [`RaftNode::transfer_leadership`] first on a graceful shutdown).
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.lock().expect("listener lock").take() {
            listener.shutdown();
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        integrity::record_now(&self.shared.raft, &self.shared.store).await;
    }

    fn member(&self, name: &str) -> Result<(NodeId, bool), ClusterError> {
        self.membership()
            .into_iter()
            .find(|(n, _)| n.name == name)
            .map(|(n, voter)| (n.id(), voter))
            .ok_or_else(|| ClusterError::UnknownNode(name.to_string()))
    }

    fn catch_up_budget(&self) -> Duration {
        (self.timing.election_timeout_max * 10).max(Duration::from_secs(10))
    }

    fn write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, ClusterNode>>,
    ) -> ClusterError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader {
                leader: f.leader_node,
            },
            other => ClusterError::Raft(other.to_string()),
        }
    }
}

/// Slack past a lease's end before asking for a vote that depends on it.
const LEASE_MARGIN: Duration = Duration::from_millis(50);

fn raft_error(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

/// Stops a node's own elections (and, when asked, its heartbeats) for a leadership
/// hand-over, and turns both back on when dropped (a step-down leaves the node running).
struct RestoreTimers<'a>(&'a types::Raft);

impl<'a> RestoreTimers<'a> {
    fn stop_elections(raft: &'a types::Raft) -> RestoreTimers<'a> {
        raft.runtime_config().elect(false);
        RestoreTimers(raft)
    }
}

impl Drop for RestoreTimers<'_> {
    fn drop(&mut self) {
        let timers = self.0.runtime_config();
        timers.heartbeat(true);
        timers.elect(true);
    }
}

/// `POST /v1/cluster/raft/version` on `target`'s cluster port, bounded by `timeout`.
async fn ask_version(
    client: &ClusterClient,
    target: &ClusterNode,
    timeout: Duration,
) -> Option<semver::Version> {
    let reported: String = client
        .post(
            &target.cluster_addr,
            VERSION_PATH,
            "application/json",
            b"null".to_vec(),
            timeout,
        )
        .await
        .ok()?;
    semver::Version::parse(&reported).ok()
}

/// A Raft snapshot opened by [`RaftNode::snapshot_file_since`].
pub struct SnapshotFile {
    /// Its meta, and the length and SHA-256 its state should have.
    pub header: snapshot::Header,
    /// Open at the first byte of the state.
    pub file: std::fs::File,
    /// The node's data directory: where files made from the snapshot belong (the disk the
    /// data is on, not a tmpfs).
    pub dir: std::path::PathBuf,
    /// For messages.
    pub path: std::path::PathBuf,
}
