//! Multi-node tests over real parts: sled in temporary directories, mutual
//! TLS on loopback addresses (127.0.0.2, .3, .4), no mock network. Every
//! wait is a poll with a deadline; nothing asserts on timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::network::{TransportError, ELECT_PATH};
use super::*;
use crate::physical::TxnOp;

/// Generous: two cores are shared with other builds and tests.
const DEADLINE: Duration = Duration::from_secs(30);

struct TestNode {
    name: String,
    dir: PathBuf,
    addr: SocketAddr,
    node: RaftNode,
    store: Arc<SledStore>,
}

async fn start(name: &str, dir: &Path, addr: SocketAddr, tls: &ClusterTls) -> TestNode {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(SledStore::open(dir).unwrap());
    let mut config = RaftNodeConfig::new(
        name,
        format!("https://{}:8200", addr.ip()),
        addr.to_string(),
        store.clone(),
    );
    config.performance_multiplier = 1;
    // Small, so snapshots, purges and snapshot installs happen in the test.
    config.snapshot_threshold = 40;
    config.trailing_logs = 10;
    let node = RaftNode::open(config).await.unwrap();
    node.serve_cluster_on(listener, tls, axum::Router::new())
        .await
        .unwrap();
    TestNode {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        addr,
        node,
        store,
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn batch(i: usize) -> Vec<TxnOp> {
    vec![
        TxnOp::Put {
            key: format!("kv/{i:04}"),
            value: format!("value {i}").into_bytes(),
        },
        TxnOp::Put {
            key: format!("index/{i:04}"),
            value: i.to_le_bytes().to_vec(),
        },
    ]
}

/// True when `store` holds exactly batches `0..n`.
fn has_batches(store: &SledStore, n: usize) -> bool {
    let exported = store.export().unwrap();
    exported.len() == 2 * n
        && (0..n).all(|i| {
            exported
                .binary_search_by(|(k, _)| k.as_str().cmp(&format!("kv/{i:04}")))
                .is_ok_and(|at| exported[at].1 == format!("value {i}").into_bytes())
        })
}

fn leader_of(nodes: &[&TestNode]) -> Option<String> {
    let leaders: Vec<&TestNode> = nodes
        .iter()
        .copied()
        .filter(|n| n.node.is_leader())
        .collect();
    match leaders.as_slice() {
        // Every live node agrees on it.
        [leader]
            if nodes
                .iter()
                .all(|n| n.node.leader().map(|l| l.name) == Some(leader.name.clone())) =>
        {
            Some(leader.name.clone())
        }
        _ => None,
    }
}

fn by_name<'a>(nodes: &[&'a TestNode], name: &str) -> &'a TestNode {
    nodes.iter().find(|n| n.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let tls = ClusterTls::generate().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = ["127.0.0.2:0", "127.0.0.3:0", "127.0.0.4:0"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut n1 = Some(start("node-1", dirs[0].path(), addrs[0], &tls).await);
    let n2 = start("node-2", dirs[1].path(), addrs[1], &tls).await;
    let n3 = start("node-3", dirs[2].path(), addrs[2], &tls).await;

    // Form the cluster: bootstrap (twice: idempotent), learners, voters.
    let first = n1.as_ref().unwrap();
    first.node.bootstrap().await.unwrap();
    first.node.bootstrap().await.unwrap();
    wait_for("node-1 to lead", || first.node.is_leader()).await;
    for other in [&n2, &n3] {
        first
            .node
            .add_learner(other.node.node().clone())
            .await
            .unwrap();
    }
    assert!(
        first
            .node
            .membership()
            .iter()
            .filter(|(_, voter)| !voter)
            .count()
            == 2,
        "two learners"
    );
    first.node.promote("node-2").await.unwrap();
    first.node.promote("node-3").await.unwrap();
    let members = first.node.membership();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|(_, voter)| *voter), "{members:?}");
    assert!(matches!(
        first.node.promote("node-9").await,
        Err(ClusterError::UnknownNode(_))
    ));

    // 100 write batches through the leader's backend reach every node.
    let backend = first.node.backend();
    for i in 0..100 {
        backend.transaction(batch(i)).await.unwrap();
    }
    for n in [first, &n2, &n3] {
        wait_for(&format!("{} to apply 100 batches", n.name), || {
            has_batches(&n.store, 100)
        })
        .await;
    }
    // Reads are local; a follower refuses writes with a recognisable error.
    assert_eq!(
        n2.node.backend().get("kv/0042").await.unwrap().unwrap(),
        b"value 42"
    );
    let refused = n2.node.backend().put("x", b"y".to_vec()).await.unwrap_err();
    assert!(
        matches!(&refused, StorageError::NotLeader { leader: Some(l) } if l.starts_with("node-1 at https://")),
        "{refused}"
    );
    let status = first.node.status().await;
    assert_eq!(status.state, "leader");
    assert!(status.committed_index >= Some(100), "{status:?}");
    assert_eq!(status.followers.len(), 2, "{status:?}");
    assert!(
        status
            .followers
            .iter()
            .all(|f| f.voter && f.last_contact.is_some()),
        "{status:?}"
    );

    // The leader goes away (raft and listener); the other two elect a leader.
    drop(backend); // it shares node-1's store, which must close for the restart
    let old = n1.take().unwrap();
    let (old_dir, old_addr) = (old.dir.clone(), old.addr);
    old.node.shutdown().await;
    drop(old);
    let live = [&n2, &n3];
    wait_for("a new leader among node-2 and node-3", || {
        leader_of(&live).is_some()
    })
    .await;
    let leader = by_name(&live, &leader_of(&live).unwrap());
    let backend = leader.node.backend();
    // Enough writes that the new leader snapshots and purges past what
    // node-1 has: it must catch up through a snapshot install.
    for i in 100..160 {
        backend.transaction(batch(i)).await.unwrap();
    }

    // node-1 restarts from its directory on its address and catches up.
    let n1 = start("node-1", &old_dir, old_addr, &tls).await;
    wait_for("node-1 to catch up after restart", || {
        has_batches(&n1.store, 160)
    })
    .await;
    let all = [&n1, &n2, &n3];
    wait_for("all three to agree on the leader", || {
        leader_of(&all).is_some()
    })
    .await;
    for n in all {
        wait_for(&format!("{} to have 160 batches", n.name), || {
            has_batches(&n.store, 160)
        })
        .await;
    }

    // A graceful hand-over: the leader passes leadership to a caught-up voter.
    let before = leader_of(&all).unwrap();
    let leader = by_name(&all, &before);
    leader.node.transfer_leadership().await.unwrap();
    wait_for("a leader other than the one that handed over", || {
        leader_of(&all).is_some_and(|l| l != before)
    })
    .await;
    let leader = by_name(&all, &leader_of(&all).unwrap());
    leader.node.backend().transaction(batch(160)).await.unwrap();
    for n in all {
        wait_for(&format!("{} to have 161 batches", n.name), || {
            has_batches(&n.store, 161)
        })
        .await;
    }

    // Removing a member shrinks the membership.
    let follower = all.iter().find(|n| !n.node.is_leader()).unwrap();
    leader.node.remove(&follower.name).await.unwrap();
    assert_eq!(leader.node.membership().len(), 2);

    for n in all {
        n.node.shutdown().await;
    }
}

