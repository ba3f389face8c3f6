//! The core's side of high availability: starting Raft once unsealed,
//! following Raft leadership (active <-> standby), the active node's half of
//! the join handshake, `sys/storage/raft/*`, and autopilot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ha::{
    AnswerResponse, ChallengeResponse, Ha, JoinTarget, AUTOPILOT_KEY, CLUSTER_TLS_KEY,
};
use super::{Core, Role};
use crate::error::{Error, Result};
use crate::raft::{ClusterNode, ClusterTls};

/// How often the leadership watcher looks at Raft when nothing changed.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Vault's autopilot configuration (`sys/storage/raft/autopilot/configuration`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutopilotConfig {
    pub cleanup_dead_servers: bool,
    #[serde(with = "go_duration")]
    pub last_contact_threshold: Duration,
    #[serde(with = "go_duration")]
    pub dead_server_last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    #[serde(with = "go_duration")]
    pub server_stabilization_time: Duration,
    pub disable_upgrade_migration: bool,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            cleanup_dead_servers: false,
            last_contact_threshold: Duration::from_secs(10),
            dead_server_last_contact_threshold: Duration::from_secs(24 * 3600),
            max_trailing_logs: 1000,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
            disable_upgrade_migration: false,
        }
    }
}

/// Durations as Go prints them ("10s", "24h0m0s"), read back with any Vault form.
mod go_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let secs = d.as_secs();
        let text = match (secs / 3600, secs % 3600 / 60, secs % 60) {
            (0, 0, s) => format!("{s}s"),
            (0, m, s) => format!("{m}m{s}s"),
            (h, m, s) => format!("{h}h{m}m{s}s"),
        };
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => {
                crate::client::go_duration::parse_duration(&t).map_err(serde::de::Error::custom)
            }
        }
    }
}

impl Core {
    fn ha_or_invalid(&self) -> Result<&Arc<Ha>> {
        self.ha
            .as_ref()
            .ok_or_else(|| Error::invalid("this server does not use raft storage"))
    }

    /// After the barrier is unsealed on an HA node: start Raft and the
    /// cluster listener, then follow leadership.
    pub(super) async fn start_ha(self: &Arc<Self>, ha: &Arc<Ha>) -> Result<()> {
        let tls = self.cluster_tls().await?;
        // A data directory seeded offline from a snapshot has data but no
        // Raft membership yet: it starts a cluster of its own.
        if ha.never_clustered()? {
            tracing::info!(
                "no Raft membership yet (data restored offline): bootstrapping a one-node cluster"
            );
            ha.bootstrap().await?;
        }
        ha.serve(&tls, self.cluster_routes()).await?;
        let core = Arc::downgrade(self);
        let mut replacements = ha.data_replacements();
        let watcher = tokio::spawn(async move {
            let mut tls_followed: Option<Instant> = None;
            loop {
                let Some(core) = core.upgrade() else { return };
                if core.is_sealed() {
                    return;
                }
                if !core.keys_fit_replaced_data(&mut replacements).await {
                    return;
                }
                core.follow_leadership().await;
                if tls_followed.is_none_or(|at| at.elapsed() >= super::cluster_tls::FOLLOW_INTERVAL)
                {
                    core.follow_cluster_tls().await;
                    tls_followed = Some(Instant::now());
                }
                let raft = match &core.ha {
                    Some(ha) => ha.running().await,
                    None => None,
                };
                drop(core);
                match raft {
                    Some(node) => {
                        // A fresh receiver has seen no version yet: without
                        // marking the current one seen, `changed()` returns at
                        // once and this loop spins (a core per idle node).
                        let mut metrics = node.raft().metrics();
                        metrics.borrow_and_update();
                        // Look again the moment the leader lease would run out, so an active
                        // node cut off from its quorum stops at the lease's end.
                        let wait = node.lease_expiry().map_or(WATCH_INTERVAL, |end| {
                            WATCH_INTERVAL.min(
                                end.saturating_duration_since(Instant::now())
                                    + Duration::from_millis(1),
                            )
                        });
                        let _ = tokio::time::timeout(wait, metrics.changed()).await;
                    }
                    None => tokio::time::sleep(WATCH_INTERVAL).await,
                }
            }
        });
        if let Some(old) = self.watcher.lock().expect("watcher lock").replace(watcher) {
            old.abort();
        }
        Ok(())
    }

