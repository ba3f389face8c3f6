//! A set of nodes sharing one CA and one temp directory: one-node setups, and Raft clusters that
//! form through `retry_join`, with the bounded waits that tell which node is active, which are
//! standbys, and who votes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::api::InitKeys;
use crate::node::{Node, NodeOptions};
use crate::pki::Pki;

/// A set of nodes sharing one CA and one temp directory.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pki: Pki,
    // Dropped after `nodes` (fields drop in order), so processes die before their files go.
    dir: tempfile::TempDir,
}

/// One entry of `sys/storage/raft/configuration`'s `data.config.servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    pub node_id: String,
    pub address: String,
    pub leader: bool,
    pub voter: bool,
}

/// What every running node's `sys/health` said in one sweep.
#[derive(Debug, Default, Clone)]
pub struct Roles {
    /// Nodes answering 200.
    pub active: Vec<usize>,
    /// Nodes answering 429.
    pub standby: Vec<usize>,
    /// Running nodes answering anything else (or nothing), with what they answered.
    pub other: Vec<(usize, Option<u16>)>,
}

/// The `storage "raft"` lines that make a node join the nodes at `leaders` (their `api_addr`s):
/// one `retry_join` block each, trusting the harness CA, and Vault's recommended
/// `performance_multiplier = 1`.
pub fn retry_join_lines<'a>(
    leaders: impl IntoIterator<Item = &'a str>,
    ca_path: &Path,
) -> Vec<String> {
    let mut lines = vec!["performance_multiplier = 1".to_string()];
    for leader in leaders {
        lines.push("retry_join {".to_string());
        lines.push(format!("  leader_api_addr     = \"{leader}\""));
        lines.push(format!("  leader_ca_cert_file = \"{}\"", ca_path.display()));
        lines.push("}".to_string());
    }
    lines
}

impl Cluster {
    /// Lays out `count` nodes (not started), each with `options`.
    pub fn prepare(count: u8, options: NodeOptions) -> Result<Cluster> {
        let dir = crate::test_dir("keyhold-test-")?;
        let pki = Pki::new(dir.path(), "ca")?;
        let nodes = (0..count)
            .map(|i| Node::prepare(&pki, dir.path(), i, options.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster { nodes, pki, dir }.in_one_session())
    }

    /// Lays out `count` raft nodes (not started) that find each other through `retry_join`:
    /// every node's raft block names every other node (see [`retry_join_lines`]).
    pub fn prepare_ha(count: u8, options: NodeOptions) -> Result<Cluster> {
        let cluster = Cluster::prepare(count, options)?;
        cluster.joined_by_retry_join()
    }

    /// As [`Cluster::prepare_ha`], with node `i` on `addresses[i]` (IP, port; the cluster
    /// port is port + 1): nodes in network namespaces of their own, each started in its
    /// namespace once [`Node::set_netns`] names it.
    pub fn prepare_ha_at(
        addresses: &[(std::net::Ipv4Addr, u16)],
        options: NodeOptions,
    ) -> Result<Cluster> {
        let dir = crate::test_dir("keyhold-test-")?;
        let pki = Pki::new(dir.path(), "ca")?;
        let nodes = addresses
            .iter()
            .enumerate()
            .map(|(i, (ip, port))| {
                Node::prepare_at(
                    &pki,
                    dir.path(),
                    u8::try_from(i)?,
                    *ip,
                    *port,
                    options.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Cluster { nodes, pki, dir }
            .in_one_session()
            .joined_by_retry_join()
    }

    /// Every node's API handles share one [`crate::api::Session`]: a read through any node
    /// sees the writes acknowledged through any other, as a Vault client that passes
    /// `X-Vault-Index` along does.
    fn in_one_session(mut self) -> Cluster {
        let session = crate::api::Session::default();
        for node in &mut self.nodes {
            node.join_session(session.clone());
        }
        self
    }

    fn joined_by_retry_join(mut self) -> Result<Cluster> {
        let cluster = &mut self;
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| n.api_addr().to_string())
            .collect();
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            let others = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.as_str());
            node.options
                .extra_raft
                .extend(retry_join_lines(others, &cluster.pki.ca_path));
            node.write_config()
                .with_context(|| format!("render the config of {}", node.id))?;
        }
        Ok(self)
    }

    /// Lays out one more node (not started) whose `retry_join` names every existing node.
    /// Returns its index.
    pub fn add_node(&mut self, mut options: NodeOptions) -> Result<usize> {
        let index = self.nodes.len();
        let index_u8 = u8::try_from(index).context("too many nodes")?;
        options.extra_raft.extend(retry_join_lines(
            self.nodes.iter().map(|n| n.api_addr()),
            &self.pki.ca_path,
        ));
        let mut node = Node::prepare(&self.pki, self.dir.path(), index_u8, options)?;
        if let Some(session) = self.nodes.first().and_then(|n| n.api().session()) {
            node.join_session(session);
        }
        self.nodes.push(node);
        Ok(index)
    }

    /// One node, started and serving (not initialised).
    pub async fn single(options: NodeOptions) -> Result<Cluster> {
        let mut cluster = Cluster::prepare(1, options)?;
        cluster.nodes[0].start().await?;
        Ok(cluster)
    }

    /// One node, started, initialised with 1-of-1 Shamir share, unsealed and active.
    pub async fn single_active(options: NodeOptions) -> Result<Cluster> {
        let mut cluster = Cluster::single(options).await?;
        cluster.nodes[0].init_and_unseal(1, 1).await?;
        Ok(cluster)
    }

    pub fn node(&mut self) -> &mut Node {
        &mut self.nodes[0]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts every node that is not running, each waited on until it answers HTTP.
    pub async fn start_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if !node.is_up() {
                node.start().await?;
            }
        }
        Ok(())
    }