/// With five voters the successor needs a third vote, which a follower refuses while its
/// lease on the old leader runs: the hand-over lets the leases lapse before the successor
/// stands, so one election moves leadership (it took three to six, the old leader standing
/// again in between, before), and the node that handed over does not lead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_voters_hand_over_in_one_election() {
    let tls = ClusterTls::generate().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.{}:0", i + 2).parse().unwrap();
        nodes.push(start(&format!("node-{}", i + 1), dir.path(), addr, &tls).await);
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    let first = all[0];
    first.node.bootstrap().await.unwrap();
    wait_for("node-1 to lead", || first.node.is_leader()).await;
    for other in &all[1..] {
        first
            .node
            .add_learner(other.node.node().clone())
            .await
            .unwrap();
        first.node.promote(&other.name).await.unwrap();
    }
    let backend = first.node.backend();
    for i in 0..20 {
        backend.transaction(batch(i)).await.unwrap();
    }
    wait_for("all five to agree on the leader", || {
        leader_of(&all).is_some()
    })
    .await;

    let term = |n: &TestNode| n.node.raft().metrics().borrow().current_term;
    let before = term(first);
    first.node.transfer_leadership().await.unwrap();
    wait_for("a leader other than node-1", || {
        leader_of(&all).is_some_and(|l| l != "node-1")
    })
    .await;
    let leader = by_name(&all, &leader_of(&all).unwrap());
    assert_eq!(
        term(leader),
        before + 1,
        "leadership moved in one election (term {before} to {})",
        term(leader)
    );
    leader.node.backend().transaction(batch(20)).await.unwrap();
    for n in &all {
        wait_for(&format!("{} to have 21 batches", n.name), || {
            has_batches(&n.store, 21)
        })
        .await;
    }
    assert!(!first.node.is_leader());
    for n in all {
        n.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_enforces_max_entry_size_and_survives_restart() {
    let tls = ClusterTls::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let n = start("solo", dir.path(), addr, &tls).await;
    n.node.bootstrap().await.unwrap();
    wait_for("solo to lead", || n.node.is_leader()).await;
    let backend = n.node.backend();

    let limit = RaftNodeConfig::DEFAULT_MAX_ENTRY_SIZE;
    let big = backend.put("big", vec![0; limit]).await.unwrap_err();
    assert!(
        matches!(&big, StorageError::TooLarge { key, size, limit: l } if key == "big" && *size == limit + 3 && *l == limit),
        "{big}"
    );
    let split = backend
        .transaction(vec![
            TxnOp::Put {
                key: "a".into(),
                value: vec![1; limit / 2],
            },
            TxnOp::Put {
                key: "b".into(),
                value: vec![2; limit / 2],
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(split, StorageError::TooLarge { .. }), "{split}");
    assert_eq!(backend.get("big").await.unwrap(), None);
    backend.put("fits", vec![3; limit - 4]).await.unwrap();
    backend.put("k", b"v".to_vec()).await.unwrap();
    backend.delete("k").await.unwrap();
    assert_eq!(backend.list("").await.unwrap(), ["fits"]);

    // A one-voter cluster restarts from its directory, leads again, and writes.
    let (dir_path, addr) = (n.dir.clone(), n.addr);
    n.node.shutdown().await;
    drop((n, backend));
    let n = start("solo", &dir_path, addr, &tls).await;
    n.node.bootstrap().await.unwrap();
    wait_for("solo to lead after restart", || n.node.is_leader()).await;
    assert_eq!(n.store.get("fits").await.unwrap().unwrap().len(), limit - 4);
    n.node
        .backend()
        .put("after", b"restart".to_vec())
        .await
        .unwrap();
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_cluster_certificate_gets_nothing() {
    let tls = ClusterTls::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = start("guarded", dir.path(), "127.0.0.3:0".parse().unwrap(), &tls).await;
    n.node.bootstrap().await.unwrap();
    let addr = n.addr.to_string();
    let timeout = Duration::from_secs(5);
    let call = |client: ClusterClient| {
        let addr = addr.clone();
        async move {
            client
                .post::<()>(
                    &addr,
                    ELECT_PATH,
                    "application/json",
                    b"null".to_vec(),
                    timeout,
                )
                .await
        }
    };

    // Control: a member's client is answered.
    let member = ClusterClient::default();
    member.configure(&tls).unwrap();
    call(member).await.unwrap();

    // No client certificate, and a certificate from another cluster's CA
    // (both trusting this cluster's CA, so only the server can refuse).
    let other = ClusterTls::generate().unwrap();
    let anonymous = ClusterClient::default();
    anonymous
        .configure_with(tls.anonymous_client_config())
        .unwrap();
    let foreign = ClusterClient::default();
    foreign
        .configure(&ClusterTls {
            ca_cert_pem: tls.ca_cert_pem.clone(),
            cert_pem: other.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
            generation: 0,
            rotation: None,
        })
        .unwrap();
    for (who, client) in [("anonymous", anonymous), ("foreign", foreign)] {
        let err = call(client).await.unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Unreachable(_) | TransportError::Broken(_)
            ),
            "{who}: the handshake must fail, not answer: {err}"
        );
    }
    n.node.shutdown().await;
}

#[test]
fn timing_follows_the_performance_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let mut config = RaftNodeConfig::new("n", "https://127.0.0.1:8200", "127.0.0.1:8201", store);
    let ms = Duration::from_millis;
    assert_eq!(
        config.timing(),
        Timing {
            heartbeat_interval: ms(1000),
            election_timeout_min: ms(2500),
            election_timeout_max: ms(5000),
        }
    );
    config.performance_multiplier = 0;
    assert_eq!(config.timing().election_timeout_max, ms(5000));
    config.performance_multiplier = 1;
    assert_eq!(config.timing().heartbeat_interval, ms(200));
    config.openraft_config().unwrap();
    for (field, bad) in [
        ("multiplier", {
            let mut c = config.clone();
            c.performance_multiplier = 11;
            c
        }),
        ("threshold", {
            let mut c = config.clone();
            c.snapshot_threshold = 0;
            c
        }),
        ("entry size", {
            let mut c = config.clone();
            c.max_entry_size = 0;
            c
        }),
    ] {
        assert!(bad.validate().is_err(), "{field}");
    }
}
