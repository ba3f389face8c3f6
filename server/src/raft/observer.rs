//! Raft's metrics under Vault's names, from openraft's metrics channel: state
//! changes (`vault.raft.state.leader`, `.follower`, `.candidate`: how often this
//! node became each), `vault.raft_storage.stats.*` (term, log, commit and
//! apply indexes), `vault.raft.peers`, and, on the leader,
//! `vault.raft.leader.lastContact` (ms since the least recently heard voter
//! answered). State changes are counted as they come; the rest is sampled at
//! most every [`SAMPLE_INTERVAL`], so a busy node's stream of metrics changes
//! does not turn into a stream of requests to the Raft core. Commit and apply
//! timings are recorded where they happen (`backend.rs`, `state_machine.rs`).

use std::time::{Duration, Instant};

use openraft::ServerState;

use super::network::ClusterClient;
use super::types::{NodeId, Raft};

/// How often the gauges and the leader's last contact are sampled, at most and
/// (while Raft runs) at least. hashicorp/raft samples at each lease check.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until Raft stops (its metrics channel closes).
pub(crate) fn spawn(raft: Raft, client: ClusterClient, me: NodeId) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut last_state: Option<ServerState> = None;
        let mut sampled: Option<Instant> = None;
        loop {
            let m = metrics.borrow_and_update().clone();
            if m.running_state.is_err() {
                return;
            }
            if last_state != Some(m.state) {
                let name = match m.state {
                    ServerState::Leader => Some("vault.raft.state.leader"),
                    ServerState::Follower => Some("vault.raft.state.follower"),
                    ServerState::Candidate => Some("vault.raft.state.candidate"),
                    ServerState::Learner | ServerState::Shutdown => None,
                };
                if let Some(name) = name {
                    metrics::counter!(name).increment(1);
                }
                last_state = Some(m.state);
            }
            let due = sampled.map_or(Duration::ZERO, |t| {
                SAMPLE_INTERVAL.saturating_sub(t.elapsed())
            });
            if !due.is_zero() {
                if let Ok(Err(_)) = tokio::time::timeout(due, metrics.changed()).await {
                    return;
                }
                continue;
            }
            sampled = Some(Instant::now());
            let committed = raft
                .with_raft_state(|st| st.committed)
                .await
                .ok()
                .flatten()
                .map(|l| l.index);
            let gauge = |name: &'static str, v: Option<u64>| {
                metrics::gauge!(name).set(v.unwrap_or(0) as f64);
            };
            gauge("vault.raft_storage.stats.term", Some(m.current_term));
            gauge("vault.raft_storage.stats.last_log_index", m.last_log_index);
            gauge("vault.raft_storage.stats.commit_index", committed);
            gauge(
                "vault.raft_storage.stats.applied_index",
                m.last_applied.map(|l| l.index),
            );
            gauge(
                "vault.raft_storage.stats.fsm_pending",
                Some(
                    committed
                        .unwrap_or(0)
                        .saturating_sub(m.last_applied.map(|l| l.index).unwrap_or(0)),
                ),
            );
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            gauge("vault.raft.peers", Some(voters.len() as u64));
            if m.state == ServerState::Leader && voters.len() > 1 {
                let contacts = client.last_contact();
                let oldest = voters
                    .iter()
                    .filter(|id| **id != me)
                    .filter_map(|id| contacts.get(id).map(|t| t.elapsed()))
                    .max();
                if let Some(oldest) = oldest {
                    metrics::histogram!("vault.raft.leader.lastContact")
                        .record(oldest.as_secs_f64() * 1000.0);
                }
            }
            if let Ok(Err(_)) = tokio::time::timeout(SAMPLE_INTERVAL, metrics.changed()).await {
                return;
            }
        }
    });
}