    /// After a snapshot replaced the data here (restored on the active node,
    /// or applied on a standby), checks that this node's keys still open it.
    /// A snapshot of another cluster does not: the node seals, as the active
    /// node does, so every node comes back with the restored keys and cluster
    /// TLS (an auto-unseal node unseals itself at once; a Shamir node needs
    /// the other cluster's keys). Returns false when it sealed.
    async fn keys_fit_replaced_data(self: &Arc<Self>, seen: &mut u64) -> bool {
        let Some(ha) = &self.ha else { return true };
        let now = ha.data_replacements();
        if now == *seen {
            return true;
        }
        *seen = now;
        if let Err(e) = self.barrier.reload_keyring().await {
            tracing::warn!(error = %e, "the data was replaced by a snapshot this node's keys do not open: sealing; it unseals with the keys of the cluster that took the snapshot");
            self.seal_from_watcher();
            return false;
        }
        true
    }

    /// Seals on a task of its own: sealing aborts the leadership watcher,
    /// which must not be the task doing it (it would be cancelled midway).
    fn seal_from_watcher(self: &Arc<Self>) {
        let core = self.clone();
        tokio::spawn(async move {
            let _guard = core.lifecycle.lock().await;
            core.seal_internal().await;
        });
    }

    /// One step of the leadership watcher.
    async fn follow_leadership(self: &Arc<Self>) {
        let Some(ha) = self.ha.clone() else { return };
        // A leader acts as active only while it holds its lease on a quorum (`raft/lease.rs`):
        // cut off from its voters it stops serving before the others can elect a new leader.
        let (leader, lease) = match ha.running().await {
            Some(node) => (node.is_leader(), node.holds_lease()),
            None => (false, false),
        };
        if leader && !lease && self.role() == Role::Active {
            tracing::warn!("no quorum of voters answered within the leader lease: no longer acting as the active node until a quorum answers again");
        }
        match (leader && lease, self.role()) {
            (true, Role::Standby) => {
                if let Err(e) = self.become_active(&ha).await {
                    metrics::counter!("vault.core.leadership_setup_failed").increment(1);
                    tracing::error!(error = %e, "could not take over as the active node; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            (false, Role::Active) => {
                let was = self.state.write().expect("state lock").take();
                metrics::gauge!("vault.core.active").set(0.0);
                if let Some(was) = was {
                    // Vault's `vault.core.leadership_lost`: how long this node led.
                    let led = (chrono::Utc::now() - was.active_time).num_milliseconds();
                    metrics::histogram!("vault.core.leadership_lost").record(led.max(0) as f64);
                }
                tracing::info!("lost Raft leadership: now a standby");
            }
            _ => {}
        }
    }

    async fn become_active(self: &Arc<Self>, ha: &Arc<Ha>) -> Result<()> {
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        // Serve only once everything committed before this term is applied
        // here. This waits for a quorum (a node restarted as leader may wait
        // for its peers to be unsealed), so it runs without the lifecycle
        // lock: unseal, seal and status stay answerable meanwhile.
        tokio::time::timeout(Duration::from_secs(30), node.raft().ensure_linearizable())
            .await
            .map_err(|_| {
                Error::internal(
                    "timed out confirming leadership with a quorum before becoming active",
                )
            })?
            .map_err(|e| Error::internal(format!("not the leader any more: {e}")))?;
        let _guard = self.lifecycle.lock().await;
        if self.is_sealed() || self.role() == Role::Active || !node.is_leader() {
            return Ok(());
        }
        if let Err(e) = self.barrier.reload_keyring().await {
            // A snapshot from another cluster was restored: this node's keys
            // no longer open the stored keyring.
            tracing::warn!(error = %e, "the stored keyring does not open with this node's keys: sealing; unseal with the keys of the cluster whose snapshot was restored");
            drop(_guard);
            self.seal_from_watcher();
            return Ok(());
        }
        let unsealed = self.post_unseal().await?;
        self.complete_migration().await;
        let autopilot = tokio::spawn(autopilot_loop(
            Arc::downgrade(self),
            AutopilotTimers {
                reconcile: ha.settings.autopilot_reconcile_interval,
                update: ha.settings.autopilot_update_interval,
            },
        ));
        *unsealed.autopilot.lock().expect("autopilot lock") = Some(autopilot);
        metrics::gauge!("vault.core.active").set(1.0);
        tracing::info!("this node is now the active node");
        Ok(())
    }

    // ------------------------------------------------------------- joining

    /// `sys/storage/raft/bootstrap/challenge` (on the active node).
    pub async fn raft_challenge(
        &self,
        server_id: &str,
        source: std::net::IpAddr,
    ) -> Result<ChallengeResponse> {
        let ha = self.ha_or_invalid()?;
        self.unsealed()?;
        ha.issue_challenge(&self.seal, server_id, source).await
    }

    /// `sys/storage/raft/bootstrap/answer` (on the active node).
    pub async fn raft_answer(
        &self,
        joiner: ClusterNode,
        answer: &str,
        source: std::net::IpAddr,
    ) -> Result<AnswerResponse> {
        let ha = self.ha_or_invalid()?;
        self.unsealed()?;
        let tls = self.cluster_tls().await?;
        ha.admit(&self.barrier, &tls, joiner, answer, source).await
    }

    /// The cluster TLS keyring, from behind the barrier.
    pub(super) async fn cluster_tls(&self) -> Result<ClusterTls> {
        self.view("")
            .get_json(CLUSTER_TLS_KEY)
            .await?
            .ok_or_else(|| {
                Error::internal(
                    "the cluster TLS keyring (core/cluster/tls) is missing from storage",
                )
            })
    }

    /// `sys/storage/raft/join` and `retry_join`: fetch a challenge from the
    /// target; the node joins when an operator unseals it.
    pub async fn raft_join(&self, target: &JoinTarget) -> Result<()> {
        let ha = self.ha_or_invalid()?;
        if self.seal.config().await?.is_some() {
            return Err(Error::invalid("this node already holds an initialised cluster's data; remove its data directory to join another cluster"));
        }
        ha.request_challenge(target).await?;
        tracing::info!(leader = %target.leader_api_addr, "join challenge received: unseal this node with the cluster's keys to join");
        Ok(())
    }

    /// Runs `retry_join` until a challenge is in hand (or the node turns out
    /// to be initialised already). Each round tries every target.
    pub async fn retry_join(self: Arc<Self>, targets: Vec<JoinTarget>) {
        if targets.is_empty() {
            return;
        }
        // Nodes of a new cluster start together, before any of them is
        // initialised: retry soon at first, then every 2s as Vault does.
        let mut pause = Duration::from_millis(250);
        loop {
            match self.seal.config().await {
                Ok(Some(_)) => return,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "retry_join: reading local state failed"),
            }
            if self.ha.as_ref().is_some_and(|ha| ha.has_pending_join()) {
                return;
            }
            for target in &targets {
                match self.raft_join(target).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::info!(leader = %target.leader_api_addr, error = %e, "retry_join: will retry")
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    // -------------------------------------------------- sys/storage/raft/*

    pub(super) async fn raft_configuration(&self) -> Result<Value> {
        let ha = self.ha_or_invalid()?;
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        let leader = node.leader().map(|l| l.name);
        let servers: Vec<Value> = node
            .membership()
            .into_iter()
            .map(|(member, voter)| {
                json!({
                    "node_id": member.name,
                    "address": member.cluster_addr,
                    "leader": leader.as_deref() == Some(member.name.as_str()),
                    "voter": voter,
                    "protocol_version": "3",
                })
            })
            .collect();
        let status = node.status().await;
        Ok(
            json!({ "config": { "index": status.committed_index.unwrap_or(0), "servers": servers } }),
        )
    }

    pub(super) async fn raft_remove_peer(&self, server_id: &str) -> Result<()> {
        let ha = self.ha_or_invalid()?;
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        if server_id == ha.settings.node_name {
            return Err(Error::invalid(
                "cannot remove the active node; step it down first",
            ));
        }
        node.remove(server_id)
            .await
            .map_err(|e| Error::invalid(format!("remove peer {server_id:?}: {e}")))?;
        tracing::info!(node = server_id, "peer removed from the cluster");
        Ok(())
    }

    pub(super) async fn autopilot_config(&self) -> Result<AutopilotConfig> {
        Ok(self
            .view("")
            .get_json(AUTOPILOT_KEY)
            .await?
            .unwrap_or_default())
    }

    pub(super) async fn set_autopilot_config(
        &self,
        data: &serde_json::Map<String, Value>,
    ) -> Result<AutopilotConfig> {
        let mut current = serde_json::to_value(self.autopilot_config().await?)
            .map_err(|e| Error::internal(e.to_string()))?;
        for (k, v) in data {
            if current.get(k).is_none() {
                return Err(Error::invalid(format!("unknown autopilot setting {k:?}")));
            }
            current[k] = v.clone();
        }
        let config: AutopilotConfig = serde_json::from_value(current)
            .map_err(|e| Error::invalid(format!("invalid autopilot configuration: {e}")))?;
        if config.dead_server_last_contact_threshold < Duration::from_secs(60) {
            return Err(Error::invalid(
                "dead_server_last_contact_threshold must be at least 1m",
            ));
        }
        if config.cleanup_dead_servers && config.min_quorum < 3 {
            return Err(Error::invalid(
                "cleanup_dead_servers needs min_quorum of at least 3",
            ));
        }
        self.view("").put_json(AUTOPILOT_KEY, &config).await?;
        Ok(config)
    }

    /// `sys/ha-status` (for `operator members`): every member, which one is active.
    pub(super) async fn ha_status(&self) -> Result<Value> {
        let ha = self.ha_or_invalid()?;
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        let status = node.status().await;
        let versions = node.member_versions().await;
        let now = chrono::Utc::now();
        let nodes: Vec<Value> = node
            .membership()
            .into_iter()
            .map(|(member, _)| {
                let active = status.leader.as_deref() == Some(member.name.as_str());
                let last_echo = status
                    .followers
                    .iter()
                    .find(|f| f.name == member.name)
                    .and_then(|f| f.last_contact)
                    .and_then(|c| chrono::Duration::from_std(c).ok())
                    .map(|c| (now - c).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                json!({
                    "hostname": member.name,
                    "api_address": member.api_addr,
                    "cluster_address": format!("https://{}", member.cluster_addr),
                    "active_node": active,
                    "last_echo": if active { Value::Null } else { json!(last_echo) },
                    "version": versions.get(&member.name).map(String::as_str).unwrap_or(""),
                    "upgrade_version": versions.get(&member.name).map(String::as_str).unwrap_or(""),
                    "redundancy_zone": "",
                })
            })
            .collect();
        Ok(json!({ "nodes": nodes }))
    }

    /// `sys/storage/raft/autopilot/state`.
    pub(super) async fn autopilot_state(&self) -> Result<Value> {
        let ha = self.ha_or_invalid()?;
        let node = ha.running().await.ok_or(Error::NoActiveNode)?;
        let config = self.autopilot_config().await?;
        let status = node.status().await;
        let membership = node.membership();
        let versions = node.member_versions().await;
        let last_index = status.last_log_index.unwrap_or(0);
        let mut servers = serde_json::Map::new();
        let (mut voters, mut non_voters, mut healthy_voters) = (Vec::new(), Vec::new(), 0u64);
        for (member, voter) in &membership {
            let is_leader = status.leader.as_deref() == Some(member.name.as_str());
            let follower = status.followers.iter().find(|f| f.name == member.name);
            let (last_contact, matched) = match (is_leader, follower) {
                (true, _) => (Some(Duration::ZERO), status.last_log_index),
                (false, Some(f)) => (f.last_contact, f.matched_index),
                (false, None) => (None, None),
            };
            let healthy = last_contact.is_some_and(|c| c <= config.last_contact_threshold)
                && last_index.saturating_sub(matched.unwrap_or(0)) <= config.max_trailing_logs;
            if *voter {
                voters.push(member.name.clone());
                if healthy {
                    healthy_voters += 1;
                }
            } else {
                non_voters.push(member.name.clone());
            }
            servers.insert(
                member.name.clone(),
                json!({
                    "id": member.name,
                    "name": member.name,
                    "address": member.cluster_addr,
                    "node_status": if healthy { "alive" } else { "left" },
                    "last_contact": last_contact.map(|c| format!("{}ms", c.as_millis())).unwrap_or_else(|| "unknown".into()),
                    "last_term": status.term,
                    "last_index": matched.unwrap_or(0),
                    "healthy": healthy,
                    "stable_since": "",
                    "status": if is_leader { "leader" } else if *voter { "voter" } else { "non-voter" },
                    "version": versions.get(&member.name).map(String::as_str).unwrap_or(""),
                    "node_type": "voter",
                }),
            );
        }
        let quorum = voters.len() as u64 / 2 + 1;
        let failure_tolerance = healthy_voters.saturating_sub(quorum);
        Ok(json!({
            "healthy": healthy_voters >= quorum && healthy_voters == voters.len() as u64,
            "failure_tolerance": failure_tolerance,
            "optimistic_failure_tolerance": (voters.len() as u64).saturating_sub(quorum),
            "leader": status.leader.unwrap_or_default(),
            "voters": voters,
            "non_voters": non_voters,
            "servers": servers,
        }))
    }

    /// Leader info for `sys/leader` and `sys/health`.
    pub async fn leader_info(
        &self,
    ) -> Option<(bool, Option<ClusterNode>, Option<u64>, Option<u64>)> {
        let ha = self.ha.as_ref()?;
        let node = ha.running().await?;
        let status = node.status().await;
        Some((
            node.is_leader(),
            node.leader(),
            status.committed_index,
            status.applied_index,
        ))
    }
}

/// How soon after the last round a Raft change may start another one: under a
/// write load the metrics change with every entry, and a round reads the
/// autopilot configuration through the barrier.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);

/// Autopilot's timers (`storage "raft"`): `reconcile` is Vault's
/// `autopilot_reconcile_interval`, the longest a round waits when nothing
/// happens; `update` is `autopilot_update_interval`, how often the health of a
/// waiting non-voter is sampled while no Raft change wakes autopilot sooner.
#[derive(Debug, Clone, Copy)]
pub struct AutopilotTimers {
    pub reconcile: Duration,
    pub update: Duration,
}

/// Autopilot, on the active node: promote non-voters that have been healthy
/// for `server_stabilization_time`; with `cleanup_dead_servers`, remove voters
/// silent for `dead_server_last_contact_threshold`, never below `min_quorum`.
///
/// Vault evaluates promotions on its reconcile tick (10s), so a node that has
/// been stable for 2s can wait ten more. Here a round also runs when Raft's
/// metrics change (a learner added, replication progress), the stabilization
/// clock starts when that round first sees the node healthy, and the next
/// round is scheduled for the moment the node's stabilization time ends: a
/// node is promoted `server_stabilization_time` after it became healthy, not
/// a tick later. It must still have been healthy all along (re-checked at
/// least every `update` interval and on every change), as in Vault.
async fn autopilot_loop(core: std::sync::Weak<Core>, timers: AutopilotTimers) {
    let mut stable_since: HashMap<String, Instant> = HashMap::new();
    let reconcile = timers.reconcile.max(MIN_ROUND_GAP);
    let update = timers.update.max(MIN_ROUND_GAP).min(reconcile);
    loop {
        let round_started = Instant::now();
        let Some(strong) = core.upgrade() else { return };
        let node = match &strong.ha {
            Some(ha) => ha.running().await,
            None => None,
        };
        let next = match autopilot_round(&strong, &mut stable_since).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "autopilot round failed");
                None
            }
        };
        if let Ok(state) = strong.autopilot_state().await {
            let healthy = state["healthy"].as_bool().unwrap_or(false);
            metrics::gauge!("vault.autopilot.healthy").set(if healthy { 1.0 } else { 0.0 });
            if let Some(tolerance) = state["failure_tolerance"].as_u64() {
                metrics::gauge!("vault.autopilot.failure_tolerance").set(tolerance as f64);
            }
        }
        drop(strong);
        // A non-voter's health is followed closely until it is promoted.
        let waiting = node
            .as_ref()
            .is_some_and(|n| n.is_leader() && n.membership().iter().any(|(_, voter)| !voter));
        let wake = match next {
            Some(due) => due.min(round_started + update),
            None if waiting => round_started + update,
            None => round_started + reconcile,
        };
        let Some(node) = node else {
            tokio::time::sleep_until(wake.into()).await;
            continue;
        };
        let mut metrics = node.raft().metrics();
        let membership = metrics
            .borrow_and_update()
            .membership_config
            .log_id()
            .to_owned();
        // While a non-voter waits, any change may change its health; otherwise
        // only a membership change (a node added) needs a round before the tick.
        let changed = async {
            loop {
                if metrics.changed().await.is_err() {
                    return std::future::pending::<()>().await;
                }
                let m = metrics.borrow_and_update();
                if waiting || m.membership_config.log_id() != &membership {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = changed => {
                tokio::time::sleep_until((round_started + MIN_ROUND_GAP).into()).await;
            }
        }
    }
}

/// One autopilot round. Returns when the next promotion falls due (the
/// earliest end of a healthy non-voter's stabilization time), if any.
async fn autopilot_round(
    core: &Core,
    stable_since: &mut HashMap<String, Instant>,
) -> Result<Option<Instant>> {
    let Some(ha) = &core.ha else { return Ok(None) };
    let Some(node) = ha.running().await else {
        return Ok(None);
    };
    if !node.is_leader() {
        return Ok(None);
    }
    let config = core.autopilot_config().await?;
    let status = node.status().await;
    let last_index = status.last_log_index.unwrap_or(0);
    let membership = node.membership();
    // Members gone from the configuration start afresh if they come back.
    stable_since.retain(|key, _| {
        let name = key.strip_prefix("dead:").unwrap_or(key);
        membership.iter().any(|(m, _)| m.name == name)
    });
    let mut next_due: Option<Instant> = None;
    for (member, voter) in &membership {
        let Some(follower) = status.followers.iter().find(|f| f.name == member.name) else {
            continue;
        };
        let caught_up = follower
            .last_contact
            .is_some_and(|c| c <= config.last_contact_threshold)
            && last_index.saturating_sub(follower.matched_index.unwrap_or(0))
                <= config.max_trailing_logs;
        if !voter {
            if !caught_up {
                if stable_since.remove(&member.name).is_some() {
                    tracing::info!(node = %member.name, "autopilot: non-voter unhealthy; its stabilization time starts again once it is healthy");
                }
                continue;
            }
            let since = *stable_since.entry(member.name.clone()).or_insert_with(|| {
                tracing::debug!(node = %member.name, "autopilot: non-voter healthy; stabilization time starts");
                Instant::now()
            });
            let due = since + config.server_stabilization_time;
            if Instant::now() >= due {
                node.promote(&member.name)
                    .await
                    .map_err(|e| Error::internal(format!("promote {}: {e}", member.name)))?;
                stable_since.remove(&member.name);
                tracing::info!(node = %member.name, stable_for = ?since.elapsed(), "autopilot: promoted to voter");
            } else {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
        } else if config.cleanup_dead_servers {
            // Silence is measured from when this leader first saw it, so a
            // follower a new leader has not heard from yet is not "dead".
            let key = format!("dead:{}", member.name);
            let silent_for = match follower.last_contact {
                Some(c) if c < config.last_contact_threshold => {
                    stable_since.remove(&key);
                    Duration::ZERO
                }
                Some(c) => c.max(
                    stable_since
                        .entry(key.clone())
                        .or_insert_with(Instant::now)
                        .elapsed(),
                ),
                None => stable_since
                    .entry(key.clone())
                    .or_insert_with(Instant::now)
                    .elapsed(),
            };
            let voters = membership.iter().filter(|(_, v)| *v).count() as u64;
            if silent_for >= config.dead_server_last_contact_threshold
                && voters > config.min_quorum.max(1)
            {
                stable_since.remove(&key);
                node.remove(&member.name).await.map_err(|e| {
                    Error::internal(format!("remove dead server {}: {e}", member.name))
                })?;
                tracing::warn!(node = %member.name, "autopilot: removed a dead server");
            }
        }
    }
    Ok(next_due)
}
