//! Test harness for keyhold: starts real `keyhold server` processes on loopback addresses with
//! real TLS (a throw-away CA per test), and drives them over HTTP and signals as an operator would.
//!
//! Layout of one test's files (a temp dir, removed on drop unless `KEYHOLD_KEEP_TEST_DIRS` is set):
//! ```text
//! <tmp>/ca.pem
//! <tmp>/n1/{keyhold.hcl, keyhold.log, server.crt, server.key (0600), data/}
//! <tmp>/n2/...    (node i listens on 127.0.0.i, so clusters need no port juggling per node)
//! ```
//! Architecture invariant: the harness reaches the server only through its command line, its
//! config file, its HTTP API and signals. It links no server code.

pub mod api;
pub mod node;
pub mod pki;
pub mod raw;

use std::path::Path;

use anyhow::{Context, Result};

pub use api::{list_method, Api, InitKeys, Resp};
pub use node::{
    client_builder, eventually, free_port, keyhold_bin, ListenerTls, Node, NodeOptions, Storage,
};
pub use pki::{CertFiles, IssuedCert, Pki};
pub use raw::{RawResponse, RawTls, RawTlsOptions};

/// A set of nodes sharing one CA and one temp directory. Today's tests use one node; the HA work
/// adds joining (`retry_join` in `NodeOptions::extra_top`, or `sys/storage/raft/join`) on top.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pki: Pki,
    // Dropped after `nodes` (fields drop in order), so processes die before their files go.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Lays out `count` nodes (not started), each with `options`.
    pub fn prepare(count: u8, options: NodeOptions) -> Result<Cluster> {
        let mut dir = tempfile::Builder::new()
            .prefix("keyhold-test-")
            .tempdir()
            .context("create test directory")?;
        if std::env::var_os("KEYHOLD_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test directory {}", dir.path().display());
        }
        let pki = Pki::new(dir.path(), "ca")?;
        let nodes = (0..count)
            .map(|i| Node::prepare(&pki, dir.path(), i, options.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster { nodes, pki, dir })
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
}