    /// Initialises node 0 and unseals it: it bootstraps a one-voter cluster and becomes active.
    /// Every node remembers the keys, so `node.api()` carries the root token everywhere.
    pub async fn init_first(&mut self, shares: usize, threshold: usize) -> Result<InitKeys> {
        let keys = self.nodes[0].init_and_unseal(shares, threshold).await?;
        for node in &mut self.nodes {
            node.init_keys = Some(keys.clone());
        }
        Ok(keys)
    }

    /// Waits (bounded: 300 x 100 ms; `retry_join` retries every 2 s) until node `index` holds a
    /// join challenge, which its seal-status shows as `initialized`, then unseals it with
    /// `keys` and waits until it serves as a standby or the active node.
    pub async fn join(&mut self, index: usize, keys: &InitKeys) -> Result<()> {
        let node = &self.nodes[index];
        let mut last = Value::Null;
        let mut ready = false;
        for _ in 0..300 {
            if let Ok(status) = node.api().seal_status().await {
                if status["initialized"] == json!(true) {
                    ready = true;
                    break;
                }
                last = status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            ready,
            "{} never received a join challenge through retry_join (seal-status never said initialized in 300 polls); last seal-status {last}; log:\n{}",
            node.id,
            node.log_tail(30)
        );
        node.unseal_member(&keys.keys[..keys.threshold]).await?;
        self.nodes[index].init_keys = Some(keys.clone());
        Ok(())
    }

    /// Starts every node, forms the cluster and waits until it is whole: node 0 initialised
    /// (`shares`/`threshold`) and unsealed, autopilot's `server_stabilization_time` lowered to
    /// 1 s, every other node joined through `retry_join` and unsealed, then exactly one node
    /// active, the others standby, and every node a voter (bounded waits throughout).
    pub async fn form(&mut self, shares: usize, threshold: usize) -> Result<InitKeys> {
        self.start_all().await?;
        let keys = self.init_first(shares, threshold).await?;
        self.set_autopilot(0, json!({"server_stabilization_time": "1s"}))
            .await?;
        for i in 1..self.nodes.len() {
            self.join(i, &keys).await?;
        }
        self.wait_roles("cluster formation").await?;
        self.wait_voters(self.nodes.len(), "cluster formation")
            .await?;
        Ok(keys)
    }

    /// Waits (bounded: 300 x 100 ms) until exactly one node other than `old` is active, and
    /// returns it; `what` names the event for the error.
    pub async fn wait_new_active(&self, old: usize, what: &str) -> Result<usize> {
        for _ in 0..300 {
            let roles = self.roles().await;
            if roles.active.len() == 1 && roles.active[0] != old {
                return Ok(roles.active[0]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{what}: {} is still the only active node 300 polls later\n{}",
            self.nodes[old].id,
            self.log_tails(15)
        )
    }

    /// One sweep of `sys/health` over every running node.
    pub async fn roles(&self) -> Roles {
        let mut roles = Roles::default();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_up() {
                continue;
            }
            match node.health_code().await {
                Some(200) => roles.active.push(i),
                Some(429) => roles.standby.push(i),
                other => roles.other.push((i, other)),
            }
        }
        roles
    }

    /// Waits (bounded: 300 sweeps, 100 ms apart) until exactly one running node is active and
    /// every other running node is a standby. Returns the active node's index.
    pub async fn wait_roles(&self, what: &str) -> Result<usize> {
        let mut last = Roles::default();
        for _ in 0..300 {
            last = self.roles().await;
            if last.active.len() == 1 && last.other.is_empty() {
                return Ok(last.active[0]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{what}: expected exactly one running node active (health 200) and the others standby (429) within 300 sweeps; last sweep {}\n{}",
            self.describe(&last),
            self.log_tails(15)
        )
    }

    /// Waits (bounded: 300 sweeps, 100 ms apart) until exactly one running node is active,
    /// whatever the others say. Returns its index.
    pub async fn active(&self) -> Result<usize> {
        let mut last = Roles::default();
        for _ in 0..300 {
            last = self.roles().await;
            if last.active.len() == 1 {
                return Ok(last.active[0]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "expected exactly one running node active (health 200) within 300 sweeps; last sweep {}\n{}",
            self.describe(&last),
            self.log_tails(15)
        )
    }

    /// Every running node.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_up())
            .collect()
    }

    /// Every running node except `active`.
    pub fn others(&self, active: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| i != active && self.nodes[i].is_up())
            .collect()
    }

    fn describe(&self, roles: &Roles) -> String {
        let name = |i: &usize| self.nodes[*i].id.clone();
        format!(
            "active {:?}, standby {:?}, other {:?}",
            roles.active.iter().map(name).collect::<Vec<_>>(),
            roles.standby.iter().map(name).collect::<Vec<_>>(),
            roles
                .other
                .iter()
                .map(|(i, code)| (self.nodes[*i].id.clone(), *code))
                .collect::<Vec<_>>()
        )
    }

    /// The last `lines` log lines of every node, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} log tail ---\n{}", n.id, n.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `sys/storage/raft/configuration` as node `via` answers it (a standby forwards it).
    /// A 503 (no active node while an election runs) is asked again, up to 100 times 100 ms
    /// apart.
    pub async fn raft_servers(&self, via: usize) -> Result<Vec<RaftServer>> {
        let api = self.nodes[via].api();
        let mut resp = api.get("sys/storage/raft/configuration").await?;
        for _ in 0..100 {
            if resp.status.as_u16() != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            resp = api.get("sys/storage/raft/configuration").await?;
        }
        let resp = resp.expect(200, "GET sys/storage/raft/configuration")?;
        let servers = resp.json["data"]["config"]["servers"]
            .as_array()
            .with_context(|| format!("no data.config.servers in {}", resp.text))?;
        servers
            .iter()
            .map(|s| {
                Ok(RaftServer {
                    node_id: s["node_id"].as_str().context("node_id")?.to_string(),
                    address: s["address"].as_str().context("address")?.to_string(),
                    leader: s["leader"].as_bool().context("leader")?,
                    voter: s["voter"].as_bool().context("voter")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("malformed server in {}", resp.text))
    }

    /// Waits (bounded: 300 polls, 100 ms apart) until the Raft configuration, asked of the
    /// active node, lists exactly `count` servers, all voters, exactly one of them the leader.
    pub async fn wait_voters(&self, count: usize, what: &str) -> Result<Vec<RaftServer>> {
        let mut last: Result<Vec<RaftServer>> = Err(anyhow::anyhow!("never asked"));
        for _ in 0..300 {
            let active = self.active().await?;
            last = self.raft_servers(active).await;
            if let Ok(servers) = &last {
                if servers.len() == count
                    && servers.iter().all(|s| s.voter)
                    && servers.iter().filter(|s| s.leader).count() == 1
                {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{what}: expected {count} voters with one leader in the raft configuration within 300 polls; last answer {last:?}")
    }

    /// `POST sys/storage/raft/autopilot/configuration` through node `via`.
    pub async fn set_autopilot(&self, via: usize, body: Value) -> Result<()> {
        self.nodes[via]
            .api()
            .post("sys/storage/raft/autopilot/configuration", body.clone())
            .await?
            .expect_ok(&format!("set autopilot configuration {body}"))?;
        Ok(())
    }

    /// Waits (bounded: 300 polls per node, 100 ms apart) until every running node has applied
    /// everything the active node had committed when this was called (`sys/leader`).
    pub async fn wait_caught_up(&self) -> Result<()> {
        let active = self.active().await?;
        let leader = self.nodes[active]
            .api()
            .get("sys/leader")
            .await?
            .expect(200, "sys/leader on the active node")?;
        let committed = leader.json["raft_committed_index"]
            .as_u64()
            .with_context(|| format!("no raft_committed_index in {}", leader.text))?;
        for node in self.nodes.iter().filter(|n| n.is_up()) {
            let mut applied = None;
            for _ in 0..300 {
                if let Ok(resp) = node.api().get("sys/leader").await {
                    applied = resp.json["raft_applied_index"].as_u64();
                    if applied.is_some_and(|a| a >= committed) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ensure!(
                applied.is_some_and(|a| a >= committed),
                "{} did not apply up to the active node's commit index {committed} within 300 polls; last applied {applied:?}",
                node.id
            );
        }
        Ok(())
    }

    /// SIGTERM every running node, one after another, each waited on until it exits.
    pub async fn stop_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if node.is_up() {
                let status = node.sigterm().await?;
                ensure!(
                    status.success(),
                    "{} exited with {status} on SIGTERM",
                    node.id
                );
            }
        }
        Ok(())
    }
}
